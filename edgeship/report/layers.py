"""Layer by layer: float vs the simulated int8 graph vs the ONNX Runtime artifact, on real inputs.

Every conv / linear / matmul of the quantized graph is a checkpoint. Its value is read where the int8
model hands it on: after the layer's requantization (its fused activation, quantize, dequantize), in the
simulated graph (PyTorch) and in `model.int8.onnx` run by ONNX Runtime with the device's session
settings (its exporter names each layer's output after the graph node). The float value is the layer's output (after
the same activation) in the float graph with the same post-training algorithms applied, so the node
names line up. SQNR against float (of the median channel) drops along the depth as error accumulates;
the layer whose drop from the previous checkpoint is largest is where the error jumps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.fx import GraphModule, Node

from edgeship.calibration.samples import Samples
from edgeship.export.inputs import to_torch
from edgeship.quantize.graphs import Watcher
from edgeship.quantize.quantizer import ACTIVATIONS, FLOAT_NODE
from edgeship.quantize.sensitivity import LAYER_OPS


def _handed_on(node: Node, through_quantize: bool = True) -> Node:
    """The node whose value the next layer reads: through a fused activation and (in the quantized
    graph) a quantize/dequantize pair."""
    current = best = node
    for _ in range(8):
        users = list(current.users)
        # a quantize read by several layers has one dequantize per reader: they hold the same value
        if len(users) > 1 and all(getattr(u.target, "__name__", "").startswith("dequantize_per") for u in users):
            users = users[:1]
        if len(users) != 1 or users[0].op != "call_function":
            break
        user = users[0]
        name = getattr(user.target, "__name__", "")
        if user.target in ACTIVATIONS or (through_quantize and name.startswith(("quantize_per", "dequantize_per"))):
            current = user
            if not name.startswith("quantize_per"):  # never hand on an int8 tensor
                best = user
        else:
            break
    return best


def checkpoints(folded: GraphModule) -> list[tuple[str, str, str, str]]:
    """(layer name, op, the value it hands on, its name in the exported ONNX) per layer of the quantized
    graph. The ONNX exporter re-traces the graph and names each op's output after the op with a counter
    in graph order (linear, linear_1, ...), so that name is counted here the same way."""
    found, seen = [], {}
    for node in folded.graph.nodes:
        if node.op != "call_function":
            continue
        op = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        count = seen.get(op, 0)
        seen[op] = count + 1
        if node.target in LAYER_OPS and not node.meta.get(FLOAT_NODE):  # a pass's float layers: nothing to see
            found.append((node.name, op, _handed_on(node).name, op if count == 0 else f"{op}_{count}"))
    return found


class _Record(Watcher):
    def __init__(self, module: GraphModule, names: set[str]) -> None:
        super().__init__(module, names)
        self.values = {}

    def record(self, node: Node, out) -> None:
        if isinstance(out, torch.Tensor):
            self.values[node.name] = out.detach().float().numpy().copy()


def graph_values(module: GraphModule, names: set[str], samples: Samples) -> list[dict[str, np.ndarray]]:
    result = []
    with torch.no_grad():
        for i in range(len(samples)):
            recorder = _Record(module, names)
            recorder.run(*to_torch(samples.sample(i)))
            result.append(recorder.values)
    return result


_ONNX_HAND_ON = {"Relu", "Clip", "QuantizeLinear", "DequantizeLinear"}


def onnx_values(path: Path, layers: set[str], samples: Samples, threads: int) -> list[dict[str, np.ndarray]]:
    """Per layer, the value an ONNX model hands on after it (the exporter names a layer's output after
    the graph node; its activation, quantize and dequantize follow), exposed as extra outputs and run
    with the device's session settings. Keyed by layer name."""
    import onnx
    import onnxruntime as ort

    from edgeship.backends.onnxruntime.session import session_options

    model = onnx.load(str(path))
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    produced = {o for n in model.graph.node for o in n.output}
    handed = {}
    for layer in layers & produced:
        value = best = layer
        for _ in range(8):
            users = consumers.get(value, [])
            if len(users) > 1 and all(u.op_type == "DequantizeLinear" for u in users):
                users = users[:1]  # one dequantize per reader of a quantized value: the same value
            if len(users) != 1 or users[0].op_type not in _ONNX_HAND_ON:
                break
            value = users[0].output[0]
            if users[0].op_type != "QuantizeLinear":  # never hand on an int8 tensor
                best = value
        handed[layer] = best
    existing = {o.name for o in model.graph.output}
    for value in set(handed.values()) - existing:
        model.graph.output.append(onnx.ValueInfoProto(name=value))
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]
    names = sorted(handed)
    result = []
    for i in range(len(samples)):
        outs = session.run([handed[n] for n in names], dict(zip(feeds, samples.sample(i))))
        result.append({n: np.asarray(v, np.float32) for n, v in zip(names, outs)})
    return result


def sqnr(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float | None:
    """SQNR of the median channel (axis 1 of an NCHW map, else the last axis): one outlier channel
    would otherwise own the whole signal power and hide what int8 does to every other channel."""
    axis = 1 if reference[0].ndim == 4 else reference[0].ndim - 1

    def per_channel(x: np.ndarray) -> np.ndarray:
        x = np.moveaxis(x.astype(np.float64), axis, -1)
        return np.sum(np.square(x.reshape(-1, x.shape[-1])), axis=0)

    signal = sum(per_channel(r) for r in reference)
    noise = sum(per_channel(r - c) for r, c in zip(reference, candidate))
    live = signal > 0
    if not live.any() or not (noise[live] > 0).any():
        return None
    ratios = 10 * np.log10(signal[live] / np.maximum(noise[live], 1e-30))
    return round(float(np.median(ratios)), 2)


def compare(float_module: GraphModule, folded: GraphModule, onnx_path: Path, samples: Samples,
            threads: int) -> list[dict]:
    """One row per layer, in graph order."""
    points = checkpoints(folded)
    float_nodes = {n.name: n for n in float_module.graph.nodes}
    # the float graph (same node names before quantization) has no quantize/dequantize: its value is
    # the layer's, or its activation's
    float_names = {layer: _handed_on(float_nodes[layer], through_quantize=False).name
                   for layer, *_ in points if layer in float_nodes}
    floats = graph_values(float_module, set(float_names.values()), samples)
    sims = graph_values(folded, {p[2] for p in points}, samples)
    runtime = onnx_values(onnx_path, {p[3] for p in points}, samples, threads)
    rows = []
    for layer, op, handed, exported in points:
        if layer not in float_names:
            continue
        ref = [f[float_names[layer]] for f in floats]
        sim = [s[handed] for s in sims]
        run = [r[exported] for r in runtime] if all(exported in r for r in runtime) else None
        if run is not None and run[0].shape != ref[0].shape:
            run = None  # not the same value after all: left out rather than compared wrongly
        rows.append({"layer": layer, "op": op, "value": handed,
                     "simulated_sqnr_db": sqnr(ref, sim),
                     "runtime_sqnr_db": sqnr(ref, run) if run is not None else None,
                     "runtime_vs_simulated_max_abs": (round(max(float(np.max(np.abs(a - b))) for a, b in zip(sim, run)), 6)
                                                      if run is not None else None)})
    previous = None
    for row in rows:
        value = row["runtime_sqnr_db"] if row["runtime_sqnr_db"] is not None else row["simulated_sqnr_db"]
        row["drop_db"] = round(previous - value, 2) if previous is not None and value is not None else None
        previous = value if value is not None else previous
    return rows


def worst_jump(rows: list[dict]) -> dict | None:
    drops = [r for r in rows if r["drop_db"] is not None]
    return max(drops, key=lambda r: r["drop_db"]) if drops else None
