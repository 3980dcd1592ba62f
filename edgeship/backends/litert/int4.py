"""LiteRT pass: a FULLY_CONNECTED whose constant weight is one of edgeship's int4 layers gets that weight
as an INT4 tensor with block-wise quantization (one scale per `group` input channels), which LiteRT's
fully-connected kernel runs with int8 activations quantized at run time (dynamic range quantization);
one of its per-channel int8 layers (`w8a8-dynamic`) gets an INT8 tensor with one scale per output
channel (float32 scales: the int8 values and scales are exactly the other runtimes').

The values are edgeship's int4 values unchanged; the scales are stored as float16 (the only scale type
LiteRT's block-wise quantization takes), so the weights LiteRT computes with differ from the other
runtimes' by float16's rounding of each scale (relative 2^-11 at most). Where the converter folded a
constant multiply after the layer into its weight (one factor per output row), the rows' scales carry
that factor and the values stay the same. Asymmetric int4 weights (an offset per group) keep these values
and scales; their offsets become a small layer beside the int4 one (litert/offsets.py).

LiteRT's converter folds a constant multiply that feeds a FULLY_CONNECTED (a layer norm's scale) into
its weight, which would take the weight off the int4 grid; int4 folds layer norms into their linear
layers before computing the weights (edgeship/quantize/norm_fold.py), so nothing is left to fold.

When it applies: litert-torch wrote the layer as FULLY_CONNECTED with the weight as a constant buffer whose
float values equal the dequantized int4 weight (edgeship converts the graph with those weights, so the
match is exact). When it leaves the graph alone: every other operator (BATCH_MATMUL of two activations,
float layers), which then stays a float kernel and is recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.backends.litert.offsets import add_offsets
from edgeship.quantize.int4 import Int4Weight


def pack(q: np.ndarray) -> np.ndarray:
    """Two int4 values per byte, the first in the low nibble (LiteRT's dense int4 layout)."""
    flat = q.astype(np.int8).reshape(-1)
    if flat.size % 2:
        flat = np.append(flat, np.int8(0))
    nibbles = (flat & 0x0F).astype(np.uint8)
    return nibbles[0::2] | (nibbles[1::2] << 4)


def unpack(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The int4 values of `pack`'s bytes, as int8."""
    nibbles = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:int(np.prod(shape))].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8).reshape(shape)


def to_blockwise_int4(path: Path, weights: list[Int4Weight]) -> list[str]:
    """Rewrites the model at `path` in place; returns the int4 layers it could not find."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    by_bytes = {w.dequantized().numpy().astype(np.float32).tobytes(): w for w in weights}
    reads_weight = {i: flatbuffer_utils.get_builtin_code_from_operator_code(code) for i, code in
                    enumerate(model.operatorCodes)}
    reads_weight = {i: code for i, code in reads_weight.items()
                    if code in (schema.BuiltinOperator.FULLY_CONNECTED, schema.BuiltinOperator.EMBEDDING_LOOKUP)}
    found, written, pending = set(), {}, []
    for graph in model.subgraphs:
        for op in graph.operators:
            if op.opcodeIndex not in reads_weight or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            tensor = graph.tensors[op.inputs[1]]
            data = model.buffers[tensor.buffer].data
            if tensor.type != schema.TensorType.FLOAT32 or data is None:
                continue
            raw = np.asarray(data, dtype=np.uint8).tobytes()
            match, rows = by_bytes.get(raw), None
            if match is None:
                match, rows = _row_scaled(np.frombuffer(raw, np.float32).reshape(tensor.shape),
                                          [w for w in weights if w.layer not in found])
            lookup = reads_weight[op.opcodeIndex] == schema.BuiltinOperator.EMBEDDING_LOOKUP
            if match is None or list(tensor.shape) != list(match.q.shape) or (lookup and match.bits != 8):
                continue
            _quantize_tensor(model, graph, tensor, match, schema, rows, written)
            found.add(match.layer)
            if match.offset is not None:
                pending.append((graph, op, match, rows))
    add_offsets(model, pending, schema)
    _drop_unread_buffers(model)
    flatbuffer_utils.write_model(model, str(path))
    return sorted({w.layer for w in weights} - found)


def _row_scaled(value: np.ndarray, candidates: list[Int4Weight]) -> tuple[Int4Weight | None, np.ndarray | None]:
    """The int4 layer whose weight `value` is up to one factor per output row (the converter folds a
    constant multiply after the layer into its weight, e.g. attention's 1/sqrt(d) split over q and k),
    and those factors; (None, None) when there is none. Rows scale the int4 scales, never the values."""
    for w in candidates:
        if tuple(w.q.shape) != value.shape:
            continue
        dense = w.dequantized().numpy()
        pick = np.abs(dense).argmax(axis=1)
        rows = np.arange(len(pick))
        if np.any(dense[rows, pick] == 0):
            continue
        factor = value[rows, pick] / dense[rows, pick]
        if np.abs(value - factor[:, None] * dense).max() <= 1e-6 * max(float(np.abs(value).max()), 1e-30):
            return w, factor.astype(np.float32)
    return None, None


def _drop_unread_buffers(model) -> None:
    """Empties the float buffers no tensor reads any more (buffer 0 is the format's empty sentinel)."""
    read = {t.buffer for g in model.subgraphs for t in g.tensors}
    for i, buffer in enumerate(model.buffers):
        if i and i not in read:
            buffer.data = None


def _quantize_tensor(model, graph, tensor, w: Int4Weight, schema, rows: np.ndarray | None,
                     written: dict[int, tuple[int, int | None]]) -> None:
    """`tensor` as `w`'s integer values; `written` maps a float buffer already rewritten (the same weight
    read by another signature's graph) to its integer buffers, so each is stored once."""
    original = tensor.buffer
    first = written.get(original)
    if w.bits == 8:
        _per_channel_int8(model, tensor, w, schema, rows, first)
        written.setdefault(original, (tensor.buffer, None))
        return
    if first is None:
        buffer = schema.BufferT()
        buffer.data = pack(w.q.numpy())
        model.buffers.append(buffer)
        scale_buffer = schema.BufferT()
        scale = w.scale.numpy() if rows is None else w.scale.numpy() * rows[:, None]
        scale_buffer.data = np.frombuffer(scale.astype(np.float16).tobytes(), dtype=np.uint8)
        model.buffers.append(scale_buffer)
        first = written[original] = (len(model.buffers) - 2, len(model.buffers) - 1)
    tensor.buffer = first[0]  # a fresh buffer: the float one may be shared
    tensor.type = schema.TensorType.INT4

    scales = schema.TensorT()
    scales.name = (tensor.name or b"weight") + b"_scales"
    scales.shape = list(w.scale.shape)
    scales.type = schema.TensorType.FLOAT16
    scales.buffer = first[1]
    graph.tensors.append(scales)

    details = schema.BlockwiseQuantizationT()
    details.scales = len(graph.tensors) - 1
    details.zeroPoints = -1  # symmetric
    details.blockSize = w.group
    quantization = schema.QuantizationParametersT()
    quantization.detailsType = schema.QuantizationDetails.BlockwiseQuantization
    quantization.details = details
    tensor.quantization = quantization


def _per_channel_int8(model, tensor, w: Int4Weight, schema, rows: np.ndarray | None,
                      first: tuple[int, int | None] | None) -> None:
    """INT8 weights with one scale per output channel (per row of an embedding table): LiteRT's hybrid
    (dynamic range) kernels; `first`: the buffer already holding them."""
    if first is None:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(w.q.numpy().astype(np.int8).tobytes(), dtype=np.uint8)
        model.buffers.append(buffer)
        tensor.buffer = len(model.buffers) - 1
    else:
        tensor.buffer = first[0]
    tensor.type = schema.TensorType.INT8
    scale = w.scale.numpy().reshape(-1) * (1.0 if rows is None else rows)
    quantization = schema.QuantizationParametersT()
    quantization.scale = [float(v) for v in scale.astype(np.float32)]
    quantization.zeroPoint = [0] * len(scale)
    quantization.quantizedDimension = 0
    tensor.quantization = quantization
