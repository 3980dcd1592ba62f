"""ONNX Runtime: float and QDQ int8 ONNX (`lower.py`, through torch.onnx and `optimize.py`), the
ORT-format file, int4 / int8-dynamic as MatMulNBits / DynamicQuantizeMatMul (`int4.py`), float16
(`lower.py`), sessions with an ARM build's settings (`session.py`) and its profiler (`profile.py`)."""

from __future__ import annotations

import platform
from pathlib import Path

PRECISIONS = ("fp32", "int8", "fp16", "int4", "int8-dynamic")


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precisions = PRECISIONS
    # an x86 build rewrites int8 QDQ to uint8 kernels: outputs are checked with an ARM build's settings
    # and the host is timed with its own
    host_numerics_differ = platform.machine().lower() not in ("aarch64", "arm64")

    def supports(self, job, precision: str) -> str | None:
        from edgeship.backends.base import missing_form

        return missing_form(job, precision, self.precisions)

    def lower(self, job, out: Path, precisions: tuple[str, ...]) -> list:
        from edgeship.backends.onnxruntime.lower import OnnxRuntimeAdapter

        return OnnxRuntimeAdapter().lower(job, out, precisions)

    def open(self, path: Path, threads: int, device_numerics: bool = True):
        from edgeship.backends.onnxruntime.session import OnnxRuntimeSession

        return OnnxRuntimeSession(path, threads, device_numerics)

    def profile(self, path: Path, inputs: list, threads: int) -> dict:
        from edgeship.backends.onnxruntime.profile import profile

        return profile(path, inputs, threads)
