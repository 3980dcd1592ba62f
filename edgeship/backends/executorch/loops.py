"""Loops (`torch.ops.higher_order.scan`, edgeship/export/loops.py) lowered with their bodies in XNNPACK.

ExecuTorch runs a scan as a loop of its own instructions and lowers the tagged nodes of a loop body into
delegates of their own (`to_backend` recurses into control-flow bodies), but XNNPACK's partitioner tags
the top graph only, so a body ran on portable kernels in float. Three things make a body XNNPACK's:

- `LoopPartitioner` runs XNNPACK's partitioner on every body as well.
- `BodyConstants` (an edge transform pass) makes the weights a body receives as inputs of the loop its
  own constants, their per-channel quantize computed once, so XNNPACK sees static int8 weights; and it
  writes `mm` / `addmm` over a transposed weight back as `linear` (the decomposition of a body does not
  keep `linear`, which XNNPACK delegates with int8 weights).
- A copy of a delegate's output is left outside it (XNNPACK refuses an output that passes through).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from edgeship.export.loops import bodies


class BodyConstants:
    """Edge transform pass; `program` is the program before `to_edge` (its placeholders' names and values
    are the edge program's)."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        signature = program.graph_signature
        self.values = {name: program.state_dict[target] for name, target in signature.inputs_to_parameters.items()}
        for name, target in signature.inputs_to_buffers.items():
            self.values[name] = program.state_dict.get(target, program.constants.get(target))
        for name, target in signature.inputs_to_lifted_tensor_constants.items():
            self.values[name] = program.constants[target]

    def __call__(self, module: GraphModule):
        from torch.fx.passes.infra.pass_base import PassResult

        changed = False
        for node, body in bodies(module):
            combine, init, xs, additional = node.args
            places = [n for n in body.graph.nodes if n.op == "placeholder"]
            first = len(init) + len(xs)
            kept = []
            for k, arg in enumerate(additional):
                if isinstance(arg, torch.fx.Node) and arg.op == "placeholder" and self.values.get(arg.name) is not None:
                    value = self.values[arg.name].detach().clone()
                    _as_constant(body, places[first + k], f"_edgeship_constant_{k}", value)
                    changed = True
                else:
                    kept.append(arg)
            node.args = (combine, init, xs, tuple(kept))
            changed |= _fold_weight_quantize(body)
            changed |= _relinear(body)
            body.graph.eliminate_dead_code()
            body.graph.lint()
            body.recompile()
        module.recompile()
        return PassResult(module, changed)


def _fold_weight_quantize(body: GraphModule) -> bool:
    """quantize_per_channel(constant, constant scales, constant zero points) -> the int8 constant."""
    done = False
    for node in list(body.graph.nodes):
        name = str(node.target)
        if node.op != "call_function" or "quantize_per_channel" not in name or "dequantize" in name:
            continue
        if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in node.args[:3]):
            continue
        weight, scale, zero_point = (getattr(body, a.target) for a in node.args[:3])
        int8 = torch.ops.quantized_decomposed.quantize_per_channel.default(weight, scale, zero_point, *node.args[3:])
        _as_constant(body, node, f"{node.args[0].target}_int8", int8)
        done = True
    return done


def _as_constant(body: GraphModule, node: torch.fx.Node, name: str, value: torch.Tensor) -> None:
    """`node` (a placeholder, or an op of constants) replaced by `value`, held by the body as `name`."""
    body.register_buffer(name, value)
    with body.graph.inserting_before(node):
        constant = body.graph.get_attr(name)
    constant.meta = dict(node.meta)
    node.replace_all_uses_with(constant)
    body.graph.erase_node(node)


def _relinear(body: GraphModule) -> bool:
    from executorch.exir.dialects._ops import ops as exir_ops

    edge = exir_ops.edge.aten
    done = False
    for node in list(body.graph.nodes):
        if node.op != "call_function" or node.target not in (edge.mm.default, edge.addmm.default) or node.kwargs:
            continue
        bias, a, transposed = (None, *node.args) if node.target == edge.mm.default else node.args[:3]
        if not (isinstance(transposed, torch.fx.Node) and transposed.target == edge.permute_copy.default
                and list(transposed.args[1]) == [1, 0]):
            continue
        with body.graph.inserting_before(node):
            linear = body.graph.call_function(edge.linear.default,
                                              (a, transposed.args[0]) + ((bias,) if bias is not None else ()))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        body.graph.erase_node(node)
        if not transposed.users:
            body.graph.erase_node(transposed)
        done = True
    return done


def loop_partitioner(inner):
    """`inner` (XNNPACK's partitioner) run on the program and on each loop body in it."""
    from executorch.exir.backend.partitioner import Partitioner, PartitionResult
    from executorch.exir.graph_module import get_control_flow_submodules

    class LoopPartitioner(Partitioner):
        def __init__(self) -> None:
            super().__init__()
            self.delegation_spec = inner.delegation_spec

        def ops_to_not_decompose(self, program):
            return inner.ops_to_not_decompose(program)

        def partition(self, program) -> PartitionResult:
            tags = dict(inner.partition(program).partition_tags)
            self._bodies(program, program.graph_module, tags)
            return PartitionResult(tagged_exported_program=program, partition_tags=tags)

        def _bodies(self, program, module, tags) -> None:
            for name, body, _ in get_control_flow_submodules(module):
                top = program._graph_module
                program._graph_module = body  # the partitioner reads the graph, and the program's constants
                try:
                    found = inner.partition(program).partition_tags
                finally:
                    program._graph_module = top
                for node in body.graph.nodes:  # a copy of an output would pass through the delegate
                    if node.op == "call_function" and "clone" in str(node.target):
                        node.meta.pop("delegation_tag", None)
                for tag, spec in found.items():
                    for node in body.graph.nodes:
                        if node.meta.get("delegation_tag") == tag:
                            node.meta["delegation_tag"] = f"{name}_{tag}"
                    tags[f"{name}_{tag}"] = spec
                self._bodies(program, body, tags)

    return LoopPartitioner()
