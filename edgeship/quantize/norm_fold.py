"""Layer norm scale and shift folded into the linear layers that read the norm.

y = W (gamma * n + beta) + b  ==  (W diag(gamma)) n + (W beta + b), with n the normalized input.

Why: LiteRT's converter folds a constant multiply that feeds a FULLY_CONNECTED into its weight, so a
layer norm's gamma ends up in the weights of the q/k/v and FFN-up projections of a transformer
(all-MiniLM-L6-v2: 24 of its 36 linear layers), and weights quantized before that fold leave the int4
grid. Folding gamma here, before the int4 weights are computed, gives every runtime the same int4
weights and leaves the converter nothing to fold. The other readers of the norm (a residual add) get
n * gamma + beta computed from the one normalization.

When it applies: an `aten.layer_norm` with a constant 1-D weight (and optional bias) read directly by
linear layers whose weight and bias are constants. When it leaves the graph alone: norms without an
affine part, norms whose readers are not such linear layers, and layers marked float.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from edgeship.export.passes.dropout import remove_eval_dropout
from edgeship.quantize.graphs import attr, register
from edgeship.quantize.quantizer import FLOAT_NODE, LINEAR_OPS

aten = torch.ops.aten


def _constant(node) -> bool:
    return isinstance(node, Node) and node.op == "get_attr"


def _foldable_readers(norm: Node) -> list[Node]:
    return [u for u in norm.users
            if u.op == "call_function" and u.target in LINEAR_OPS and u.args[0] is norm and not u.meta.get(FLOAT_NODE)
            and _constant(u.args[1]) and (len(u.args) < 3 or u.args[2] is None or _constant(u.args[2]))]


def fold_norm_affine(module: GraphModule) -> list[dict]:
    """Rewrites `module` in place; returns one record per folded norm (its name and the layers)."""
    remove_eval_dropout(module)  # it would hide a norm's readers
    records = []
    for norm in list(module.graph.nodes):
        if norm.op != "call_function" or norm.target != aten.layer_norm.default or len(norm.args) < 3:
            continue
        x, shape, weight = norm.args[:3]
        bias = norm.args[3] if len(norm.args) > 3 else None
        if len(shape) != 1 or not _constant(weight) or not (bias is None or _constant(bias)):
            continue
        readers = _foldable_readers(norm)
        if not readers:
            continue
        gamma = attr(module, weight.target).detach()
        beta = attr(module, bias.target).detach() if bias is not None else torch.zeros_like(gamma)
        graph = module.graph
        with graph.inserting_before(norm):
            plain = graph.call_function(aten.layer_norm.default, (x, shape, None, None, *norm.args[4:]))
            plain.meta = dict(norm.meta)
        others = [u for u in norm.users if u not in readers]
        if others:
            with graph.inserting_after(plain):
                scaled = graph.call_function(aten.mul.Tensor, (plain, weight))
            with graph.inserting_after(scaled):
                affine = graph.call_function(aten.add.Tensor, (scaled, bias)) if bias is not None else scaled
            for user in others:
                user.replace_input_with(norm, affine)
        for linear in readers:
            _fold_into(module, linear, plain, gamma, beta)
        graph.erase_node(norm)
        records.append({"norm": norm.name, "layers": [n.name for n in readers]})
    if records:
        module.graph.eliminate_dead_code()
        module.graph.lint()
        module.recompile()
    return records


def _fold_into(module: GraphModule, linear: Node, plain: Node, gamma: torch.Tensor, beta: torch.Tensor) -> None:
    w = attr(module, linear.args[1].target).detach()
    b = attr(module, linear.args[2].target).detach() if len(linear.args) > 2 and linear.args[2] is not None \
        else torch.zeros(w.shape[0], dtype=w.dtype)
    graph = module.graph
    with graph.inserting_before(linear):
        new_w = graph.get_attr(register(module, f"{linear.name}_norm_folded_weight", w * gamma[None, :]))
        new_b = graph.get_attr(register(module, f"{linear.name}_norm_folded_bias", b + w @ beta))
    linear.args = (plain, new_w, new_b)
