"""LiteRT adapter: `.tflite` models converted by litert-torch (fp32, and int8 with int8 kernels)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from edgeship.backends.base import Artifact, LowerJob, WeightOnly, count_ops
from edgeship.backends.litert.compact import compact
from edgeship.backends.litert.loops import loops_converted
from edgeship.backends.litert.session import kernel_types
from edgeship.errors import ExportError
from edgeship.quantize.quantizer import op_name

log = logging.getLogger(__name__)

class LiteRTAdapter:
    name = "litert"

    def lower(self, job: LowerJob, out: Path, precisions: tuple[str, ...]) -> list[Artifact]:
        artifacts = []
        if "fp32" in precisions:
            path = out / "model.fp32.tflite"
            _convert(job.float_program.module(), job.example_inputs, path, quantized=False)
            artifacts.append(Artifact(self.name, "fp32", path))
        if "int8" in precisions:
            path = out / "model.int8.tflite"
            _convert_int8(job.form.graph.unfolded, job.example_inputs, path)
            float_kernels, wide_kernels = kernel_types(path)
            artifacts.append(Artifact(self.name, "int8", path, count_ops(float_kernels, "float LiteRT kernel") +
                                      count_ops(wide_kernels, "int16 activations (recipe int16_activations): "
                                                "LiteRT's 16x8 kernel, not XNNPACK's int8 one")))
        if "fp16" in precisions:
            artifacts.append(self._fp16(job, out / "model.fp16.tflite"))
        if isinstance(job.form, WeightOnly) and job.form.precision in precisions:  # int4, or int8-dynamic
            artifacts.append(self._int4(job.form.job, job.example_inputs, out / f"model.{job.form.precision}.tflite"))
        for artifact in artifacts:  # every file, fp32 too, so that sizes compare like for like
            saved = compact(artifact.path)
            log.debug("%s: %d bytes of repeated quantization vectors and module paths removed",
                      artifact.path.name, saved)
        return artifacts

    def _fp16(self, job: LowerJob, path: Path) -> Artifact:
        """LiteRT's float16 form: the fp32 model's conv / fully-connected / embedding weights stored in
        float16 behind DEQUANTIZE ops (ai-edge-quantizer's float casting); the delegate computes in
        float32, or in float16 where the CPU has it."""
        from ai_edge_quantizer import qtyping, quantizer

        _convert(job.float_program.module(), job.example_inputs, path, quantized=False)
        config = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
        model = quantizer.Quantizer(str(path))
        model.update_quantization_recipe(".*", qtyping.TFLOperationName.ALL_SUPPORTED, config,
                                         quantizer.AlgorithmName.FLOAT_CASTING)
        path.write_bytes(bytes(model.quantize(enable_progress_report=False).quantized_model))
        return Artifact(self.name, "fp16", path)

    def _int4(self, weights, example_inputs: tuple, path: Path) -> Artifact:
        """The float graph with the int4 (int8) layers' dequantized weights, converted, then those weights
        replaced by block-wise INT4 (per-channel INT8) tensors carrying edgeship's values
        (edgeship/backends/litert/int4.py)."""
        from edgeship.backends.litert.int4 import to_blockwise_int4

        if weights.int8 is not None:  # int4 with int8 convolutions: the int8 graph, its linears float
            _convert_int8(weights.int8.unfolded, example_inputs, path)
        else:
            _convert(weights.dequantized, example_inputs, path, quantized=False)
        missing = to_blockwise_int4(path, weights.weights)
        not_quantized = [{"op": f["layer"], "count": 1, "reason": f["reason"]} for f in weights.skipped]
        not_quantized += [{"op": name, "count": 1, "reason": "litert-torch wrote it in a form the int4 rewrite "
                           "does not replace; float FULLY_CONNECTED"} for name in missing]
        return Artifact(self.name, weights.precision, path, not_quantized)


def _static_quant_config():
    """Tells litert-torch's converter that the graph already holds static Q/DQ pairs, so it
    legalises them into int8 kernels. The quantizer object is only read for its mode: our one
    calibrated graph is converted, nothing is re-quantized."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig

    config = pq.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    return QuantConfig(pt2e_quantizer=pq.PT2EQuantizer().set_global(config))


def _convert_int8(unfolded: torch.fx.GraphModule, args: tuple, path: Path) -> None:
    """A calibrated Q/DQ graph (weights float behind their Q/DQ pairs) converted into int8 kernels (and
    16x8 kernels for the layers with int16 activations: edgeship/backends/litert/int16.py)."""
    from edgeship.backends.litert.int16 import fence_requantize, widen_biases
    from edgeship.quantize.quantizer import has_int16

    program = torch.export.export(unfolded, args, strict=False)
    module = _fence_float_slices(_fence_float_concats(program.module()))
    wide = has_int16(unfolded)
    if wide:
        fence_requantize(module)
    _convert(module, args, path, quantized=True)
    if wide:
        widen_biases(path)


def _fence_float_concats(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Every concat the quantizer left float gets its inputs through litert-torch's optimization barrier,
    so the converter does not carry an int8 input's scale through it and quantize the other inputs: a
    ViT's class token (a float parameter) concatenated with int8 patch embeddings was stored in the
    patches' scale (HF ViT int8: LiteRT 15.4 dB where ONNX Runtime and ExecuTorch, given the same
    graph, 29.6 dB). The barrier is an identity."""
    import operator

    from litert_torch.backend.optimization_barrier import optimization_barrier_op

    quantize_ops = {"quantize_per_tensor", "quantize_per_channel"}
    graph = module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.cat.default:
            continue
        if any(op_name(u) in quantize_ops for u in node.users):
            continue  # an int8 concat
        values = list(node.args[0])
        if len(values) < 2:
            continue
        with graph.inserting_before(node):
            barrier = graph.call_function(optimization_barrier_op, (tuple(values),))
            fenced = [graph.call_function(operator.getitem, (barrier, i)) for i in range(len(values))]
        node.args = (fenced, *node.args[1:])
    module.recompile()
    return module


_SLICING = {torch.ops.aten.slice.Tensor, torch.ops.aten.split_with_sizes.default, torch.ops.aten.split.Tensor,
            torch.ops.aten.select.int, torch.ops.aten.narrow.default, torch.ops.aten.unbind.int}
_MOVING = {torch.ops.aten.transpose.int, torch.ops.aten.permute.default, torch.ops.aten.view.default,
           torch.ops.aten.reshape.default, torch.ops.aten.unsqueeze.default, torch.ops.aten.squeeze.dim,
           torch.ops.aten.flatten.using_ints, torch.ops.aten.clone.default}


def _fence_float_slices(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A slice or split that the quantizer left float between an int8 value and a quantize to another scale
    gets its input through the optimization barrier, so the converter does not fold the three into one
    int8 slice: it requires one scale on both sides and refused the whole model ("'tfl.slice' op
    quantization parameters violate the same scale constraint": Hugging Face Mamba, whose `x_proj` output
    is split into the time step, read by its own int8 layer, and the state matrices). The slice runs in
    float, as the quantizer left it."""
    import operator

    from litert_torch.backend.optimization_barrier import optimization_barrier_op

    graph = module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SLICING:
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and op_name(source) == "dequantize_per_tensor"):
            continue
        params = tuple(source.args[1:3])
        if not any(tuple(q.args[1:3]) != params for q in _quantizes_after(node)):
            continue
        with graph.inserting_before(node):
            # two operands: with one, the lowering returns a bare value that getitem cannot index
            barrier = graph.call_function(optimization_barrier_op, ((source, source),))
            node.replace_input_with(source, graph.call_function(operator.getitem, (barrier, 0)))
    module.recompile()
    return module


def _quantizes_after(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The quantize ops that read `node`'s value through getitems and data movement only."""
    import operator

    found, todo = [], list(node.users)
    while todo:
        user = todo.pop()
        if op_name(user) == "quantize_per_tensor":
            found.append(user)
        elif user.target is operator.getitem or user.target in _MOVING:
            todo += list(user.users)
    return found


def _convert(module: torch.nn.Module, args: tuple, path: Path, quantized: bool) -> None:
    import litert_torch

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), loops_converted():
            model = litert_torch.convert(module, args,
                                         quant_config=_static_quant_config() if quantized else None)
            # bytes written by Python: the converter's own file writer exits the process on a full disk
            content = model.model_content()
    except Exception as exc:  # the converter raises many types for ops it cannot convert
        log.debug("litert-torch output:\n%s", chatter.getvalue())
        raise ExportError(f"litert-torch cannot convert the {'int8' if quantized else 'fp32'} model: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}; "
                          "run with --debug for the full trace") from exc
    path.write_bytes(content)
