"""The manifest of one export: versions, inputs, recipe, and one record per artifact."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from edgeship import outputs
from edgeship.errors import ConfigError

MANIFEST_VERSION = 1
LIBRARIES = ("torch", "torchao", "executorch", "litert-torch", "ai-edge-litert", "onnx", "onnxscript",
             "onnxruntime", "numpy")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions() -> dict:
    found = {}
    for name in ("edgeship", *LIBRARIES):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def artifact_record(checked, out: Path) -> dict:
    a = checked.artifact
    return {
        "runtime": a.runtime,
        "precision": a.precision,
        "path": a.path.name if a.path.parent == out else str(a.path),
        "bytes": a.path.stat().st_size,
        "sha256": sha256(a.path),
        "io": checked.io,
        "accuracy": checked.accuracy,
        "vs_simulated_steps": checked.vs_simulated_steps,
        "latency_ms": checked.latency_ms,
        "not_quantized": a.not_quantized,
    }


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{out_dir} holds no manifest.json; pass an export folder (out/<model>/<target>)")
    return json.loads(path.read_text())


def write_json(path: Path, data: dict) -> None:
    outputs.write_text(path, json.dumps(data, indent=1) + "\n")
