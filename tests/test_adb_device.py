"""`edgeship bench --device adb://SERIAL` through a command-level test double of adb (tests/fake_adb.py):
no Android device is available to the test suite. With --remote-python the runner runs "on the device"
with this machine's real runtimes; the runtimes' own benchmark binaries are checked by their command
lines and by parsing text in the format their sources print."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgeship.runtimes.adb import parse_benchmark_model, parse_executor_runner, parse_onnxruntime_perf_test

HERE = Path(__file__).parent
MODELS = str(HERE / "models.py")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from edgeship import api

    root = tmp_path_factory.mktemp("export")
    np.savez(root / "c.npz", x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    return api.export(f"{MODELS}:tiny_conv_net", "android-arm64", root / "c.npz", out=root / "out").out_dir


@pytest.fixture
def adb(tmp_path, monkeypatch) -> Path:
    """The adb double on $ADB; returns its call log."""
    root, log = tmp_path / "device", tmp_path / "adb.log"
    root.mkdir()
    wrapper = tmp_path / "adb"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {HERE / 'fake_adb.py'} \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("ADB", str(wrapper))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setenv("FAKE_ADB_SERIALS", "R58N123")
    monkeypatch.setenv("FAKE_ADB_MODEL", "SM-S921B")
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_runner_over_adb_pushes_runs_and_pulls(adb, export_dir, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "--remote-python",
                              sys.executable, "--seconds", "0.1", "-a", "model.int8.onnx", "-a", "model.int8.tflite",
                              "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["host"]["model"] == "SM-S921B" and result["host"]["abi"] == "arm64-v8a"
    for row in result["rows"]:
        assert row["device"] == "adb://R58N123" and row["runs"] >= 10
        assert row["vs_host_steps"] == 0.0  # this machine's runtimes on both sides
    calls = _calls(adb)
    assert all(c[:2] == ["-s", "R58N123"] for c in calls)
    pushed = {Path(c[3]).name for c in calls if c[2] == "push"}
    assert {"model.int8.onnx", "model.int8.tflite", "sample_inputs.npz", "runner.py"} <= pushed
    assert sum(c[2] == "pull" for c in calls) == 2
    assert calls[-1][2:4] == ["shell", f"rm -rf /data/local/tmp/edgeship/run-{os.getpid()}"]  # cleaned up


def test_without_python_or_tool_says_what_is_missing(adb, export_dir, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "-a", "model.int8.tflite"],
                           monkeypatch, capsys)
    assert code == 1
    assert "adb://R58N123 cannot run litert (no benchmark tool;" in err and "--benchmark-tool" in err


def test_unattached_serial_and_missing_adb(adb, export_dir, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bench", str(export_dir), "--device", "adb://OTHER", "-a", "model.int8.tflite"],
                           monkeypatch, capsys)
    assert code == 1 and "OTHER is not ready over adb" in err and "adb devices" in err
    monkeypatch.setenv("ADB", str(Path(adb).parent / "no-such-adb"))
    code, _, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123"], monkeypatch, capsys)
    assert code == 1 and "adb not found" in err and "platform-tools" in err


STAND_IN = """#!/bin/sh
# stand-in for LiteRT's benchmark_model (no arm64 Android binary can run here): prints its arguments and
# lines in the format benchmark_model.cc and its profile summarizer log
echo "ARGS $*"
echo "INFO: count=40 first=2100 curr=1210 min=1180 max=2100 avg=1250.5 std=90 p5=1190 median=1220 p95=1400"
echo "INFO: Inference timings in us: Init: 15000, First inference: 2100, Warmup (avg): 1300, Inference (avg): 1250.5"
echo "INFO: Peak memory footprint (MB): init=3.5 overall=9.25"
case "$*" in *enable_op_profiling*)
printf 'Profiling Info for Benchmark Initialization:\n'
printf '============================== Summary by node type ==============================\n'
printf '\t[Node type]\t[count]\t[avg ms]\t[avg %%]\t[cdf %%]\t[mem KB]\t[times called]\n'
printf '\tModifyGraphWithDelegate\t1\t4.100\t90.000%%\t90.000%%\t0.000\t1\n\n'
printf 'Operator-wise Profiling Info for Regular Benchmark Runs:\n'
printf '============================== Summary by node type ==============================\n'
printf '\t[Node type]\t[count]\t[avg ms]\t[avg %%]\t[cdf %%]\t[mem KB]\t[times called]\n'
printf '\tConvolution (NHWC, QS8, QC8W) IGEMM\t3\t0.900\t75.000%%\t75.000%%\t0.000\t3\n'
printf '\tMEAN\t1\t0.200\t16.667%%\t91.667%%\t0.000\t1\n'
printf '\tFully Connected (NC, QS8, QC8W) GEMM\t1\t0.100\t8.333%%\t100.000%%\t0.000\t1\n\n'
;; esac
"""


def test_benchmark_tool_is_pushed_and_called(adb, export_dir, tmp_path, monkeypatch, capsys) -> None:
    tool = tmp_path / "benchmark_model"
    tool.write_text(STAND_IN)
    code, out, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "--benchmark-tool",
                              f"litert={tool}", "-a", "model.int8.tflite", "--threads", "1", "--format", "json"],
                             monkeypatch, capsys)
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    assert row["tool"] == "benchmark_model" and row["vs_host_max_abs"] is None
    assert row["median"] == 1.22 and row["min"] == 1.18 and row["load_ms"] == 15.0 and row["peak_rss_mb"] == 9.25
    shell = [c[3] for c in _calls(adb) if c[2] == "shell" and "benchmark_model" in c[3] and "chmod" not in c[3]]
    assert len(shell) == 1 and "--graph=/data/local/tmp/edgeship/run-" in shell[0]
    assert "model.int8.tflite --num_threads=1 --use_xnnpack=true" in shell[0]
    assert "enable_op_profiling" not in shell[0]  # timings without the profiler's overhead


def test_benchmark_tool_op_profile_is_the_devices(adb, export_dir, tmp_path, monkeypatch, capsys) -> None:
    tool = tmp_path / "benchmark_model"
    tool.write_text(STAND_IN)
    code, out, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "--benchmark-tool",
                              f"litert={tool}", "-a", "model.int8.tflite", "--profile", "--format", "json"],
                             monkeypatch, capsys)
    assert code == 0, err
    row = json.loads(out)["rows"][0]
    ops = {op["op"]: op for op in row["profile"]["ops"]}
    assert row["profile"]["source"] == "benchmark_model --enable_op_profiling"
    assert "ModifyGraphWithDelegate" not in ops  # initialization is not a run
    assert ops["Convolution (NHWC, QS8, QC8W) IGEMM"]["int8"] is True and ops["MEAN"]["int8"] is False
    assert ops["Convolution (NHWC, QS8, QC8W) IGEMM"]["ms_per_run"] == 0.9
    assert row["delegated_share"] == 0.8  # 4 of 5 ops in XNNPACK's int8 kernels


def test_benchmark_tool_for_unknown_runtime_or_missing_file(adb, export_dir, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "--benchmark-tool",
                            f"tvm={tmp_path}"], monkeypatch, capsys)
    assert code == 1 and "unknown runtime" in err
    code, _, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "--benchmark-tool",
                            f"litert={tmp_path / 'nope'}"], monkeypatch, capsys)
    assert code == 1 and "no such file" in err and "arm64-v8a" in err
    code, _, err = run_cli(["bench", str(export_dir), "--device", "adb://R58N123", "--benchmark-tool", "litert"],
                           monkeypatch, capsys)
    assert code == 2 and "RUNTIME=PATH" in err


# Output in the formats the tools' sources print (onnxruntime/test/perftest/performance_runner.cc,
# tensorflow/lite/tools/benchmark/benchmark_model.cc, executorch/examples/portable/executor_runner).

def test_parse_onnxruntime_perf_test() -> None:
    text = ("Session creation time cost: 0.217932 s\nFirst inference time cost: 196 ms\n"
            "Total inference time cost: 0.49481 s\nTotal inference requests: 5\n"
            "Average inference time cost total: 98.961997 ms\nPeak working set size: 271122432 bytes\n"
            "Min Latency: 0.0958204 s\nMax Latency: 0.101519 s\nP50 Latency: 0.0995086 s\n"
            "P90 Latency: 0.101519 s\nP95 Latency: 0.101519 s\nP99 Latency: 0.101519 s\n")
    r = parse_onnxruntime_perf_test(text)
    assert r["median"] == pytest.approx(99.5086) and r["min"] == pytest.approx(95.8204)
    assert r["load_ms"] == pytest.approx(217.932) and r["first_inference_ms"] == 196 and r["runs"] == 5
    assert r["peak_rss_mb"] == pytest.approx(258.6, abs=0.05)


def test_parse_benchmark_model_without_percentiles_uses_the_mean() -> None:
    text = ("count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929\n"
            "Inference timings in us: Init: 38467, First inference: 79449, Warmup (avg): 83235, Inference (avg): 79732\n")
    r = parse_benchmark_model(text)
    assert r["median"] == pytest.approx(79.732) and r["median_is_mean"] and r["runs"] == 50
    assert r["load_ms"] == pytest.approx(38.467) and r["peak_rss_mb"] is None


def test_parse_executor_runner() -> None:
    r = parse_executor_runner("I 00:00:01.2 executor_runner.cpp:150] Model executed successfully 20 time(s) in 41.5 ms.")
    assert r["median"] == pytest.approx(2.075) and r["median_is_mean"] and r["runs"] == 20
    assert parse_executor_runner("Execution of method forward failed")["median"] is None


def test_device_profile_carries_the_address(adb, export_dir, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bench", str(export_dir), "--device", "galaxy-s24"], monkeypatch, capsys)
    assert code == 1 and "'galaxy-s24' has no address" in err and "address =" in err
    builtin = (Path(__file__).parents[1] / "edgeship/targets/devices/galaxy-s24.toml").read_text()
    profile = tmp_path / "my-s24.toml"
    profile.write_text(builtin + f'address = "adb://R58N123"\npython = "{sys.executable}"\n')
    code, out, err = run_cli(["bench", str(export_dir), "--device", str(profile), "-a", "model.int8.onnx",
                              "--seconds", "0.1", "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["rows"][0]["device"] == "adb://R58N123"
    code, _, err = run_cli(["bench", str(export_dir), "--device", str(profile), "--setup"], monkeypatch, capsys)
    assert code == 1 and "--setup installs wheels on ssh:// Linux devices" in err
