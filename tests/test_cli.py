"""The CLI's successful paths on a tiny model: table, json, targets, --input-shape, re-export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_manifest_schema import validate

MODELS = str(Path(__file__).parent / "models.py")


def test_targets_lists_builtin_profiles(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(["targets", "--format", "json"], monkeypatch, capsys)
    assert code == 0
    targets = {t["name"]: t for t in json.loads(out)}
    assert {"android-arm64", "linux-arm64", "ios-arm64", "host", "pixel-8", "galaxy-s24", "raspberry-pi-5",
            "raspberry-pi-4", "jetson-orin-cpu"} <= set(targets)
    for t in targets.values():  # each says its clusters and why its runtimes / recipe / threads fit
        assert t["clusters"] and len(t["why"]) > 40, t["name"]
    assert "i8mm" in targets["pixel-8"]["isa"] and "dotprod" not in targets["raspberry-pi-4"]["isa"]
    code, out, _ = run_cli(["targets", "--show", "raspberry-pi-5"], monkeypatch, capsys)
    assert code == 0 and "4x Cortex-A76 2.4 GHz" in out and "dotprod" in out


def test_export_table_from_image_folder(image_folder, tmp_path, monkeypatch, capsys, caplog) -> None:
    (image_folder / "preprocess.toml").write_text("resize = 40\ncrop = 32\n")
    code, out, err = run_cli(["export", f"{MODELS}:tiny_conv_net", "--target", "host", "--calibration",
                              str(image_folder), "--out", str(tmp_path / "o"), "--mean", "0.5,0.5,0.5",
                              "--std", "0.25,0.25,0.25"], monkeypatch, capsys)
    assert code == 0, err
    for name in ("model.int8.onnx", "model.int8.pte", "model.int8.tflite", "model.fp32.tflite"):
        assert name in out
    manifest = json.loads((tmp_path / "o/models-tiny_conv_net/host/manifest.json").read_text())
    validate(manifest)
    assert manifest["calibration"]["samples"] == 6 and manifest["evaluation"]["samples"] == 2
    fp32 = {a["runtime"]: a["latency_ms"]["median"] for a in manifest["artifacts"] if a["precision"] == "fp32"}
    report = (tmp_path / "o/models-tiny_conv_net/host/report.md").read_text()
    for a in manifest["artifacts"]:
        if a["precision"] == "int8":  # every int8 artifact is compared with its runtime's fp32 one
            assert a["slower_than_fp32"] == (a["latency_ms"]["median"] > fp32[a["runtime"]])
            assert (f"- {a['path']}: {a['latency_ms']['vs_fp32']:.2f}x its runtime's fp32 median" in report) \
                == a["slower_than_fp32"]
            assert (f"{a['path']} is slower than" in caplog.text) == a["slower_than_fp32"]
    assert "resize 40, crop 32, mean [0.5, 0.5, 0.5], std [0.25, 0.25, 0.25]" in manifest["calibration"]["source"]


def test_bad_preprocess_flag_is_a_usage_error(image_folder, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["export", f"{MODELS}:tiny_conv_net", "--target", "host", "--calibration",
                            str(image_folder), "--out", str(tmp_path / "o"), "--mean", "half"], monkeypatch, capsys)
    assert code == 2 and "not a comma-separated list of numbers" in err and not (tmp_path / "o").exists()


def test_export_json_with_input_shapes_and_eval_data(tmp_path, monkeypatch, capsys) -> None:
    rng = np.random.default_rng(0)
    for name, n in (("cal.npz", 8), ("ev.npz", 3)):
        np.savez(tmp_path / name, left=rng.standard_normal((n, 8)).astype(np.float32),
                 right=rng.standard_normal((n, 6)).astype(np.float32))
    args = ["export", f"{MODELS}:two_inputs", "--target", "host", "--calibration", str(tmp_path / "cal.npz"),
            "--eval-data", str(tmp_path / "ev.npz"), "--input-shape", "1x8", "--input-shape", "1x6",
            "--out", str(tmp_path / "o"), "--format", "json"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["calibration"]["samples"] == 8 and manifest["evaluation"]["samples"] == 3
    assert manifest["model"]["inputs"] == ["left", "right"]
    first = (tmp_path / "o/models-two_inputs/host/model.int8.onnx").read_bytes()
    # exporting again replaces the folder in one move; nothing partial is left beside it (the calibration
    # statistics are kept beside it, and reused)
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["calibration"]["statistics"]["reused"] == ["observers", "passes"]
    assert sorted(p.name for p in (tmp_path / "o/models-two_inputs").iterdir()) == [".calibration", "host"]
    assert [p.suffix for p in (tmp_path / "o/models-two_inputs/.calibration").iterdir()] == [".pt"]
    assert (tmp_path / "o/models-two_inputs/host/model.int8.onnx").read_bytes() == first


def test_recipes_and_recipe_files(tmp_path, monkeypatch, capsys) -> None:
    from edgeship.errors import ConfigError
    from edgeship.quantize.recipe import recipe_by_name

    code, out, _ = run_cli(["recipes", "--format", "json"], monkeypatch, capsys)
    listed = json.loads(out)
    assert code == 0 and {"int8", "int8-percentile", "int8-entropy", "int8-minmax"} <= set(listed)
    (tmp_path / "mine.toml").write_text('activation_method = "entropy"\n')
    assert recipe_by_name(str(tmp_path / "mine.toml")).activation_method == "entropy"
    (tmp_path / "bad.toml").write_text('activation_methd = "entropy"\n')
    try:
        recipe_by_name(str(tmp_path / "bad.toml"))
    except ConfigError as exc:
        assert "unknown recipe key(s) activation_methd; valid keys:" in str(exc)
    else:
        raise AssertionError("an unknown recipe key was accepted")


def test_every_builtin_profile_loads_and_shows(monkeypatch, capsys) -> None:
    from edgeship.targets.devices import all_devices

    names = {d.name for d in all_devices()}
    assert {"android-arm64", "pixel-8", "galaxy-s24", "raspberry-pi-5", "raspberry-pi-4", "jetson-orin-cpu",
            "ios-arm64", "linux-arm64", "host"} <= names
    code, out, _ = run_cli(["targets", "--show", "raspberry-pi-4", "--format", "json"], monkeypatch, capsys)
    assert code == 0 and "dotprod" not in json.loads(out)["isa"]


def test_user_profile_with_unknown_key(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "board.toml").write_text('description = "x"\nos = "linux"\nabi = "aarch64"\ncores = 4\n'
                                         'isa = []\nruntimes = ["litert"]\nthreadz = 2\n')
    code, _, err = run_cli(["targets", "--show", str(tmp_path / "board.toml")], monkeypatch, capsys)
    assert code == 1 and "unknown key(s) threadz; valid keys:" in err


def test_export_from_a_package_module(tmp_path, monkeypatch, capsys) -> None:
    """MODEL as package.module:callable, importable from sys.path."""
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text((Path(__file__).parent / "models.py").read_text()
                                   + "\n\ndef make_model():\n    return two_inputs()\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", left=rng.standard_normal((8, 8)).astype(np.float32),
             right=rng.standard_normal((8, 6)).astype(np.float32))
    code, out, err = run_cli(["export", "mypkg.models:make_model", "--target", "linux-arm64", "--calibration",
                              str(tmp_path / "calib.npz"), "--out", str(tmp_path / "build/models")],
                             monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "build/models/models/linux-arm64/model.int8.tflite").is_file()


@pytest.mark.parametrize("model, recipe", [("tiny_conv_net", "int8"), ("tiny_conv_net", "int4"),
                                           ("tiny_encoder", "int8")])
def test_every_progress_stage_reaches_its_total(tmp_path, model, recipe) -> None:
    """Each calibration pass ticks its samples whether or not the model has layers it applies to, so
    every progress bar ends full (a CNN has no layer for SmoothQuant, a transformer none for bias
    correction)."""
    from edgeship import api

    source = {"tiny_conv_net": (3, 32, 32), "tiny_encoder": (8, 32)}[model]
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((8, *source)).astype(np.float32))
    stages = []

    def progress(task: str, total: int):
        stage = {"task": task, "total": total, "done": 0}
        stages.append(stage)

        def advance(n: int) -> None:
            stage["done"] += n
        return advance

    api.export(f"{MODELS}:{model}", "host", tmp_path / "calib.npz", out=tmp_path / "out", recipe=recipe,
               progress=progress)
    assert stages and all(s["done"] == s["total"] for s in stages), stages


def test_ort_host_time_on_x86_is_explained(monkeypatch) -> None:
    """A .ort int8 file is optimized for ARM's signed int8 kernels; timed on an x86 host it is slower
    than fp32 for that reason, and the manifest says so instead of blaming the model's ops."""
    from edgeship.flows import checks

    def artifacts():
        return [{"runtime": "onnxruntime", "precision": p, "path": path, "latency_ms": {"median": ms}}
                for p, path, ms in (("fp32", "model.fp32.onnx", 2.0), ("int8", "model.int8.onnx", 1.5),
                                    ("int8", "model.int8.ort", 14.0))]

    monkeypatch.setattr(checks.platform, "machine", lambda: "x86_64")
    flagged = artifacts()
    checks.flag_slower_than_fp32(flagged)
    by = {a["path"]: a for a in flagged}
    assert by["model.int8.ort"]["slower_than_fp32"] and "ARM" in by["model.int8.ort"]["host_timing"]
    assert not by["model.int8.onnx"]["slower_than_fp32"] and "host_timing" not in by["model.int8.onnx"]
    monkeypatch.setattr(checks.platform, "machine", lambda: "aarch64")
    on_arm = artifacts()
    checks.flag_slower_than_fp32(on_arm)
    assert all("host_timing" not in a for a in on_arm)


def test_progress_on_a_terminal_shows_each_stage_time_so_far(monkeypatch) -> None:
    """On a terminal each stage's bar carries the time it has run, which moves on while a long step of few
    ticks (a lowering) gives the bar nothing to show."""
    import io
    import re

    from edgeship.render import Stages

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with Stages() as start:
        start("lower for executorch (KV cache)", 2)(1)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.getvalue())
    assert re.search(r"lower for executorch \(KV cache\).* 50% .*\d+:\d\d:\d\d", shown), shown


def test_log_that_is_not_a_terminal_has_stage_lines_and_no_native_banners(tmp_path, conv_npz) -> None:
    """With stderr a file (CI): one line per stage with its duration, and none of the runtimes' banners
    (absl's, ExecuTorch's CPU probe, LiteRT's delegate line), which write past Python's logging."""
    import os
    import re
    import subprocess
    import sys

    from edgeship.logs import NATIVE_BANNERS

    # as a user runs it: ExecuTorch lowered in a second process on two or more cores (edgeship/apart.py)
    env = {**os.environ, "EDGESHIP_LOWER_APART": ""}
    with open(tmp_path / "err.txt", "w") as err:
        run = subprocess.run([sys.executable, "-m", "edgeship", "export", f"{MODELS}:tiny_conv_net", "--target",
                              "android-arm64", "--calibration", str(conv_npz), "--out", str(tmp_path / "out")],
                             stdout=subprocess.DEVNULL, stderr=err, env=env)
    log = (tmp_path / "err.txt").read_text()
    assert run.returncode == 0, log
    stages = re.findall(r"^(.+) \((\d+)\) \.\.\. \d+\.\d s$", log, flags=re.M)
    names = [name for name, _ in stages]
    assert names[:3] == ["capture the model", "float reference", "calibrate"], names
    assert {"lower for onnxruntime", "lower for litert"} <= set(names)
    assert {"lower for executorch", "lower for executorch (second process)"} & set(names), names
    assert sum(name.startswith("verify and time model.") for name in names) == 7
    banner = re.compile("|".join(NATIVE_BANNERS), flags=re.M)
    assert not banner.search(log), log
    assert "oneDNN" not in log and "cpuinfo" not in log and "TensorFlow Lite" not in log, log
