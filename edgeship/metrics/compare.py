"""Accuracy of an artifact's outputs against a reference: SQNR, cosine, max error, top-1, steps."""

from __future__ import annotations

import math

import numpy as np


def _flat(outputs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs])


def is_classifier(reference: list[list[np.ndarray]]) -> bool:
    """The first output is treated as class scores when it is (1, N) with N >= 10 and not an
    L2-normalised embedding (every sample of unit norm)."""
    shape = tuple(reference[0][0].shape)
    if not (len(shape) == 2 and shape[0] == 1 and shape[1] >= 10):
        return False
    norms = [float(np.linalg.norm(r[0])) for r in reference]
    return not all(abs(n - 1.0) < 1e-3 for n in norms)


def accuracy(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
             decisions: list[dict | None] | None = None) -> dict:
    """`reference[i]` / `candidate[i]`: the outputs of sample i. SQNR over all samples and outputs;
    cosine averaged over samples; top-1 agreement on the first output when it is classifier-shaped;
    with `decisions` (metrics/decisions.py), the agreement of each sigmoid / softmax output's decisions."""
    signal = noise = 0.0
    cosines, max_err, agree = [], 0.0, []
    classifier = is_classifier(reference)
    non_finite = sum(int(np.size(c) - np.count_nonzero(np.isfinite(c))) for cand in candidate for c in cand)
    if non_finite:  # NaN / inf would compare as "no error" below; say what they are instead
        return {"samples": len(reference), "sqnr_db": None, "cosine": None, "max_abs_error": None,
                "top1_agreement": None, "non_finite": non_finite}
    for ref, cand in zip(reference, candidate):
        r, c = _flat(ref), _flat(cand)
        if r.shape != c.shape:
            raise ValueError(f"output sizes differ: {r.shape} vs {c.shape}")
        signal += float(np.sum(r * r))
        noise += float(np.sum((r - c) ** 2))
        r_norm, c_norm = float(np.linalg.norm(r)), float(np.linalg.norm(c))
        # a zero output against a non-zero one points nowhere near it, however small the reference is
        cosines.append(float(np.dot(r / r_norm, c / c_norm)) if r_norm > 0 and c_norm > 0
                       else (1.0 if r_norm == c_norm == 0 else 0.0))
        max_err = max(max_err, float(np.max(np.abs(r - c))) if r.size else 0.0)
        if classifier:
            agree.append(int(np.argmax(ref[0])) == int(np.argmax(cand[0])))
    # identical outputs have no finite SQNR: recorded as null, with max_abs_error 0
    sqnr = 10.0 * math.log10(signal / noise) if noise > 0 and signal > 0 else None
    result = {
        "samples": len(reference),
        "sqnr_db": round(sqnr, 3) if sqnr is not None else None,
        "cosine": round(float(np.mean(cosines)), 6),
        "max_abs_error": float(max_err),
        "top1_agreement": round(float(np.mean(agree)), 4) if classifier else None,
    }
    if decisions and any(decisions):
        from edgeship.metrics.decisions import agreement

        result["decisions"] = agreement(reference, candidate, decisions)
        if result["decisions"]:  # the least-kept decision, a metric budgets can ask for
            result["decision_agreement"] = min(d["agreement"] for d in result["decisions"])
    return result


def max_steps(a: list[list[np.ndarray]], b: list[list[np.ndarray]], scales: list[float | None]) -> float | None:
    """Largest disagreement between two runs, in quantization steps of each output's scale
    (None when an output is not quantized)."""
    if any(s is None for s in scales):
        return None
    worst = 0.0
    for outs_a, outs_b in zip(a, b):
        for x, y, scale in zip(outs_a, outs_b, scales):
            worst = max(worst, float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) / scale)
    return round(worst, 3)
