"""Graph pass: a short-time Fourier transform as a real convolution, so no complex tensor is left.

When it applies: an `aten.stft` with a constant window (a buffer or parameter, or none) whose complex
output is read only by `abs` (and `abs(...) ** 2`), `real`, `imag`, `angle` or `view_as_real`: the
spectrogram front-end of an audio model (`torch.stft(x, ...).abs()`, a magnitude or power spectrum).
ExecuTorch and LiteRT have no complex tensors (litert-torch: "Unsupported ir element type:
complex<f32>"; ExecuTorch: "operators are taking Tensor inputs with mismatched dtypes"), so such a model
had an ONNX file only. The transform becomes one `conv1d` whose kernels are the windowed cosines and
sines of the DFT (stride = hop length), and each reader reads the real and imaginary halves
(`abs` -> sqrt(re^2 + im^2), `abs ** 2` -> re^2 + im^2, `angle` -> atan2(im, re)). Same values to float
rounding.

The same for `torch.fft.fft`, `rfft` and `fftn` of a real tensor (FNet's token mixing reads
`fftn(x, dim=(1, 2)).real`): each transformed axis becomes a matmul with the constant cosine and sine
matrices (two more and an add and a subtract per axis after the first: the complex product). These
convolutions and matmuls stay float in the int8 recipes, as the complex ops were (quantize/calibrate.py,
`fourier_layers`: FNet, simulated, 29.2 dB with them int8 and 36.1 dB float).

When it leaves the graph alone: models without these ops, a window computed in the graph, an explicit
output length (`n=` / `s=`), complex input, and a transform whose output reaches any other op (complex
multiplication, `istft`): those keep the complex op, and the runtimes that cannot lower it say so as
before.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.fx import GraphModule, Node

from edgeship.export.fx import CONV_OPS, LINEAR_OPS, MATMUL_OPS, attr, register

log = logging.getLogger(__name__)

aten = torch.ops.aten
_READERS = {aten.abs.default, aten.real.default, aten.imag.default, aten.angle.default, aten.view_as_real.default}
_STFT_ARGS = ("input", "n_fft", "hop_length", "win_length", "window", "normalized", "onesided", "return_complex")
_FFTS = {aten.fft_fft.default, aten.fft_rfft.default, aten.fft_fftn.default}
MARK = "_edgeship_dft_"  # in the name of every cosine / sine constant this pass adds


def real_spectra(program: torch.export.ExportedProgram, example_inputs: tuple) -> torch.export.ExportedProgram:
    """`program` with every rewritable `stft` / `fft` in real form, exported again; `program` itself when it
    has none."""
    if not any(n.op == "call_function" and (n.target is aten.stft.default or n.target in _FFTS)
               for n in program.graph.nodes):
        return program
    module = program.module()
    count = spectra_as_real(module)
    if not count:
        return program
    log.info("Fourier transforms as real convolutions and matmuls: %d", count)
    return torch.export.export(module, example_inputs, strict=False)


def spectra_as_real(module: GraphModule) -> int:
    """Rewrites `module` in place; returns how many transforms were rewritten."""
    done = 0
    for node in list(module.graph.nodes):
        if node.op != "call_function" or not all(u.target in _READERS for u in node.users):
            continue
        if node.target is aten.stft.default:
            kernel = _dft_kernel(module, node)
            if kernel is not None:
                _rewrite(module, node, kernel)
                done += 1
        elif node.target in _FFTS:
            plan = _fft_plan(node)
            if plan is not None:
                _rewrite_fft(module, node, *plan)
                done += 1
    if done:
        module.graph.eliminate_dead_code()
        module.recompile()
    return done


def _call_args(node: Node, names: tuple[str, ...]) -> dict:
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return args


def _dft_matrices(size: int, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bins, size) float64: cos(2 pi k n / size) and -sin(2 pi k n / size), the real and imaginary rows of
    the first `bins` DFT frequencies."""
    angle = 2 * math.pi * torch.outer(torch.arange(bins, dtype=torch.float64),
                                      torch.arange(size, dtype=torch.float64)) / size
    return torch.cos(angle), -torch.sin(angle)


def _dft_kernel(module: GraphModule, node: Node) -> torch.Tensor | None:
    """(2F, 1, n_fft) float32: F windowed cosines, then F windowed negative sines; None when the call
    cannot be written as one (a computed window, a two-sided transform of real input)."""
    args = _call_args(node, _STFT_ARGS)
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
    cos, sin = _dft_matrices(n_fft, n_fft // 2 + 1)
    kernel = torch.cat([values * cos, values * sin])
    if args.get("normalized"):
        kernel = kernel / math.sqrt(n_fft)
    return kernel.unsqueeze(1).to(torch.float32)


def _rewrite(module: GraphModule, node: Node, kernel: torch.Tensor) -> None:
    graph = module.graph
    x = node.args[0]
    hop = _call_args(node, _STFT_ARGS).get("hop_length") or node.args[1] // 4
    rank = x.meta["val"].dim()
    bins = kernel.shape[0] // 2
    name = register(module, f"{node.name}{MARK}kernel", kernel)
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
    _replace_readers(graph, node, re, im)


def _fft_plan(node: Node) -> tuple[list[int], bool, float] | None:
    """(axes, one-sided, scale) of a real-input fft / rfft / fftn call; None when it has another form."""
    x = node.args[0].meta.get("val") if isinstance(node.args[0], Node) else None
    if x is None or x.is_complex():
        return None
    names = ("input", "s" if node.target is aten.fft_fftn.default else "n", "dim", "norm")
    args = _call_args(node, names)
    if args.get("s") is not None or args.get("n") is not None:
        return None
    dim = args.get("dim", -1 if node.target is not aten.fft_fftn.default else None)
    axes = list(range(x.dim())) if dim is None else [dim] if isinstance(dim, int) else list(dim)
    axes = [a % x.dim() for a in axes]
    size = math.prod(int(x.shape[a]) for a in axes)
    scales = {None: 1.0, "backward": 1.0, "ortho": 1 / math.sqrt(size), "forward": 1 / size}
    if args.get("norm") not in scales:
        return None
    return axes, node.target is aten.fft_rfft.default, scales[args.get("norm")]


def _rewrite_fft(module: GraphModule, node: Node, axes: list[int], onesided: bool, scale: float) -> None:
    """Each axis in turn: moved last, multiplied by the (N, K) cosine and sine matrices, moved back; the
    first axis's scale carries the norm. The complex product after the first axis: (a + ib)(C + iS)."""
    graph = module.graph
    call = graph.call_function
    x = node.args[0]
    rank = x.meta["val"].dim()
    re = im = None
    with graph.inserting_before(node):
        for k, axis in enumerate(axes):
            size = int(x.meta["val"].shape[axis])
            bins = size // 2 + 1 if onesided and k == len(axes) - 1 else size
            factor = scale if k == 0 else 1.0
            cos, sin = (register(module, f"{node.name}{MARK}{kind}_{axis}", (m.T * factor).float())
                        for kind, m in zip(("cos", "sin"), _dft_matrices(size, bins)))

            def along(value: Node, matrix: str) -> Node:
                moved = value if axis == rank - 1 else call(aten.transpose.int, (value, axis, -1))
                out = call(aten.matmul.default, (moved, graph.get_attr(matrix)))
                return out if axis == rank - 1 else call(aten.transpose.int, (out, axis, -1))

            if re is None:
                re, im = along(x, cos), along(x, sin)
            else:
                re, im = (call(aten.sub.Tensor, (along(re, cos), along(im, sin))),
                          call(aten.add.Tensor, (along(re, sin), along(im, cos))))
    _replace_readers(graph, node, re, im)


def _replace_readers(graph: torch.fx.Graph, node: Node, re: Node, im: Node) -> None:
    """Each reader of the complex `node` replaced by its real form; then `node` itself removed."""
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


def fourier_layers(module: GraphModule) -> list[str]:
    """Names of the conv / linear / matmul nodes that read a DFT constant of this pass (directly, or
    through the transposed copy that constant_matmuls_as_linear makes)."""
    return [n.name for n in module.graph.nodes
            if n.op == "call_function" and n.target in CONV_OPS | LINEAR_OPS | MATMUL_OPS
            and any(isinstance(a, Node) and a.op == "get_attr" and MARK in a.target for a in n.args[:2])]
