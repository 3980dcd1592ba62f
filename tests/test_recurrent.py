"""Recurrent layers (edgeship/export/recurrent.py): the unrolled form computes what nn.LSTM / nn.GRU /
nn.RNN compute, its step weights stay one shared copy through calibration and the PTQ passes, and a
trained keyword spotter exports with int8 recurrent matmuls to all three runtimes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from edgeship.calibration.samples import Samples
from edgeship.export.recurrent import LOOP_STEPS, Unrolled, UnrolledCell, unroll_recurrent
from edgeship.flows.checks import HOST_SATURATION, saturating_host
from edgeship.quantize.calibrate import calibrate, convert
from edgeship.quantize.graphs import attr
from edgeship.quantize.recipe import recipe_by_name

sys.path.insert(0, str(Path(__file__).parent))
from conftest import runtime_profile  # noqa: E402
from models import CellLoop, spoken_features, tiny_conv_net, trained_keyword_spotter  # noqa: E402

TESTS = Path(__file__).resolve().parent
MATMULS = ("lstm", "gru", "matmul", "gemm", "fully_connected", "linear")  # op names that would be float matmuls


@pytest.mark.parametrize("cell, kwargs, state, unbatched", [
    (nn.LSTM, dict(num_layers=2, batch_first=True), False, False),
    (nn.LSTM, dict(bidirectional=True), True, False),
    (nn.LSTM, dict(proj_size=3, num_layers=2, batch_first=True), True, False),
    (nn.LSTM, dict(bias=False), False, True),
    (nn.GRU, dict(num_layers=2, batch_first=True, bidirectional=True), False, False),
    (nn.GRU, dict(), True, False),
    (nn.GRU, dict(bias=False), True, True),
    (nn.RNN, dict(nonlinearity="relu", num_layers=2), True, False),
    (nn.RNN, dict(batch_first=True, bidirectional=True), False, False),
], ids=["lstm-2layer", "lstm-bidir-state", "lstm-proj", "lstm-nobias-unbatched", "gru-2layer-bidir",
        "gru-state", "gru-nobias-unbatched", "rnn-relu-state", "rnn-tanh-bidir"])
@pytest.mark.parametrize("steps", [7, LOOP_STEPS], ids=["unrolled", "loop"])
def test_unrolled_computes_what_the_layer_computes(cell, kwargs, state, unbatched, steps) -> None:
    torch.manual_seed(0)
    layer = cell(5, 6, **kwargs).eval()
    batch = 2
    shape = (steps, 5) if unbatched else ((batch, steps, 5) if layer.batch_first else (steps, batch, 5))
    x = torch.randn(shape)
    hx = None
    if state:
        layers = layer.num_layers * (2 if layer.bidirectional else 1)
        h_size = getattr(layer, "proj_size", 0) or 6
        h0 = torch.randn((layers, h_size) if unbatched else (layers, batch, h_size))
        hx = (h0, torch.randn((layers, 6) if unbatched else (layers, batch, 6))) if cell is nn.LSTM else h0
    want, got = pytree.tree_leaves(layer(x, hx)), pytree.tree_leaves(Unrolled(layer).eval()(x, hx))
    assert len(want) == len(got) == (3 if cell is nn.LSTM else 2)
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", [nn.LSTMCell(5, 6), nn.GRUCell(5, 6), nn.RNNCell(5, 6),
                                  nn.RNNCell(5, 6, nonlinearity="relu"), nn.LSTMCell(5, 6, bias=False),
                                  nn.GRUCell(5, 6, bias=False)],
                         ids=["lstm", "gru", "rnn-tanh", "rnn-relu", "lstm-nobias", "gru-nobias"])
@pytest.mark.parametrize("state", [False, True], ids=["no-state", "state"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
def test_unrolled_cell_computes_what_the_cell_computes(cell, state, unbatched) -> None:
    torch.manual_seed(0)
    x = torch.randn(5) if unbatched else torch.randn(3, 5)
    shape = (6,) if unbatched else (3, 6)
    hx = None
    if state:
        hx = (torch.randn(shape), torch.randn(shape)) if isinstance(cell, nn.LSTMCell) else torch.randn(shape)
    want, got = pytree.tree_leaves(cell.eval()(x, hx)), pytree.tree_leaves(UnrolledCell(cell).eval()(x, hx))
    assert len(want) == len(got) == (2 if isinstance(cell, nn.LSTMCell) else 1)
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_cells_in_a_loop_become_linear_layers_and_their_zero_state_a_constant() -> None:
    """A model's own loop over nn.LSTMCell / nn.GRUCell: captured as they are, the cells are aten.lstm_cell /
    gru_cell (float in every runtime); rewritten, every step calls two linear layers of one weight each, and
    the first step's hidden projection of `x.new_zeros(...)` is folded (zeros for the LSTM: its add is gone)."""
    from edgeship.quantize.calibrate import transformed
    from edgeship.quantize.recipe import Recipe

    torch.manual_seed(0)
    model = CellLoop(hidden=16).eval()
    x = torch.randn(3, 40, 5)
    unrolled, names = unroll_recurrent(model, (x[:1],))
    assert names == ["lstm", "gru"]
    program = torch.export.export(unrolled, (x[:1],), strict=False)
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert not {torch.ops.aten.lstm_cell.default, torch.ops.aten.gru_cell.default} & targets
    module, _, _ = transformed(program, Recipe(algorithms=()), Samples(("a", "b", "c"), (x.numpy(),), "random"))
    linears = [n for n in module.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linears) == 2 * 5 + 2 * 4 + 1  # per cell: input and hidden projection per step, none on the zero state
    folded = [n for n in module.graph.nodes if n.op == "get_attr" and n.target.startswith("_folded_")]
    assert len(folded) == 2  # each cell's first hidden projection (the GRU's is its bias, the LSTM's zeros)
    torch.testing.assert_close(module(x[:1]), model(x[:1]), rtol=1e-5, atol=1e-6)


def test_models_without_recurrent_layers_are_left_as_they_are() -> None:
    model = tiny_conv_net()
    assert unroll_recurrent(model, (torch.randn(1, 3, 32, 32),)) == (model, [])


def test_unrolling_works_on_a_copy() -> None:
    model = trained_keyword_spotter("gru", steps=5)
    x, _ = spoken_features(2)
    rewritten, names = unroll_recurrent(model, (x,))
    assert names == ["rnn"] and isinstance(rewritten.rnn, Unrolled)
    assert type(model.rnn) is nn.GRU  # the user's model is not changed
    torch.testing.assert_close(rewritten(x), model(x), rtol=1e-5, atol=1e-5)


def test_step_weights_stay_one_copy_through_calibration() -> None:
    """Every step of the unrolled layer reads the same hidden weight; SmoothQuant, GPTQ and outlier
    splitting must not give each step its own (a copy per step made the int8 artifact ~30x its weights)."""
    model = trained_keyword_spotter("lstm", steps=20)
    x, _ = spoken_features(12, frames=10, seed=3)
    unrolled, _ = unroll_recurrent(model, (x[:1],))
    program = torch.export.export(unrolled, (x[:1],), strict=False)
    calib = Samples(("x",), (x.numpy(),), "synthetic")
    memo = {}
    recipe = recipe_by_name("int8")
    assert {"smoothquant", "gptq"} <= set(recipe.algorithms)
    prepared = calibrate(program, recipe, calib, memo=memo)
    linears = [n for n in prepared.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linears) == 2 * (1 + 9) + 1  # per layer: input projection, a hidden call per step after the first; head
    hidden = {n.args[1].args[0].target for n in linears}
    assert len(hidden) == 2 * 2 + 1  # one weight per projection
    assert len(memo["passes"]["gptq"]["values"]) == len(hidden) + 1  # each weight once, and the convolution
    folded = convert(prepared).folded
    constants = sum(attr(folded, n.target).numel() for n in folded.graph.nodes if n.op == "get_attr")
    parameters = sum(p.numel() for p in model.parameters())
    assert constants < 1.2 * parameters, (constants, parameters)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_keyword_spotter_exports_int8_recurrence_to_every_runtime(cell, tmp_path) -> None:
    from edgeship import api

    x, _ = spoken_features(48, seed=5)
    np.savez(tmp_path / "frames.npz", x=x.numpy())
    result = api.export(f"{TESTS / 'models.py'}:trained_{cell}_spotter", "linux-arm64", tmp_path / "frames.npz",
                        out=tmp_path / "out")
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    artifacts = {a["path"]: a for a in manifest["artifacts"]}
    assert {"model.int8.onnx", "model.int8.pte", "model.int8.tflite"} <= set(artifacts)
    sizes = {}
    for name in ("model.int8.onnx", "model.int8.pte", "model.int8.tflite"):
        a = artifacts[name]
        float_ops = {f["op"].lower() for f in a["not_quantized"]}
        assert not [op for op in float_ops if any(k in op for k in MATMULS)], (name, float_ops)
        assert a["accuracy"]["sqnr_db"] > 25, (name, a["accuracy"])
        fp32 = artifacts[name.replace("int8", "fp32")]
        sizes[name] = a["bytes"] / fp32["bytes"]
    # int8 weights: the int8 .pte and .tflite are under 70% of their fp32 twins (both unrolled; the steps' ops
    # are a fixed cost), the int8 .onnx under the fp32 .onnx that keeps ONNX's compact LSTM / GRU op
    assert sizes["model.int8.pte"] < 0.7 and sizes["model.int8.tflite"] < 0.7 and sizes["model.int8.onnx"] < 0.8, sizes


@pytest.mark.slow
def test_recurrent_weights_are_int8_with_dynamic_activations_on_every_runtime(tmp_path) -> None:
    """int8-dynamic: the ONNX and LiteRT rewrites find every step's matmul, though the steps share one weight.
    The profile asks for no fp32 artifacts, and none is made."""
    from edgeship import api

    x, _ = spoken_features(24, frames=16, seed=6)  # 16 steps keep the unrolled lowering within the suite's time
    np.savez(tmp_path / "frames.npz", x=x.numpy())
    profile = runtime_profile(tmp_path / "int8-only.toml", "linux-arm64", precisions=("int8",))
    result = api.export(f"{TESTS / 'models.py'}:trained_lstm_spotter", str(profile), tmp_path / "frames.npz",
                        out=tmp_path / "out", recipe="int8-dynamic")
    assert {a["precision"] for a in result.manifest["artifacts"]} == {"int8-dynamic"}
    assert not list(result.out_dir.glob("model.fp32.*"))
    artifacts = result.manifest["artifacts"]
    assert {a["runtime"] for a in artifacts} == {"onnxruntime", "executorch", "litert"}
    for a in artifacts:
        float_ops = {f["op"].lower() for f in a["not_quantized"]}
        assert not [op for op in float_ops if any(k in op for k in MATMULS)], (a["path"], float_ops)
        # a host whose ONNX Runtime int8 kernels saturate (x86 without VNNI: flows/checks.py) computes the
        # .onnx less accurately than the device does, and the manifest says so
        saturated = a.get("host_accuracy") == HOST_SATURATION
        assert saturated == (saturating_host() and a["runtime"] == "onnxruntime"), a["path"]
        assert a["accuracy"]["sqnr_db"] > (20 if saturated else 35), (a["path"], a["accuracy"])


@pytest.mark.slow
def test_cell_loop_exports_int8_recurrence_to_every_runtime(tmp_path) -> None:
    """nn.LSTMCell and nn.GRUCell in the model's own loop from a zero state: every step's matmuls int8 in all
    three runtimes (the cells stayed float before), and ExecuTorch as close to float as the others (its int8
    .pte gave 23.6 dB against 42.4 in ONNX Runtime before each call of the GRU's input layer got its own
    bias: edgeship/backends/executorch/xnnpack_passes.py `bias_per_call`)."""
    from edgeship import api

    x, _ = spoken_features(24, frames=10, seed=5)  # 10 steps of the model's loop, each lowered
    np.savez(tmp_path / "frames.npz", x=x.numpy())
    profile = runtime_profile(tmp_path / "int8-only.toml", "linux-arm64", precisions=("int8",))  # no fp32 files
    result = api.export(f"{TESTS / 'models.py'}:trained_cell_loop", str(profile), tmp_path / "frames.npz",
                        out=tmp_path / "out")
    artifacts = result.manifest["artifacts"]
    assert {a["precision"] for a in artifacts} == {"int8"}
    assert {a["runtime"] for a in artifacts} == {"onnxruntime", "executorch", "litert"}
    for a in artifacts:
        float_ops = {f["op"].lower() for f in a["not_quantized"]}
        assert not [op for op in float_ops if any(k in op for k in MATMULS + ("cell",))], (a["path"], float_ops)
        assert a["accuracy"]["sqnr_db"] > 35, (a["path"], a["accuracy"])
    sqnr = [a["accuracy"]["sqnr_db"] for a in artifacts]
    assert max(sqnr) - min(sqnr) < 2.0, sqnr


class _LearnedInitialState(nn.Module):
    """A GRU whose initial state is a parameter: its first step's hidden projection is a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(6, 8, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, 8))

    def forward(self, x):
        return self.rnn(x, self.h0)[0]


def test_layers_on_constants_are_folded_before_quantization() -> None:
    from edgeship.quantize.calibrate import transformed
    from edgeship.quantize.recipe import Recipe

    torch.manual_seed(0)
    model = _LearnedInitialState().eval()
    x = torch.randn(4, 5, 6)
    unrolled, _ = unroll_recurrent(model, (x[:1],))
    program = torch.export.export(unrolled, (x[:1],), strict=False)
    before = sum(n.target == torch.ops.aten.linear.default for n in program.graph.nodes)
    module, _, _ = transformed(program, Recipe(algorithms=()), Samples(("x",), (x.numpy(),), "random"))
    linears = [n for n in module.graph.nodes if n.target == torch.ops.aten.linear.default]
    assert len(linears) == before - 1  # the hidden projection of h0, now a buffer
    assert all(any(a.op == "placeholder" for a in _ancestors(n)) for n in linears)
    torch.testing.assert_close(module(x[:1]), model(x[:1]), rtol=1e-5, atol=1e-6)


def _ancestors(node):
    seen, todo = set(), [node]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def test_sensitivity_switches_a_shared_step_weight_in_every_step() -> None:
    """analyze and budgets rank a weight the steps share as one layer (one row, not one per step), and
    what they simulate for it is what the export gives when that layer's calls are its only int8 ones."""
    import copy

    from edgeship.metrics.compare import accuracy
    from edgeship.quantize.sensitivity import Simulator
    from edgeship.verify import torch_outputs

    model = trained_keyword_spotter("lstm", steps=20)
    x, _ = spoken_features(16, frames=10, seed=3)
    unrolled, _ = unroll_recurrent(model, (x[:1],))
    program = torch.export.export(unrolled, (x[:1],), strict=False)
    calib = Samples(tuple(f"c{i}" for i in range(12)), (x[:12].numpy(),), "synthetic")
    evaluation = Samples(tuple(f"e{i}" for i in range(4)), (x[12:].numpy(),), "synthetic")
    reference = torch_outputs(unrolled, evaluation)
    recipe = recipe_by_name("int8")
    prepared = calibrate(program, recipe, calib)
    sim = Simulator(copy.deepcopy(prepared), evaluation, reference)
    by_module = {layer.module: layer for layer in sim.layers}
    assert sorted(by_module) == ["front.0", "head", "rnn.cells.0.hid", "rnn.cells.0.inp", "rnn.cells.1.hid",
                                 "rnn.cells.1.inp"]
    hid = by_module["rnn.cells.1.hid"]
    assert len(hid.nodes) == 9  # a call per step after the first
    others = frozenset(node for layer in sim.layers if layer is not hid for node in layer.nodes)
    folded = convert(calibrate(program, recipe, calib, keep_float=others)).folded
    outputs = []
    for i in range(len(evaluation)):
        out = folded(*(torch.from_numpy(a) for a in evaluation.sample(i)))
        outputs.append([t.detach().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))])
    exported = accuracy(reference, outputs)["sqnr_db"]
    assert sim.evaluate(only=hid.name)["sqnr_db"] == pytest.approx(exported, abs=0.01)


class _ZeroStateGRU(nn.Module):
    """A GRU whose initial state the model makes from its input's shape, as models often write it."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(40, 32, batch_first=True)
        self.head = nn.Linear(32, 8)

    def forward(self, x):  # x: [B, 40, frames]
        x = x.transpose(1, 2)
        return self.head(self.rnn(x, x.new_zeros(1, x.shape[0], 32))[0][:, -1])


def test_a_zero_state_made_from_the_input_is_a_constant_for_executorch(tmp_path) -> None:
    """`x.new_zeros(...)` as the initial state: the first step's hidden projection is folded like one from
    `torch.zeros`, and ExecuTorch's int8 .pte computes what the simulated graph computes (before: the state
    was quantized as a tensor of zeros and the .pte gave 5.3 dB where the simulation gave 22.2)."""
    from edgeship.backends import get_backend
    from edgeship.backends.executorch.lower import _lower
    from edgeship.metrics.compare import accuracy

    torch.manual_seed(0)
    model = _ZeroStateGRU().eval()
    x, _ = spoken_features(16, frames=12, seed=3)
    unrolled, _ = unroll_recurrent(model, (x[:1],))
    program = torch.export.export(unrolled, (x[:1],), strict=False)
    calib = Samples(tuple(f"c{i}" for i in range(12)), (x[:12].numpy(),), "synthetic")
    prepared = calibrate(program, recipe_by_name("int8"), calib)
    assert any(n.op == "get_attr" and n.target.startswith("_folded_") for n in prepared.graph.nodes)
    folded = convert(prepared).folded
    _lower(torch.export.export(folded, (x[:1],), strict=False), tmp_path / "model.int8.pte")
    session = get_backend("executorch").open(tmp_path / "model.int8.pte", 1)
    reference = [[model(x[i:i + 1]).detach().numpy()] for i in range(12, 16)]
    simulated = [[folded(x[i:i + 1])[0].detach().numpy()] for i in range(12, 16)]
    runtime = [session.run([x[i:i + 1].numpy()]) for i in range(12, 16)]
    simulated_db = accuracy(reference, simulated)["sqnr_db"]
    assert simulated_db > 15
    assert accuracy(reference, runtime)["sqnr_db"] > simulated_db - 1


class _ProjectedLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=2, batch_first=True, proj_size=4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0][:, -1])


@pytest.mark.parametrize("model_cls", [_ProjectedLSTM, _ZeroStateGRU], ids=["lstm-proj", "gru"])
def test_float_onnx_of_recurrent_layers_runs_and_matches(model_cls, tmp_path) -> None:
    """The float ONNX keeps ONNX's own LSTM/GRU ops where the exporter translates them right, and takes the
    unrolled steps where it does not: an nn.LSTM with proj_size came out as a graph ONNX Runtime refused
    to load ("All inputs to Concat must have same rank"), and the export failed."""
    import onnx
    import onnxruntime as ort

    from edgeship.backends.base import LowerJob
    from edgeship.backends.onnxruntime.lower import _float_onnx

    torch.manual_seed(0)
    model = model_cls().eval()
    x = torch.randn(1, 16, 6) if model_cls is _ProjectedLSTM else torch.randn(1, 40, 10)
    unrolled, _ = unroll_recurrent(model, (x,))
    job = LowerJob(torch.export.export(unrolled, (x,), strict=False), None, (x,), ("x",), ("y",),
                   tmp_path / "model.fp32.onnx", native=torch.export.export(model, (x,), strict=False))
    _float_onnx(job)
    session = ort.InferenceSession(str(job.float_onnx), providers=["CPUExecutionProvider"])
    y = torch.randn_like(x)
    np.testing.assert_allclose(session.run(None, {"x": y.numpy()})[0], model(y).detach().numpy(), rtol=1e-4, atol=1e-5)
    ops = {n.op_type for n in onnx.load(str(job.float_onnx)).graph.node}
    if model_cls is _ProjectedLSTM:
        assert "LSTM" not in ops and "MatMul" in ops or "Gemm" in ops  # the unrolled steps
    else:
        assert "GRU" in ops
