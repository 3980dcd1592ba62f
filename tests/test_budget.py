"""Accuracy budgets on export: the fewest, most sensitive layers go back to float, verified in the
real runtimes; an unreachable budget fails with the best it could reach."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

MODELS = str(Path(__file__).parent / "models.py")


@pytest.fixture
def ffn_data(tmp_path: Path) -> Path:
    np.savez(tmp_path / "ffn.npz", x=np.random.default_rng(0).standard_normal((24, 8, 32)).astype(np.float32))
    return tmp_path / "ffn.npz"


def test_budget_keeps_the_fewest_layers_in_float(tmp_path, ffn_data, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["export", f"{MODELS}:outlier_ffn", "--target", "host", "--calibration",
                              str(ffn_data), "--out", str(tmp_path / "plain"), "--format", "json",
                              "--recipe", "int8-plain"],
                             monkeypatch, capsys)
    assert code == 0, err
    plain = json.loads(out)
    plain_sqnr = min(a["accuracy"]["sqnr_db"] for a in plain["artifacts"] if a["precision"] == "int8")
    target = plain_sqnr + 3.0  # a budget the all-int8 model misses by 3 dB
    code, out, err = run_cli(["export", f"{MODELS}:outlier_ffn", "--target", "host", "--calibration",
                              str(ffn_data), "--out", str(tmp_path / "budget"), "--format", "json",
                              "--min-sqnr", f"{target:.2f}", "--recipe", "int8-plain"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads(out)
    choice = manifest["precision_choice"]
    # the two layers that carry the outlier channel go back to float; the head stays int8
    assert sorted(choice["keep_float"]) == ["linear", "linear_1"] and choice["candidates"] == 3
    assert choice["simulated"]["sqnr_db"] >= target
    for a in manifest["artifacts"]:
        if a["precision"] == "int8":  # the real runtimes land where the simulation said
            assert a["accuracy"]["sqnr_db"] >= target - 1.0, a
    assert plain["precision_choice"] is None


def test_unreachable_budget_fails_with_the_best_reached(tmp_path, monkeypatch, capsys) -> None:
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    code, _, err = run_cli(["export", f"{MODELS}:tiny_conv_net", "--target", "host", "--calibration",
                            str(tmp_path / "c.npz"), "--out", str(tmp_path / "o"), "--min-sqnr", "200"],
                           monkeypatch, capsys)
    assert code == 1 and "cannot be met" in err and "reaches sqnr_db" in err
    assert not (tmp_path / "o").exists()


def test_max_drop_parses_percentages(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["export", f"{MODELS}:tiny_conv_net", "--target", "host", "--calibration",
                            str(tmp_path / "none.npz"), "--max-drop", "150%"], monkeypatch, capsys)
    assert code == 2 and "between 0% and 100%" in err


def test_analyze_ranks_layers(ffn_data, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["analyze", f"{MODELS}:outlier_ffn", "--calibration", str(ffn_data),
                              "--format", "json", "--recipe", "int8-plain"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = result["rows"]
    assert [r["module"] for r in rows][-1] == "model.head"  # the layer without the outlier matters least
    gains = [r["kept_float"]["sqnr_db"] for r in rows]
    assert gains == sorted(gains, reverse=True)
    # quantizing the head alone costs least; with every layer in float the model is exact
    assert max(rows, key=lambda r: r["alone"]["sqnr_db"])["module"] == "model.head"
    assert rows[-1]["cumulative"]["max_abs_error"] == 0.0
    assert result["all_int8"]["sqnr_db"] < min(gains)


def test_analyze_ranks_linear_layers_for_int4(tmp_path, monkeypatch, capsys) -> None:
    """With an int4 recipe, analyze ranks the linear layers by what their int4 weights cost (the layer
    to give keep_int8 or keep_float first), and its all-int4 figure is what the export simulates."""
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((24, 8, 64)).astype(np.float32))
    code, out, err = run_cli(["analyze", f"{MODELS}:heavy_tail_mlp", "--calibration", str(tmp_path / "x.npz"),
                              "--format", "json", "--recipe", "int4"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["precision"] == "int4"
    rows = result["rows"]
    assert [r["module"] for r in rows] == ["model.a", "model.b"]  # a's heavy-tailed weights first
    assert rows[0]["kept_float"]["sqnr_db"] > result["all_int8"]["sqnr_db"] + 10
    assert rows[0]["alone"]["sqnr_db"] < rows[1]["alone"]["sqnr_db"]
    assert rows[-1]["cumulative"]["max_abs_error"] == 0.0
    code, _, err = run_cli(["analyze", f"{MODELS}:heavy_tail_mlp", "--calibration", str(tmp_path / "x.npz"),
                            "--recipe", "fp16"], monkeypatch, capsys)
    assert code == 1 and "analyze ranks layers for int8 (w8a8) and int4 (w4a8) recipes" in err


def test_budget_choice_is_in_the_report(tmp_path, ffn_data, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["export", f"{MODELS}:outlier_ffn", "--target", "host", "--calibration", str(ffn_data),
                            "--out", str(tmp_path), "--min-cosine", "0.9999", "--recipe", "int8-plain"],
                           monkeypatch, capsys)
    assert code == 0, err
    report = (tmp_path / "models-outlier_ffn/host/report.md").read_text()
    assert "## Accuracy budget" in report and "cosine >= 0.9999" in report
    manifest = json.loads((tmp_path / "models-outlier_ffn/host/manifest.json").read_text())
    assert f"{len(manifest['precision_choice']['keep_float'])} of 3 quantizable layers kept in float" in report
    assert manifest["int8_agreement_max_abs"]["model.int8.onnx vs model.int8.ort"] == 0.0
