"""ExecuTorch's per-op profile: an ETDump of repeated runs, read with ExecuTorch's Inspector (XNNPACK
reports each of its operators)."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeship.backends.base import op_rows


def profile(path: Path, inputs: list[np.ndarray], runs: int = 20) -> dict:
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
    return {"runtime": "executorch", "timed": True, "ops": op_rows(times, counts, delegated, runs, "delegated")}
