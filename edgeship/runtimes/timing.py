"""Latency in this process, with the runner's method (edgeship/runtimes/runner.py `timed_runs`): used by
export, whose sessions are already loaded; `edgeship bench` runs each artifact in a fresh process."""

from __future__ import annotations

import numpy as np

from edgeship.backends.base import Session
from edgeship.runtimes.runner import timed_runs


def measure_latency(session: Session, inputs: list[np.ndarray], threads: int, budget_s: float = 2.0) -> dict:
    return timed_runs(lambda: session.run(inputs), budget_s) | {"threads": threads}
