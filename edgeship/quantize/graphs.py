"""Helpers the post-training passes share: module attributes by dotted name, eval-mode dropout
removed, and recording interpreters run over the calibration samples."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch
from torch.fx import GraphModule, Interpreter, Node
from torchao.quantization.pt2e.observer import ObserverBase

from edgeship.calibration.samples import Samples
from edgeship.export.fx import CONV_OPS, LINEAR_OPS, attr, register, replace_attr  # noqa: F401  (re-exported)
from edgeship.export.inputs import to_torch


class Watcher(Interpreter):
    """Runs the graph and hands each watched node and its output to `record` (the node's inputs are
    still in `self.env` then): what every pass that collects statistics over the samples builds on.
    `float_observers` (for a prepared graph): observers return their input and see nothing, so the
    values are the float ones and calibration's statistics stay as they were."""

    float_observers = False

    def __init__(self, module: GraphModule, watch: set[str]) -> None:
        super().__init__(module)
        self.watch = watch

    def run_node(self, n: Node):
        if self.float_observers and n.op == "call_module" and isinstance(self.module.get_submodule(n.target),
                                                                          ObserverBase):
            return self.env[n.args[0]]
        out = super().run_node(n)
        if n.name in self.watch:
            self.record(n, out)
        return out

    def record(self, node: Node, out) -> None:
        raise NotImplementedError


class ChannelMax(Watcher):
    """Keeps, for each watched node, the max |value| per last-axis channel, and (when `keep` > 0) up to
    `keep` rows of its values for fitting."""

    def __init__(self, module: GraphModule, watch: set[str], keep: int = 0) -> None:
        super().__init__(module, watch)
        self.keep, self.amax, self.rows = keep, {}, {}

    def record(self, node: Node, out) -> None:
        flat = out.detach().reshape(-1, out.shape[-1]).float()
        v = flat.abs().amax(dim=0)
        self.amax[node.name] = torch.maximum(self.amax[node.name], v) if node.name in self.amax else v
        kept = self.rows.setdefault(node.name, [])
        have = sum(len(r) for r in kept)
        if have < self.keep:
            kept.append(flat[: self.keep - have].clone())


def observed_weights(prepared: GraphModule, ops: set) -> list[tuple[Node, ObserverBase, str]]:
    """(layer, its weight observer, weight attribute) for each `ops` node of a prepared graph whose weight
    is a constant behind an observer (what the quantizer gave int8 weights)."""
    found = []
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in ops or len(node.args) < 2:
            continue
        observed = node.args[1]
        if not (isinstance(observed, Node) and observed.op == "call_module"):
            continue
        observer, weight = prepared.get_submodule(observed.target), observed.args[0]
        if isinstance(observer, ObserverBase) and isinstance(weight, Node) and weight.op == "get_attr":
            found.append((node, observer, weight.target))
    return found


def weight_source(node: Node) -> Node | None:
    """The `get_attr` node of a conv / linear call's weight (behind its observer, if any), or None
    when the weight is computed."""
    weight = node.args[1] if len(node.args) > 1 else None
    while isinstance(weight, Node) and weight.op == "call_module":  # behind its observer
        weight = weight.args[0]
    return weight if isinstance(weight, Node) and weight.op == "get_attr" else None


def shared_weights(module: GraphModule) -> set[str]:
    """Weight attributes read by more than one layer call (a recurrent layer unrolled over time, weight
    tying): passes that rewrite one layer's weight leave these alone, so the artifact keeps one copy."""
    reads = Counter()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in CONV_OPS | LINEAR_OPS:
            weight = weight_source(node)
            if weight is not None:
                reads[weight.target] += 1
    return {target for target, count in reads.items() if count > 1}


def run_samples(recorder: Interpreter, samples: Samples, progress: Callable[[int], None] | None = None) -> None:
    """Runs a recording interpreter over every sample, without gradients."""
    with torch.no_grad():
        for i in range(len(samples)):
            recorder.run(*to_torch(samples.sample(i)))
            if progress is not None:
                progress(1)


aten = torch.ops.aten
_LOGS = {aten.log.default, aten.log2.default, aten.log10.default, aten.log1p.default}
_PASS_THROUGH = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.clamp.default,
                 aten.clamp_min.default, aten.abs.default, aten.view.default, aten.reshape.default,
                 aten.transpose.int, aten.permute.default, aten.squeeze.dim, aten.unsqueeze.default,
                 aten.flatten.using_ints, aten.slice.Tensor, aten.contiguous.default, aten.clone.default}


def outputs_read_by_log(module: GraphModule) -> list[dict]:
    """The quantizable ops whose output reaches a logarithm through reshapes and arithmetic with constants
    only (`log(mel @ power + eps)`, `log(x.clamp(min=1e-5))`): each as {"layer", "log"}. They stay float.

    A per-tensor int8 range spans the largest value; a log-mel front-end's energies span 60 dB and more,
    so the quiet bands round to a few steps or to zero, and the log turns that into errors as large as
    the features (a waveform -> stft -> mel -> log -> GRU classifier: 13.8 dB simulated with its mel
    matmul int8, 41.6 dB with it float and everything else int8)."""
    found = []
    for log_node in (n for n in module.graph.nodes if n.op == "call_function" and n.target in _LOGS):
        node = log_node.args[0]
        while isinstance(node, Node) and node.op == "call_function" and node.target in _PASS_THROUGH:
            tensors = [a for a in node.args if isinstance(a, Node) and a.op != "get_attr"]
            if len(tensors) != 1:
                break  # two activations (re * re + im * im): that op is the producer
            node = tensors[0]
        if isinstance(node, Node) and node.op == "call_function" and node.target not in _LOGS:
            found.append({"layer": node.name, "log": log_node.name})
    return found
