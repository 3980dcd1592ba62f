"""Bias correction: the output shift that rounding a layer's weights to int8 causes on average is taken
out of its bias (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction"; the input means are measured on the calibration samples instead of derived from batch norm).

For y = W x + b with int8 weights W + e, the expected output error is e E[x] per output channel. After
ReLU-like activations E[x] is far from zero, so the error is systematic rather than noise, and it
adds up through a deep CNN: on ImageNet MobileNetV2 the first depthwise layer's int8 weights alone
take the output to 25 dB SQNR (3 x 3 kernels: one scale per 9 values).

Runs on the calibrated graph (batch norms already folded into the convolutions, weight observers
holding the int8 scales), before conversion; the corrected float bias is what the quantizer then
stores in int32.

When it applies: conv1d/conv2d layers whose weight goes through an int8 weight observer and whose bias
is a constant. When it leaves the graph alone: linear layers (on all-MiniLM-L6-v2 correcting them
lowered the simulated SQNR from 22.5 to 21.9 dB: their inputs' means mix padding and real tokens and a
few outlier dimensions, so the mean shift is not what the evaluated outputs see), layers kept in float
(no weight observer), and layers without a bias.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import ObserverBase

from edgeship.calibration.samples import Samples
from edgeship.quantize.graphs import Watcher, attr, observed_weights, replace_attr, run_samples, shared_weights
from edgeship.quantize.quantizer import CONV_OPS


def _corrected_layers(prepared: GraphModule) -> list[tuple[Node, ObserverBase, str, str]]:
    """(layer, its weight observer, weight attribute, bias attribute) for each layer that qualifies."""
    shared = shared_weights(prepared)  # one bias for several calls: each call's shift would be taken out
    return [(node, observer, weight, node.args[2].target) for node, observer, weight in observed_weights(prepared, CONV_OPS)
            if len(node.args) > 2 and isinstance(node.args[2], Node) and node.args[2].op == "get_attr"
            and weight not in shared]


class _InputMeans(Watcher):
    """Sums each watched convolution's input per channel (axis 1), with float activations."""

    float_observers = True

    def __init__(self, module: GraphModule, layers: set[str]) -> None:
        super().__init__(module, layers)
        self.sums, self.counts = {}, {}

    def record(self, node: Node, out) -> None:
        x = self.env[node.args[0]].detach().double()
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.sums[node.name] = self.sums.get(node.name, 0) + flat.sum(dim=1)
        self.counts[node.name] = self.counts.get(node.name, 0) + flat.shape[1]


def _shift(error: torch.Tensor, mean: torch.Tensor, groups: int) -> torch.Tensor:
    """e E[x] per output channel: e is (out, in / groups, *kernel), mean is (in,)."""
    per_input = error.reshape(error.shape[0], error.shape[1], -1).sum(dim=2)  # (out, in / groups)
    out, width = per_input.shape
    means = mean.reshape(groups, width)[torch.arange(out) // (out // groups)]  # each output's group inputs
    return (per_input * means).sum(dim=1)


def correct_biases(prepared: GraphModule, samples: Samples, progress: Callable[[int], None] | None = None,
                   memo: dict | None = None, replaced: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """Corrects the biases of `prepared` in place; returns one record per layer (its largest shift).
    `memo`: filled with the input means; when it holds them, the samples are not read. `replaced`: the
    float values of what earlier passes changed, by attribute (GPTQ's weights): a shift is measured from
    a layer's float weight; each corrected bias's float value is added to it."""
    layers = _corrected_layers(prepared)
    if not layers:
        if progress is not None:  # the pass is counted whether or not it reads the samples
            progress(len(samples))
        return []
    if memo and "means" in memo:
        means = memo["means"]
        if progress is not None:
            progress(len(samples))
    else:
        recorder = _InputMeans(prepared, {n.name for n, *_ in layers})
        run_samples(recorder, samples, progress)
        means = {name: recorder.sums[name] / recorder.counts[name] for name in recorder.sums}
        if memo is not None:
            memo["means"] = means
    records = []
    for node, observer, weight_attr, bias_attr in layers:
        if node.name not in means:
            continue
        weight = attr(prepared, weight_attr).detach()
        scale, zero_point = observer.calculate_qparams()
        if scale.numel() == 1:  # per-tensor weights
            rounded = torch.fake_quantize_per_tensor_affine(weight, float(scale), int(zero_point),
                                                            int(observer.quant_min), int(observer.quant_max))
        else:
            rounded = torch.fake_quantize_per_channel_affine(weight, scale.float(), zero_point.int(), 0,
                                                             int(observer.quant_min), int(observer.quant_max))
        groups = int(node.args[6]) if len(node.args) > 6 else 1
        shift = _shift((rounded - (replaced or {}).get(weight_attr, weight)).double(), means[node.name], groups)
        bias = attr(prepared, bias_attr).detach()
        if replaced is not None:
            replaced.setdefault(bias_attr, bias.clone())
        # a new tensor, never written into: the exported program and the user's model hold the old one
        # (written in place, the fp32 artifacts of a model whose convs have their own biases came out
        # corrected too: Hugging Face ConvNeXt V2, fp32 ONNX / .pte / .tflite 17.4 dB from the model)
        bias = bias - shift.to(bias.dtype)
        replace_attr(prepared, bias_attr, bias)
        records.append({"layer": node.name, "max_shift": round(float(shift.abs().max()), 6),
                        "bias_max": round(float(bias.abs().max()), 4)})
    return records
