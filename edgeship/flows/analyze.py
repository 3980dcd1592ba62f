"""The analyze flow: each layer's sensitivity to quantization, simulated on the eval samples, ranked in
the order an export's accuracy budget keeps layers float."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeship.errors import ConfigError
from edgeship.flows import Progress, no_progress
from edgeship.flows.inputs import capture, load_inputs
from edgeship.flows.quantize import RANKING_SAMPLES


@dataclass(frozen=True)
class AnalyzeResult:
    model: str
    metric: str
    all_int8: dict  # simulated accuracy with every layer quantized (to int4 for int4 recipes)
    rows: list[dict]  # ranked: layer, op, module, alone, kept_float, cumulative
    precision: str = "int8"  # what "quantized" means in the rows: int8, or int4 weights


def analyze(model: str, calibration: str | Path, *, eval_data: str | Path | None = None,
            input_shapes: list[str] | None = None, input_dtypes: list[str] | None = None,
            recipe: str = "int8", preprocess: dict | None = None, metric: str = "sqnr_db",
            progress: Progress = no_progress) -> AnalyzeResult:
    """Per-layer sensitivity of `model` under `recipe`, simulated on the eval samples: the accuracy
    with only that layer quantized, with only that layer kept in float, and with it and every layer
    ranked above it kept in float (the order `export` uses to meet a budget)."""
    import copy

    from edgeship.export.loops import LOOP_SCHEMES
    from edgeship.quantize import sensitivity as sens
    from edgeship.quantize.calibrate import calibrate
    from edgeship.quantize.recipe import recipe_by_name
    from edgeship.verify import torch_outputs

    if metric not in ("sqnr_db", "cosine", "top1_agreement"):
        raise ConfigError(f"unknown metric {metric!r}; use sqnr_db, cosine or top1_agreement")
    loaded, calib, evaluation = load_inputs(model, calibration, eval_data, input_shapes, input_dtypes, preprocess)
    resolved = recipe_by_name(recipe)
    _, flat, program = capture(loaded, calib, loops=resolved.scheme in LOOP_SCHEMES)
    if resolved.scheme not in ("w8a8", "w4a8"):
        raise ConfigError(f"analyze ranks layers for int8 (w8a8) and int4 (w4a8) recipes; {resolved.name} is "
                          f"{resolved.scheme}: use --recipe int8 or int4")
    evaluation = evaluation.take(list(range(min(len(evaluation), RANKING_SAMPLES))), evaluation.source)
    reference = torch_outputs(flat, evaluation)
    if resolved.scheme == "w4a8":
        sim = _int4_simulator(program, resolved, calib, evaluation, reference, progress)
    else:
        prepared = calibrate(program, resolved, calib, progress("calibrate", len(calib) * resolved.calibration_passes))
        sim = sens.Simulator(copy.deepcopy(prepared), evaluation, reference)
    found = sens.rank(sim, metric, alone=True, advance=progress("per-layer sensitivity", len(sim.layers)))
    rows, kept_float = [], set()
    for s in found:
        kept_float.add(s.layer.name)
        rows.append({"layer": s.layer.name, "op": s.layer.op, "module": s.layer.module,
                     "calls": len(s.layer.nodes), "alone": s.alone,
                     "kept_float": s.kept_float, "cumulative": sim.evaluate(kept_float)})
    precision = "int4" if resolved.scheme == "w4a8" else "int8/int16" if resolved.int16_activations else "int8"
    return AnalyzeResult(loaded.source, metric, sim.evaluate(), rows, precision)


def _int4_simulator(program, recipe, calib, evaluation, reference, progress: Progress):
    """The int4 recipe's linear layers, each switchable between float and its int4 weights (GPTQ's when
    the recipe has it); convolutions, which int4 gives int8, are not ranked."""
    from edgeship.quantize import sensitivity as sens
    from edgeship.quantize.int4 import float_graph, int4_layers

    tick = progress("calibrate", len(calib) * recipe.calibration_passes)
    module, keep, _ = float_graph(program, recipe, calib, tick)
    weights, _ = int4_layers(module, recipe.group_size, calib if "gptq" in recipe.algorithms else None, tick, keep)
    if not weights:
        raise ConfigError("the model has no linear layer that int4 quantizes; analyze it with --recipe int8")
    return sens.Int4Simulator(module, weights, evaluation, reference)
