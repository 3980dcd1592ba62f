"""ONNX Runtime's per-op profile: its own profiler (one event per node run), with the session settings
of an ARM build, so the fused int8 kernels are the device's (on x86 their timings are not the device's)."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeship.backends.base import op_rows
from edgeship.backends.onnxruntime.session import DATA_MOVEMENT, session_options

_ORT_INT8 = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "QAttention")


def profile(path: Path, inputs: list[np.ndarray], threads: int, runs: int = 20) -> dict:
    import onnxruntime as ort

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
            int8[op] = None if op in DATA_MOVEMENT else (op.startswith(_ORT_INT8) or op in ("QuantizeLinear", "DequantizeLinear"))
    counts = {k: v // runs for k, v in counts.items()}
    return {"runtime": "onnxruntime", "timed": True, "ops": op_rows(times, counts, int8, runs, "int8")}
