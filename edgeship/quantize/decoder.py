"""int4 weights for a decoder language model, computed once: every linear layer of its blocks block-wise
int4 (one scale per `group` input channels of a row: quantize/grid.py), rounded to nearest or by GPTQ
with each layer's H = sum x^T x over calibration text; the token embeddings (and a head tied to them)
int8 with one scale per row. The result is the float model with those values dequantized into it (what
every runtime's artifact must compute) and the integer weights themselves (what each runtime's writer
packs)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
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


def int8_rows(name: str, weight: torch.Tensor) -> Int4Weight:
    """A table (embeddings, a head) int8 with one scale per row."""
    rows = weight.detach().float()
    return Int4Weight(name, f"{name}.weight", *quantize_weight(rows, rows.shape[1], bits=8), rows.shape[1], bits=8)


@dataclass
class Int4Decoder:
    """A decoder's weights computed once: `model` is a copy of the float model holding them dequantized
    (what every runtime's artifact must compute); `linears` its int4 block weights, `embeddings` the int8
    rows of its token embeddings, `head` the int8 rows of an untied output head (None when tied)."""

    model: nn.Module
    linears: list[Int4Weight]
    embeddings: Int4Weight
    head: Int4Weight | None
    record: dict

    def all_weights(self) -> list[Int4Weight]:
        return [*self.linears, self.embeddings, *([self.head] if self.head is not None else [])]


def int4_decoder(model: nn.Module, group: int | None = 32, windows: torch.Tensor | None = None,
                 progress: Callable[[int], None] | None = None, bits: int = 4, search: bool = True) -> Int4Decoder:
    """`model`'s int4 block weights (GPTQ when calibration `windows` are given, else rounded to nearest;
    each group's scale clipped where that lowers its error, `search`) and int8 per-row embeddings, with a
    copy of the model holding them. `bits` 8 with `group` None: int8 weights, one scale per output
    channel. `model` is unchanged."""
    quantized = copy.deepcopy(model).eval()
    size = {n: group or m.in_features for n, m in block_linears(quantized)}
    linears = [(n, m) for n, m in block_linears(quantized) if m.in_features % size[n] == 0]
    skipped = [n for n, m in block_linears(quantized) if m.in_features % size[n]]
    grams = input_grams(model, windows, {n for n, _ in linears}, progress) if windows is not None else {}
    weights = []
    names = {id(m): n for n, m in quantized.named_modules()}
    with torch.no_grad():
        for name, module in linears:
            w = module.weight.detach().float()
            q, scale = (gptq_weight(w, grams[name], size[name], bits, search) if name in grams
                        else quantize_weight(w, size[name], bits, search))
            record = Int4Weight(name, f"{name}.weight", q, scale.float(), size[name], bits)
            module.weight.copy_(record.dequantized().to(module.weight.dtype))
            weights.append(record)
        embedding = quantized.get_input_embeddings()
        rows = int8_rows(names[id(embedding)], embedding.weight)
        embedding.weight.copy_(rows.dequantized().to(embedding.weight.dtype))
        head = quantized.get_output_embeddings()
        tied = head is not None and head.weight is embedding.weight
        head_rows = None
        if head is not None and not tied:  # an untied head: int8 per row too
            head_rows = int8_rows(names[id(head)], head.weight)
            head.weight.copy_(head_rows.dequantized().to(head.weight.dtype))
    if skipped:
        log.warning("kept float (input channels not a multiple of %d): %s", group, ", ".join(skipped))
    return Int4Decoder(quantized, weights, rows, head_rows,
                       {"method": "gptq" if grams else "nearest", "bits": bits, "group": group, "clip_search": search,
                        "quantized_layers": len(weights),
                        "float_layers": skipped, "embeddings": "int8 per row", "tied_head": tied})
