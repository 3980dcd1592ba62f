"""The runtime-harness Protocol, I/O descriptions, and the registry of harnesses by runtime name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeship.registry import instantiate


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


class Harness(Protocol):
    name: str

    def load(self, path: Path, threads: int, device_numerics: bool = True) -> Session: ...


HARNESSES = {
    "onnxruntime": "edgeship.runtimes.onnxruntime:OnnxRuntimeHarness",
    "executorch": "edgeship.runtimes.executorch:ExecuTorchHarness",
    "litert": "edgeship.runtimes.litert:LiteRTHarness",
}


def get_harness(name: str) -> Harness:
    return instantiate(HARNESSES, "runtime", name)


def quantize(x: np.ndarray, info: TensorInfo, dtype) -> np.ndarray:
    info_min, info_max = np.iinfo(dtype).min, np.iinfo(dtype).max
    q = np.round(x.astype(np.float32) / info.scale) + info.zero_point
    return np.clip(q, info_min, info_max).astype(dtype)


def dequantize(q: np.ndarray, info: TensorInfo) -> np.ndarray:
    return ((q.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)
