"""Each runtime's generation artifact for a language-model export, verified: ExecuTorch's .pte with its
KV cache, ONNX Runtime GenAI's model folder and LiteRT-LM's .litertlm, each scored through its runtime on
every evaluation text against float, its greedy tokens compared with float's, and the first prompt run by
the runtime's own LLM runner."""

from __future__ import annotations

import logging
from pathlib import Path

from edgeship import outputs
from edgeship.errors import ExportError
from edgeship.flows import Progress

log = logging.getLogger(__name__)

CHECKED_TOKENS = 16  # the greedy tokens that must equal float's


def write_all(stage: Path, lm, decoder, recipe, length: int, subjects: dict, reference: dict,
               runtimes: list[str], progress: Progress) -> tuple[list[dict], list[dict]]:
    """Each runtime's artifact, verified; a runtime that cannot take the model is listed with its reason
    (its files removed) and the others are still made."""
    import shutil

    writers = {"executorch": _executorch, "onnxruntime": _onnxruntime, "litert": _litert}
    artifacts, not_produced = [], []
    for runtime in runtimes:
        before = set(stage.iterdir())
        try:
            artifacts.append(writers[runtime](stage, lm, decoder, recipe, length, subjects, reference, progress))
        except ExportError as exc:
            if outputs.out_of_space(exc, stage, 0):
                raise
            for path in set(stage.iterdir()) - before:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            log.warning("no %s artifact: %s", runtime, exc)
            not_produced.append({"runtime": runtime, "precision": recipe.precision, "reason": str(exc)})
    if not artifacts:
        raise ExportError("no runtime could take the model: " + "; ".join(
            f"{n['runtime']}: {n['reason']}" for n in not_produced))
    return artifacts, not_produced


def _executorch(stage: Path, lm, decoder, recipe, length: int, subjects: dict, reference: dict,
                progress: Progress) -> dict:
    """The .pte with its KV cache, checked through the Module API (scores, greedy) and ExecuTorch's
    own LLM runner (the first prompt's text)."""
    import copy

    from edgeship.backends.executorch import decoder as et

    advance = progress("lower for executorch (KV cache)", 2)
    program = et.export_decoder(et.with_integer_weights(decoder) if decoder is not None
                                else copy.deepcopy(lm.model), length)
    advance(1)
    path = stage / f"model.{recipe.precision}.pte"
    outside = et.write_decoder(program, et.metadata(lm.model.config, lm.tokenizer, length), path,
                               et.tied_table(lm.model))
    advance(1)
    session = et.DecoderSession(path)
    data = et.data_file(path)
    record = {"runtime": "executorch", "precision": recipe.precision, "path": path.name,
              **({"data": data.name} if data else {}),
              "size_bytes": path.stat().st_size + (data.stat().st_size if data else 0),
              "tokenizer": "tokenizer/tokenizer.json", "ops_outside_delegate": sorted(set(outside))}
    record |= _verify(session.logits, session.greedy, lm.tokenizer, subjects, reference, progress, "executorch")
    if not record["generation"]:
        return record
    first = record["generation"][0]
    name = "executorch.extension.llm.runner.TextLLMRunner"
    text, stats = _in_runner(name, et.runner_generate, path, stage / "tokenizer" / "tokenizer.json", first["prompt"],
                             first["tokens"])
    return record | {"runner": _runner(name, text, stats, record)}


def _onnxruntime(stage: Path, lm, decoder, recipe, length: int, subjects: dict, reference: dict,
                 progress: Progress) -> dict:
    """The ONNX Runtime GenAI model folder (the GenAI builder's float model with the integer weights
    rewritten in), checked through onnxruntime_genai's Generator."""
    import tempfile

    from edgeship.backends.onnxruntime import genai

    advance = progress("lower for onnxruntime (GenAI model builder)", 2)
    folder = stage / "onnxruntime-genai"
    with tempfile.TemporaryDirectory(dir=stage) as scratch:
        (decoder.model if decoder is not None else lm.model).save_pretrained(Path(scratch) / "float")
        lm.tokenizer.save_pretrained(Path(scratch) / "float")
        genai.build_float(Path(scratch) / "float", folder, Path(scratch) / "cache")
    advance(1)
    written = (genai.rewrite(folder / "model.onnx", decoder) if decoder is not None
               else {"matmul_nbits": 0, "float_matmuls": "all (fp32)"})
    genai.set_context(folder, length)
    advance(1)
    session = genai.GenaiSession(folder)
    record = {"runtime": "onnxruntime", "precision": recipe.precision, "path": folder.name,
              "size_bytes": sum(p.stat().st_size for p in folder.iterdir()), "tokenizer": f"{folder.name}/tokenizer.json",
              "matmul_nbits": written["matmul_nbits"], "float_matmuls": written["float_matmuls"]}
    record |= _verify(session.logits, session.greedy, lm.tokenizer, subjects, reference, progress, "onnxruntime")
    if not record["generation"]:
        return record
    first = record["generation"][0]
    name = "onnxruntime_genai.Generator"
    text, stats = _in_runner(name, genai.genai_generate, folder, first["prompt"], first["tokens"])
    return record | {"runner": _runner(name, text, stats, record)}


def _litert(stage: Path, lm, decoder, recipe, length: int, subjects: dict, reference: dict,
            progress: Progress) -> dict:
    """The LiteRT-LM bundle (litert-torch's generative .tflite, converted in float from the decoder holding
    the dequantized weights, its linear layers and embeddings rewritten to the integer ones, with the
    tokenizer), checked through the LiteRT interpreter's decode signature and LiteRT-LM's own Engine."""
    import tempfile

    from edgeship.backends.litert import decoder as lrt
    from edgeship.backends.litert.int4 import to_blockwise_int4

    weights = decoder.all_weights() if decoder is not None else []
    advance = progress("lower for litert (generative export)", 2)
    path, missing = stage / f"model.{recipe.precision}.litertlm", []
    with tempfile.TemporaryDirectory(dir=stage) as scratch:
        float_folder = Path(scratch) / "float"
        (decoder.model if decoder is not None else lm.model).save_pretrained(float_folder)
        lm.tokenizer.save_pretrained(float_folder)
        _, bundle = lrt.build(float_folder, Path(scratch) / "litert", length,
                                   lambda model: missing.extend(to_blockwise_int4(model, weights)))
        if missing:
            raise ExportError(f"litert-torch's generative model holds {len(missing)} of edgeship's integer layers "
                              f"in a form edgeship cannot rewrite ({', '.join(missing[:3])}); the LiteRT artifact "
                              "would not compute them as the other runtimes do")
        advance(1)
        bundle.replace(path)
        session = lrt.DecoderSession(lrt.unpacked_tflite(path, Path(scratch) / "shipped"))
        advance(1)
        record = {"runtime": "litert", "precision": recipe.precision, "path": path.name,
                  "size_bytes": path.stat().st_size, "tokenizer": f"{path.name} (bundled)",
                  "integer_layers": len(weights)}
        record |= _verify(session.logits, session.greedy, lm.tokenizer, subjects, reference, progress, "litert")
    if not record["generation"]:
        return record
    first = record["generation"][0]
    text, stats = _in_runner("litert_lm.Engine", lrt.runner_generate, path, first["prompt"], first["tokens"], length)
    return record | {"runner": _runner("litert_lm.Engine", text, stats, record)}


def _in_runner(name: str, generate, *args) -> tuple[str, dict]:
    """`generate(*args)` through a runtime's own LLM runner; its failure an ExportError naming the runner (the
    artifact is not shipped: an app running it that way would fail too)."""
    try:
        return generate(*args)
    except (ExportError, OSError):
        raise
    except Exception as exc:  # the runners raise RuntimeError, and some other types, with their own messages
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"the artifact scored through the runtime, but its own LLM runner ({name}) failed on it: "
                          f"{type(exc).__name__}: {reason}") from exc


def _runner(name: str, text: str, stats: dict, record: dict) -> dict:
    """The runtime's own LLM runner on the first prompt: its text against the verified greedy text (which
    goes on past an end-of-sequence token where the runner stops)."""
    same = bool(text.strip()) and record["generation"][0]["text"].strip().startswith(text.strip())
    if not same:
        log.warning("%s: the LLM runner's text differs from the verified greedy text", record["runtime"])
    return {"name": name, "prompt": record["generation"][0]["prompt"], "text": text, "equals_greedy": same,
            "generated_tokens": stats["pieces"]}


def _verify(logits_of, greedy_of, tokenizer, subjects: dict, reference: dict, progress: Progress,
            runtime: str) -> dict:
    """One artifact's scores on every subject against float, and its greedy tokens from every prompt."""
    from edgeship.metrics.language import LanguageScore, generation_record, perplexity_increase

    advance = progress(f"verify {runtime} on text", sum(len(w) for w in subjects.values()) + len(reference["greedy"]))
    scores = {}
    for name, windows in subjects.items():
        score = LanguageScore()
        for window, expected in zip(windows, reference["logits"][name]):
            score.add(logits_of(window.tolist())[None], window[None], expected)
            advance(1)
        result = score.result()
        scores[name] = result | {"perplexity_increase": perplexity_increase(result, reference["scores"][name])}
    worst = max(scores, key=lambda name: scores[name]["perplexity_increase"])
    generations = []
    for prompt in reference["greedy"]:
        ids = prompt_ids(tokenizer, prompt)
        tokens = greedy_of(ids, len(reference["greedy"][prompt]))
        record = generation_record(prompt, tokens, reference["greedy"][prompt], CHECKED_TOKENS,
                                   reference["margins"][prompt])
        generations.append(record | {"text": tokenizer.decode(tokens),
                                     "float_text": tokenizer.decode(reference["greedy"][prompt])})
        advance(1)
    if not all(all(v == v for v in s.values() if isinstance(v, float)) for s in scores.values()):
        raise ExportError(f"{runtime}: the artifact gives non-finite scores; it is not shipped")
    matched = sum(g[f"equal_first_{CHECKED_TOKENS}"] for g in generations)
    return {"subjects": scores, "worst_subject": worst, "generation": generations,
            "greedy_equal_prompts": f"{matched}/{len(generations)}"}


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])
