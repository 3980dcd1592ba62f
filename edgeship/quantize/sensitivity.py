"""Per-layer sensitivity and the fewest layers to keep in float to meet an accuracy budget; for int4
recipes, the linear layers' sensitivity to their int4 weights.

pt2e observers watch float values, so calibration does not depend on which layers end up
quantized: one calibration serves every choice. Each observer is replaced by a fake-quantize module
that can be switched off, and a layer "kept in float" switches off the observers of its weight and
of its activation inputs. The chosen layers are then left unannotated by the quantizer, which gives
the same graph.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import ObserverBase

from edgeship.calibration.samples import Samples
from edgeship.export.inputs import to_torch
from edgeship.metrics.compare import accuracy
from edgeship.quantize.quantizer import CONV_OPS, LINEAR_OPS, MATMUL_OPS
from edgeship.quantize.stage import stage

log = logging.getLogger(__name__)

LAYER_OPS = CONV_OPS | LINEAR_OPS | MATMUL_OPS


class _FakeQuant(torch.nn.Module):
    def __init__(self, observer: ObserverBase) -> None:
        super().__init__()
        scale, zero_point = observer.calculate_qparams()
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.int())
        self.qmin, self.qmax = int(observer.quant_min), int(observer.quant_max)
        self.axis = getattr(observer, "ch_axis", None) if scale.numel() > 1 else None
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, float(self.scale), int(self.zero_point),
                                                         self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis,
                                                      self.qmin, self.qmax)


@dataclass(frozen=True)
class Layer:
    name: str  # node name in the exported graph (what the quantizer's skip set holds): its first call's
    op: str
    module: str  # the nn.Module path it came from
    observers: tuple[str, ...]
    # every call of the layer where several read one weight (an unrolled recurrent layer's steps): they
    # are switched together, as the artifact holds one copy of that weight; empty: the one call `name`
    calls: tuple[str, ...] = ()

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.calls or (self.name,)


@dataclass(frozen=True)
class Sensitivity:
    layer: Layer
    alone: dict  # accuracy with only this layer quantized
    kept_float: dict  # accuracy with every layer quantized but this one


class _Evaluated:
    """A graph run on the evaluation samples and compared with the float outputs; subclasses set `gm`,
    `layers` and the switches `evaluate` flips."""

    evaluation: Samples
    reference: list
    decisions: list | None = None  # metrics/decisions.py: which outputs are decisions, for decision_agreement

    def subset(self, count: int):
        """The same graph and switches, evaluated on the first `count` samples only."""
        view = copy.copy(self)
        view.evaluation = self.evaluation.take(list(range(min(count, len(self.evaluation)))),
                                               self.evaluation.source)
        view.reference = self.reference[:count]
        return view

    def _run(self) -> dict:
        outputs = []
        with torch.no_grad():
            for i in range(len(self.evaluation)):
                result = self.gm(*to_torch(self.evaluation.sample(i)))
                result = result if isinstance(result, (tuple, list)) else (result,)
                outputs.append([r.numpy() for r in result])
        return accuracy(self.reference, outputs, self.decisions)


class Simulator(_Evaluated):
    """The calibrated graph with switchable fake quantization, evaluated against float outputs."""

    def __init__(self, prepared: GraphModule, evaluation: Samples, reference) -> None:
        self.gm = prepared
        self.evaluation, self.reference = evaluation, reference
        self.fq: dict[str, _FakeQuant] = {}
        for node in prepared.graph.nodes:
            if node.op == "call_module" and isinstance(getattr(prepared, node.target), ObserverBase):
                fq = _FakeQuant(getattr(prepared, node.target))
                setattr(prepared, node.target, fq)
                self.fq[node.target] = fq
        self.layers = _layers(prepared)
        self.restored = _replaced_values(prepared, self.layers)

    def evaluate(self, float_layers: set[str] | frozenset[str] = frozenset(), only: str | None = None) -> dict:
        from edgeship.quantize.graphs import replace_attr

        off = {o for layer in self.layers if layer.name in float_layers for o in layer.observers}
        on_only = None if only is None else set(next(l for l in self.layers if l.name == only).observers)
        for name, fq in self.fq.items():
            fq.enabled = (name in on_only) if on_only is not None else (name not in off)
        for layer, values in self.restored.items():
            kept_float = layer != only if only is not None else layer in float_layers
            for target, (float_value, changed) in values.items():
                replace_attr(self.gm, target, float_value if kept_float else changed)
        return self._run()


class Int4Simulator(_Evaluated):
    """The float graph (after the int4 recipe's passes) with each linear layer's weight switchable
    between float and its int4 values (dequantized), evaluated like `Simulator`: what `analyze` ranks
    for int4 recipes, where a sensitive layer can be given int8 (keep_int8) or float (keep_float)."""

    def __init__(self, module: GraphModule, weights: list, evaluation: Samples, reference) -> None:
        from edgeship.quantize.graphs import attr

        self.gm = copy.deepcopy(module)
        self.evaluation, self.reference = evaluation, reference
        self.weights = {w.layer: w for w in weights}
        self.values = {w.layer: (attr(self.gm, w.attr), w.dequantized()) for w in weights}
        nodes = {n.name: n for n in self.gm.graph.nodes}
        self.layers = [Layer(w.layer, "linear", module_path(nodes[w.layer]), ()) for w in weights]

    def evaluate(self, float_layers: set[str] | frozenset[str] = frozenset(), only: str | None = None) -> dict:
        from edgeship.quantize.graphs import replace_attr

        for name, w in self.weights.items():
            int4 = name == only if only is not None else name not in float_layers
            replace_attr(self.gm, w.attr, self.values[name][1 if int4 else 0])
        return self._run()


def _replaced_values(prepared: GraphModule, layers: list[Layer]) -> dict[str, dict[str, tuple]]:
    """Per layer (by name), the weight and bias attributes a PTQ pass changed (GPTQ's values, bias
    correction's bias), each with its float and changed values: a layer switched to float gets its float
    values back, as the export that keeps it float computes with them."""
    from edgeship.quantize.graphs import attr

    floats = stage(prepared).float_values
    layer_of = {node: layer.name for layer in layers for node in layer.nodes}
    found: dict[str, dict[str, tuple]] = {}
    for node in prepared.graph.nodes:
        if node.name not in layer_of:
            continue
        for arg in node.args[1:3]:
            source = arg.args[0] if isinstance(arg, Node) and arg.op == "call_module" else arg
            if isinstance(source, Node) and source.op == "get_attr" and source.target in floats:
                found.setdefault(layer_of[node.name], {})[source.target] = (
                    floats[source.target], attr(prepared, source.target).detach().clone())
    return found


def module_path(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _observers_of(nodes) -> list[str]:
    return [n.target for n in nodes if isinstance(n, Node) and n.op == "call_module"]


def _downstream_observers(node: Node) -> list[str] | None:
    """Observers after `node` through value-preserving ops and fused activations, or None when
    any of them feeds a layer (then it is that layer's input and stays on)."""
    from edgeship.quantize.quantizer import ACTIVATIONS, SHARING_OPS

    found, frontier = [], list(node.users)
    while frontier:
        user = frontier.pop()
        if user.op == "call_module":
            found.append(user.target)
            frontier += list(user.users)
        elif user.op == "call_function" and user.target in LAYER_OPS:
            if found:
                return None
        elif user.op == "call_function" and (user.target in SHARING_OPS or user.target in ACTIVATIONS):
            frontier += list(user.users)
    return found


def _layers(prepared: GraphModule) -> list[Layer]:
    """Each conv/linear/matmul with the observers of its weight and activation inputs, and the
    ones after its output (through reshapes and fused activations) that no other layer reads. Calls
    that read one weight attribute (an unrolled recurrent layer's steps) are one layer."""
    from edgeship.quantize.graphs import weight_source

    groups: dict[str, list[tuple[Node, tuple[str, ...]]]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_function" or node.target not in LAYER_OPS:
            continue
        inputs = _observers_of(node.args)
        if not inputs:
            continue
        outputs = _downstream_observers(node) or []
        weight = weight_source(node)
        key = weight.target if weight is not None else node.name
        groups.setdefault(key, []).append((node, tuple(dict.fromkeys(inputs + outputs))))
    layers = []
    for calls in groups.values():
        first = calls[0][0]
        observers = tuple(dict.fromkeys(o for _, obs in calls for o in obs))
        layers.append(Layer(first.name, str(first.target).split(".")[-2], module_path(first), observers,
                            tuple(n.name for n, _ in calls) if len(calls) > 1 else ()))
    return layers


def rank(sim: Simulator, metric: str, alone: bool = False, advance=None) -> list[Sensitivity]:
    """Layers ordered by how much keeping each one in float recovers (most first). `alone` also
    measures each layer quantized on its own; `advance(1)` is called per layer."""
    found = []
    for layer in sim.layers:
        found.append(Sensitivity(layer, sim.evaluate(only=layer.name) if alone else {},
                                 sim.evaluate({layer.name})))
        if advance is not None:
            advance(1)
    return sorted(found, key=lambda s: -score(s.kept_float, metric))


def score(acc: dict, metric: str) -> float:
    value = acc[metric]
    return float("inf") if value is None and metric == "sqnr_db" else float(value if value is not None else 0)


def meets(acc: dict, budget: dict) -> bool:
    return all(score(acc, metric) >= limit for metric, limit in budget.items())


def fewest_float_layers(sim: Simulator, ranked: list[Sensitivity], budget: dict) -> tuple[list[str], dict, bool]:
    """The shortest prefix of `ranked` to keep in float so the simulated model meets `budget`
    (`{"cosine": 0.99, "sqnr_db": 25, "top1_agreement": 0.995}`). Binary search over the prefix
    length (the metric rises, near enough monotonically, as layers return to float); returns
    (layers, accuracy, met). When even all layers in float cannot meet it, met is False."""
    names = [s.layer.name for s in ranked]
    full = sim.evaluate()
    if meets(full, budget):
        return [], full, True
    everything = sim.evaluate(set(names))
    if not meets(everything, budget):
        return names, everything, False
    lo, hi, best = 0, len(names), (names, everything)
    while lo < hi:
        mid = (lo + hi) // 2
        acc = sim.evaluate(set(names[:mid]))
        if meets(acc, budget):
            hi, best = mid, (names[:mid], acc)
        else:
            lo = mid + 1
    return best[0], best[1], True


def default_decision_budget(prepared, evaluation, reference, decisions: list | None) -> dict | None:
    """{"decision_agreement": DECISION_AGREEMENT} when the model's outputs hold decisions (a sigmoid, a
    softmax) and the simulated int8 graph keeps fewer of them than that on the eval samples: the default
    recipe then keeps the fewest layers float that bring them back (a voice-activity detector's speech
    decisions agreed with float on 78% of chunks at int8 everywhere, and nothing said so). None otherwise."""
    from edgeship.metrics.decisions import DECISION_AGREEMENT

    if not decisions or not any(decisions):
        return None
    sim = Simulator(copy.deepcopy(prepared), evaluation, reference)
    sim.decisions = decisions
    reached = sim.evaluate().get("decision_agreement")
    if reached is None or reached >= DECISION_AGREEMENT:
        return None
    log.warning("int8 keeps %.1f%% of the model's output decisions on %d eval samples (sigmoid at 0.5 / softmax "
                "argmax); keeping the fewest sensitive layers in float to reach %.0f%%", 100 * reached,
                len(evaluation), 100 * DECISION_AGREEMENT)
    return {"decision_agreement": DECISION_AGREEMENT}
