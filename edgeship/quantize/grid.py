"""The block-wise weight grid every int4 (and int8-per-row) path shares: values in [-8, 7] (or -127..127)
with one scale per `group` input channels of a row, by rounding or by GPTQ; and one layer's weights on
it (`Int4Weight`), the form each runtime's writer packs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeship.quantize.gptq import fit_scale, gptq_columns

QMIN, QMAX = -8, 7


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

    def dequantized(self) -> torch.Tensor:
        out, cols = self.q.shape
        blocks = self.q.reshape(out, cols // self.group, self.group).float() * self.scale[..., None]
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


def gptq_weight(weight: torch.Tensor, hessian: torch.Tensor, group: int, bits: int = 4, search: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ (quantize/gptq.py) with one H = sum x^T x for all rows and a scale per `group` columns of each
    row, set from the updated weights when the group starts. Returns (q, scale) like `quantize_weight`."""
    q, scale = gptq_columns(weight[None], hessian[None], *value_range(bits), group=group, search=search)
    return q[0], scale[0]
