"""GPTQ (Frantar et al. 2023) for weights in the int8 static graph: the convolutions and linear layers
whose int8 weights the runtimes compute with a fixed scale per output channel (or per tensor).

Rounding each weight to its nearest int8 value ignores what the layer's inputs look like. GPTQ rounds
the weight's columns one at a time and spreads each column's rounding error over the columns not yet
rounded, weighted by the inverse of H = sum x x^T over the calibration inputs, so the layer's outputs
on those inputs move least. A convolution is a matrix product over its input patches (channel x kernel
position, one H per group of a grouped or depthwise convolution); H is summed over the float inputs,
one pass over the samples. On ImageNet MobileNetV2 (4 folds of the 28 shipped photos, held-out SQNR
of the simulated int8 model with only its weights quantized) nearest rounding plus bias correction gives
29.8 / 30.4 dB on the first two folds, GPTQ plus bias correction 34.2 / 34.3. The whole int8 model gains
less (19.19 -> 19.38 dB mean over the 4 folds): its activations are then most of the error.
all-MiniLM-L6-v2 (64 / 32 sentences): 22.53 -> 22.92 dB, mean cosine 0.99721 -> 0.99745.

The scales stay those the weight observers computed (max |w| / 127 of the float weights): GPTQ's
values are written back as q x scale, which the observers, the conversion and every runtime then
quantize to exactly q. Bias correction (which runs after) measures the output shift against the float
weights from before GPTQ.

When it applies: conv1d / conv2d layers with numeric padding and linear layers whose weight is a
constant behind an int8 weight observer. When it leaves the graph alone: layers kept in float (no
weight observer), `padding="same"` convolutions (recorded), and everything that is not a weight.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node
from torchao.quantization.pt2e.observer import ObserverBase

from edgeship.calibration.samples import Samples
from edgeship.quantize.graphs import Watcher, attr, observed_weights, replace_attr, run_samples
from edgeship.quantize.quantizer import CONV_OPS, LINEAR_OPS

aten = torch.ops.aten
PATCH_CONVS = {aten.conv1d.default, aten.conv2d.default}  # numeric stride / padding / dilation
DAMP = 0.01  # added to H's diagonal, as a fraction of its mean (the paper's 1%)
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6)  # of max |w|, tried by `fit_scale(search=True)`


def fit_scale(blocks: torch.Tensor, qmin: int, qmax: int, search: bool = False) -> torch.Tensor:
    """The symmetric scale of each group of `blocks` (..., group): max |w| / qmax, or (`search`) the
    clipped max (a ratio of CLIP_RATIOS) whose rounded group has the least squared error."""
    amax = blocks.abs().amax(dim=-1).clamp(min=1e-10)
    best, best_err = amax / qmax, None
    for ratio in CLIP_RATIOS if search else ():
        scale = amax * ratio / qmax
        err = ((torch.round(blocks / scale[..., None]).clamp(qmin, qmax) * scale[..., None] - blocks) ** 2).sum(-1)
        if best_err is None:
            best, best_err = scale, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return best


def fit_affine(blocks: torch.Tensor, qmin: int, qmax: int, search: bool = False, whole: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale and offset of each group of `blocks` (..., group) for values q * scale + offset, q in
    [qmin, qmax]: the group's min and max on the two ends of the grid, or (`search`) the range shrunk about
    its middle by the ratio of CLIP_RATIOS whose rounded group has the least squared error. `whole`: the
    offset a whole number of steps (offset = -zero * scale, zero an integer in [qmin, qmax]: the integer zero
    point kernels take); else any offset (the group's low end exactly on the grid's)."""
    low, high = blocks.amin(dim=-1), blocks.amax(dim=-1)
    middle, half = (high + low) / 2, (high - low) / 2
    best = best_err = None
    for ratio in CLIP_RATIOS if search else (1.0,):
        scale = (2 * half * ratio / (qmax - qmin)).clamp(min=1e-10)
        if whole:
            offset = -torch.round(qmin - (middle - half * ratio) / scale).clamp(qmin, qmax) * scale
        else:
            offset = middle - half * ratio - qmin * scale
        values = torch.round((blocks - offset[..., None]) / scale[..., None]).clamp(qmin, qmax)
        err = ((values * scale[..., None] + offset[..., None] - blocks) ** 2).sum(-1)
        if best is None:
            best, best_err = (scale, offset), err
        else:
            better = err < best_err
            best = (torch.where(better, scale, best[0]), torch.where(better, offset, best[1]))
            best_err = torch.where(better, err, best_err)
    return best


def whole_offsets(scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """`fit_affine`'s offsets (-zero * scale, in any precision) recomputed in float32 from float32 scales:
    -(scale * zero) exactly as a writer that stores the integer zero points recomputes them."""
    zero = torch.round(-offset.double() / scale.double())
    return -(scale.float() * zero.float())


def gptq_columns(w: torch.Tensor, h: torch.Tensor, qmin: int, qmax: int, scale: torch.Tensor | None = None,
                 group: int | None = None, block: int = 128, search: bool = False, asymmetric: bool = False,
                 whole: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ over `w` (G, rows, cols) with one H (G, cols, cols) per group of rows. `scale` (G, rows): a
    fixed scale per row; or None: a scale per `group` columns of each row, set from the updated weights
    when the group starts (int4). Returns (q as int8, scale as float32 of shape (G, rows, cols // group)
    or `scale`'s, offset of the scale's shape or None). `search`: each group's range by a clipping
    search; `asymmetric`: values q * scale + offset with an offset per group (`fit_affine`, whole steps
    where `whole`)."""
    w = w.detach().double().clone()
    g, rows, cols = w.shape
    h = h.double().clone()
    diag = torch.diagonal(h, dim1=1, dim2=2)
    dead = diag == 0
    diag[dead] = 1.0
    w.masked_fill_(dead[:, None, :], 0.0)
    diag += DAMP * diag.mean(dim=1, keepdim=True)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(g, rows, cols, dtype=torch.int8)
    if scale is None:
        scales = torch.zeros(g, rows, cols // group, dtype=torch.float64)
        block = max(group, block - block % group)
    else:
        scales = scale.double().reshape(g, rows, 1).clone()
    offsets = torch.zeros_like(scales)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, hinv1 = w[:, :, start:end].clone(), hinv[:, start:end, start:end]
        err1 = torch.zeros_like(w1)
        for i in range(end - start):
            col = start + i
            if scale is None and col % group == 0 and asymmetric:
                scales[:, :, col // group], offsets[:, :, col // group] = fit_affine(
                    w1[:, :, i:i + group], qmin, qmax, search, whole)
            elif scale is None and col % group == 0:
                scales[:, :, col // group] = fit_scale(w1[:, :, i:i + group], qmin, qmax, search)
            s, o = scales[:, :, col // group if scale is None else 0], offsets[:, :, col // group if scale is None else 0]
            qi = torch.round((w1[:, :, i] - o) / s).clamp(qmin, qmax)
            q[:, :, col] = qi.to(torch.int8)
            err = (w1[:, :, i] - qi * s - o) / hinv1[:, i, i][:, None]
            w1[:, :, i:] -= err[:, :, None] * hinv1[:, i, i:][:, None, :]
            err1[:, :, i] = err
        w[:, :, end:] -= torch.einsum("grk,gkc->grc", err1, hinv[:, start:end, end:])
    scales = (scales if scale is None else scale).float()
    if not asymmetric:
        return q, scales, None
    return q, scales, whole_offsets(scales, offsets) if whole else offsets.float()


def patches(node: Node, x: torch.Tensor, weight_shape: torch.Size) -> torch.Tensor:
    """What the layer multiplies its weight rows with: (G, cols, positions), cols in the weight's own
    (in channel, kernel position) order."""
    if node.target in LINEAR_OPS:
        return x.reshape(-1, x.shape[-1]).T[None]
    stride, padding, dilation, groups = (list(node.args[3:7]) + [1, 0, 1, 1][len(node.args[3:7]):])
    kernel = tuple(weight_shape[2:])
    if node.target is aten.conv1d.default:  # as a conv2d of height 1
        x, kernel = x.unsqueeze(2), (1, *kernel)
        stride, padding, dilation = ([1, *_pair(v, 1)] for v in (stride, padding, dilation))
        padding[0] = 0
    u = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, C * k, L)
    n, width, positions = u.shape
    return u.reshape(n, groups, width // groups, positions).permute(1, 2, 0, 3).reshape(groups, width // groups, -1)


def _pair(value, dims: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * dims


class PatchGram(Watcher):
    """H = sum x x^T of each watched layer's input patches (one per group), with float activations."""

    float_observers = True

    def __init__(self, module: GraphModule, layers: set[str]) -> None:
        super().__init__(module, layers)
        self.gram = {}

    def record(self, node: Node, out) -> None:
        # patches and their products in float32 (a few times faster than float64 on a CPU), summed over
        # the samples in float64
        u = patches(node, self.env[node.args[0]].detach().float(), self.env[node.args[1]].shape)
        g = (u @ u.transpose(1, 2)).double()
        self.gram[node.name] = self.gram[node.name] + g if node.name in self.gram else g


def _weight_layers(prepared: GraphModule) -> tuple[list[tuple[Node, ObserverBase, str]], list[dict]]:
    """(layer, its weight observer, weight attribute) for each layer GPTQ rounds; records of those left."""
    left = [{"layer": node.name, "reason": f"{node.target} (string padding) keeps nearest rounding"}
            for node, *_ in observed_weights(prepared, CONV_OPS - PATCH_CONVS)]
    return observed_weights(prepared, PATCH_CONVS | LINEAR_OPS), left


def round_weights(prepared: GraphModule, samples: Samples, progress: Callable[[int], None] | None = None,
                  memo: dict | None = None) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """GPTQ's int8 values written into the weights of the calibrated graph `prepared` (weight observers
    holding their scales), in place. Returns the records and the float weights from before, by weight
    attribute (for bias correction). `memo`: filled with the values; when it holds them, the samples are
    not read."""
    layers, left = _weight_layers(prepared)
    if not layers:
        if progress is not None:  # the pass is counted whether or not it reads the samples
            progress(len(samples))
        return [], {}
    names = sorted(node.name for node, *_ in layers)
    if memo and memo.get("layers") == names and memo.get("by") == "weight":
        values = memo["values"]
        if progress is not None:
            progress(len(samples))
    else:
        recorder = PatchGram(prepared, set(names))
        run_samples(recorder, samples, progress)
        # a weight read by several calls (a recurrent layer's steps) is rounded once, for all its inputs
        grams: dict[str, torch.Tensor] = {}
        for node, _, weight_attr in layers:
            if node.name in recorder.gram:
                g = recorder.gram.pop(node.name)
                grams[weight_attr] = grams[weight_attr] + g if weight_attr in grams else g
        values = {}
        for node, observer, weight_attr in layers:
            if weight_attr not in grams or weight_attr in values:
                continue
            weight = attr(prepared, weight_attr)
            scale, _ = observer.calculate_qparams()
            gram = grams.pop(weight_attr)
            groups, rows = gram.shape[0], weight.shape[0] // gram.shape[0]
            q, *_ = gptq_columns(weight.reshape(groups, rows, -1), gram, int(observer.quant_min),
                                int(observer.quant_max), scale.reshape(-1, 1).expand(weight.shape[0], 1).reshape(groups, rows))
            values[weight_attr] = q.reshape(weight.shape)
        if memo is not None:
            memo.update(layers=names, values=values, by="weight")
    originals = {}
    for _, observer, weight_attr in layers:
        if weight_attr not in values or weight_attr in originals:
            continue
        weight = attr(prepared, weight_attr).detach()
        scale, _ = observer.calculate_qparams()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        originals[weight_attr] = weight.clone()
        replace_attr(prepared, weight_attr, (values[weight_attr].float() * scale.float().reshape(shape)).to(weight.dtype))
    return [{"layers": len(originals), "samples": len(samples)}, *left], originals
