"""ExecuTorch: `.pte` programs lowered to the XNNPACK delegate (`lower.py`) after the graph rewrites
XNNPACK needs (`xnnpack_passes.py`); sessions through the pybindings (`session.py`); ETDump profiles
(`profile.py`)."""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("fp32", "int8", "fp16", "int4", "int8-dynamic")


class ExecuTorchBackend:
    name = "executorch"
    precisions = PRECISIONS
    imports = ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner",
               "executorch.kernels.quantized", "edgeship.backends.executorch.lower")

    def supports(self, job, precision: str) -> str | None:
        from edgeship.backends.base import missing_form

        return missing_form(job, precision, self.precisions)

    def lower(self, job, out: Path, precisions: tuple[str, ...]) -> list:
        from edgeship.backends.executorch.lower import ExecuTorchAdapter

        return ExecuTorchAdapter().lower(job, out, precisions)

    def detach(self, job, out: Path, precisions: tuple[str, ...]):
        from edgeship.backends.executorch.lower import ExecuTorchAdapter

        return ExecuTorchAdapter().detach(job, out, precisions)

    def open(self, path: Path, threads: int, device_numerics: bool = True):
        from edgeship.backends.executorch.session import ExecuTorchSession

        return ExecuTorchSession(path, threads)

    def profile(self, path: Path, inputs: list, threads: int) -> dict:
        from edgeship.backends.executorch.profile import profile

        return profile(path, inputs)
