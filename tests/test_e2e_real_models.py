"""End to end through the CLI on real pretrained models and real data, all three runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_e2e_real_models")]

RUNTIMES = {"onnxruntime", "executorch", "litert"}


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    names = {a["path"] for a in manifest["artifacts"]}
    assert {"model.fp32.onnx", "model.int8.onnx", "model.int8.ort", "model.fp32.pte", "model.int8.pte",
            "model.fp32.tflite", "model.int8.tflite"} == names
    assert {a["runtime"] for a in manifest["artifacts"]} == RUNTIMES
    for a in manifest["artifacts"]:
        path = out_dir / a["path"]
        assert path.stat().st_size == a["bytes"]
        assert a["latency_ms"]["runs"] >= 10 and a["latency_ms"]["median"] > 0
        assert a["io"]["inputs"] and a["io"]["outputs"]
        if a["precision"] == "fp32":
            assert a["accuracy"]["sqnr_db"] > 60, a
        else:  # int8 is smaller than fp32 for every runtime
            fp32 = next(b for b in manifest["artifacts"] if b["runtime"] == a["runtime"] and b["precision"] == "fp32")
            assert a["bytes"] < 0.7 * fp32["bytes"], (a["path"], a["bytes"], fp32["bytes"])
    for name in ("manifest.json", "encodings.json", "report.md", "recipe.json", "model.fp32.onnx"):
        assert (out_dir / name).is_file()
    assert not list(out_dir.parent.glob(".*partial*"))
    assert manifest["calibration"]["samples"] > manifest["evaluation"]["samples"] > 0


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    from edgeship import api

    return api.export(str(ROOT / "examples/mobilenet_v2.py") + ":build", "android-arm64",
                      ROOT / "calibration_data/imagenet-sample", out=tmp_path_factory.mktemp("out"))


def test_mobilenet_v2_all_runtimes(mobilenet) -> None:
    manifest = json.loads((mobilenet.out_dir / "manifest.json").read_text())
    assert manifest == json.loads(json.dumps(mobilenet.manifest))
    _check_manifest(mobilenet.out_dir, manifest)
    int8 = [a for a in manifest["artifacts"] if a["precision"] == "int8"]
    for a in int8:
        # real ImageNet model on held-out real photos: close to float, same class nearly always
        assert a["accuracy"]["cosine"] > 0.98 and a["accuracy"]["sqnr_db"] > 14, a
        assert a["accuracy"]["top1_agreement"] >= 0.7, a
        # the three runtimes compute what the simulated graph computes, give or take rounding
        assert a["vs_simulated_steps"] is not None and a["vs_simulated_steps"] <= 16, a
    steps = manifest["int8_agreement_steps"]
    assert steps["model.int8.onnx vs model.int8.ort"] == 0.0
    assert max(steps.values()) <= 16
    enc = json.loads((mobilenet.out_dir / "encodings.json").read_text())
    assert len(enc["weights"]) == 53  # 52 convs + the classifier
    assert all(e["qscheme"] == "per_channel_symmetric" for e in enc["weights"].values())


def test_minilm_transformer_all_runtimes(tmp_path, monkeypatch, capsys) -> None:
    """A real BERT-style encoder (all-MiniLM-L6-v2), two int64 inputs, through the real CLI. The first 32 of
    the example's 320 sentences keep calibration and checking short (LiteRT's two conversions are most of
    this export)."""
    import numpy as np

    with np.load(ROOT / "calibration_data/sentences-minilm.npz") as npz:
        np.savez(tmp_path / "sentences.npz", **{name: npz[name][:32] for name in npz.files})
    code, out, err = run_cli(["export", str(ROOT / "examples/minilm.py") + ":build", "--target", "linux-arm64",
                              "--calibration", str(tmp_path / "sentences.npz"),
                              "--out", str(tmp_path), "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads(out)
    out_dir = tmp_path / "minilm" / "linux-arm64"
    _check_manifest(out_dir, manifest)
    for a in manifest["artifacts"]:
        assert a["accuracy"]["top1_agreement"] is None  # unit-norm embeddings are not class scores
        if a["precision"] == "int8":
            assert a["accuracy"]["cosine"] > 0.93, a
    assert manifest["model"]["inputs"] == ["input_ids", "attention_mask"]
