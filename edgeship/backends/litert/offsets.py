"""LiteRT pass: the offsets of asymmetric int4 weights (values q * scale + offset, one offset per group of
`group` input channels of a row), which LiteRT's block-wise int4 kernels do not take.

A layer y = x W^T whose W = Q * S + O block-wise splits exactly into the symmetric int4 layer x (Q * S)^T,
which LiteRT runs as is (litert/int4.py), plus the offsets' part: each offset multiplies the sum of the
`group` inputs it covers, so that part is a small layer over the block sums, sums(x) O^T, with O of shape
(out, in / group). The pass writes it beside the int4 FULLY_CONNECTED:

    RESHAPE x -> (..., in / group, group); SUM over the last axis -> sums
    DEQUANTIZE O (float16, like the scales) -> FULLY_CONNECTED(sums, O) -> part
    FULLY_CONNECTED(x, int4 Q, scales S) -> main; ADD(main, part) -> y (the layer's fused activation)

so the int4 values and scales stay exactly those of the other runtimes, and the offsets are stored as
float16 (relative rounding 2^-11, as the scales). Where the converter folded a factor per output row into
the weight, the offsets' rows carry it like the scales. The layers that read one input (q, k and v; gate
and up) share its block sums: RESHAPE and SUM are written once, before the first of them.
"""

from __future__ import annotations

import numpy as np

from edgeship.quantize.int4 import Int4Weight


def add_offsets(model, pending: list[tuple], schema) -> None:
    """For each (graph, FULLY_CONNECTED op, weight, row factors) of `pending` whose weight has offsets, the
    offsets' layer beside the op (see the module doc); an offsets table read by several graphs is stored
    once."""
    stored: dict[str, int] = {}
    for graph in {id(g): g for g, *_ in pending}.values():
        sums: dict[tuple[int, int], int] = {}  # (input tensor, group) -> its block sums, in this graph
        added = {id(op): _offset_ops(model, graph, op, w, rows, schema, stored, sums)
                 for g, op, w, rows in pending if g is graph}  # in the graph's order: sums come before readers
        graph.operators = [new for op in graph.operators for new in added.get(id(op), [op])]


def _block_sums(model, graph, schema, source: int, group: int) -> tuple[int, list]:
    """The tensor of the sums of each `group` channels of tensor `source`, and the RESHAPE and SUM giving it."""
    code = schema.BuiltinOperator
    shape = list(graph.tensors[source].shape)
    blocks = shape[-1] // group
    grouped = _tensor(graph, schema, b"_blocks", [*shape[:-1], blocks, group])
    sums = _tensor(graph, schema, b"_block_sums", [*shape[:-1], blocks])
    reshape = _op(model, schema, code.RESHAPE, [source, _const(model, graph, schema, np.array(
        [*shape[:-1], blocks, group], np.int32), b"_block_shape")], [grouped],
        schema.BuiltinOptions.ReshapeOptions, _options(schema.ReshapeOptionsT(), newShape=[*shape[:-1], blocks, group]))
    total = _op(model, schema, code.SUM, [grouped, _const(model, graph, schema, np.array([len(shape)], np.int32),
                b"_block_axis")], [sums], schema.BuiltinOptions.ReducerOptions,
                _options(schema.ReducerOptionsT(), keepDims=False))
    return sums, [reshape, total]


def _offset_ops(model, graph, op, w: Int4Weight, rows: np.ndarray | None, schema, stored: dict, sums: dict) -> list:
    """The ops that replace `op`: its input's block sums (unless an earlier layer reading that input wrote
    them: `sums`), the offsets' layer, `op` itself and the ADD of the two."""
    code = schema.BuiltinOperator
    source, output = op.inputs[0], op.outputs[0]
    out_shape = list(graph.tensors[output].shape)
    summed = []
    if (source, w.group) not in sums:
        sums[source, w.group], summed = _block_sums(model, graph, schema, source, w.group)
    if w.layer not in stored:
        offsets = w.offset.numpy() * (1.0 if rows is None else rows[:, None])
        stored[w.layer] = _buffer(model, offsets.astype(np.float16))
    half = _tensor(graph, schema, b"_offsets16", list(w.offset.shape), schema.TensorType.FLOAT16, stored[w.layer])
    table = _tensor(graph, schema, b"_offsets", list(w.offset.shape))
    dequantize = _op(model, schema, code.DEQUANTIZE, [half], [table], 0, None, version=3)
    part = _tensor(graph, schema, b"_offset_part", out_shape)
    main = _tensor(graph, schema, b"_int4_part", out_shape)
    options = op.builtinOptions
    layer = _op(model, schema, code.FULLY_CONNECTED, [sums[source, w.group], table, -1], [part],
                schema.BuiltinOptions.FullyConnectedOptions,
                _options(schema.FullyConnectedOptionsT(), keepNumDims=bool(options and options.keepNumDims)))
    activation = options.fusedActivationFunction if options else 0
    if options:
        options.fusedActivationFunction = 0
    op.outputs = [main]
    add = _op(model, schema, code.ADD, [main, part], [output], schema.BuiltinOptions.AddOptions,
              _options(schema.AddOptionsT(), fusedActivationFunction=activation))
    return [*summed, dequantize, layer, op, add]


def _options(options, **values):
    for name, value in values.items():
        setattr(options, name, value)
    return options


def _opcode(model, schema, builtin: int, version: int) -> int:
    from ai_edge_litert.tools import flatbuffer_utils

    for i, code in enumerate(model.operatorCodes):
        if flatbuffer_utils.get_builtin_code_from_operator_code(code) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _op(model, schema, builtin: int, inputs: list[int], outputs: list[int], options_type: int, options,
        version: int = 1):
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(model, schema, builtin, version)
    op.inputs, op.outputs = inputs, outputs
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _buffer(model, values: np.ndarray) -> int:
    from ai_edge_litert import schema_py_generated as schema

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(values.tobytes(), dtype=np.uint8)
    model.buffers.append(buffer)
    return len(model.buffers) - 1


def _tensor(graph, schema, suffix: bytes, shape: list[int], kind: int | None = None, buffer: int = 0) -> int:
    tensor = schema.TensorT()
    tensor.name = b"edgeship" + suffix + b"_%d" % len(graph.tensors)
    tensor.shape = shape
    tensor.type = schema.TensorType.FLOAT32 if kind is None else kind
    tensor.buffer = buffer
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _const(model, graph, schema, values: np.ndarray, suffix: bytes) -> int:
    return _tensor(graph, schema, suffix, list(values.shape), schema.TensorType.INT32, _buffer(model, values))
