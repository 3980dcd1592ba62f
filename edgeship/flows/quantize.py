"""The recipe's one quantized form of a model, computed once for every runtime: calibrated static int8
(with the fewest layers kept float that an accuracy budget needs), int4 or int8-dynamic weights, or a
float16 program."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgeship.errors import EdgeshipError
from edgeship.flows import Progress
from edgeship.quantize.forms import Form, Half, StaticInt8, WeightOnly

log = logging.getLogger(__name__)

RANKING_SAMPLES = 32  # eval samples a layer ranking reads; the chosen layers are checked on all of them


@dataclass(frozen=True)
class Quantized:
    """What `quantize` made: the recipe's one quantized form (quantize/forms.py: StaticInt8, WeightOnly or
    Half), the encodings written to encodings.json, and the budget's choice of float layers, if one was set."""

    form: Form
    encodings: dict
    choice: dict | None = None

    @property
    def instead_of_int8(self) -> str | None:
        """The precision a non-int8 recipe makes in place of the device's int8 artifacts (int4,
        int8-dynamic, fp16); None for int8."""
        return None if isinstance(self.form, StaticInt8) else self.form.precision

    @property
    def graph(self):
        """The quantized model as PyTorch runs it (the simulated values every artifact is checked against)."""
        if isinstance(self.form, StaticInt8):
            return self.form.graph.folded
        return self.form.job.packed if isinstance(self.form, WeightOnly) else self.form.program.module()

    @property
    def float_ops(self) -> list[str]:
        return self.form.graph.float_ops if isinstance(self.form, StaticInt8) else []

    @property
    def algorithms(self) -> list:
        if isinstance(self.form, StaticInt8):
            return self.form.graph.algorithms
        return self.form.job.algorithms if isinstance(self.form, WeightOnly) else []


def quantize(recipe, program, flat, args, calib, evaluation, reference, memo, budget, progress: Progress,
              decisions: list | None = None):
    """The recipe's one quantized form of the model. An int8 recipe without a budget gets the default
    decision budget (sensitivity.default_decision_budget)."""
    from edgeship.export.capture import capture_half
    from edgeship.quantize.calibrate import calibrate, convert
    from edgeship.quantize.sensitivity import default_decision_budget

    if recipe.scheme == "fp16":
        encodings = {"version": 1, "fp16": "no quantization parameters: weights and compute in float16"}
        return Quantized(Half(capture_half(flat, args)), encodings)
    if recipe.scheme in ("w4a8", "w8a8-dynamic"):
        from edgeship.quantize.int4 import build_int4, int8_recipe

        job = build_int4(program, recipe, calib, progress("weights", len(calib) * (recipe.calibration_passes - 1)),
                         memo, lambda: progress("calibrate convolutions",
                                                len(calib) * int8_recipe(recipe).calibration_passes))
        return Quantized(WeightOnly(job), job.encodings())
    choice = None
    prepared = calibrate(program, recipe, calib, progress("calibrate", len(calib) * recipe.calibration_passes),
                         memo=memo)
    if not budget:
        budget = default_decision_budget(prepared, evaluation, reference, decisions)
    if budget:
        choice = choose_float_layers(prepared, evaluation, reference, budget, progress, decisions)
        if choice["keep_float"]:
            prepared = calibrate(program, recipe, calib,
                                 progress("recalibrate", len(calib) * recipe.calibration_passes),
                                 frozenset(choice["float_nodes"]))
    quantized = convert(prepared)
    return Quantized(StaticInt8(quantized), quantized.encodings, choice)


class BudgetError(EdgeshipError):
    """The accuracy budget cannot be met even with every quantizable layer in float."""


def choose_float_layers(prepared, evaluation, reference, budget: dict, progress: Progress,
                         decisions: list | None = None) -> dict:
    import copy

    from edgeship.quantize import sensitivity as sens

    sim = sens.Simulator(copy.deepcopy(prepared), evaluation, reference)
    sim.decisions = decisions
    metric = next(iter(budget))
    # ranking on a subset of the eval samples bounds its cost; the choice is checked on all of them
    ranked = sens.rank(sim.subset(RANKING_SAMPLES), metric,
                       advance=progress("rank layer sensitivity", len(sim.layers)))
    layers, acc, met = sens.fewest_float_layers(sim, ranked, budget)
    wanted = ", ".join(f"{k} >= {v:g}" for k, v in budget.items())
    if not met:
        reached = ", ".join(f"{k} {acc[k]}" for k in budget)
        raise BudgetError(f"the accuracy budget ({wanted}) cannot be met on {len(evaluation)} eval samples: "
                          f"with all {len(layers)} quantizable layers in float the simulated model reaches "
                          f"{reached}; loosen the budget or check the eval data")
    log.info("keeping %d layer(s) in float for %s: %s", len(layers), wanted, layers)
    chosen = set(layers)  # a layer whose calls share one weight (recurrent steps) is every one of its calls
    nodes = [node for layer in sim.layers if layer.name in chosen for node in layer.nodes]
    return {"budget": budget, "keep_float": layers, "float_nodes": nodes, "simulated": acc,
            "candidates": len(sim.layers), "ranking_metric": metric}
