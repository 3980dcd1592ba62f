"""int4 weights for linear layers: block-wise (one scale per `group` input channels), symmetric, computed
once here and handed unchanged to every runtime that has int4 kernels. The same machinery gives the
`w8a8-dynamic` scheme its int8 weights: one scale per output channel (group = the input channels),
values -127..127.

Values are in [-8, 7] with scale = max |w| / 7 over each group of a row (so -8 is never needed and the
grid is symmetric); activations are quantized to int8 per token at run time by the kernels
(XNNPACK's qd8-f32-qb4w, ONNX Runtime's MatMulNBits with accuracy_level 4), so the scheme is W4A8
with dynamic activations.

Linear layers qualify when their weight is a constant held by the module, their input channels are a
multiple of the group, and no PTQ pass marked them float; the rest stay float (recorded).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.fx import GraphModule, Node

from edgeship.quantize.gptq import PatchGram
from edgeship.quantize.graphs import attr, replace_attr, run_samples
from edgeship.quantize.grid import QMAX, QMIN, Int4Weight, gptq_weight, quantize_weight, value_range  # noqa: F401
from edgeship.quantize.quantizer import CONV_OPS, FLOAT_NODE, LINEAR_OPS, MATMUL_OPS

if TYPE_CHECKING:
    from edgeship.quantize.calibrate import QuantizedGraph

def int4_layers(module: GraphModule, group: int | None, samples=None, progress=None,
                skip: frozenset[str] = frozenset(), bits: int = 4,
                static: frozenset[str] = frozenset()) -> tuple[list[Int4Weight], list[dict]]:
    """The int4 (or int8) weights of every qualifying linear layer (GPTQ when `samples` are given, else
    round-to-nearest), and a record of the layers left float (`skip`). `group` None: one scale per output
    channel. Layers in `static` are left out (they get static int8 instead)."""
    found, skipped = [], []
    calls: dict[str, list[str]] = {}  # weight attribute -> the layer calls reading it (a recurrent layer's steps)
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in LINEAR_OPS or node.name in static:
            continue
        weight_node = node.args[1]
        if node.meta.get(FLOAT_NODE) or not (isinstance(weight_node, Node) and weight_node.op == "get_attr"):
            continue
        if weight_node.target in calls:  # one Int4Weight (or none) per weight, however many calls share it
            calls[weight_node.target].append(node.name)
            continue
        calls[weight_node.target] = [node.name]
        if node.name in skip:
            skipped.append({"layer": node.name, "reason": "kept in float by the recipe (keep_float)"})
            continue
        weight = attr(module, weight_node.target)
        size = group or (weight.shape[1] if weight.dim() == 2 else 0)
        if weight.dim() != 2 or weight.shape[1] % size:
            skipped.append({"layer": node.name, "reason": f"{weight.shape[1]} input channels are not a multiple "
                                                          f"of the group size {size}"})
            continue
        found.append(Int4Weight(node.name, weight_node.target, *quantize_weight(weight, size, bits), size, bits))
    if samples is not None and found:
        recorder = PatchGram(module, {name for w in found for name in calls[w.attr]})
        run_samples(recorder, samples, progress)
        grams = {w.attr: sum(recorder.gram[name][0] for name in calls[w.attr] if name in recorder.gram)
                 for w in found}
        found = [Int4Weight(w.layer, w.attr, *gptq_weight(attr(module, w.attr), grams[w.attr], w.group, bits=bits),
                            w.group, bits)
                 if isinstance(grams[w.attr], torch.Tensor) else w for w in found]
    elif samples is not None and progress is not None:  # the GPTQ pass is counted even with no layer for it
        progress(len(samples))
    return found, skipped


def with_int4_weights(module: GraphModule, weights: list[Int4Weight], packed: bool) -> GraphModule:
    """A copy of `module` whose int4 layers hold either torchao's int4 tensors with per-token int8
    activation quantization (`packed`, what ExecuTorch lowers to XNNPACK's int4 kernels), or the
    dequantized float weights (what the ONNX rewrite recognises, and the simulated weights)."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    result = copy.deepcopy(module)
    if packed:  # torchao's int4 tensor implements F.linear (decomposing aten.linear bypasses it)
        targets = {w.attr for w in weights}
        for node in result.graph.nodes:
            if node.op == "call_function" and node.target in LINEAR_OPS and isinstance(node.args[1], Node) \
                    and node.args[1].op == "get_attr" and node.args[1].target in targets:
                node.target = torch.nn.functional.linear
        result.recompile()
    for w in weights:
        if packed:
            value = IntxUnpackedToInt8Tensor(
                w.q, w.scale, torch.zeros_like(w.scale, dtype=torch.int8), torch.int4 if w.bits == 4 else torch.int8,
                (1, w.group),
                torch.float32, IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)
        else:
            value = w.dequantized()
        replace_attr(result, w.attr, value)
    return result.eval()


@dataclass
class Int4Job:
    """The int4 form of a model: `packed` (torchao int4 tensors; what ExecuTorch lowers, and the
    simulation of the int4 model) and `dequantized` (float weights equal to the int4 values; what the
    ONNX rewrite matches), the weights themselves, the layers left float, and what the algorithms did."""

    packed: GraphModule
    dequantized: GraphModule
    weights: list[Int4Weight]
    skipped: list[dict]
    algorithms: list[dict]
    precision: str = "int4"  # or "int8-dynamic": int8 weights, one scale per output channel
    # int4's convolutions in static int8: `dequantized` is then int8's folded graph, and LiteRT converts
    # int8.unfolded (with the same dequantized int4 weights)
    int8: QuantizedGraph | None = None

    def encodings(self) -> dict:
        """Every layer's group, shapes and content hashes: the same values go to every runtime."""
        import hashlib

        return {"version": 1, f"{self.precision.replace('-', '_')}_weights": {
            w.layer: {"group": w.group, "bits": w.bits, "shape": list(w.q.shape), "range": list(value_range(w.bits)),
                      "values_sha256": hashlib.sha256(w.q.numpy().tobytes()).hexdigest(),
                      "scales_sha256": hashlib.sha256(w.scale.numpy().tobytes()).hexdigest()}
            for w in self.weights}, "float_layers": self.skipped,
            **({"int8_layers": self.int8.encodings} if self.int8 is not None else {})}


def float_graph(program: torch.export.ExportedProgram, recipe, samples, progress=None, memo: dict | None = None
                ) -> tuple[GraphModule, frozenset[str], list[dict]]:
    """The float graph whose linear layers get int4 weights: the recipe's passes applied and the layer
    norms folded into the linear layers that read them; also the keep_float layers and the records."""
    from edgeship.quantize.calibrate import transformed
    from edgeship.quantize.norm_fold import fold_norm_affine

    module, keep, records = transformed(program, recipe, samples, progress, memo)
    folded = fold_norm_affine(module)
    if folded:
        records.append({"algorithm": "norm_fold", "changes": folded})
    return module, keep, records


def build_int4(program: torch.export.ExportedProgram, recipe, samples, progress=None, memo: dict | None = None,
               int8_progress=None) -> Int4Job:
    """`memo` (quantize/stats_cache.py): GPTQ's values and scales from an earlier run with the same key
    are reused instead of reading the samples; what is computed is added to it. int4 puts the model's
    convolutions in static int8 (`int8_progress()` gives the tick function for that calibration)."""
    from edgeship.quantize.calibrate import layers_matching

    module, keep, records = float_graph(program, recipe, samples, progress, memo)
    matched = layers_matching(module, recipe.keep_int8, "keep_int8")
    static = frozenset(n.name for n in module.graph.nodes
                       if n.name in matched and (n.target in LINEAR_OPS or n.target in MATMUL_OPS)) - keep
    gptq = "gptq" in recipe.algorithms
    bits, group = (8, None) if recipe.scheme == "w8a8-dynamic" else (4, recipe.group_size)
    saved = (memo or {}).get("gptq")
    if gptq and saved:
        weights, skipped = int4_layers(module, group, None, None, keep, bits, static)
        weights = [Int4Weight(w.layer, w.attr, saved[w.layer]["q"], saved[w.layer]["scale"], w.group, bits)
                   for w in weights]
        if progress is not None:
            progress(len(samples))
    else:
        weights, skipped = int4_layers(module, group, samples if gptq else None, progress, keep, bits, static)
        if gptq and memo is not None:
            memo["gptq"] = {w.layer: {"q": w.q, "scale": w.scale} for w in weights}
    if gptq:
        records.append({"algorithm": "gptq", "changes": [{"layers": len(weights), "samples": len(samples)}]})
    dequantized = with_int4_weights(module, weights, packed=False)
    int8 = None
    convolutions = _int8_layers(dequantized, keep) if bits == 4 else []
    if convolutions or static:
        int8 = _int8_elsewhere(dequantized, recipe, samples, int8_progress() if int8_progress else None,
                               keep, len(convolutions), static, records, memo)
        dequantized = int8.folded
    return Int4Job(with_int4_weights(dequantized, weights, packed=True), dequantized, weights, skipped, records,
                   "int4" if bits == 4 else "int8-dynamic", int8)


def _int8_layers(module: GraphModule, keep: frozenset[str]) -> list[str]:
    """The convolutions int4 leaves to static int8 (int4 is for linear layers)."""
    return [n.name for n in module.graph.nodes
            if n.op == "call_function" and n.target in CONV_OPS and n.name not in keep]


def int8_recipe(recipe):
    """How int4 calibrates the layers it gives static int8: the recipe's activation ranges, its GPTQ, and
    bias correction."""
    from edgeship.quantize.recipe import Recipe

    return Recipe(name=recipe.name, scheme="w8a8", activation_method=recipe.activation_method,
                  algorithms=tuple(a for a in ("gptq", "bias_correction")
                                   if a == "bias_correction" or a in recipe.algorithms))


def _int8_elsewhere(dequantized: GraphModule, recipe, samples, progress, keep: frozenset[str], convolutions: int,
                    static: frozenset[str], records: list[dict], memo: dict | None):
    """The convolutions and the `static` (keep_int8) linear layers (and the adds, pools and concats
    between int8 tensors) of the int4 model in static int8, calibrated like the int8 recipe (the recipe's
    activation ranges, bias correction) on the graph that already holds the int4 layers' dequantized
    weights; the other linear layers and matmuls stay as int4 left them."""
    from edgeship.quantize.calibrate import convert, observed

    linear = {n.name for n in dequantized.graph.nodes
              if n.op == "call_function" and (n.target in LINEAR_OPS or n.target in MATMUL_OPS)} - static
    records.append({"algorithm": "int8_convolutions", "changes": [
        {"layers": convolutions, "samples": len(samples), **({"keep_int8": sorted(static)} if static else {})}]})
    prepared = observed(copy.deepcopy(dequantized), dequantized, int8_recipe(recipe), samples, progress,
                        frozenset(keep | linear), records, memo)
    return convert(prepared)
