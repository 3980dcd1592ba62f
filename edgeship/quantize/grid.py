"""The block-wise weight grid every int4 (and int8-per-row) path shares: values in [-8, 7] (or -127..127)
with one scale per `group` input channels of a row, by rounding or by GPTQ; and one layer's weights on
it (`Int4Weight`), the form each runtime's writer packs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeship.quantize.gptq import fit_affine, fit_scale, gptq_columns, whole_offsets

QMIN, QMAX = -8, 7
FREE_GRID_RATIO = 0.25  # keeps_its_grid


def value_range(bits: int) -> tuple[int, int]:
    """int4: -8..7 (scale = max / 7, so -8 only after GPTQ's updates); int8: symmetric -127..127."""
    return (QMIN, QMAX) if bits == 4 else (-127, 127)


@dataclass(frozen=True)
class Int4Weight:
    layer: str  # linear node name in the exported graph
    attr: str  # the module attribute that holds the float weight
    q: torch.Tensor  # int8 tensor of values in [-8, 7], shape (out, in)
    scale: torch.Tensor  # float32, shape (out, in // group)
    group: int
    bits: int = 4
    offset: torch.Tensor | None = None  # float32 like `scale`: asymmetric values q * scale + offset

    def dequantized(self) -> torch.Tensor:
        out, cols = self.q.shape
        blocks = self.q.reshape(out, cols // self.group, self.group).float() * self.scale[..., None]
        if self.offset is not None:
            blocks = blocks + self.offset[..., None]
        return blocks.reshape(out, cols)


def quantize_weight(weight: torch.Tensor, group: int, bits: int = 4, search: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest block-wise symmetric int4 (or int8): (q, scale). `search`: each group's scale
    clipped where that lowers its squared error (gptq.fit_scale)."""
    qmin, qmax = value_range(bits)
    out, cols = weight.shape
    blocks = weight.detach().float().reshape(out, cols // group, group)
    scale = fit_scale(blocks, qmin, qmax, search)
    q = torch.round(blocks / scale[..., None]).clamp(qmin, qmax).to(torch.int8)
    return q.reshape(out, cols), scale


def quantize_affine(weight: torch.Tensor, group: int, bits: int = 4, search: bool = False, whole: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest block-wise asymmetric int4 (or int8): (q, scale, offset), values q * scale + offset,
    the offset a whole number of steps (an integer zero point) where `whole`."""
    qmin, qmax = value_range(bits)
    out, cols = weight.shape
    blocks = weight.detach().float().reshape(out, cols // group, group)
    scale, offset = fit_affine(blocks, qmin, qmax, search, whole)
    q = torch.round((blocks - offset[..., None]) / scale[..., None]).clamp(qmin, qmax).to(torch.int8)
    return q.reshape(out, cols), scale.float(), whole_offsets(scale, offset) if whole else offset.float()


def keeps_its_grid(weight: torch.Tensor, group: int, bits: int = 4, search: bool = False) -> bool:
    """Whether `weight` already sits on an affine grid whose offsets are not whole steps (a checkpoint
    quantized before: GGUF's Q4_1 stores each group as min + q * d): rounded with free offsets it keeps less
    than FREE_GRID_RATIO of the squared error that whole-step offsets give (on weights that sit on no
    grid the two are within a few percent). Such a layer keeps free offsets, so its values are not rounded
    a second time onto another grid."""
    errors = []
    for whole in (True, False):
        q, scale, offset = quantize_affine(weight, group, bits, search, whole)
        got = Int4Weight("", "", q, scale, group, bits, offset).dequantized()
        errors.append(float(((got - weight.float()) ** 2).sum()))
    return errors[1] < FREE_GRID_RATIO * errors[0]


def whole_steps(w: Int4Weight) -> bool:
    """Whether every offset of `w` is -zero * scale with an integer zero in the grid's range (the integer
    zero points kernels take), exactly in float32."""
    if w.offset is None:
        return False
    qmin, qmax = value_range(w.bits)
    scale, offset = w.scale.double(), w.offset.double()
    zero = torch.round(-offset / scale)
    return bool(((zero >= qmin) & (zero <= qmax)).all()) and torch.equal(-(w.scale * zero.float()), w.offset)


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, group: int, bits: int = 4, search: bool = False,
                asymmetric: bool = False, whole: bool = True):
    """GPTQ (quantize/gptq.py) with one H = sum x^T x for all rows and a scale per `group` columns of each
    row, set from the updated weights when the group starts. Returns (q, scale) like `quantize_weight`, or
    (`asymmetric`) (q, scale, offset) like `quantize_affine`."""
    q, scale, offset = gptq_columns(weight[None], hessian[None], *value_range(bits), group=group, search=search,
                                    asymmetric=asymmetric, whole=whole)
    return (q[0], scale[0], offset[0]) if asymmetric else (q[0], scale[0])
