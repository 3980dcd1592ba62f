"""Cross-layer equalization (edgeship/quantize/equalization.py) and per-tensor int8 weights: the float
model is unchanged and consecutive convolutions end with equal channel ranges. What it gains on the real
ImageNet MobileNetV2 with per-tensor weights is measured by benchmarks/algorithms.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeship.calibration.samples import Samples
from edgeship.errors import ConfigError
from edgeship.quantize.calibrate import calibrate, convert
from edgeship.quantize.equalization import _conv2_input_range, _folded_norm_factor, _pairs, equalize
from edgeship.quantize.graphs import attr
from edgeship.quantize.recipe import RECIPES, Recipe

sys.path.insert(0, str(Path(__file__).parent))
from models import tiny_conv_net  # noqa: E402


def _conv_program(seed: int = 0):
    from edgeship.export.capture import FlatOutputs

    model = FlatOutputs(tiny_conv_net(seed)).eval()
    data = np.random.default_rng(seed).standard_normal((8, 3, 32, 32)).astype(np.float32)
    program = torch.export.export(model, (torch.from_numpy(data[:1]),))
    return model, program, Samples(("x",), (data,), "calib")


def test_equalization_keeps_the_float_model_and_equalizes_the_ranges() -> None:
    model, program, samples = _conv_program()
    before = {k: v.clone() for k, v in program.state_dict.items()}
    module = program.module()
    pairs = _pairs(module)
    # depthwise -> BN -> ReLU6 -> pointwise; the stem's output also feeds the residual add, so the stem and
    # the depthwise conv are not a pair (scaling the stem's channels would change the add)
    assert [(p.conv1.name, p.conv2.name, p.clip) for p in pairs] == [("conv2d_1", "conv2d_2", 6.0)]
    records = equalize(module, samples)
    assert len(records) == 1 and (records[0]["scale_min"] < 0.9 or records[0]["scale_max"] > 1.1)
    with torch.no_grad():
        for i in range(len(samples)):
            x = torch.from_numpy(samples.arrays[0][i:i + 1])
            torch.testing.assert_close(module(x), model(x), rtol=1e-4, atol=1e-4)
    # the exported program's own weights are untouched (other recipes capture from it again)
    assert all(torch.equal(before[k], v) for k, v in program.state_dict.items())
    # a pair whose channels never reach ReLU6's clip ends with equal ranges on both sides
    pair = pairs[0]
    weight1 = attr(module, pair.conv1.args[1].target)
    r1 = (weight1 * _folded_norm_factor(module, pair.norm, weight1.shape[0]).reshape(-1, 1, 1, 1)).abs().amax((1, 2, 3))
    r2 = _conv2_input_range(attr(module, pair.conv2.args[1].target), depthwise=False)
    free = (r1 / r2 - 1).abs() < 1e-3
    assert free.sum() >= weight1.shape[0] // 2


def test_equalization_replays_from_its_memo_without_samples() -> None:
    _, program, samples = _conv_program()
    memo: dict = {}
    first = program.module()
    equalize(first, samples, memo=memo)
    from test_stats_cache import _unreadable

    again = program.module()
    assert equalize(again, _unreadable(samples), memo=memo) == equalize(program.module(), samples)
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_per_tensor_weights_and_recipe_checks() -> None:
    _, program, samples = _conv_program()
    prepared = calibrate(program, RECIPES["int8-per-tensor"], samples)
    quantized = convert(prepared)
    weights = quantized.encodings["weights"]
    assert weights and all(np.asarray(e["scale"]).size == 1 for e in weights.values())
    assert any(r["algorithm"] == "cross_layer_equalization" for r in quantized.algorithms)
    with pytest.raises(ConfigError, match="per_tensor is for w8a8"):
        Recipe(scheme="w4a8", weight_granularity="per_tensor")
    with pytest.raises(ConfigError, match="weight granularity"):
        Recipe(weight_granularity="per_group")
    with pytest.raises(ConfigError, match="do not apply to w4a8"):
        Recipe(scheme="w4a8", algorithms=("cross_layer_equalization",))
