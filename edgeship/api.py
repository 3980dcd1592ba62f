"""The Python API the CLI and build pipelines call. Functions return results; nothing prints.

    from edgeship import api
    result = api.export("examples/mobilenet_v2.py:build", target="android-arm64",
                        calibration="calibration_data/imagenet-sample")
    print(result.out_dir, result.manifest["artifacts"][0]["accuracy"])
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeship import outputs
from edgeship.errors import CalibrationError, ConfigError, DeviceError, EdgeshipError, ExportError

log = logging.getLogger(__name__)

Progress = Callable[[str, int], Callable[[int], None]]


def _no_progress(task: str, total: int) -> Callable[[int], None]:
    log.info("%s (%d)", task, total)
    return lambda n: None


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict


def list_targets():
    """The built-in device profiles."""
    from edgeship.targets.devices import all_devices

    return all_devices()


def export(model: str, target: str, calibration: str | Path, *, eval_data: str | Path | None = None,
           out: str | Path = "out", input_shapes: list[str] | None = None,
           input_dtypes: list[str] | None = None, recipe: str = "int8",
           preprocess: dict | None = None, budget: dict | None = None, require_all: bool = False,
           progress: Progress = _no_progress) -> ExportResult:
    """Capture, quantize once, lower for every runtime of `target`, verify, time, and write
    `out/<model>/<target>/` atomically. Raises an EdgeshipError subclass on bad input.

    `preprocess` overrides image preprocessing keys (resize, crop, mean, std, layout, color) on top
    of the image folder's preprocess.toml, or of the ImageNet defaults. `budget` ({"cosine": 0.99},
    {"sqnr_db": 25}, {"top1_agreement": 0.995}) keeps the fewest, most sensitive layers in float so
    that the simulated model meets it on the eval data; BudgetError when it cannot. `require_all`: an
    artifact the target asks for that a runtime could not make fails the export (ExportError, nothing
    written) instead of being listed under `not_produced`."""
    from edgeship.quantize.recipe import recipe_by_name
    from edgeship.targets.devices import load_device

    device = load_device(target)
    resolved = recipe_by_name(recipe)
    if budget and resolved.scheme != "w8a8":
        raise ConfigError(f"accuracy budgets choose float layers for int8 recipes, not {resolved.name}; drop "
                          "--min-cosine / --min-sqnr / --max-drop, or use an int8 recipe")
    out = Path(out)
    outputs.check_writable(out)

    loaded, calib, evaluation = _load_inputs(model, calibration, eval_data, input_shapes, input_dtypes, preprocess)
    needed = outputs.SPACE_PER_WEIGHT_BYTE * outputs.weight_bytes(loaded.module) + (1 << 20)
    outputs.check_space(out, needed)
    final = out / loaded.name / device.name
    # what `edgeship debug` needs to rebuild the same quantized graph from this folder
    reproduce = {"model": model, "calibration": str(Path(calibration).resolve()),
                 "eval_data": str(Path(eval_data).resolve()) if eval_data is not None else None,
                 "input_shapes": input_shapes, "input_dtypes": input_dtypes, "preprocess": preprocess}
    try:
        with outputs.staging(final) as stage:
            manifest = _export_into(stage, loaded, device, resolved, calib, evaluation, progress, budget, reproduce,
                                    stats_folder=final.parent, require_all=require_all)
    except Exception as exc:  # a full disk, whichever writer met it, is one error naming the folder
        full = outputs.out_of_space(exc, final.parent, needed)
        if full is None:
            raise
        raise full from exc
    return ExportResult(final, manifest)


def _export_into(stage: Path, loaded, device, recipe, calib, evaluation, progress: Progress,
                 budget: dict | None = None, reproduce: dict | None = None, stats_folder: Path | None = None,
                 require_all: bool = False) -> dict:
    from edgeship.export import capture as cap
    from edgeship.export.inputs import specs_from_samples
    from edgeship.quantize.stats_cache import StatsCache
    from edgeship.report import manifest as mf
    from edgeship.report.decisions import flag_changed_decisions, output_decisions
    from edgeship.report.markdown import report
    from edgeship.targets.base import LowerJob, get_adapter
    from edgeship.verify import check_artifact, output_scales, pairwise_max_abs, pairwise_steps, torch_outputs

    started = time.perf_counter()
    captured = progress("capture the model", 1)
    args, flat, program = _capture(loaded, calib)
    native = _capture_native(loaded, args, flat)
    out_names = cap.output_names(loaded.module, args)
    in_names = [s.name for s in specs_from_samples(calib)]
    captured(1)

    decisions = output_decisions(program)
    float_run = progress("float reference", len(evaluation))
    reference = torch_outputs(flat, evaluation)
    float_run(len(evaluation))
    stats = (StatsCache.for_export(stats_folder, program, calib, recipe)
             if stats_folder is not None and recipe.scheme != "fp16" else None)
    memo = stats.memo if stats is not None else None
    choice, quantized, int4, half, encodings = _quantize(recipe, program, flat, args, calib, evaluation, reference,
                                                         memo, budget, progress, decisions)
    (stage / "encodings.json").write_text(json.dumps(encodings, indent=1) + "\n")
    import numpy as np

    # one real input, for `edgeship bench` and for reproducing a result from this folder
    np.savez(stage / "sample_inputs.npz", **dict(zip(in_names, evaluation.sample(0))))
    (stage / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1) + "\n")

    job = LowerJob(program, quantized, args, tuple(in_names), tuple(out_names), stage / "model.fp32.onnx", int4,
                   half, native)
    # the precision a non-int8 recipe makes in place of the device's int8 artifacts
    wanted = int4.precision if int4 is not None else "fp16" if half is not None else None
    precisions = ("fp32", wanted) if wanted else device.precisions
    artifacts, not_produced, failures = [], [], []
    for runtime in device.runtimes:
        advance = progress(f"lower for {runtime}", len(precisions))
        for precision in precisions:  # one precision at a time: a failed int8 conversion keeps the fp32 file
            try:
                made = _lower(get_adapter(runtime), job, stage, (precision,))
            except ExportError as exc:  # the other artifacts are still made and verified
                if outputs.out_of_space(exc, stage, 0):
                    raise
                failures.append(f"{runtime} {precision}: {exc}")
                not_produced.append({"runtime": runtime, "precision": precision, "reason": str(exc)})
            else:
                artifacts += made
                if precision == wanted and not any(a.precision == wanted for a in made):
                    reason = "the adapter wrote no artifact for it"
                    not_produced.append({"runtime": runtime, "precision": wanted, "reason": reason})
                    log.warning("%s: %s", runtime, reason)
            advance(1)
    if not artifacts:
        raise ExportError("no runtime could take the model: " + "; ".join(failures))
    for failure in failures:
        log.warning("no artifacts for %s", failure)

    quantized_graph = int4.packed if int4 is not None else half.module() if half is not None else quantized.folded
    simulated = torch_outputs(quantized_graph, evaluation)
    scales = output_scales(quantized_graph)
    threads = device.host_threads()
    checked = _check_each(artifacts, not_produced, lambda a: check_artifact(
        a, evaluation, reference, simulated if a.precision != "fp32" else None, scales, threads, progress, decisions))
    if not checked:
        raise ExportError("no artifact runs in its runtime: " + "; ".join(n["reason"] for n in not_produced))
    checked = _drop_non_finite(checked, not_produced)
    if require_all and not_produced:
        missing = "; ".join(f"{n['runtime']} {n['precision']}: {n['reason']}" for n in not_produced)
        raise ExportError(f"not every artifact could be made (--require-all): {missing}; nothing was written. "
                          "Drop --require-all to keep the artifacts that could be made, or change the "
                          "target's runtimes")

    from edgeship.report.compare import accuracy

    manifest = {
        "manifest_version": mf.MANIFEST_VERSION,
        "versions": mf.versions(),
        "model": {"source": loaded.source, "name": loaded.name, "inputs": in_names, "outputs": out_names},
        "target": device.to_dict(),
        "recipe": recipe.to_dict(),
        "calibration": {"source": calib.source, "samples": len(calib), "sha256": calib.content_hash(),
                        "statistics": stats.record() if stats is not None else None},
        "evaluation": {"source": evaluation.source, "samples": len(evaluation),
                       "sha256": evaluation.content_hash()},
        f"simulated_{(wanted or 'int8').replace('-', '_')}":
            accuracy(reference, simulated, decisions),
        "float_ops_in_quantized_graph": quantized.float_ops if quantized is not None else [],
        "algorithms": (quantized or int4).algorithms if (quantized or int4) is not None else [],
        "not_produced": not_produced,
        "precision_choice": choice,
        "artifacts": [mf.artifact_record(c, stage) for c in checked],
        "int8_output_scales": scales,
        "int8_agreement_steps": pairwise_steps(checked, scales),
        "int8_agreement_max_abs": pairwise_max_abs(checked),
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count()},
        "export_seconds": round(time.perf_counter() - started, 1),
        "reproduce": reproduce,
    }
    _flag_slower_than_fp32(manifest["artifacts"])
    _flag_off_float(manifest["artifacts"])
    flag_changed_decisions(manifest["artifacts"])
    if quantized is not None:
        _flag_off_simulation(manifest["artifacts"], manifest["simulated_int8"])
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (stage / "report.md").write_text(report(manifest))
    if stats is not None:  # last: a failed export leaves no statistics behind
        stats.save()
    return manifest


def _lower(adapter, job, stage: Path, precisions: tuple[str, ...]) -> list:
    """One adapter's artifacts; when it fails, the files it had written are removed."""
    before = set(stage.iterdir())
    try:
        return adapter.lower(job, stage, precisions)
    except BaseException:
        for path in set(stage.iterdir()) - before:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def _quantize(recipe, program, flat, args, calib, evaluation, reference, memo, budget, progress: Progress,
              decisions: list | None = None):
    """The recipe's one quantized form of the model: (budget choice, int8 graph, int4 / int8-dynamic
    job, float16 program, encodings); the forms the recipe does not make are None."""
    from edgeship.export.capture import capture_half
    from edgeship.quantize.calibrate import calibrate, convert
    from edgeship.quantize.sensitivity import default_decision_budget

    if recipe.scheme == "fp16":
        encodings = {"version": 1, "fp16": "no quantization parameters: weights and compute in float16"}
        return None, None, None, capture_half(flat, args), encodings
    if recipe.scheme in ("w4a8", "w8a8-dynamic"):
        from edgeship.quantize.int4 import build_int4, int8_recipe

        job = build_int4(program, recipe, calib, progress("weights", len(calib) * (recipe.calibration_passes - 1)),
                         memo, lambda: progress("calibrate convolutions",
                                                len(calib) * int8_recipe(recipe).calibration_passes))
        return None, None, job, None, job.encodings()
    choice = None
    prepared = calibrate(program, recipe, calib, progress("calibrate", len(calib) * recipe.calibration_passes),
                         memo=memo)
    if not budget:
        budget = default_decision_budget(prepared, evaluation, reference, decisions)
    if budget:
        choice = _choose_float_layers(prepared, evaluation, reference, budget, progress, decisions)
        if choice["keep_float"]:
            prepared = calibrate(program, recipe, calib,
                                 progress("recalibrate", len(calib) * recipe.calibration_passes),
                                 frozenset(choice["float_nodes"]))
    quantized = convert(prepared)
    return choice, quantized, None, None, quantized.encodings


def _check_each(artifacts: list, not_produced: list[dict], check: Callable) -> list:
    """Each artifact run in its runtime. One that its runtime cannot load or run is not shipped: its file
    is removed and `not_produced` says why; the others are still verified (ExecuTorch refused to load a
    Hugging Face BiT's int8 .pte, and its `execute` failed on RWKV's: the whole export failed)."""
    from edgeship.export.capture import first_line

    checked = []
    for artifact in artifacts:
        try:
            checked.append(check(artifact))
        except Exception as exc:  # each runtime raises its own types (ExecuTorch: RuntimeError from execute)
            if outputs.out_of_space(exc, artifact.path.parent, 0):  # a file cut short by a full disk
                raise
            artifact.path.unlink(missing_ok=True)
            reason = (str(exc) if isinstance(exc, EdgeshipError) else
                      f"{artifact.runtime} cannot run it on the eval samples: {type(exc).__name__}: {first_line(exc)}")
            not_produced.append({"runtime": artifact.runtime, "precision": artifact.precision,
                                 "path": artifact.path.name, "reason": f"{reason}; not shipped"})
            log.warning("%s: %s; not shipped", artifact.path.name, reason)
    return checked


def _drop_non_finite(checked: list, not_produced: list[dict]) -> list:
    """An artifact whose outputs hold NaN or inf on the eval samples is not shipped: its file is removed
    and `not_produced` says why (the float model's outputs on the same samples are finite)."""
    kept = []
    for c in checked:
        count = c.accuracy.get("non_finite")
        if not count:
            kept.append(c)
            continue
        c.artifact.path.unlink(missing_ok=True)
        reason = (f"{count} non-finite output values (NaN/inf) from {c.artifact.runtime} on "
                  f"{c.accuracy['samples']} eval samples where the float model's are finite; not shipped")
        not_produced.append({"runtime": c.artifact.runtime, "precision": c.artifact.precision,
                             "path": c.artifact.path.name, "reason": reason})
        log.warning("%s: %s", c.artifact.path.name, reason)
    return kept


OFF_SIMULATION_DB = 3.0  # an int8 artifact this far below the simulated graph's SQNR computes something else


def _flag_off_simulation(artifacts: list[dict], simulated: dict) -> None:
    """Marks each int8 artifact whose SQNR to float is OFF_SIMULATION_DB or more below the simulated int8
    graph's, and warns: every runtime gets the same scales and integer weights, so such a gap is the
    runtime computing an op otherwise (Hugging Face EfficientNet's pool gave all-zero outputs in ONNX
    Runtime and LiteRT, 0 dB against 40.5 simulated, before it was rewritten)."""
    target = simulated.get("sqnr_db")
    for a in artifacts:
        got = a["accuracy"].get("sqnr_db")
        if a["precision"] != "int8" or target is None or got is None:
            continue
        a["off_simulation"] = got < target - OFF_SIMULATION_DB
        if a["off_simulation"]:
            log.warning("%s computes other values than the simulated int8 graph: SQNR %.1f dB to float against "
                        "%.1f dB simulated (%s output steps apart); an op is lowered differently in %s. "
                        "`edgeship debug` names the layer where the error jumps; ship another runtime's "
                        "artifact or keep that layer float (recipe keep_float)", a["path"], got, target,
                        a.get("vs_simulated_steps"), a["runtime"])


OFF_FLOAT_DB = 60.0  # an fp32 artifact below this SQNR to the PyTorch model computes something else


def _flag_off_float(artifacts: list[dict]) -> None:
    """Marks each fp32 artifact whose SQNR to the PyTorch model is below OFF_FLOAT_DB (`off_float`), and
    warns: float32 kernels agree with PyTorch to 100 dB and more, so such a file computes something else
    (ONNX Runtime's graph optimizations on a Hugging Face BiT: 44 dB, 121 dB with them off)."""
    for a in artifacts:
        got = a["accuracy"].get("sqnr_db")
        if a["precision"] != "fp32" or got is None:
            continue
        a["off_float"] = got < OFF_FLOAT_DB
        if a["off_float"]:
            log.warning("%s is not the PyTorch model: SQNR %.1f dB to it (float32 runtimes agree to 100 dB and "
                        "more); %s computes an op otherwise. Check the file in that runtime before shipping it, "
                        "or ship another runtime's", a["path"], got, a["runtime"])


def _flag_slower_than_fp32(artifacts: list[dict]) -> None:
    """Marks each quantized artifact whose host median is above its runtime's fp32 artifact, and warns."""
    fp32 = {a["runtime"]: a for a in artifacts if a["precision"] == "fp32"}
    for a in artifacts:
        base = fp32.get(a["runtime"])
        if a["precision"] == "fp32" or base is None:
            continue
        ratio = a["latency_ms"]["median"] / base["latency_ms"]["median"]
        a["latency_ms"]["vs_fp32"] = round(ratio, 3)
        a["slower_than_fp32"] = ratio > 1.0
        if a["path"].endswith(".ort") and a["precision"] == "int8" and not _arm_host():
            a["host_timing"] = ORT_ON_X86
        if a["slower_than_fp32"]:
            log.warning("%s is slower than %s on this machine (%.2fx the median); %s", a["path"], base["path"], ratio,
                        a.get("host_timing") or f"check the ops it runs outside int8 kernels, or ship the fp32 "
                                                f"artifact for {a['runtime']}")


# measured on x86_64 (MobileNetV2, 2 threads): model.int8.onnx 4.0 ms with ONNX Runtime's defaults, 14.1 ms with
# session.qdqisint8allowed=1, the .ort 14.2 ms
ORT_ON_X86 = ("the .ort file is optimized as an ARM build runs it (signed int8 kernels, "
              "session.qdqisint8allowed=1), which ONNX Runtime on a non-ARM host computes on a slow path: this "
              "host time does not predict the device; time it there (edgeship bench OUT --device ...)")


def _arm_host() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64", "armv8l", "armv7l")


RANKING_SAMPLES = 32


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
            progress: Progress = _no_progress) -> AnalyzeResult:
    """Per-layer sensitivity of `model` under `recipe`, simulated on the eval samples: the accuracy
    with only that layer quantized, with only that layer kept in float, and with it and every layer
    ranked above it kept in float (the order `export` uses to meet a budget)."""
    import copy

    from edgeship.quantize import sensitivity as sens
    from edgeship.quantize.calibrate import calibrate
    from edgeship.quantize.recipe import recipe_by_name
    from edgeship.verify import torch_outputs

    if metric not in ("sqnr_db", "cosine", "top1_agreement"):
        raise ConfigError(f"unknown metric {metric!r}; use sqnr_db, cosine or top1_agreement")
    loaded, calib, evaluation = _load_inputs(model, calibration, eval_data, input_shapes, input_dtypes, preprocess)
    _, flat, program = _capture(loaded, calib)
    resolved = recipe_by_name(recipe)
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


@dataclass(frozen=True)
class DebugResult:
    out_dir: Path
    artifact: str  # the runtime artifact compared layer by layer
    samples: int
    rows: list[dict]  # per layer: SQNR of the simulated and runtime values to float, their gap, the drop
    worst: dict | None  # the layer where the SQNR drops most from the previous layer


def debug(out_dir: str | Path, *, samples: int = 8, progress: Progress = _no_progress) -> DebugResult:
    """Layer-by-layer comparison for an int8 export: the float graph, the simulated int8 graph and
    `model.int8.onnx` in ONNX Runtime (device session settings) on the export's own eval samples; names
    the layer where the error jumps. Rebuilds the quantized graph from the folder's recorded inputs
    (recipe, calibration data, layers kept float), checking the data is unchanged."""
    from edgeship.quantize.calibrate import calibrate, convert, transformed
    from edgeship.quantize.recipe import Recipe
    from edgeship.report.layers import compare, worst_jump

    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    rep = manifest.get("reproduce")
    if not rep:
        raise ConfigError(f"{out_dir} was exported by an older edgeship (no `reproduce` record); re-export it")
    recipe = Recipe.from_dict(manifest["recipe"])
    if recipe.scheme != "w8a8" or not (out_dir / "model.int8.onnx").is_file():
        raise ConfigError(f"{out_dir} has no int8 ONNX artifact to compare (recipe {recipe.name}); debug works "
                          "on int8 exports that include onnxruntime")
    loaded, calib, evaluation = _load_inputs(rep["model"], rep["calibration"], rep["eval_data"], rep["input_shapes"],
                                             rep["input_dtypes"], rep["preprocess"])
    for name, data in (("calibration", calib), ("evaluation", evaluation)):
        if data.content_hash() != manifest[name]["sha256"]:
            raise ConfigError(f"the {name} data at {rep['calibration'] if name == 'calibration' else rep['eval_data']} "
                              "changed since the export; re-export, then debug")
    _, _, program = _capture(loaded, calib)
    choice = manifest.get("precision_choice") or {}
    keep = frozenset(choice.get("float_nodes", choice.get("keep_float", [])))
    folded = convert(calibrate(program, recipe, calib, progress("calibrate", len(calib) * recipe.calibration_passes),
                               keep)).folded
    float_module = transformed(program, recipe, calib)[0]  # same node names as the quantized graph
    evaluation = evaluation.take(list(range(min(samples, len(evaluation)))), evaluation.source)
    rows = compare(float_module, folded, out_dir / "model.int8.onnx", evaluation,
                   max(1, min(manifest["target"].get("threads", 1), os.cpu_count() or 1)))
    return DebugResult(out_dir, "model.int8.onnx", len(evaluation), rows, worst_jump(rows))


def _capture(loaded, calib):
    """Example inputs (the first calibration sample), the model with flat tuple outputs, checked on
    them, and its torch.export program."""
    from edgeship.export import capture as cap
    from edgeship.export.inputs import example_inputs
    from edgeship.export.recurrent import unroll_recurrent

    args = example_inputs(calib)
    cap.check_outputs(cap.run_float(loaded.module, args, loaded.source_file))
    flat = cap.FlatOutputs(loaded.module).eval()
    flat, _ = unroll_recurrent(flat, args)
    return args, flat, cap.capture(flat, args, loaded.source_file)


def _capture_native(loaded, args, flat):
    """The program of the model with its recurrent layers as written, when `_capture` unrolled them
    (for the float ONNX); else None. A model torch.export cannot capture that way gets None too."""
    from edgeship.export import capture as cap
    from edgeship.export.recurrent import Unrolled

    if not any(isinstance(m, Unrolled) for m in flat.modules()):
        return None
    try:
        return cap.capture(cap.FlatOutputs(loaded.module).eval(), args, loaded.source_file)
    except ExportError as exc:
        log.info("the float ONNX gets the unrolled recurrent layers: %s", exc)
        return None


def _load_inputs(model, calibration, eval_data, input_shapes, input_dtypes, preprocess):
    from edgeship.calibration.readers import read_samples
    from edgeship.calibration.samples import split_held_out
    from edgeship.export import inputs as model_inputs
    from edgeship.export.load import load_model

    loaded = load_model(model)
    signature = loaded.signature
    specs = (model_inputs.specs_from_flags(input_shapes, input_dtypes or [], signature.positional)
             if input_shapes else None)
    calib = model_inputs.bind(read_samples(calibration, overrides=preprocess), signature, specs)
    if eval_data is not None:
        evaluation = model_inputs.bind(read_samples(eval_data, overrides=preprocess), signature, specs)
        if evaluation.names != calib.names:
            raise CalibrationError(
                f"{evaluation.source} gives the inputs {', '.join(evaluation.names)} but {calib.source} gives "
                f"{', '.join(calib.names)}; give the calibration and eval data the same arrays")
    else:
        calib, evaluation = split_held_out(calib)
    loaded = loaded.with_inputs(calib.names)
    return loaded, calib, evaluation


class BudgetError(EdgeshipError):
    """The accuracy budget cannot be met even with every quantizable layer in float."""


def _choose_float_layers(prepared, evaluation, reference, budget: dict, progress: Progress,
                         decisions: list | None = None) -> dict:
    import copy

    from edgeship.quantize import sensitivity as sens

    sim = sens.Simulator(copy.deepcopy(prepared), evaluation, reference)
    sim.decisions = decisions
    metric = next(iter(budget))
    # ranking on a subset of the eval samples bounds its cost; the choice is checked on all of them
    ranked = sens.rank(sim.subset(RANKING_SAMPLES), metric,
                       advance=progress("rank layer sensitivity", len(sim.layers)))
    layers, acc, met = sens.fewest_float_layers(sim, ranked, budget)
    wanted = ", ".join(f"{k} >= {v:g}" for k, v in budget.items())
    if not met:
        reached = ", ".join(f"{k} {acc[k]}" for k in budget)
        raise BudgetError(f"the accuracy budget ({wanted}) cannot be met on {len(evaluation)} eval samples: "
                          f"with all {len(layers)} quantizable layers in float the simulated model reaches "
                          f"{reached}; loosen the budget or check the eval data")
    log.info("keeping %d layer(s) in float for %s: %s", len(layers), wanted, layers)
    chosen = set(layers)  # a layer whose calls share one weight (recurrent steps) is every one of its calls
    nodes = [node for layer in sim.layers if layer.name in chosen for node in layer.nodes]
    return {"budget": budget, "keep_float": layers, "float_nodes": nodes, "simulated": acc,
            "candidates": len(sim.layers), "ranking_metric": metric}


@dataclass(frozen=True)
class BenchResult:
    out_dir: Path
    host: dict
    rows: list[dict]  # one per artifact: path, runtime, precision, and the measurements
    ratios: dict  # "int8/fp32 <runtime>" and "<artifact>/fastest int8" median ratios, one run
    regressions: list[dict]  # against --baseline: artifacts whose median regressed beyond the noise

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def bench(out_dir: str | Path, *, artifacts: list[str] | None = None, threads: int | None = None,
          budget_s: float = 2.0, baseline: str | Path | None = None, threshold: float = 0.05,
          profile: bool = False, fail_on_fallback: bool = False, min_delegated: float | None = None,
          device: str | None = None, ssh_config: str | Path | None = None, remote_python: str | None = None,
          setup: bool = False, benchmark_tools: dict[str, str] | None = None,
          progress: Progress = _no_progress) -> BenchResult:
    """Time every artifact of an export folder with one method (fresh process each: load time,
    first inference, warm-up, runs until the median is stable or `budget_s`, median/p90/p99/min,
    spread, peak memory). Writes OUT_DIR/bench.json and adds it to manifest.json. With `baseline`
    (an earlier bench.json), medians slower by more than max(threshold, the two runs' spread) are
    regressions. `profile` adds per-op profiles; `fail_on_fallback` / `min_delegated` (a share)
    turn int8 artifacts with ops outside int8 kernels or the delegate into failures. `device`
    (ssh://[user@]host[:port], adb://SERIAL, or a device profile with an `address`) runs the same runner
    there and checks each artifact's outputs against this machine's (`vs_host_steps` for int8,
    `vs_host_relative` for fp32); `setup` first installs the runtime wheels on an ssh device;
    `benchmark_tools` (runtime -> local path) runs the runtimes' own benchmark binaries on an adb device."""
    from edgeship.runtimes.bench import bench_artifact, host_info

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest = _read_manifest(out_dir)
    inputs = out_dir / "sample_inputs.npz"
    if not inputs.is_file():
        raise ConfigError(f"{out_dir} has no sample_inputs.npz (exported by an older edgeship); re-export it")
    chosen = [a for a in manifest["artifacts"] if not artifacts or a["path"] in artifacts]
    if artifacts and len(chosen) != len(set(artifacts)):
        known = ", ".join(a["path"] for a in manifest["artifacts"])
        raise ConfigError(f"no artifact named {sorted(set(artifacts) - {a['path'] for a in chosen})} in "
                          f"{out_dir}; artifacts: {known}")
    threads = threads or manifest["target"].get("threads", 1)
    threads = max(1, min(threads, os.cpu_count() or 1))
    advance = progress("bench", len(chosen))
    rows, mismatches = [], []
    if device is not None:
        dev = _device(device, ssh_config, remote_python, benchmark_tools)
        dev.op_profiles = profile or fail_on_fallback or min_delegated is not None
        rows, mismatches = _bench_remote(out_dir, chosen, inputs, threads, budget_s, dev, setup, advance)
    for a in chosen if device is None else []:
        rows.append({"path": a["path"], "runtime": a["runtime"], "precision": a["precision"]}
                    | bench_artifact(a["runtime"], out_dir / a["path"], inputs, threads, budget_s))
        advance(1)
    gate = mismatches
    if profile or fail_on_fallback or min_delegated is not None:
        gate += _profiles(out_dir, rows, inputs, threads, fail_on_fallback, min_delegated, progress)
    host = host_info() if device is None else rows[0]["device_info"] if rows else {}
    result = BenchResult(out_dir, host, rows, _ratios(rows),
                         (_regressions(rows, Path(baseline), threshold) if baseline else []) + gate)
    record = {"host": result.host, "rows": rows, "ratios": result.ratios}
    _write_json(out_dir / "bench.json", record)
    manifest["bench"] = record
    _write_json(manifest_path, manifest)
    from edgeship.report.markdown import report

    outputs.write_text(out_dir / "report.md", report(manifest))
    return result


# outputs on a device against this machine's: int8 kernels may round a requantization the other way
# (one output step); float kernels sum in another order
DEVICE_INT8_STEPS, DEVICE_FP32_RELATIVE = 1.0, 1e-4


def _device(address: str, ssh_config, python: str | None, tools: dict[str, str] | None):
    """A remote device from an address, or from a device profile (name or .toml) that has one."""
    from edgeship.runtimes.bench import connect
    from edgeship.targets.devices import load_device

    if "://" not in address:
        profile = load_device(address)
        if profile.address is None:
            raise ConfigError(f"device profile {profile.name!r} has no address; add `address = \"ssh://user@host\"`"
                              " (or adb://SERIAL) to your copy of it, or pass --device ssh://... directly")
        address, python = profile.address, python or profile.python
        tools = {**profile.benchmark_tools, **(tools or {})}
    return connect(address, Path(ssh_config) if ssh_config else None, python,
                   {r: Path(p).expanduser() for r, p in (tools or {}).items()})


def _bench_remote(out_dir: Path, chosen: list[dict], inputs: Path, threads: int, budget_s: float, dev,
                  setup: bool, advance) -> tuple[list[dict], list[dict]]:
    """Rows measured on the device, and the artifacts whose device outputs differ from this machine's."""
    import numpy as np

    from edgeship.runtimes.bench import SETUP_DISTRIBUTIONS, bench_artifact, output_differences
    from edgeship.runtimes.onnxruntime import ARM_SESSION_CONFIG

    scales = json.loads((out_dir / "manifest.json").read_text()).get("int8_output_scales")
    dev.push([out_dir / a["path"] for a in chosen] + [inputs])
    try:
        needed = sorted({a["runtime"] for a in chosen})
        probe = dev.probe()
        if setup:
            if not hasattr(dev, "setup"):
                raise DeviceError("--setup installs wheels on ssh:// Linux devices; on Android give --remote-python "
                                  "a Python that has the runtimes, or --benchmark-tool RUNTIME=PATH")
            dev.setup([r for r in needed if r in SETUP_DISTRIBUTIONS or probe["runtimes"].get(r)], probe)
            probe = dev.probe()
        missing = {r: probe["runtimes"].get(r, "unknown runtime") for r in needed if probe["runtimes"].get(r) is not None}
        if missing:
            fix = ("pass --setup to install onnxruntime / ai-edge-litert there, install the others yourself, or "
                   if hasattr(dev, "setup") else "")
            raise DeviceError(f"{dev.address} cannot run " + "; ".join(f"{r} ({why})" for r, why in missing.items())
                              + f": {fix}choose artifacts with --artifact")
        rows, mismatches = [], []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for a in chosen:
                # the device's numerics: ONNX Runtime keeps int8 QDQ signed, as its ARM builds do
                config = ARM_SESSION_CONFIG if a["runtime"] == "onnxruntime" else {}
                remote = dev.bench(a["runtime"], a["path"], inputs.name, threads, budget_s, tmp, config)
                row = {"path": a["path"], "runtime": a["runtime"], "precision": a["precision"],
                       "device": dev.address, "device_info": probe} | remote
                if "tool" in remote:  # the runtime's own benchmark binary: its own inputs, no outputs back
                    rows.append(row | {"vs_host_max_abs": None})
                    advance(1)
                    continue
                local_out = tmp / f"host-{a['path']}.npz"
                bench_artifact(a["runtime"], out_dir / a["path"], inputs, threads, 0.05, local_out, config)
                diffs = output_differences(tmp / f"out-{a['path']}.npz", local_out)
                row["vs_host_max_abs"] = max(diffs)
                if a["precision"] == "int8" and scales and None not in scales and len(scales) == len(diffs):
                    row["vs_host_steps"] = round(max(d / s for d, s in zip(diffs, scales)), 3)
                    allowed, measured = DEVICE_INT8_STEPS, row["vs_host_steps"]
                else:
                    with np.load(local_out) as host_out:
                        magnitude = max(float(np.max(np.abs(host_out[k]))) for k in host_out.files) or 1.0
                    allowed, measured = DEVICE_FP32_RELATIVE, max(diffs) / magnitude
                    row["vs_host_relative"] = measured
                if measured > allowed:
                    mismatches.append({"path": a["path"], "gate": "device_outputs", "measured": measured,
                                       "allowed": allowed, "unit": "steps" if "vs_host_steps" in row else "relative"})
                rows.append(row)
                advance(1)
    finally:
        dev.clean()
    return rows, mismatches


def _profiles(out_dir: Path, rows: list[dict], inputs: Path, threads: int, fail_on_fallback: bool,
              min_delegated: float | None, progress: Progress) -> list[dict]:
    """Adds `profile` and `delegated_share` to each row; returns the gate failures."""
    import numpy as np

    from edgeship.runtimes.profile import delegated_share, fallbacks, profile

    with np.load(inputs) as data:
        arrays = [data[k] for k in data.files]
    failures = []
    advance = progress("per-op profiles", len(rows))
    for row in rows:
        # the device's own profile where its tool made one; else this machine's run of the artifact
        prof = row.get("profile") or profile(row["runtime"], out_dir / row["path"], arrays, threads)
        row["profile"], row["delegated_share"] = prof, delegated_share(prof)
        advance(1)
        if row["precision"] != "int8":
            continue
        fell_back = fallbacks(prof)
        if fail_on_fallback and fell_back:
            failures.append({"path": row["path"], "gate": "fallback", "ops": fell_back})
        if min_delegated is not None and row["delegated_share"] < min_delegated:
            failures.append({"path": row["path"], "gate": "min_delegated", "share": row["delegated_share"],
                             "required": min_delegated})
    return failures


def _ratios(rows: list[dict]) -> dict:
    ratios = {}
    for runtime in sorted({r["runtime"] for r in rows}):
        fp32 = [r for r in rows if r["runtime"] == runtime and r["precision"] == "fp32"]
        for r in rows:
            if fp32 and r["runtime"] == runtime and r["precision"] != "fp32":
                ratios[f"{r['path']} / {fp32[0]['path']}"] = round(r["median"] / fp32[0]["median"], 3)
    for precision in sorted({r["precision"] for r in rows} - {"fp32"}):  # int8, int4 or int8-dynamic
        same = [r for r in rows if r["precision"] == precision]
        fastest = min(same, key=lambda r: r["median"])
        for r in same:
            ratios[f"{r['path']} / {fastest['path']} (fastest {precision})"] = round(r["median"] / fastest["median"], 3)
    return ratios


def _regressions(rows: list[dict], baseline: Path, threshold: float) -> list[dict]:
    if not baseline.is_file():
        raise ConfigError(f"baseline {baseline} does not exist; pass a bench.json from an earlier run")
    try:
        base = {r["path"]: r for r in json.loads(baseline.read_text())["rows"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"baseline {baseline} is not a bench.json ({exc}); pass one written by edgeship bench") from exc
    found = []
    for r in rows:
        old = base.get(r["path"])
        if old is None:
            continue
        allowed = max(threshold, (old.get("spread") or 0.0) + (r.get("spread") or 0.0))
        change = r["median"] / old["median"] - 1.0
        if change > allowed:
            found.append({"path": r["path"], "baseline_median": old["median"], "median": r["median"],
                          "change": round(change, 4), "allowed": round(allowed, 4)})
    return found


def _read_manifest(out_dir: Path) -> dict:
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{out_dir} holds no manifest.json; pass an export folder (out/<model>/<target>)")
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict) -> None:
    outputs.write_text(path, json.dumps(data, indent=1) + "\n")


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
