"""Graph pass: a short-time Fourier transform as a real convolution, so no complex tensor is left.

When it applies: an `aten.stft` with a constant window (a buffer or parameter, or none) whose complex
output is read only by `abs` (and `abs(...) ** 2`), `real`, `imag`, `angle` or `view_as_real`: the
spectrogram front-end of an audio model (`torch.stft(x, ...).abs()`, a magnitude or power spectrum).
ExecuTorch and LiteRT have no complex tensors (litert-torch: "Unsupported ir element type:
complex<f32>"; ExecuTorch: "operators are taking Tensor inputs with mismatched dtypes"), so such a model
had an ONNX file only. The transform becomes one `conv1d` whose kernels are the windowed cosines and
sines of the DFT (stride = hop length), and each reader reads the real and imaginary halves
(`abs` -> sqrt(re^2 + im^2), `abs ** 2` -> re^2 + im^2, `angle` -> atan2(im, re)). Same values to float
rounding; the int8 recipes then quantize the convolution like any other (per-channel weights).

When it leaves the graph alone: models without `stft`, a window computed in the graph, and a transform
whose output reaches any other op (complex multiplication, `istft`): those keep the complex op, and the
runtimes that cannot lower it say so as before.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.fx import GraphModule, Node

from edgeship.quantize.graphs import attr, register

log = logging.getLogger(__name__)

aten = torch.ops.aten
_READERS = {aten.abs.default, aten.real.default, aten.imag.default, aten.angle.default, aten.view_as_real.default}


def real_spectra(program: torch.export.ExportedProgram, example_inputs: tuple) -> torch.export.ExportedProgram:
    """`program` with every rewritable `stft` as a convolution, exported again; `program` itself when it has
    none."""
    if not any(n.op == "call_function" and n.target is aten.stft.default for n in program.graph.nodes):
        return program
    module = program.module()
    count = stft_as_conv(module)
    if not count:
        return program
    log.info("short-time Fourier transform as a DFT convolution: %d", count)
    return torch.export.export(module, example_inputs, strict=False)


def stft_as_conv(module: GraphModule) -> int:
    """Rewrites `module` in place; returns how many transforms were rewritten."""
    done = 0
    for node in list(module.graph.nodes):
        if node.op == "call_function" and node.target is aten.stft.default:
            kernel = _dft_kernel(module, node)
            if kernel is not None and all(u.target in _READERS for u in node.users):
                _rewrite(module, node, kernel)
                done += 1
    if done:
        module.graph.eliminate_dead_code()
        module.recompile()
    return done


def _dft_kernel(module: GraphModule, node: Node) -> torch.Tensor | None:
    """(2F, 1, n_fft) float32: F windowed cosines, then F windowed negative sines; None when the call
    cannot be written as one (a computed window, a two-sided transform of real input)."""
    names = ("input", "n_fft", "hop_length", "win_length", "window", "normalized", "onesided", "return_complex")
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    x = args["input"].meta.get("val")
    n_fft = args["n_fft"]
    win_length = args.get("win_length") or n_fft
    window = args.get("window")
    if x is None or x.is_complex() or x.dim() not in (1, 2) or not isinstance(n_fft, int):
        return None
    if window is None:
        values = torch.ones(win_length, dtype=torch.float64)
    elif isinstance(window, Node) and window.op == "get_attr":
        values = attr(module, window.target).detach().to(torch.float64)
    else:
        return None
    if values.shape != (win_length,) or args.get("onesided") is False:
        return None
    left = (n_fft - win_length) // 2
    values = torch.nn.functional.pad(values, (left, n_fft - win_length - left))
    bins = n_fft // 2 + 1
    angle = 2 * math.pi * torch.outer(torch.arange(bins, dtype=torch.float64),
                                      torch.arange(n_fft, dtype=torch.float64)) / n_fft
    kernel = torch.cat([values * torch.cos(angle), -values * torch.sin(angle)])
    if args.get("normalized"):
        kernel = kernel / math.sqrt(n_fft)
    return kernel.unsqueeze(1).to(torch.float32)


def _rewrite(module: GraphModule, node: Node, kernel: torch.Tensor) -> None:
    graph = module.graph
    x = node.args[0]
    hop = (node.args[2] if len(node.args) > 2 else node.kwargs.get("hop_length")) or node.args[1] // 4
    rank = x.meta["val"].dim()
    bins = kernel.shape[0] // 2
    name = register(module, f"{node.name}_dft_kernel", kernel)
    with graph.inserting_before(node):
        frames = graph.call_function(aten.unsqueeze.default, (x, 0 if rank == 1 else 1))  # (B, 1, L)
        if rank == 1:
            frames = graph.call_function(aten.unsqueeze.default, (frames, 0))
        both = graph.call_function(aten.conv1d.default, (frames, graph.get_attr(name), None, [hop]))
        if rank == 1:
            both = graph.call_function(aten.squeeze.dim, (both, 0))
        axis = -2  # (B?, 2F, T): the frequency axis
        re = graph.call_function(aten.slice.Tensor, (both, axis, 0, bins))
        im = graph.call_function(aten.slice.Tensor, (both, axis, bins, 2 * bins))
    for user in list(node.users):
        with graph.inserting_before(user):
            value = _reader(graph, user, re, im)
        user.replace_all_uses_with(value)
        graph.erase_node(user)
    graph.erase_node(node)


def _reader(graph: torch.fx.Graph, user: Node, re: Node, im: Node) -> Node:
    """The real-valued equivalent of one reader of the complex spectrum."""
    call = graph.call_function
    if user.target is aten.real.default:
        return re
    if user.target is aten.imag.default:
        return im
    if user.target is aten.angle.default:
        return call(aten.atan2.default, (im, re))
    if user.target is aten.view_as_real.default:
        return call(aten.stack.default, ([re, im], -1))
    power = call(aten.add.Tensor, (call(aten.mul.Tensor, (re, re)), call(aten.mul.Tensor, (im, im))))
    squares = [u for u in user.users if u.target is aten.pow.Tensor_Scalar and u.args[1] == 2]
    for square in squares:  # |X| ** 2 is the power itself: no square root and square
        square.replace_all_uses_with(power)
        graph.erase_node(square)
    return call(aten.sqrt.default, (power,)) if user.users else power
