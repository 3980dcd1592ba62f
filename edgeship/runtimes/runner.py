"""The benchmark runner: one self-contained file (numpy and the runtime's own package, nothing from
edgeship) so that it runs the same way here and on a remote device after a copy.

    python runner.py RUNTIME ARTIFACT INPUTS.npz THREADS BUDGET_S [OUTPUTS.npz] [KEY=VALUE ...]
    python runner.py --llm RUNTIME ARTIFACT THREADS CONTEXT
    python runner.py --probe


Loads the artifact, times the first inference, warms up, then runs until the median is stable or the
time bound passes; prints one JSON line. With OUTPUTS.npz it also saves the outputs of one run, for
comparing devices. KEY=VALUE pairs are ONNX Runtime session config entries. --llm times a language-model
artifact the same way for every runtime (`measure_language`).
"""

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

# `edgeship bench --setup` installs numpy and the runtimes here on a device, per machine and Python
SITE = os.path.join(os.path.expanduser("~"), ".edgeship",
                    "site-%s-cp%d%d" % (platform.machine(), *sys.version_info[:2]))
SITE_MARKER = "EDGESHIP-SITE"  # written last by --setup: a folder without it is not used
if __name__ == "__main__":
    # run as a script, this file's folder comes first on sys.path; next to it in edgeship's sources
    # sit modules named like the runtimes' packages (onnxruntime.py), which must not shadow them
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    if os.path.isfile(os.path.join(SITE, SITE_MARKER)):
        sys.path.insert(0, SITE)

try:
    import numpy as np
    np.__version__
except (ImportError, AttributeError):  # only --probe runs without numpy (or a broken one), to say so
    np = None

MIN_RUNS, MAX_RUNS, WARMUP = 10, 2000, 5
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
             "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
             "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (x86 `flags`, Arm `Features`); empty where unread."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.split(":", 1)[1].split()) if ":" in line else set()


def host_info():
    """CPU model, cores, allowed CPUs, frequency governor; `emulated` when a wrapper says so (qemu-user)."""
    def read(path):
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    model, part = None, None
    for line in (read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")) and model is None:
            model = line.split(":", 1)[1].strip()
        elif line.startswith("CPU part") and part is None:
            part = line.split(":", 1)[1].strip().lower()
    if model is None and part is not None:  # Arm Linux names the core by its part number only
        model = ARM_PARTS.get(part, f"Arm CPU part {part}")
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"machine": platform.machine(), "cpu_model": model or platform.processor() or None,
            "cpu_count": os.cpu_count(), "cpus_allowed": affinity,
            "governor": read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "emulated": os.environ.get("EDGESHIP_EMULATED") or None,
            "max_mhz": (lambda v: int(v) / 1000 if v else None)(read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"))}


def _ort(path, threads, config):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    dtypes = [types.get(i.type, np.float32) for i in session.get_inputs()]
    return lambda xs: session.run(None, {n: np.asarray(x, d) for n, x, d in zip(names, xs, dtypes)})


def _executorch(path, threads, config):
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    try:
        import executorch.kernels.quantized  # noqa: F401  quantized ops outside the delegate
    except ImportError:
        pass
    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda xs: [o.numpy() for o in method.execute([torch.from_numpy(np.ascontiguousarray(x)) for x in xs])]


def _litert(path, threads, config):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    ins, outs = interp.get_input_details(), interp.get_output_details()

    def run(xs):
        for d, x in zip(ins, xs):
            scale, zero = d["quantization"]
            if scale and np.dtype(d["dtype"]).kind in "iu":
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(np.asarray(x, np.float32) / scale) + zero, info.min, info.max)
            interp.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
        interp.invoke()
        result = []
        for d in outs:
            y = interp.get_tensor(d["index"])
            scale, zero = d["quantization"]
            result.append((y.astype(np.float32) - zero) * scale if scale and y.dtype.kind in "iu" else np.array(y))
        return result

    return run


LOADERS = {"onnxruntime": _ort, "executorch": _executorch, "litert": _litert}
SDK_MODULES = {"onnxruntime": ("onnxruntime",),
               "executorch": ("torch", "executorch.runtime", "executorch.extension.pybindings.portable_lib"),
               "litert": ("ai_edge_litert.interpreter",)}


def _stable(times):
    """The median of the last half agrees with the median of all runs within 2%."""
    if len(times) < 2 * MIN_RUNS:
        return False
    recent, overall = float(np.median(times[len(times) // 2:])), float(np.median(times))
    return abs(recent - overall) <= 0.02 * overall


def timed_runs(call, budget_s, warmup=WARMUP):
    """Warm up, then run until the median is stable (at least a quarter of the budget) or the budget is
    spent, between MIN_RUNS and MAX_RUNS runs: median / p90 / p99 / min in ms, spread (p90 - p10) / median."""
    for _ in range(warmup):
        call()
    times = []
    bench_start = time.perf_counter()
    while len(times) < MAX_RUNS:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
        elapsed = time.perf_counter() - bench_start
        if len(times) >= MIN_RUNS and (elapsed >= budget_s or (_stable(times) and elapsed >= budget_s / 4)):
            break
    arr = np.array(times)
    median = float(np.median(arr))
    return {"warmup": warmup, "runs": len(times), "median": round(median, 4),
            "p90": round(float(np.percentile(arr, 90)), 4), "p99": round(float(np.percentile(arr, 99)), 4),
            "min": round(float(arr.min()), 4),
            "spread": round(float((np.percentile(arr, 90) - np.percentile(arr, 10)) / median), 4),
            "stable": _stable(times)}


def measure(runtime, path, inputs, threads, budget_s, config):
    import importlib

    for module in SDK_MODULES[runtime]:  # imported before the clock starts
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    started = time.perf_counter()
    run = LOADERS[runtime](path, threads, config)
    load_ms = (time.perf_counter() - started) * 1000
    t0 = time.perf_counter()
    outputs = run(inputs)
    first_ms = (time.perf_counter() - t0) * 1000
    result = {"load_ms": round(load_ms, 3), "first_inference_ms": round(first_ms, 3)}
    result |= timed_runs(lambda: run(inputs), budget_s)
    result |= {"peak_rss_mb": _peak_rss_mb(), "threads": threads, "machine": platform.machine()}
    return result, outputs


# language models: a PROMPT-token prefill, then NEW greedy tokens one at a time (halves of a shorter context);
# token ids are fixed (timing does not depend on the text); end-of-sequence never stops the decode. ROUNDS
# rounds after one load, the median of each rate reported: one 128-token decode varies by a third on a busy host
PROMPT, NEW, ROUNDS = 128, 128, 3
FIRST_ID = 1000  # the prompt is ids FIRST_ID .. FIRST_ID + PROMPT - 1, clipped to the vocabulary
LLM_MODULES = {"onnxruntime": ("onnxruntime_genai",), "executorch": SDK_MODULES["executorch"], "litert": ("litert_lm",)}
# kernels an app links beside ExecuTorch's runtime for a decoder: quantized_decomposed (embedding_byte),
# llama (custom_sdpa, update_cache)
ET_KERNEL_LIBRARIES = ("lib/libexecutorch_kernels_quantized.so", "extension/llm/custom_ops/libcustom_ops_aot_lib.so")


def load_et_kernels():
    """Registers ExecuTorch's quantized and LLM kernels with the runtime in this process (after the runtime
    itself is loaded), as an app links them."""
    import ctypes

    import executorch

    for name in ET_KERNEL_LIBRARIES:
        library = os.path.join(list(executorch.__path__)[0], name)
        if os.path.isfile(library):
            ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)


def _lengths(context):
    prompt = min(PROMPT, context // 2)
    return prompt, min(NEW, context - prompt)


def _prompt(vocab, length):
    return [(FIRST_ID + i) % vocab for i in range(length)]


def _et_language(path, threads, context):
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    started = time.perf_counter()
    load_et_kernels()
    data = os.path.splitext(path)[0] + ".ptd"  # the shared token table, when the export wrote one
    program = Runtime.get().load_program(path, data_path=data if os.path.isfile(data) else None)
    method = program.load_method("forward")
    length = int(program.load_method("get_max_seq_len").execute([])[0])
    vocab = int(program.load_method("get_vocab_size").execute([])[0])
    loaded = time.perf_counter()

    def step(tokens, position):
        out = method.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([position])])[0]
        return int(torch.argmax(out[0, -1]))

    prompt, new = _lengths(length)

    def one_round():  # the static cache is written over from position 0
        begin = time.perf_counter()
        token = step(_prompt(vocab, prompt), 0)
        first = time.perf_counter()
        position, tokens = prompt, 0
        while tokens < new - 1 and position < length:
            token = step([token], position)
            position, tokens = position + 1, tokens + 1
        return first - begin, time.perf_counter() - first, tokens

    return _language_timing(loaded - started, [one_round() for _ in range(ROUNDS)], prompt) | {
        "openmp_threads": torch.get_num_threads()}


def _ort_language(path, threads, context):
    import onnxruntime_genai as og

    started = time.perf_counter()
    config = og.Config(path)
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    loaded = time.perf_counter()
    with open(os.path.join(path, "genai_config.json")) as f:
        settings = json.load(f)["model"]
    prompt, new = _lengths(settings["context_length"])
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=prompt + new, min_length=prompt + new)

    def one_round():
        generator = og.Generator(model, params)
        begin = time.perf_counter()
        generator.append_tokens([_prompt(settings["vocab_size"], prompt)])
        generator.generate_next_token()  # the first token: from the prefill's logits
        first = time.perf_counter()
        tokens = 0
        while not generator.is_done() and tokens < new - 1:
            generator.generate_next_token()
            tokens += 1
        return first - begin, time.perf_counter() - first, tokens

    return _language_timing(loaded - started, [one_round() for _ in range(ROUNDS)], prompt)


def _litert_language(path, threads, context):
    """LiteRT-LM's own benchmark (its Engine, its timers: the C API reports load, prefill and decode rates,
    not the times between calls), over the same prompt and decode lengths; no XNNPACK weight cache is read or
    written (":nocache"): the load time is a first load's, as for the other runtimes."""
    import litert_lm

    prompt, new = _lengths(context)
    runs = [litert_lm.Benchmark(path, backend=litert_lm.Backend.CPU(thread_count=threads), prefill_tokens=prompt,
                                decode_tokens=new, max_num_tokens=context, cache_dir=":nocache",
                                activation_data_type=litert_lm.ActivationDataType.FLOAT32).run()
            for _ in range(ROUNDS)]
    return _language_summary(runs[0].init_time_in_second, runs[0].last_prefill_token_count,
                             [r.time_to_first_token_in_second for r in runs],
                             [r.last_prefill_tokens_per_second for r in runs], runs[0].last_decode_token_count,
                             [r.last_decode_tokens_per_second for r in runs])


def _language_timing(load_s, rounds, prompt):
    """`rounds`: (prefill seconds, decode seconds, decode steps after the first token) of each round."""
    return _language_summary(load_s, prompt, [p for p, _, _ in rounds], [prompt / p for p, _, _ in rounds],
                             rounds[0][2], [steps / seconds for _, seconds, steps in rounds if steps])


def _language_summary(load_s, prompt, first_token_s, prefill_rates, decode_tokens, decode_rates):
    """One row for every runtime: the median of each round's time to first token and rates, the decode
    rates' range."""
    return {"load_ms": round(1000 * load_s, 1), "prompt_tokens": prompt,
            "time_to_first_token_ms": round(1000 * statistics.median(first_token_s), 1),
            "prefill_tokens_per_s": round(statistics.median(prefill_rates), 1), "decode_tokens": decode_tokens,
            "decode_tokens_per_s": round(statistics.median(decode_rates), 2) if decode_rates else None,
            "decode_tokens_per_s_range": _spread(decode_rates) if decode_rates else None,
            "rounds": len(first_token_s), "peak_rss_mb": _peak_rss_mb()}


def _spread(values):
    return [round(min(values), 2), round(max(values), 2)]


def _peak_rss_mb():
    """This program's peak resident memory: Linux's VmHWM, which starts afresh with the program, not
    getrusage's ru_maxrss, which Linux carries over from the process that started this one (fork keeps its
    resident pages, exec the maximum). Where there is no /proc, ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def measure_language(runtime, path, threads, context):
    """Load time, time to first token and prefill tokens/s, decode tokens/s, peak memory of a language-model
    artifact (a .pte, an ONNX Runtime GenAI folder, a .litertlm); `context`: the export's sequence length
    (a .litertlm does not say it)."""
    measure = {"executorch": _et_language, "onnxruntime": _ort_language, "litert": _litert_language}[runtime]
    return measure(path, threads, context) | {"machine": platform.machine()}


def probe():
    """What this machine is and which runtimes import here (None, or why not): `runtimes` for the runner's
    artifacts, `language_runtimes` for language-model artifacts."""
    runtimes = {r: "numpy is not installed" if np is None else _missing(modules) for r, modules in SDK_MODULES.items()}
    return {"machine": platform.machine(), "cpu_count": os.cpu_count(),
            "python": "%d.%d" % sys.version_info[:2], "libc": list(platform.libc_ver()),
            "numpy": np and np.__version__, "site": SITE, "runtimes": runtimes,
            "language_runtimes": {r: _missing(modules) for r, modules in LLM_MODULES.items()}, **host_info()}


def _missing(modules):
    """None when every module imports here, else why not."""
    import importlib

    try:
        for module in modules:
            importlib.import_module(module)
    except (ImportError, OSError, ValueError) as exc:  # torch raises ValueError for missing CUDA libraries
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def main(argv):
    if argv == ["--probe"]:
        sys.stdout.write(json.dumps(probe()) + "\n")
        return
    if argv[:1] == ["--llm"]:
        runtime, path, threads, context = argv[1:5]
        sys.stdout.write(json.dumps(measure_language(runtime, path, int(threads), int(context))) + "\n")
        return
    runtime, path, inputs_path, threads, budget = argv[:5]
    rest = argv[5:]
    outputs_path = rest.pop(0) if rest and rest[0].endswith(".npz") else None
    config = dict(pair.split("=", 1) for pair in rest)
    with np.load(inputs_path) as data:
        inputs = [data[k] for k in data.files]
    result, outputs = measure(runtime, path, inputs, int(threads), float(budget), config)
    if outputs_path:
        np.savez(outputs_path, *[np.asarray(o) for o in outputs])
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "executorch" in sys.argv[1:3]:  # its kernels run on its own pool; the wheel's kernel libraries also link
        os.environ["OMP_NUM_THREADS"] = "1"  # OpenMP, whose threads would fight it for the cores (before torch)
    main(sys.argv[1:])
