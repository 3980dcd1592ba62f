"""Embedding tables stored in int8, one scale per row (weight-only; the looked-up rows are float).

An embedding is a row lookup, so no runtime needs an int8 kernel for it: the table is stored int8
(symmetric, -127..127, scale = max |row| / 127), the rows are looked up in int8 and multiplied by
their looked-up scales: `embedding(W_q, ids).float() * embedding(scales, ids)`. Every runtime runs
that as a gather, a cast and a multiply on the looked-up rows only. For a transformer the word
embedding is often half of the weights (all-MiniLM-L6-v2: 11.7 M of 22.7 M parameters), so the int8
artifact cannot be small without this.

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


def quantize_embeddings(module: GraphModule, samples=None, progress=None) -> list[dict]:
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
        for new in (rows, widened, scales, value):
            new.meta[FLOAT_NODE] = True  # nothing here for the activation quantizer
            new.meta["nn_module_stack"] = node.meta.get("nn_module_stack", {})
        value.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(value)
        graph.erase_node(node)
        error = float(((q.float() * scale[:, None]) - weight).abs().amax() / weight.abs().amax())
        records.append({"embedding": name, "rows": int(weight.shape[0]), "columns": int(weight.shape[1]),
                        "max_error_vs_table_max": round(error, 6)})
    if records:
        graph.eliminate_dead_code()
        graph.lint()
        module.recompile()
        log.info("int8 embedding tables: %s", ", ".join(f"{r['embedding']} ({r['rows']}x{r['columns']})"
                                                      for r in records))
    return records
