"""ONNX pass: a MatMul / Gemm whose constant weight is one of edgeship's int4 layers becomes ONNX
Runtime's MatMulNBits (com.microsoft) carrying exactly those int4 values and scales; one of its
per-channel int8 layers (`w8a8-dynamic`) becomes DynamicQuantizeMatMul with those int8 values.

When it applies: the exporter wrote the layer as MatMul(x, W^T) or Gemm(x, W, transB=1) with the
weight as an initializer whose values equal the dequantized int4 weight (edgeship exports the graph with
those weights, so the match is exact). When it leaves the graph alone: every other MatMul / Gemm
(activations times activations, float layers), which then stays a float kernel and is recorded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.quantize.int4 import Int4Weight


def _pack(w: Int4Weight) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' B (uint8 [N, blocks, group / 2], two values per byte, low nibble first, stored as
    value + 8, the default zero point) and scales ([N * blocks])."""
    q = w.q.numpy().astype(np.int16) + 8
    n, k = q.shape
    pairs = q.reshape(n, k // w.group, w.group // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    return packed, w.scale.numpy().astype(np.float32).reshape(-1)


def _dynamic_int8(graph, node, w: Int4Weight, bias: str | None, store: bool = True):
    """DynamicQuantizeMatMul (com.microsoft): int8 weights (K x N) with one scale per output column;
    ONNX Runtime quantizes the activations to uint8 per tensor at run time. `store`: add the weight's
    initializers (False for a further MatMul reading the same weight)."""
    from onnx import helper, numpy_helper

    base = f"{w.layer}_int8"
    n = w.q.shape[0]
    inputs = [node.input[0], f"{base}_B", f"{base}_scales", f"{base}_zero_points"] + ([bias] if bias else [])
    if not store:
        return helper.make_node("DynamicQuantizeMatMul", inputs, [node.output[0]], name=f"{base}_{node.name}_matmul",
                                domain="com.microsoft")
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(w.q.numpy().T), f"{base}_B"),
        numpy_helper.from_array(w.scale.numpy().reshape(n).astype(np.float32), f"{base}_scales"),
        numpy_helper.from_array(np.zeros(n, np.int8), f"{base}_zero_points")])
    return helper.make_node("DynamicQuantizeMatMul", inputs, [node.output[0]], name=f"{base}_matmul",
                            domain="com.microsoft")


def to_matmul_nbits(path: Path, weights: list[Int4Weight]) -> list[str]:
    """Rewrites the model at `path` in place; returns the int4 layers it could not find."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    by_bytes = {}
    for w in weights:
        dense = w.dequantized().numpy().astype(np.float32)
        by_bytes[dense.tobytes()] = (w, False)  # Gemm(transB=1): W as is
        by_bytes[np.ascontiguousarray(dense.T).tobytes()] = (w, True)  # MatMul: W^T
    found, nodes, used_inits = set(), [], set()
    for node in graph.node:
        match = None
        if node.op_type in ("MatMul", "Gemm") and len(node.input) >= 2 and node.input[1] in inits:
            array = numpy_helper.to_array(inits[node.input[1]])
            hit = by_bytes.get(np.ascontiguousarray(array, dtype=np.float32).tobytes()) if array.dtype == np.float32 else None
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if hit is not None and node.op_type == "MatMul" and hit[1]:
                match = hit[0]
            elif hit is not None and node.op_type == "Gemm" and not hit[1] and attrs.get("transB") == 1 \
                    and attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0:
                match = hit[0]
        if match is None:
            nodes.append(node)
            continue
        used_inits.add(node.input[1])
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        first = match.layer not in found  # a weight several MatMuls read (a recurrent layer's steps) is stored once
        found.add(match.layer)
        if match.bits == 8:
            nodes.append(_dynamic_int8(graph, node, match, bias, first))
            continue
        base = f"{match.layer}_int4"
        if first:
            packed, scales = _pack(match)
            graph.initializer.extend([numpy_helper.from_array(packed, f"{base}_B"),
                                      numpy_helper.from_array(scales, f"{base}_scales")])
        call = base if first else f"{base}_{node.name}"
        out = node.output[0] if bias is None else f"{call}_y"
        n, k = match.q.shape
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], f"{base}_B", f"{base}_scales"], [out],
                                      name=f"{call}_matmul", domain="com.microsoft", K=k, N=n, bits=4,
                                      block_size=match.group, accuracy_level=4))
        if out != node.output[0]:  # Gemm's bias
            nodes.append(helper.make_node("Add", [out, bias], [node.output[0]], name=f"{call}_bias"))
    replace_nodes(model, nodes, used_inits)
    onnx.save(model, str(path))
    return sorted({w.layer for w in weights} - found)


def replace_nodes(model, nodes: list, replaced: set[str]) -> None:
    """`model`'s nodes become `nodes`; the `replaced` initializers no node reads any more are dropped; the
    com.microsoft domain is imported."""
    from onnx import helper

    graph = model.graph
    still_read = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name not in replaced or i.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
