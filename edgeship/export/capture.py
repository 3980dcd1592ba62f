"""Capture a model with torch.export (static shapes) and write the float ONNX reference."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re

import torch
from torch.utils import _pytree as pytree

from edgeship.errors import ExportError
from edgeship.export.load import user_line
from edgeship.export.passes.spectra import real_spectra

log = logging.getLogger(__name__)


class FlatOutputs(torch.nn.Module):
    """Wraps a model so that it returns a flat tuple of tensors (dicts, dataclasses and nested
    tuples flattened in pytree order); every runtime then sees the same outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args):
        leaves = pytree.tree_leaves(self.model(*args))
        return tuple(leaf for leaf in leaves if isinstance(leaf, torch.Tensor))


def output_names(model: torch.nn.Module, args: tuple) -> list[str]:
    with torch.no_grad():
        out = model(*args)
    paths, _ = pytree.tree_flatten_with_path(out)
    names = []
    for path, leaf in paths:
        if isinstance(leaf, torch.Tensor):
            name = "".join(_key(k) for k in path).strip(".") or "output"
            names.append(re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_.") or f"output{len(names)}")
    return names if len(set(names)) == len(names) else [f"output{i}" for i in range(len(names))]


def _key(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return f".{getattr(k, attr)}"
    return f".{k}"


def run_float(model: torch.nn.Module, args: tuple, source_file: str | None):
    """The model's output on the example inputs; a failure names the inputs and the user's line."""
    try:
        with torch.no_grad():
            return model(*args)
    except Exception as exc:  # user code: the user must see what failed
        shapes = ", ".join(f"{'x'.join(map(str, a.shape))} {str(a.dtype).replace('torch.', '')}" for a in args)
        where = user_line(exc, source_file)
        raise ExportError(
            f"the model failed on its example inputs ({shapes}): {type(exc).__name__}: "
            f"{first_line(exc)}{where}; check that the data or --input-shape/--input-dtype match "
            "the model's inputs (each array's first axis is the samples, and each sample reaches the model with "
            "a batch axis of 1 in front; an input whose batch axis is elsewhere, such as a recurrent state "
            "[layers, batch, hidden], takes it where --input-shape puts it: --input-shape 2x1x64 for that "
            "input)") from exc


def check_outputs(out) -> None:
    """Raises ExportError when the model's output holds no tensor (a string, None, a dict of numbers):
    a runtime artifact returns tensors only. Other values beside tensors are left out, with a warning."""
    leaves = pytree.tree_leaves(out)
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    others = sorted({type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor) and leaf is not None})
    if not tensors:
        what = type(out).__name__ + (f" of {', '.join(others)}" if others and not isinstance(out, str) else "")
        raise ExportError(f"the model's forward returns {what}, which holds no tensor; runtimes return tensors "
                          "only: make forward return a tensor, or a tuple, list or dict of tensors")
    if others:
        log.warning("the model's output holds %s values beside its %d tensor(s); the artifacts return the "
                    "tensors only", ", ".join(others), len(tensors))


def capture(model: torch.nn.Module, args: tuple, source_file: str | None) -> torch.export.ExportedProgram:
    printed = io.StringIO()  # torch.export prints the partial graph to stderr on failure
    try:
        with contextlib.redirect_stderr(printed):
            program = torch.export.export(model, args, strict=False)
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        log.debug("torch.export printed:\n%s", printed.getvalue())
        op = _failing_op(f"{exc}\n{getattr(exc, 'partial_fx_graph', '')}")
        where = user_line(exc, source_file)
        raised = _raising_call(str(exc))
        if raised and raised.split(":")[0] not in where:
            where += f" (the call that raised: {raised})"
        raise ExportError(
            f"torch.export cannot capture the model: {type(exc).__name__}: {first_line(exc)}"
            f"{f' (op {op})' if op else ''}{where}; rewrite that code without data-dependent "
            "Python control flow or unsupported ops, or run with --debug for the full trace",
            op=op, source_line=where.strip(" ;at") or None) from exc
    return real_spectra(program, args)


def first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()  # no terminal colours
    line = next((t.strip() for t in text if t.strip()), "")
    return line[:300]


def _failing_op(text: str) -> str | None:
    """The last ATen op a trace names: torch.export stops at the op it could not handle."""
    found = re.findall(r"aten\.(\w+(?:\.\w+)?)", text)
    return f"aten.{found[-1]}" if found else None


def _raising_call(text: str) -> str | None:
    """`file:line: code` of the call torch.export names as the one that raised (a library's line, such as
    a data-dependent `if` in a Hugging Face model, which the user's own frames do not show)."""
    found = re.search(r'The following call raised this error:\s*File "([^"]+)", line (\d+), in \S+\s*\n\s*(.+)',
                      text)
    if not found:
        return None
    path, line, code = found.groups()
    short = path.split("site-packages/")[-1]
    return f"{short}:{line}: {code.strip()}"


class HalfPrecision(torch.nn.Module):
    """A float model computed in float16 with float32 inputs and outputs (cast at the edges), so an
    fp16 artifact has the same I/O contract as the fp32 one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, *args):
        args = tuple(a.half() if a.is_floating_point() else a for a in args)
        return tuple(o.float() if o.is_floating_point() else o for o in self.model(*args))


def capture_half(flat: torch.nn.Module, args: tuple) -> torch.export.ExportedProgram:
    """The float16 program of a FlatOutputs model (for the fp16 recipe)."""
    try:
        return torch.export.export(HalfPrecision(flat), args, strict=False)
    except Exception as exc:  # the exporter raises many types for ops it cannot trace in float16
        raise ExportError(f"torch.export cannot capture the model in float16: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:300] if str(exc) else ''}; use an int8 recipe, "
                          "or run with --debug for the full trace") from exc
