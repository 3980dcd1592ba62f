"""The debug flow: an int8 export compared layer by layer (float, simulated int8, the ONNX Runtime
artifact), naming the layer where the error jumps."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeship.errors import ConfigError
from edgeship.flows import Progress, no_progress
from edgeship.flows.inputs import capture, load_inputs
from edgeship.report.manifest import read_manifest


@dataclass(frozen=True)
class DebugResult:
    out_dir: Path
    artifact: str  # the runtime artifact compared layer by layer
    samples: int
    rows: list[dict]  # per layer: SQNR of the simulated and runtime values to float, their gap, the drop
    worst: dict | None  # the layer where the SQNR drops most from the previous layer


def debug(out_dir: str | Path, *, samples: int = 8, progress: Progress = no_progress) -> DebugResult:
    """Layer-by-layer comparison for an int8 export: the float graph, the simulated int8 graph and
    `model.int8.onnx` in ONNX Runtime (device session settings) on the export's own eval samples; names
    the layer where the error jumps. Rebuilds the quantized graph from the folder's recorded inputs
    (recipe, calibration data, layers kept float), checking the data is unchanged."""
    from edgeship.quantize.calibrate import calibrate, convert, transformed
    from edgeship.quantize.recipe import Recipe
    from edgeship.report.layers import compare, worst_jump

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    rep = manifest.get("reproduce")
    if not rep:
        raise ConfigError(f"{out_dir} was exported by an older edgeship (no `reproduce` record); re-export it")
    recipe = Recipe.from_dict(manifest["recipe"])
    if recipe.scheme != "w8a8" or not (out_dir / "model.int8.onnx").is_file():
        raise ConfigError(f"{out_dir} has no int8 ONNX artifact to compare (recipe {recipe.name}); debug works "
                          "on int8 exports that include onnxruntime")
    loaded, calib, evaluation = load_inputs(rep["model"], rep["calibration"], rep["eval_data"], rep["input_shapes"],
                                             rep["input_dtypes"], rep["preprocess"])
    for name, data in (("calibration", calib), ("evaluation", evaluation)):
        if data.content_hash() != manifest[name]["sha256"]:
            raise ConfigError(f"the {name} data at {rep['calibration'] if name == 'calibration' else rep['eval_data']} "
                              "changed since the export; re-export, then debug")
    _, _, program = capture(loaded, calib)
    choice = manifest.get("precision_choice") or {}
    keep = frozenset(choice.get("float_nodes", choice.get("keep_float", [])))
    folded = convert(calibrate(program, recipe, calib, progress("calibrate", len(calib) * recipe.calibration_passes),
                               keep)).folded
    float_module = transformed(program, recipe, calib)[0]  # same node names as the quantized graph
    evaluation = evaluation.take(list(range(min(samples, len(evaluation)))), evaluation.source)
    rows = compare(float_module, folded, out_dir / "model.int8.onnx", evaluation,
                   max(1, min(manifest["target"].get("threads", 1), os.cpu_count() or 1)))
    return DebugResult(out_dir, "model.int8.onnx", len(evaluation), rows, worst_jump(rows))
