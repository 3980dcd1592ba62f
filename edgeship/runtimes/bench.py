"""One benchmark method for every runtime, here or on a remote device: each artifact is timed by
`runner.py` in a fresh process (so load time, first inference and peak memory are its own). The runner
is self-contained, so the same file is copied to an SSH device and run there.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgeship.errors import DeviceError, RuntimeFailure
from edgeship.runtimes.runner import SITE_MARKER
from edgeship.runtimes.runner import host_info  # noqa: F401  (one reading of the machine, here and on devices)

RUNNER = Path(__file__).with_name("runner.py")
# distributions --setup installs per runtime; ExecuTorch's Python runtime needs torch, whose PyPI build for
# aarch64 is a CUDA one (427 MB, needing NVIDIA libraries): install it on a device yourself
SETUP_DISTRIBUTIONS = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert"}


def bench_artifact(runtime: str, path: Path, inputs: Path, threads: int, budget_s: float,
                   outputs: Path | None = None, config: dict | None = None) -> dict:
    args = [runtime, str(path), str(inputs), str(threads), str(budget_s)]
    args += [str(outputs)] if outputs else []
    args += [f"{k}={v}" for k, v in (config or {}).items()]
    run = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True)
    return parse_runner(run, path.name, runtime)


def parse_runner(run: subprocess.CompletedProcess, name: str, runtime: str) -> dict:
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
        self.address = url
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
        run = subprocess.run(["scp", "-q", "-r", *self.options, *port, *sources, dest], capture_output=True, text=True)
        if run.returncode != 0:
            raise DeviceError(f"copying to or from {self.host} failed: "
                              f"{(run.stderr.strip().splitlines() or ['no output'])[-1][:300]}")

    def push(self, files: list[Path]) -> None:
        self._ssh(f"mkdir -p {self.work}")
        self._scp([str(f) for f in files] + [str(RUNNER)], f"{self.host}:{self.work}/")

    def probe(self) -> dict:
        """The device's machine, Python, C library and which runtimes import there (runner.py --probe)."""
        run = self._ssh(f"cd {self.work} && {self.python} runner.py --probe")
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise DeviceError(f"{self.python} on {self.host} did not run the edgeship runner; "
                              "pass --remote-python a Python 3 with numpy (or --setup)")
        return json.loads(lines[-1]) | {"device": self.host}

    def setup(self, runtimes: list[str], probe: dict) -> None:
        """Installs this machine's versions of numpy and the runtimes, as wheels for the device's platform,
        into the runner's private folder there (~/.edgeship/site-MACHINE-cpXY). The wheels are downloaded
        here: the device needs no index access and no pip.
        The folder is filled beside the old one and swapped in whole, its marker written last: an
        interrupted setup leaves the old folder, never half of a new one."""
        wheels = device_wheels(runtimes, probe)
        site = shlex.quote(probe["site"])
        stage = shlex.quote(f"{probe['site']}.partial-{os.getpid()}")
        self._ssh(f"mkdir -p {self.work}/wheels && rm -rf {stage} && mkdir -p {stage}")
        self._scp([str(w) for w in wheels], f"{self.host}:{self.work}/wheels/")
        unpack = [f"{self.python} -m zipfile -e {self.work}/wheels/{w.name} {stage}/" for w in wheels]
        marker = shlex.quote(" ".join(w.name for w in wheels))
        swap = [f"echo {marker} > {stage}/{SITE_MARKER}", f"rm -rf {site}.old",
                f"{{ [ ! -e {site} ] || mv {site} {site}.old; }}", f"mv {stage} {site}", f"rm -rf {site}.old"]
        run = self._ssh(" && ".join(unpack + swap), check=False)
        if run.returncode != 0:
            self._ssh(f"rm -rf {stage}", check=False)
            raise DeviceError(f"installing the runtimes on {self.host} failed ({run.returncode}): "
                              f"{(run.stderr.strip().splitlines() or ['no output'])[-1][:300]}; "
                              "check the device's free space and run again with --setup")

    def bench(self, runtime: str, artifact: str, inputs: str, threads: int, budget_s: float,
              outputs_dir: Path, config: dict) -> dict:
        out_name = f"out-{artifact}.npz"
        pairs = " ".join(f"{k}={v}" for k, v in config.items())
        command = (f"cd {self.work} && {self.python} runner.py "
                   f"{runtime} {artifact} {inputs} {threads} {budget_s} {out_name} {pairs}")
        result = parse_runner(self._ssh(command, check=False), artifact, f"{runtime} on {self.host}")
        self._scp([f"{self.host}:{self.work}/{out_name}"], str(outputs_dir / out_name))
        return result

    def bench_language(self, runtime: str, artifact: str, threads: int, context: int) -> dict:
        """A language-model artifact (a file or a folder, pushed) timed there (runner.py --llm)."""
        command = f"cd {self.work} && {self.python} runner.py --llm {runtime} {shlex.quote(artifact)} {threads} {context}"
        return parse_runner(self._ssh(command, check=False), artifact, f"{runtime} on {self.host}")

    def clean(self) -> None:
        self._ssh(f"rm -rf {self.work}", check=False)


def device_wheels(runtimes: list[str], probe: dict) -> list[Path]:
    """Wheels of numpy and the runtimes, at this machine's versions, for the device's machine, Python and
    glibc; downloaded once into the user's cache folder."""
    from importlib.metadata import version

    unknown = sorted(set(runtimes) - set(SETUP_DISTRIBUTIONS))
    if unknown:
        raise DeviceError(f"--setup installs {', '.join(SETUP_DISTRIBUTIONS)} only, not {', '.join(unknown)} "
                          "(ExecuTorch needs a CPU build of torch for the device); install it on the device "
                          "yourself, or choose other artifacts with --artifact")
    machine, python, (libc, libc_version) = probe["machine"], probe["python"], probe["libc"]
    if libc != "glibc" or not libc_version:
        raise DeviceError(f"--setup needs a glibc Linux device; {probe['device']} reports {libc or 'no libc'}; "
                          "install numpy and the runtimes on it yourself")
    minor = int(libc_version.split(".")[1])
    platforms = [f"manylinux_2_{m}_{machine}" for m in range(17, minor + 1)] + [f"manylinux2014_{machine}"]
    wanted = [f"numpy=={np.__version__}"] + [f"{SETUP_DISTRIBUTIONS[r]}=={version(SETUP_DISTRIBUTIONS[r])}"
                                              for r in sorted(set(runtimes))]
    cache = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeship" / "wheels"
             / f"{machine}-cp{python.replace('.', '')}-glibc{libc_version}")
    folder = cache / "-".join(sorted(w.replace("==", "-") for w in wanted))
    if not folder.is_dir():
        staging = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--implementation", "cp", "--python-version", python, "-d", str(staging)]
        command += [arg for p in platforms for arg in ("--platform", p)] + wanted
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise DeviceError(f"no wheels of {', '.join(wanted)} for {machine} / Python {python} / glibc "
                              f"{libc_version}: {(run.stderr.strip().splitlines() or ['no output'])[-1][:300]}; "
                              "install the runtimes on the device yourself")
        staging.replace(folder)
    return sorted(folder.glob("*.whl"))


def output_differences(a: Path, b: Path) -> list[float]:
    """Largest absolute difference of each output between two saved runs."""
    with np.load(a) as x, np.load(b) as y:
        return [float(np.max(np.abs(x[k].astype(np.float64) - y[k].astype(np.float64)))) for k in x.files]
