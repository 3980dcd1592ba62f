"""LiteRT: `.tflite` files converted with litert-torch (`lower.py`), int4 / int8-dynamic weights written
into them (`int4.py`), int16 activations (`int16.py`), repeated quantization vectors stored once
(`compact.py`); the interpreter, and which ops compute in float (`session.py`); its op list (`profile.py`)."""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("fp32", "int8", "fp16", "int4", "int8-dynamic")


class LiteRTBackend:
    name = "litert"
    precisions = PRECISIONS

    def supports(self, job, precision: str) -> str | None:
        from edgeship.backends.base import missing_form

        return missing_form(job, precision, self.precisions)

    def lower(self, job, out: Path, precisions: tuple[str, ...]) -> list:
        from edgeship.backends.litert.lower import LiteRTAdapter

        return LiteRTAdapter().lower(job, out, precisions)

    def open(self, path: Path, threads: int, device_numerics: bool = True):
        from edgeship.backends.litert.session import LiteRTSession

        return LiteRTSession(path, threads)

    def profile(self, path: Path, inputs: list, threads: int) -> dict:
        from edgeship.backends.litert.profile import profile

        return profile(path)
