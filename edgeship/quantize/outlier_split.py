"""Outlier output channels of a linear layer computed in float; the rest stays int8.

Transformers trained like BERT carry a few hidden dimensions whose values are tens to hundreds of
times larger than the others (all-MiniLM-L6-v2: the FFN down-projections' output channel 99 reaches
195 while the median channel stays under 1). A per-tensor int8 output then has steps wider than most
values: on that model the int8 outputs of the six FFN down-projections alone take the embedding cosine
from 0.993 to 0.953.

The pass splits such a layer y = x W^T + b: the int8 layer keeps every row of W but the outlier rows
(zeroed, so its output range is the ordinary channels'), and a float layer computes only the outlier rows
(k x in_features, k <= 2% of the outputs) and scatters them back with a k-column one-hot linear:
y = linear(x, W_main, b_main) + linear(linear(x, W_out, b_out), E). Every runtime runs these as plain
linear and add ops; the extra float work is 2 k of the layer's rows.

When it applies: linear layers whose output the quantizer makes int8, whose calibration outputs have
channels above `ratio` x the median channel's max |y| (at most 2% of the channels are split).
When it leaves the graph alone: layers without such channels, layers with a constant or int weight,
and every conv (their per-channel outliers fold into the next layer's per-channel weights).
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
from torch.fx import GraphModule, Node

from edgeship.calibration.samples import Samples
from edgeship.quantize.graphs import ChannelMax, attr, register, run_samples, shared_weights
from edgeship.quantize.quantizer import FLOAT_NODE, LINEAR_OPS, EdgeshipQuantizer

log = logging.getLogger(__name__)
aten = torch.ops.aten
MAX_SHARE = 0.02


def _int8_output_linears(module: GraphModule) -> list[Node]:
    annotated = EdgeshipQuantizer().annotate(copy.deepcopy(module))
    quantized = {n.name for n in annotated.graph.nodes
                 if n.meta.get("quantization_annotation") is not None
                 and n.meta["quantization_annotation"].output_qspec is not None}
    found = []
    shared = shared_weights(module)
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in LINEAR_OPS and isinstance(node.args[1], Node) \
                and node.args[1].op == "get_attr" and node.args[1].target not in shared:
            fused = [u for u in node.users if u.name in quantized]
            if node.name in quantized or fused:
                found.append(node)
    return found


def split_outliers(module: GraphModule, samples: Samples, ratio: float = 8.0,
                   progress: Callable[[int], None] | None = None, memo: dict | None = None) -> list[dict]:
    """Rewrites `module` in place; returns one record per split layer (its name and channels).
    `memo`: filled with those records; when it already holds them, they are replayed without
    reading the samples."""
    if memo and "records" in memo:
        return _replay(module, memo["records"], len(samples), progress)
    records = _find_and_split(module, samples, ratio, progress)
    if memo is not None:
        memo["records"] = records
    return records


def _replay(module: GraphModule, records: list[dict], samples: int, progress) -> list[dict]:
    nodes = {n.name: n for n in module.graph.nodes}
    for record in records:
        _split(module, nodes[record["layer"]], list(record["channels"]))
    _finish(module, records)
    if progress is not None:
        progress(samples)
    return records


def _finish(module: GraphModule, records: list[dict]) -> None:
    if records:
        module.graph.eliminate_dead_code()
        module.graph.lint()
        module.recompile()
        log.info("outlier channels in float: %s", ", ".join(f"{r['layer']} {r['channels']}" for r in records))


def _find_and_split(module: GraphModule, samples: Samples, ratio: float, progress) -> list[dict]:
    linears = _int8_output_linears(module)
    if not linears:
        if progress is not None:  # the pass is counted whether or not it reads the samples
            progress(len(samples))
        return []
    recorder = ChannelMax(module, {n.name for n in linears})
    run_samples(recorder, samples, progress)
    records = []
    for node in linears:
        amax = recorder.amax.get(node.name)
        if amax is None or amax.numel() < 8:
            continue
        median = float(amax.median())
        cap = max(1, int(MAX_SHARE * amax.numel()))
        order = torch.argsort(amax, descending=True)[:cap]
        idx = [int(c) for c in order if float(amax[c]) > ratio * max(median, 1e-6)]
        if not idx:
            continue
        _split(module, node, sorted(idx))
        rest = float(amax[[c for c in range(amax.numel()) if c not in set(idx)]].max())
        records.append({"layer": node.name, "channels": sorted(idx), "outlier_max": round(float(amax.max()), 3),
                        "rest_max": round(rest, 3), "median": round(median, 3)})
    _finish(module, records)
    return records


def _split(module: GraphModule, node: Node, idx: list[int]) -> None:
    graph = module.graph
    weight = attr(module, node.args[1].target).detach()
    bias_node = node.args[2] if len(node.args) > 2 else None
    bias = attr(module, bias_node.target).detach() if isinstance(bias_node, Node) else None
    rows = torch.tensor(idx)
    main_w = weight.clone()
    main_w[rows] = 0
    scatter = torch.zeros(weight.shape[0], len(idx), dtype=weight.dtype)
    scatter[rows, torch.arange(len(idx))] = 1
    names = {"main_w": main_w, "out_w": weight[rows].clone(), "scatter": scatter}
    if bias is not None:
        main_b = bias.clone()
        main_b[rows] = 0
        names |= {"main_b": main_b, "out_b": bias[rows].clone()}
    attrs = {k: register(module, f"_split_{node.name}_{k}", v) for k, v in names.items()}
    x = node.args[0]
    with graph.inserting_before(node):
        get = {k: graph.get_attr(v) for k, v in attrs.items()}
    for k, g in get.items():
        g.meta["val"] = names[k]
    node.args = (x, get["main_w"], get.get("main_b"))
    users = list(node.users)
    with graph.inserting_after(node):
        side = graph.call_function(aten.linear.default, (x, get["out_w"], get.get("out_b")))
    with graph.inserting_after(side):
        spread = graph.call_function(aten.linear.default, (side, get["scatter"]))
    with graph.inserting_after(spread):
        total = graph.call_function(aten.add.Tensor, (node, spread))
    val = node.meta.get("val")
    for new in (side, spread, total):
        new.meta[FLOAT_NODE] = True
        new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
    spread.meta["val"] = total.meta["val"] = val
    for user in users:
        user.replace_input_with(node, total)
