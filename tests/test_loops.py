"""Recurrent layers over long sequences as loops (edgeship/export/loops.py and each backend's loops.py):
one step's graph whatever the length, calibrated over every step, and lowered with int8 step matmuls
inside each runtime's own loop (ONNX Scan, ExecuTorch's loop with an XNNPACK body, LiteRT's WHILE)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.calibration.samples import Samples
from edgeship.export.loops import bodies, is_loop
from edgeship.export.recurrent import LOOP_STEPS, unroll_recurrent
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.recipe import Recipe

sys.path.insert(0, str(Path(__file__).parent))
from conftest import faithful  # noqa: E402
from test_recurrent import MATMULS  # noqa: E402

TESTS = Path(__file__).resolve().parent


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 8, num_layers=2, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def _program(model: nn.Module, steps: int) -> torch.export.ExportedProgram:
    x = torch.randn(1, steps, 5)
    rewritten, names = unroll_recurrent(model, (x,))
    assert names == ["lstm"]
    return torch.export.export(rewritten, (x,))


def test_a_long_sequence_is_one_loop_per_layer_whatever_its_length() -> None:
    torch.manual_seed(0)
    model = _Encoder().eval()
    short, long = _program(model, LOOP_STEPS), _program(model, 3 * LOOP_STEPS)
    assert sum(is_loop(n) for n in short.graph.nodes) == 2  # one per layer
    assert len(short.graph.nodes) == len(long.graph.nodes)
    unrolled = _program(model, LOOP_STEPS - 1)
    assert not any(is_loop(n) for n in unrolled.graph.nodes)
    assert len(unrolled.graph.nodes) > 10 * len(short.graph.nodes)


def test_observers_in_a_loop_see_every_step() -> None:
    """The range of the state a step reads is the range of every step's state across the samples (and
    the zero state before the first), not that of one step."""
    torch.manual_seed(0)
    model = _Encoder().eval()
    program = _program(model, LOOP_STEPS)
    data = np.random.default_rng(1).standard_normal((6, LOOP_STEPS, 5)).astype(np.float32)
    data[:, -5:] *= 4  # the last steps drive the state furthest
    prepared = calibrate(program, Recipe(name="minmax", activation_method="minmax", algorithms=()),
                         Samples(("x",), (data,), "frames"))
    _, body = bodies(prepared)[0]
    state = [n for n in body.graph.nodes if n.op == "placeholder"][0]  # h, the first carry
    observer = next(getattr(body, u.target) for u in state.users if u.op == "call_module")
    first = nn.LSTM(5, 8, batch_first=True)  # the first layer alone: its loop is the graph's first
    first.load_state_dict({k: v for k, v in model.lstm.state_dict().items() if k.endswith("_l0")})
    with torch.no_grad():
        h = first(torch.from_numpy(data))[0].numpy()[:, :-1]  # the states steps 1.. read
    assert float(observer.max_val) == pytest.approx(max(0.0, float(h.max())), rel=1e-5)
    assert float(observer.min_val) == pytest.approx(min(0.0, float(h.min())), rel=1e-5)
    early = h[:, :LOOP_STEPS - 6]
    assert float(observer.max_val) - float(early.max()) > 1e-3  # a range of early steps only would miss it


@pytest.mark.slow
def test_long_sequence_exports_int8_loops_to_every_runtime(tmp_path) -> None:
    """An LSTM and a bidirectional GRU over 40 frames: every artifact made and verified, each runtime runs
    the steps in its own loop with int8 step matmuls."""
    import onnx
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeship import api

    frames = np.random.default_rng(0).standard_normal((24, 40, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", frames=frames[:16])
    np.savez(tmp_path / "eval.npz", frames=frames[16:])
    result = api.export(f"{TESTS / 'models.py'}:long_sequence_tagger", "linux-arm64", tmp_path / "calib.npz",
                        eval_data=tmp_path / "eval.npz", out=tmp_path / "out", require_all=True)
    artifacts = {a["path"]: a for a in result.manifest["artifacts"]}
    assert {f"model.{p}.{e}" for p in ("fp32", "int8") for e in ("onnx", "pte", "tflite")} <= set(artifacts)
    for name, a in artifacts.items():
        if ".fp32." in name:
            assert faithful(a["accuracy"]), (name, a["accuracy"])
            continue
        assert a["accuracy"]["sqnr_db"] > 25, (name, a["accuracy"])
        float_ops = {f["op"].lower() for f in a["not_quantized"]}
        assert not [op for op in float_ops if any(k in op for k in MATMULS)], (name, float_ops)
    onnx_ops = [n.op_type for n in onnx.load(str(result.out_dir / "model.int8.onnx")).graph.node]
    assert onnx_ops.count("Scan") == 3  # the LSTM, the GRU's two directions
    model = flatbuffer_utils.read_model_from_bytearray(bytearray((result.out_dir / "model.int8.tflite").read_bytes()))
    codes = [flatbuffer_utils.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    main = [codes[op.opcodeIndex] for op in model.subgraphs[0].operators]
    assert main.count(schema.BuiltinOperator.WHILE) == 3
    in_loops = [(codes[op.opcodeIndex], [g.tensors[i].type for i in op.inputs if i >= 0])
                for g in model.subgraphs[1:] for op in g.operators]
    connected = [types for code, types in in_loops if code == schema.BuiltinOperator.FULLY_CONNECTED]
    assert len(connected) == 3 and all(types[:2] == [schema.TensorType.INT8] * 2 for types in connected)
