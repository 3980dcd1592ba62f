"""ONNX Runtime harness: runs .onnx and .ort files on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.errors import RuntimeFailure
from edgeship.runtimes.base import TensorInfo

_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
          "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
          "tensor(float16)": "float16"}


class OnnxRuntimeSession:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        from edgeship.targets.onnxruntime import ARM_SESSION_CONFIG

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        for key, value in ARM_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeFailure(f"onnxruntime cannot load {path}: {exc}; re-export the model") from exc
        self.inputs = [_info(i) for i in self._session.get_inputs()]
        self.outputs = [_info(o) for o in self._session.get_outputs()]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        feed = {info.name: np.ascontiguousarray(x, dtype=info.dtype) for info, x in zip(self.inputs, inputs)}
        return [np.asarray(o) for o in self._session.run(None, feed)]


def _info(arg) -> TensorInfo:
    return TensorInfo(arg.name, tuple(d if isinstance(d, int) else -1 for d in arg.shape),
                      _TYPES.get(arg.type, arg.type))


class OnnxRuntimeHarness:
    name = "onnxruntime"

    def load(self, path: Path, threads: int) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(path, threads)
