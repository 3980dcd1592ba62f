"""`edgeship debug OUTDIR`: each layer's output in float, in the simulated int8 graph and in the ONNX
Runtime artifact, and the layer where the error jumps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("test_debug")

MODELS = str(Path(__file__).parent / "models.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("debug")
    np.savez(root / "x.npz", x=np.random.default_rng(0).standard_normal((16, 8, 32)).astype(np.float32))
    return root


def _export(data: Path, model: str, recipe: str, monkeypatch, capsys) -> Path:
    out = data / f"{model}-{recipe}"
    code, _, err = run_cli(["export", f"{MODELS}:{model}", "--target", "host", "--calibration", str(data / "x.npz"),
                            "--recipe", recipe, "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    return out / f"models-{model}" / "host"


def test_debug_names_the_layer_where_the_error_jumps(data, monkeypatch, capsys) -> None:
    folder = _export(data, "deep_outlier_mlp", "int8-plain", monkeypatch, capsys)
    code, out, err = run_cli(["debug", str(folder), "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = {r["layer"]: r for r in result["rows"]}
    assert list(rows) == ["linear", "linear_1", "linear_2"]
    assert result["worst"]["layer"] == "linear_1"  # the layer with the outlier output channel
    assert rows["linear_1"]["simulated_sqnr_db"] < rows["linear"]["simulated_sqnr_db"] - 10
    for r in rows.values():  # ONNX Runtime reproduces the simulated graph layer by layer
        assert abs(r["runtime_sqnr_db"] - r["simulated_sqnr_db"]) < 1.0, r
    code, out, _ = run_cli(["debug", str(folder)], monkeypatch, capsys)
    assert code == 0 and "The error jumps most at linear_1" in out


def test_debug_on_a_transformer_block_with_the_default_recipe(data, monkeypatch, capsys) -> None:
    folder = _export(data, "tiny_encoder", "int8", monkeypatch, capsys)
    code, out, err = run_cli(["debug", str(folder), "--format", "json", "--samples", "2"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["samples"] == 2
    assert sorted(r["op"] for r in result["rows"]) == ["linear"] * 4 + ["matmul"] * 2
    assert all(r["runtime_sqnr_db"] is not None and r["runtime_sqnr_db"] > 15 for r in result["rows"])


def test_debug_refuses_what_it_cannot_rebuild(data, monkeypatch, capsys) -> None:
    folder = _export(data, "deep_outlier_mlp", "int8", monkeypatch, capsys)
    np.savez(data / "x.npz", x=np.random.default_rng(1).standard_normal((16, 8, 32)).astype(np.float32))
    code, _, err = run_cli(["debug", str(folder)], monkeypatch, capsys)
    assert code == 1 and "changed since the export" in err
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["reproduce"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["debug", str(folder)], monkeypatch, capsys)
    assert code == 1 and "re-export it" in err
    code, _, err = run_cli(["debug", str(data / "nowhere")], monkeypatch, capsys)
    assert code == 1 and "holds no manifest.json" in err
