"""The language-model export flow: a causal LM (a Hugging Face folder or a .gguf) and its own tokenizer;
its decoder weights computed once (int4 block-wise by GPTQ over the calibration text, or int8 per
channel; embeddings and a tied head int8 per row); lowered with a static KV cache for each runtime of
the target that takes language models; each artifact verified through its runtime on every evaluation
text (perplexity, next-token agreement and KL against float in PyTorch) and by greedy generation from
fixed prompts against float's; written to `out/<model>/<target>/` atomically with a manifest and report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgeship import outputs
from edgeship.errors import ConfigError
from edgeship.flows import Progress, language_artifacts, language_budget, no_progress
from edgeship.flows.export import ExportResult

DEFAULT_SEQ_LEN = 1024  # the KV cache's positions, unless --max-seq-len (or the model's own limit) says less
CALIBRATION_WINDOWS, CALIBRATION_LENGTH = 32, 512  # GPTQ's text: up to 32 windows of 512 tokens
EVAL_WINDOWS, EVAL_LENGTH = 8, 256  # each evaluation text: up to 8 teacher-forced windows of 256 tokens
NEW_TOKENS = 32  # greedy generation per prompt
PROMPTS = ("The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "The main causes of the First World War were", "To make a good cup of tea, you")
INT4_OFFSETS = ("checkpoint", "whole")  # LanguageRecipe.offsets
MIN_SEQ_LEN = 16  # the shortest KV cache edgeship writes (--max-seq-len, a project's max_seq_len)
LANGUAGE_RUNTIMES = ("executorch", "onnxruntime", "litert")  # the runtimes whose language-model artifacts edgeship writes


@dataclass(frozen=True)
class LanguageRecipe:
    """How a decoder's linear layers are quantized: `bits` 4 with one scale per `group` input channels,
    or 8 with one per output channel (`group` None); `gptq` over the calibration text, else nearest.
    `offsets` (int4): "checkpoint", layers of a checkpoint already on an int4 grid with free offsets (GGUF's
    Q4_1) keep its values exactly, each runtime computing those offsets beside its int4 kernel; "whole",
    every offset a whole number of steps, the integer zero points the int4 kernels take (smaller and faster
    to decode; such a checkpoint's values are rounded again)."""

    name: str
    bits: int
    group: int | None
    gptq: bool
    asymmetric: bool = False  # int4: an offset per group too (values q * scale + offset)
    offsets: str = "checkpoint"

    @property
    def precision(self) -> str:
        return {4: "int4", 8: "int8"}.get(self.bits, "fp32")


def language_recipe(name: str) -> LanguageRecipe:
    """The recipe named `name` as a decoder takes it: w4a8 recipes give int4, int8 ones per-channel int8
    weights with dynamic activations; others are refused."""
    from edgeship.quantize.recipe import recipe_by_name

    if name == "fp32":  # the float reference artifacts, for comparing sizes and speeds
        return LanguageRecipe("fp32", 32, None, False)
    recipe = recipe_by_name(name)
    if recipe.scheme == "w4a8":
        return LanguageRecipe(recipe.name, 4, recipe.group_size, "gptq" in recipe.algorithms, asymmetric=True)
    if recipe.scheme in ("w8a8", "w8a8-dynamic") and recipe.name in ("int8", "int8-dynamic"):
        return LanguageRecipe(recipe.name, 8, None, "gptq" in recipe.algorithms and recipe.scheme != "w8a8")
    raise ConfigError(f"recipe {recipe.name} does not apply to a language model; use --recipe int4 (int4 "
                      "block-wise weights), --recipe int8 (int8 per-channel weights) or --recipe fp32")


def _with_offsets(chosen: LanguageRecipe, offsets: str | None) -> LanguageRecipe:
    """`chosen` with `--int4-offsets` (LanguageRecipe.offsets) applied, where one was given."""
    if offsets is None:
        return chosen
    if offsets not in INT4_OFFSETS:
        raise ConfigError(f"--int4-offsets {offsets} is not one of {', '.join(INT4_OFFSETS)}: pass checkpoint (a "
                          "checkpoint's own int4 grid kept exactly) or whole (integer zero points)")
    if chosen.bits != 4:
        raise ConfigError(f"--int4-offsets is for int4 recipes; recipe {chosen.name} has no int4 layers: drop it or "
                          "use --recipe int4")
    return replace(chosen, offsets=offsets)


def export_language(model: str, target: str, calibration: str | Path, *,
                    eval_data: dict[str, str | Path] | None = None, out: str | Path = "out", recipe: str = "int4",
                    max_seq_len: int | None = None, max_ppl_increase: float | None = None,
                    int4_offsets: str | None = None, progress: Progress = no_progress) -> ExportResult:
    """Quantize the causal LM at `model` once on the `calibration` text, write each runtime's generation
    artifact for `target`, verify it on every `eval_data` text ({subject: .txt or .jsonl}; default: the
    calibration text past the windows GPTQ read) and write `out/<model>/<target>/` atomically.
    `max_ppl_increase` (a fraction, int4 only): the most sensitive layers are kept int8 until the worst
    subject's perplexity increase is within it, and every artifact must measure within it (BudgetError).
    `int4_offsets`: LanguageRecipe.offsets."""
    from edgeship.calibration.text import read_text
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.targets.devices import load_device

    device = load_device(target)
    runtimes = [r for r in device.runtimes if r in LANGUAGE_RUNTIMES]
    if not runtimes:
        raise ConfigError(f"target {device.name} runs {', '.join(device.runtimes)}; edgeship writes language "
                          f"models for {', '.join(LANGUAGE_RUNTIMES)}: pick a target that has one")
    chosen = _with_offsets(language_recipe(recipe), int4_offsets)
    if max_ppl_increase is not None and chosen.bits != 4:
        raise ConfigError(f"--max-ppl-increase keeps layers of an int4 recipe at int8; recipe {chosen.name} has "
                          "no int4 layers: drop it or use --recipe int4")
    out = Path(out)
    outputs.check_writable(out)
    texts = {"calibration": read_text(calibration)} | {name: read_text(path) for name, path in (eval_data or {}).items()}
    lm = load_causal_lm(model)
    length = _sequence_length(max_seq_len, lm.max_positions)
    needed = 2 * outputs.weight_bytes(lm.model) + (1 << 20)
    outputs.check_space(out, needed)
    calib, subjects = _windows(lm.tokenizer, texts, length, chosen.gptq)
    final = out / lm.name / device.name
    try:
        with outputs.staging(final) as stage:
            manifest = _export_into(stage, lm, device, chosen, length, calib, subjects, runtimes, progress,
                                    max_ppl_increase, final.parent, {"calibration": str(Path(calibration).resolve()),
                                     "eval_data": {k: str(Path(v).resolve()) for k, v in (eval_data or {}).items()}})
    except Exception as exc:
        full = outputs.out_of_space(exc, final.parent, needed)
        if full is None:
            raise
        raise full from exc
    return ExportResult(final, manifest)


def _sequence_length(asked: int | None, limit: int) -> int:
    if asked is not None and asked > limit:
        raise ConfigError(f"--max-seq-len {asked} is longer than the model's {limit} positions; pass "
                          f"--max-seq-len {limit} or less")
    if asked is not None and asked < MIN_SEQ_LEN:
        raise ConfigError(f"--max-seq-len {asked} is too short to generate with; pass {MIN_SEQ_LEN} or more")
    return asked or min(DEFAULT_SEQ_LEN, limit)


def _windows(tokenizer, texts: dict[str, str], length: int, gptq: bool):
    """GPTQ's calibration windows and each subject's evaluation windows (without --eval-data: the
    calibration text after the windows GPTQ reads)."""
    from edgeship.calibration.text import token_windows

    calib_length, eval_length = min(CALIBRATION_LENGTH, length), min(EVAL_LENGTH, length - 1)
    calib = token_windows(tokenizer, texts["calibration"], calib_length, CALIBRATION_WINDOWS) if gptq else None
    subjects = {name: token_windows(tokenizer, text, eval_length, EVAL_WINDOWS)
                for name, text in texts.items() if name != "calibration"}
    if not subjects:
        skip = (len(calib) * calib_length) // eval_length if calib is not None else 0
        held = token_windows(tokenizer, texts["calibration"], eval_length, skip + EVAL_WINDOWS)[skip:]
        if len(held) == 0:
            raise ConfigError("the calibration text is all read by calibration; pass --eval-data name=file.txt "
                              "with text to evaluate on, or more calibration text")
        subjects = {"calibration (held out)": held}
    return calib, subjects


def _export_into(stage: Path, lm, device, recipe: LanguageRecipe, length: int, calib, subjects: dict,
                 runtimes: list[str], progress: Progress, limit: float | None, stats_folder: Path,
                 reproduce: dict) -> dict:
    """`stats_folder`: where GPTQ's weights are kept (quantize/stats_cache.py), so that exporting the model
    again on the same calibration text, for another target, runs no GPTQ."""
    from edgeship.quantize.decoder import gptq_steps, int4_decoder
    from edgeship.quantize.stats_cache import StatsCache
    from edgeship.report.language import language_report

    started = time.perf_counter()
    decoder, stats = None, None  # fp32: the model as it is
    if recipe.bits < 32:
        stats = StatsCache.for_language(stats_folder, lm.model, calib, recipe) if calib is not None else None
        loaded = stats.memo.get("gptq") if stats is not None else None
        runs = calib is not None and not loaded  # GPTQ reads the windows, ticking once per window and block
        what = f"{recipe.precision} weights" + (" (GPTQ)" if calib is not None else "")
        advance = progress(what + (" from the kept statistics" if loaded else ""),
                           gptq_steps(lm.model, calib) if runs else 1)
        decoder = int4_decoder(lm.model, recipe.group, calib, advance if runs else None, recipe.bits,
                               asymmetric=recipe.asymmetric, memo=stats.memo if stats is not None else None,
                               keep_grids=recipe.offsets == "checkpoint")
        if not runs:
            advance(1)
        if stats is not None and stats.memo.get("gptq") is not loaded:  # computed here (or the kept ones did not fit)
            stats.save()
    lm.tokenizer.save_pretrained(stage / "tokenizer")
    reference = _float_reference(lm, subjects, length, progress)
    budget = None
    if limit is not None:
        decoder, budget = language_budget.meet(lm, decoder, calib, subjects, reference, limit, runtimes,
                                                progress)
    artifacts, not_produced = language_artifacts.write_all(stage, lm, decoder, recipe, length, subjects, reference,
                                                                runtimes, progress)
    if budget is not None:
        budget["artifacts"] = language_budget.check(artifacts, budget)
    manifest = {
        "kind": "language_model", "versions": _versions(),
        "model": {"source": lm.source, "name": lm.name, "family": lm.family, "max_positions": lm.max_positions},
        "target": device.to_dict(), "recipe": recipe.__dict__ | {"precision": recipe.precision},
        "max_seq_len": length, "weights": decoder.record | {"encodings": _encodings(decoder)} if decoder is not None
        else {"method": "float", "quantized_layers": 0},
        "budget": budget, "calibration": {"windows": 0 if calib is None else len(calib),
                        "tokens": 0 if calib is None else calib.numel()}
        | ({"statistics": stats.record()} if stats is not None else {}),
        "subjects": {name: {"windows": len(w), "tokens": w.numel(), "float": reference["scores"][name]}
                     for name, w in subjects.items()},
        "artifacts": artifacts, "not_produced": not_produced,
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count()},
        "export_seconds": round(time.perf_counter() - started, 1), "reproduce": reproduce}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (stage / "report.md").write_text(language_report(manifest))
    return manifest


def _float_reference(lm, subjects: dict, length: int, progress: Progress) -> dict:
    """Float's logits on every evaluation window and its greedy tokens from every prompt, in PyTorch."""
    import torch

    from edgeship.metrics.language import LanguageScore

    total = sum(len(w) for w in subjects.values()) + len(PROMPTS)
    advance = progress("float reference (PyTorch)", total)
    logits, scores = {}, {}
    with torch.no_grad():
        for name, windows in subjects.items():
            score, logits[name] = LanguageScore(), []
            for window in windows:
                logits[name].append(lm.model(window[None]).logits.float())
                score.add(logits[name][-1], window[None])
                advance(1)
            scores[name] = score.result()
        greedy, margins = {}, {}
        for prompt in PROMPTS:  # those that leave half the KV cache to generate into
            ids = language_artifacts.prompt_ids(lm.tokenizer, prompt)
            if len(ids) <= length // 2:
                greedy[prompt], margins[prompt] = _float_greedy(lm, ids, length)
            advance(1)
    return {"logits": logits, "scores": scores, "greedy": greedy, "margins": margins}


def _new_tokens(ids: list[int], length: int) -> int:
    """Greedy tokens generated from a prompt of `ids`: NEW_TOKENS, or what the KV cache has room for."""
    return max(0, min(NEW_TOKENS, length - len(ids)))


def _float_greedy(lm, ids: list[int], length: int) -> tuple[list[int], list[float]]:
    """Float's greedy tokens from `ids`, and for each its margin: its logit minus the runner-up's (a small
    margin is a near-tie, which any rounding of the weights or activations may flip)."""
    import torch

    count = _new_tokens(ids, length)
    out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                            do_sample=False, max_new_tokens=count, min_new_tokens=count,
                            pad_token_id=lm.tokenizer.eos_token_id, output_scores=True,
                            return_dict_in_generate=True)
    top = [step[0].float().topk(2).values.tolist() for step in out.scores] if count else []
    return out.sequences[0, len(ids):].tolist(), [round(first - second, 4) for first, second in top]


def _encodings(decoder) -> dict:
    """Each quantized table's group, shape and content hashes: the values every runtime's artifact holds."""
    import hashlib

    def digest(t) -> str:
        return hashlib.sha256(t.numpy().tobytes()).hexdigest()

    return {w.layer: {"bits": w.bits, "group": w.group, "shape": list(w.q.shape), "values_sha256": digest(w.q),
                      "scales_sha256": digest(w.scale)} | ({"offsets_sha256": digest(w.offset)} if w.offset is not None
                                                           else {})
            for w in decoder.all_weights()}


def _versions() -> dict:
    from edgeship.report.manifest import versions

    return versions()
