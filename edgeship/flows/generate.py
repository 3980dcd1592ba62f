"""`edgeship generate`: text from a language-model export, run by the chosen runtime's own LLM runner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeship.errors import ConfigError


@dataclass(frozen=True)
class GenerateResult:
    text: str
    tokens: int
    decode_tokens_per_s: float
    stats: dict


def generate(out_dir: str | Path, prompt: str, *, runtime: str = "executorch", max_new_tokens: int = 128,
             chat: bool = True, stream: bool = False) -> GenerateResult:
    """Greedy text after `prompt` (in the tokenizer's chat template when it has one and `chat`) from the
    `runtime` artifact of the language-model export at `out_dir`, run by that runtime's LLM runner;
    `stream`: each piece written to standard output as it comes."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("kind") != "language_model":
        raise ConfigError(f"{out_dir} is not a language-model export (no manifest.json of one); pass the folder "
                          "`edgeship export` wrote for a language model, out/<model>/<target>")
    found = [a for a in manifest["artifacts"] if a["runtime"] == runtime]
    if not found:
        raise ConfigError(f"{out_dir} has no {runtime} artifact; it has "
                          f"{', '.join(a['runtime'] for a in manifest['artifacts'])}: pass one with --runtime")
    tokenizer = AutoTokenizer.from_pretrained(out_dir / "tokenizer", local_files_only=True)
    if chat and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    if runtime == "onnxruntime":
        from edgeship.backends.onnxruntime.genai import genai_generate

        text, stats = genai_generate(out_dir / found[0]["path"], prompt, max_new_tokens, stream)
        decode_ms = stats["decode_ms"]
    elif runtime == "litert":
        from edgeship.backends.litert.decoder import runner_generate as litert_generate

        text, stats = litert_generate(out_dir / found[0]["path"], prompt, max_new_tokens, manifest["max_seq_len"],
                                      stream)
        decode_ms = stats["decode_ms"]
    else:
        from edgeship.backends.executorch.decoder import runner_generate

        text, stats = runner_generate(out_dir / found[0]["path"], out_dir / found[0]["tokenizer"], prompt,
                                      max_new_tokens, stream)
        decode_ms = stats.get("inference_end_ms", 0) - stats.get("first_token_ms", 0)
    tokens = stats["pieces"]
    rate = (tokens - 1) * 1000.0 / decode_ms if decode_ms > 0 and tokens > 1 else 0.0
    return GenerateResult(text, tokens, rate, stats)
