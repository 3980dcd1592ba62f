"""`edgeship build`: the project's model x target matrix, cached, in parallel, with budgets."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeship.errors import ConfigError
from edgeship.pipeline.budgets import BudgetCheck, check_budgets
from edgeship.pipeline.cache import Cache, job_key, publish
from edgeship.pipeline.project import ModelEntry, Project

log = logging.getLogger(__name__)

GIB = 1 << 30
MEMORY_PER_JOB = 4 * GIB  # a MobileNet/BERT-sized export peaks near 3 GiB


@dataclass
class JobResult:
    model: str
    target: str
    status: str  # built | cached | failed | skipped
    key: str
    seconds: float
    out_dir: Path | None = None
    manifest: dict | None = None
    error: str | None = None
    budgets: list[BudgetCheck] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.target}"

    @property
    def ok(self) -> bool:
        return self.status in ("built", "cached") and all(b.passed for b in self.budgets)


@dataclass
class BuildResult:
    project: Path
    out: Path
    jobs: list[JobResult]

    @property
    def exit_code(self) -> int:
        return 0 if all(j.ok for j in self.jobs) else 1


def default_workers(count: int) -> int:
    cores = os.cpu_count() or 1
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = MEMORY_PER_JOB
    return max(1, min(count, cores, available // MEMORY_PER_JOB))


def select(project: Project, only: list[str] | None) -> list[tuple[ModelEntry, str]]:
    matrix = project.matrix()
    if not only:
        return matrix
    names = {f"{m.name}/{t}" for m, t in matrix}
    for pattern in only:
        if pattern not in names and pattern not in {m.name for m, _ in matrix}:
            raise ConfigError(f"--only {pattern!r} matches no job; jobs: {', '.join(sorted(names))}")
    return [(m, t) for m, t in matrix if f"{m.name}/{t}" in only or m.name in only]


def _worker_init(level: int) -> None:
    """A spawned worker logs like the process that started it."""
    from edgeship import logs

    logs.configure(level)
    logs.quiet_torch()


def _export_job(model: ModelEntry, target: str, root: str, work: str, lower_apart: bool | None = None) -> dict:
    """Runs in a worker process: one export into `work`; returns where it went, or the error. `lower_apart`:
    False where other jobs run beside this one (they use the cores a second lowering process would)."""
    from edgeship.errors import EdgeshipError
    from edgeship.export.causal_lm import is_causal_lm_source
    from edgeship.flows.export import export

    os.chdir(root)
    try:
        if is_causal_lm_source(model.source):
            return {"out_dir": str(_language_job(model, target, work))}
        if isinstance(model.eval_data, dict):
            raise ConfigError(f"[models.{model.name}] eval_data is a table of subjects, which only a language "
                              "model takes; give one file")
        for key in ("max_seq_len", "int4_offsets"):
            if getattr(model, key) is not None:
                raise ConfigError(f"[models.{model.name}] {key} is for language models; {model.source} is not "
                                  f"one: drop {key}")
        result = export(model.source, target, model.calibration, eval_data=model.eval_data, out=work,
                            input_shapes=list(model.input_shapes) or None,
                            input_dtypes=list(model.input_dtypes) or None, recipe=model.recipe,
                            lower_apart=lower_apart)
    except EdgeshipError as exc:
        return {"error": str(exc)}
    return {"out_dir": str(result.out_dir)}


def _language_job(model: ModelEntry, target: str, work: str) -> Path:
    """A language model's export: its int4 recipe searches for the target's max_ppl_increase (the most
    sensitive layers kept int8), and its artifacts are timed here when a min_decode_tps budget is set."""
    from edgeship.flows.bench_language import bench_language
    from edgeship.flows.language import export_language, language_recipe
    from edgeship.flows import no_progress

    limit, timed = model.budgets.for_language_export(Path(target).stem if target.endswith(".toml") else target)
    subjects = model.eval_data if isinstance(model.eval_data, dict) else (
        {Path(model.eval_data).stem: model.eval_data} if model.eval_data else None)
    result = export_language(model.source, target, model.calibration, eval_data=subjects, out=work,
                             recipe=model.recipe, progress=no_progress, max_seq_len=model.max_seq_len,
                             max_ppl_increase=limit if language_recipe(model.recipe).bits == 4 else None,
                             int4_offsets=model.int4_offsets)
    if timed:
        bench_language(result.out_dir, result.manifest, None, None, no_progress)
    return result.out_dir


def build(project: Project, only: list[str] | None = None, force: bool = False, fail_fast: bool = False,
          workers: int | None = None, on_event: Callable[[str, JobResult | None, str], None] | None = None
          ) -> BuildResult:
    """Export every selected job (cache hits are copied, misses run in worker processes), check
    budgets, and write the reports. `on_event(kind, job, name)`: kind is start | done."""
    from edgeship.pipeline.reports import write_reports

    event = on_event or (lambda kind, job, name: None)
    cache = Cache(project.cache)
    results: list[JobResult] = []
    pending = []
    for model, target in select(project, only):
        started = time.perf_counter()
        key = job_key(model, target, project.root)
        entry = None if force else cache.get(key)
        if entry is not None:
            results.append(_finish(project, model, target, key, entry, "cached", started))
            event("done", results[-1], results[-1].name)
        else:
            pending.append((model, target, key))
    if pending:
        results += _run_pending(project, cache, pending, fail_fast, workers, event, force)
    order = {f"{m.name}/{t}": i for i, (m, t) in enumerate(project.matrix())}
    results.sort(key=lambda j: order[j.name])
    outcome = BuildResult(project.path, project.out, results)
    write_reports(outcome)
    return outcome


def _run_pending(project: Project, cache: Cache, pending, fail_fast: bool, workers: int | None, event,
                 force: bool):
    """At most `n` jobs in flight; the next starts when one ends. With `fail_fast`, none starts
    after a failure (those are reported as skipped); the ones running finish."""
    results = []
    work_root = Path(tempfile.mkdtemp(prefix=".edgeship-work-", dir=project.cache.parent
                                      if project.cache.parent.exists() else None))
    n = min(workers or project.jobs or default_workers(len(pending)), len(pending))
    queue = list(pending)
    try:
        level = logging.getLogger("edgeship").getEffectiveLevel()
        with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(level,)) as pool:
            running: dict = {}
            stop = False
            while queue or running:
                while queue and len(running) < n and not stop:
                    model, target, key = queue.pop(0)
                    work = work_root / f"{model.name}-{key[:12]}"
                    fut = pool.submit(_export_job, model, target, str(project.root), str(work),
                                      None if n == 1 else False)
                    running[fut] = (model, target, key, time.perf_counter())
                    event("start", None, f"{model.name}/{target}")
                if stop and not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    model, target, key, started = running.pop(fut)
                    job = _collect(project, cache, fut, model, target, key, started, force)
                    results.append(job)
                    event("done", job, job.name)
                    stop = stop or (fail_fast and not job.ok)
            for model, target, key in queue:
                results.append(JobResult(model.name, target, "skipped", key, 0.0,
                                         error="not run: --fail-fast after a failed job"))
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    return results


def _collect(project, cache, fut, model, target, key, started, force: bool) -> JobResult:
    try:
        outcome = fut.result()
    except Exception as exc:  # a worker crashed (out of memory, a native abort): report, go on
        outcome = {"error": f"worker crashed: {type(exc).__name__}: {exc}"}
    if "error" in outcome:
        return JobResult(model.name, target, "failed", key, round(time.perf_counter() - started, 2),
                         error=outcome["error"])
    entry = cache.put(key, Path(outcome["out_dir"]), replace=force)
    return _finish(project, model, target, key, entry, "built", started)


def _finish(project: Project, model: ModelEntry, target: str, key: str, entry: Path, status: str,
            started: float) -> JobResult:
    target_name = Path(target).stem if target.endswith(".toml") else target
    dest = project.out / model.name / target_name
    publish(entry, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    checks = check_budgets(manifest, target_name, model.budgets)
    return JobResult(model.name, target, status, key, round(time.perf_counter() - started, 3), dest,
                     manifest, budgets=checks)
