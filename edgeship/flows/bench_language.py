"""Language-model artifacts timed with one method for every runtime (runtimes/llm_bench.py, a fresh
process each): load time, time to first token and prefill tokens/s over a 128-token prompt, decode
tokens/s over 128 greedy tokens, peak memory, size; bench.json and the manifest's `bench` record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgeship.errors import ConfigError, EdgeshipError
from edgeship.flows import Progress
from edgeship.report.manifest import write_json


def bench_language(out_dir: Path, manifest: dict, artifacts: list[str] | None, threads: int | None,
                   progress: Progress, only_here: bool = True) -> tuple[dict, list[dict]]:
    """(host, rows): every chosen artifact of a language-model export timed here with `threads` (default:
    the target's, capped by this machine's cores). `only_here` False (a device, profiles, a baseline or
    gates were asked for): refused."""
    from edgeship.runtimes.bench import host_info

    if not only_here:
        raise ConfigError("language-model artifacts are timed on this machine only, without --device, "
                          "--profile, --baseline or fallback gates; drop those options")
    chosen = [a for a in manifest["artifacts"] if not artifacts or a["path"] in artifacts]
    if artifacts and len(chosen) != len(set(artifacts)):
        raise ConfigError(f"no artifact named {sorted(set(artifacts) - {a['path'] for a in chosen})} in {out_dir}; "
                          f"artifacts: {', '.join(a['path'] for a in manifest['artifacts'])}")
    threads = max(1, min(threads or manifest["target"].get("threads", 1), os.cpu_count() or 1))
    advance = progress("bench language-model artifacts", len(chosen))
    rows = []
    for artifact in chosen:
        rows.append({"path": artifact["path"], "runtime": artifact["runtime"], "precision": artifact["precision"],
                     "size_bytes": artifact["size_bytes"], "threads": threads}
                    | _measure(artifact["runtime"], out_dir / artifact["path"], threads, manifest["max_seq_len"]))
        advance(1)
    host = host_info()
    record = {"host": host, "rows": rows}
    write_json(out_dir / "bench.json", record)
    write_json(out_dir / "manifest.json", manifest | {"bench": record})
    return host, rows


def _measure(runtime: str, path: Path, threads: int, context: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "edgeship.runtimes.llm_bench", runtime, str(path), str(threads),
                           str(context)], capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EdgeshipError(f"{path.name} ({runtime}) could not be timed: {tail[:300]}; re-export it")
    return json.loads(done.stdout.strip().splitlines()[-1])
