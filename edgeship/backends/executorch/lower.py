"""ExecuTorch adapter: `.pte` programs lowered to the XNNPACK delegate (fp32 and int8)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgeship.backends.base import Artifact, LowerJob, WeightOnly, count_ops
from edgeship.backends.executorch.loops import BodyConstants, loop_partitioner
from edgeship.backends.executorch.xnnpack_passes import bias_per_call, int16_in_float, prelu_in_4d
from edgeship.errors import ExportError
from edgeship.export.loops import graphs, has_loops

log = logging.getLogger(__name__)

_BOOKKEEPING = {"executorch_call_delegate", "getitem", "alloc", "memory.alloc", "view_copy",
                "_to_dim_order_copy", "unsqueeze_copy", "squeeze_copy", "expand_copy",
                "sym_size", "scalar_tensor", "full", "full_like", "arange",
                "scan", "_clone_dim_order"}  # a loop, and a copy of a step's output


_OUTSIDE = "outside the XNNPACK delegate (portable kernel)"


@dataclass(frozen=True)
class _Plan:
    """One .pte to lower: the program, where it goes, and what is already known not to run in int8."""

    precision: str
    path: Path
    program: object  # an ExportedProgram, or the bytes torch.export.save wrote of it (lowered in another process)
    not_quantized: list = field(default_factory=list)

    def lower(self) -> Artifact:
        program = self.program
        if isinstance(program, bytes):
            program = torch.export.load(io.BytesIO(program))
        outside = _lower(program, self.path)
        return Artifact("executorch", self.precision, self.path, count_ops(outside, _OUTSIDE) + self.not_quantized)


def lower_plans(plans: list[_Plan]) -> list[Artifact]:
    return [plan.lower() for plan in plans]


class ExecuTorchAdapter:
    name = "executorch"

    def lower(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[Artifact]:
        return lower_plans(self.plans(job, out, precisions))

    def detach(self, job: LowerJob, out: Path, precisions: tuple[str, ...]):
        """The same lowering as `lower`, as a function and its picklable arguments (the programs saved by
        torch.export.save: the .pte files are byte for byte the same); None where a program cannot be saved."""
        plans = self.plans(job, out, precisions)
        try:
            saved = []
            for plan in plans:
                buffer = io.BytesIO()
                torch.export.save(plan.program, buffer)
                saved.append(_Plan(plan.precision, plan.path, buffer.getvalue(), plan.not_quantized))
        except Exception as exc:  # a program holding what torch.export cannot save: lowered in this process
            log.debug("ExecuTorch lowers in this process: its program cannot be saved (%s)", exc)
            return None
        return lower_plans, (saved,)

    def plans(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[_Plan]:
        plans = []
        if "fp32" in precisions:
            plans.append(_Plan("fp32", out / "model.fp32.pte", _for_xnnpack(job.float_program, job.example_inputs)))
        if "int8" in precisions:
            module, wide = int16_in_float(job.form.graph.folded)
            module = prelu_in_4d(bias_per_call(module))
            program = torch.export.export(module, job.example_inputs, strict=False)
            not_quantized = count_ops(job.form.graph.float_ops, "float op in the quantized graph")
            not_quantized += count_ops(wide, "int16 activations (recipe int16_activations): XNNPACK has no int16 "
                                       "kernels, so this op reads the value unquantized (a float op, or the "
                                       "int8 op before it writes the next op's int8 input)")
            plans.append(_Plan("int8", out / "model.int8.pte", program, not_quantized))
        if "fp16" in precisions:
            plans.append(_Plan("fp16", out / "model.fp16.pte", _for_xnnpack(job.form.program, job.example_inputs)))
        if isinstance(job.form, WeightOnly) and job.form.precision in precisions:  # int4, or int8-dynamic
            precision, weights = job.form.precision, job.form.job
            program = torch.export.export(weights.packed, job.example_inputs, strict=False)
            not_quantized = [{"op": f["layer"], "count": 1, "reason": f["reason"]} for f in weights.skipped]
            plans.append(_Plan(precision, out / f"model.{precision}.pte", program, not_quantized))
        return plans


def _for_xnnpack(program: torch.export.ExportedProgram, example_inputs: tuple) -> torch.export.ExportedProgram:
    """`program` with PReLU made 4-D (xnnpack_passes.prelu_in_4d), exported again; `program` itself when
    it has no such PReLU."""
    module = program.module()
    changed = prelu_in_4d(module)
    return program if changed is module else torch.export.export(changed, example_inputs, strict=False)


def without_history(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` with each node's `from_node` history dropped (in place). Every pass ExecuTorch runs copies
    the history of a node into each node it makes from it, so a node's history grows with the passes run
    before it and each pass costs more than the last: dropped before lowering, ExecuTorch lowers in half the
    time (an unrolled 3-layer LSTM of 1,800 nodes: 111 s, then 56 s). Only ExecuTorch's debug handles
    read it, for an ETRecord, which edgeship does not write."""
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("from_node", None)
    return program


def _lower(program: torch.export.ExportedProgram, path: Path) -> list[str]:
    """Lower to XNNPACK, write the .pte, return the ops left outside the delegate."""
    import executorch.kernels.quantized  # noqa: F401  registers the quantized ops' out variants
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        program = without_history(program)
        if has_loops(program.graph_module):  # recurrent layers as loops: their bodies delegated too (loops.py)
            from executorch.exir import EdgeCompileConfig

            edge = to_edge_transform_and_lower(
                program, transform_passes=[BodyConstants(program)],
                partitioner=[loop_partitioner(XnnpackPartitioner())],
                compile_config=EdgeCompileConfig(_core_aten_ops_exception_list=[torch.ops.aten.linear.default]))
        else:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        et_program = edge.to_executorch()
    except Exception as exc:  # ExecuTorch raises many types for ops it cannot lower
        raise ExportError(f"ExecuTorch cannot lower the model: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}; "
                          "run with --debug for the full trace") from exc
    path.write_bytes(et_program.buffer)
    outside = []
    for module in graphs(et_program.exported_program().graph_module):  # loop bodies too
        for node in module.graph.nodes:
            if node.op != "call_function":
                continue
            name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
            if name not in _BOOKKEEPING:
                outside.append(name)
    return outside
