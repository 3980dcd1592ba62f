"""int4 weights for a decoder language model, computed once: every linear layer of its blocks block-wise
int4 (one scale per `group` input channels of a row: quantize/grid.py), rounded to nearest or by GPTQ
block by block over calibration text (each layer's H = sum x^T x of the inputs the already quantized
blocks give it); the token embeddings (and a head tied to them)
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

from edgeship.quantize.grid import (Int4Weight, gptq_weight, keeps_its_grid, quantize_affine, quantize_weight,
                                   whole_steps)

log = logging.getLogger(__name__)


def block_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers int4 quantizes: every nn.Linear except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head]


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
                 progress: Callable[[int], None] | None = None, bits: int = 4, search: bool = True,
                 asymmetric: bool = False, memo: dict | None = None, keep_grids: bool = True) -> Int4Decoder:
    """`model`'s int4 block weights and int8 per-row embeddings (and untied head), with a copy of the model
    holding them. With calibration `windows`, GPTQ block by block: each block's layers see the inputs the
    blocks before it give once quantized (`progress(1)` per window read and per block); without, rounded
    to nearest. `search`: each group's scale clipped where that lowers its error. `asymmetric`: an offset
    per group too (values q * scale + offset), a whole number of steps unless `keep_grids` and the layer's
    weights already sit on a grid with free offsets (grid.keeps_its_grid: a checkpoint quantized before,
    whose values are then kept exactly; every runtime computes such offsets beside its int4 kernel). `bits` 8 with
    `group` None: int8 weights, one scale per output channel. `memo` (quantize/stats_cache.py): GPTQ's
    weights are taken from its "gptq" entry when it holds them for these layers (no window is run), and
    written there when not. `model` is unchanged."""
    quantized = copy.deepcopy(model).eval()
    size = {n: group or m.in_features for n, m in block_linears(quantized)}
    linears = [(n, m) for n, m in block_linears(quantized) if m.in_features % size[n] == 0]
    skipped = [n for n, m in block_linears(quantized) if m.in_features % size[n]]
    with torch.no_grad():
        rows, head_rows, tied = _int8_tables(quantized)
        rule = _Rounding(size, bits, search, asymmetric, keep_grids)
        replayed = _replayed(linears, memo.get("gptq")) if windows is not None and memo else None
        if replayed is not None:
            weights = replayed
        elif windows is not None:
            weights = _sequential_gptq(quantized, linears, windows, rule, progress)
            if memo is not None:
                memo["gptq"] = [_stored(w) for w in weights]
        else:
            weights = [_set(m, rule.nearest(n, m)) for n, m in linears]
    if skipped:
        log.warning("kept float (input channels not a multiple of %d): %s", group, ", ".join(skipped))
    return Int4Decoder(quantized, weights, rows, head_rows,
                       {"method": "gptq" if windows is not None else "nearest", "bits": bits, "group": group,
                        "clip_search": search, "asymmetric": asymmetric, "quantized_layers": len(weights),
                        "free_offset_layers": sum(w.offset is not None and not whole_steps(w) for w in weights),
                        "float_layers": skipped, "embeddings": "int8 per row", "tied_head": tied})


def gptq_steps(model: nn.Module, windows: torch.Tensor) -> int:
    """The `progress` ticks `int4_decoder` gives for GPTQ over `windows`."""
    return len(windows) + len(_blocks(model))


@dataclass(frozen=True)
class _Rounding:
    """How each linear layer's weight goes on its grid: its group, the bits, the clipping search, offsets
    (and whether a layer already on a grid with free offsets keeps it)."""

    size: dict
    bits: int
    search: bool
    asymmetric: bool
    keep_grids: bool = True

    def _record(self, name: str, values: tuple) -> Int4Weight:
        q, scale, *offset = values
        return Int4Weight(name, f"{name}.weight", q, scale.float(), self.size[name], self.bits,
                          offset[0].float() if offset else None)

    def _whole(self, name: str, weight: torch.Tensor) -> bool:
        """Offsets in whole steps (integer zero points), unless grids are kept and the layer already sits on
        a grid with free offsets (grid.keeps_its_grid)."""
        return not (self.keep_grids and keeps_its_grid(weight, self.size[name], self.bits, self.search))

    def nearest(self, name: str, module: nn.Linear) -> Int4Weight:
        weight = module.weight.detach().float()
        if not self.asymmetric:
            return self._record(name, quantize_weight(weight, self.size[name], self.bits, self.search))
        return self._record(name, quantize_affine(weight, self.size[name], self.bits, self.search,
                                                  self._whole(name, weight)))

    def gptq(self, name: str, module: nn.Linear, gram: torch.Tensor) -> Int4Weight:
        weight = module.weight.detach().float()
        whole = self._whole(name, weight) if self.asymmetric else True
        return self._record(name, gptq_weight(weight, gram, self.size[name], self.bits, self.search,
                                              self.asymmetric, whole))


def _stored(w: Int4Weight) -> dict:
    """An int4 layer as the statistics file keeps it: int4 values two to a byte (low nibble first, q + 8)."""
    q = w.q
    if w.bits == 4:
        q = ((q[:, 0::2] + 8) | ((q[:, 1::2] + 8) << 4)).to(torch.uint8)
    return {"layer": w.layer, "attr": w.attr, "q": q, "scale": w.scale, "group": w.group, "bits": w.bits,
            "offset": w.offset}


def _replayed(linears: list, records: list | None) -> list[Int4Weight] | None:
    """The layers `records` holds (from `_stored`), set into `linears`; None when they are not these layers."""
    if not records or [r["layer"] for r in records] != [n for n, _ in linears]:
        if records:
            log.warning("cached GPTQ weights are not this model's layers; running GPTQ again")
        return None
    weights = []
    for (name, module), r in zip(linears, records):
        q = r["q"]
        if r["bits"] == 4:
            q = torch.stack([(q & 15).to(torch.int8) - 8, (q >> 4).to(torch.int8) - 8], dim=-1).reshape(q.shape[0], -1)
        if tuple(q.shape) != tuple(module.weight.shape):
            log.warning("cached GPTQ weights do not fit layer %s; running GPTQ again", name)
            return None
        weights.append(Int4Weight(r["layer"], r["attr"], q, r["scale"], r["group"], r["bits"], r["offset"]))
    return [_set(module, w) for (_, module), w in zip(linears, weights)]


def _set(module: nn.Linear, record: Int4Weight) -> Int4Weight:
    module.weight.copy_(record.dequantized().to(module.weight.dtype))
    return record


def _int8_tables(model: nn.Module) -> tuple[Int4Weight, Int4Weight | None, bool]:
    """The token embeddings (and an untied head) int8 per row, set into `model`."""
    names = {id(m): n for n, m in model.named_modules()}
    embedding = model.get_input_embeddings()
    rows = int8_rows(names[id(embedding)], embedding.weight)
    embedding.weight.copy_(rows.dequantized().to(embedding.weight.dtype))
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    head_rows = None
    if head is not None and not tied:
        head_rows = int8_rows(names[id(head)], head.weight)
        head.weight.copy_(head_rows.dequantized().to(head.weight.dtype))
    return rows, head_rows, tied


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder's blocks: the module list holding the most linear layers."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError("the model has no list of decoder blocks")
    return max(lists, key=lambda blocks: sum(isinstance(m, nn.Linear) for m in blocks.modules()))


def _block_inputs(model: nn.Module, blocks: nn.ModuleList, windows: torch.Tensor, progress) -> tuple[list, list]:
    """Each window's hidden states entering the first block, and the other arguments each block is called
    with (position embeddings, masks), captured from one forward pass."""
    first, calls = [], [[] for _ in blocks]

    def capture(index: int):
        def hook(module, args, kwargs):
            if index == 0:
                first.append(args[0] if args else kwargs["hidden_states"])
            calls[index].append((args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        return hook

    handles = [block.register_forward_pre_hook(capture(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        for window in windows:
            model(window[None], use_cache=False)
            if progress is not None:
                progress(1)
    finally:
        for handle in handles:
            handle.remove()
    return first, calls


def _run_block(block: nn.Module, x: torch.Tensor, call: tuple) -> torch.Tensor:
    out = block(x, *call[0], **call[1])
    return out[0] if isinstance(out, tuple) else out


def _sequential_gptq(model: nn.Module, linears: list, windows: torch.Tensor, rule: _Rounding,
                     progress) -> list[Int4Weight]:
    """GPTQ one decoder block at a time: H of each of its layers from the inputs the quantized blocks before
    it give; then the block quantized, and its outputs the next block's inputs. Layers outside the blocks
    are rounded to nearest."""
    blocks = _blocks(model)
    xs, calls = _block_inputs(model, blocks, windows, progress)
    done: dict[str, Int4Weight] = {}
    for index, block in enumerate(blocks):
        inside = [(n, m) for n, m in linears if any(m is b for b in block.modules())]
        grams: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda mod, args, out, n=n: grams.__setitem__(
            n, grams.get(n, 0) + _gram(args[0]))) for n, m in inside]
        try:
            for x, call in zip(xs, calls[index]):
                _run_block(block, x, call)
        finally:
            for hook in hooks:
                hook.remove()
        for name, module in inside:
            done[name] = _set(module, rule.gptq(name, module, grams[name]))
        xs = [_run_block(block, x, call) for x, call in zip(xs, calls[index])]
        if progress is not None:
            progress(1)
    for name, module in linears:
        if name not in done:
            done[name] = _set(module, rule.nearest(name, module))
    return [done[name] for name, _ in linears]


def _gram(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().reshape(-1, x.shape[-1]).float()
    return x.T @ x
