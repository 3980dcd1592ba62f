"""Outputs that are decisions: a sigmoid's probability (decided at 0.5) or a softmax's distribution (decided by
its largest entry). Read from the float program, so a model says what its outputs are by how it computes them."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

# ops that move values without computing new ones: an output behind them is still the op's output
_PASS_THROUGH = {"view", "reshape", "_unsafe_view", "squeeze", "unsqueeze", "clone", "select", "slice", "permute",
                 "transpose", "t", "flatten", "contiguous", "alias", "expand", "detach", "_to_copy", "squeeze_"}
SIGMOID, SOFTMAX = "sigmoid > 0.5", "softmax argmax"


def _op(node: torch.fx.Node) -> str | None:
    if node.op != "call_function":
        return None
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def output_decisions(program: torch.export.ExportedProgram) -> list[dict | None]:
    """Per user output of `program`: {"rule": SIGMOID} or {"rule": SOFTMAX, "dim": d} when its last computing
    op is a sigmoid or a softmax, else None."""
    nodes = {n.name: n for n in program.graph.nodes}
    kinds: list[dict | None] = []
    for name in program.graph_signature.user_outputs:
        node = nodes.get(name)
        while node is not None and _op(node) in _PASS_THROUGH and isinstance(node.args[0], torch.fx.Node):
            node = node.args[0]
        op = _op(node) if node is not None else None
        if op == "sigmoid":
            kinds.append({"rule": SIGMOID})
        elif op in ("_softmax", "softmax"):
            kinds.append({"rule": SOFTMAX, "dim": int(node.args[1]) if len(node.args) > 1 else -1})
        else:
            kinds.append(None)
    return kinds


def agreement(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
              decisions: list[dict | None]) -> list[dict]:
    """For each decision output: the share of decisions (every element of a sigmoid output, every row of a
    softmax one, over all samples) on which `candidate` agrees with `reference`."""
    found = []
    for k, kind in enumerate(decisions):
        if kind is None:
            continue
        same = []
        for ref, cand in zip(reference, candidate):
            r, c = np.asarray(ref[k], np.float64), np.asarray(cand[k], np.float64)
            if kind["rule"] == SIGMOID:
                same.append(((r > 0.5) == (c > 0.5)).ravel())
            elif r.ndim:
                same.append((np.argmax(r, axis=kind["dim"]) == np.argmax(c, axis=kind["dim"])).ravel())
        if same:
            values = np.concatenate(same)
            found.append({"output": k, "rule": kind["rule"], "decisions": int(values.size),
                          "agreement": round(float(values.mean()), 4)})
    return found


DECISION_AGREEMENT = 0.98  # a quantized artifact whose decisions agree with float less often than this is flagged


def flag_changed_decisions(artifacts: list[dict]) -> None:
    """Marks each quantized artifact whose sigmoid / softmax decisions agree with the float model's on fewer
    than DECISION_AGREEMENT of the eval samples (`decisions_changed`), and warns: an SQNR that looks fine
    can hide a probability near its threshold that flips (a voice-activity detector's speech decision)."""
    for a in artifacts:
        found = a["accuracy"].get("decisions") or []
        if a["precision"] == "fp32" or not found:
            continue
        low = [d for d in found if d["agreement"] < DECISION_AGREEMENT]
        a["decisions_changed"] = bool(low)
        for d in low:
            log.warning("%s: output %d's decisions (%s) agree with the float model's on %.1f%% of %d; "
                        "`edgeship debug` names the layer where the error jumps: keep it in float (recipe "
                        "keep_float), or export with a budget (--min-sqnr) that keeps the sensitive layers float",
                        a["path"], d["output"], d["rule"], 100 * d["agreement"], d["decisions"])
