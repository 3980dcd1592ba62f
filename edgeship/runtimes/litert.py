"""LiteRT harness: runs .tflite models in the LiteRT interpreter (XNNPACK delegate by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.errors import RuntimeFailure
from edgeship.runtimes.base import TensorInfo, dequantize, quantize


class LiteRTSession:
    def __init__(self, path: Path, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._interp = Interpreter(model_path=str(path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeFailure(f"LiteRT cannot load {path}: {exc}; re-export the model") from exc
        self._in = self._interp.get_input_details()
        self._out = self._interp.get_output_details()
        self.inputs = [_info(d) for d in self._in]
        self.outputs = [_info(d) for d in self._out]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        for detail, info, x in zip(self._in, self.inputs, inputs):
            if info.scale is not None:
                x = quantize(x, info, detail["dtype"])
            self._interp.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=detail["dtype"]))
        self._interp.invoke()
        outs = []
        for detail, info in zip(self._out, self.outputs):
            y = self._interp.get_tensor(detail["index"])
            outs.append(dequantize(y, info) if info.scale is not None else np.array(y))
        return outs


def _info(detail: dict) -> TensorInfo:
    scale, zero_point = detail["quantization"]
    quantized = scale != 0.0 and np.dtype(detail["dtype"]).kind in "iu"
    return TensorInfo(detail["name"], tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name,
                      float(scale) if quantized else None, int(zero_point) if quantized else None)


class LiteRTHarness:
    name = "litert"

    def load(self, path: Path, threads: int, device_numerics: bool = True) -> LiteRTSession:
        return LiteRTSession(path, threads)
