"""The layer-norm fold (edgeship/quantize/norm_fold.py): gamma and beta move into the linear layers that
read the norm, the graph computes the same, and norms it cannot fold stay as they are."""

from __future__ import annotations

import torch
from torch import nn

from edgeship.quantize.norm_fold import fold_norm_affine

aten = torch.ops.aten


class NormThenLinear(nn.Module):
    """A post-norm block: the norm feeds a linear layer (through eval dropout) and a residual add."""

    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16, elementwise_affine=affine)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 16)
        self.out = nn.LayerNorm(16)  # read by the output only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.norm(x))
        return self.out(h + self.fc(h))


def _graph(model: nn.Module, x: torch.Tensor):
    return torch.export.export(model.eval(), (x,), strict=False).module()


def test_fold_moves_gamma_and_beta_into_the_linear_and_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    model = NormThenLinear()
    with torch.no_grad():
        model.norm.weight.copy_(torch.rand(16) * 3 + 0.1)
        model.norm.bias.copy_(torch.randn(16))
    x = torch.randn(2, 5, 16)
    module = _graph(model, x)
    expected = module(x)
    records = fold_norm_affine(module)
    assert [r["layers"] for r in records] == [["linear"]]  # the first norm; `out` feeds no linear
    norms = [n for n in module.graph.nodes if n.target == aten.layer_norm.default]
    assert [n.args[2] is None for n in norms] == [True, False]  # the folded norm lost its affine part
    linear = next(n for n in module.graph.nodes if n.target == aten.linear.default)
    folded = getattr(module, linear.args[1].target)
    assert torch.allclose(folded, model.fc.weight * model.norm.weight[None, :])
    assert not any(n.target == aten.dropout.default for n in module.graph.nodes)
    torch.testing.assert_close(module(x), expected, rtol=1e-5, atol=1e-5)


def test_fold_leaves_a_norm_without_affine_alone() -> None:
    x = torch.randn(2, 5, 16)
    module = _graph(NormThenLinear(affine=False), x)
    def norms():
        return [tuple(map(str, n.args)) for n in module.graph.nodes if n.target == aten.layer_norm.default]

    before = norms()
    assert fold_norm_affine(module) == []
    linear = next(n for n in module.graph.nodes if n.target == aten.linear.default)
    assert linear.args[1].target == "fc.weight" and linear.args[0].target == aten.layer_norm.default
    assert norms() == before
