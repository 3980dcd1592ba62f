"""Activation-range observers beyond torchao's: percentile and entropy (KL) on the same histogram
that torchao's HistogramObserver keeps (whose own search minimises the L2 error: method `mse`)."""

from __future__ import annotations

import torch
from torchao.quantization.pt2e.observer import HistogramObserver


class PercentileObserver(HistogramObserver):
    """Range = the [100 - p, p] percentiles of everything observed (p = 99.99 by default)."""

    percentile = 99.99  # also what a histogram observer switched to this class (range_choice.py) uses

    def __init__(self, *args, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.percentile = percentile

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum()
        width = (self.max_val - self.min_val) / self.bins
        low = int(torch.searchsorted(cdf, torch.tensor(1.0 - self.percentile / 100.0)))
        high = int(torch.searchsorted(cdf, torch.tensor(self.percentile / 100.0)))
        new_min = self.min_val + width * low
        new_max = self.min_val + width * min(self.bins, high + 1)
        return new_min, new_max


class EntropyObserver(HistogramObserver):
    """Range whose 256-level quantized distribution is closest (KL divergence) to the observed one
    (TensorRT's entropy method, extended to affine ranges: the top and the bottom of the observed
    range are each trimmed toward zero, one after the other)."""

    levels = 256
    min_bins_per_level = 8  # below this the histogram cannot tell a quantized window from the data

    def __init__(self, *args, bins: int = 8192, **kwargs) -> None:
        super().__init__(*args, bins=bins, **kwargs)

    def _non_linear_param_search(self) -> tuple[torch.Tensor, torch.Tensor]:
        hist = self.histogram.double()
        edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1, dtype=torch.float64)
        centers = (edges[:-1] + edges[1:]) / 2
        lo, hi = float(self.min_val), float(self.max_val)
        # each side is trimmed on its own: first the top with the bottom fixed, then the bottom
        hi = self._search(hist, centers, lo, hi, side="hi")
        lo = self._search(hist, centers, lo, hi, side="lo")
        return torch.tensor(lo), torch.tensor(hi)

    def _search(self, hist, centers, lo: float, hi: float, side: str) -> float:
        best, best_edge = None, hi if side == "hi" else lo
        for factor in torch.linspace(1.0, 0.05, 60).tolist():
            cand_lo, cand_hi = (lo, hi * factor) if side == "hi" else (lo * factor, hi)
            if cand_hi - cand_lo <= 0:
                break
            inside = (centers >= cand_lo) & (centers <= cand_hi)
            if inside.sum() < self.levels * self.min_bins_per_level:
                break
            kl = self._divergence(hist, centers, inside, cand_lo, cand_hi)
            if best is None or kl < best:
                best, best_edge = kl, (cand_hi if side == "hi" else cand_lo)
        return best_edge

    def _divergence(self, hist, centers, inside, lo: float, hi: float) -> float:
        sliced = hist[inside]
        # the reference folds the clipped outliers into the edge bins, as clipping puts them
        # there; the candidate is quantized from the window alone (TensorRT's formulation)
        p = sliced.clone()
        p[0] += hist[centers < lo].sum()
        p[-1] += hist[centers > hi].sum()
        # zero is exact in affine int8 (the zero point): the spike of exact zeros after a ReLU
        # must not be smeared over its neighbours, or narrow ranges always look better
        window = centers[inside]
        zero = int(torch.argmin(window.abs())) if lo <= 0 <= hi else None
        rest = sliced.clone()
        if zero is not None:
            rest[zero] = 0
        q = _requantized(rest, self.levels)
        if zero is not None:
            q[zero] = sliced[zero]
        return _kl(p, q)


def _requantized(p: torch.Tensor, levels: int) -> torch.Tensor:
    """`p` merged into `levels` equal groups and spread back over each group's non-empty bins."""
    group = torch.arange(len(p)) * levels // len(p)
    mass = torch.zeros(levels, dtype=p.dtype).scatter_add_(0, group, p)
    count = torch.zeros(levels, dtype=p.dtype).scatter_add_(0, group, (p > 0).to(p.dtype))
    per_bin = mass / count.clamp_min(1)
    return torch.where(p > 0, per_bin[group], torch.zeros_like(p))


def _kl(p: torch.Tensor, q: torch.Tensor) -> float:
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    return float(torch.sum(p[mask] * torch.log(p[mask] / q[mask].clamp_min(1e-9))))
