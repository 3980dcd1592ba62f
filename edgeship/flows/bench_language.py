"""Language-model artifacts timed with one method for every runtime (runtimes/runner.py --llm, a fresh
process each, here or on an ssh:// device): load time, time to first token and prefill tokens/s over a
128-token prompt, decode tokens/s over 128 greedy tokens, peak memory, size; bench.json and the manifest's
`bench` record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgeship.errors import ConfigError, DeviceError
from edgeship.flows import Progress
from edgeship.report.manifest import write_json


def bench_language(out_dir: Path, manifest: dict, artifacts: list[str] | None, threads: int | None,
                   progress: Progress, device=None, refused: str | None = None) -> tuple[dict, list[dict]]:
    """(host, rows): every chosen artifact of a language-model export timed with `threads` (default: the
    target's, capped by the cores of the machine that runs it), here or on `device` (a connected ssh://
    device: the artifacts and the runner are copied there). `refused`: options that do not apply to
    language models, named in the error."""
    from edgeship.runtimes.bench import host_info

    if refused:
        raise ConfigError(f"language-model artifacts are timed without {refused}; drop it")
    chosen = [a for a in manifest["artifacts"] if not artifacts or a["path"] in artifacts]
    if artifacts and len(chosen) != len(set(artifacts)):
        raise ConfigError(f"no artifact named {sorted(set(artifacts) - {a['path'] for a in chosen})} in {out_dir}; "
                          f"artifacts: {', '.join(a['path'] for a in manifest['artifacts'])}")
    threads = threads or manifest["target"].get("threads", 1)
    advance = progress("bench language-model artifacts", len(chosen))
    if device is not None:
        host, rows = _on_device(out_dir, chosen, threads, manifest["max_seq_len"], device, advance)
    else:
        host, rows = host_info(), []
        threads = max(1, min(threads, os.cpu_count() or 1))
        for artifact in chosen:
            rows.append(_row(artifact, threads) | _measure(artifact["runtime"], out_dir / artifact["path"], threads,
                                                           manifest["max_seq_len"]))
            advance(1)
    record = {"host": host, "rows": rows}
    write_json(out_dir / "bench.json", record)
    write_json(out_dir / "manifest.json", manifest | {"bench": record})
    return host, rows


def _row(artifact: dict, threads: int) -> dict:
    return {"path": artifact["path"], "runtime": artifact["runtime"], "precision": artifact["precision"],
            "size_bytes": artifact["size_bytes"], "threads": threads}


def _measure(runtime: str, path: Path, threads: int, context: int) -> dict:
    from edgeship.runtimes.bench import RUNNER, parse_runner

    done = subprocess.run([sys.executable, str(RUNNER), "--llm", runtime, str(path), str(threads), str(context)],
                          capture_output=True, text=True)
    return parse_runner(done, path.name, runtime)


def _on_device(out_dir: Path, chosen: list[dict], threads: int, context: int, device, advance
               ) -> tuple[dict, list[dict]]:
    """The device's description and one row per artifact, each timed there by the runner."""
    if not hasattr(device, "bench_language"):
        raise DeviceError(f"{device.address}: language-model artifacts are timed on ssh:// devices (or here); "
                          "on Android time them with the runtimes' own LLM runners")
    device.push([out_dir / name for a in chosen for name in (a["path"], a.get("data")) if name])
    try:
        probe = device.probe()
        why = probe.get("language_runtimes", {})
        missing = {a["runtime"]: why[a["runtime"]] for a in chosen if why.get(a["runtime"]) is not None}
        if missing:
            raise DeviceError(f"{device.address} cannot run " + "; ".join(f"{r} ({why})" for r, why in missing.items())
                              + ": install onnxruntime-genai, executorch or litert-lm-api there for "
                              "--remote-python, or choose artifacts with --artifact")
        threads = max(1, min(threads, probe.get("cpu_count") or threads))
        rows = []
        for a in chosen:
            rows.append(_row(a, threads) | {"device": device.address}
                        | device.bench_language(a["runtime"], a["path"], threads, context))
            advance(1)
    finally:
        device.clean()
    return probe, rows
