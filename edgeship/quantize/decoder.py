"""int4 weights for a decoder language model, computed once: every linear layer of its blocks block-wise
int4 (one scale per `group` input channels of a row: quantize/grid.py), rounded to nearest or by GPTQ
with each layer's H = sum x^T x over calibration text; the token embeddings (and a head tied to them)
int8 with one scale per row. The result is the float model with those values dequantized into it (what
every runtime's artifact must compute) and the integer weights themselves (what each runtime's writer
packs)."""

from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
from torch import nn

from edgeship.quantize.grid import Int4Weight, gptq_weight, quantize_weight

log = logging.getLogger(__name__)


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers int4 quantizes: every nn.Linear except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


def input_grams(model: nn.Module, windows: torch.Tensor, names: set[str],
                progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """H = sum x^T x of each named linear layer's inputs over the calibration windows ([n, length] ids)."""
    grams: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if name in names:
            def record(mod, args, out, name=name):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                grams[name] = grams.get(name, 0) + x.T @ x
            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            for window in windows:
                model(window[None])
                if progress is not None:
                    progress(1)
    finally:
        for hook in hooks:
            hook.remove()
    return grams


def int4_decoder(model: nn.Module, group: int = 32, windows: torch.Tensor | None = None,
                 progress: Callable[[int], None] | None = None) -> tuple[nn.Module, list[Int4Weight], dict]:
    """A copy of `model` with int4 block weights (GPTQ when calibration `windows` are given, else rounded to
    nearest) and int8 per-row embeddings; the int4 weights; a record of what was done. `model` is unchanged."""
    quantized = copy.deepcopy(model).eval()
    linears = [(n, m) for n, m in block_linears(quantized) if m.in_features % group == 0]
    skipped = [n for n, m in block_linears(quantized) if m.in_features % group]
    grams = input_grams(model, windows, {n for n, _ in linears}, progress) if windows is not None else {}
    weights = []
    with torch.no_grad():
        for name, module in linears:
            w = module.weight.detach().float()
            q, scale = gptq_weight(w, grams[name], group) if name in grams else quantize_weight(w, group)
            record = Int4Weight(name, f"{name}.weight", q, scale.float(), group)
            module.weight.copy_(record.dequantized().to(module.weight.dtype))
            weights.append(record)
        embeddings = quantized.get_input_embeddings()
        rows = embeddings.weight.detach().float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-10) / 127
        embeddings.weight.copy_((torch.round(rows / scale).clamp(-127, 127) * scale).to(embeddings.weight.dtype))
        head = quantized.get_output_embeddings()
        tied = head is not None and head.weight is embeddings.weight
        if head is not None and not tied:  # an untied head: int8 per row too
            rows = head.weight.detach().float()
            scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-10) / 127
            head.weight.copy_((torch.round(rows / scale).clamp(-127, 127) * scale).to(head.weight.dtype))
    if skipped:
        log.warning("kept float (input channels not a multiple of %d): %s", group, ", ".join(skipped))
    return quantized, weights, {"method": "gptq" if grams else "nearest", "group": group, "int4_layers": len(weights),
                                "float_layers": skipped, "embeddings": "int8 per row", "tied_head": tied}
