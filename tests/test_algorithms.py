"""Post-training algorithms: each pass keeps the float function, applies where it should and leaves
the graph alone elsewhere. What they gain on the real all-MiniLM-L6-v2 is measured by benchmarks/algorithms.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.calibration.samples import Samples
from edgeship.quantize.calibrate import calibrate, convert
from edgeship.quantize.embeddings import quantize_embeddings
from edgeship.quantize.outlier_split import split_outliers
from edgeship.quantize.recipe import Recipe
from edgeship.quantize.smoothquant import smooth, smoothing_groups
from edgeship.metrics.compare import accuracy
from edgeship.verify import torch_outputs

sys.path.insert(0, str(Path(__file__).parent))
from models import outlier_ffn, tiny_conv_net  # noqa: E402


def _samples(shape, n=16, seed=0) -> Samples:
    return Samples(("x",), (np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32),), "random")


def _program(model, samples):
    return torch.export.export(model, tuple(torch.from_numpy(a) for a in samples.sample(0)), strict=False)


def _simulated(program, recipe, calib, evaluation, reference) -> dict:
    return accuracy(reference, torch_outputs(convert(calibrate(program, recipe, calib)).folded, evaluation))


def test_outlier_channels_applies_keeps_the_function_and_helps() -> None:
    class Proj(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.proj, self.norm = nn.Linear(16, 32), nn.LayerNorm(32)
            with torch.no_grad():
                self.proj.weight[3] *= 100.0

        def forward(self, x):
            return self.norm(self.proj(x))

    model = Proj().eval()
    calib, evaluation = _samples((4, 16)), _samples((4, 16), n=8, seed=1)
    program = _program(model, calib)
    module = program.module()
    records = split_outliers(module, calib)
    assert [r["channels"] for r in records] == [[3]] and records[0]["outlier_max"] > 20 * records[0]["rest_max"]
    x = torch.from_numpy(evaluation.arrays[0][:1])
    torch.testing.assert_close(module(x), model(x), atol=1e-5, rtol=1e-5)  # the float function is kept
    reference = torch_outputs(model, evaluation)
    plain = _simulated(program, Recipe(algorithms=()), calib, evaluation, reference)
    split = _simulated(program, Recipe(algorithms=("outlier_channels",)), calib, evaluation, reference)
    assert split["sqnr_db"] > plain["sqnr_db"] + 10.0, (plain, split)


def test_outlier_channels_leave_ordinary_layers_alone() -> None:
    calib = _samples((3, 32, 32), n=4)
    module = _program(tiny_conv_net(), calib).module()
    before = [n.format_node() for n in module.graph.nodes]
    assert split_outliers(module, calib) == []  # the head's logits have no outlier channel
    assert [n.format_node() for n in module.graph.nodes] == before


def test_smoothquant_applies_to_float_inputs_and_keeps_the_function() -> None:
    model = outlier_ffn()
    calib = _samples((8, 32))
    module = _program(model, calib).module()
    groups = {act.name: [lin.name for lin in lins] for act, lins in smoothing_groups(module).items()}
    assert groups == {"x": ["linear"], "gelu": ["linear_1"]}  # the head reads an int8 relu: left alone
    records = smooth(module, calib)
    gelu = next(r for r in records if r["input"] == "gelu")  # the input with the outlier channel
    assert gelu["alpha"] in (0.5, 0.6, 0.7, 0.8, 0.9) and gelu["s_max"] > 10 * gelu["s_min"]
    x = torch.from_numpy(calib.arrays[0][:1])
    torch.testing.assert_close(module(x), model(x), atol=1e-4, rtol=1e-4)


def test_smoothquant_leaves_int8_inputs_alone() -> None:
    calib = _samples((3, 32, 32), n=4)
    module = _program(tiny_conv_net(), calib).module()
    assert smoothing_groups(module) == {}  # the head reads the int8 pooled features
    assert smooth(module, calib) == []


class Lookup(nn.Module):
    def __init__(self, rows: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table, self.proj = nn.Embedding(rows, 16), nn.Linear(16, 8)

    def forward(self, ids):
        return self.proj(self.table(ids))


def test_embeddings_stored_int8_per_row() -> None:
    model = Lookup(3000).eval()
    ids = Samples(("ids",), (np.random.default_rng(0).integers(0, 3000, (4, 12)),), "ids")
    module = _program(model, ids).module()
    records = quantize_embeddings(module)
    assert [(r["rows"], r["columns"]) for r in records] == [(3000, 16)]
    tables = [b for b in module.buffers() if b.dtype == torch.int8]
    assert [t.shape for t in tables] == [torch.Size([3000, 16])]
    assert all(n.target != "table.weight" for n in module.graph.nodes if n.op == "get_attr")  # float table unused
    x = torch.from_numpy(ids.sample(0)[0])
    step = model.table.weight.abs().amax(dim=1).max() / 127
    # every looked-up value within half a step of its row's scale; through the linear, a few steps
    assert float((module(x) - model(x)).abs().max()) < 16 * step * model.proj.weight.abs().max()


def test_embeddings_stored_int4_per_group() -> None:
    """w4a8: two int4 values per stored byte, one scale per 8 columns; each looked-up value within half
    a step of its group's scale, through the same gather / divide / scale ops every runtime runs."""
    from edgeship.quantize.int4 import quantize_weight

    model = Lookup(3000).eval()
    ids = Samples(("ids",), (np.random.default_rng(0).integers(0, 3000, (4, 12)),), "ids")
    module = _program(model, ids).module()
    records = quantize_embeddings(module, bits=4, group=8)
    assert [(r["rows"], r["columns"], r["bits"]) for r in records] == [(3000, 16, 4)]
    tables = [b for b in module.buffers() if b.dtype == torch.int8]
    assert [t.shape for t in tables] == [torch.Size([3000, 8])]  # 16 columns in 8 bytes per row
    x = torch.from_numpy(ids.sample(0)[0])
    # the value handed to the linear layer is the dequantized rows
    looked_up = next(n.args[0] for n in module.graph.nodes if n.target is torch.ops.aten.linear.default)
    rows = torch.fx.Interpreter(module)
    captured = {}
    original = rows.run_node

    def run_node(n):
        out = original(n)
        if n is looked_up:
            captured["rows"] = out
        return out

    rows.run_node = run_node
    rows.run(x)
    q, scale = quantize_weight(model.table.weight.detach(), 8)
    expected = (q.reshape(3000, 2, 8).float() * scale[..., None]).reshape(3000, 16)[x]
    assert torch.equal(captured["rows"], expected)  # exactly the int4 grid values, nothing lost in unpacking
    half_step = (scale.repeat_interleave(8, dim=1)[x]) / 2
    assert bool(((captured["rows"] - model.table.weight[x]).abs() <= half_step + 1e-6).all())


def test_embeddings_leave_small_tables_alone() -> None:
    ids = Samples(("ids",), (np.random.default_rng(0).integers(0, 100, (2, 12)),), "ids")
    module = _program(Lookup(100).eval(), ids).module()
    assert quantize_embeddings(module) == []
    assert not any(b.dtype == torch.int8 for b in module.buffers())


def test_recipe_keeps_layers_in_float_by_module_or_op(tmp_path) -> None:
    from edgeship.errors import ConfigError
    from edgeship.quantize.recipe import recipe_by_name
    from models import tiny_encoder

    calib = _samples((8, 32))
    program = _program(tiny_encoder(), calib)
    (tmp_path / "ff.toml").write_text('keep_float = ["ff.*"]\nalgorithms = []\n')
    quantized = convert(calibrate(program, recipe_by_name(str(tmp_path / "ff.toml")), calib))
    assert set(quantized.encodings["weights"]) == {"qkv.weight", "proj.weight"}  # the two ff layers float
    (tmp_path / "mm.toml").write_text('keep_float = ["matmul"]\nalgorithms = []\n')
    quantized = convert(calibrate(program, recipe_by_name(str(tmp_path / "mm.toml")), calib))
    assert len(quantized.encodings["weights"]) == 4  # every linear int8
    assert "matmul" in quantized.float_ops  # the attention matmuls float
    (tmp_path / "bad.toml").write_text('keep_float = ["decoder.*"]\n')
    with pytest.raises(ConfigError, match="matches no layer"):
        calibrate(program, recipe_by_name(str(tmp_path / "bad.toml")), calib)
