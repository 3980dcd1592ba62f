"""The target-adapter Protocol, the artifact record, and the registry of adapters by runtime name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from edgeship.registry import instantiate
from edgeship.quantize.calibrate import QuantizedGraph
from edgeship.quantize.int4 import Int4Job


@dataclass(frozen=True)
class LowerJob:
    """What every adapter lowers: the float program and the one calibrated quantized graph."""

    float_program: torch.export.ExportedProgram
    quantized: QuantizedGraph | None  # the int8 graph (w8a8 recipes)
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    float_onnx: Path  # where ONNX Runtime's adapter writes the float ONNX (its fp32 artifact)
    int4: Int4Job | None = None  # the int4 weights and graphs (w4a8 recipes)
    half: torch.export.ExportedProgram | None = None  # the float16 program (fp16 recipe)
    # the float program with its recurrent layers as the model wrote them (float_program has them
    # unrolled, export/recurrent.py): ONNX's own LSTM/GRU ops run faster in float than the unrolled steps
    native: torch.export.ExportedProgram | None = None


@dataclass
class Artifact:
    runtime: str
    precision: str  # fp32 | int8 | int4
    path: Path
    # ops that do not run in int8 (or outside the accelerated delegate): {"op", "count", "reason"}
    not_quantized: list[dict] = field(default_factory=list)
    delegation: dict | None = None


class Adapter(Protocol):
    name: str

    def lower(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[Artifact]: ...


ADAPTERS = {
    "onnxruntime": "edgeship.targets.onnxruntime:OnnxRuntimeAdapter",
    "executorch": "edgeship.targets.executorch:ExecuTorchAdapter",
    "litert": "edgeship.targets.litert:LiteRTAdapter",
}


def get_adapter(name: str) -> Adapter:
    return instantiate(ADAPTERS, "runtime", name)


def count_ops(names: list[str], reason: str) -> list[dict]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [{"op": op, "count": n, "reason": reason} for op, n in sorted(counts.items())]
