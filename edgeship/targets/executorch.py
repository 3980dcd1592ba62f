"""ExecuTorch adapter: `.pte` programs lowered to the XNNPACK delegate (fp32 and int8)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch

from edgeship.errors import ExportError
from edgeship.quantize.quantizer import STRUCTURAL_OPS
from edgeship.targets.base import Artifact, LowerJob, count_ops

log = logging.getLogger(__name__)

_BOOKKEEPING = {"executorch_call_delegate", "getitem", "alloc", "memory.alloc", "view_copy",
                "_to_dim_order_copy", "unsqueeze_copy", "squeeze_copy", "expand_copy",
                "sym_size", "scalar_tensor", "full", "full_like", "arange"}


class ExecuTorchAdapter:
    name = "executorch"

    def lower(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[Artifact]:
        artifacts = []
        if "fp32" in precisions:
            path = out / "model.fp32.pte"
            outside = _lower(job.float_program, path)
            artifacts.append(Artifact(self.name, "fp32", path,
                                      count_ops(outside, "outside the XNNPACK delegate (portable kernel)")))
        if "int8" in precisions:
            path = out / "model.int8.pte"
            module, wide = _int16_in_float(job.quantized.folded)
            module = _bias_per_call(module)
            program = torch.export.export(module, job.example_inputs, strict=False)
            outside = _lower(program, path)
            not_quantized = count_ops(outside, "outside the XNNPACK delegate (portable kernel)")
            not_quantized += count_ops(job.quantized.float_ops, "float op in the quantized graph")
            not_quantized += count_ops(wide, "int16 activations (recipe int16_activations): XNNPACK has no int16 "
                                       "kernels, so this op reads the value unquantized (a float op, or the "
                                       "int8 op before it writes the next op's int8 input)")
            artifacts.append(Artifact(self.name, "int8", path, not_quantized))
        if "fp16" in precisions:
            path = out / "model.fp16.pte"
            outside = _lower(job.half, path)
            artifacts.append(Artifact(self.name, "fp16", path,
                                      count_ops(outside, "outside the XNNPACK delegate (portable kernel)")))
        if job.int4 is not None and job.int4.precision in precisions:  # int4, or int8 with dynamic activations
            precision = job.int4.precision
            path = out / f"model.{precision}.pte"
            program = torch.export.export(job.int4.packed, job.example_inputs, strict=False)
            outside = _lower(program, path)
            not_quantized = count_ops(outside, "outside the XNNPACK delegate (portable kernel)")
            not_quantized += [{"op": f["layer"], "count": 1, "reason": f["reason"]} for f in job.int4.skipped]
            artifacts.append(Artifact(self.name, precision, path, not_quantized))
        return artifacts


def _bias_per_call(folded: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The graph with every conv / linear call that shares its float bias with another call (a recurrent
    layer's steps, a cell in the model's loop) reading its own copy; `folded` itself when none shares.

    XNNPACK's lowering quantizes a layer's bias to int32 at that call's input scale x weight scale but
    defines the tensor once per graph node: every later call reading the same bias got the first call's
    int32 values, off by the ratio of the input scales (two calls of one linear with input scales 0.005 and
    0.007: 5 output steps off; a GRUCell in a loop after an LSTMCell: 26 dB against 42 simulated). The
    copies hold the same float values, so nothing else changes."""
    from edgeship.quantize.graphs import attr, register
    from edgeship.quantize.quantizer import CONV_OPS, LINEAR_OPS

    def calls(graph):
        by_bias: dict[str, list[torch.fx.Node]] = {}
        for node in graph.nodes:
            bias = node.args[2] if node.op == "call_function" and node.target in CONV_OPS | LINEAR_OPS \
                and len(node.args) > 2 else None
            if isinstance(bias, torch.fx.Node) and bias.op == "get_attr":
                by_bias.setdefault(bias.target, []).append(node)
        return {target: nodes for target, nodes in by_bias.items() if len(nodes) > 1}

    if not calls(folded.graph):
        return folded
    module = copy.deepcopy(folded)
    for target, nodes in calls(module.graph).items():
        for k, node in enumerate(nodes[1:], 1):
            name = register(module, f"{target}_call{k}", attr(module, target).detach().clone())
            with module.graph.inserting_before(node):
                node.update_arg(2, module.graph.get_attr(name))
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def _int16_in_float(folded: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, list[str]]:
    """The graph with its int16 quantize -> dequantize pairs taken out (the values they carried stay
    float), and the op names of the ops that read those values; `folded` itself when it has none. A layer
    left with a float input gets its int8 weight as the float values it stands for, so that XNNPACK runs it
    as a float layer (given a float input and a dequantized weight it leaves the layer to portable kernels)."""
    pairs = [n.name for n in folded.graph.nodes if _op(n) == "dequantize_per_tensor" and n.args[-1] is torch.int16
             and _op(n.args[0]) == "quantize_per_tensor"]
    if not pairs:
        return folded, []
    module = copy.deepcopy(folded)
    nodes = {n.name: n for n in module.graph.nodes}
    readers = set()
    for name in pairs:
        dq = nodes[name]
        q = dq.args[0]
        readers |= {u for u in dq.users if u.op == "call_function" and _op(u) not in _QDQ}
        dq.replace_all_uses_with(q.args[0])
        module.graph.erase_node(dq)
        if not q.users:
            module.graph.erase_node(q)
    replaced = set()
    for reader in readers:
        if reader.args and _op(reader.args[0]) not in _QDQ:  # its input is float now
            replaced |= _float_weights(module, reader)
    module.graph.eliminate_dead_code()
    read = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    for target in replaced - read:  # the int8 weights and scales no layer reads now: not stored
        owner, _, name = target.rpartition(".")
        delattr(module.get_submodule(owner) if owner else module, name)
    module.recompile()
    return module, sorted(_op(u) for u in readers if _op(u) not in STRUCTURAL_OPS)


_QDQ = ("quantize_per_tensor", "dequantize_per_tensor")


def _float_weights(module: torch.fx.GraphModule, layer: torch.fx.Node) -> set[str]:
    """Each constant weight `layer` reads through a dequantize becomes the dequantized float constant;
    returns the attributes those dequantizes read."""
    read = set()
    for arg in layer.args[1:]:
        if not (isinstance(arg, torch.fx.Node) and _op(arg).startswith("dequantize_per")):
            continue
        if not all(a.op == "get_attr" for a in arg.args if isinstance(a, torch.fx.Node)):
            continue
        values = [_attr(module, a.target) if isinstance(a, torch.fx.Node) else a for a in arg.args]
        name = f"{arg.name}_float"
        module.register_buffer(name, arg.target(*values, **arg.kwargs))
        with module.graph.inserting_before(arg):
            layer.replace_input_with(arg, module.graph.get_attr(name))
        read |= {a.target for a in arg.args if isinstance(a, torch.fx.Node)}
    return read


def _attr(module: torch.nn.Module, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _op(node) -> str:
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return ""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _lower(program: torch.export.ExportedProgram, path: Path) -> list[str]:
    """Lower to XNNPACK, write the .pte, return the ops left outside the delegate."""
    import executorch.kernels.quantized  # noqa: F401  registers the quantized ops' out variants
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        et_program = edge.to_executorch()
    except Exception as exc:  # ExecuTorch raises many types for ops it cannot lower
        raise ExportError(f"ExecuTorch cannot lower the model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}; "
                          "run with --debug for the full trace") from exc
    path.write_bytes(et_program.buffer)
    outside = []
    for node in et_program.exported_program().graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if name not in _BOOKKEEPING:
            outside.append(name)
    return outside
