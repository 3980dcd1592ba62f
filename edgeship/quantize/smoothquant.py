"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights before calibration.

A linear layer computes x @ W.T = (x / s) @ (W * s).T for any per-input-channel s > 0. Transformers
carry a few activation channels tens of times larger than the rest (all-MiniLM-L6-v2: the GELU
outputs feeding each FFN down-projection reach ~24 in a few channels), so one per-tensor int8 range
for x wastes most of its steps; W is quantized per output channel and absorbs a column scale cheaply.
With s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), both sides get comparable ranges; alpha is chosen per
input on the calibration data (see `smooth`), since the best one differs between layers and models.

When it applies: to linear layers whose input comes from an op the quantizer leaves in float
(layer_norm, GELU, softmax-weighted sums, model inputs). Layers sharing one input get one s
(the max over their weights), one explicit `mul` by 1/s is inserted on that input (a float op where
the activation is float anyway, before its quantize), and each weight is replaced by W * s.
When it leaves the graph alone: a linear whose input is already int8 (its producer is quantized:
a matmul, a conv, a pooling, or shares one of those), where a float mul would break the int8 chain;
convolutions; linears with a constant input; inputs that never exceeded zero on the calibration set.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from typing import Callable

import torch
from torch.fx import GraphModule, Node

from edgeship.calibration.samples import Samples
from edgeship.quantize.graphs import ChannelMax, attr, register, run_samples, shared_weights
from edgeship.quantize.quantizer import FLOAT_NODE, LINEAR_OPS, EdgeshipQuantizer, _int8_output

log = logging.getLogger(__name__)
aten = torch.ops.aten


ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)  # searched per input; "no smoothing" is always a candidate
KEEP_ROWS = 2048  # activation rows kept per input for choosing alpha (memory bound, not all samples)


def _fake_int8(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """Symmetric int8 round trip, per row (weights, per output channel) or per tensor (activations,
    affine over the observed range)."""
    if per_row:
        scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        return (x / scale).round().clamp(-127, 127) * scale
    lo, hi = float(x.min().clamp(max=0)), float(x.max().clamp(min=0))
    scale = max(hi - lo, 1e-8) / 255
    zero = round(-128 - lo / scale)
    return ((x / scale).round() + zero).clamp(-128, 127).sub(zero) * scale


def _choose_scale(rows: torch.Tensor, x_max: torch.Tensor, weights: list[torch.Tensor]) -> tuple[torch.Tensor, float | None]:
    """The per-channel s (and its alpha, None for no smoothing) whose int8 round trip of x / s and
    W * s gives the smallest output error of the group's layers on the kept rows."""
    w_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0)
    exact = [rows @ w.T for w in weights]

    def error(s: torch.Tensor) -> float:
        xq = _fake_int8(rows / s, per_row=False)
        return sum(float(((xq @ _fake_int8(w * s, per_row=True).T) - y).pow(2).sum()) for w, y in zip(weights, exact))

    best = (error(torch.ones_like(x_max)), torch.ones_like(x_max), None)
    for alpha in ALPHAS:
        s = (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        s = torch.where(x_max > 0, s, torch.ones_like(s))
        e = error(s)
        if e < best[0]:
            best = (e, s, alpha)
    return best[1], best[2]


def smoothing_groups(module: GraphModule) -> dict[Node, list[Node]]:
    """Input node -> the linear layers reading it, for inputs the quantizer leaves in float."""
    annotated = EdgeshipQuantizer().annotate(copy.deepcopy(module))
    int8 = {n.name for n in annotated.graph.nodes if _int8_output(n)}
    groups = defaultdict(list)
    shared = shared_weights(module)
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in LINEAR_OPS or node.meta.get(FLOAT_NODE):
            continue
        act, weight = node.args[0], node.args[1]
        if not (isinstance(act, Node) and isinstance(weight, Node) and weight.op == "get_attr"):
            continue
        if act.op == "get_attr" or act.name in int8 or weight.target in shared:
            continue
        groups[act].append(node)
    return dict(groups)


def smooth(module: GraphModule, samples: Samples, progress: Callable[[int], None] | None = None,
           memo: dict | None = None) -> list[dict]:
    """Rewrites `module` in place (weights are replaced, never modified: the float program keeps
    its own). alpha is chosen per input among ALPHAS, or no smoothing, by the int8 round-trip error of
    its layers' outputs on up to KEEP_ROWS calibration rows. Returns one record per smoothed input.
    `memo`: filled with the records and each input's scales; when it already holds them, they are
    applied without reading the samples."""
    groups = smoothing_groups(module)
    if not groups:
        if progress is not None:  # the pass is counted whether or not it reads the samples
            progress(len(samples))
        return []
    replay = bool(memo) and "scales" in memo
    if replay:
        chosen = memo["scales"]
        if progress is not None:
            progress(len(samples))
    else:
        recorder = ChannelMax(module, {n.name for n in groups}, keep=KEEP_ROWS)
        run_samples(recorder, samples, progress)
        chosen = {}
    records = []
    for act, linears in groups.items():
        weights = [attr(module, lin.args[1].target).detach().float() for lin in linears]
        if replay:
            if act.name not in chosen:
                continue
            s = chosen[act.name]
        else:
            x_max = recorder.amax.get(act.name)
            if x_max is None or not bool((x_max > 0).any()):
                continue
            s, alpha = _choose_scale(torch.cat(recorder.rows[act.name]), x_max, weights)
            if alpha is None:
                continue
            chosen[act.name] = s
        _rescale(module, act, linears, weights, s)
        if not replay:
            records.append({"input": act.name, "linears": [lin.name for lin in linears], "alpha": alpha,
                            "s_min": round(float(s.min()), 4), "s_max": round(float(s.max()), 4),
                            "activation_max": round(float(x_max.max()), 3)})
    if replay:
        records = memo["records"]
    elif memo is not None:
        memo["scales"], memo["records"] = chosen, records
    module.graph.eliminate_dead_code()
    module.graph.lint()
    module.recompile()
    log.info("SmoothQuant: %d of %d inputs rescaled (%d linear layers)", len(records), len(groups),
             sum(len(r["linears"]) for r in records))
    return records


def _rescale(module: GraphModule, act, linears: list, weights: list[torch.Tensor], s: torch.Tensor) -> None:
    """`act` divided by `s` per channel (one mul after it) and each linear layer's weight columns multiplied
    by it: the layers compute the same, with the activation's outlier channels made smaller."""
    graph = module.graph
    scale_name = register(module, f"_smooth_{act.name}_inv", (1.0 / s).to(weights[0].dtype))
    with graph.inserting_after(act):
        inv = graph.get_attr(scale_name)
    with graph.inserting_after(inv):
        mul = graph.call_function(aten.mul.Tensor, (act, inv))
    mul.meta["val"] = act.meta.get("val")
    for lin, w in zip(linears, weights):
        new_weight = register(module, f"_smooth_{lin.name}_weight", (w * s[None, :]).to(w.dtype))
        with graph.inserting_before(lin):
            weight_node = graph.get_attr(new_weight)
        weight_node.meta["val"] = lin.args[1].meta.get("val")
        lin.args = (mul, weight_node, *lin.args[2:])
