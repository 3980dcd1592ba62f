"""Time one language-model artifact the same way for every runtime, in a fresh process: load time, a
PROMPT-token prefill (time to first token, prefill tokens/s), NEW greedy tokens one at a time (decode
tokens/s), peak resident memory (a context shorter than PROMPT + NEW: half of it each). Run as `python -m edgeship.runtimes.llm_bench RUNTIME PATH THREADS [CONTEXT]`;
prints one JSON object. Token ids are fixed (timing does not depend on the text); end-of-sequence never
stops the decode."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

PROMPT, NEW = 128, 128
FIRST_ID = 1000  # the prompt is ids FIRST_ID .. FIRST_ID + PROMPT - 1, clipped to the vocabulary


def _lengths(context: int) -> tuple[int, int]:
    """The prompt and new tokens: PROMPT and NEW, or halves of a shorter context."""
    prompt = min(PROMPT, context // 2)
    return prompt, min(NEW, context - prompt)


def _prompt(vocab: int, length: int) -> list[int]:
    return [(FIRST_ID + i) % vocab for i in range(length)]


def _executorch(path: Path, threads: int) -> dict:
    import torch
    from executorch.extension.pybindings import portable_lib

    from edgeship.backends.executorch.decoder import DecoderSession

    portable_lib._unsafe_reset_threadpool(threads)
    started = time.perf_counter()
    session = DecoderSession(path)
    loaded = time.perf_counter()
    prompt, new = _lengths(session.max_seq_len)
    ids = _prompt(session.vocab_size, prompt)
    logits = session.step(ids, 0)[-1]
    first = time.perf_counter()
    position, tokens = len(ids), 0
    while tokens < new - 1 and position < session.max_seq_len:
        logits = session.step([int(torch.argmax(logits))], position)[-1]
        position, tokens = position + 1, tokens + 1
    return _timing(started, loaded, first, time.perf_counter(), prompt, tokens)


def _onnxruntime(path: Path, threads: int) -> dict:
    import onnxruntime_genai as og

    started = time.perf_counter()
    config = og.Config(str(path))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    loaded = time.perf_counter()
    settings = json.loads((path / "genai_config.json").read_text())["model"]
    prompt, new = _lengths(settings["context_length"])
    ids = _prompt(settings["vocab_size"], prompt)
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=prompt + new, min_length=prompt + new)
    generator = og.Generator(model, params)
    generator.append_tokens([ids])
    generator.generate_next_token()  # the first token: from the prefill's logits
    first = time.perf_counter()
    tokens = 0
    while not generator.is_done() and tokens < new - 1:
        generator.generate_next_token()
        tokens += 1
    return _timing(started, loaded, first, time.perf_counter(), prompt, tokens)


def _litert(path: Path, threads: int, context: int) -> dict:
    """LiteRT-LM's own benchmark (its Engine, its timers: the C API reports load, prefill and decode
    rates, not the times between calls), over the same prompt and decode lengths."""
    import litert_lm

    prompt, new = _lengths(context)
    info = litert_lm.Benchmark(str(path), backend=litert_lm.Backend.CPU(thread_count=threads), prefill_tokens=prompt,
                               decode_tokens=new, max_num_tokens=context,
                               activation_data_type=litert_lm.ActivationDataType.FLOAT32).run()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"load_ms": round(1000 * info.init_time_in_second, 1), "prompt_tokens": info.last_prefill_token_count,
            "time_to_first_token_ms": round(1000 * info.time_to_first_token_in_second, 1),
            "prefill_tokens_per_s": round(info.last_prefill_tokens_per_second, 1),
            "decode_tokens": info.last_decode_token_count,
            "decode_tokens_per_s": round(info.last_decode_tokens_per_second, 2), "peak_rss_mb": round(rss_kb / 1024, 1)}


def _timing(started: float, loaded: float, first: float, ended: float, prompt: int, tokens: int) -> dict:
    """`tokens`: the decode steps after the first token (which the prefill gives)."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"load_ms": round(1000 * (loaded - started), 1), "prompt_tokens": prompt,
            "time_to_first_token_ms": round(1000 * (first - loaded), 1),
            "prefill_tokens_per_s": round(prompt / (first - loaded), 1), "decode_tokens": tokens,
            "decode_tokens_per_s": round(tokens / (ended - first), 2) if tokens else None,
            "peak_rss_mb": round(rss_kb / 1024, 1)}


def main() -> None:
    runtime, path, threads = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if runtime == "litert":  # the .litertlm does not say its context: the manifest's, passed on
        print(json.dumps(_litert(path, threads, int(sys.argv[4]))))
        return
    measure = {"executorch": _executorch, "onnxruntime": _onnxruntime}[runtime]
    print(json.dumps(measure(path, threads)))


if __name__ == "__main__":
    main()
