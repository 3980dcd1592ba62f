"""Embedding tables stored in int8, one scale per row, or in int4 (w4a8), one scale per group of
columns (weight-only; the looked-up rows are float).

An embedding is a row lookup, so no runtime needs an int8 kernel for it: the table is stored int8
(symmetric, -127..127, scale = max |row| / 127), the rows are looked up in int8 and multiplied by
their looked-up scales: `embedding(W_q, ids).float() * embedding(scales, ids)`. Every runtime runs
that as a gather, a cast and a multiply on the looked-up rows only. For a transformer the word
embedding is often half of the weights (all-MiniLM-L6-v2: 11.7 M of 22.7 M parameters), so the int8
artifact cannot be small without this.

int4 tables hold two columns per byte (value + 8, even column in the low nibble; the byte minus 128 is
stored as int8); the looked-up bytes are split with an integer division by 16 (an op every runtime
has, where bitwise ops are not), then offset, scaled per group and widened: the same values and scales as the
int4 linear layers' format (scale = max |group| / 7, values -8..7).

When it applies: `aten.embedding` with a float table held by the module (a get_attr).
When it leaves the graph alone: tables computed in the graph, integer tables, and tables of fewer
than MIN_ROWS rows (position and token-type tables are tiny; they stay exact).
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule

from edgeship.quantize.graphs import attr, register
from edgeship.quantize.quantizer import FLOAT_NODE

log = logging.getLogger(__name__)
aten = torch.ops.aten
MIN_ROWS = 1024


def quantize_embeddings(module: GraphModule, samples=None, progress=None, bits: int = 8, group: int = 32) -> list[dict]:
    """Rewrites `module` in place; returns a record per table (rows, columns, worst row error)."""
    graph, records = module.graph, []
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.embedding.default:
            continue
        name, table, ids = node.name, node.args[0], node.args[1]
        if table.op != "get_attr":
            continue
        weight = attr(module, table.target).detach()
        if not weight.dtype.is_floating_point or weight.dim() != 2 or weight.shape[0] < MIN_ROWS:
            continue
        table_bits = 4 if bits == 4 and not weight.shape[1] % group and "val" in node.meta else 8
        if table_bits != bits:
            log.info("%s: %d columns are not a multiple of the group size %d; its table stays int8",
                     name, weight.shape[1], group)
        if table_bits == 4:
            dense, new_nodes, value = _int4_lookup(module, node, weight, ids, group)
        else:
            dense, new_nodes, value = _int8_lookup(module, node, weight, ids)
        for new in new_nodes:
            new.meta[FLOAT_NODE] = True  # nothing here for the activation quantizer
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        value.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(value)
        graph.erase_node(node)
        error = float((dense - weight).abs().amax() / weight.abs().amax())
        records.append({"embedding": name, "rows": int(weight.shape[0]), "columns": int(weight.shape[1]),
                        "bits": table_bits,
                        "max_error_vs_table_max": round(error, 6)})
    if records:
        graph.eliminate_dead_code()
        graph.lint()
        module.recompile()
        log.info("quantized embedding tables: %s", ", ".join(f"{r['embedding']} ({r['rows']}x{r['columns']})"
                                                      for r in records))
    return records


def _int8_lookup(module: GraphModule, node, weight: torch.Tensor, ids):
    graph = module.graph
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    q_name = register(module, f"_int8_{node.name}_table", q)
    s_name = register(module, f"_int8_{node.name}_scales", scale[:, None].to(weight.dtype))
    with graph.inserting_before(node):
        q_node, s_node = graph.get_attr(q_name), graph.get_attr(s_name)
        rows = graph.call_function(aten.embedding.default, (q_node, ids, *node.args[2:]))
        widened = graph.call_function(aten._to_copy.default, (rows,), {"dtype": weight.dtype})
        scales = graph.call_function(aten.embedding.default, (s_node, ids, *node.args[2:]))
        value = graph.call_function(aten.mul.Tensor, (widened, scales))
    return q.float() * scale[:, None], [rows, widened, scales, value], value


def _int4_lookup(module: GraphModule, node, weight: torch.Tensor, ids, group: int):
    from edgeship.quantize.grid import QMIN, quantize_weight

    graph = module.graph
    rows_n, cols = weight.shape
    q, scale = quantize_weight(weight, group)  # (rows, cols) in -8..7, (rows, cols / group)
    offset = q.to(torch.int16) - QMIN  # 0..15
    # byte = even + 16 * odd (0..255), stored as int8 minus 128: MLIR constants cannot be unsigned
    packed = (offset[:, 0::2] + 16 * offset[:, 1::2] - 128).to(torch.int8)
    q_name = register(module, f"_int4_{node.name}_table", packed)
    s_name = register(module, f"_int4_{node.name}_scales", scale.to(weight.dtype))
    lead = list(node.meta["val"].shape[:-1])
    made = []

    def call(target, args, kwargs=None):
        made.append(graph.call_function(target, args, kwargs))
        return made[-1]

    with graph.inserting_before(node):
        q_node, s_node = graph.get_attr(q_name), graph.get_attr(s_name)
        rows = call(aten.embedding.default, (q_node, ids, *node.args[2:]))  # int8 (..., cols / 2)
        wide = call(aten.add.Tensor, (call(aten._to_copy.default, (rows,), {"dtype": torch.int32}), 128))
        high = call(aten.floor_divide.default, (wide, 16))  # non-negative: every runtime's division agrees
        low = call(aten.sub.Tensor, (wide, call(aten.mul.Tensor, (high, 16))))
        pairs = call(aten.stack.default, ([low, high], -1))  # (..., cols / 2, 2): even, odd column
        values = call(aten.sub.Tensor, (call(aten._to_copy.default, (pairs,), {"dtype": weight.dtype}), float(-QMIN)))
        blocks = call(aten.reshape.default, (values, lead + [cols // group, group]))
        scales = call(aten.embedding.default, (s_node, ids, *node.args[2:]))  # (..., cols / group)
        scaled = call(aten.mul.Tensor, (blocks, call(aten.unsqueeze.default, (scales, -1))))
        value = call(aten.reshape.default, (scaled, lead + [cols]))
    dense = (q.reshape(rows_n, cols // group, group).float() * scale[..., None]).reshape(rows_n, cols)
    return dense, made, value
