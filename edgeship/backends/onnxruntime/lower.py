"""ONNX Runtime adapter: QDQ `model.int8.onnx`, its mobile `model.int8.ort`, the fp32 ONNX, and the
int4 / int8-dynamic / fp16 forms of the other recipes."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import _pytree as pytree

from edgeship.backends.base import Artifact, LowerJob, WeightOnly, count_ops
from edgeship.backends.onnxruntime.loops import initializers_into_loops, nodes
from edgeship.backends.onnxruntime.onnx_export import export_float_onnx, strip_metadata, to_onnx
from edgeship.backends.onnxruntime.session import (
    ARM_SESSION_CONFIG,
    DATA_MOVEMENT,
    INT8_KERNELS,
    OnnxRuntimeSession,
    session_options,
)
from edgeship.errors import ExportError
from edgeship.export.capture import first_line
from edgeship.quantize.quantizer import has_int16

log = logging.getLogger(__name__)


class OnnxRuntimeAdapter:
    name = "onnxruntime"

    def lower(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[Artifact]:
        artifacts = []
        if "fp32" in precisions or "fp16" in precisions:
            _float_onnx(job)
        if "fp32" in precisions:
            artifacts.append(Artifact(self.name, "fp32", job.float_onnx))
        if "int8" in precisions:
            onnx_path = out / "model.int8.onnx"
            _export_onnx(job.form.graph.folded, job, onnx_path)
            artifacts += self._with_ort(onnx_path, out, "int8", [])
        if "fp16" in precisions:
            onnx_path = out / "model.fp16.onnx"
            _to_float16(job.float_onnx, onnx_path)
            artifacts += self._with_ort(onnx_path, out, "fp16", [], list_float=False)
        if isinstance(job.form, WeightOnly) and job.form.precision in precisions:  # int4, or int8-dynamic
            from edgeship.backends.onnxruntime.int4 import to_matmul_nbits

            precision, weights = job.form.precision, job.form.job
            onnx_path = out / f"model.{precision}.onnx"
            _export_onnx(weights.dequantized, job, onnx_path)
            missing = to_matmul_nbits(onnx_path, weights.weights)
            float_layers = [{"op": f["layer"], "count": 1, "reason": f["reason"]} for f in weights.skipped]
            float_layers += [{"op": name, "count": 1, "reason": "the exporter wrote it in a form the int4/int8 "
                              "rewrite does not replace; float MatMul"} for name in missing]
            artifacts += self._with_ort(onnx_path, out, precision, float_layers)
        return artifacts

    def _with_ort(self, onnx_path: Path, out: Path, precision: str, extra: list[dict],
                  list_float: bool = True) -> list[Artifact]:
        """The .onnx and its ORT-format twin, with the ops ONNX Runtime leaves in float."""
        float_nodes = _float_nodes(onnx_path, out) if list_float else []
        reason = "float ONNX Runtime kernel (not fused into a quantized kernel)"
        ort_path = out / onnx_path.name.replace(".onnx", ".ort")
        _save_ort_format(onnx_path, ort_path)
        return [Artifact(self.name, precision, p, count_ops(float_nodes, reason) + extra) for p in (onnx_path, ort_path)]


def _float_onnx(job: LowerJob) -> None:
    names = list(job.input_names), list(job.output_names)
    if job.native is not None:  # the recurrent layers as ONNX LSTM/GRU ops, where the exporter writes them
        try:
            export_float_onnx(job.native, job.float_onnx, *names)
            return _check_native(job)
        except ExportError as exc:
            log.info("float ONNX with the unrolled recurrent layers: %s", exc)
    export_float_onnx(job.float_program, job.float_onnx, *names)


def _check_native(job: LowerJob) -> None:
    """Raises ExportError when ONNX Runtime cannot load the float ONNX of the recurrent layers as written,
    or computes something else than the model on the example inputs: the exporter's translation of
    some forms is wrong (an nn.LSTM with `proj_size` gave a Concat of tensors of different ranks)."""
    import numpy as np

    try:
        got = OnnxRuntimeSession(job.float_onnx, 1, device_numerics=False).run([x.numpy() for x in job.example_inputs])
    except Exception as exc:  # onnxruntime raises its own types for graphs it rejects
        raise ExportError(f"ONNX Runtime cannot run the exporter's recurrent ops ({first_line(exc)})") from exc
    with torch.no_grad():
        expected = pytree.tree_leaves(job.native.module()(*job.example_inputs))
    same = len(got) == len(expected) and all(
        g.shape == tuple(e.shape) and np.allclose(g, e.numpy(), rtol=1e-3, atol=1e-4 * (float(e.abs().max()) + 1))
        for g, e in zip(got, expected))
    if not same:
        raise ExportError("the exporter's recurrent ops compute other values than the model")


def _to_float16(fp32_path: Path, fp16_path: Path) -> None:
    """The float ONNX with float16 weights and compute, float32 inputs and outputs (ONNX Runtime's own
    converter; ops it keeps in float32 get casts around them)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(fp16_path))


def _export_onnx(module, job: LowerJob, onnx_path: Path) -> None:
    program = torch.export.export(module, job.example_inputs, strict=False)
    try:
        onnx_program = to_onnx(program, list(job.input_names), list(job.output_names))
    except Exception as exc:  # the exporter raises many types for untranslatable ops
        raise ExportError(f"torch.onnx.export cannot translate the quantized graph: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}; "
                          "run with --debug for the full trace") from exc
    onnx_program.save(str(onnx_path))
    strip_metadata(onnx_path)
    _transpose_weights(onnx_path)
    initializers_into_loops(onnx_path)
    if has_int16(module):
        _opset_for_int16(onnx_path)


def _opset_for_int16(onnx_path: Path) -> None:
    """A model with int16 QuantizeLinear / DequantizeLinear (recipe `int16_activations`) is declared
    opset 21, the first that allows int16 there (ONNX Runtime refuses it as the exporter's opset 20:
    "Type 'tensor(int16)' ... is invalid"). Every op opset 21 changed only gained types (int4, int16)
    or attributes with defaults, so the graph means the same. Other models are left alone."""
    import onnx

    model = onnx.load(str(onnx_path))
    types = {i.name: i.data_type for i in model.graph.initializer}
    types |= {n.output[0]: n.attribute[0].t.data_type for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    if not any(n.op_type == "QuantizeLinear" and len(n.input) > 2 and types.get(n.input[2]) == onnx.TensorProto.INT16
               for n in model.graph.node):
        return
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            if opset.version < 20:
                raise ExportError(f"the exporter wrote opset {opset.version}; int16 activations need opset 21 "
                                  "and edgeship moves only opset 20 models there: remove int16_activations")
            opset.version = max(opset.version, 21)
    onnx.save(model, str(onnx_path))


def _transpose_weights(onnx_path: Path) -> None:
    """A 2-D weight read through a Transpose is stored transposed instead: initializer -> Transpose
    becomes the transposed initializer, DequantizeLinear(int8 weight) -> Transpose becomes
    DequantizeLinear(transposed int8 weight, axis swapped). The exporter writes a linear layer whose weight
    several calls share (a recurrent layer's steps) that way; ONNX Runtime then left its int8 matmuls in
    float (FusedMatMul), and the int4 / int8-dynamic rewrites did not see the weight."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    outputs = {o.name for o in graph.output}
    changed = False
    for node in list(graph.node):
        if node.op_type != "Transpose" or next((list(a.ints) for a in node.attribute if a.name == "perm"),
                                               None) not in (None, [1, 0]):
            continue
        dq = producers.get(node.input[0])
        source = node.input[0] if dq is None else dq.input[0]
        if source not in inits or (dq is not None and dq.op_type != "DequantizeLinear"):
            continue
        weight = numpy_helper.to_array(inits[source])
        if weight.ndim != 2:
            continue
        at = list(graph.node).index(node)
        graph.node.remove(node)
        changed = True
        if dq is None:  # a constant: the Transpose's output becomes the transposed initializer
            graph.initializer.append(numpy_helper.from_array(weight.T.copy(), node.output[0]))
            _drop_if_unread(graph, inits, consumers, source, outputs)
            continue
        name = f"{source}_transposed"
        if name not in inits:
            inits[name] = numpy_helper.from_array(weight.T.copy(), name)
            graph.initializer.append(inits[name])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
        attrs = {} if scale is None or scale.ndim == 0 else {"axis": 1 - (axis % 2)}
        graph.node.insert(at, onnx.helper.make_node("DequantizeLinear", [name, *dq.input[1:]], list(node.output),
                                                    name=f"{dq.name}_transposed", **attrs))
        consumers[dq.output[0]] -= 1
        if consumers[dq.output[0]] == 0 and dq.output[0] not in outputs:
            graph.node.remove(dq)
            _drop_if_unread(graph, inits, consumers, source, outputs)
    if changed:
        onnx.save(model, str(onnx_path))


def _drop_if_unread(graph, inits: dict, consumers: dict[str, int], name: str, outputs: set[str]) -> None:
    consumers[name] -= 1
    if consumers[name] == 0 and name not in outputs:
        graph.initializer.remove(inits.pop(name))


def _session_options(optimized_path: Path | None = None, ort_format: bool = False):
    import onnxruntime as ort

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if ort_format:
        options.add_session_config_entry("session.save_model_format", "ORT")
    return options


def _float_nodes(onnx_path: Path, scratch: Path) -> list[str]:
    """Op types left in float after ONNX Runtime's QDQ fusion, as an ARM build fuses them."""
    import onnx
    import onnxruntime as ort

    optimized = scratch / ".ort-optimized.onnx"
    ort.InferenceSession(str(onnx_path), _session_options(optimized), providers=["CPUExecutionProvider"])
    graph = onnx.load(str(optimized)).graph
    optimized.unlink()
    return [n.op_type for n in nodes(graph) if n.op_type not in INT8_KERNELS | DATA_MOVEMENT | {"Scan"}]


_ORT_CONVERT = """
import sys
sys.path.insert(0, "lib")
import onnxruntime as ort
options = ort.SessionOptions()
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
options.log_severity_level = 3
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
for pair in sys.argv[3:]:
    key, _, value = pair.partition("=")
    options.add_session_config_entry(key, value)
options.optimized_model_filepath = sys.argv[2]
options.add_session_config_entry("session.save_model_format", "ORT")
ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
"""


def _save_ort_format(onnx_path: Path, ort_path: Path) -> None:
    """The ORT-format model for the mobile (minimal) build, optimised as an ARM build would.

    ONNX Runtime's ORT-format writer orders initializers by hash tables seeded from memory addresses, and
    where a library lands depends on everything the process did before: the interpreter's path, the
    packages' paths (the checkout folder), the environment, Python's string hashing. So the writer is a
    fresh process that sees none of them: address randomization off (setarch -R, an exec, no fork of this
    process), the interpreter and the packages through fixed-length links in a fixed-length folder under
    /tmp whatever TMPDIR says (its path's length moved the bytes too), a fixed environment and hash seed,
    one thread. The same .onnx then gives the same bytes from any output folder,
    checkout path or calling process."""
    import platform
    import sysconfig

    config = [f"{k}={v}" for k, v in ARM_SESSION_CONFIG.items()]
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    root = "/tmp" if os.access("/tmp", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="edgeship-ort-", dir=root) as work:
        shutil.copy(onnx_path, Path(work) / "in.onnx")
        (Path(work) / "py").symlink_to(Path(sys.executable).resolve())
        (Path(work) / "lib").symlink_to(Path(sysconfig.get_paths()["purelib"]).resolve())
        command = ["./py", "-S", "-s", "-c", _ORT_CONVERT, "in.onnx", "out.ort", *config]
        setarch = shutil.which("setarch", path=env["PATH"])
        if setarch and sys.platform == "linux":
            command = [setarch, platform.machine(), "-R", *command]
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work)
        if run.returncode != 0 or not (Path(work) / "out.ort").exists():
            raise ExportError(f"ONNX Runtime cannot convert {onnx_path.name} to the ORT format: "
                              f"{(run.stderr.strip().splitlines() or ['no output'])[-1][:300]}; "
                              "run with --debug for the full trace")
        shutil.move(Path(work) / "out.ort", ort_path)
