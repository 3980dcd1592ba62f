"""The one quantizer: which ops it quantizes, and that calibration gives sane encodings."""

from __future__ import annotations

import numpy as np
import torch
from models import tiny_conv_net, tiny_encoder

from edgeship.calibration.samples import Samples
from edgeship.quantize.calibrate import quantize
from edgeship.quantize.recipe import Recipe


def _ops(graph, name: str) -> int:
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and name in str(n.target))


def _quantize(model, shape, n=8, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, *shape)).astype(np.float32)
    samples = Samples(("x",), (data,), "test")
    program = torch.export.export(model, (torch.from_numpy(data[:1]),))
    return quantize(program, Recipe(), samples), samples


def test_conv_net_is_quantized_end_to_end() -> None:
    q, _ = _quantize(tiny_conv_net(), (3, 32, 32))
    # 3 convs + 1 linear: one per-channel weight dequantize each (weights folded to int8)
    assert _ops(q.folded, "dequantize_per_channel") == 4
    # the residual add sits between two int8 convs: it is quantized (both inputs and output)
    add = next(n for n in q.folded.graph.nodes if n.op == "call_function" and "add" in str(n.target))
    assert all("dequantize" in str(a.target) for a in add.args[:2])
    assert all("quantize_per_tensor" in str(u.target) for u in add.users)
    assert q.float_ops == []
    assert len(q.encodings["weights"]) == 4


def test_transformer_keeps_float_regions_float() -> None:
    q, _ = _quantize(tiny_encoder(), (8, 32))
    assert _ops(q.folded, "dequantize_per_channel") == 4  # qkv, proj, ff.0, ff.2
    # residual adds around layer_norm are between float ops: left in float
    for node in q.folded.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith("aten.add"):
            assert not any("quantize_per_tensor" in str(u.target) for u in node.users)
    assert {"layer_norm", "softmax", "gelu", "add"} <= set(q.float_ops)


def test_activation_scales_cover_the_observed_range() -> None:
    q, _ = _quantize(tiny_conv_net(), (3, 32, 32))
    for name, enc in q.encodings["activations"].items():
        lo, hi = enc["observed_min"], enc["observed_max"]
        qmin = (enc["quant_min"] - enc["zero_point"]) * enc["scale"]
        qmax = (enc["quant_max"] - enc["zero_point"]) * enc["scale"]
        # histogram calibration may clip outliers but never widens the range past what was seen
        assert qmin >= min(lo, 0.0) - 2 * enc["scale"] and qmax <= max(hi, 0.0) + 2 * enc["scale"], name


def test_concat_of_int8_tensors_shares_one_range() -> None:
    class Branches(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(3, 4, 1)
            self.b = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.head = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1))

    torch.manual_seed(0)
    q, _ = _quantize(Branches().eval(), (3, 8, 8))
    cat = next(n for n in q.folded.graph.nodes if n.op == "call_function" and "cat" in str(n.target))
    scales = {float(a.args[1]) for a in cat.args[0]}
    assert len(scales) == 1  # one observer for both branches and the output
    (user,) = cat.users
    assert float(user.args[1]) in scales


def test_concat_with_a_float_input_stays_float() -> None:
    class ClassToken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = torch.nn.Conv2d(3, 8, 4, 4)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, 8) * 0.02)

        def forward(self, x):
            tokens = self.patch(x).flatten(2).transpose(1, 2)
            return torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)

    torch.manual_seed(0)
    q, _ = _quantize(ClassToken().eval(), (3, 16, 16))
    cat = next(n for n in q.folded.graph.nodes if n.op == "call_function" and "cat" in str(n.target))
    assert not any("quantize_per_tensor" in str(u.target) for u in cat.users)
