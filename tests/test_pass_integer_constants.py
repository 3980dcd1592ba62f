"""The integer-constants graph pass: applies to a real BERT graph whose scalars were lifted to float
tensor constants (the calibration failure it fixes), and leaves other graphs alone."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import ROOT
from models import tiny_conv_net

from edgeship.export.passes.integer_constants import restore_integer_constants

aten = torch.ops.aten


def lift_scalars_to_float_constants(gm: torch.fx.GraphModule) -> int:
    """What a scalar-lifting quantizer transform does to add/mul/sub scalars: float buffers."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (aten.add.Tensor, aten.mul.Tensor, aten.sub.Tensor):
            args = []
            for a in node.args:
                if isinstance(a, (int, float)) and not isinstance(a, bool):
                    name = f"_tensor_constant_{count}"
                    gm.register_buffer(name, torch.tensor(float(a)))
                    with gm.graph.inserting_before(node):
                        args.append(gm.graph.get_attr(name))
                    count += 1
                else:
                    args.append(a)
            node.args = tuple(args)
    gm.recompile()
    return count


@pytest.mark.slow
def test_fixes_the_stock_xnnpack_flow_on_real_bert() -> None:
    """The failure DESIGN.md describes, as it happens: XNNPACKQuantizer's prepare_pt2e lifts the
    attention-mask scalars to float tensors and calibrating raises in an index op."""
    sys.path.insert(0, str(ROOT / "examples"))
    import minilm
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from edgeship.export.capture import FlatOutputs

    net = FlatOutputs(minilm.build()).eval()
    enc = minilm.tokenize(["Quantization keeps a model small.", "The cat sat on the mat."])
    args = tuple(torch.from_numpy(enc[k][:1]) for k in ("input_ids", "attention_mask"))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(net, args, strict=False).module(), quantizer)
    with pytest.raises(IndexError, match="tensors used as indices must be long"):
        prepared(*args)
    assert restore_integer_constants(prepared)
    with torch.no_grad():
        assert torch.equal(prepared(*args)[0], net(*args)[0])  # observers do not change values


@pytest.mark.slow
def test_applies_to_real_bert_and_fixes_calibration() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    import minilm

    from edgeship.export.capture import FlatOutputs

    net = FlatOutputs(minilm.build()).eval()
    enc = minilm.tokenize(["Quantization keeps a model small.", "The cat sat on the mat."])
    args = tuple(torch.from_numpy(enc[k][:1]) for k in ("input_ids", "attention_mask"))
    gm = torch.export.export(net, args, strict=False).module()
    assert lift_scalars_to_float_constants(gm) >= 1
    with pytest.raises(IndexError, match="tensors used as indices must be long"):
        gm(*args)
    changed = restore_integer_constants(gm)
    assert changed
    with torch.no_grad():
        assert torch.equal(gm(*args)[0], net(*args)[0])


def test_leaves_cnn_graph_alone() -> None:
    gm = torch.export.export(tiny_conv_net(), (torch.zeros(1, 3, 16, 16),)).module()
    before = gm.code
    assert restore_integer_constants(gm) == []
    assert gm.code == before


def test_leaves_float_arithmetic_alone() -> None:
    class Scale(torch.nn.Module):
        def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return x * 2.0 + (idx + 1).float()  # float math, and an int add that reaches no index op

    gm = torch.export.export(Scale(), (torch.ones(4), torch.arange(4))).module()
    lift_scalars_to_float_constants(gm)
    assert restore_integer_constants(gm) == []
