"""`edgeship bench`: one method for all runtimes, ratios, and regression checks against a baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_manifest_schema import validate

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("test_bench")

MODELS = str(Path(__file__).parent / "models.py")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from edgeship import api

    root = tmp_path_factory.mktemp("bench")
    np.savez(root / "c.npz", x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    return api.export(f"{MODELS}:tiny_conv_net", "host", root / "c.npz", out=root / "out").out_dir


def test_bench_times_every_artifact_the_same_way(export_dir, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["bench", str(export_dir), "--seconds", "0.3", "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = {r["path"]: r for r in result["rows"]}
    assert set(rows) == {"model.fp32.onnx", "model.int8.onnx", "model.int8.ort", "model.fp32.pte",
                         "model.int8.pte", "model.fp32.tflite", "model.int8.tflite"}
    for r in rows.values():
        assert r["runs"] >= 10 and 0 < r["min"] <= r["median"] <= r["p90"] <= r["p99"]
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["peak_rss_mb"] > 10
    assert "model.int8.tflite / model.fp32.tflite" in result["ratios"]
    manifest = json.loads((export_dir / "manifest.json").read_text())
    validate(manifest)  # with `bench`
    assert manifest["bench"]["rows"] == result["rows"]
    assert json.loads((export_dir / "bench.json").read_text())["rows"] == result["rows"]


def test_baseline_regression_fails_the_run(export_dir, tmp_path, monkeypatch, capsys) -> None:
    bench = json.loads((export_dir / "bench.json").read_text()) if (export_dir / "bench.json").exists() else None
    if bench is None:
        run_cli(["bench", str(export_dir), "--seconds", "0.3"], monkeypatch, capsys)
        bench = json.loads((export_dir / "bench.json").read_text())
    faster = dict(bench)
    # a baseline 1000x faster: a regression whatever the noise on this (possibly busy) machine
    faster["rows"] = [dict(r, median=r["median"] / 1000, spread=0.01) if r["path"] == "model.int8.tflite" else r
                      for r in bench["rows"]]
    (tmp_path / "base.json").write_text(json.dumps(faster))
    code, out, err = run_cli(["bench", str(export_dir), "--artifact", "model.int8.tflite", "--seconds", "0.3",
                              "--baseline", str(tmp_path / "base.json")], monkeypatch, capsys)
    assert code == 1 and "REGRESSION model.int8.tflite" in out


def test_baseline_within_noise_passes(export_dir, tmp_path, monkeypatch, capsys) -> None:
    run_cli(["bench", str(export_dir), "--artifact", "model.int8.pte", "--seconds", "0.3"], monkeypatch, capsys)
    base = json.loads((export_dir / "bench.json").read_text())
    slower = dict(base, rows=[dict(r, median=r["median"] * 3) for r in base["rows"]])  # baseline was slower
    (tmp_path / "base.json").write_text(json.dumps(slower))
    code, out, err = run_cli(["bench", str(export_dir), "--artifact", "model.int8.pte", "--seconds", "0.3",
                              "--baseline", str(tmp_path / "base.json")], monkeypatch, capsys)
    assert code == 0 and "REGRESSION" not in out


def test_bench_needs_an_export_folder(tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bench", str(tmp_path)], monkeypatch, capsys)
    assert code == 1 and "holds no manifest.json" in err


def test_profiles_and_delegation_gates(export_dir, monkeypatch, capsys) -> None:
    args = ["bench", str(export_dir), "--seconds", "0.2", "--format", "json", "--profile"]
    code, out, err = run_cli(args + ["--artifact", "model.int8.pte", "--artifact", "model.int8.onnx",
                                     "--artifact", "model.int8.tflite", "--min-delegated", "50%"],
                             monkeypatch, capsys)
    assert code == 0, err
    rows = {r["path"]: r for r in json.loads(out)["rows"]}
    et = rows["model.int8.pte"]["profile"]
    assert rows["model.int8.pte"]["delegated_share"] == 1.0
    assert any("QC8" in op["op"] and op["delegated"] for op in et["ops"])  # XNNPACK's int8 convolutions
    assert all(op["ms_per_run"] >= 0 for op in et["ops"])
    ort_ops = {op["op"]: op for op in rows["model.int8.onnx"]["profile"]["ops"]}
    assert ort_ops["QLinearConv"]["count"] == 3 and ort_ops["QLinearConv"]["int8"] is True
    assert ort_ops["ReduceMean"]["int8"] is False  # global average pooling stays float in ONNX Runtime
    assert rows["model.int8.tflite"]["profile"]["timed"] is False
    report = (export_dir / "report.md").read_text()  # the tables land in the export's report too
    assert "## Benchmark (`edgeship bench`)" in report and "### Per-op profile: model.int8.pte" in report
    assert "| ReduceMean | 1 |" in report and "| **no** |" in report
    # the same ReduceMean fails a build that allows no fallback
    code, out, _ = run_cli(["bench", str(export_dir), "--seconds", "0.2", "--artifact", "model.int8.onnx",
                            "--fail-on-fallback"], monkeypatch, capsys)
    assert code == 1 and "FAILED fallback model.int8.onnx: ReduceMean" in out


def test_peak_memory_is_the_runner_s_own_not_its_parent_s() -> None:
    """The runner is started by edgeship's process, which may hold gigabytes (an export, a benchmark):
    its peak resident memory must not include what the parent held when it started it."""
    import subprocess
    import sys

    held = bytearray(1024 * 2**20)
    held[::4096] = b"\1" * len(held[::4096])  # resident, not only reserved
    code = "from edgeship.runtimes.runner import _peak_rss_mb; print(_peak_rss_mb())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 1 < float(done.stdout) < 512, done.stdout
    del held
