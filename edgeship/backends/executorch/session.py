"""ExecuTorch harness: runs .pte programs through the ExecuTorch pybindings (XNNPACK included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeship.backends.base import TensorInfo
from edgeship.errors import RuntimeFailure
from edgeship.logs import without_banners


class ExecuTorchSession:
    def __init__(self, path: Path, threads: int) -> None:
        import executorch.kernels.quantized  # noqa: F401  registers quantized kernels for non-delegated ops
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        with without_banners():  # the pybindings print their CPU probe through Python's sys.stderr
            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)
            try:
                program = Runtime.get().load_program(str(path))
                self._method = program.load_method("forward")
            except Exception as exc:  # the pybindings raise RuntimeError/ValueError alike
                raise RuntimeFailure(f"ExecuTorch cannot load {path}: {exc}; re-export the model") from exc
        meta = self._method.metadata
        self.inputs = [_info(f"input{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
        self.outputs = [_info(f"output{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
        return [o.detach().numpy().copy() for o in self._method.execute(tensors)]


# ExecuTorch ScalarType codes, for metadata that reports the dtype as a bare number
_SCALAR_TYPES = {"0": "byte", "1": "char", "3": "int", "4": "long", "5": "half", "6": "float", "11": "bool"}


def _info(name: str, meta) -> TensorInfo:
    dtype = str(meta.dtype()).replace("ScalarType.", "").lower()
    dtype = _SCALAR_TYPES.get(dtype, dtype)
    dtype = {"float": "float32", "long": "int64", "int": "int32", "char": "int8", "byte": "uint8",
             "half": "float16"}.get(dtype, dtype)
    return TensorInfo(name, tuple(meta.sizes()), dtype)
