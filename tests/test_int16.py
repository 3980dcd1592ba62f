"""int16 activations (recipe key `int16_activations`): the quantizer gives the named layers int16 inputs and
outputs, and each runtime's artifact computes what the simulated graph computes; the LiteRT and ExecuTorch
passes that make it so, where they apply and where they leave a model alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import tiny_conv_net

from edgeship.backends import get_backend
from edgeship.backends.base import LowerJob, StaticInt8
from edgeship.backends.onnxruntime.onnx_export import export_float_onnx
from edgeship.calibration.samples import Samples
from edgeship.errors import ConfigError
from edgeship.export.capture import FlatOutputs
from edgeship.metrics.compare import accuracy, max_steps
from edgeship.quantize.calibrate import quantize
from edgeship.quantize.recipe import Recipe, recipe_by_name
from edgeship.verify import output_scales, torch_outputs


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((20, 3, 32, 32)).astype(np.float32)
    return Samples(("x",), (data[:16],), "calib"), Samples(("x",), (data[16:],), "eval"), (torch.from_numpy(data[:1]),)


def _quantized(recipe: Recipe):
    calib, held, args = _data()
    flat = FlatOutputs(tiny_conv_net()).eval()
    program = torch.export.export(flat, args)
    return program, quantize(program, recipe, calib), flat, held, args


def _dtypes(graph) -> list[tuple[str, torch.dtype]]:
    """(the op reading it, dtype) of every activation dequantize, in graph order."""
    rows = []
    for node in graph.graph.nodes:
        if node.op == "call_function" and "dequantize_per_tensor" in str(node.target):
            for user in node.users:
                op = getattr(user.target, "__name__", str(user.target)).split(".")[0]
                rows.append((op, node.args[-1]))
    return rows


def test_named_layer_reads_and_writes_int16_the_rest_int8() -> None:
    _, q, *_ = _quantized(Recipe(int16_activations=("dw.*",)))
    conv_inputs = [dtype for op, dtype in _dtypes(q.folded) if op == "conv2d"]
    assert conv_inputs == [torch.int8, torch.int16, torch.int8]  # stem, dw, pw
    wide = [e for e in q.encodings["activations"].values() if e["dtype"] == "int16"]
    assert len(wide) == 2 and all(e["zero_point"] == 0 and e["quant_max"] == 32767 for e in wide)
    assert q.float_ops == []


def test_every_layer_int16_carries_through_add_and_pool() -> None:
    _, q, *_ = _quantized(recipe_by_name("int8-a16"))
    dtypes = _dtypes(q.folded)
    assert {dtype for _, dtype in dtypes} == {torch.int16}, dtypes
    assert {"conv2d", "add", "linear"} <= {op for op, _ in dtypes}
    # output steps are counted for int8 outputs only (the int16 one leaves the graph through an int16 dequantize)
    assert output_scales(q.folded) == [None]
    assert output_scales(_quantized(Recipe())[1].folded)[0] > 0


def test_int16_activations_are_closer_to_float() -> None:
    _, int8, flat, held, _ = _quantized(Recipe())
    _, int16, *_ = _quantized(recipe_by_name("int8-a16"))
    reference = torch_outputs(flat, held)
    narrow = accuracy(reference, torch_outputs(int8.folded, held))["sqnr_db"]
    wide = accuracy(reference, torch_outputs(int16.folded, held))["sqnr_db"]
    # the int8 weights are the same: what is left of the error is theirs
    assert wide > narrow + 10.0, (narrow, wide)


def _output_step(folded) -> list[float]:
    """The scale of the output's dequantize, int8 or int16 (the int16 step is the finer check)."""
    output = next(n for n in folded.graph.nodes if n.op == "output")
    (last,) = output.args[0]
    assert "dequantize_per_tensor" in str(last.target)
    return [float(last.args[1])]


@pytest.fixture(scope="module", params=[("dw.*",), ("*",)], ids=["one-layer", "every-layer"])
def int16_job(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("int16")
    program, q, flat, held, args = _quantized(Recipe(int16_activations=request.param))
    export_float_onnx(program, out / "model.fp32.onnx", ["x"], ["y"])
    return LowerJob(program, StaticInt8(q), args, ("x",), ("y",), out / "model.fp32.onnx"), flat, held, out


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch", "litert"])
def test_int16_artifact_matches_simulated_graph(int16_job, runtime) -> None:
    job, flat, held, out = int16_job
    simulated = torch_outputs(job.form.graph.folded, held)
    for artifact in get_backend(runtime).lower(job, out, ("int8",)):
        session = get_backend(runtime).open(artifact.path, threads=1)
        outputs = [session.run(list(held.sample(i))) for i in range(len(held))]
        assert max_steps(simulated, outputs, _output_step(job.form.graph.folded)) <= 2.0, artifact.path.name
        assert accuracy(torch_outputs(flat, held), outputs)["sqnr_db"] > 40.0, artifact.path.name
        reasons = " ".join(f["reason"] for f in artifact.not_quantized)
        # ONNX Runtime lists them as float kernels (it computes them in float between int16 Q/DQ)
        assert ("int16" in reasons) == (runtime != "onnxruntime"), artifact.not_quantized


def test_onnx_artifact_declares_opset_21_with_int16_quantize(int16_job) -> None:
    import onnx

    job, _, _, out = int16_job
    get_backend("onnxruntime").lower(job, out, ("int8",))
    model = onnx.load(str(out / "model.int8.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 21
    types = {i.name: i.data_type for i in model.graph.initializer}
    zero_points = [types.get(n.input[2]) for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert onnx.TensorProto.INT16 in zero_points


def test_tflite_layer_runs_16x8(int16_job) -> None:
    from ai_edge_litert.interpreter import Interpreter

    job, _, _, out = int16_job
    get_backend("litert").lower(job, out, ("int8",))
    interp = Interpreter(model_path=str(out / "model.int8.tflite"))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    depthwise = [op for op in interp._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]
    assert len(depthwise) == 1
    activation, _, bias = (tensors[i] for i in depthwise[0]["inputs"])
    assert (activation["dtype"], bias["dtype"]) == (np.int16, np.int64)


def test_onnx_and_tflite_passes_leave_int8_models_alone(tmp_path) -> None:
    from edgeship.backends.litert.int16 import fence_requantize, widen_biases

    program, q, flat, held, args = _quantized(Recipe())
    export_float_onnx(program, tmp_path / "model.fp32.onnx", ["x"], ["y"])
    job = LowerJob(program, StaticInt8(q), args, ("x",), ("y",), tmp_path / "model.fp32.onnx")
    assert fence_requantize(torch.export.export(q.unfolded, args, strict=False).module()) == 0
    get_backend("litert").lower(job, tmp_path, ("int8",))
    before = (tmp_path / "model.int8.tflite").read_bytes()
    assert widen_biases(tmp_path / "model.int8.tflite") == 0
    assert (tmp_path / "model.int8.tflite").read_bytes() == before

    import onnx

    get_backend("onnxruntime").lower(job, tmp_path, ("int8",))
    model = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 20


def test_executorch_passes_leave_int8_graph_alone() -> None:
    from edgeship.backends.executorch.xnnpack_passes import bias_per_call, int16_in_float

    _, q, *_ = _quantized(Recipe())
    module, wide = int16_in_float(q.folded)
    assert module is q.folded and wide == []
    assert bias_per_call(q.folded) is q.folded  # every layer reads its own bias


@pytest.mark.parametrize("data, expected", [
    ({"scheme": "w4a8", "int16_activations": ["*"]}, "int16_activations is for w8a8"),
    ({"int16_activations": "conv2d"}, "int16_activations must be a list"),
], ids=["int4-scheme", "not-a-list"])
def test_bad_int16_recipe_is_rejected(data, expected) -> None:
    with pytest.raises(ConfigError, match=expected):
        Recipe.from_dict(data)


def test_int16_pattern_that_matches_nothing_names_the_key() -> None:
    with pytest.raises(ConfigError, match="int16_activations pattern 'decoder.*' matches no layer"):
        _quantized(Recipe(int16_activations=("decoder.*",)))
