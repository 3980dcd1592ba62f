"""Android devices over adb (`--device adb://SERIAL`, or `adb://` for the only one attached).

Artifacts go to /data/local/tmp/edgeship/run-<pid> on the device. Each artifact runs either
- in edgeship's runner under a Python on the device (`--remote-python`, e.g. Termux's, with numpy and the
  runtime installed): the same method as everywhere else, and its outputs come back to be checked; or
- in the runtime's own benchmark binary built for arm64-v8a, given per runtime with `--benchmark-tool
  RUNTIME=PATH` (or `benchmark_tools` in the device profile) and pushed with the artifacts:
  onnxruntime_perf_test, LiteRT's benchmark_model, ExecuTorch's executor_runner. Those run on their own
  inputs, so their rows carry timings only, with the statistics that tool prints (others are null).

adb is `$ADB` when set, else `adb` on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from edgeship.errors import DeviceError
from edgeship.runtimes.bench import RUNNER, parse_runner

REMOTE_ROOT = "/data/local/tmp/edgeship"
TOOLS = {"onnxruntime": "onnxruntime_perf_test", "litert": "benchmark_model", "executorch": "executor_runner"}


class ADBDevice:
    def __init__(self, url: str, python: str | None = None, tools: dict[str, Path] | None = None) -> None:
        if not url.startswith("adb://"):
            raise DeviceError(f"device {url!r} is not of the form adb://SERIAL")
        self.serial = url[6:].strip("/") or None
        self.address = url
        self.name = self.serial or "the attached Android device"
        self.adb = shutil.which(os.environ.get("ADB", "adb"))
        if self.adb is None:
            raise DeviceError(f"adb not found (looked for {os.environ.get('ADB', 'adb')!r}): install Android "
                              "platform-tools and put adb on PATH, or set ADB=/path/to/adb")
        self.python, self.tools = python, dict(tools or {})
        for runtime, path in self.tools.items():
            if runtime not in TOOLS:
                raise DeviceError(f"--benchmark-tool {runtime}=...: unknown runtime; known: {', '.join(TOOLS)}")
            if not Path(path).is_file():
                raise DeviceError(f"--benchmark-tool {runtime}={path}: no such file; pass the {TOOLS[runtime]} "
                                  "binary built for arm64-v8a")
        self.work = f"{REMOTE_ROOT}/run-{os.getpid()}"
        self.op_profiles = False  # set by `bench --profile`: LiteRT's tool then profiles every op

    def _adb(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        serial = ["-s", self.serial] if self.serial else []
        run = subprocess.run([self.adb, *serial, *args], capture_output=True, text=True)
        if check and run.returncode != 0:
            tail = (run.stderr.strip().splitlines() or run.stdout.strip().splitlines() or ["no output"])[-1][:300]
            raise DeviceError(f"adb {args[0]} on {self.name} failed ({run.returncode}): {tail}; "
                              "check `adb devices` lists it as 'device'")
        return run

    def _shell(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._adb("shell", command, check=check)

    def push(self, files: list[Path]) -> None:
        state = self._adb("get-state", check=False)
        if state.returncode != 0 or state.stdout.strip() != "device":
            raise DeviceError(f"{self.name} is not ready over adb ({(state.stderr or state.stdout).strip()[:200]}); "
                              "connect it, allow USB debugging, and check `adb devices`")
        self._shell(f"mkdir -p {self.work}")
        extra = [RUNNER] if self.python else []
        for f in [*files, *extra, *[Path(p) for p in self.tools.values()]]:
            self._adb("push", str(f), f"{self.work}/{Path(f).name}")
        if self.tools:
            self._shell("chmod 755 " + " ".join(f"{self.work}/{Path(p).name}" for p in self.tools.values()))

    def probe(self) -> dict:
        """The device, and per runtime None when it can run there or why it cannot."""
        props = self._shell("getprop ro.product.model; getprop ro.product.cpu.abi; nproc").stdout.split("\n")
        model, abi, cpus = (props + ["", "", ""])[:3]
        info = {"device": self.name, "model": model.strip() or None, "abi": abi.strip() or None,
                "machine": "aarch64" if abi.strip() == "arm64-v8a" else abi.strip() or None,
                "cpu_count": int(cpus) if cpus.strip().isdigit() else None, "cpu_model": model.strip() or None,
                "governor": None, "emulated": None}
        runtimes = {r: None if r in self.tools else "no benchmark tool" for r in TOOLS}
        if self.python:
            run = self._shell(f"cd {self.work} && {self.python} runner.py --probe")
            lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise DeviceError(f"{self.python} on {self.name} did not run the edgeship runner; pass "
                                  "--remote-python a Python 3 with numpy on the device, or --benchmark-tool")
            probe = json.loads(lines[-1])
            runtimes = {r: None if r in self.tools else why for r, why in probe["runtimes"].items()}
            info |= {k: v for k, v in probe.items() if k != "runtimes" and v is not None}
        hint = ("pass --benchmark-tool RUNTIME=PATH (onnxruntime_perf_test, benchmark_model or executor_runner "
                "built for arm64-v8a)" + ("" if self.python else ", or --remote-python a Python on the device "
                                          "that has the runtime"))
        return info | {"runtimes": {r: why and f"{why}; {hint}" for r, why in runtimes.items()}}

    def bench(self, runtime: str, artifact: str, inputs: str, threads: int, budget_s: float,
              outputs_dir: Path, config: dict) -> dict:
        if runtime in self.tools:
            return self._bench_tool(runtime, artifact, threads, budget_s)
        out_name = f"out-{artifact}.npz"
        pairs = " ".join(f"{k}={v}" for k, v in config.items())
        command = (f"cd {self.work} && {self.python} runner.py {runtime} {artifact} {inputs} {threads} "
                   f"{budget_s} {out_name} {pairs}")
        result = parse_runner(self._shell(command, check=False), artifact, f"{runtime} on {self.name}")
        self._adb("pull", f"{self.work}/{out_name}", str(outputs_dir / out_name))
        return result

    def _bench_tool(self, runtime: str, artifact: str, threads: int, budget_s: float) -> dict:
        tool = f"{self.work}/{Path(self.tools[runtime]).name}"
        model = f"{self.work}/{artifact}"
        runs = 50
        command = {
            "onnxruntime": f"{tool} -e cpu -m duration -t {max(1, round(budget_s))} -x {threads} -I {model}",
            "litert": f"{tool} --graph={model} --num_threads={threads} --use_xnnpack=true "
                      f"--warmup_runs=5 --num_runs={runs} --max_secs={budget_s} --report_peak_memory_footprint=true"
                      + (" --enable_op_profiling=true" if self.op_profiles else ""),
            "executorch": f"{tool} --model_path={model} --num_executions={runs} --cpu_threads={threads}",
        }[runtime]
        run = self._shell(f"cd {self.work} && {command}", check=False)
        text = run.stdout + "\n" + run.stderr
        parsed = PARSERS[runtime](text)
        if run.returncode != 0 or parsed.get("median") is None:
            tail = (text.strip().splitlines() or ["no output"])[-1][:300]
            raise DeviceError(f"{TOOLS[runtime]} failed on {self.name} for {artifact} ({run.returncode}): {tail}")
        result = {"tool": TOOLS[runtime], "threads": threads, "machine": "aarch64"} | parsed
        if runtime == "litert" and self.op_profiles:
            result["profile"] = parse_benchmark_model_profile(text)
        return result

    def clean(self) -> None:
        self._shell(f"rm -rf {shlex.quote(self.work)}", check=False)


# --- the runtimes' own benchmark tools, their output turned into edgeship's row fields (ms) -------------

def _number(pattern: str, text: str) -> float | None:
    found = re.findall(pattern, text)
    return float(found[-1]) if found else None


def parse_onnxruntime_perf_test(text: str) -> dict:
    """onnxruntime_perf_test prints `Session creation time cost: S s`, `First inference time cost: N ms`,
    `Total inference requests: N`, `Peak working set size: B bytes`, `Min/P50/P90/P99 Latency: S s`."""
    seconds = lambda name: (lambda v: v * 1000 if v is not None else None)(_number(rf"{name}: ([\d.eE+-]+) s", text))
    peak = _number(r"Peak working set size: (\d+) bytes", text)
    runs = _number(r"Total inference requests: (\d+)", text)
    median = seconds("P50 Latency")
    return {"load_ms": seconds("Session creation time cost"),
            "first_inference_ms": _number(r"First inference time cost: ([\d.]+) ms", text),
            "runs": int(runs) if runs is not None else None, "median": median, "p90": seconds("P90 Latency"),
            "p99": seconds("P99 Latency"), "min": seconds("Min Latency"),
            "spread": _spread(seconds("P90 Latency"), seconds("Min Latency"), median),
            "peak_rss_mb": round(peak / 2**20, 1) if peak is not None else None}


def parse_benchmark_model(text: str) -> dict:
    """LiteRT's benchmark_model prints `Inference timings in us: Init: A, First inference: B, Warmup (avg):
    C, Inference (avg): D`, per-phase `count=N first= curr= min= max= avg= std= [p5= median= p95=]` (us), and
    `Peak memory footprint (MB): init=X overall=Y` with --report_peak_memory_footprint."""
    stats = re.findall(r"count=(\d+) first=\S+ curr=\S+ min=([\d.]+) max=([\d.]+) avg=([\d.]+) std=\S+"
                       r"(?: p5=([\d.]+) median=([\d.]+) p95=([\d.]+))?", text)
    count, low, _, avg, _, median, p95 = stats[-1] if stats else (None,) * 7
    us = lambda v: round(float(v) / 1000, 4) if v not in (None, "") else None
    init = _number(r"Inference timings in us: Init: ([\d.]+)", text)
    first = _number(r"First inference: ([\d.]+)", text)
    median_ms = us(median) if median else us(avg)  # older builds print no percentiles: the mean stands in
    return {"load_ms": us(init), "first_inference_ms": us(first), "runs": int(count) if count else None,
            "median": median_ms, "median_is_mean": not median and avg is not None, "p90": None,
            "p95": us(p95), "p99": None, "min": us(low), "spread": _spread(us(p95), us(low), median_ms),
            "peak_rss_mb": _number(r"Peak memory footprint \(MB\): init=[\d.]+ overall=([\d.]+)", text)}


_XNNPACK_INT8 = ("QS8", "QD8", "QC8", "QU8", "QC4", "QB4")  # XNNPACK operator names carry their datatypes
_LITERT_BOOKKEEPING = ("LiteRT::", "AllocateTensors", "ModifyGraphWithDelegate", "TfLiteXNNPackDelegate", "DELEGATE")


def parse_benchmark_model_profile(text: str) -> dict:
    """benchmark_model --enable_op_profiling prints `Summary by node type` tables ([node type] [count]
    [avg ms] [avg %] [cdf %] [mem KB] [times called]) for initialization and for the benchmark runs;
    the runs' tables are read. Ops inside the XNNPACK delegate are listed by XNNPACK operator names
    (mixed case, with their datatypes: "Fully Connected (NC, QD8, F32, QC8W) GEMM"); TFLite's own
    kernels by builtin names (FULLY_CONNECTED), which ran outside the delegate."""
    rows: dict[str, dict] = {}
    parts = text.split("Summary by node type")
    phase = "runs"
    for before, part in zip(parts[:-1], parts[1:]):
        if "Benchmark Initialization" in before or "Regular Benchmark Runs" in before:
            phase = "init" if before.rfind("Benchmark Initialization") > before.rfind("Regular Benchmark Runs") else "runs"
        if phase == "init":
            continue
        for line in part.splitlines()[2:]:
            cells = [c.strip() for c in line.split("\t") if c.strip()]
            if not cells:
                break
            try:
                name, count, ms, share = cells[0], int(cells[1]), float(cells[2]), float(cells[3].rstrip("%")) / 100
            except (ValueError, IndexError):
                continue
            builtin = name.replace("_", "").isalnum() and name.upper() == name
            flag = None if name.startswith(_LITERT_BOOKKEEPING) else \
                False if builtin else any(marker in name for marker in _XNNPACK_INT8)
            row = rows.setdefault(name, {"op": name, "ms_per_run": 0.0, "share": 0.0, "count": 0, "int8": flag})
            row["ms_per_run"] = round(row["ms_per_run"] + ms, 4)
            row["share"] = round(row["share"] + share, 4)
            row["count"] += count
    return {"runtime": "litert", "timed": True, "source": "benchmark_model --enable_op_profiling",
            "note": "int8 marks XNNPACK operators with int8 datatypes; TFLite builtin kernels ran outside the delegate",
            "ops": sorted(rows.values(), key=lambda r: -r["ms_per_run"])}


def parse_executor_runner(text: str) -> dict:
    """ExecuTorch's executor_runner prints `Model executed successfully N time(s) in T ms.` (a total)."""
    found = re.findall(r"Model executed successfully (\d+) time\(s\) in ([\d.]+) ms", text)
    if not found:
        return {"median": None}
    runs, total = int(found[-1][0]), float(found[-1][1])
    return {"load_ms": None, "first_inference_ms": None, "runs": runs, "median": round(total / runs, 4),
            "median_is_mean": True, "p90": None, "p99": None, "min": None, "spread": None, "peak_rss_mb": None}


def _spread(high: float | None, low: float | None, median: float | None) -> float | None:
    return round((high - low) / median, 4) if None not in (high, low, median) and median else None


PARSERS = {"onnxruntime": parse_onnxruntime_perf_test, "litert": parse_benchmark_model,
           "executorch": parse_executor_runner}
