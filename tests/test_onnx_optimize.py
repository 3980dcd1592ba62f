"""The ONNX optimization edgeship runs (the exporter's, less its quadratic Slice-pairing rule) gives the
graph the exporter's own optimization gives: on a CNN, a transformer layer, a gated unit that cuts a
tensor in halves with two slices (what the skipped rule is written for), and an unrolled LSTM whose
steps each slice one projected sequence (where that rule's cost grows with the square of the steps)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from models import KeywordSpotter, tiny_conv_net, tiny_encoder

from edgeship.backends.onnxruntime.onnx_export import to_onnx
from edgeship.export.recurrent import unroll_recurrent


class Halves(torch.nn.Module):
    """A gated unit that cuts its last axis in halves with two slices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.narrow(-1, 0, 8) * torch.sigmoid(x.narrow(-1, 8, 8))


def unrolled_lstm() -> torch.nn.Module:
    torch.manual_seed(0)
    model, names = unroll_recurrent(KeywordSpotter("lstm", hidden=32).eval(), (torch.randn(1, 40, 24),))
    assert names == ["rnn"]
    return model


CASES = [(tiny_conv_net, (1, 3, 32, 32)), (tiny_encoder, (1, 8, 32)), (lambda: Halves().eval(), (2, 16)),
         (unrolled_lstm, (1, 40, 24))]


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("build, shape", CASES, ids=["conv-net", "encoder", "halves", "unrolled-lstm"])
def test_same_graph_as_the_exporters_optimization(build, shape) -> None:
    x = torch.randn(*shape)
    program = torch.export.export(build(), (x,))
    theirs = torch.onnx.export(program, input_names=["x"], output_names=["y"], dynamo=True, optimize=True,
                               verbose=False).model_proto
    raw = torch.onnx.export(program, input_names=["x"], output_names=["y"], dynamo=True, optimize=False,
                            verbose=False).model_proto
    ours = to_onnx(program, ["x"], ["y"]).model_proto
    assert len(ours.graph.node) < len(raw.graph.node)  # it optimizes
    assert [(n.op_type, list(n.input), list(n.output)) for n in ours.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in theirs.graph.node]
    assert sorted(i.SerializeToString() for i in ours.graph.initializer) == \
        sorted(i.SerializeToString() for i in theirs.graph.initializer)
    np.testing.assert_array_equal(_run(ours, x.numpy()), _run(theirs, x.numpy()))
