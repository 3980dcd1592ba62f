"""Graph rewrites on the captured program, one file each. `BEFORE_QUANTIZATION` is the order every
quantization scheme applies them in (quantize/calibrate.py `transformed`), before any layer is chosen
or calibrated; `real_spectra` (spectra.py) runs earlier, at capture. Each pass takes the GraphModule,
rewrites it in place and returns what it changed (a count or a list)."""

from __future__ import annotations

from torch.fx import GraphModule

from edgeship.export.passes.constant_layers import fold_constant_layers
from edgeship.export.passes.constant_matmuls import constant_matmuls_as_linear
from edgeship.export.passes.dropout import remove_eval_dropout
from edgeship.export.passes.integer_constants import restore_integer_constants
from edgeship.export.passes.pools import whole_window_pools_as_global

BEFORE_QUANTIZATION = (
    restore_integer_constants,  # integer scalars torch.export turned into float tensors, back as integers
    remove_eval_dropout,  # the identity in eval mode; it would hide layers from the passes below
    constant_matmuls_as_linear,  # first of the two: a matmul on constants only is then folded as a layer
    fold_constant_layers,
    whole_window_pools_as_global,
)


def before_quantization(module: GraphModule) -> dict[str, object]:
    """Every pass of BEFORE_QUANTIZATION, in order; what each changed, by name."""
    return {rewrite.__name__: rewrite(module) for rewrite in BEFORE_QUANTIZATION}
