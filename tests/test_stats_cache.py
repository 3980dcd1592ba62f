"""Calibration statistics cached beside a model's exports (edgeship/quantize/stats_cache.py): a second
export with the same key reads no calibration sample and gives the same scales; recipes that share
statistics share them; another key, or a damaged file, reuses nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import runtime_profile

from edgeship import api
from edgeship.calibration.samples import Samples
from edgeship.quantize.calibrate import calibrate, convert
from edgeship.quantize.int4 import build_int4
from edgeship.quantize.outlier_split import split_outliers
from edgeship.quantize.recipe import Recipe
from edgeship.quantize.smoothquant import smooth

sys.path.insert(0, str(Path(__file__).parent))
from models import outlier_ffn, tiny_encoder  # noqa: E402

MODELS = str(Path(__file__).parent / "models.py")


class Unreadable(Samples):
    """Samples that fail when read: proves a replay does not touch them."""

    def sample(self, i):
        raise AssertionError("the calibration samples were read")


def _samples(shape, n=16, seed=0) -> Samples:
    return Samples(("x",), (np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32),), "random")


def _unreadable(samples: Samples) -> Unreadable:
    return Unreadable(samples.names, samples.arrays, samples.source)


def _program(model, samples):
    return torch.export.export(model, tuple(torch.from_numpy(a) for a in samples.sample(0)), strict=False)


def test_passes_and_observers_replay_without_reading_the_samples() -> None:
    model, calib = outlier_ffn(), _samples((8, 32))
    with torch.no_grad():
        model.eval()
    program = _program(model, calib)
    recipe = Recipe(algorithms=("outlier_channels", "smoothquant"))
    memo: dict = {}
    first = convert(calibrate(program, recipe, calib, memo=memo))
    assert memo["passes"]["smoothquant"]["records"] and set(memo["observers"]) == {"histogram-2048"}
    again = convert(calibrate(program, recipe, _unreadable(calib), memo=memo))
    assert again.encodings == first.encodings and again.algorithms == first.algorithms
    x = torch.from_numpy(calib.arrays[0][:1])
    torch.testing.assert_close(again.folded(x), first.folded(x), rtol=0, atol=0)


def test_pass_memos_hold_what_was_decided() -> None:
    model, calib = outlier_ffn(), _samples((8, 32))
    memo: dict = {}
    records = smooth(_program(model, calib).module(), calib, memo=memo)
    assert records and set(memo["scales"]) == {r["input"] for r in records}
    memo = {}
    assert split_outliers(_program(model, calib).module(), calib, memo=memo) == memo["records"]


def test_gptq_weights_replay_without_reading_the_samples() -> None:
    calib = _samples((8, 32), n=8)
    program = _program(tiny_encoder(), calib)
    recipe = Recipe(scheme="w4a8")
    memo: dict = {}
    first = build_int4(program, recipe, calib, memo=memo)
    assert len(memo["gptq"]) == 4
    again = build_int4(program, recipe, _unreadable(calib), memo=memo)
    assert again.encodings() == first.encodings()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Calibration data, and the host and linux-arm64 profiles with ONNX Runtime alone: the statistics
    are the same whatever the runtimes, and lowering for the other two would only add minutes."""
    root = tmp_path_factory.mktemp("stats")
    rng = np.random.default_rng(0)
    np.savez(root / "a.npz", x=rng.standard_normal((12, 8, 32)).astype(np.float32))
    np.savez(root / "b.npz", x=rng.standard_normal((12, 8, 32)).astype(np.float32))
    for name in ("host", "linux-arm64"):
        runtime_profile(root / f"{name}.toml", name, ("onnxruntime",))
    return root


def _export(data, calibration: str, out: Path, recipe: str = "int8", target: str = "host") -> dict:
    result = api.export(f"{MODELS}:tiny_encoder", str(data / f"{target}.toml"), data / calibration, out=out,
                        recipe=recipe)
    return result.manifest


def test_export_reuses_statistics_across_targets_and_recipes(data) -> None:
    out = data / "out"
    first = _export(data, "a.npz", out)
    stats = first["calibration"]["statistics"]
    assert stats["reused"] == [] and Path(stats["file"]).is_file()
    assert Path(stats["file"]).parent == out / "models-tiny_encoder" / ".calibration"

    other_target = _export(data, "a.npz", out, target="linux-arm64")
    assert other_target["calibration"]["statistics"]["reused"] == ["observers", "passes"]
    encodings = json.loads((out / "models-tiny_encoder/host/encodings.json").read_text())
    assert json.loads((out / "models-tiny_encoder/linux-arm64/encodings.json").read_text()) == encodings

    # percentile reads the same histograms as the default recipe: nothing is calibrated again, and the
    # scales are those of a fresh export with that recipe
    shared = _export(data, "a.npz", out, recipe="int8-percentile")
    assert shared["calibration"]["statistics"]["reused"] == ["observers", "passes"]
    fresh = _export(data, "a.npz", data / "fresh", recipe="int8-percentile")
    assert fresh["calibration"]["statistics"]["reused"] == []
    assert (json.loads((out / "models-tiny_encoder/host/encodings.json").read_text())
            == json.loads((data / "fresh/models-tiny_encoder/host/encodings.json").read_text()))

    # other calibration data: another key, nothing reused
    assert _export(data, "b.npz", out)["calibration"]["statistics"]["reused"] == []


def test_a_damaged_statistics_file_is_ignored_and_replaced(data, caplog) -> None:
    out = data / "damaged"
    path = Path(_export(data, "a.npz", out)["calibration"]["statistics"]["file"])
    path.write_bytes(b"not a torch file")
    again = _export(data, "a.npz", out)
    assert again["calibration"]["statistics"]["reused"] == []
    assert "ignoring unreadable calibration statistics" in caplog.text
    assert _export(data, "a.npz", out)["calibration"]["statistics"]["reused"] == ["observers", "passes"]
