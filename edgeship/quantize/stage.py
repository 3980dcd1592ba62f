"""What the quantization stages record on the graph they hand on: one typed `Stage` under one
GraphModule.meta key, instead of loose string keys. It travels with the module through prepare_pt2e's
output, deep copies and convert_pt2e."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule

KEY = "edgeship"  # the one GraphModule.meta key edgeship writes


@dataclass
class Stage:
    algorithms: list[dict] = field(default_factory=list)  # what each PTQ step changed, for the manifest
    # the float values of the weights and biases the PTQ passes changed, by attribute: what analyze and
    # accuracy budgets give back to a layer they switch to float
    float_values: dict[str, torch.Tensor] = field(default_factory=dict)
    wide_layers: frozenset[str] = frozenset()  # the layers the recipe gives int16 activations


def stage(module: GraphModule) -> Stage:
    """The module's Stage, created empty the first time."""
    return module.meta.setdefault(KEY, Stage())
