"""SmolLM2-135M-Instruct's token table and tied output head at int8 with one scale per row (edgeship's int4
recipe) against int4 in groups of 32 (symmetric, as ExecuTorch's `embedding_quantize 4,32` stores it, and
asymmetric), in PyTorch, weights only: perplexity increase over float by subject, top-1 agreement, KL and greedy
tokens equal to float's, on the windows and prompts edgeship's export verifies with. The table is 28% of the
int4 artifacts (49,152 x 576), so this decides whether an int4 table is worth offering. The block layers
are float here, which for this checkpoint is exactly their int4 (Q4_1) values.

    .venv/bin/python benchmarks/llm_table_bits.py
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from llm_export import MODEL, model_path  # noqa: E402
from llm_perplexity import WIKITEXT, subjects  # noqa: E402
from minilm_accuracy import machine  # noqa: E402

LENGTH = 1024  # edgeship's default --max-seq-len for this model


def int8_rows(w: torch.Tensor) -> torch.Tensor:
    """int8, one scale per row, as the int4 recipe stores a table (quantize/grid.py)."""
    from edgeship.quantize.grid import quantize_weight

    q, scale = quantize_weight(w, w.shape[1], bits=8)
    return q.float() * scale


def int4_groups(w: torch.Tensor, asymmetric: bool, group: int = 32) -> torch.Tensor:
    """int4 in groups of `group` columns, symmetric or with a free offset per group (quantize/grid.py)."""
    from edgeship.quantize.grid import quantize_affine, quantize_weight

    blocks = (w.shape[0], w.shape[1] // group, group)
    if asymmetric:
        q, scale, offset = quantize_affine(w, group, whole=False)
        return (q.reshape(blocks).float() * scale[..., None] + offset[..., None]).reshape(w.shape)
    q, scale = quantize_weight(w, group)
    return (q.reshape(blocks).float() * scale[..., None]).reshape(w.shape)


VARIANTS = {
    "table and head int8 per row (edgeship int4 recipe)": (int8_rows, int8_rows),
    "table and head int4 g32 symmetric": (lambda w: int4_groups(w, False), lambda w: int4_groups(w, False)),
    "table and head int4 g32 asymmetric": (lambda w: int4_groups(w, True), lambda w: int4_groups(w, True)),
    "table int4 g32 symmetric, head int8 per row": (lambda w: int4_groups(w, False), int8_rows),
    "table int8 per row, head int4 g32 symmetric": (int8_rows, lambda w: int4_groups(w, False)),
}


def variant(model: torch.nn.Module, table_rule, head_rule) -> torch.nn.Module:
    out = copy.deepcopy(model)
    weight = model.get_input_embeddings().weight.detach()
    out.get_input_embeddings().weight = torch.nn.Parameter(table_rule(weight))
    out.get_output_embeddings().weight = torch.nn.Parameter(head_rule(weight))  # untied: each its own values
    return out


def main() -> None:
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.flows.language import _float_reference, _windows
    from edgeship.flows.language_artifacts import _verify

    started = time.perf_counter()
    lm = load_causal_lm(str(model_path()))
    texts = {"calibration": (WIKITEXT / "valid.txt").read_text()}
    texts |= dict(zip(("wiki", "code", "legal"), subjects().values()))
    _, windows = _windows(lm.tokenizer, texts, LENGTH, gptq=False)
    quiet = lambda stage, total: (lambda n: None)  # noqa: E731
    reference = _float_reference(lm, windows, LENGTH, quiet)
    rows = []
    for name, (table_rule, head_rule) in VARIANTS.items():
        model = variant(lm.model, table_rule, head_rule).eval()

        def logits_of(ids: list[int]) -> torch.Tensor:
            with torch.no_grad():
                return model(torch.tensor([ids])).logits[0].float()

        def greedy_of(ids: list[int], count: int) -> list[int]:
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=count, min_new_tokens=count,
                                 pad_token_id=lm.tokenizer.eos_token_id)
            return out[0, len(ids):].tolist()

        record = _verify(logits_of, greedy_of, lm.tokenizer, windows, reference, quiet, name)
        rows.append({"variant": name, "subjects": record["subjects"],
                     "greedy_equal_prompts": record["greedy_equal_prompts"],
                     "first_divergence": [g["first_divergence"] for g in record["generation"]]})
        scores = record["subjects"]
        print(f"{name}: " + ", ".join(f"{k} {100 * v['perplexity_increase']:+.2f}% KL {v['kl_divergence']:.4f}"
                                      for k, v in scores.items()) + f"; greedy {record['greedy_equal_prompts']}",
              flush=True)
    rows_, cols = lm.model.get_input_embeddings().weight.shape
    result = {"benchmark": "llm_table_bits", "model": MODEL,
              "table": [rows_, cols], "table_bytes": {"int8 per row": rows_ * (cols + 4),
                                                      "int4 g32 symmetric": rows_ * cols // 2 + rows_ * cols // 32 * 4},
              "machine": machine(),
              "subjects_float": reference["scores"], "rows": rows, "seconds": round(time.perf_counter() - started, 1)}
    out = ROOT / "benchmarks" / "results" / "llm_table_bits.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
