"""The quantized form of a model a recipe makes, one type per scheme, computed once and handed to every
backend: static int8 (w8a8), weights-only with activations quantized at run time (int4 / w4a8, and
int8-dynamic / w8a8-dynamic), or float16. A backend reads the form it is given, never a set of optional
fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the forms are light to import; what they hold is not
    import torch

    from edgeship.quantize.calibrate import QuantizedGraph
    from edgeship.quantize.int4 import Int4Job


@dataclass(frozen=True)
class StaticInt8:
    """int8 weights and activations with calibrated scales: the graph with and without its weights
    folded into int8 constants (quantize/calibrate.py)."""

    graph: QuantizedGraph
    precision = "int8"


@dataclass(frozen=True)
class WeightOnly:
    """Block-wise int4 weights (or int8 per row) for the linear layers, activations quantized per token at
    run time; a model's convolutions static int8 (`job.int8`). `job.precision`: int4 or int8-dynamic."""

    job: Int4Job

    @property
    def precision(self) -> str:
        return self.job.precision


@dataclass(frozen=True)
class Half:
    """The model in float16, as an exported program."""

    program: torch.export.ExportedProgram
    precision = "fp16"


Form = "StaticInt8 | WeightOnly | Half"  # one of the three
