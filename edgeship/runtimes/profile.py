"""Per-op profiles of an export's artifacts (each backend's `profile`), and the gates read from them:
the share of ops that ran in int8 kernels or in the delegate, and the ops that did not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeship.backends import get_backend


def profile(runtime: str, path: Path, inputs: list[np.ndarray], threads: int) -> dict:
    return get_backend(runtime).profile(path, inputs, threads)


def delegated_share(prof: dict) -> float:
    """Share of ops (by count) that ran in the XNNPACK delegate (ExecuTorch) or in int8 kernels
    (ONNX Runtime, LiteRT)."""
    key = "delegated" if prof["runtime"] == "executorch" else "int8"
    counted = [r for r in prof["ops"] if r[key] is not None]  # data movement is neither
    total = sum(r["count"] for r in counted) or 1
    return round(sum(r["count"] for r in counted if r[key]) / total, 4)


def fallbacks(prof: dict) -> list[str]:
    key = "delegated" if prof["runtime"] == "executorch" else "int8"
    return [r["op"] for r in prof["ops"] if r[key] is False]
