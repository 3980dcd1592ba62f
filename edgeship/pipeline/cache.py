"""Content-addressed cache of export folders, safe for concurrent builds sharing one folder.

A job's key covers the model's code and declared inputs (weights), the calibration and eval data,
the resolved recipe, the target profile, the job's options, and the versions of edgeship and of
every runtime library. Computing it imports no ML library, so a cache hit costs milliseconds.
An entry is written to a temporary folder inside the cache and renamed into place in one step:
readers see a whole entry or none, and when two builds race, the first rename wins and the other
build discards its copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from edgeship.errors import ConfigError
from edgeship.pipeline.project import ModelEntry

KEY_VERSION = 1


def _hash_path(digest, path: Path) -> None:
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(child.relative_to(path)).encode())
            _hash_file(digest, child)
    elif path.is_file():
        _hash_file(digest, path)
    else:
        raise ConfigError(f"{path}: does not exist; fix the path in the project file")


def _hash_file(digest, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def _model_code(source: str, root: Path) -> Path:
    from edgeship.export.causal_lm import is_causal_lm_source

    if is_causal_lm_source(str(root / source)):  # a language model's folder or .gguf: its files are the model
        return root / source
    where = source.rpartition(":")[0]
    if where.endswith(".py"):
        return root / where
    spec = importlib.util.find_spec(where)
    if spec is None or spec.origin is None:
        raise ConfigError(f"model source {source!r}: cannot find module {where!r}; install it or give a .py path")
    return Path(spec.origin)


def job_key(model: ModelEntry, target: str, root: Path) -> str:
    from edgeship import __version__
    from edgeship.quantize.recipe import recipe_by_name
    from edgeship.report.manifest import versions
    from edgeship.targets.devices import BUILTIN

    digest = hashlib.sha256()
    parts = {
        "key_version": KEY_VERSION,
        "edgeship": __version__,
        "libraries": versions(),
        "source": model.source,
        "recipe": recipe_by_name(model.recipe).to_dict(),
        "target": target,
        "input_shapes": list(model.input_shapes),
        "input_dtypes": list(model.input_dtypes),
        "eval_data": model.eval_data,
        "calibration": model.calibration,
    }
    code = _model_code(model.source, root)
    if code == root / model.source:  # a language model: its budgets steer the export and the timing
        parts["language_export"] = model.budgets.for_language_export(Path(target).stem)
        parts |= {k: getattr(model, k) for k in ("max_seq_len", "int4_offsets") if getattr(model, k) is not None}
    digest.update(json.dumps(parts, sort_keys=True).encode())
    paths = [code, root / model.calibration]
    evaluation = model.eval_data.values() if isinstance(model.eval_data, dict) else [model.eval_data]
    paths += [root / p for p in evaluation if p]
    paths += [root / p for p in model.inputs]
    profile = Path(target) if target.endswith(".toml") else BUILTIN / f"{target}.toml"
    paths.append(profile if profile.is_absolute() else root / profile)
    for path in paths:
        digest.update(str(path.name).encode())
        _hash_path(digest, path)
    return digest.hexdigest()


class Cache:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def entry(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def get(self, key: str) -> Path | None:
        entry = self.entry(key)
        return entry if (entry / "manifest.json").is_file() else None

    def put(self, key: str, export_dir: Path, replace: bool = False) -> Path:
        """Copy `export_dir` into the cache under `key`; returns the entry. Without `replace`, an
        entry another build stored first is kept (same key, same inputs); with it (--force), ours
        replaces it."""
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.tmp-", dir=final.parent))
        try:
            shutil.copytree(export_dir, tmp, dirs_exist_ok=True)
            if replace and final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.old-", dir=final.parent))
                with contextlib.suppress(OSError):  # a racer may have moved it already
                    os.rename(final, old / "entry")
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.rename(tmp, final)
            except OSError:  # another build stored the same key first: keep theirs
                if not self.get(key):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def publish(entry: Path, dest: Path) -> None:
    """Copy a cache entry to `dest`, replacing it in one rename (copies: editing the build folder
    can never corrupt the cache)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copytree(entry, tmp, dirs_exist_ok=True)  # a language model's artifacts hold folders
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
