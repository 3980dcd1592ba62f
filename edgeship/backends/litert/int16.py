"""LiteRT passes for int16 activations (recipe `int16_activations`), which LiteRT runs with its 16x8
kernels (int16 activations, int8 weights).

`fence_requantize` (on the Q/DQ graph, before conversion): where an int8 value is requantized to int16
(or back), DQ(int8) -> Q(int16), the converter folds the pair into one tensor and a kernel gets an int8
input with an int16 output, which the interpreter refuses ("output->type != data_type"). An optimization
barrier (an identity) between the two makes it write DEQUANTIZE and QUANTIZE. It leaves alone every
DQ -> Q pair of one dtype, and graphs without int16.

`widen_biases` (on the .tflite file, after conversion): the converter gives every convolution and
fully-connected layer an int32 bias; LiteRT's 16x8 depthwise convolution takes int64 only. The int32
values are stored as int64, unchanged. It leaves alone layers with int8 or float inputs, and int64 biases.
"""

from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch

from edgeship.errors import ExportError
from edgeship.quantize.quantizer import op_name

_QUANTIZE = {"quantize_per_tensor"}
_DEQUANTIZE = {"dequantize_per_tensor"}


def fence_requantize(module: torch.fx.GraphModule) -> int:
    """In place; returns how many requantizations it fenced."""
    from litert_torch.backend.optimization_barrier import optimization_barrier_op

    graph = module.graph
    count = 0
    for node in list(graph.nodes):
        source = node.args[0] if op_name(node) in _QUANTIZE else None
        if not isinstance(source, torch.fx.Node) or op_name(source) not in _DEQUANTIZE:
            continue
        if source.args[-1] == node.args[-1]:  # same dtype
            continue
        with graph.inserting_before(node):
            # the barrier of one value lowers to a bare result the converter cannot index: give it two
            barrier = graph.call_function(optimization_barrier_op, ((source, source),))
            fenced = graph.call_function(operator.getitem, (barrier, 0))
        node.replace_input_with(source, fenced)
        count += 1
    if count:
        module.recompile()
    return count


def widen_biases(path: Path) -> int:
    """Rewrites the model at `path` in place when it changes anything; returns how many biases."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    op = schema.BuiltinOperator
    # (activation input, bias input) of each layer kind
    inputs = {op.CONV_2D: (0, 2), op.DEPTHWISE_CONV_2D: (0, 2), op.FULLY_CONNECTED: (0, 2), op.TRANSPOSE_CONV: (2, 3)}
    model = flatbuffer_utils.read_model(str(path))
    kinds = [flatbuffer_utils.get_builtin_code_from_operator_code(code) for code in model.operatorCodes]
    count = 0
    for graph in model.subgraphs:
        for layer in graph.operators:
            at = inputs.get(kinds[layer.opcodeIndex])
            if at is None or len(layer.inputs) <= at[1] or layer.inputs[at[1]] < 0:
                continue
            activation, bias = graph.tensors[layer.inputs[at[0]]], graph.tensors[layer.inputs[at[1]]]
            if activation.type != schema.TensorType.INT16 or bias.type != schema.TensorType.INT32:
                continue
            values = np.frombuffer(np.asarray(model.buffers[bias.buffer].data, np.uint8).tobytes(), np.int32)
            if np.any(np.abs(values.astype(np.int64)) >= np.iinfo(np.int32).max):
                raise ExportError(f"LiteRT: the int32 bias of {(bias.name or b'a layer').decode()} saturates at "
                                  "input scale x weight scale, so its int16 layer would be wrong; leave that "
                                  "layer out of int16_activations")
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(values.astype(np.int64).tobytes(), np.uint8)
            model.buffers.append(buffer)
            bias.buffer = len(model.buffers) - 1  # a fresh buffer: the int32 one may be shared
            bias.type = schema.TensorType.INT64
            count += 1
    if count:
        flatbuffer_utils.write_model(model, str(path))
    return count
