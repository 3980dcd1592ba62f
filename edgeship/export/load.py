"""Load a model source (`path/to/file.py:callable` or `package.module:callable`) into an nn.Module."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import re
import sys
from dataclasses import dataclass
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
    input_names: tuple[str, ...]


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
        from edgeship.export.capture import _user_line

        where = _user_line(exc, getattr(module, "__file__", None))
        raise ModelLoadError(f"{source}() raised {type(exc).__name__}: {str(exc).strip()[:300]}{where}; "
                             "fix the model's builder") from exc
    if not isinstance(net, torch.nn.Module):
        raise ModelLoadError(
            f"{where}:{attr}() returned {type(net).__name__}, not a torch.nn.Module; "
            "make it return the model (an nn.Module)")
    net.eval()
    name = _model_name(where, attr)
    source_file = getattr(module, "__file__", None)
    return LoadedModel(net, name, source, source_file, _input_names(net))


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


def _input_names(net: torch.nn.Module) -> tuple[str, ...]:
    try:
        params = inspect.signature(net.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self")
