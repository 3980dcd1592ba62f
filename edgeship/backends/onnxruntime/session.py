"""ONNX Runtime harness: runs .onnx and .ort files on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.backends.base import TensorInfo
from edgeship.errors import RuntimeFailure

# the session settings an ARM build uses: int8 QDQ kept signed (no uint8 rewrite)
ARM_SESSION_CONFIG = {"session.qdqisint8allowed": "1"}

_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
          "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
          "tensor(float16)": "float16"}


def session_options(threads: int | None = None, device_numerics: bool = True):
    """Session options for the CPU provider: `device_numerics` applies ARM_SESSION_CONFIG."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    for key, value in (ARM_SESSION_CONFIG if device_numerics else {}).items():
        options.add_session_config_entry(key, value)
    return options


class OnnxRuntimeSession:
    def __init__(self, path: Path, threads: int, device_numerics: bool = True) -> None:
        import onnxruntime as ort

        options = session_options(threads, device_numerics)
        self.session_config = dict(ARM_SESSION_CONFIG) if device_numerics else {}
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


# ops ONNX Runtime runs that are not float compute: data movement, and its int8 kernels
DATA_MOVEMENT = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Constant",
                 "Identity", "Concat", "Slice", "Gather", "Expand", "Cast", "Split", "ConstantOfShape"}
INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
                 "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu",
                 "QLinearSoftmax", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger",
                 "DynamicQuantizeLinear", "MaxPool", "QAttention", "DynamicQuantizeMatMul", "MatMulNBits"}
