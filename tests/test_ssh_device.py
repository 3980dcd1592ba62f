"""`edgeship bench --device ssh://...` against a real OpenSSH server started on 127.0.0.1 with
throwaway keys: artifacts and the runner are pushed, run there, and results and outputs come back.
The "device" is this machine's Python, or an aarch64 Python under qemu-user (tools/aarch64-python.sh,
built by `make test`) that runs the aarch64 builds of ONNX Runtime and LiteRT installed by --setup."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgeship.runtimes.runner import SITE_MARKER

ROOT = Path(__file__).resolve().parents[1]
AARCH64_PYTHON = ROOT / ".cache" / "aarch64" / "python3"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
MODELS = str(Path(__file__).parent / "models.py")

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = [pytest.mark.skipif(SSHD is None, reason="OpenSSH server not installed (make test installs it as root)"),
              pytest.mark.xdist_group("test_ssh_device")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PasswordAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d / 'sshd.pid'}
Subsystem sftp /usr/lib/openssh/sftp-server
""")
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None
    server = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")])
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    (d / "ssh_config").write_text(f"""Host test-device
  HostName 127.0.0.1
  Port {port}
  User {user}
  IdentityFile {d / 'user_key'}
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
""")
    for _ in range(50):
        ok = subprocess.run(["ssh", "-F", str(d / "ssh_config"), "-o", "BatchMode=yes", "test-device", "true"],
                            capture_output=True)
        if ok.returncode == 0:
            break
        time.sleep(0.2)
    else:
        server.terminate()
        pytest.fail(f"sshd did not come up: {(d / 'sshd.log').read_text()[-2000:]}")
    yield d / "ssh_config"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    from edgeship import api

    root = tmp_path_factory.mktemp("export")
    np.savez(root / "c.npz", x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    return api.export(f"{MODELS}:tiny_conv_net", "linux-arm64", root / "c.npz", out=root / "out").out_dir


def test_bench_over_ssh_matches_this_machine(ssh_host, export_dir, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["bench", str(export_dir), "--device", "ssh://test-device", "--ssh-config",
                              str(ssh_host), "--remote-python", sys.executable, "--seconds", "0.2",
                              "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["rows"]) == 7 and result["host"]["device"] == "test-device"
    for row in result["rows"]:
        assert row["device"] == "ssh://test-device" and row["runs"] >= 10
        assert row["vs_host_max_abs"] == 0.0, row  # the same runtime builds: identical outputs
    bench = json.loads((export_dir / "bench.json").read_text())
    assert bench["rows"][0]["device"] == "ssh://test-device"


def test_unreachable_device_is_a_clear_error(ssh_host, export_dir, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["bench", str(export_dir), "--device", "ssh://nobody@127.0.0.1:1", "--seconds", "0.2"],
                           monkeypatch, capsys)
    assert code == 1 and "ssh nobody@127.0.0.1 failed" in err and "without a password" in err


aarch64 = pytest.mark.skipif(not AARCH64_PYTHON.exists(), reason="no emulated aarch64 Python: run "
                             "tools/aarch64-python.sh .cache/aarch64 (make test does, as root)")
NOT_EXECUTORCH = ["model.fp32.onnx", "model.int8.onnx", "model.int8.ort", "model.fp32.tflite", "model.int8.tflite"]


@pytest.fixture(scope="module")
def aarch64_site():
    """The runner's private folder for aarch64 in this user's home: removed after the module if it was
    not installed before (a folder without the marker that --setup writes last is a leftover the runner
    ignores, and is removed)."""
    site = Path.home() / ".edgeship" / "site-aarch64-cp311"
    existed = (site / SITE_MARKER).is_file()
    if not existed:
        shutil.rmtree(site, ignore_errors=True)
    yield site
    if not existed:
        shutil.rmtree(site, ignore_errors=True)


@aarch64
def test_aarch64_device_without_runtimes_says_what_to_do(ssh_host, export_dir, aarch64_site, monkeypatch,
                                                          capsys) -> None:
    if (aarch64_site / SITE_MARKER).is_file():
        pytest.skip(f"{aarch64_site} was installed before this test")
    code, _, err = run_cli(["bench", str(export_dir), "--device", "ssh://test-device", "--ssh-config",
                            str(ssh_host), "--remote-python", str(AARCH64_PYTHON), "--seconds", "0.2",
                            *[arg for a in NOT_EXECUTORCH for arg in ("-a", a)]], monkeypatch, capsys)
    assert code == 1, err
    assert "cannot run litert (numpy is not installed); onnxruntime (numpy is not installed)" in err
    assert "--setup" in err


@aarch64
def test_bench_on_emulated_aarch64_matches_x86(ssh_host, export_dir, aarch64_site, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["bench", str(export_dir), "--device", "ssh://test-device", "--ssh-config",
                              str(ssh_host), "--remote-python", str(AARCH64_PYTHON), "--setup", "--seconds", "0.2",
                              "--format", "json", *[arg for a in NOT_EXECUTORCH for arg in ("-a", a)]],
                             monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    host = result["host"]
    assert host["machine"] == "aarch64" and host["emulated"].startswith("qemu-aarch64")
    assert host["cpu_model"] == "Neoverse-N1" and host["runtimes"]["onnxruntime"] is None
    assert sorted(r["path"] for r in result["rows"]) == sorted(NOT_EXECUTORCH)
    for row in result["rows"]:
        assert row["machine"] == "aarch64" and row["runs"] >= 10  # measured by the aarch64 runner
        if row["precision"] == "int8":
            assert row["vs_host_steps"] <= 1.0, row  # the aarch64 int8 kernels agree with x86 within a step
        else:
            assert row["vs_host_relative"] <= 1e-4, row
    assert (aarch64_site / "onnxruntime").is_dir() and (aarch64_site / "ai_edge_litert").is_dir()
    assert (aarch64_site / "onnxruntime" / "capi" / "onnxruntime_pybind11_state.cpython-311-aarch64-linux-gnu.so").is_file()


@aarch64
def test_emulated_timings_are_marked_in_the_table(ssh_host, export_dir, aarch64_site, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["bench", str(export_dir), "--device", "ssh://test-device", "--ssh-config",
                              str(ssh_host), "--remote-python", str(AARCH64_PYTHON), "--setup", "--seconds", "0.1",
                              "-a", "model.int8.tflite"], monkeypatch, capsys)
    assert code == 0, err
    assert "EMULATED (qemu-aarch64 -cpu neoverse-n1)" in out and "NOT ARM latency" in out
    assert "steps" in out  # the vs-this-machine column
