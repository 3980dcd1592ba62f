"""A transformers causal LM wrapped for export with ExecuTorch's own KV-cache ops, as its LLM examples
build a decoder: each layer's keys and values live in a `[1, max_seq_len, kv_heads, head_dim]` buffer
written in place by `llama::update_cache`, and attention is `llama::custom_sdpa`, which reads only the
positions filled so far (causal from `start_pos`) and handles grouped-query heads itself; a layer with a
sliding window shorter than the cache gives it a mask of that window.

Without them (transformers' own static-cache wrapper) attention ran in portable kernels over the whole
cache at every step: the key/value heads repeated, masks built and `index_put` outside the XNNPACK
delegate, some 45 ops per layer, and the int4 SmolLM2 decoded at 17 tokens/s.

The model's attention modules keep their projections and rotary embeddings: only the cache update and
the attention function are replaced (transformers' `AttentionInterface`), so every family whose
attention goes through that interface takes it; a family with logit soft-capping (Gemma 2) does not
(custom_sdpa has no soft cap) and keeps transformers' wrapper."""

from __future__ import annotations

import torch
from torch import nn

ATTENTION = "edgeship_et_sdpa"  # the name registered with transformers' attention and mask interfaces


def applies(model: nn.Module) -> bool:
    """Whether `model`'s attention can run as custom_sdpa over the custom cache."""
    config = model.config.get_text_config()
    return getattr(config, "attn_logit_softcapping", None) is None and bool(_attention_modules(model))


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that call the attention function: one per layer, each with its `layer_idx`."""
    return [m for m in model.modules() if getattr(m, "layer_idx", None) is not None and hasattr(m, "config")
            and type(m).__name__.endswith("Attention")]


def _attend(module, query, key, value, attention_mask, scaling=None, sliding_window=None, **kwargs):
    """custom_sdpa over the cache: `query` [B, heads, n, D] (transformers' layout), `key` / `value` the
    layer's whole cache [B, max_seq_len, kv_heads, D]; returns [B, n, heads, D] as transformers expects. A
    layer with a sliding window shorter than the cache (Gemma 3's local layers, Qwen2's where configured)
    attends through a mask of its window instead of causally from `start_pos`."""
    query = query.transpose(1, 2)
    if sliding_window is None or sliding_window >= key.shape[1]:
        out = torch.ops.llama.custom_sdpa(query, key, value, module.edgeship_start, None, 0.0, True, scaling)
    else:
        out = torch.ops.llama.custom_sdpa(query, key, value, 0, module.edgeship_window(sliding_window), 0.0, False,
                                          scaling)
    return out, None


def _register() -> None:
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  (registers the llama:: ops)
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, _attend)
    AttentionMaskInterface.register(ATTENTION, lambda *args, **kwargs: None)  # custom_sdpa masks causally itself


def _layer_class():
    from transformers.cache_utils import StaticLayer

    class _CustomLayer(StaticLayer):
        """One layer's cache in the [B, positions, heads, D] layout, updated by `llama::update_cache` at
        `start` (set by the wrapper before each call)."""

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().lazy_initialization(key_states, value_states)
            self.keys = self.keys.transpose(1, 2).contiguous()
            self.values = self.values.transpose(1, 2).contiguous()

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            torch.ops.llama.update_cache(key_states.transpose(1, 2), self.keys, self.start)
            torch.ops.llama.update_cache(value_states.transpose(1, 2), self.values, self.start)
            return self.keys, self.values

    return _CustomLayer


class CustomCacheDecoder(nn.Module):
    """`model` with the custom KV cache: forward(input_ids [1, n], cache_position [1]) -> logits [1, n, vocab],
    the signature ExecuTorch's LLM runner calls. `model` is changed (its attention implementation): pass a
    copy."""

    def __init__(self, model: nn.Module, max_seq_len: int) -> None:
        from transformers.cache_utils import StaticCache
        from transformers.configuration_utils import get_head_shapes

        super().__init__()
        _register()
        config = model.config.get_text_config()
        model.config._attn_implementation = ATTENTION
        config._attn_implementation = ATTENTION
        self.model, self.max_seq_len = model, max_seq_len
        self.cache = StaticCache(max_cache_len=max_seq_len, config=config)
        layer = _layer_class()
        self.cache.layers = [layer(max_seq_len) for _ in self.cache.layers]
        heads, head_dim = get_head_shapes(config)
        self.cache.early_initialization(1, heads, head_dim, model.dtype, torch.device("cpu"))
        for i, cached in enumerate(self.cache.layers):
            self.register_buffer(f"key_cache_{i}", cached.keys, persistent=False)
            self.register_buffer(f"value_cache_{i}", cached.values, persistent=False)
        self.attention = _attention_modules(model)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        start = cache_position[0].item()
        torch._check(start >= 0)
        torch._check(start + input_ids.shape[1] <= self.max_seq_len)
        for cached in self.cache.layers:
            cached.start = start
        positions = (torch.arange(input_ids.shape[1]) + cache_position[0]).unsqueeze(0)
        masks: dict[int, torch.Tensor] = {}

        def window(size: int) -> torch.Tensor:
            """[n, max_seq_len]: 0 where a position may attend (itself and the `size - 1` before it), else
            -inf; made once per call for each window size."""
            if size not in masks:
                rows, cols = positions.reshape(-1, 1), torch.arange(self.max_seq_len).unsqueeze(0)
                seen = (cols <= rows) & (cols > rows - size)
                masks[size] = torch.zeros(seen.shape).masked_fill(~seen, float("-inf"))
            return masks[size]

        for module in self.attention:
            module.edgeship_start, module.edgeship_window = start, window
        return self.model(input_ids=input_ids, position_ids=positions, cache=self.cache, use_cache=True).logits
