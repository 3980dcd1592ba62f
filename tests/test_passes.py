"""The graph rewrites every quantization scheme runs first (edgeship/export/passes, BEFORE_QUANTIZATION):
each on a small model with the form it rewrites, which must compute the same values afterwards."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeship.export.passes import BEFORE_QUANTIZATION, before_quantization
from edgeship.export.passes.constant_layers import fold_constant_layers
from edgeship.export.passes.constant_matmuls import constant_matmuls_as_linear
from edgeship.export.passes.dropout import remove_eval_dropout
from edgeship.export.passes.pools import whole_window_pools_as_global


class DropoutInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop = nn.Linear(8, 8), nn.Dropout(0.5, inplace=True)

    def forward(self, x):
        return self.drop(self.fc(x))


class ConstantMatmul(nn.Module):  # Hugging Face Conv1D: an addmm with a weight stored (in, out)
    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(4))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


class ConstantLayer(nn.Module):  # a recurrent layer's first step from a learned initial state
    def __init__(self) -> None:
        super().__init__()
        self.h0, self.hid = nn.Parameter(torch.randn(1, 8)), nn.Linear(8, 8)

    def forward(self, x):
        return x + self.hid(self.h0)


class WholeWindowPool(nn.Module):  # Hugging Face EfficientNet's AvgPool2d(1280, ceil_mode=True)
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(3, 4, 3), nn.AvgPool2d(64, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


CASES = [(remove_eval_dropout, DropoutInPlace, (2, 8)), (constant_matmuls_as_linear, ConstantMatmul, (2, 8)),
         (fold_constant_layers, ConstantLayer, (2, 8)), (whole_window_pools_as_global, WholeWindowPool, (1, 3, 10, 10))]


@pytest.mark.parametrize("rewrite, model, shape", CASES, ids=[c[0].__name__ for c in CASES])
def test_each_pass_rewrites_its_form_and_keeps_the_values(rewrite, model, shape) -> None:
    torch.manual_seed(0)
    net, x = model().eval(), torch.randn(*shape)
    module = torch.export.export(net, (x,), strict=False).module()
    before = module(x)
    targets = {n.target for n in module.graph.nodes if n.op == "call_function"}
    assert rewrite(module) == 1
    assert {n.target for n in module.graph.nodes if n.op == "call_function"} != targets
    torch.testing.assert_close(module(x), before, rtol=1e-5, atol=1e-5)
    assert rewrite(module) == 0  # nothing left to rewrite


def test_the_order_is_one_list() -> None:
    assert [p.__name__ for p in BEFORE_QUANTIZATION] == [
        "restore_integer_constants", "remove_eval_dropout", "constant_matmuls_as_linear", "fold_constant_layers",
        "whole_window_pools_as_global"]
    torch.manual_seed(0)
    module = torch.export.export(ConstantMatmul().eval(), (torch.randn(2, 8),), strict=False).module()
    changed = before_quantization(module)
    assert list(changed) == [p.__name__ for p in BEFORE_QUANTIZATION] and changed["constant_matmuls_as_linear"] == 1
