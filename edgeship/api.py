"""The Python API the CLI and build pipelines call. Functions return results; nothing prints.

    from edgeship import api
    result = api.export("examples/mobilenet_v2.py:build", target="android-arm64",
                        calibration="calibration_data/imagenet-sample")
    print(result.out_dir, result.manifest["artifacts"][0]["accuracy"])

Each entry point is one flow in `edgeship/flows/`:

- `export(model, target, calibration, ...) -> ExportResult`: the artifacts of one model for one device
  target, verified and timed, in `out/<model>/<target>/` (flows/export.py).
- `export_language(model, target, calibration, eval_data={subject: text file}, ...) -> ExportResult`: a causal
  language model's generation artifacts (KV cache), verified per subject (flows/language.py).
- `generate(out_dir, prompt, ...) -> GenerateResult`: greedy text from a language-model artifact, run by its
  runtime's own LLM runner (flows/language.py).
- `analyze(model, calibration, ...) -> AnalyzeResult`: per-layer quantization sensitivity (flows/analyze.py).
- `debug(out_dir, ...) -> DebugResult`: an int8 export compared layer by layer (flows/debug.py).
- `bench(out_dir, ...) -> BenchResult`: every artifact timed here or on a device (flows/bench.py).
- `init_project(path)`, `build(project, ...) -> BuildResult`: the build pipeline (edgeship/pipeline).
- `list_targets()`: the built-in device profiles.

Every error a user can cause is an `edgeship.errors.EdgeshipError` whose message ends with what to do;
`BudgetError` when an accuracy budget cannot be met.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeship.errors import ConfigError
from edgeship.flows.analyze import AnalyzeResult, analyze
from edgeship.flows.bench import BenchResult, bench
from edgeship.flows.debug import DebugResult, debug
from edgeship.flows.export import ExportResult, export
from edgeship.flows.generate import GenerateResult, generate
from edgeship.flows.language import export_language
from edgeship.flows.quantize import BudgetError

__all__ = ["AnalyzeResult", "BenchResult", "BudgetError", "DebugResult", "ExportResult", "GenerateResult", "analyze",
           "bench", "build", "debug", "export", "export_language", "generate", "init_project", "list_targets"]


def list_targets():
    """The built-in device profiles."""
    from edgeship.targets.devices import all_devices

    return all_devices()


def init_project(path: str | Path = "edgeship.toml", force: bool = False) -> list[Path]:
    """Write a commented starter project that builds as written where it is written: the project file, a
    small model (`model.py`) and sample photos to calibrate it (`calibration/`) beside it. Refuses to
    overwrite any of them unless `force`. Returns the paths written."""
    from edgeship.pipeline.project import STARTER, STARTER_FOLDER

    path = Path(path)
    model, photos = path.parent / "model.py", path.parent / "calibration"
    existing = [p for p in (path, model, photos) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{', '.join(map(str, existing))} already exist(s); edit them, or pass --force to "
                          "replace them with the starter")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(STARTER_FOLDER / "model.py", model)
    if photos.is_dir():
        shutil.rmtree(photos)
    shutil.copytree(STARTER_FOLDER / "calibration", photos)
    path.write_text(STARTER)
    return [path, model, photos]


def build(project: str | Path = "edgeship.toml", *, only: list[str] | None = None, force: bool = False,
          fail_fast: bool = False, workers: int | None = None, on_event=None):
    """Export the project's model x target matrix (cache hits copied, misses in parallel processes),
    check budgets, write build/report.md, report.html, junit.xml and index.json.
    Returns a `BuildResult` whose `exit_code` is 0 when every job built and met its budgets, else 1."""
    from edgeship.pipeline import build as pipeline
    from edgeship.pipeline.project import load_project

    return pipeline.build(load_project(project), only=only, force=force, fail_fast=fail_fast,
                          workers=workers, on_event=on_event)
