"""LiteRT harness: runs .tflite models in the LiteRT interpreter (XNNPACK delegate by default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.backends.base import TensorInfo, dequantize, quantize
from edgeship.errors import RuntimeFailure


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


DATA_MOVEMENT = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "GATHER",
                 "CAST", "SLICE", "STRIDED_SLICE", "CONCATENATION", "PAD", "PADV2", "BROADCAST_TO",
                 "DELEGATE", "SHAPE", "PACK", "UNPACK", "SPLIT"}


def float_ops(path: Path) -> list[str]:
    """Builtin ops of a .tflite model that compute in float32 (before any delegate is applied)."""
    return kernel_types(path)[0]


def kernel_types(path: Path) -> tuple[list[str], list[str]]:
    """Builtin ops of a .tflite model that compute in float32, and those with int16 activations."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    floats, wide = [], []
    for op in interp._get_ops_details():
        if op["op_name"] in DATA_MOVEMENT:
            continue
        ids = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        if any(tensors[i]["dtype"] == np.float32 for i in ids):
            floats.append(op["op_name"])
        elif any(tensors[i]["dtype"] == np.int16 for i in ids):
            wide.append(op["op_name"])
    if "WHILE" in floats:  # a loop: the ops of its body are listed instead
        floats = [name for name in floats if name != "WHILE"]
        body_floats, body_wide = _loop_kernel_types(path)
        floats, wide = floats + body_floats, wide + body_wide
    return floats, wide


def _loop_kernel_types(path: Path) -> tuple[list[str], list[str]]:
    """`kernel_types` of the subgraphs after the first (loop conditions and bodies), read from the file:
    the interpreter lists the first subgraph's ops only."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    kinds = [names.get(flatbuffer_utils.get_builtin_code_from_operator_code(c), "CUSTOM") for c in model.operatorCodes]
    floats, wide = [], []
    for graph in model.subgraphs[1:]:
        for op in graph.operators:
            kind = kinds[op.opcodeIndex]
            types = [graph.tensors[i].type for i in list(op.inputs) + list(op.outputs) if i >= 0]
            if kind in DATA_MOVEMENT or kind == "DYNAMIC_UPDATE_SLICE" or set(types) <= {schema.TensorType.INT32}:
                continue  # moving data, or the loop's own step counter
            if schema.TensorType.FLOAT32 in types:
                floats.append(kind)
            elif schema.TensorType.INT16 in types:
                wide.append(kind)
    return floats, wide
