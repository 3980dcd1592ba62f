"""Outputs that are decisions (a sigmoid's probability at 0.5, a softmax's largest entry): found in the float
graph, measured against float for every artifact, and flagged when int8 changes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from models import near_threshold, tiny_conv_net

from edgeship import api
from edgeship.metrics.decisions import SIGMOID, SOFTMAX, agreement, output_decisions

TESTS = Path(__file__).resolve().parent


def test_sigmoid_and_softmax_outputs_are_found_behind_views() -> None:
    program = torch.export.export(near_threshold(), (torch.randn(2, 16),), strict=False)
    assert output_decisions(program) == [{"rule": SIGMOID}, {"rule": SOFTMAX, "dim": -1}]


def test_outputs_that_are_not_decisions_are_left_alone() -> None:
    program = torch.export.export(tiny_conv_net(), (torch.randn(1, 3, 32, 32),), strict=False)
    assert output_decisions(program) == [None]


def test_agreement_counts_each_decision() -> None:
    reference = [[np.array([0.2, 0.6, 0.9]), np.array([[0.1, 0.7, 0.2]])],
                 [np.array([0.4, 0.49, 0.51]), np.array([[0.5, 0.3, 0.2]])]]
    candidate = [[np.array([0.2, 0.4, 0.9]), np.array([[0.1, 0.7, 0.2]])],   # one of three flips
                 [np.array([0.4, 0.51, 0.51]), np.array([[0.3, 0.5, 0.2]])]]  # one flips; the argmax moves
    found = agreement(reference, candidate, [{"rule": SIGMOID}, {"rule": SOFTMAX, "dim": -1}])
    assert found == [{"output": 0, "rule": SIGMOID, "decisions": 6, "agreement": round(4 / 6, 4)},
                     {"output": 1, "rule": SOFTMAX, "decisions": 2, "agreement": 0.5}]


def _near_threshold_data(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.02, (64, 16)).astype(np.float32)
    x[::16, 0] = rng.choice([-40.0, 40.0], size=4)  # the rare wide feature sets the input's int8 scale
    np.savez(tmp_path / "calib.npz", x=x[:48])
    np.savez(tmp_path / "eval.npz", x=x[48:])


def test_int8_that_flips_decisions_is_flagged(tmp_path) -> None:
    """With a budget of the user's own (which replaces the default decision budget), int8 that flips
    decisions is shipped and flagged."""
    _near_threshold_data(tmp_path)
    result = api.export(f"{TESTS / 'models.py'}:near_threshold", "linux-arm64", tmp_path / "calib.npz",
                        eval_data=tmp_path / "eval.npz", out=tmp_path / "out", budget={"cosine": 0.5})
    artifacts = {a["path"]: a for a in result.manifest["artifacts"]}
    fp32 = artifacts["model.fp32.onnx"]["accuracy"]["decisions"]
    assert [d["agreement"] for d in fp32] == [1.0, 1.0]
    int8 = [a for a in artifacts.values() if a["precision"] == "int8"]
    assert int8 and all(a["decisions_changed"] for a in int8)
    assert all(a["accuracy"]["decisions"][0]["agreement"] < 0.98 for a in int8)
    assert "## Decisions against float" in (result.out_dir / "report.md").read_text()


def test_default_recipe_keeps_the_decisions(tmp_path) -> None:
    """The default int8 recipe keeps the fewest layers float that bring the decisions back to 98% on
    the eval data (here the probability's layer), and every runtime then keeps them."""
    _near_threshold_data(tmp_path)
    result = api.export(f"{TESTS / 'models.py'}:near_threshold", "linux-arm64", tmp_path / "calib.npz",
                        eval_data=tmp_path / "eval.npz", out=tmp_path / "out")
    choice = result.manifest["precision_choice"]
    assert choice["budget"] == {"decision_agreement": 0.98} and choice["keep_float"]
    assert result.manifest["simulated_int8"]["decision_agreement"] >= 0.98
    int8 = [a for a in result.manifest["artifacts"] if a["precision"] == "int8"]
    assert len(int8) == 4 and not any(a["decisions_changed"] for a in int8)
    assert all(a["accuracy"]["decision_agreement"] >= 0.98 for a in int8)
