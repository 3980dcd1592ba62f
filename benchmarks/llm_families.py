"""Every supported language-model family through the README's export command: a 2-layer model of each
(Llama tied and untied, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3, GPT-2) with random weights and a byte-level
BPE tokenizer trained here, saved as a Hugging Face folder the way transformers writes it (vocabulary
padded past the tokenizer's, as real checkpoints often are), exported int4 for the host (all three
runtimes) and verified; per family, the artifacts written, each one's perplexity increase, its LLM
runner's text against the verified greedy text, and what was not produced, with why. Random weights:
it checks the machinery on each family's graph, not accuracy. Writes benchmarks/results/llm_families.json.

    .venv/bin/python benchmarks/llm_families.py [--families qwen2 gemma3 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from minilm_accuracy import save  # noqa: E402

TEXT = " ".join(f"the {a} {b} sat on the {c} mat ." for a in ("red", "big", "old", "shy") for b in ("cat", "dog", "owl")
                for c in ("blue", "flat", "warm", "soft", "new")) * 4
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128)


def families() -> dict:
    import transformers as t

    return {"llama": (t.LlamaConfig, t.LlamaForCausalLM, dict(tie_word_embeddings=True)),
            "llama-untied": (t.LlamaConfig, t.LlamaForCausalLM, dict(tie_word_embeddings=False)),
            "qwen2": (t.Qwen2Config, t.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
            "qwen3": (t.Qwen3Config, t.Qwen3ForCausalLM, dict(tie_word_embeddings=True, head_dim=16)),
            "gemma2": (t.Gemma2Config, t.Gemma2ForCausalLM, dict(head_dim=16, sliding_window=32)),
            "gemma3": (t.Gemma3TextConfig, t.Gemma3ForCausalLM, dict(head_dim=16, sliding_window=32)),
            "phi3": (t.Phi3Config, t.Phi3ForCausalLM, dict(tie_word_embeddings=False, pad_token_id=0,
                                                        original_max_position_embeddings=128)),
            "gpt2": (t.GPT2Config, t.GPT2LMHeadModel, None)}


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")


def build(name: str, folder: Path, tok) -> None:
    config_class, model_class, extra = families()[name]
    vocab = len(tok) + 20  # padded past the tokenizer, as real checkpoints often are
    if extra is None:  # GPT-2 names its sizes its own way
        config = config_class(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    else:
        config = config_class(vocab_size=vocab, **SHAPE, **extra, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model_class(config).eval().save_pretrained(folder)
    tok.save_pretrained(folder)


def export(name: str, work: Path, tok) -> dict:
    from edgeship.errors import EdgeshipError
    from edgeship.flows.language import export_language

    folder = work / name
    build(name, folder, tok)
    started = time.time()
    try:
        manifest = export_language(str(folder), "host", work / "text.txt", out=work / "out", max_seq_len=64,
                                   eval_data={"text": work / "text.txt"}).manifest
    except EdgeshipError as exc:
        return {"family": name, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.time() - started, 1)}
    return {"family": name, "seconds": round(time.time() - started, 1),
            "artifacts": [{"runtime": a["runtime"], "path": a["path"], **({"data": a["data"]} if "data" in a else {}),
                           "perplexity_increase": a["subjects"]["text"]["perplexity_increase"],
                           "top1_agreement": a["subjects"]["text"]["top1_agreement"],
                           "runner_equals_greedy": a.get("runner", {}).get("equals_greedy")}
                          for a in manifest["artifacts"]],
            "not_produced": manifest.get("not_produced", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(families()))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_families.json")
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgeship-families-"))
    (work / "text.txt").write_text(TEXT)
    tok = tokenizer()
    rows = []
    for name in args.families:
        rows.append(export(name, work, tok))
        print(rows[-1], flush=True)
    save({"benchmark": "llm_families", "recipe": "int4", "target": "host", "max_seq_len": 64}, rows, started,
         args.out, work)


if __name__ == "__main__":
    main()
