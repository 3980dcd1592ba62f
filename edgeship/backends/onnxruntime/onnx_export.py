"""The ONNX files: a torch.export program written with torch.onnx's dynamo exporter (and ONNX's own
optimizer passes, `optimize.py`), with the node metadata that would make the bytes depend on paths
removed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from edgeship.errors import ExportError
from edgeship.export.capture import first_line


def export_float_onnx(program: torch.export.ExportedProgram, path: Path, input_names: list[str],
                      output_names: list[str]) -> None:
    try:
        onnx_program = to_onnx(program, input_names, output_names)
    except Exception as exc:  # the ONNX exporter raises many types for ops it cannot translate
        cause = exc.__cause__  # the exporter wraps the failing step's error; that one names the op
        why = f" ({type(cause).__name__}: {first_line(cause)})" if cause is not None else ""
        raise ExportError(f"torch.onnx.export cannot translate the model: {type(exc).__name__}: "
                          f"{first_line(exc)}{why}; run with --debug for the full trace") from exc
    onnx_program.save(str(path))
    strip_metadata(path)


def to_onnx(program: torch.export.ExportedProgram, input_names: list[str], output_names: list[str]):
    """`program` translated by torch.onnx's exporter and optimized (backends/onnxruntime/optimize.py)."""
    from edgeship.backends.onnxruntime.optimize import optimize

    with _contiguous_as_clone(program):
        onnx_program = torch.onnx.export(program, input_names=input_names, output_names=output_names,
                                         dynamo=True, optimize=False, verbose=False)
    optimize(onnx_program.model)
    return onnx_program


@contextlib.contextmanager
def _contiguous_as_clone(program: torch.export.ExportedProgram):
    """`x.contiguous()` as a copy while the ONNX exporter decomposes the program. Its decomposition keeps
    `contiguous` only where the input is not contiguous by the strides it traces with, and a decomposed
    scaled_dot_product_attention has other strides than the eager kernel's: a T5 encoder's
    `attention.transpose(1, 2).contiguous().view(...)` lost the copy and the view failed ("Cannot view a
    tensor with shape ... and strides ..."). A copy is always kept; ONNX writes it as an Identity, which
    the optimizer removes. The program is restored afterwards (the other runtimes lower it too)."""
    contiguous = torch.ops.aten.contiguous.default
    changed = []
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target is contiguous:
            layout = node.kwargs.get("memory_format", node.args[1] if len(node.args) > 1 else torch.contiguous_format)
            changed.append((node, node.args, node.kwargs))
            node.target, node.args, node.kwargs = torch.ops.aten.clone.default, node.args[:1], {"memory_format": layout}
    if changed:
        program.graph_module.recompile()
    try:
        yield
    finally:
        for node, args, kwargs in changed:
            node.target, node.args, node.kwargs = contiguous, args, kwargs
        if changed:
            program.graph_module.recompile()


def strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node metadata (namespaces and Python stack traces): a tenth of a small
    model's file, read by nothing at run time. Value names (the graph node names) stay."""
    import onnx

    if path.stat().st_size > 1 << 30:  # near protobuf's 2 GB limit: left as the exporter wrote it
        return
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))
