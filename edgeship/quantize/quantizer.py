"""The one pt2e Quantizer that every target adapter consumes.

It annotates an ATen graph captured by torch.export the way all three runtimes' int8 kernels expect:
per-channel symmetric int8 weights, per-tensor affine int8 activations, int32 biases whose scale is
input scale x weight scale, activation functions fused into the op before them, and value-preserving
ops (reshape, pooling by max, ...) sharing their input's quantization parameters. Ops it does not
annotate stay in float between a dequantize and a quantize; `not_quantized_ops` lists them.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MinMaxObserver,
    PerChannelMinMaxObserver,
)
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)

from edgeship.export.fx import CONV_OPS, LINEAR_OPS, MATMUL_OPS  # noqa: F401  (re-exported)

aten = torch.ops.aten
FLOAT_NODE = "edgeship_float"  # node.meta key: a node a PTQ pass added to run in float (never annotated)

ACTIVATIONS = {aten.relu.default, aten.relu_.default, aten.relu6.default, aten.relu6_.default,
               aten.hardtanh.default, aten.hardtanh_.default}
BINARY_OPS = {aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.mul_.Tensor}
POOL_OPS = {aten.adaptive_avg_pool2d.default, aten.avg_pool2d.default, aten.mean.dim}
SHARING_OPS = {
    aten.max_pool2d.default, aten.flatten.using_ints, aten.view.default, aten.reshape.default,
    aten.permute.default, aten.transpose.int, aten.squeeze.dim, aten.unsqueeze.default,
    aten.dropout.default,
}


@dataclass(frozen=True)
class ActivationRange:
    """How activation ranges are calibrated: `histogram`/`mse` (L2-optimal range search on a
    histogram), `minmax`, `percentile` (99.99th), `entropy` (KL divergence), or `auto` (histogram
    observers; quantize/range_choice.py picks L2 or percentile after calibration)."""

    method: str = "histogram"

    def observer(self):
        from edgeship.quantize.observers import EntropyObserver, PercentileObserver

        eps = 2**-12
        observers = {"auto": HistogramObserver, "histogram": HistogramObserver, "mse": HistogramObserver,
                     "minmax": MinMaxObserver,
                     "percentile": PercentileObserver, "entropy": EntropyObserver}
        if self.method not in observers:
            raise ValueError(f"unknown activation range method {self.method!r}")
        return observers[self.method].with_args(eps=eps)


def _act_spec(method: str) -> QuantizationSpec:
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=ActivationRange(method).observer(),
    )


def _wide_spec() -> QuantizationSpec:
    """int16 activations: symmetric (LiteRT's 16x8 kernels take zero point 0 only), over the observed
    min/max: at 16 bits clipping saves nothing (MobileNetV2, int16 activations everywhere: 22.3-25.4 dB
    with the int8 recipe's clipped ranges, 31.1-33.7 dB with min/max)."""
    bounds = {"dtype": torch.int16, "quant_min": -32767, "quant_max": 32767, "qscheme": torch.per_tensor_symmetric}
    return QuantizationSpec(**bounds, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-24, **bounds))


def _weight_spec(granularity: str = "per_channel") -> QuantizationSpec:
    if granularity == "per_tensor":
        return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_tensor_symmetric,
                                observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric, ch_axis=0,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2**-12),
    )


def _is_tensor(arg) -> bool:
    return isinstance(arg, Node) and isinstance(arg.meta.get("val"), torch.Tensor) and \
        arg.meta["val"].dtype.is_floating_point


def _annotated(node: Node) -> bool:
    ann = node.meta.get("quantization_annotation")
    return ann is not None and ann._annotated


def _int8_output(node) -> bool:
    """True when `node`'s output is already annotated to be quantized."""
    if not isinstance(node, Node) or not _annotated(node):
        return False
    return node.meta["quantization_annotation"].output_qspec is not None


def _mark(node: Node, inputs: dict, output) -> None:
    node.meta["quantization_annotation"] = QuantizationAnnotation(
        input_qspec_map=inputs, output_qspec=output, _annotated=True)


def _fusable_activation(node: Node) -> Node | None:
    """The single activation user that the runtimes fuse into `node`, if there is one."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if user.target not in ACTIVATIONS:
        return None
    if user.target in (aten.hardtanh.default, aten.hardtanh_.default):
        lo, hi = (list(user.args[1:3]) + [-1.0, 1.0])[:2]
        if lo != 0.0 or hi != 6.0:
            return None
    return user


class EdgeshipQuantizer(Quantizer):
    """Static int8: per-channel symmetric weights, per-tensor affine activations.

    `skip` holds node names (from the exported graph) to leave in float; `wide` the conv / linear /
    matmul layers whose inputs and outputs are int16 instead (weights stay int8). An add, pool, concat
    or data-movement op whose inputs are all int16 is int16 too, so a run of such layers has no int8
    step between them.
    """

    def __init__(self, activation_method: str = "histogram", skip: frozenset[str] = frozenset(),
                 weight_granularity: str = "per_channel", wide: frozenset[str] = frozenset()) -> None:
        super().__init__()
        ActivationRange(activation_method).observer()  # validates the name
        self.activation_method = activation_method
        self.skip = skip
        self.weight_granularity = weight_granularity
        self.wide = wide
        self._wide_outputs: set[str] = set()  # nodes whose output is annotated int16

    def _act(self, wide: bool = False) -> QuantizationSpec:
        return _wide_spec() if wide else _act_spec(self.activation_method)

    def _all_wide(self, nodes) -> bool:
        return all(isinstance(n, Node) and n.name in self._wide_outputs for n in nodes)

    def annotate(self, model: GraphModule) -> GraphModule:
        # One sweep in topological order, so a producer is annotated before its users.
        self._wide_outputs = set()
        for node in model.graph.nodes:
            if node.op != "call_function" or node.name in self.skip or _annotated(node) or node.meta.get(FLOAT_NODE):
                continue
            if node.target in CONV_OPS or node.target in LINEAR_OPS:
                self._annotate_weighted(node)
            elif node.target in BINARY_OPS and all(_int8_output(a) for a in node.args[:2]):
                # Only inside an int8 region: an add between float ops (a transformer's residual
                # around layer_norm, its embedding sums) carries outliers that per-tensor int8
                # cannot hold; measured on all-MiniLM-L6-v2: mean cosine 0.87 with them, 0.95 without.
                wide = self._all_wide(node.args[:2])
                self._annotate_with_output({a: self._act(wide) for a in node.args[:2]}, node, wide)
            elif node.target in MATMUL_OPS and all(_is_tensor(a) for a in node.args[:2]):
                wide = node.name in self.wide
                self._annotate_with_output({a: self._act(wide) for a in node.args[:2]}, node, wide)
            elif node.target in POOL_OPS and _is_tensor(node.args[0]):
                wide = self._all_wide(node.args[:1])
                _mark(node, {node.args[0]: self._act(wide)}, self._act(wide))
                self._note_output(node, wide)
            elif node.target is aten.cat.default and all(_int8_output(a) for a in node.args[0]):
                self._annotate_cat(node)
            elif node.target in SHARING_OPS and _int8_output(node.args[0]):
                shared = SharedQuantizationSpec(node.args[0])
                _mark(node, {node.args[0]: shared}, shared)
                self._note_output(node, self._all_wide(node.args[:1]))
        return model

    def _note_output(self, node: Node, wide: bool) -> None:
        if wide:
            self._wide_outputs.add(node.name)

    def _annotate_cat(self, node: Node) -> None:
        """A concat of int8 tensors (DenseNet/Inception-style feature concats): every input and the
        output share one observer, so the concat is exact in int8 and needs no requantization. A
        concat with a float input (a ViT's class token before its patch embeddings) stays float:
        one per-tensor range over both costs the class token its precision (HF ViT: 35.7 dB -> 15.1 dB)."""
        inputs = [a for a in node.args[0] if _is_tensor(a)]
        if len(inputs) != len(node.args[0]):
            return
        first = inputs[0]
        shared = SharedQuantizationSpec((first, node))
        wide = self._all_wide(inputs)
        _mark(node, {first: self._act(wide), **{a: shared for a in inputs[1:]}}, shared)
        self._note_output(node, wide)

    def _annotate_weighted(self, node: Node) -> None:
        act, weight = node.args[0], node.args[1]
        if not (_is_tensor(act) and isinstance(weight, Node)):
            return
        # The bias stays float: every runtime quantizes it to int32 at input scale x weight scale
        # itself, and XNNPACK only delegates a conv/linear whose bias is a static float param.
        wide = node.name in self.wide
        self._annotate_with_output({act: self._act(wide), weight: _weight_spec(self.weight_granularity)}, node, wide)

    def _annotate_with_output(self, inputs: dict, node: Node, wide: bool = False) -> None:
        fused = _fusable_activation(node)
        if fused is not None and fused.name not in self.skip:
            _mark(node, inputs, None)
            _mark(fused, {}, self._act(wide))
            self._note_output(fused, wide)
        else:
            _mark(node, inputs, self._act(wide))
            self._note_output(node, wide)

    def validate(self, model: GraphModule) -> None:
        return None


STRUCTURAL_OPS = {
    "view", "reshape", "flatten", "permute", "transpose", "unsqueeze", "squeeze", "expand", "slice",
    "select", "clone", "contiguous", "_assert_tensor_metadata", "dropout", "getitem", "size", "sym_size",
    "_to_copy", "to", "alias", "detach", "lift_fresh_copy", "_assert_scalar", "sym_constrain_range_for_size",
    "arange", "full", "full_like", "zeros", "ones", "zeros_like", "ones_like", "scalar_tensor",
    "new_zeros", "scan", "loop_scan",  # a loop: its body's ops are listed themselves
}


def float_ops(prepared: GraphModule) -> list[str]:
    """Compute ops of a prepared graph (and of its loop bodies) that no annotation quantizes, as `op`
    names, sorted."""
    from edgeship.export.loops import graphs

    names = set()
    for node in (n for g in graphs(prepared) for n in g.graph.nodes):
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = op_name(node)
        if name in STRUCTURAL_OPS or _annotated(node):
            continue
        if not any(isinstance(a, Node) for a in node.args):
            continue
        names.add(name)
    return sorted(names)


@functools.lru_cache(maxsize=None)
def _target_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def op_name(node: Node) -> str:
    """`aten.conv2d.default` -> `conv2d`; a node that calls no function: its kind (`placeholder`, ...)."""
    return _target_name(node.target) if node.op == "call_function" else node.op


def has_int16(module: GraphModule) -> bool:
    """True when a quantize / dequantize of the graph is int16 (recipe `int16_activations`)."""
    return any(n.op == "call_function" and n.args and n.args[-1] is torch.int16 for n in module.graph.nodes)
