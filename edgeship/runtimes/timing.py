"""Host latency: median and p90 of repeated runs after warm-up, one method for every runtime."""

from __future__ import annotations

import time

import numpy as np

from edgeship.runtimes.base import Session


def measure_latency(session: Session, inputs: list[np.ndarray], threads: int, warmup: int = 3,
                    min_runs: int = 10, max_runs: int = 200, budget_s: float = 2.0) -> dict:
    """Runs until `min_runs` and `budget_s` are both reached (at most `max_runs`)."""
    for _ in range(warmup):
        session.run(inputs)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        session.run(inputs)
        times.append((time.perf_counter() - t0) * 1000.0)
    arr = np.array(times)
    return {"median": round(float(np.median(arr)), 4), "p90": round(float(np.percentile(arr, 90)), 4),
            "runs": len(times), "warmup": warmup, "threads": threads}
