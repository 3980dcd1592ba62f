"""int4 weights for linear layers: block-wise (one scale per `group` input channels), symmetric, computed
once here and handed unchanged to every runtime that has int4 kernels.

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

import torch
from torch.fx import GraphModule, Node

from edgeship.quantize.quantizer import FLOAT_NODE, LINEAR_OPS
from edgeship.quantize.smoothquant import _attr

QMIN, QMAX = -8, 7


@dataclass(frozen=True)
class Int4Weight:
    layer: str  # linear node name in the exported graph
    attr: str  # the module attribute that holds the float weight
    q: torch.Tensor  # int8 tensor of values in [-8, 7], shape (out, in)
    scale: torch.Tensor  # float32, shape (out, in // group)
    group: int

    def dequantized(self) -> torch.Tensor:
        out, cols = self.q.shape
        blocks = self.q.reshape(out, cols // self.group, self.group).float() * self.scale[..., None]
        return blocks.reshape(out, cols)


def quantize_weight(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest block-wise symmetric int4: (q, scale)."""
    out, cols = weight.shape
    blocks = weight.detach().float().reshape(out, cols // group, group)
    scale = blocks.abs().amax(dim=-1).clamp(min=1e-10) / QMAX
    q = torch.round(blocks / scale[..., None]).clamp(QMIN, QMAX).to(torch.int8)
    return q.reshape(out, cols), scale


def int4_layers(module: GraphModule, group: int) -> tuple[list[Int4Weight], list[dict]]:
    """The int4 weights of every qualifying linear layer, and a record of the layers left float."""
    found, skipped = [], []
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in LINEAR_OPS:
            continue
        weight_node = node.args[1]
        if node.meta.get(FLOAT_NODE) or not (isinstance(weight_node, Node) and weight_node.op == "get_attr"):
            continue
        weight = _attr(module, weight_node.target)
        if weight.dim() != 2 or weight.shape[1] % group:
            skipped.append({"layer": node.name, "reason": f"{weight.shape[1]} input channels are not a multiple "
                                                          f"of the group size {group}"})
            continue
        q, scale = quantize_weight(weight, group)
        found.append(Int4Weight(node.name, weight_node.target, q, scale, group))
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
        layers = {w.layer for w in weights}
        for node in result.graph.nodes:
            if node.name in layers:
                node.target = torch.nn.functional.linear
        result.recompile()
    for w in weights:
        *path, leaf = w.attr.split(".")
        owner = result
        for part in path:
            owner = getattr(owner, part)
        if packed:
            value = IntxUnpackedToInt8Tensor(
                w.q, w.scale, torch.zeros_like(w.scale, dtype=torch.int8), torch.int4, (1, w.group),
                torch.float32, IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)
        else:
            value = w.dequantized()
        if isinstance(getattr(owner, leaf), torch.nn.Parameter):
            setattr(owner, leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            delattr(owner, leaf)
            owner.register_buffer(leaf, value)
    return result


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

    def encodings(self) -> dict:
        """Every int4 layer's group, shapes and content hashes: the same values go to every runtime."""
        import hashlib

        return {"version": 1, "int4_weights": {
            w.layer: {"group": w.group, "shape": list(w.q.shape), "range": [QMIN, QMAX],
                      "values_sha256": hashlib.sha256(w.q.numpy().tobytes()).hexdigest(),
                      "scales_sha256": hashlib.sha256(w.scale.numpy().tobytes()).hexdigest()}
            for w in self.weights}, "float_layers": self.skipped}


def build_int4(program: torch.export.ExportedProgram, recipe, samples, progress=None) -> Int4Job:
    from edgeship.export.passes.integer_constants import restore_integer_constants
    from edgeship.quantize.calibrate import apply_algorithms

    module = program.module()
    restore_integer_constants(module)
    records = apply_algorithms(module, recipe, samples, progress)
    weights, skipped = int4_layers(module, recipe.group_size)
    return Int4Job(with_int4_weights(module, weights, packed=True), with_int4_weights(module, weights, packed=False),
                   weights, skipped, records)
