"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019): for two convolutions in a row,
`conv1 -> [batch norm] -> [ReLU / ReLU6 / none] -> conv2`, output channel i of conv1 is divided by s_i and
input channel i of conv2 multiplied by s_i, with s_i = sqrt(r1_i / r2_i) (r: the channel's largest
|weight|, conv1's with its batch norm folded in), so both channels end with the same range. The float
model computes the same function (ReLU is positively homogeneous), and one scale per tensor now fits
every channel: per-tensor int8 weights of a depthwise convolution, whose channels' ranges differ by
orders of magnitude after batch-norm folding, stop rounding the small channels to zero.

When it applies: per-tensor weights (`weight_granularity = "per_tensor"`, the form some NPU and DSP
delegates require). With per-channel weights each channel has its own scale already, and the moved
ranges only widen per-tensor activation ranges (measured on MobileNetV2 earlier: no gain), so the int8
recipe does not use it.

ReLU6 (hardtanh(0, M)) is not homogeneous: dividing channel i by s_i moves its clip point. Scaling stays
exact on the calibration samples when the channel never reaches M (its largest pre-activation m_i, with a
margin, satisfies m_i <= M min(s_i, 1)): such channels get s_i >= m_i / M, and channels that reach M keep
s_i = 1. So the pass reads the calibration samples once for the m_i. Pairs sharing a convolution (a
depthwise conv is conv2 of one pair and conv1 of the next) are swept a few times, as in the paper; conv2's
outputs are unchanged by a pair's scaling, so m_i is updated by the same division, without new samples.

Conv2's input must come only from conv1 (one user along the chain); grouped convolutions other than
depthwise are left alone.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx import GraphModule, Node

from edgeship.calibration.samples import Samples
from edgeship.quantize.graphs import Watcher, attr, replace_attr, run_samples
from edgeship.quantize.quantizer import CONV_OPS

aten = torch.ops.aten
SWEEPS = 4
MARGIN = 1.25  # a channel counts as reaching the clip point above M / MARGIN on the calibration samples


class _Pair:
    def __init__(self, conv1: Node, norm: Node | None, act: Node | None, conv2: Node, clip: float | None) -> None:
        self.conv1, self.norm, self.act, self.conv2, self.clip = conv1, norm, act, conv2, clip

    @property
    def pre_activation(self) -> Node:
        return self.norm or self.conv1


def _single_user(node: Node) -> bool:
    return len(node.users) == 1


def _groups(conv: Node) -> int:
    return int(conv.args[6]) if len(conv.args) > 6 else 1


def _is_conv(node) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and node.target in CONV_OPS \
        and isinstance(node.args[1], Node) and node.args[1].op == "get_attr"


def _pairs(module: GraphModule) -> list[_Pair]:
    found = []
    for conv2 in module.graph.nodes:
        if not _is_conv(conv2):
            continue
        weight2 = attr(module, conv2.args[1].target)
        groups = _groups(conv2)
        if groups != 1 and not (groups == weight2.shape[0] and weight2.shape[1] == 1):
            continue
        node, act, clip, norm = conv2.args[0], None, None, None
        if isinstance(node, Node) and node.op == "call_function" and _single_user(node):
            if node.target in (aten.relu.default, aten.relu_.default):
                act, node = node, node.args[0]
            elif node.target in (aten.hardtanh.default, aten.hardtanh_.default) and float(node.args[1]) == 0.0:
                act, clip, node = node, float(node.args[2]), node.args[0]
        if isinstance(node, Node) and node.target is aten.batch_norm.default and _single_user(node) \
                and not node.args[5] and all(isinstance(a, Node) and a.op == "get_attr" for a in node.args[1:5]):
            norm, node = node, node.args[0]
        if not (_is_conv(node) and _single_user(node) and _groups(node) in (1, attr(module, node.args[1].target).shape[0])):
            continue
        if attr(module, node.args[1].target).shape[0] != (weight2.shape[0] if groups > 1 else weight2.shape[1]):
            continue
        found.append(_Pair(node, norm, act, conv2, clip))
    return found


class _PreActivationMax(Watcher):
    """Max over the samples of each watched node's output, per channel (axis 1)."""

    def __init__(self, module: GraphModule, watch: set[str]) -> None:
        super().__init__(module, watch)
        self.amax = {}

    def record(self, node: Node, out) -> None:
        v = out.detach().transpose(0, 1).reshape(out.shape[1], -1).amax(dim=1).float()
        self.amax[node.name] = torch.maximum(self.amax[node.name], v) if node.name in self.amax else v


def _folded_norm_factor(module: GraphModule, norm: Node | None, channels: int) -> torch.Tensor:
    if norm is None:
        return torch.ones(channels)
    gamma, var = attr(module, norm.args[1].target), attr(module, norm.args[4].target)
    return (gamma / torch.sqrt(var + float(norm.args[7]))).detach().float()


def _conv2_input_range(weight2: torch.Tensor, depthwise: bool) -> torch.Tensor:
    if depthwise:
        return weight2.detach().abs().reshape(weight2.shape[0], -1).amax(dim=1).float()
    return weight2.detach().abs().transpose(0, 1).reshape(weight2.shape[1], -1).amax(dim=1).float()


def _scaled_args(pair: _Pair) -> list[Node]:
    conv1 = list(pair.norm.args[1:3]) if pair.norm is not None else [pair.conv1.args[1]] + [
        b for b in pair.conv1.args[2:3] if isinstance(b, Node)]
    return conv1 + [pair.conv2.args[1]]


def _apply(module: GraphModule, pair: _Pair, s: torch.Tensor) -> None:
    """conv1's output channels / s (through its batch norm's scale and shift, or its own weight and bias),
    conv2's input channels * s."""
    def scaled(node: Node, factor: torch.Tensor, axis: int) -> None:
        value = attr(module, node.target).detach()
        shape = [1] * value.dim()
        shape[axis] = -1
        replace_attr(module, node.target, value * factor.reshape(shape).to(value.dtype))

    if pair.norm is not None:
        for arg in pair.norm.args[1:3]:  # gamma, beta
            scaled(arg, 1 / s, 0)
    else:
        scaled(pair.conv1.args[1], 1 / s, 0)
        bias = pair.conv1.args[2] if len(pair.conv1.args) > 2 else None
        if isinstance(bias, Node):
            scaled(bias, 1 / s, 0)
    # depthwise: input channel i is output channel i
    scaled(pair.conv2.args[1], s, 0 if _groups(pair.conv2) > 1 else 1)


def _scales(module: GraphModule, pair: _Pair, m: torch.Tensor | None) -> torch.Tensor:
    weight1 = attr(module, pair.conv1.args[1].target).detach().float()
    folded = weight1 * _folded_norm_factor(module, pair.norm, weight1.shape[0]).reshape((-1,) + (1,) * (weight1.dim() - 1))
    r1 = folded.abs().reshape(folded.shape[0], -1).amax(dim=1)
    r2 = _conv2_input_range(attr(module, pair.conv2.args[1].target), _groups(pair.conv2) > 1)
    s = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp_min(1e-12)), torch.ones_like(r1))
    if pair.clip is not None and m is not None:
        reaches = m * MARGIN >= pair.clip
        s = torch.where(reaches, torch.ones_like(s), torch.maximum(s, m * MARGIN / pair.clip))
    return s


def equalize(module: GraphModule, samples: Samples, progress: Callable[[int], None] | None = None,
             memo: dict | None = None) -> list[dict]:
    """Equalizes every conv pair of `module` in place; returns one record per pair (its scale spread).
    `memo`: filled with the scales applied; when it holds them, they are applied without the samples."""
    pairs = _pairs(module)
    if not pairs:
        return []
    if memo and "scales" in memo:
        for pair in pairs:
            if pair.conv2.name in memo["scales"]:
                _apply(module, pair, memo["scales"][pair.conv2.name])
        if progress is not None:
            progress(len(samples))
        return _records(pairs, memo["scales"])
    clipped = {p.pre_activation.name for p in pairs if p.clip is not None}
    m = {}
    if clipped:
        recorder = _PreActivationMax(module, clipped)
        run_samples(recorder, samples, progress)
        m = recorder.amax
    elif progress is not None:
        progress(len(samples))
    total = {p.conv2.name: torch.ones(attr(module, p.conv2.args[1].target).shape[
        0 if _groups(p.conv2) > 1 else 1]) for p in pairs}
    touched = {a.target for p in pairs for a in _scaled_args(p)}
    originals = {t: attr(module, t) for t in touched}  # _apply replaces tensors, so these stay as they were
    with torch.no_grad():
        for _ in range(SWEEPS):
            for pair in pairs:
                peak = m.get(pair.pre_activation.name)
                s = _scales(module, pair, peak)
                _apply(module, pair, s)
                total[pair.conv2.name] *= s
                if peak is not None:
                    m[pair.pre_activation.name] = peak / s
        # the product of the sweeps applied once, as a replay from `memo` applies it: same bits either way
        for target, value in originals.items():
            replace_attr(module, target, value)
        for pair in pairs:
            _apply(module, pair, total[pair.conv2.name])
    if memo is not None:
        memo["scales"] = total
    return _records(pairs, total)


def _records(pairs: list[_Pair], total: dict) -> list[dict]:
    return [{"layers": [p.conv1.name, p.conv2.name], "scale_min": round(float(total[p.conv2.name].min()), 4),
             "scale_max": round(float(total[p.conv2.name].max()), 4)} for p in pairs if p.conv2.name in total]
