"""Run every artifact in its own runtime on the eval samples; compare with float and with the
simulated quantized graph; time each artifact on this machine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.fx import GraphModule

from edgeship.backends import get_backend
from edgeship.backends.base import Artifact
from edgeship.calibration.samples import Samples
from edgeship.export.inputs import torch_outputs  # noqa: F401  (re-exported)
from edgeship.metrics.compare import accuracy, max_steps
from edgeship.runtimes.timing import measure_latency

log = logging.getLogger(__name__)

Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Checked:
    artifact: Artifact
    io: dict
    accuracy: dict
    latency_ms: dict
    outputs: list[list[np.ndarray]] = field(repr=False, default_factory=list)
    vs_simulated_steps: float | None = None


def output_scales(folded: GraphModule) -> list[float | None]:
    """Scale of each graph output where it leaves the graph through an int8 dequantize, else None (an
    int16 output's step is 256 times finer: runtimes that compute it in float differ by many of them)."""
    output = next(n for n in folded.graph.nodes if n.op == "output")
    scales = []
    for arg in torch.utils._pytree.tree_leaves(output.args[0]):
        name = getattr(getattr(arg, "target", None), "__name__", "")
        if name.startswith("dequantize_per_tensor") and isinstance(arg.args[1], float) and \
                arg.args[-1] in (torch.int8, torch.uint8):
            scales.append(float(arg.args[1]))
        else:
            scales.append(None)
    return scales


def check_artifact(artifact: Artifact, samples: Samples, reference: list[list[np.ndarray]],
                   simulated: list[list[np.ndarray]] | None, scales: list[float | None],
                   threads: int, progress: Progress, decisions: list[dict | None] | None = None) -> Checked:
    backend = get_backend(artifact.runtime)
    session = backend.open(artifact.path, threads)
    advance = progress(f"verify and time {artifact.path.name}", len(samples) + 1)
    outputs = []
    for i in range(len(samples)):
        outputs.append(session.run(list(samples.sample(i))))
        advance(1)
    io = {"inputs": [t.to_dict() for t in session.inputs], "outputs": [t.to_dict() for t in session.outputs]}
    checked = Checked(artifact, io, accuracy(reference, outputs, decisions), {}, outputs)
    if simulated is not None:
        checked.vs_simulated_steps = max_steps(simulated, outputs, scales)
    timed = (backend.open(artifact.path, threads, device_numerics=False)
             if getattr(backend, "host_numerics_differ", False) else session)
    checked.latency_ms = measure_latency(timed, list(samples.sample(0)), threads)
    checked.latency_ms["session_config"] = getattr(timed, "session_config", {})
    advance(1)
    log.info("%s: %s", artifact.path.name, checked.accuracy)
    return checked


def pairwise_max_abs(checked: list[Checked]) -> dict:
    """Largest absolute difference between every two int8 artifacts' outputs."""
    int8 = [c for c in checked if c.artifact.precision == "int8"]
    result = {}
    for i, a in enumerate(int8):
        for b in int8[i + 1:]:
            worst = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                        for oa, ob in zip(a.outputs, b.outputs) for x, y in zip(oa, ob))
            result[f"{a.artifact.path.name} vs {b.artifact.path.name}"] = worst
    return result


def pairwise_steps(checked: list[Checked], scales: list[float | None]) -> dict:
    """Largest disagreement between every two int8 artifacts, in output quantization steps."""
    int8 = [c for c in checked if c.artifact.precision == "int8"]
    result = {}
    for i, a in enumerate(int8):
        for b in int8[i + 1:]:
            key = f"{a.artifact.path.name} vs {b.artifact.path.name}"
            result[key] = max_steps(a.outputs, b.outputs, scales)
    return result
