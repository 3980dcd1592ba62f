"""One benchmark method for every runtime, here or on a remote device: each artifact is timed by
`runner.py` in a fresh process (so load time, first inference and peak memory are its own). The runner
is self-contained, so the same file is copied to an SSH device and run there.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeship.errors import DeviceError, RuntimeFailure

RUNNER = Path(__file__).with_name("runner.py")


def host_info() -> dict:
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    model = None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            model = line.split(":", 1)[1].strip()
            break
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"machine": platform.machine(), "cpu_model": model or platform.processor() or None,
            "cpu_count": os.cpu_count(), "cpus_allowed": affinity,
            "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "max_mhz": (lambda v: int(v) / 1000 if v else None)(read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))}


def bench_artifact(runtime: str, path: Path, inputs: Path, threads: int, budget_s: float,
                   outputs: Path | None = None, config: dict | None = None) -> dict:
    args = [runtime, str(path), str(inputs), str(threads), str(budget_s)]
    args += [str(outputs)] if outputs else []
    args += [f"{k}={v}" for k, v in (config or {}).items()]
    run = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True)
    return _parse(run, path.name, runtime)


def _parse(run: subprocess.CompletedProcess, name: str, runtime: str) -> dict:
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.returncode != 0 or not lines:
        tail = (run.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise RuntimeFailure(f"benchmarking {name} in {runtime} failed: {tail}; run it with "
                             "--debug or re-export the model")
    return json.loads(lines[-1])


class SSHDevice:
    """A Linux device reached with the user's ssh (keys and hosts from the ssh config): artifacts and
    the runner are copied to ~/.edgeship/<run> there, run with the device's Python, and results and
    outputs are copied back. Nothing is installed unless `setup()` is called."""

    def __init__(self, url: str, ssh_config: Path | None = None, python: str = "python3") -> None:
        if not url.startswith("ssh://") or not url[6:]:
            raise DeviceError(f"device {url!r} is not of the form ssh://[user@]host[:port]")
        target = url[6:].rstrip("/")
        self.port = None
        if ":" in target.rsplit("@", 1)[-1]:
            target, _, port = target.rpartition(":")
            if not port.isdigit():
                raise DeviceError(f"device {url!r}: port {port!r} is not a number")
            self.port = port
        self.host, self.python = target, python
        self.options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if ssh_config is not None:
            self.options = ["-F", str(ssh_config)] + self.options
        self.work = f".edgeship/run-{os.getpid()}"

    def _ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        port = ["-p", self.port] if self.port else []
        run = subprocess.run(["ssh", *self.options, *port, self.host, command], capture_output=True, text=True)
        if check and run.returncode != 0:
            raise DeviceError(f"ssh {self.host} failed ({run.returncode}): "
                              f"{(run.stderr.strip().splitlines() or ['no output'])[-1][:300]}; "
                              "check that `ssh HOST` works without a password")
        return run

    def _scp(self, sources: list[str], dest: str) -> None:
        port = ["-P", self.port] if self.port else []
        run = subprocess.run(["scp", "-q", *self.options, *port, *sources, dest], capture_output=True, text=True)
        if run.returncode != 0:
            raise DeviceError(f"copying to or from {self.host} failed: "
                              f"{(run.stderr.strip().splitlines() or ['no output'])[-1][:300]}")

    def push(self, files: list[Path]) -> None:
        self._ssh(f"mkdir -p {self.work}")
        self._scp([str(f) for f in files] + [str(RUNNER)], f"{self.host}:{self.work}/")

    def setup(self, packages: list[str]) -> None:
        """Install the runtime wheels for the device's architecture into ~/.edgeship/site."""
        self._ssh(f"{self.python} -m pip install -q --target .edgeship/site {' '.join(packages)}")

    def info(self) -> dict:
        run = self._ssh(f"{self.python} -c 'import platform, os; print(platform.machine(), os.cpu_count())'")
        machine, cpus = run.stdout.split()[:2]
        return {"machine": machine, "cpu_count": int(cpus), "device": self.host}

    def bench(self, runtime: str, artifact: str, inputs: str, threads: int, budget_s: float,
              outputs_dir: Path, config: dict) -> dict:
        out_name = f"out-{artifact}.npz"
        pairs = " ".join(f"{k}={v}" for k, v in config.items())
        command = (f"cd {self.work} && PYTHONPATH=$HOME/.edgeship/site:$PYTHONPATH {self.python} runner.py "
                   f"{runtime} {artifact} {inputs} {threads} {budget_s} {out_name} {pairs}")
        result = _parse(self._ssh(command, check=False), artifact, f"{runtime} on {self.host}")
        self._scp([f"{self.host}:{self.work}/{out_name}"], str(outputs_dir / out_name))
        return result

    def clean(self) -> None:
        self._ssh(f"rm -rf {self.work}", check=False)


def max_difference(a: Path, b: Path) -> float:
    with np.load(a) as x, np.load(b) as y:
        return max(float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)))) for k in x.files)
