"""Mixed int4 / int8 decoder weights that meet a perplexity budget: the layers where int4 loses the most
are kept int8 (per output channel, symmetric), the fewest that bring the simulated perplexity increase on
every evaluation subject within the budget.

Layers that read the same input (q, k and v; gate and up) form one unit and change together: the runtimes
pack them into one matmul, which has one bit width. A unit's sensitivity is int4's expected output error
relative to the layer's output energy, E|(W - Q) x|^2 / E|W x|^2 with the input's per-channel second
moments on the calibration text (the diagonal of GPTQ's H). The search orders units by it and bisects
on how many to keep int8, each step measuring the model with those weights in PyTorch; the runtimes then
compute that same set of weights, and their own measured increase is checked against the budget again."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable, Iterator

import torch
from torch import nn

from edgeship.quantize.decoder import Int4Decoder
from edgeship.quantize.grid import Int4Weight, quantize_weight


def int8_layer(w: Int4Weight, weight: torch.Tensor) -> Int4Weight:
    """`weight` (the float weight of `w`'s layer) int8, one scale per output channel."""
    q, scale = quantize_weight(weight.detach().float(), weight.shape[1], bits=8)
    return Int4Weight(w.layer, w.attr, q, scale, weight.shape[1], bits=8)


def sensitive_units(model: nn.Module, decoder: Int4Decoder, windows: torch.Tensor) -> list[tuple[list[str], float]]:
    """The decoder's int4 layers grouped by shared input, most sensitive unit first, with its score."""
    modules = dict(model.named_modules())
    names = [w.layer for w in decoder.linears]
    moments = {name: torch.zeros(modules[name].in_features, dtype=torch.float64) for name in names}
    readers: dict[int, list[str]] = {}
    kept: list[torch.Tensor] = []  # the first window's inputs stay alive, so their ids stay theirs

    def hook(name: str):
        def record(module, args):
            x = args[0].detach()
            moments[name] += (x.double().reshape(-1, x.shape[-1]) ** 2).sum(0)
            if len(kept) < len(names):
                kept.append(args[0])
                readers.setdefault(id(args[0]), []).append(name)
        return record

    hooks = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        with torch.no_grad():
            for window in windows:
                model(window[None])
    finally:
        for h in hooks:
            h.remove()
    scores = {}
    for w in decoder.linears:
        weight = modules[w.layer].weight.detach().double()
        error = ((weight - w.dequantized().double()) ** 2 * moments[w.layer]).sum()
        scores[w.layer] = float(error / ((weight ** 2 * moments[w.layer]).sum() + 1e-30))
    units = [group for group in readers.values()]
    return sorted(((u, max(scores[n] for n in u)) for u in units), key=lambda pair: -pair[1])


def with_int8(decoder: Int4Decoder, model: nn.Module, layers: set[str]) -> Int4Decoder:
    """A decoder whose `layers` are int8 per channel (from `model`'s float weights), the rest as in
    `decoder`; its model holds the chosen weights. `decoder` is unchanged."""
    import copy

    modules = dict(model.named_modules())
    linears = [int8_layer(w, modules[w.layer].weight) if w.layer in layers else w for w in decoder.linears]
    quantized = copy.deepcopy(decoder.model)
    _load(quantized, linears)
    record = decoder.record | {"int8_layers": sorted(layers),
                               "quantized_layers": len(linears) - len(layers)}
    return replace(decoder, model=quantized, linears=linears, record=record)


def _load(model: nn.Module, linears: list[Int4Weight]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for w in linears:
            modules[w.layer].weight.copy_(w.dequantized().to(modules[w.layer].weight.dtype))


def meet_budget(decoder: Int4Decoder, model: nn.Module, calibration: torch.Tensor,
                increase_of: Callable[[nn.Module], float], limit: float,
                progress: Callable[[int], None] | None = None) -> tuple[Int4Decoder, dict]:
    """The decoder with the fewest most sensitive units int8 whose model's `increase_of` (the worst
    subject's perplexity increase, a fraction) is at most `limit`; with the search's record. Raises
    ValueError with the increase of the all-int8 model when even that exceeds `limit`."""
    units = sensitive_units(model, decoder, calibration)
    tried: dict[int, float] = {}

    def increase(count: int) -> float:
        if count not in tried:
            layers = {name for unit, _ in units[:count] for name in unit}
            trial = decoder.model
            if count:
                trial = with_int8(decoder, model, layers).model
            tried[count] = increase_of(trial)
            if progress is not None:
                progress(1)
        return tried[count]

    low, high = 0, len(units)
    if increase(0) > limit:
        if increase(high) > limit:
            raise ValueError(f"{tried[high]:.4f}")
        while high - low > 1:  # increase(low) > limit >= increase(high)
            middle = (low + high) // 2
            if increase(middle) <= limit:
                high = middle
            else:
                low = middle
        count = high
    else:
        count = 0
    layers = {name for unit, _ in units[:count] for name in unit}
    chosen = with_int8(decoder, model, layers) if count else decoder
    return chosen, {"max_ppl_increase": limit, "int8_units": count, "units": len(units),
                    "int8_layers": sorted(layers),
                    "simulated": [{"int8_units": k, "ppl_increase": round(v, 5)} for k, v in sorted(tried.items())]}


def search_steps(units: int) -> int:
    """At most how many measurements `meet_budget` takes over `units` units."""
    return 2 + max(1, units).bit_length()


@contextlib.contextmanager
def per_token_int8_inputs(model: nn.Module, layers: list[str]) -> Iterator[None]:
    """While inside, the input of each of `layers` is rounded to int8 per token, asymmetric (each token's
    range, with 0, in 255 steps), as XNNPACK's dynamically quantized linear kernels read it."""
    def fake_quantize(module, args):
        x = args[0]
        low, high = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
        scale = ((high - low) / 255).clamp(min=1e-12)
        zero = -128 - torch.round(low / scale)
        q = (torch.round(x / scale) + zero).clamp(-128, 127)
        return ((q - zero) * scale,) + tuple(args[1:])

    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_pre_hook(fake_quantize) for name in layers]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
