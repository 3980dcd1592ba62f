"""The export flow: capture the model, quantize it once, lower that one graph for every runtime of the
target, run each artifact in its runtime against float and the simulated graph, and write the folder
(`out/<model>/<target>/`) atomically with its manifest and report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from edgeship import outputs
from edgeship.errors import ConfigError, ExportError
from edgeship.flows import Progress, checks, no_progress
from edgeship.flows.inputs import capture, capture_native, load_inputs
from edgeship.flows.quantize import Quantized, quantize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict


def export(model: str, target: str, calibration: str | Path, *, eval_data: str | Path | None = None,
           out: str | Path = "out", input_shapes: list[str] | None = None,
           input_dtypes: list[str] | None = None, recipe: str = "int8",
           preprocess: dict | None = None, budget: dict | None = None, require_all: bool = False,
           progress: Progress = no_progress, lower_apart: bool | None = None) -> ExportResult:
    """Capture, quantize once, lower for every runtime of `target`, verify, time, and write
    `out/<model>/<target>/` atomically. Raises an EdgeshipError subclass on bad input.

    `preprocess` overrides image preprocessing keys (resize, crop, mean, std, layout, color) on top
    of the image folder's preprocess.toml, or of the ImageNet defaults. `budget` ({"cosine": 0.99},
    {"sqnr_db": 25}, {"top1_agreement": 0.995}) keeps the fewest, most sensitive layers in float so
    that the simulated model meets it on the eval data; BudgetError when it cannot. `require_all`: an
    artifact the target asks for that a runtime could not make fails the export (ExportError, nothing
    written) instead of being listed under `not_produced`. `lower_apart`: lower ExecuTorch in a second
    process beside the others (edgeship/apart.py); None: where two or more cores are free."""
    from edgeship.quantize.recipe import recipe_by_name
    from edgeship.targets.devices import load_device

    device = load_device(target)
    resolved = recipe_by_name(recipe)
    if budget and resolved.scheme != "w8a8":
        raise ConfigError(f"accuracy budgets choose float layers for int8 recipes, not {resolved.name}; drop "
                          "--min-cosine / --min-sqnr / --max-drop, or use an int8 recipe")
    out = Path(out)
    outputs.check_writable(out)

    loaded, calib, evaluation = load_inputs(model, calibration, eval_data, input_shapes, input_dtypes, preprocess)
    needed = outputs.SPACE_PER_WEIGHT_BYTE * outputs.weight_bytes(loaded.module) + (1 << 20)
    outputs.check_space(out, needed)
    final = out / loaded.name / device.name
    # what `edgeship debug` needs to rebuild the same quantized graph from this folder
    reproduce = {"model": model, "calibration": str(Path(calibration).resolve()),
                 "eval_data": str(Path(eval_data).resolve()) if eval_data is not None else None,
                 "input_shapes": input_shapes, "input_dtypes": input_dtypes, "preprocess": preprocess}
    try:
        with outputs.staging(final) as stage:
            manifest = export_into(stage, loaded, device, resolved, calib, evaluation, progress, budget, reproduce,
                                   stats_folder=final.parent, require_all=require_all,
                                   lower_apart=lower_apart)
    except Exception as exc:  # a full disk, whichever writer met it, is one error naming the folder
        full = outputs.out_of_space(exc, final.parent, needed)
        if full is None:
            raise
        raise full from exc
    return ExportResult(final, manifest)


@dataclass(frozen=True)
class Captured:
    """The model as every later stage reads it: example inputs, the model with flat tuple outputs, its
    torch.export program (recurrent layers unrolled), the program as written (for the float ONNX, when
    unrolling changed it), and the input and output names."""

    args: tuple
    flat: object
    program: object
    native: object
    in_names: list[str]
    out_names: list[str]


def export_into(stage: Path, loaded, device, recipe, calib, evaluation, progress: Progress,
                budget: dict | None = None, reproduce: dict | None = None, stats_folder: Path | None = None,
                require_all: bool = False, lower_apart: bool | None = None) -> dict:
    """Every artifact, the manifest and the report, written into `stage`; returns the manifest.
    `lower_apart`: lower one runtime in a second process (edgeship/apart.py; None: where two cores are free)."""
    from edgeship.backends.base import LowerJob
    from edgeship.export.loops import LOOP_SCHEMES
    from edgeship.metrics.decisions import output_decisions
    from edgeship.quantize.stats_cache import StatsCache
    from edgeship.verify import torch_outputs

    started = time.perf_counter()
    with _second_process(device.runtimes, lower_apart) as worker:
        model = _capture(loaded, calib, progress, loops=recipe.scheme in LOOP_SCHEMES)
        decisions = output_decisions(model.program)
        float_run = progress("float reference", len(evaluation))
        reference = torch_outputs(model.flat, evaluation)
        float_run(len(evaluation))
        stats = (StatsCache.for_export(stats_folder, model.program, calib, recipe)
                 if stats_folder is not None and recipe.scheme != "fp16" else None)
        made = quantize(recipe, model.program, model.flat, model.args, calib, evaluation, reference,
                        stats.memo if stats is not None else None, budget, progress, decisions)
        _write_inputs(stage, made, model, evaluation, recipe)
        job = LowerJob(model.program, made.form, model.args, tuple(model.in_names), tuple(model.out_names),
                       stage / "model.fp32.onnx", model.native)
        # the profile's precisions, its int8 made as the recipe's precision (int4, int8-dynamic, fp16)
        precisions = tuple((made.instead_of_int8 or p) if p == "int8" else p for p in device.precisions)
        artifacts, not_produced = _lower_all(device.runtimes, job, stage, precisions, made.instead_of_int8,
                                             progress, worker)
    from edgeship.verify import output_scales

    graph = made.graph  # built once: a float16 form makes a new module each time
    simulated, scales = torch_outputs(graph, evaluation), output_scales(graph)
    checked = _verify(artifacts, not_produced, evaluation, reference, simulated, scales, device.host_threads(),
                      progress, decisions, require_all)
    manifest = _manifest(stage, loaded, device, recipe, calib, evaluation, model, made, stats, reference, simulated,
                         decisions, checked, not_produced, started, reproduce, scales)
    _write_manifest(stage, manifest, made)
    if stats is not None:  # last: a failed export leaves no statistics behind
        stats.save()
    return manifest


def _capture(loaded, calib, progress: Progress, loops: bool) -> Captured:
    from edgeship.export import capture as cap
    from edgeship.export.inputs import specs_from_samples

    captured = progress("capture the model", 1)
    args, flat, program = capture(loaded, calib, loops)
    native = capture_native(loaded, args, flat)
    out_names = cap.output_names(loaded.module, args)
    in_names = [s.name for s in specs_from_samples(calib)]
    captured(1)
    return Captured(args, flat, program, native, in_names, out_names)


def _write_inputs(stage: Path, made: Quantized, model: Captured, evaluation, recipe) -> None:
    """encodings.json, one real input (for `edgeship bench` and for reproducing a result from this
    folder) and recipe.json."""
    import numpy as np

    (stage / "encodings.json").write_text(json.dumps(made.encodings, indent=1) + "\n")
    np.savez(stage / "sample_inputs.npz", **dict(zip(model.in_names, evaluation.sample(0))))
    (stage / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=1) + "\n")


@contextlib.contextmanager
def _second_process(runtimes, setting: bool | None):
    """A worker process (edgeship/apart.py) for the runtime that can lower in one, started now so that its
    imports overlap capture and calibration; None where it would not help (one runtime, one core, turned off)."""
    from edgeship import apart
    from edgeship.backends import get_backend

    detachable = [backend for backend in map(get_backend, runtimes) if hasattr(backend, "detach")]
    if len(runtimes) < 2 or not detachable or not apart.wanted(setting):
        yield None
        return
    worker = apart.Worker(tuple(name for backend in detachable for name in backend.imports))
    try:
        yield worker
    finally:
        worker.close()


def _lower_all(runtimes, job, stage: Path, precisions: tuple[str, ...], wanted: str | None,
               progress: Progress, worker=None) -> tuple[list, list[dict]]:
    """Every runtime's artifacts, one precision at a time (a failed int8 conversion keeps the fp32
    file); what could not be made is listed with its reason, and the others are still made. With a
    `worker` (edgeship/apart.py), a detachable runtime lowers in it while this process lowers the others."""
    import shutil

    from edgeship.backends import get_backend

    backends = {runtime: get_backend(runtime) for runtime in runtimes}
    outcomes: dict = {}  # (runtime, precision) -> artifacts made, or why none
    for runtime, backend in backends.items():
        for precision in precisions:
            unsupported = backend.supports(job, precision)
            if unsupported is not None:
                outcomes[runtime, precision] = unsupported
    sent = _send(worker, backends, job, stage, precisions, outcomes, progress)
    for runtime, backend in backends.items():
        todo = [p for p in precisions if (runtime, p) not in outcomes and (runtime, p) not in sent]
        if not todo:
            continue
        advance = progress(f"lower for {runtime}", len(todo))
        for precision in todo:
            outcomes[runtime, precision] = _outcome(lambda: _lower(backend, job, stage, (precision,)), stage)
            advance(1)
    if sent:
        advance = progress(f"lower for {', '.join(sorted({r for r, _ in sent}))} (second process)", len(sent))
        for key, folder in sent.items():
            try:
                outcomes[key] = _outcome(lambda: _moved(worker.result(), stage), stage)
            finally:
                shutil.rmtree(folder, ignore_errors=True)  # emptied by _moved, or what a failed lowering wrote
            advance(1)
    return _gathered(outcomes, runtimes, precisions, wanted)


def _send(worker, backends: dict, job, stage: Path, precisions: tuple[str, ...], outcomes: dict,
          progress: Progress) -> dict:
    """The lowerings handed to `worker`, each writing into a folder of its own in `stage` (its files are
    moved into `stage` when it succeeds): {(runtime, precision): folder}."""
    import shutil

    sent, units = {}, []
    if worker is None:
        return sent
    for runtime, backend in backends.items():
        if not hasattr(backend, "detach"):
            continue
        todo = [p for p in precisions if (runtime, p) not in outcomes]
        advance = progress(f"prepare {runtime} for a second process", len(todo))
        for precision in todo:
            folder = stage / f".{runtime}-{precision}"
            folder.mkdir()
            try:
                unit = backend.detach(job, folder, (precision,))
            except ExportError as exc:
                outcomes[runtime, precision] = exc
                unit = None
            if unit is None:
                shutil.rmtree(folder)
            else:
                sent[runtime, precision] = folder
                units.append(unit)
            advance(1)
    if units:
        worker.send(units)
    return sent


def _moved(artifacts: list, stage: Path) -> list:
    """Artifacts written in a folder of their own, moved into `stage` (the caller removes the folder)."""
    for artifact in artifacts:
        artifact.path = artifact.path.replace(stage / artifact.path.name)
    return artifacts


def _outcome(lower, stage: Path):
    """The artifacts `lower()` made, or the ExportError that says why it made none (a full disk is raised)."""
    try:
        return lower()
    except ExportError as exc:
        if outputs.out_of_space(exc, stage, 0):
            raise
        return exc


def _gathered(outcomes: dict, runtimes, precisions: tuple[str, ...], wanted: str | None) -> tuple[list, list[dict]]:
    """The artifacts and the `not_produced` rows in runtime, then precision order, whichever process made them."""
    artifacts, not_produced, failures = [], [], []
    for runtime in runtimes:
        for precision in precisions:
            outcome = outcomes[runtime, precision]
            if isinstance(outcome, (str, ExportError)):
                failures.append(f"{runtime} {precision}: {outcome}")
                not_produced.append({"runtime": runtime, "precision": precision, "reason": str(outcome)})
                continue
            artifacts += outcome
            if precision == wanted and not any(a.precision == wanted for a in outcome):
                reason = "the adapter wrote no artifact for it"
                not_produced.append({"runtime": runtime, "precision": wanted, "reason": reason})
                log.warning("%s: %s", runtime, reason)
    if not artifacts:
        raise ExportError("no runtime could take the model: " + "; ".join(failures))
    for failure in failures:
        log.warning("no artifacts for %s", failure)
    return artifacts, not_produced


def _lower(adapter, job, stage: Path, precisions: tuple[str, ...]) -> list:
    """One adapter's artifacts; when it fails, the files it had written are removed."""
    import shutil

    before = set(stage.iterdir())
    try:
        return adapter.lower(job, stage, precisions)
    except BaseException:
        for path in set(stage.iterdir()) - before:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def _verify(artifacts: list, not_produced: list[dict], evaluation, reference, simulated, scales: list,
            threads: int, progress: Progress, decisions, require_all: bool) -> list:
    """Each artifact run in its runtime on the eval samples against float (and, quantized, against the
    simulated graph); the ones that cannot run or give non-finite values are not shipped."""
    from edgeship.verify import check_artifact

    checked = checks.check_each(artifacts, not_produced, lambda a: check_artifact(
        a, evaluation, reference, simulated if a.precision != "fp32" else None, scales, threads, progress, decisions))
    if not checked:
        raise ExportError("no artifact runs in its runtime: " + "; ".join(n["reason"] for n in not_produced))
    checked = checks.drop_non_finite(checked, not_produced)
    if require_all and not_produced:
        missing = "; ".join(f"{n['runtime']} {n['precision']}: {n['reason']}" for n in not_produced)
        raise ExportError(f"not every artifact could be made (--require-all): {missing}; nothing was written. "
                          "Drop --require-all to keep the artifacts that could be made, or change the "
                          "target's runtimes")
    return checked


def _manifest(stage: Path, loaded, device, recipe, calib, evaluation, model: Captured, made: Quantized, stats,
              reference, simulated, decisions, checked: list, not_produced: list[dict], started: float,
              reproduce: dict | None, scales: list) -> dict:
    from edgeship.metrics.compare import accuracy
    from edgeship.report import manifest as mf
    from edgeship.verify import pairwise_max_abs, pairwise_steps

    return mf.Manifest(
        versions=mf.versions(),
        model={"source": loaded.source, "name": loaded.name, "inputs": model.in_names, "outputs": model.out_names},
        target=device.to_dict(),
        recipe=recipe.to_dict(),
        calibration={"source": calib.source, "samples": len(calib), "sha256": calib.content_hash(),
                     "statistics": stats.record() if stats is not None else None},
        evaluation={"source": evaluation.source, "samples": len(evaluation), "sha256": evaluation.content_hash()},
        simulated_precision=(made.instead_of_int8 or "int8").replace("-", "_"),
        simulated=accuracy(reference, simulated, decisions),
        float_ops_in_quantized_graph=made.float_ops,
        algorithms=made.algorithms,
        not_produced=not_produced,
        precision_choice=made.choice,
        artifacts=[mf.artifact_record(c, stage) for c in checked],
        int8_output_scales=scales,
        int8_agreement_steps=pairwise_steps(checked, scales),
        int8_agreement_max_abs=pairwise_max_abs(checked),
        host={"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count()},
        export_seconds=round(time.perf_counter() - started, 1),
        reproduce=reproduce,
    ).to_dict()


def _write_manifest(stage: Path, manifest: dict, made: Quantized) -> None:
    """The artifacts' flags (slower than float, not the model, decisions changed, not the simulated
    graph), then manifest.json and report.md."""
    from edgeship.metrics.decisions import flag_changed_decisions
    from edgeship.report.markdown import report

    checks.flag_slower_than_fp32(manifest["artifacts"])
    checks.flag_off_float(manifest["artifacts"])
    checks.flag_host_saturation(manifest["artifacts"])
    flag_changed_decisions(manifest["artifacts"])
    if made.instead_of_int8 is None:
        checks.flag_off_simulation(manifest["artifacts"], manifest["simulated_int8"])
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (stage / "report.md").write_text(report(manifest))
