"""Activation-range methods on distributions whose right answer is known."""

from __future__ import annotations

import pytest
import torch

from edgeship.quantize.observers import EntropyObserver, PercentileObserver


def _range(observer, x: torch.Tensor) -> tuple[float, float]:
    observer(x)
    lo, hi = observer._non_linear_param_search()
    return float(lo), float(hi)


@pytest.mark.parametrize("cls", [PercentileObserver, EntropyObserver], ids=["percentile", "entropy"])
def test_clips_a_lone_outlier_but_keeps_the_bulk(cls) -> None:
    torch.manual_seed(0)
    x = torch.randn(200_000)
    x[0] = 60.0  # one outlier 15x beyond the bulk
    lo, hi = _range(cls(dtype=torch.int8, quant_min=-128, quant_max=127), x)
    assert hi < 30.0  # the outlier does not set the range
    inside = ((x >= lo) & (x <= hi)).float().mean()
    assert inside > 0.999  # the bulk is kept


def test_entropy_keeps_most_of_a_relu_range() -> None:
    """Exact zeros after a ReLU are a spike that must not pull the range in."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(200_000) * 2)
    lo, hi = _range(EntropyObserver(dtype=torch.int8, quant_min=-128, quant_max=127), x)
    assert lo == 0.0 and hi > 0.6 * float(x.max())


def test_percentile_is_the_percentile() -> None:
    x = torch.linspace(0, 100, 100_001)
    lo, hi = _range(PercentileObserver(dtype=torch.int8, quant_min=-128, quant_max=127, percentile=99.0), x)
    assert lo == pytest.approx(1.0, abs=0.2) and hi == pytest.approx(99.0, abs=0.2)
