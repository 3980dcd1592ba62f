"""Per-op profiles: where the time goes inside an artifact, and what ran in int8 / in the delegate.

ONNX Runtime: its own profiler (one event per node run), with the session settings of an ARM build
(so the fused int8 kernels are the device's; on x86 their timings are not the device's). ExecuTorch:
an ETDump, read with ExecuTorch's Inspector (XNNPACK reports each of its operators). LiteRT: the
Python interpreter exposes no per-op timings, so its profile lists the ops and which compute in int8.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

_ORT_INT8 = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "QAttention")


def _rows(times: dict, counts: dict, flags: dict, runs: int, flag_name: str) -> list[dict]:
    total = sum(times.values()) or 1.0
    rows = [{"op": op, "ms_per_run": round(t / runs, 4), "share": round(t / total, 4), "count": counts[op],
             flag_name: flags[op]} for op, t in times.items()]
    return sorted(rows, key=lambda r: -r["ms_per_run"])


def profile_onnxruntime(path: Path, inputs: list[np.ndarray], threads: int, runs: int = 20) -> dict:
    import onnxruntime as ort

    from edgeship.runtimes.onnxruntime import session_options
    from edgeship.runtimes.onnxruntime import DATA_MOVEMENT as ORT_MOVEMENT

    options = session_options(threads)  # fused as an ARM build fuses it
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times, counts, int8 = defaultdict(float), defaultdict(int), {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            times[op] += e["dur"] / 1000.0
            counts[op] += 1
            int8[op] = None if op in ORT_MOVEMENT else (op.startswith(_ORT_INT8) or op in ("QuantizeLinear", "DequantizeLinear"))
    counts = {k: v // runs for k, v in counts.items()}
    return {"runtime": "onnxruntime", "timed": True, "ops": _rows(times, counts, int8, runs, "int8")}


def profile_executorch(path: Path, inputs: list[np.ndarray], runs: int = 20) -> dict:
    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
    tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    for _ in range(runs):
        module.forward(tensors)
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdp"
        module.write_etdump_result_to_file(str(dump))
        inspector = Inspector(etdump_path=str(dump))
    times, counts, delegated = defaultdict(float), defaultdict(int), {}
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if event.name == "DELEGATE_CALL" or event.name.startswith(("Method::", "Program::")) \
                    or event.perf_data is None:
                continue
            op = event.name.split(" #")[0]
            times[op] += float(sum(event.perf_data.raw))
            counts[op] += 1
            delegated[op] = bool(event.is_delegated_op)
    return {"runtime": "executorch", "timed": True, "ops": _rows(times, counts, delegated, runs, "delegated")}


def profile_litert(path: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edgeship.runtimes.litert import DATA_MOVEMENT as LITERT_MOVEMENT
    from edgeship.runtimes.litert import float_ops

    plain = Interpreter(str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    delegated = Interpreter(str(path))
    delegated.allocate_tensors()
    delegate_nodes = sum(op["op_name"] == "DELEGATE" for op in delegated._get_ops_details())
    counts: dict[str, int] = defaultdict(int)
    for op in plain._get_ops_details():
        counts[op["op_name"]] += 1
    in_float = set(float_ops(path))
    rows = [{"op": name, "ms_per_run": None, "share": None, "count": n,
             "int8": None if name in LITERT_MOVEMENT else name not in in_float}
            for name, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    return {"runtime": "litert", "timed": False, "ops": rows, "delegate_nodes": delegate_nodes,
            "note": "the LiteRT Python interpreter exposes no per-op timings or per-op delegation; "
                    "int8 marks ops whose tensors are integer"}


def profile(runtime: str, path: Path, inputs: list[np.ndarray], threads: int) -> dict:
    if runtime == "onnxruntime":
        return profile_onnxruntime(path, inputs, threads)
    if runtime == "executorch":
        return profile_executorch(path, inputs)
    return profile_litert(path)


def delegated_share(prof: dict) -> float:
    """Share of ops (by count) that ran in the XNNPACK delegate (ExecuTorch) or in int8 kernels
    (ONNX Runtime, LiteRT)."""
    key = "delegated" if prof["runtime"] == "executorch" else "int8"
    counted = [r for r in prof["ops"] if r[key] is not None]  # data movement is neither
    total = sum(r["count"] for r in counted) or 1
    return round(sum(r["count"] for r in counted if r[key]) / total, 4)


def fallbacks(prof: dict) -> list[str]:
    key = "delegated" if prof["runtime"] == "executorch" else "int8"
    return [r["op"] for r in prof["ops"] if r[key] is False]
