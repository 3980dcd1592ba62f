"""LiteRT pass: one copy of each repeated quantization vector in a `.tflite` file, and short tensor names.

The format stores, for every quantized tensor, its scales (float32) and zero points (int64) as vectors
inside the flatbuffer, one per channel for per-channel tensors. litert-torch writes every vector out
again, so an int8 CNN carries a full-length int64 vector of zeros for each convolution's weight and
another for its bias (MobileNetV2: 289 KB of zeros, 2% of the fp32 file). Flatbuffers may point many
tables at one vector, and LiteRT reads the vector through the offset, so identical vectors are written
once and shared. The values the interpreter reads are unchanged; only where they lie in the file moves.

Tensor names are debugging labels (the signature maps inputs and outputs by index), and the converter
writes each as the full Python path of every module on the way to the layer
(`edgeship.export.capture.FlatOutputs/mobilenet_v2.MobileNetV2_model/torch.nn.modules.container.Sequential_features/...`:
61 KB in MobileNetV2). Each path step keeps its class and attribute (`Sequential_features/Conv2d_2`),
which names the layer as well. The graph's input and output tensors keep their names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def compact(path: Path) -> int:
    """Rewrites the model at `path` with identical quantization vectors stored once and short inner tensor
    names; returns the bytes saved."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    before = path.stat().st_size
    model = flatbuffer_utils.read_model(str(path))
    shared = _shared_params_class(schema)
    vectors: dict = {}
    for graph in model.subgraphs:
        ends = set(graph.inputs) | set(graph.outputs)
        for index, tensor in enumerate(graph.tensors):
            if tensor.name and index not in ends:
                tensor.name = short_name(tensor.name)
            if tensor.quantization is not None:
                tensor.quantization = shared.of(tensor.quantization, vectors)
    data = flatbuffer_utils.convert_object_to_bytearray(model)
    if len(data) >= before:
        return 0
    temporary = path.with_suffix(".compact")
    temporary.write_bytes(data)
    temporary.replace(path)
    return before - len(data)


def short_name(name: bytes) -> bytes:
    """`a.b.Class_attr/c.Class_attr;...` -> `Class_attr/Class_attr;...`: each step without its module path."""
    return b"".join(part.rsplit(b".", 1)[-1] for part in re.split(rb"([/;])", name))


def _shared_params_class(schema):
    class SharedQuantizationParameters(schema.QuantizationParametersT):
        """QuantizationParametersT packed like the generated code, except that its vectors are created
        once per value: `_vectors` maps (field, bytes) to the offset already in the builder."""

        @classmethod
        def of(cls, params, vectors: dict) -> "SharedQuantizationParameters":
            copy = cls()
            copy.__dict__.update(params.__dict__)
            copy._vectors = vectors
            return copy

        def _vector(self, builder, field: str, values, dtype) -> int:
            array = np.asarray(values, dtype=dtype)
            key = (field, array.tobytes())
            if key not in self._vectors:
                self._vectors[key] = builder.CreateNumpyVector(array)
            return self._vectors[key]

        def Pack(self, builder):
            fields = {name: self._vector(builder, name, values, dtype)
                      for name, values, dtype in (("min", self.min, np.float32), ("max", self.max, np.float32),
                                                  ("scale", self.scale, np.float32),
                                                  ("zeroPoint", self.zeroPoint, np.int64))
                      if values is not None}
            details = self.details.Pack(builder) if self.details is not None else None
            schema.QuantizationParametersStart(builder)
            for name, offset in fields.items():
                getattr(schema, f"QuantizationParametersAdd{name[0].upper()}{name[1:]}")(builder, offset)
            schema.QuantizationParametersAddDetailsType(builder, self.detailsType)
            if details is not None:
                schema.QuantizationParametersAddDetails(builder, details)
            schema.QuantizationParametersAddQuantizedDimension(builder, self.quantizedDimension)
            return schema.QuantizationParametersEnd(builder)
    return SharedQuantizationParameters
