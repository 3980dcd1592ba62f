"""Runtime-neutral record of every calibrated scale and zero point (`encodings.json`)."""

from __future__ import annotations

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e.observer import ObserverBase

ENCODINGS_VERSION = 1


def collect_encodings(prepared: GraphModule) -> dict:
    """One entry per observed tensor, keyed by the graph node it observes (a weight's parameter
    name for weights): dtype, scheme, axis, scale(s), zero point(s), observed min and max."""
    activations, weights = {}, {}
    for node in prepared.graph.nodes:
        if node.op != "call_module":
            continue
        observer = getattr(prepared, node.target)
        if not isinstance(observer, ObserverBase) or not hasattr(observer, "calculate_qparams"):
            continue
        source = node.args[0]
        scale, zero_point = observer.calculate_qparams()
        entry = {
            "dtype": str(observer.dtype).replace("torch.", ""),
            "qscheme": str(observer.qscheme).replace("torch.", ""),
            "quant_min": int(observer.quant_min),
            "quant_max": int(observer.quant_max),
            "scale": _list(scale),
            "zero_point": _list(zero_point),
        }
        if getattr(observer, "ch_axis", None) is not None and scale.numel() > 1:
            entry["axis"] = int(observer.ch_axis)
        if hasattr(observer, "min_val") and observer.min_val.numel() == 1:
            entry["observed_min"] = float(observer.min_val)
            entry["observed_max"] = float(observer.max_val)
        if source.op == "get_attr":
            weights[str(source.target)] = entry
        else:
            consumers = sorted(u.args[0].name if u.op == "call_module" else u.name for u in node.users)
            activations[source.name] = entry | {"consumers": consumers}
    return {"version": ENCODINGS_VERSION, "activations": activations, "weights": weights}


def _list(t: torch.Tensor):
    values = t.detach().flatten().tolist()
    return values[0] if len(values) == 1 else values
