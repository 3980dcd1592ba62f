"""Eval-mode dropout removed: the identity, which would hide a layer from the passes."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

aten = torch.ops.aten


_DROPOUTS = {aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default, aten.feature_dropout_.default,
             aten.alpha_dropout.default, aten.alpha_dropout_.default, aten.feature_alpha_dropout.default,
             aten.feature_alpha_dropout_.default}


def remove_eval_dropout(module: GraphModule) -> int:
    """Dropout in eval mode (train=False) is the identity; it is removed so that it hides no layer from
    the passes and leaves no float op between int8 ones. (nn.Dropout(inplace=True), as in torchvision's
    EfficientNet and MobileNetV3 classifiers, exports as aten.dropout_; left in, SmoothQuant saw a float
    input there and inserted a float multiply that LiteRT's converter then quantized.) Returns the count."""
    removed = 0
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target in _DROPOUTS and len(node.args) > 2 and node.args[2] is False:
            node.replace_all_uses_with(node.args[0])
            module.graph.erase_node(node)
            removed += 1
    if removed:
        module.recompile()
    return removed
