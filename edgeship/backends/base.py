"""What every backend shares: the job it lowers (the float program and the one quantized form), the
artifact it writes, the session it opens, the `Backend` protocol itself, and helpers for their records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from edgeship.quantize.forms import Form, Half, StaticInt8, WeightOnly


@dataclass(frozen=True)
class LowerJob:
    """What every adapter lowers: the float program and the one calibrated quantized graph."""

    float_program: torch.export.ExportedProgram
    form: Form | None  # the recipe's quantized form (quantize/forms.py); None: float only
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    float_onnx: Path  # where ONNX Runtime's adapter writes the float ONNX (its fp32 artifact)
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


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float | None = None  # set where the artifact's I/O is quantized
    zero_point: int | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.scale is not None:
            d |= {"scale": self.scale, "zero_point": self.zero_point}
        return d


class Session(Protocol):
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Float (or integer id) inputs in the model's own types; float outputs. Quantized I/O is
        quantized and dequantized with the artifact's recorded parameters."""


class Backend(Protocol):
    """One runtime: how a quantized model is lowered to its file format, and how that file is opened,
    run and profiled. Registered by name in `edgeship.backends.BACKENDS`."""

    name: str
    precisions: tuple[str, ...]  # what `lower` can make: fp32, int8, fp16, int4, int8-dynamic

    def supports(self, job: LowerJob, precision: str) -> str | None:
        """None when `lower` can make `precision` from `job`; else why not (recorded as not produced)."""

    def lower(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[Artifact]:
        """Writes the artifacts of `precisions` into `out`; raises ExportError when it cannot."""

    def open(self, path: Path, threads: int, device_numerics: bool = True) -> Session:
        """A session on an artifact. `device_numerics`: compute as the device's build does (where the
        host's build of the runtime would take another kernel path), else as this machine runs it."""

    def profile(self, path: Path, inputs: list[np.ndarray], threads: int) -> dict:
        """Per-op rows: op, ms_per_run, share, count, and whether it ran in int8 / in the delegate."""


class Detachable(Protocol):
    """A backend whose lowering can run in another process (edgeship/apart.py): the slowest one, lowered
    beside the others on a machine with two or more cores."""

    imports: tuple[str, ...]  # modules the other process imports while this one captures and calibrates

    def detach(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> tuple[Callable, tuple] | None:
        """What `lower(job, out, precisions)` does, as a picklable function and its picklable arguments
        (the same files, byte for byte); None where this job cannot be sent (it is then lowered here)."""


def missing_form(job: LowerJob, precision: str, precisions: tuple[str, ...]) -> str | None:
    """Why `job` cannot give `precision` (the recipe made another quantized form), or None."""
    if precision not in precisions:
        return f"this runtime makes {', '.join(precisions)}, not {precision}"
    if precision == "fp32":
        return None
    wanted = {"int8": StaticInt8, "int4": WeightOnly, "int8-dynamic": WeightOnly, "fp16": Half}[precision]
    if not isinstance(job.form, wanted) or job.form.precision != precision:
        return f"the recipe made no {precision} form of the model"
    return None


def op_rows(times: dict, counts: dict, flags: dict, runs: int, flag_name: str) -> list[dict]:
    """Profile rows from per-op total times (ms over `runs` runs), counts and a flag per op."""
    total = sum(times.values()) or 1.0
    rows = [{"op": op, "ms_per_run": round(t / runs, 4), "share": round(t / total, 4), "count": counts[op],
             flag_name: flags[op]} for op, t in times.items()]
    return sorted(rows, key=lambda r: -r["ms_per_run"])


def quantize(x: np.ndarray, info: TensorInfo, dtype) -> np.ndarray:
    info_min, info_max = np.iinfo(dtype).min, np.iinfo(dtype).max
    q = np.round(x.astype(np.float32) / info.scale) + info.zero_point
    return np.clip(q, info_min, info_max).astype(dtype)


def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    return ((q.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)


def count_ops(names: list[str], reason: str) -> list[dict]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [{"op": op, "count": n, "reason": reason} for op, n in sorted(counts.items())]


def greedy_tokens(logits, position: int, count: int, max_seq_len: int, step: Callable[[int, int], object],
                  stop: set[int], on_token: Callable[[int], None] | None) -> list[int]:
    """A decoder's greedy loop: from the prompt's last `logits` at `position`, up to `count` argmax tokens,
    each fed back by `step(token, position)` (its logits), ending at a `stop` token or the cache's end."""
    out = []
    while len(out) < count and position < max_seq_len:
        token = int(logits.argmax())
        out.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop:
            break
        logits, position = step(token, position), position + 1
    return out
