"""The bench flow: every artifact of an export folder timed with one method, here or on a remote device
(whose outputs are checked against this machine's), with per-op profiles, fallback gates and
regressions against an earlier run; bench.json and the manifest's `bench` record."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeship import outputs
from edgeship.errors import ConfigError, DeviceError
from edgeship.flows import Progress, no_progress
from edgeship.report.manifest import read_manifest, write_json


@dataclass(frozen=True)
class BenchResult:
    out_dir: Path
    host: dict
    rows: list[dict]  # one per artifact: path, runtime, precision, and the measurements
    ratios: dict  # "int8/fp32 <runtime>" and "<artifact>/fastest int8" median ratios, one run
    regressions: list[dict]  # against --baseline: artifacts whose median regressed beyond the noise

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def bench(out_dir: str | Path, *, artifacts: list[str] | None = None, threads: int | None = None,
          budget_s: float = 2.0, baseline: str | Path | None = None, threshold: float = 0.05,
          profile: bool = False, fail_on_fallback: bool = False, min_delegated: float | None = None,
          device: str | None = None, ssh_config: str | Path | None = None, remote_python: str | None = None,
          setup: bool = False, benchmark_tools: dict[str, str] | None = None,
          progress: Progress = no_progress) -> BenchResult:
    """Time every artifact of an export folder with one method (fresh process each: load time,
    first inference, warm-up, runs until the median is stable or `budget_s`, median/p90/p99/min,
    spread, peak memory). Writes OUT_DIR/bench.json and adds it to manifest.json. With `baseline`
    (an earlier bench.json), medians slower by more than max(threshold, the two runs' spread) are
    regressions. `profile` adds per-op profiles; `fail_on_fallback` / `min_delegated` (a share)
    turn int8 artifacts with ops outside int8 kernels or the delegate into failures. `device`
    (ssh://[user@]host[:port], adb://SERIAL, or a device profile with an `address`) runs the same runner
    there and checks each artifact's outputs against this machine's (`vs_host_steps` for int8,
    `vs_host_relative` for fp32); `setup` first installs the runtime wheels on an ssh device;
    `benchmark_tools` (runtime -> local path) runs the runtimes' own benchmark binaries on an adb device."""
    from edgeship.runtimes.bench import bench_artifact, host_info

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest = read_manifest(out_dir)
    if manifest.get("kind") == "language_model":
        return _language(out_dir, manifest, artifacts, threads, progress, device, ssh_config, remote_python, {
            "--profile": profile, "--baseline": baseline, "--fail-on-fallback": fail_on_fallback,
            "--min-delegated": min_delegated is not None, "--setup": setup, "--benchmark-tool": benchmark_tools})
    inputs = out_dir / "sample_inputs.npz"
    if not inputs.is_file():
        raise ConfigError(f"{out_dir} has no sample_inputs.npz (exported by an older edgeship); re-export it")
    chosen = [a for a in manifest["artifacts"] if not artifacts or a["path"] in artifacts]
    if artifacts and len(chosen) != len(set(artifacts)):
        known = ", ".join(a["path"] for a in manifest["artifacts"])
        raise ConfigError(f"no artifact named {sorted(set(artifacts) - {a['path'] for a in chosen})} in "
                          f"{out_dir}; artifacts: {known}")
    threads = threads or manifest["target"].get("threads", 1)
    threads = max(1, min(threads, os.cpu_count() or 1))
    advance = progress("bench", len(chosen))
    rows, mismatches = [], []
    if device is not None:
        dev = _device(device, ssh_config, remote_python, benchmark_tools)
        dev.op_profiles = profile or fail_on_fallback or min_delegated is not None
        rows, mismatches = _bench_remote(out_dir, chosen, inputs, threads, budget_s, dev, setup, advance)
    for a in chosen if device is None else []:
        rows.append({"path": a["path"], "runtime": a["runtime"], "precision": a["precision"]}
                    | bench_artifact(a["runtime"], out_dir / a["path"], inputs, threads, budget_s))
        advance(1)
    gate = mismatches
    if profile or fail_on_fallback or min_delegated is not None:
        gate += _profiles(out_dir, rows, inputs, threads, fail_on_fallback, min_delegated, progress)
    host = host_info() if device is None else rows[0]["device_info"] if rows else {}
    result = BenchResult(out_dir, host, rows, _ratios(rows),
                         (_regressions(rows, Path(baseline), threshold) if baseline else []) + gate)
    record = {"host": result.host, "rows": rows, "ratios": result.ratios}
    write_json(out_dir / "bench.json", record)
    manifest["bench"] = record
    write_json(manifest_path, manifest)
    from edgeship.report.markdown import report

    outputs.write_text(out_dir / "report.md", report(manifest))
    return result


def _language(out_dir: Path, manifest: dict, artifacts, threads, progress: Progress, device, ssh_config,
              remote_python, options: dict) -> BenchResult:
    """A language-model export timed here or on an ssh:// device; `options` given that do not apply to it
    are refused."""
    from edgeship.flows.bench_language import bench_language

    refused = ", ".join(name for name, given in options.items() if given)
    dev = _device(device, ssh_config, remote_python, None) if device is not None and not refused else None
    return BenchResult(out_dir, *bench_language(out_dir, manifest, artifacts, threads, progress, dev, refused), {}, [])


# outputs on a device against this machine's: int8 kernels may round a requantization the other way
# (one output step); float kernels sum in another order
DEVICE_INT8_STEPS, DEVICE_FP32_RELATIVE = 1.0, 1e-4


def _device(address: str, ssh_config, python: str | None, tools: dict[str, str] | None):
    """A remote device from an address, or from a device profile (name or .toml) that has one."""
    from edgeship.runtimes.connect import connect
    from edgeship.targets.devices import load_device

    if "://" not in address:
        profile = load_device(address)
        if profile.address is None:
            raise ConfigError(f"device profile {profile.name!r} has no address; add `address = \"ssh://user@host\"`"
                              " (or adb://SERIAL) to your copy of it, or pass --device ssh://... directly")
        address, python = profile.address, python or profile.python
        tools = {**profile.benchmark_tools, **(tools or {})}
    return connect(address, Path(ssh_config) if ssh_config else None, python,
                   {r: Path(p).expanduser() for r, p in (tools or {}).items()})


def _bench_remote(out_dir: Path, chosen: list[dict], inputs: Path, threads: int, budget_s: float, dev,
                  setup: bool, advance) -> tuple[list[dict], list[dict]]:
    """Rows measured on the device, and the artifacts whose device outputs differ from this machine's."""
    import numpy as np

    from edgeship.backends.onnxruntime.session import ARM_SESSION_CONFIG
    from edgeship.runtimes.bench import SETUP_DISTRIBUTIONS, bench_artifact, output_differences

    scales = json.loads((out_dir / "manifest.json").read_text()).get("int8_output_scales")
    dev.push([out_dir / a["path"] for a in chosen] + [inputs])
    try:
        needed = sorted({a["runtime"] for a in chosen})
        probe = dev.probe()
        if setup:
            if not hasattr(dev, "setup"):
                raise DeviceError("--setup installs wheels on ssh:// Linux devices; on Android give --remote-python "
                                  "a Python that has the runtimes, or --benchmark-tool RUNTIME=PATH")
            dev.setup([r for r in needed if r in SETUP_DISTRIBUTIONS or probe["runtimes"].get(r)], probe)
            probe = dev.probe()
        missing = {r: probe["runtimes"].get(r, "unknown runtime") for r in needed if probe["runtimes"].get(r) is not None}
        if missing:
            fix = ("pass --setup to install onnxruntime / ai-edge-litert there, install the others yourself, or "
                   if hasattr(dev, "setup") else "")
            raise DeviceError(f"{dev.address} cannot run " + "; ".join(f"{r} ({why})" for r, why in missing.items())
                              + f": {fix}choose artifacts with --artifact")
        rows, mismatches = [], []
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for a in chosen:
                # the device's numerics: ONNX Runtime keeps int8 QDQ signed, as its ARM builds do
                config = ARM_SESSION_CONFIG if a["runtime"] == "onnxruntime" else {}
                remote = dev.bench(a["runtime"], a["path"], inputs.name, threads, budget_s, tmp, config)
                row = {"path": a["path"], "runtime": a["runtime"], "precision": a["precision"],
                       "device": dev.address, "device_info": probe} | remote
                if "tool" in remote:  # the runtime's own benchmark binary: its own inputs, no outputs back
                    rows.append(row | {"vs_host_max_abs": None})
                    advance(1)
                    continue
                local_out = tmp / f"host-{a['path']}.npz"
                bench_artifact(a["runtime"], out_dir / a["path"], inputs, threads, 0.05, local_out, config)
                diffs = output_differences(tmp / f"out-{a['path']}.npz", local_out)
                row["vs_host_max_abs"] = max(diffs)
                if a["precision"] == "int8" and scales and None not in scales and len(scales) == len(diffs):
                    row["vs_host_steps"] = round(max(d / s for d, s in zip(diffs, scales)), 3)
                    allowed, measured = DEVICE_INT8_STEPS, row["vs_host_steps"]
                else:
                    with np.load(local_out) as host_out:
                        magnitude = max(float(np.max(np.abs(host_out[k]))) for k in host_out.files) or 1.0
                    allowed, measured = DEVICE_FP32_RELATIVE, max(diffs) / magnitude
                    row["vs_host_relative"] = measured
                if measured > allowed:
                    mismatches.append({"path": a["path"], "gate": "device_outputs", "measured": measured,
                                       "allowed": allowed, "unit": "steps" if "vs_host_steps" in row else "relative"})
                rows.append(row)
                advance(1)
    finally:
        dev.clean()
    return rows, mismatches


def _profiles(out_dir: Path, rows: list[dict], inputs: Path, threads: int, fail_on_fallback: bool,
              min_delegated: float | None, progress: Progress) -> list[dict]:
    """Adds `profile` and `delegated_share` to each row; returns the gate failures."""
    import numpy as np

    from edgeship.runtimes.profile import delegated_share, fallbacks, profile

    with np.load(inputs) as data:
        arrays = [data[k] for k in data.files]
    failures = []
    advance = progress("per-op profiles", len(rows))
    for row in rows:
        # the device's own profile where its tool made one; else this machine's run of the artifact
        prof = row.get("profile") or profile(row["runtime"], out_dir / row["path"], arrays, threads)
        row["profile"], row["delegated_share"] = prof, delegated_share(prof)
        advance(1)
        if row["precision"] != "int8":
            continue
        fell_back = fallbacks(prof)
        if fail_on_fallback and fell_back:
            failures.append({"path": row["path"], "gate": "fallback", "ops": fell_back})
        if min_delegated is not None and row["delegated_share"] < min_delegated:
            failures.append({"path": row["path"], "gate": "min_delegated", "share": row["delegated_share"],
                             "required": min_delegated})
    return failures


def _ratios(rows: list[dict]) -> dict:
    ratios = {}
    for runtime in sorted({r["runtime"] for r in rows}):
        fp32 = [r for r in rows if r["runtime"] == runtime and r["precision"] == "fp32"]
        for r in rows:
            if fp32 and r["runtime"] == runtime and r["precision"] != "fp32":
                ratios[f"{r['path']} / {fp32[0]['path']}"] = round(r["median"] / fp32[0]["median"], 3)
    for precision in sorted({r["precision"] for r in rows} - {"fp32"}):  # int8, int4 or int8-dynamic
        same = [r for r in rows if r["precision"] == precision]
        fastest = min(same, key=lambda r: r["median"])
        for r in same:
            ratios[f"{r['path']} / {fastest['path']} (fastest {precision})"] = round(r["median"] / fastest["median"], 3)
    return ratios


def _regressions(rows: list[dict], baseline: Path, threshold: float) -> list[dict]:
    if not baseline.is_file():
        raise ConfigError(f"baseline {baseline} does not exist; pass a bench.json from an earlier run")
    try:
        base = {r["path"]: r for r in json.loads(baseline.read_text())["rows"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"baseline {baseline} is not a bench.json ({exc}); pass one written by edgeship bench") from exc
    found = []
    for r in rows:
        old = base.get(r["path"])
        if old is None:
            continue
        allowed = max(threshold, (old.get("spread") or 0.0) + (r.get("spread") or 0.0))
        change = r["median"] / old["median"] - 1.0
        if change > allowed:
            found.append({"path": r["path"], "baseline_median": old["median"], "median": r["median"],
                          "change": round(change, 4), "allowed": round(allowed, 4)})
    return found
