"""Every adapter lowers the one calibrated graph and its artifact runs in the real runtime:
structure (what became an int8 kernel / what was delegated) and numbers (against the simulated
quantized graph, in output quantization steps, and against float)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from models import tiny_conv_net, tiny_encoder

from edgeship.backends import get_backend
from edgeship.backends.base import LowerJob, StaticInt8
from edgeship.backends.onnxruntime.onnx_export import export_float_onnx
from edgeship.calibration.samples import Samples
from edgeship.export.capture import FlatOutputs
from edgeship.metrics.compare import accuracy, max_steps
from edgeship.quantize.calibrate import quantize
from edgeship.quantize.recipe import Recipe
from edgeship.verify import output_scales, torch_outputs

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("test_adapters")


def _job(model, shape, out: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((20, *shape)).astype(np.float32)
    calib = Samples(("x",), (data[:16],), "calib")
    held = Samples(("x",), (data[16:],), "eval")
    flat = FlatOutputs(model).eval()
    args = (torch.from_numpy(data[:1]),)
    program = torch.export.export(flat, args)
    q = quantize(program, Recipe(), calib)
    float_onnx = out / "model.fp32.onnx"
    export_float_onnx(program, float_onnx, ["x"], ["y"])
    return LowerJob(program, StaticInt8(q), args, ("x",), ("y",), float_onnx), flat, held


@pytest.fixture(scope="module")
def conv_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    job, flat, held = _job(tiny_conv_net(), (3, 32, 32), out)
    return job, flat, held, out


def _run(artifact, held):
    session = get_backend(artifact.runtime).open(artifact.path, threads=1)
    return [session.run(list(held.sample(i))) for i in range(len(held))]


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch", "litert"])
def test_int8_artifact_matches_simulated_graph(conv_job, runtime) -> None:
    job, flat, held, out = conv_job
    artifacts = get_backend(runtime).lower(job, out, ("int8",))
    simulated = torch_outputs(job.form.graph.folded, held)
    scales = output_scales(job.form.graph.folded)
    assert scales[0] is not None and scales[0] > 0
    for artifact in artifacts:
        outputs = _run(artifact, held)
        # same scales and zero points everywhere: at most a rounding tie apart per layer
        assert max_steps(simulated, outputs, scales) <= 2.0, artifact.path.name
        acc = accuracy(torch_outputs(flat, held), outputs)
        assert acc["sqnr_db"] > 20.0, (artifact.path.name, acc)
        assert artifact.not_quantized == [] or all(n["op"] in ("ReduceMean",) for n in artifact.not_quantized), \
            artifact.not_quantized


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch", "litert"])
def test_fp32_artifact_matches_float(conv_job, runtime) -> None:
    job, flat, held, out = conv_job
    (artifact,) = get_backend(runtime).lower(job, out, ("fp32",))
    acc = accuracy(torch_outputs(flat, held), _run(artifact, held))
    assert acc["sqnr_db"] > 80.0, acc


def test_onnxruntime_fuses_every_conv_and_the_add(conv_job) -> None:
    import onnx
    import onnxruntime as ort

    from edgeship.backends.onnxruntime.lower import _session_options

    job, _, _, out = conv_job
    onnx_artifact = get_backend("onnxruntime").lower(job, out, ("int8",))[0]
    optimized = out / "opt.onnx"
    ort.InferenceSession(str(onnx_artifact.path), _session_options(optimized))
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert ops["QLinearConv"] == 3 and ops["QLinearAdd"] == 1 and ops["QGemm"] == 1
    assert ops["Conv"] == 0 and ops["Add"] == 0
    assert (out / "model.int8.ort").stat().st_size > 0


def test_executorch_delegates_the_whole_graph(conv_job) -> None:
    job, _, _, out = conv_job
    (artifact,) = get_backend("executorch").lower(job, out, ("int8",))
    assert artifact.not_quantized == []
    assert artifact.path.read_bytes()[4:8] == b"ET12"


def test_litert_int8_uses_int8_kernels(conv_job) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    job, _, _, out = conv_job
    (artifact,) = get_backend("litert").lower(job, out, ("int8",))
    interp = Interpreter(str(artifact.path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    convs = [op for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 3
    for op in convs:
        assert tensors[op["inputs"][0]]["dtype"] == np.int8 and tensors[op["inputs"][1]]["dtype"] == np.int8
    assert interp.get_input_details()[0]["dtype"] == np.int8


def test_litert_compaction_shares_quantization_vectors_and_changes_no_output(conv_job, tmp_path) -> None:
    """The converter's file and the compacted one: same outputs bit for bit, the per-channel zero-point
    vectors stored once per distinct value, module paths gone from the tensor names, I/O names kept."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeship.backends.litert.compact import compact
    from edgeship.backends.litert.lower import _convert

    job, _, held, _ = conv_job
    path = tmp_path / "model.int8.tflite"
    program = torch.export.export(job.form.graph.unfolded, job.example_inputs, strict=False)
    _convert(program.module(), job.example_inputs, path, quantized=True)
    original = path.read_bytes()
    model = flatbuffer_utils.read_model(str(path))
    tensors = model.subgraphs[0].tensors
    zero_points = [np.asarray(t.quantization.zeroPoint) for t in tensors
                   if t.quantization is not None and t.quantization.zeroPoint is not None]
    repeated = sum(z.nbytes for z in zero_points) - sum(
        np.frombuffer(b, np.int64).nbytes for b in {z.astype(np.int64).tobytes() for z in zero_points})
    assert repeated > 0  # per-channel weights and biases: many all-zero vectors of the same length

    saved = compact(path)
    assert saved >= repeated and len(path.read_bytes()) == len(original) - saved

    compacted = flatbuffer_utils.read_model(str(path)).subgraphs[0]
    graph = model.subgraphs[0]
    ends = set(graph.inputs) | set(graph.outputs)
    assert [compacted.tensors[i].name for i in ends] == [graph.tensors[i].name for i in ends]
    assert any(b"torch.nn.modules" in t.name for t in tensors)
    assert not any(b"torch.nn.modules" in t.name for t in compacted.tensors)

    before_path = tmp_path / "before.tflite"
    before_path.write_bytes(original)
    for i in range(len(held)):
        results = []
        for p in (before_path, path):
            interp = Interpreter(str(p))
            interp.allocate_tensors()
            detail = interp.get_input_details()[0]
            x = held.sample(i)[0]
            scale, zero = detail["quantization"]
            interp.set_tensor(detail["index"], np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8))
            interp.invoke()
            results.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
        assert np.array_equal(*results)


def test_litert_leaves_a_float_concat_float(conv_npz, tmp_path, monkeypatch, capsys) -> None:
    """A class token concatenated with int8 patch embeddings: the quantizer leaves the concat float, and the
    .tflite must too (litert-torch would otherwise store the class token in the patches' int8 scale)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from conftest import export_json

    manifest, folder = export_json("class_token_net", conv_npz, "int8", tmp_path / "o", monkeypatch, capsys)
    interp = Interpreter(str(folder / "model.int8.tflite"),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    concats = [op for op in interp._get_ops_details() if op["op_name"] == "CONCATENATION"]
    assert concats and all(tensors[op["outputs"][0]]["dtype"] == np.float32 for op in concats)
    sqnr = {a["path"]: a["accuracy"]["sqnr_db"] for a in manifest["artifacts"]}
    assert sqnr["model.int8.tflite"] > sqnr["model.int8.onnx"] - 1.0, sqnr


def test_eval_dropout_leaves_the_int8_chain_alone(conv_npz, tmp_path, monkeypatch, capsys) -> None:
    """nn.Dropout(inplace=True) between pooled features (with outlier channels) and the classifier: it
    is the identity in eval mode and must not be taken for a float op. Left in, SmoothQuant put a float
    multiply there that LiteRT's converter quantized (34.2 dB against ONNX Runtime's 38.9)."""
    from conftest import export_json

    manifest, _ = export_json("dropout_head", conv_npz, "int8", tmp_path / "o", monkeypatch, capsys)
    assert not any("dropout" in op for op in manifest["float_ops_in_quantized_graph"])
    smoothed = [c for a in manifest["algorithms"] if a["algorithm"] == "smoothquant" for c in a["changes"]]
    assert smoothed == []  # the classifier's input is int8 (the pool's), nothing to smooth
    sqnr = {a["path"]: a["accuracy"]["sqnr_db"] for a in manifest["artifacts"]}
    assert sqnr["model.int8.tflite"] > sqnr["model.int8.onnx"] - 1.0, sqnr


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch", "litert"])
def test_transformer_layer_in_every_runtime(tmp_path, runtime) -> None:
    job, flat, held = _job(tiny_encoder(), (8, 32), tmp_path)
    for artifact in get_backend(runtime).lower(job, tmp_path, ("int8",)):
        acc = accuracy(torch_outputs(flat, held), _run(artifact, held))
        assert acc["cosine"] > 0.99, (artifact.path.name, acc)
        # layer norm output is float: reported, not hidden
        if runtime != "executorch":
            assert artifact.not_quantized, artifact.path.name


@pytest.mark.parametrize("runtime", ["onnxruntime", "executorch", "litert"])
def test_int8_concat_in_every_runtime(tmp_path, runtime) -> None:
    from models import branches

    job, flat, held = _job(branches(), (3, 16, 16), tmp_path)
    simulated = torch_outputs(job.form.graph.folded, held)
    scales = output_scales(job.form.graph.folded)
    for artifact in get_backend(runtime).lower(job, tmp_path, ("int8",)):
        outputs = _run(artifact, held)
        assert max_steps(simulated, outputs, scales) <= 2.0, artifact.path.name


def test_fp16_recipe_gives_float16_artifacts_in_every_runtime(tmp_path, monkeypatch, capsys) -> None:
    """`fp16`: float16 weights in every runtime (ONNX Runtime's converter, XNNPACK in float16, LiteRT's
    float16 weights behind DEQUANTIZE), float32 I/O, each run in its runtime: closer to float than any
    int8 artifact, but not float32 either."""
    import onnx
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from conftest import export_json

    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).random((8, 3, 32, 32)).astype(np.float32))
    manifest, folder = export_json("tiny_conv_net", tmp_path / "x.npz", "fp16", tmp_path / "o", monkeypatch, capsys)
    fp16 = {a["path"]: a for a in manifest["artifacts"] if a["precision"] == "fp16"}
    assert set(fp16) == {"model.fp16.onnx", "model.fp16.ort", "model.fp16.pte", "model.fp16.tflite"}
    for name, a in fp16.items():
        assert 40 < a["accuracy"]["sqnr_db"] < 100, (name, a["accuracy"])  # float16 rounding, not float32
        assert a["io"]["inputs"][0]["dtype"] == "float32" and a["io"]["outputs"][0]["dtype"] == "float32"
    weights = [i for i in onnx.load(str(folder / "model.fp16.onnx")).graph.initializer if len(i.dims) == 4]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    model = flatbuffer_utils.read_model(str(folder / "model.fp16.tflite"))
    graph = model.subgraphs[0]
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
             for op in graph.operators]
    assert codes.count(schema.BuiltinOperator.DEQUANTIZE) >= 3  # stem, depthwise, pointwise weights
    assert sum(t.type == schema.TensorType.FLOAT16 for t in graph.tensors) >= 3
    assert manifest["simulated_fp16"]["sqnr_db"] > 40


def test_artifacts_with_non_finite_outputs_are_not_shipped(tmp_path, monkeypatch, capsys) -> None:
    """A model whose float16 form overflows (a value past 65504 inside). XNNPACK computes it in float16
    and gives inf, so model.fp16.pte is not shipped and the manifest and report say why; LiteRT keeps
    float32 compute behind float16 weights and ONNX Runtime's converted model stays finite on this host,
    so theirs are shipped."""
    from conftest import export_json

    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((8, 4, 16)).astype(np.float32))
    manifest, folder = export_json("overflows16", tmp_path / "x.npz", "fp16", tmp_path / "o", monkeypatch, capsys)
    assert manifest["simulated_fp16"]["non_finite"] > 0  # torch in float16 overflows too
    dropped = {n["path"]: n["reason"] for n in manifest["not_produced"]}
    assert list(dropped) == ["model.fp16.pte"] and "non-finite output values" in dropped["model.fp16.pte"]
    assert not (folder / "model.fp16.pte").exists() and (folder / "model.fp32.pte").exists()
    shipped = {a["path"]: a for a in manifest["artifacts"] if a["precision"] == "fp16"}
    assert set(shipped) == {"model.fp16.onnx", "model.fp16.ort", "model.fp16.tflite"}
    assert all(a["accuracy"]["sqnr_db"] > 30 for a in shipped.values())
    assert "## Not produced" in (folder / "report.md").read_text()


def test_accuracy_reports_non_finite_outputs_instead_of_no_error() -> None:
    reference = [[np.ones(4, np.float32)]]
    result = accuracy(reference, [[np.array([1, np.nan, np.inf, 1], np.float32)]])
    assert result["non_finite"] == 2 and result["sqnr_db"] is None and result["cosine"] is None
    assert "non_finite" not in accuracy(reference, [[np.ones(4, np.float32)]])


def test_accuracy_of_an_all_zero_output_is_not_a_perfect_cosine() -> None:
    """A model whose outputs are tiny (a random-init Hugging Face MobileNetV2: ~1e-25) quantized to exact
    zeros: cosine 0, not 1, whatever the reference's scale; two zero outputs agree."""
    tiny = [[np.array([1e-25, -3e-25, 2e-25], np.float32)]]
    zero = [[np.zeros(3, np.float32)]]
    assert accuracy(tiny, zero)["cosine"] == 0.0
    assert accuracy(zero, zero)["cosine"] == 1.0
    assert accuracy(tiny, [[np.array([2e-25, -6e-25, 4e-25], np.float32)]])["cosine"] == 1.0


class _OneLayerTwoCalls(torch.nn.Module):
    """One linear layer (weight and bias) called on two inputs of different ranges, as a recurrent layer's
    steps or a tied weight call it: each call gets its own input scale."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = torch.relu(self.shared(x))
        return self.shared(3.0 * first)


def test_executorch_each_call_of_a_shared_layer_gets_its_own_int32_bias(tmp_path) -> None:
    """XNNPACK's lowering quantizes a bias at its call's input scale but defined it once per graph node:
    the second call computed with the first call's int32 bias (3 output steps off before)."""
    from edgeship.backends.executorch.xnnpack_passes import bias_per_call

    job, flat, held = _job(_OneLayerTwoCalls().eval(), (16,), tmp_path)
    scales = [n.args[1] for n in job.form.graph.folded.graph.nodes
              if n.op == "call_function" and "dequantize_per_tensor" in str(n.target)
              and n.users and all("linear" in str(u.target) for u in n.users)]
    assert len(set(scales)) == 2, scales  # the two calls read two different input scales
    split = bias_per_call(job.form.graph.folded)
    biases = [n.args[2].target for n in split.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    assert len(set(biases)) == 2
    (artifact,) = get_backend("executorch").lower(job, tmp_path, ("int8",))
    simulated = torch_outputs(job.form.graph.folded, held)
    assert max_steps(simulated, _run(artifact, held), output_scales(job.form.graph.folded)) <= 1.0
