"""onnxruntime-genai's model builder, run as `python -m edgeship.backends.onnxruntime.builder_run ARGS` (the
builder's own arguments), reading a model configuration as transformers 5 writes it: per-layer-type
`rope_parameters` (Gemma 3: `full_attention` and `sliding_attention`) are given to it as the full-attention
layers' parameters and `rope_local_base_freq`, the form its Gemma 3 builder reads (it raises
`KeyError: 'rope_type'` on the nested form)."""

from __future__ import annotations

import runpy
import sys


def flat_rope(config):
    """`config` with per-layer-type RoPE parameters in the builder's form; any other config unchanged."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        local = params.get("sliding_attention")
        if isinstance(local, dict) and "rope_theta" in local:
            config.rope_local_base_freq = local["rope_theta"]
        config.rope_parameters = dict(params["full_attention"])
    return config


def main() -> None:
    from transformers import AutoConfig

    load = AutoConfig.from_pretrained
    AutoConfig.from_pretrained = lambda *args, **kwargs: flat_rope(load(*args, **kwargs))
    sys.argv[0] = "onnxruntime_genai.models.builder"
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
