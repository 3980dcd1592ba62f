"""Graph pass: keep integer arithmetic integer when a scalar was lifted to a float tensor constant.

When it applies: a 0-dim floating-point constant (a `get_attr` buffer, such as the
`_tensor_constant_*` buffers that scalar-lifting quantizer transforms register) holding an integral
value is an operand of add/sub/mul whose other operand is an integer tensor, and the result feeds,
within a few ops, an op that needs integer indices (embedding, index, gather, index_select).
Type promotion would turn that index computation (a Hugging Face BERT's position and token-type ids,
its attention-mask arithmetic) into float, and the index op raises during calibration.
The constant is replaced by one of the integer operand's dtype.

When it leaves the graph alone: float constants in float arithmetic, non-integral values, constants
whose result never reaches an index op, and graphs without such constants (most CNNs).
"""

from __future__ import annotations

import logging

import torch
from torch.fx import GraphModule, Node

log = logging.getLogger(__name__)

aten = torch.ops.aten
_ARITH = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.add_.Tensor, aten.mul_.Tensor}
_INDEXING = {aten.embedding.default, aten.index.Tensor, aten.gather.default, aten.index_select.default}
_HOPS = 4


def restore_integer_constants(gm: GraphModule) -> list[str]:
    """Returns the names of the constants it changed (empty when it left the graph alone)."""
    changed = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _ARITH or len(node.args) < 2:
            continue
        for const, other in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            dtype = _integer_dtype(other)
            value = _float_scalar_constant(gm, const)
            if dtype is None or value is None or not float(value).is_integer():
                continue
            if not _reaches_indexing(node, _HOPS):
                continue
            _set_constant(gm, const.target, torch.tensor(int(value), dtype=dtype))
            changed.append(str(const.target))
    if changed:
        gm.recompile()
        log.info("kept integer arithmetic integer for constants %s", ", ".join(changed))
    return changed


def _integer_dtype(node) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    if isinstance(val, torch.Tensor) and not val.dtype.is_floating_point and val.dtype != torch.bool:
        return val.dtype
    return None


def _float_scalar_constant(gm: GraphModule, node) -> torch.Tensor | None:
    if not isinstance(node, Node) or node.op != "get_attr":
        return None
    tensor = _get(gm, node.target)
    if isinstance(tensor, torch.Tensor) and tensor.dim() == 0 and tensor.dtype.is_floating_point:
        return tensor.item()
    return None


def _reaches_indexing(node: Node, hops: int) -> bool:
    frontier = [node]
    for _ in range(hops):
        frontier = [u for n in frontier for u in n.users]
        if any(u.op == "call_function" and u.target in _INDEXING for u in frontier):
            return True
    return False


def _get(gm: GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _set_constant(gm: GraphModule, target: str, value: torch.Tensor) -> None:
    owner_path, _, name = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)
