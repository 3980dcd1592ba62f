"""One benchmark method for every runtime: each artifact is timed in a fresh process (so load time,
first inference and peak memory are its own), warmed up, then run until the median is stable or a
time bound is reached.

    python -m edgeship.runtimes.bench RUNTIME ARTIFACT INPUTS.npz THREADS BUDGET_S
prints one JSON object; `bench_artifact` runs that and parses it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeship.errors import RuntimeFailure

MIN_RUNS, MAX_RUNS, WARMUP = 10, 2000, 5
# imported before the clock starts: load time is the runtime's, not Python's imports
SDK_MODULES = {"onnxruntime": ("onnxruntime",),
               "executorch": ("executorch.kernels.quantized", "executorch.runtime",
                              "executorch.extension.pybindings.portable_lib"),
               "litert": ("ai_edge_litert.interpreter",)}


def _stable(times: list[float]) -> bool:
    """The median of the last half agrees with the median of all runs within 2%."""
    if len(times) < 2 * MIN_RUNS:
        return False
    recent = float(np.median(times[len(times) // 2:]))
    overall = float(np.median(times))
    return abs(recent - overall) <= 0.02 * overall


def measure(runtime: str, path: Path, inputs: list[np.ndarray], threads: int, budget_s: float) -> dict:
    from edgeship.runtimes.base import get_harness

    import importlib

    harness = get_harness(runtime)
    for module in SDK_MODULES.get(runtime, ()):
        importlib.import_module(module)
    started = time.perf_counter()
    session = harness.load(path, threads, device_numerics=not getattr(harness, "host_numerics_differ", False))
    load_ms = (time.perf_counter() - started) * 1000
    t0 = time.perf_counter()
    session.run(inputs)
    first_ms = (time.perf_counter() - t0) * 1000
    for _ in range(WARMUP):
        session.run(inputs)
    times: list[float] = []
    bench_start = time.perf_counter()
    while len(times) < MAX_RUNS:
        t0 = time.perf_counter()
        session.run(inputs)
        times.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - bench_start
        if len(times) >= MIN_RUNS and (elapsed >= budget_s or (_stable(times) and elapsed >= budget_s / 4)):
            break
    arr = np.array(times)
    median = float(np.median(arr))
    return {
        "load_ms": round(load_ms, 3), "first_inference_ms": round(first_ms, 3), "warmup": WARMUP,
        "runs": len(times), "median": round(median, 4), "p90": round(float(np.percentile(arr, 90)), 4),
        "p99": round(float(np.percentile(arr, 99)), 4), "min": round(float(arr.min()), 4),
        "spread": round(float((np.percentile(arr, 90) - np.percentile(arr, 10)) / median), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": threads, "stable": _stable(times),
    }


def host_info() -> dict:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    model = None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            model = line.split(":", 1)[1].strip()
            break
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"machine": platform.machine(), "cpu_model": model or platform.processor() or None,
            "cpu_count": os.cpu_count(), "cpus_allowed": affinity,
            "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "max_mhz": (lambda v: int(v) / 1000 if v else None)(read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))}


def bench_artifact(runtime: str, path: Path, inputs: Path, threads: int, budget_s: float) -> dict:
    run = subprocess.run([sys.executable, "-m", "edgeship.runtimes.bench", runtime, str(path), str(inputs),
                          str(threads), str(budget_s)], capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeFailure(f"benchmarking {path.name} in {runtime} failed: {tail}; run it with "
                             "--debug or re-export the model")
    return json.loads(lines[-1])


def _main(argv: list[str]) -> None:
    runtime, path, inputs, threads, budget = argv
    with np.load(inputs) as data:
        arrays = [data[k] for k in data.files]
    print(json.dumps(measure(runtime, Path(path), arrays, int(threads), float(budget))))


if __name__ == "__main__":
    _main(sys.argv[1:])
