"""int4 (w4a8): one set of block-wise int4 weights, delivered to ONNX Runtime (MatMulNBits), ExecuTorch
(XNNPACK int4 kernels) and LiteRT (block-wise INT4 FULLY_CONNECTED weights), each run in its runtime."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import export_json, run_cli
from test_manifest_schema import validate

from edgeship.flows.checks import HOST_SATURATION, saturating_host
from edgeship.quantize.int4 import QMAX, QMIN, quantize_weight

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = pytest.mark.xdist_group("test_int4")

MODELS = str(Path(__file__).parent / "models.py")


def test_block_wise_symmetric_int4() -> None:
    w = torch.randn(8, 64) * torch.linspace(0.1, 3.0, 64)  # columns of very different size
    q, scale = quantize_weight(w, 32)
    assert q.dtype == torch.int8 and int(q.min()) >= QMIN and int(q.max()) <= QMAX
    assert scale.shape == (8, 2)
    blocks = w.reshape(8, 2, 32)
    assert torch.allclose(scale, blocks.abs().amax(-1) / 7)
    dequantized = (q.reshape(8, 2, 32).float() * scale[..., None]).reshape(8, 64)
    assert float(((dequantized - w).abs().reshape(8, 2, 32) - scale[..., None] / 2).max()) <= 1e-6  # half a step


@pytest.fixture(scope="module")
def int4_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("int4")
    np.savez(root / "x.npz", x=np.random.default_rng(0).standard_normal((16, 8, 32)).astype(np.float32))
    return root


def test_int4_export_delivers_the_same_weights(int4_export, monkeypatch, capsys) -> None:
    manifest, folder = export_json("tiny_encoder", int4_export / "x.npz", "int4", int4_export / "o", monkeypatch, capsys)
    validate(manifest)  # with simulated_int4
    paths = {a["path"]: a for a in manifest["artifacts"]}
    assert set(paths) == {"model.fp32.onnx", "model.int4.onnx", "model.int4.ort", "model.fp32.pte",
                          "model.int4.pte", "model.fp32.tflite", "model.int4.tflite"}
    assert manifest["not_produced"] == []
    encodings = json.loads((folder / "encodings.json").read_text())["int4_weights"]
    assert len(encodings) == 4 and all(e["group"] == 32 for e in encodings.values())  # qkv, proj, ff up/down

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(folder / "model.int4.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    onnx_scales = {}
    assert len(nbits) == 4  # the attention's activation x activation matmuls stay MatMul
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == 2
    for node in nbits:
        layer = node.name.removesuffix("_int4_matmul")
        packed, scales = inits[node.input[1]], inits[node.input[2]]
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1).astype(np.int8) - 8
        # the values and scales in the .onnx are the ones in encodings.json (and so in the .pte)
        assert hashlib.sha256(q.tobytes()).hexdigest() == encodings[layer]["values_sha256"]
        assert hashlib.sha256(scales.astype(np.float32).tobytes()).hexdigest() == encodings[layer]["scales_sha256"]
        onnx_scales[layer] = scales
    # the .tflite carries the same values, and the same scales rounded to float16 (LiteRT's scale type)
    tflite = _tflite_int4_weights(folder / "model.int4.tflite")
    assert len(tflite) == 4
    for q, scales in tflite:
        layer = next(k for k, e in encodings.items() if e["values_sha256"] == hashlib.sha256(q.tobytes()).hexdigest())
        assert np.array_equal(scales.reshape(-1), onnx_scales[layer].astype(np.float16))
    for name in ("model.int4.onnx", "model.int4.ort", "model.int4.pte", "model.int4.tflite"):
        acc = paths[name]["accuracy"]
        assert acc["cosine"] > 0.99 and acc["sqnr_db"] > 18, (name, acc)  # run in its own runtime
        assert paths[name]["bytes"] < paths[name.replace("int4", "fp32").replace(".ort", ".onnx")]["bytes"]
    # the int4 layers ran in int4 kernels: none of the four linears is left as a float MatMul or Gemm
    assert not any(op["op"] == "Gemm" for op in paths["model.int4.onnx"]["not_quantized"])


def _tflite_int4_weights(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(values, float16 scales) of every INT4 tensor in a .tflite, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeship.backends.litert.int4 import unpack

    model = flatbuffer_utils.read_model(str(path))
    graph = model.subgraphs[0]
    found = []
    for tensor in graph.tensors:
        if tensor.type == schema.TensorType.INT4:
            q = unpack(np.asarray(model.buffers[tensor.buffer].data, np.uint8), tuple(tensor.shape))
            scale_tensor = graph.tensors[tensor.quantization.details.scales]
            scales = np.frombuffer(np.asarray(model.buffers[scale_tensor.buffer].data, np.uint8).tobytes(), np.float16)
            found.append((q, scales))
    return found


def test_int4_rejects_budgets_and_int8_algorithms(int4_export, tmp_path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["export", f"{MODELS}:tiny_encoder", "--target", "host", "--calibration",
                            str(int4_export / "x.npz"), "--recipe", "int4", "--min-cosine", "0.99"],
                           monkeypatch, capsys)
    assert code == 1 and "budgets choose float layers for int8 recipes" in err
    (tmp_path / "r.toml").write_text('scheme = "w4a8"\nalgorithms = ["smoothquant"]\n')
    code, _, err = run_cli(["export", f"{MODELS}:tiny_encoder", "--target", "host", "--calibration",
                            str(int4_export / "x.npz"), "--recipe", str(tmp_path / "r.toml")], monkeypatch, capsys)
    assert code == 1 and "do not apply to w4a8" in err
    (tmp_path / "g.toml").write_text('scheme = "w4a8"\ngroup_size = 48\n')
    code, _, err = run_cli(["export", f"{MODELS}:tiny_encoder", "--target", "host", "--calibration",
                            str(int4_export / "x.npz"), "--recipe", str(tmp_path / "g.toml")], monkeypatch, capsys)
    assert code == 1 and "group_size 48" in err


def test_gptq_moves_the_layer_output_less_than_rounding() -> None:
    from edgeship.quantize.int4 import gptq_weight

    torch.manual_seed(0)
    mix = torch.randn(64, 64) * 0.3 + torch.eye(64)  # correlated input channels, as real activations have
    x = torch.randn(2048, 64) @ mix
    w = torch.randn(32, 64)
    q_rtn, s_rtn = quantize_weight(w, 32)
    q_gptq, s_gptq = gptq_weight(w, x.T @ x, 32)
    assert int(q_gptq.min()) >= QMIN and int(q_gptq.max()) <= QMAX

    def error(q, s):
        deq = (q.reshape(32, 2, 32).float() * s[..., None]).reshape(32, 64)
        return float(((x @ deq.T) - (x @ w.T)).pow(2).mean())

    assert error(q_gptq, s_gptq) < 0.7 * error(q_rtn, s_rtn)


@pytest.mark.slow
def test_gptq_on_minilm() -> None:
    """all-MiniLM-L6-v2, int4 group 32: simulated mean cosine on 32 held-out real sentences."""
    from models import minilm_samples

    from edgeship.metrics.compare import accuracy
    from edgeship.quantize.int4 import build_int4
    from edgeship.quantize.recipe import Recipe
    from edgeship.verify import torch_outputs

    model, calib, evaluation = minilm_samples()
    program = torch.export.export(model, tuple(torch.from_numpy(a) for a in calib.sample(0)), strict=False)
    reference = torch_outputs(model, evaluation)
    cos = {a: accuracy(reference, torch_outputs(build_int4(program, Recipe(scheme="w4a8", algorithms=a), calib).packed,
                                                evaluation))["cosine"]
           for a in (("embeddings",), ("embeddings", "gptq"))}
    print(cos)
    assert cos[("embeddings", "gptq")] > cos[("embeddings",)] + 0.015 and cos[("embeddings", "gptq")] >= 0.97


def test_int4_recipe_keeps_layers_in_float(int4_export, tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "r.toml").write_text('scheme = "w4a8"\nkeep_float = ["ff.2"]\nalgorithms = []\n')
    code, out, err = run_cli(["export", f"{MODELS}:tiny_encoder", "--target", "host", "--calibration",
                              str(int4_export / "x.npz"), "--recipe", str(tmp_path / "r.toml"),
                              "--out", str(tmp_path / "o"), "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    encodings = json.loads((tmp_path / "o/models-tiny_encoder/host/encodings.json").read_text())
    assert len(encodings["int4_weights"]) == 3
    assert encodings["float_layers"][0]["reason"] == "kept in float by the recipe (keep_float)"


def test_tflite_int4_rewrite_replaces_only_edgeship_int4_layers(tmp_path) -> None:
    """The rewrite gives the FULLY_CONNECTED whose weight is an int4 layer block-wise INT4 weights and
    leaves a float layer alone; LiteRT runs the result close to the int4 model in float."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.backends.litert.int4 import to_blockwise_int4
    from edgeship.quantize.int4 import Int4Weight

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    first = Int4Weight("first", "0.weight", *quantize_weight(model[0].weight, 32), 32)
    model[0].weight.data = first.dequantized()
    x = torch.randn(4, 128)
    expected = model(x).detach().numpy()
    path = tmp_path / "m.tflite"
    litert_torch.convert(model, (x,)).export(str(path))
    float_bytes = path.stat().st_size
    absent = Int4Weight("absent", "x.weight", *quantize_weight(torch.randn(8, 32), 32), 32)
    assert to_blockwise_int4(path, [first, absent]) == ["absent"]
    (q, scales), = _tflite_int4_weights(path)  # the second layer stayed float
    assert np.array_equal(q, first.q.numpy()) and np.array_equal(scales, first.scale.numpy().astype(np.float16).reshape(-1))
    assert path.stat().st_size < float_bytes - 128 * 64 * 3  # the float copy of the weight is gone
    interp = Interpreter(str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x.numpy())
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    # int8 activations at run time: a small error against the float model with the same weights
    assert 0 < np.abs(out - expected).max() < 0.02 * np.abs(expected).max()


def test_tflite_int4_rewrite_finds_a_weight_the_converter_scaled(tmp_path) -> None:
    """litert-torch folds a constant multiply after a linear layer into its weight (per output row);
    the rewrite still finds the layer, keeps its int4 values and moves the factor into the scales."""
    import litert_torch

    from edgeship.backends.litert.int4 import to_blockwise_int4
    from edgeship.quantize.int4 import Int4Weight

    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 32)

        def forward(self, x):
            return self.fc(x) * 0.37

    torch.manual_seed(1)
    model = Scaled().eval()
    layer = Int4Weight("fc", "fc.weight", *quantize_weight(model.fc.weight, 32), 32)
    model.fc.weight.data = layer.dequantized()
    path = tmp_path / "s.tflite"
    litert_torch.convert(model, (torch.randn(3, 64),)).export(str(path))
    assert to_blockwise_int4(path, [layer]) == []
    (q, scales), = _tflite_int4_weights(path)
    assert np.array_equal(q, layer.q.numpy())
    expected = (layer.scale.numpy() * np.float32(0.37)).astype(np.float16).reshape(-1)
    assert np.abs(scales.astype(np.float32) - expected.astype(np.float32)).max() <= 1e-3 * float(expected.max())


def test_tflite_rewrite_runs_asymmetric_int4_with_its_offsets(tmp_path) -> None:
    """Asymmetric int4 (values q * scale + offset): LiteRT gets the same int4 values and scales, and the
    offsets as a layer over block sums beside it; the result matches the same weights in float, for a
    3-d input, a fused ReLU and a weight the converter scaled per row."""
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.backends.litert.int4 import to_blockwise_int4
    from edgeship.quantize.grid import quantize_affine
    from edgeship.quantize.int4 import Int4Weight

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = torch.nn.Linear(128, 96, bias=False), torch.nn.Linear(96, 64)

        def forward(self, x):
            return self.down(torch.relu(self.up(x))) * 0.5

    torch.manual_seed(2)
    model = Block().eval()
    layers = []
    for name in ("up", "down"):
        linear = getattr(model, name)
        linear.weight.data = linear.weight.data + 0.05  # off centre: the offsets matter
        q, scale, offset = quantize_affine(linear.weight, 32)
        layers.append(Int4Weight(name, f"{name}.weight", q, scale, 32, offset=offset))
        linear.weight.data = layers[-1].dequantized()
    x = torch.randn(1, 5, 128)
    expected = model(x).detach().numpy()
    path = tmp_path / "a.tflite"
    litert_torch.convert(model, (x,)).export(str(path))
    assert to_blockwise_int4(path, layers) == []
    assert sorted(q.tobytes() for q, _ in _tflite_int4_weights(path)) == sorted(
        w.q.numpy().astype(np.int8).tobytes() for w in layers)
    interp = Interpreter(str(path))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x.numpy())
    interp.invoke()
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    assert out.shape == expected.shape
    # int8 activations at run time: a small error, far below what leaving the offsets out gives
    error = np.abs(out - expected).max()
    assert 0 < error < 0.02 * np.abs(expected).max()
    for linear, w in zip((model.up, model.down), layers):
        linear.weight.data = w.dequantized() - w.offset.repeat_interleave(32, dim=1)
    assert error < 0.1 * np.abs(model(x).detach().numpy() - expected).max()


def test_int8_dynamic_export_delivers_the_same_int8_weights(int4_export, monkeypatch, capsys) -> None:
    """`int8-dynamic`: per-channel int8 weights for the linear layers, activations quantized at run time:
    DynamicQuantizeMatMul in ONNX Runtime, XNNPACK's qd8 kernels, LiteRT's hybrid FULLY_CONNECTED."""
    import onnx
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    from onnx import numpy_helper

    manifest, folder = export_json("tiny_encoder", int4_export / "x.npz", "int8-dynamic", int4_export / "d",
                                   monkeypatch, capsys)
    paths = {a["path"]: a for a in manifest["artifacts"]}
    assert set(paths) == {"model.fp32.onnx", "model.int8-dynamic.onnx", "model.int8-dynamic.ort", "model.fp32.pte",
                          "model.int8-dynamic.pte", "model.fp32.tflite", "model.int8-dynamic.tflite"}
    encodings = json.loads((folder / "encodings.json").read_text())["int8_dynamic_weights"]
    assert len(encodings) == 4 and all(e["bits"] == 8 and e["range"] == [-127, 127] for e in encodings.values())
    by_values = {e["values_sha256"]: layer for layer, e in encodings.items()}

    model = onnx.load(str(folder / "model.int8-dynamic.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dynamic = [n for n in model.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    assert len(dynamic) == 4
    onnx_scales = {}
    for node in dynamic:
        q = np.ascontiguousarray(inits[node.input[1]].T)  # stored K x N
        layer = by_values[hashlib.sha256(q.tobytes()).hexdigest()]
        scales = inits[node.input[2]].astype(np.float32)
        assert hashlib.sha256(scales.tobytes()).hexdigest() == encodings[layer]["scales_sha256"]
        onnx_scales[layer] = scales

    tflite = flatbuffer_utils.read_model(str(folder / "model.int8-dynamic.tflite"))
    int8 = [t for t in tflite.subgraphs[0].tensors if t.type == schema.TensorType.INT8]
    assert len(int8) == 4
    for tensor in int8:
        q = np.asarray(tflite.buffers[tensor.buffer].data, np.uint8).view(np.int8).reshape(tuple(tensor.shape))
        layer = by_values[hashlib.sha256(q.tobytes()).hexdigest()]
        assert np.array_equal(np.asarray(tensor.quantization.scale, np.float32), onnx_scales[layer])

    for name in ("model.int8-dynamic.onnx", "model.int8-dynamic.ort", "model.int8-dynamic.pte",
                 "model.int8-dynamic.tflite"):
        acc = paths[name]["accuracy"]
        # run in its own runtime; ONNX Runtime's int8 kernels saturate on an x86 host without VNNI, which the
        # manifest says (flows/checks.py flag_host_saturation), and the device computes as the others do
        saturated = paths[name].get("host_accuracy") == HOST_SATURATION
        assert saturated == (saturating_host() and paths[name]["runtime"] == "onnxruntime"), name
        assert acc["cosine"] > (0.99 if saturated else 0.999) and acc["sqnr_db"] > (20 if saturated else 30), \
            (name, acc)
        fp32 = name.replace("int8-dynamic", "fp32").replace(".ort", ".onnx")
        assert paths[name]["bytes"] < 0.6 * paths[fp32]["bytes"]
    # ExecuTorch ran the linear layers in the XNNPACK delegate (only the layer norms outside it)
    assert {op["op"] for op in paths["model.int8-dynamic.pte"]["not_quantized"]} <= {"native_layer_norm"}


def test_int4_puts_convolutions_in_int8(conv_npz, tmp_path, monkeypatch, capsys) -> None:
    """A CNN with a linear head: the head gets int4 weights and the convolutions static int8 in every
    runtime (int4 kernels for the head, int8 kernels for the convolutions), from one calibration."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from onnx import numpy_helper

    manifest, folder = export_json("wide_conv_net", conv_npz, "int4", tmp_path / "o", monkeypatch, capsys)
    assert {r["algorithm"]: r["changes"] for r in manifest["algorithms"]}["int8_convolutions"][0]["layers"] == 3
    encodings = json.loads((folder / "encodings.json").read_text())
    assert list(encodings["int4_weights"]) and len(encodings["int8_layers"]["weights"]) == 3

    model = onnx.load(str(folder / "model.int4.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 1
    int8_weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                    and inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int8
                    and inits[n.input[0]].ndim == 4]
    assert len(int8_weights) == 3  # the three convolutions' weights

    interp = Interpreter(str(folder / "model.int4.tflite"),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    convs = [op for op in interp._get_ops_details() if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 3
    assert all(tensors[op["inputs"][1]]["dtype"] == np.int8 for op in convs)
    assert len(_tflite_int4_weights(folder / "model.int4.tflite")) == 1

    paths = {a["path"]: a for a in manifest["artifacts"]}
    # the .pte's delegate blob is opaque here, so its convolutions are seen in its size: the int4 head alone
    # could save at most its 1280 float bytes; int8 convolutions save 3/4 of their 2176 weights' 8704
    assert paths["model.fp32.pte"]["bytes"] - paths["model.int4.pte"]["bytes"] > 1280 + 8704 // 4
    for name in ("model.int4.onnx", "model.int4.pte", "model.int4.tflite"):
        assert paths[name]["accuracy"]["cosine"] > 0.99, (name, paths[name]["accuracy"])
        assert paths[name]["not_quantized"] == [] or all(o["op"] != "Conv" for o in paths[name]["not_quantized"])


def test_keep_int8_gives_a_linear_layer_int8_in_every_runtime(tmp_path, monkeypatch, capsys) -> None:
    """`keep_int8` in an int4 recipe: the named linear layer gets static int8 (int8 weights and
    activations) instead of int4 weights, in every runtime, and the model gets closer to float where int4
    hurts that layer (a layer with a few large weights per group)."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((24, 8, 64)).astype(np.float32))
    (tmp_path / "k.toml").write_text('scheme = "w4a8"\nkeep_int8 = ["a"]\n')
    plain, _ = export_json("heavy_tail_mlp", tmp_path / "x.npz", "int4", tmp_path / "p", monkeypatch, capsys)
    kept, folder = export_json("heavy_tail_mlp", tmp_path / "x.npz", str(tmp_path / "k.toml"), tmp_path / "k",
                               monkeypatch, capsys)
    sqnr = {m: {a["path"]: a["accuracy"]["sqnr_db"] for a in r["artifacts"] if a["precision"] == "int4"}
            for m, r in (("plain", plain), ("kept", kept))}
    assert len(sqnr["kept"]) == 4 and all(sqnr["kept"][p] > sqnr["plain"][p] + 10 for p in sqnr["kept"]), sqnr

    encodings = json.loads((folder / "encodings.json").read_text())
    assert list(encodings["int4_weights"]) == ["linear_1"]  # b
    assert list(encodings["int8_layers"]["weights"]) == ["model.a.weight"]
    assert {r["algorithm"]: r["changes"] for r in kept["algorithms"]}["int8_convolutions"][0]["keep_int8"] == ["linear"]
    model = onnx.load(str(folder / "model.int4.onnx"))
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 1
    interp = Interpreter(str(folder / "model.int4.tflite"),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    fcs = [op for op in interp._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    assert len(fcs) == 2 and len(_tflite_int4_weights(folder / "model.int4.tflite")) == 1  # b int4, a int8


def test_keep_int8_bad_input(tmp_path, monkeypatch, capsys) -> None:
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((8, 8, 64)).astype(np.float32))
    for name, text, expected in (("w8.toml", 'keep_int8 = ["a"]\n', "keep_int8 is for w4a8 (int4) recipes"),
                                 ("none.toml", 'scheme = "w4a8"\nkeep_int8 = ["nope.*"]\n',
                                  "recipe keep_int8 pattern 'nope.*' matches no layer")):
        (tmp_path / name).write_text(text)
        code, _, err = run_cli(["export", f"{MODELS}:heavy_tail_mlp", "--target", "host", "--calibration",
                                str(tmp_path / "x.npz"), "--recipe", str(tmp_path / name), "--out",
                                str(tmp_path / "o")], monkeypatch, capsys)
        assert code == 1 and expected in err and "Traceback" not in err, err
        assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*"))
