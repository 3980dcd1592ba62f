"""Calibrate once: annotate, observe the calibration samples, convert to the Q/DQ graph."""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch.fx import GraphModule
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from edgeship.calibration.samples import Samples
from edgeship.errors import CalibrationError
from edgeship.export.inputs import to_torch
from edgeship.export.loops import as_loops, hoist_weight_quant, own_bodies, run_eagerly
from edgeship.export.passes import before_quantization
from edgeship.export.passes.spectra import fourier_layers
from edgeship.quantize.graphs import outputs_read_by_log
from edgeship.quantize.encodings import collect_encodings
from edgeship.quantize.quantizer import EdgeshipQuantizer, float_ops
from edgeship.quantize.recipe import ALGORITHMS, READS_SAMPLES, Recipe
from edgeship.quantize.stage import stage

log = logging.getLogger(__name__)


@dataclass
class QuantizedGraph:
    """The one calibrated graph every adapter consumes.

    `folded`: weights stored as int8 constants (for ONNX and ExecuTorch); `unfolded`: weights kept
    float behind quantize/dequantize pairs (what litert-torch's converter legalises); both compute
    the same values. `encodings` holds every scale and zero point; `float_ops` the ops left in float.
    """

    folded: GraphModule
    unfolded: GraphModule
    encodings: dict
    float_ops: list[str]
    algorithms: list[dict]  # what each post-training algorithm changed, for the manifest


def calibrate(program: torch.export.ExportedProgram, recipe: Recipe, samples: Samples,
              progress: Callable[[int], None] | None = None, keep_float: frozenset[str] = frozenset(),
              memo: dict | None = None) -> GraphModule:
    """The prepared graph with its observers fed every calibration sample. `keep_float`: node
    names the quantizer leaves unannotated. `memo` (quantize/stats_cache.py): statistics of an earlier
    run with the same key, reused instead of reading the samples; what is computed is added to it."""
    module, keep, records = transformed(program, recipe, samples, progress, memo)
    return observed(module, program.module(), recipe, samples, progress, keep_float | keep, records, memo)


def observed(module: GraphModule, reference: GraphModule, recipe: Recipe, samples: Samples,
             progress: Callable[[int], None] | None, skip: frozenset[str], records: list[dict],
             memo: dict | None) -> GraphModule:
    """`module` (already through the recipe's graph passes) prepared with the int8 quantizer, its
    observers fed the samples (or loaded from `memo`), the activation range rule chosen against
    `reference`'s float outputs, the int8 weights rounded by GPTQ and biases corrected when the recipe
    asks; `records` gets what each step did. `skip`: node names left float."""
    from edgeship.quantize.stats_cache import FAMILIES, load_observer_states, observer_states

    quantizer = EdgeshipQuantizer(activation_method=recipe.activation_method, skip=skip,
                                  weight_granularity=recipe.weight_granularity,
                                  wide=stage(module).wide_layers - skip)
    prepared = run_eagerly(prepare_pt2e(module, quantizer))  # observers in loops see every step
    stage(prepared).algorithms = records
    family = FAMILIES[recipe.activation_method]
    saved = (memo or {}).get("observers", {}).get(family)
    if saved is not None and load_observer_states(prepared, saved):
        if progress is not None:
            progress(len(samples))
    else:
        _observe(prepared, samples, progress)
        if memo is not None:
            memo.setdefault("observers", {})[family] = observer_states(prepared)
    if recipe.activation_method == "auto":
        from edgeship.quantize.range_choice import choose_range_rule

        chosen = choose_range_rule(prepared, reference, samples)
        if chosen:
            records.append({"algorithm": "activation_ranges", "changes": [chosen]})
    replaced = {}  # the float values of the weights and biases the passes below change, by attribute
    if "gptq" in recipe.algorithms:
        from edgeship.quantize.gptq import round_weights

        passes = memo.setdefault("passes", {}).setdefault("gptq", {}) if memo is not None else None
        with torch.no_grad():
            changes, originals = round_weights(prepared, samples, progress, passes)
        replaced.update(originals)
        records.append({"algorithm": "gptq", "changes": changes})
    if "bias_correction" in recipe.algorithms:
        from edgeship.quantize.bias_correction import correct_biases

        passes = memo.setdefault("passes", {}).setdefault("bias_correction", {}) if memo is not None else None
        with torch.no_grad():
            changes = correct_biases(prepared, samples, progress, passes, replaced)
        records.append({"algorithm": "bias_correction", "changes": changes})
    stage(prepared).float_values = replaced  # what analyze and budgets give a layer they switch to float
    return prepared


def _observe(prepared: GraphModule, samples: Samples, progress: Callable[[int], None] | None) -> None:
    with torch.no_grad():
        for i in range(len(samples)):
            try:
                prepared(*to_torch(samples.sample(i)))
            except RuntimeError as exc:
                raise CalibrationError(
                    f"calibration sample {i} of {samples.source} failed in the model: {exc}; "
                    "check that every sample matches the model's inputs") from exc
            if progress is not None:
                progress(1)


def transformed(program: torch.export.ExportedProgram, recipe: Recipe, samples: Samples,
                progress: Callable[[int], None] | None = None, memo: dict | None = None
                ) -> tuple[GraphModule, frozenset[str], list[dict]]:
    """The float graph every scheme quantizes: the program's module with its integer constants restored
    and the recipe's graph passes applied; also the layers kept float (the recipe's, matched before the
    passes add nodes, those whose output a logarithm reads, and the Fourier transforms made real) and what
    each pass changed. The same inputs give the same graph and node names."""
    module = own_bodies(program.module())  # the program keeps its loop bodies as they are
    before_quantization(module)  # export/passes: the one list of graph rewrites, in order
    keep = layers_matching(module, recipe.keep_float)
    before_log = outputs_read_by_log(module)
    fourier = [{"layer": name} for name in fourier_layers(module)]
    keep |= {change["layer"] for change in before_log + fourier}
    stage(module).wide_layers = layers_matching(module, recipe.int16_activations, "int16_activations")
    records = apply_algorithms(module, recipe, samples, progress, memo)
    if before_log:
        log.info("kept float, their outputs are read by a logarithm: %s", ", ".join(c["layer"] for c in before_log))
        records.insert(0, {"algorithm": "float_before_log", "changes": before_log})
    if fourier:  # the Fourier transforms export/passes/spectra.py made real: float, as the complex ops were
        records.insert(0, {"algorithm": "float_fourier", "changes": fourier})
    return module, keep, records


def layers_matching(module: GraphModule, patterns: tuple[str, ...], key: str = "keep_float") -> frozenset[str]:
    """Node names of the conv / linear / matmul layers whose module path (with or without the wrapper's
    leading `model.`) or op type matches one of the glob `patterns`."""
    import fnmatch

    from edgeship.errors import ConfigError
    from edgeship.quantize.sensitivity import LAYER_OPS, module_path

    if not patterns:
        return frozenset()
    layers = []
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target in LAYER_OPS:
            path = module_path(node)
            op = str(node.target).split(".")[-2]
            layers.append((node.name, {path, path.removeprefix("model."), op}))
    found = set()
    for pattern in patterns:
        hits = {name for name, keys in layers if any(fnmatch.fnmatchcase(k, pattern) for k in keys)}
        if not hits:
            examples = ", ".join(sorted({k for _, keys in layers for k in keys if "." in k})[:4])
            raise ConfigError(f"recipe {key} pattern {pattern!r} matches no layer; layers are named like "
                              f"{examples} or by op type (linear, conv2d, matmul)")
        found |= hits
    return frozenset(found)


def apply_algorithms(module: GraphModule, recipe: Recipe, samples: Samples,
                     progress: Callable[[int], None] | None = None, memo: dict | None = None) -> list[dict]:
    """The recipe's post-training algorithms, in place, in ALGORITHMS order; each reads the calibration
    samples once, or replays what `memo` says it decided before. Returns a record per algorithm."""
    from edgeship.quantize.embeddings import quantize_embeddings
    from edgeship.quantize.equalization import equalize
    from edgeship.quantize.outlier_split import split_outliers
    from edgeship.quantize.smoothquant import smooth

    table_bits = 4 if recipe.scheme == "w4a8" else 8
    passes = {"embeddings": functools.partial(quantize_embeddings, bits=table_bits, group=recipe.group_size),
              "cross_layer_equalization": equalize, "outlier_channels": split_outliers, "smoothquant": smooth}
    records = []
    for name in (a for a in ALGORITHMS if a in recipe.algorithms and a in passes):
        kwargs = {}
        if memo is not None and name in READS_SAMPLES:
            kwargs["memo"] = memo.setdefault("passes", {}).setdefault(name, {})
        with torch.no_grad():
            changes = passes[name](module, samples, progress=progress, **kwargs)
        records.append({"algorithm": name, "changes": changes})
    return records


def _freeze_qparams(prepared: GraphModule) -> None:
    """Each observer's scale and zero point computed once: the encodings and both conversions read them
    (HistogramObserver's L2 search costs ~1 s per activation; a MobileViT spent minutes repeating it)."""
    from torchao.quantization.pt2e.observer import ObserverBase

    for module in prepared.modules():
        if isinstance(module, ObserverBase) and hasattr(module, "calculate_qparams"):
            frozen = module.calculate_qparams()
            module.calculate_qparams = lambda frozen=frozen: frozen


def convert(prepared: GraphModule) -> QuantizedGraph:
    _freeze_qparams(prepared)
    left_float = float_ops(prepared)
    encodings = collect_encodings(prepared)
    records = stage(prepared).algorithms
    as_loops(prepared)  # conversion finds the observers in loop bodies through the scan operator
    unfolded = convert_pt2e(copy.deepcopy(prepared), fold_quantize=False)
    folded = convert_pt2e(prepared, fold_quantize=True)
    hoist_weight_quant(unfolded, fold=False)  # LiteRT's converter folds a body's weight quantize itself
    hoist_weight_quant(folded, fold=True)
    return QuantizedGraph(folded, unfolded, encodings, left_float, records)


def quantize(program: torch.export.ExportedProgram, recipe: Recipe, samples: Samples,
             progress: Callable[[int], None] | None = None, keep_float: frozenset[str] = frozenset()
             ) -> QuantizedGraph:
    return convert(calibrate(program, recipe, samples, progress, keep_float))
