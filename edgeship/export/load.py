"""Load a model source (`path/to/file.py:callable` or `package.module:callable`) into an nn.Module."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import linecache
import logging
import re
import sys
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from edgeship.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    module: torch.nn.Module
    name: str  # used for the output folder
    source: str  # as the user gave it
    source_file: str | None  # the file that defines the callable, for error messages
    signature: "Signature"

    def with_inputs(self, names: tuple[str, ...]) -> "LoadedModel":
        """This model called with exactly `names` as its positional inputs: wrapped when they are not the
        first positional parameters of its forward (a defaulted parameter skipped, a keyword-only one given)."""
        if not self.signature.needs_keywords(names):
            return self
        return replace(self, module=KeywordInputs(self.module, names, self.signature.positional_only).eval())


@dataclass(frozen=True)
class Signature:
    """What a model's `forward` takes. `required`: positional parameters without a default, always inputs.
    `optional`: parameters with a default and keyword-only ones, inputs only when the data names them.
    `positional`: every positional parameter in order (arrays given as arg0, arg1, ... bind to these)."""

    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    positional: tuple[str, ...] = ()
    positional_only: tuple[str, ...] = ()
    var_positional: bool = False
    var_keyword: bool = False
    known: bool = True  # False when forward's signature cannot be read: arrays go in positionally

    def accepts(self, name: str) -> bool:
        return name in self.required or name in self.optional or self.var_keyword

    def needs_keywords(self, names: tuple[str, ...]) -> bool:
        prefix = self.positional[:len(names)]
        return self.known and tuple(names[:len(prefix)]) != prefix

    def describe(self) -> str:
        text = ", ".join(self.required) or "none"
        return text + (f"; optional: {', '.join(self.optional)}" if self.optional else "")


class KeywordInputs(torch.nn.Module):
    """Calls a model with its inputs by name, so that parameters with defaults the data does not give keep
    their defaults (`forward(self, x, embed=False)`, `mask=None`) and keyword-only ones can be inputs."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...], positional_only: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.names, self.positional_only = model, tuple(names), frozenset(positional_only)

    def forward(self, *args):
        positional = [a for n, a in zip(self.names, args) if n in self.positional_only]
        named = {n: a for n, a in zip(self.names, args) if n not in self.positional_only}
        return self.model(*positional, **named)


def load_model(source: str) -> LoadedModel:
    if ":" not in source:
        raise ModelLoadError(
            f"model source {source!r} names no callable; write it as path/to/file.py:build "
            "or package.module:build")
    where, _, attr = source.rpartition(":")
    if not where or not attr:
        raise ModelLoadError(f"model source {source!r} is incomplete; write it as path/to/file.py:build")
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            found = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise ModelLoadError(
                f"{where} has no callable {attr!r}; callables there: {', '.join(found[:12]) or 'none'}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ModelLoadError(f"{where}:{attr} is a {type(factory).__name__}, not a callable; "
                             "name a function or class that returns an nn.Module")
    try:
        net = factory() if not isinstance(factory, torch.nn.Module) else factory
    except Exception as exc:  # user code: report it as theirs, with their line
        where = user_line(exc, getattr(module, "__file__", None))
        raise ModelLoadError(f"{source}() raised {type(exc).__name__}: {str(exc).strip()[:300]}{where}; "
                             "fix the model's builder") from exc
    if not isinstance(net, torch.nn.Module):
        raise ModelLoadError(
            f"{where}:{attr}() returned {type(net).__name__}, not a torch.nn.Module; "
            "make it return the model (an nn.Module)")
    net = in_float32(net.eval())
    name = _model_name(where, attr)
    source_file = getattr(module, "__file__", None)
    return LoadedModel(net, name, source, source_file, signature_of(net))


def in_float32(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with its float64, float16 and bfloat16 weights and buffers in float32 (in place), said in one
    warning: the float reference, calibration and every artifact start from float32 (fp16 artifacts are
    made from it), and a half-precision checkpoint, as hubs ship many, converts exactly."""
    others = sorted({str(t.dtype).removeprefix("torch.") for t in [*net.parameters(), *net.buffers()]
                     if t.is_floating_point() and t.dtype != torch.float32})
    if others:
        log.warning("the model's weights are %s; converted to float32, which edgeship exports from (fp16 "
                    "artifacts included)", " and ".join(others))
        net.float()
    return net


def _model_name(where: str, attr: str) -> str:
    stem = Path(where).stem if where.endswith(".py") else where.rsplit(".", 1)[-1]
    return stem if attr in ("build", "make_model", "model", "create", "get_model") else f"{stem}-{attr}"


def _import_file(path: Path):
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist; check the path (relative to {Path.cwd()})")
    # stable across processes: the name ends up in exported graphs' metadata (byte-identical rebuilds)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # user code: any error is the user's to see
        raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}; "
                             "fix the error in the model file") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"cannot import module {name!r} ({exc}); install the package or pass a "
                             "path to a .py file") from exc
    except Exception as exc:
        raise ModelLoadError(f"importing {name} failed: {type(exc).__name__}: {exc}; fix the error "
                             "in that module") from exc


def signature_of(net: torch.nn.Module) -> Signature:
    try:
        params = [p for p in inspect.signature(net.forward).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return Signature(known=False)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    keyword_only = [p for p in params if p.kind == p.KEYWORD_ONLY]
    return Signature(
        required=tuple(p.name for p in positional + keyword_only if p.default is p.empty),
        optional=tuple(p.name for p in positional + keyword_only if p.default is not p.empty),
        positional=tuple(p.name for p in positional),
        positional_only=tuple(p.name for p in positional if p.kind == p.POSITIONAL_ONLY),
        var_positional=any(p.kind == p.VAR_POSITIONAL for p in params),
        var_keyword=any(p.kind == p.VAR_KEYWORD for p in params))


def user_line(exc: BaseException, source_file: str | None) -> str:
    """`at file:line: code` of the deepest frame in the user's model code."""
    frames = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frames += traceback.extract_tb(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    user = [f for f in frames if _is_user_frame(f.filename, source_file)]
    if not user:
        return ""
    frame = user[-1]
    code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f" at {frame.filename}:{frame.lineno}: {code}"


def _is_user_frame(filename: str, source_file: str | None) -> bool:
    if source_file and Path(filename).resolve() == Path(source_file).resolve():
        return True
    markers = ("site-packages", "dist-packages", "/lib/python3", "<frozen", "/edgeship/")
    return not any(m in filename for m in markers) and not filename.startswith("<")
