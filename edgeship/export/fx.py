"""What every graph pass reads and writes in an exported graph: the ops that carry weights, and a
module's attributes by dotted name. The lowest layer of graph code: export's passes, the quantizer and
the runtimes' rewrites all use it."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

aten = torch.ops.aten

CONV_OPS = {aten.conv1d.default, aten.conv2d.default, aten.conv1d.padding, aten.conv2d.padding}
LINEAR_OPS = {aten.linear.default}
MATMUL_OPS = {aten.matmul.default, aten.bmm.default}


def attr(module: GraphModule, target: str) -> torch.Tensor:
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def replace_attr(module: torch.nn.Module, target: str, value: torch.Tensor) -> None:
    """A new tensor in place of the parameter or buffer at dotted `target`, of the same kind (the old
    tensor is not written into: an exported program may share it)."""
    *path, leaf = target.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    if isinstance(getattr(owner, leaf), torch.nn.Parameter):
        setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=False))
    else:
        delattr(owner, leaf)
        owner.register_buffer(leaf, value)


def register(module: GraphModule, name: str, value: torch.Tensor) -> str:
    name = name.replace(".", "_")
    module.register_buffer(name, value)
    return name
