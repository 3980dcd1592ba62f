"""Matmuls with a constant 2-D weight rewritten as linear layers, which get int8 weights."""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from edgeship.export.fx import attr, register

aten = torch.ops.aten


def constant_matmuls_as_linear(module: GraphModule) -> int:
    """`addmm(bias, x, W)`, `mm(x, W)` and `matmul(x, W)` with a constant 2-D `W` (and bias) rewritten as
    `linear(x, W^T, bias)`, which the quantizer gives int8 weights per output channel. GPT-2's layers are
    Hugging Face `Conv1D`, an addmm with a weight stored (in, out): left as addmm, none of them was
    quantized (the int8 artifacts were the float model). A weight read by several calls gets one
    transposed copy. Returns how many calls were rewritten."""
    rewritten = 0
    transposed: dict[str, str] = {}
    for node in list(module.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.addmm.default and len(node.args) == 3 and all(node.kwargs.get(k, 1) == 1 for k in ("alpha", "beta")):
            bias, x, weight = node.args
        elif node.target in (aten.mm.default, aten.matmul.default) and len(node.args) == 2 and not node.kwargs:
            bias, (x, weight) = None, node.args
        else:
            continue
        constant = [a for a in (weight, bias) if a is not None]
        if not all(isinstance(a, Node) and a.op == "get_attr" for a in constant):
            continue
        w = attr(module, weight.target)
        if w.dim() != 2 or (bias is not None and tuple(attr(module, bias.target).shape) != (w.shape[1],)):
            continue
        if weight.target not in transposed:
            transposed[weight.target] = register(module, f"{weight.target}_transposed", w.detach().t().contiguous())
        with module.graph.inserting_before(node):
            weight_t = module.graph.get_attr(transposed[weight.target])
            linear = module.graph.call_function(aten.linear.default, (x, weight_t) + ((bias,) if bias is not None else ()))
        weight_t.meta["val"] = attr(module, transposed[weight.target])
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        module.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        module.graph.eliminate_dead_code()
        used = {n.target for n in module.graph.nodes if n.op == "get_attr"}
        for target in transposed:  # the (in, out) weights no call reads any more
            if target not in used:
                *path, leaf = target.split(".")
                delattr(module.get_submodule(".".join(path)), leaf)
        module.recompile()
    return rewritten
