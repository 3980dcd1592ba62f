"""The manifest of one export (`manifest.json`): versions, inputs, recipe, and one record per artifact.
`Manifest` is what the export flow fills; every field is described in `manifest.schema.json` beside
this file, which the tests validate real manifests against."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgeship import outputs
from edgeship.errors import ConfigError

MANIFEST_VERSION = 1
SCHEMA = Path(__file__).with_name("manifest.schema.json")
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


@dataclass
class Manifest:
    """manifest.json as the export flow writes it, field by field (manifest.schema.json says what each
    holds). `simulated` is written as `simulated_<precision>`: the quantized graph's own accuracy."""

    versions: dict
    model: dict
    target: dict
    recipe: dict
    calibration: dict
    evaluation: dict
    simulated_precision: str  # int8, int4, int8_dynamic or fp16
    simulated: dict
    float_ops_in_quantized_graph: list[str]
    algorithms: list[dict]
    not_produced: list[dict]
    precision_choice: dict | None
    artifacts: list[dict]
    int8_output_scales: list[float | None]
    int8_agreement_steps: dict
    int8_agreement_max_abs: dict
    host: dict
    export_seconds: float
    reproduce: dict | None
    manifest_version: int = MANIFEST_VERSION

    def to_dict(self) -> dict:
        """The file's fields in the file's order."""
        return {"manifest_version": self.manifest_version, "versions": self.versions, "model": self.model,
                "target": self.target, "recipe": self.recipe, "calibration": self.calibration,
                "evaluation": self.evaluation, f"simulated_{self.simulated_precision}": self.simulated,
                "float_ops_in_quantized_graph": self.float_ops_in_quantized_graph, "algorithms": self.algorithms,
                "not_produced": self.not_produced, "precision_choice": self.precision_choice,
                "artifacts": self.artifacts, "int8_output_scales": self.int8_output_scales,
                "int8_agreement_steps": self.int8_agreement_steps,
                "int8_agreement_max_abs": self.int8_agreement_max_abs, "host": self.host,
                "export_seconds": self.export_seconds, "reproduce": self.reproduce}


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
