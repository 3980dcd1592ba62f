"""An average pool whose one window covers its input rewritten as a global average pool."""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten


def whole_window_pools_as_global(module: GraphModule) -> int:
    """`avg_pool2d` whose one window covers the whole input (kernel at least the input's height and width,
    no padding, one output position) rewritten as `adaptive_avg_pool2d(x, 1)`: the same mean, and the form
    every runtime has an int8 kernel for. Hugging Face EfficientNet pools with `AvgPool2d(1280,
    ceil_mode=True)`: its int8 average pool gave all-zero outputs in ONNX Runtime and LiteRT (the float
    ones and ExecuTorch's int8 were right). Returns how many were rewritten."""
    rewritten = 0
    for node in list(module.graph.nodes):
        if node.op != "call_function" or node.target is not aten.avg_pool2d.default:
            continue
        x, kernel = node.args[0], node.args[1]
        val, out = (x.meta.get("val") if isinstance(x, Node) else None), node.meta.get("val")
        if val is None or out is None or val.dim() != 4 or tuple(out.shape[-2:]) != (1, 1):
            continue
        kernel = list(kernel) * (2 // len(kernel)) if isinstance(kernel, (list, tuple)) else [kernel, kernel]
        padding = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        override = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
        if any(padding if isinstance(padding, (list, tuple)) else [padding]) or override is not None \
                or kernel[0] < val.shape[-2] or kernel[1] < val.shape[-1]:
            continue
        with module.graph.inserting_before(node):
            pooled = module.graph.call_function(aten.adaptive_avg_pool2d.default, (x, [1, 1]))
        pooled.meta = dict(node.meta)
        node.replace_all_uses_with(pooled)
        module.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        module.recompile()
    return rewritten
