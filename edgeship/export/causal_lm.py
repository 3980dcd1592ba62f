"""Causal language models as edgeship takes them: a local Hugging Face folder (config.json, weights as
safetensors or bin, tokenizer files) or a folder holding one .gguf file (its weights dequantized to
float32: the float reference), loaded offline with transformers, with their own tokenizer."""

from __future__ import annotations

import contextlib

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeship.errors import ModelLoadError

if TYPE_CHECKING:  # torch is imported where a model is loaded: checking a source stays cheap
    import torch

log = logging.getLogger(__name__)

FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text", "phi3", "gpt2")


@dataclass(frozen=True)
class CausalLM:
    model: torch.nn.Module  # a transformers causal LM, float32, eval mode
    tokenizer: object
    name: str  # the folder name under the output root
    source: str
    family: str  # config.model_type
    max_positions: int  # the longest sequence the model's position encoding takes


def is_causal_lm_source(source: str) -> bool:
    """A folder with a config.json or a .gguf file, or a .gguf file: what `load_causal_lm` reads."""
    path = Path(source)
    if path.is_file():
        return path.suffix == ".gguf"
    return path.is_dir() and ((path / "config.json").is_file() or any(path.glob("*.gguf")))


def load_causal_lm(source: str) -> CausalLM:
    """The model and tokenizer at `source`, offline; ModelLoadError naming the fix when it is not a causal LM
    of a supported family, or has no tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the flows report their own progress
    path = Path(source)
    folder, gguf = (path.parent, path.name) if path.is_file() else (path, _gguf_in(path))
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{source}: no model configuration ({str(exc).splitlines()[0][:200]}); pass a Hugging "
                             "Face model folder (config.json and weights) or a folder with one .gguf file") from exc
    family = config.model_type
    if family not in FAMILIES:
        raise ModelLoadError(f"{source} is a {family} model; edgeship exports causal language models of the "
                             f"families {', '.join(FAMILIES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{source} has no tokenizer edgeship can read ({str(exc).splitlines()[0][:200]}); "
                             "put the model's tokenizer files (tokenizer.json, tokenizer_config.json) beside "
                             "it") from exc
    with _gguf_bar_silenced():
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kwargs)
    if gguf:
        model = _plain(model)
    _conv1d_as_linear(model)
    _end_of_sequence(model, tokenizer, source)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 0)
    return CausalLM(model.eval(), tokenizer, folder.name if not path.is_file() else path.stem, str(source), family,
                    int(positions))


@contextlib.contextmanager
def _gguf_bar_silenced():
    """transformers' GGUF reader draws its own tqdm bar (not under disable_progress_bar): off while loading."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar


def _gguf_in(folder: Path) -> str | None:
    if (folder / "config.json").is_file():
        return None
    found = sorted(p.name for p in folder.glob("*.gguf"))
    if len(found) > 1:
        raise ModelLoadError(f"{folder} holds {len(found)} .gguf files ({', '.join(found)}); pass the one to "
                             "export as the model path")
    return found[0] if found else None


def _end_of_sequence(model: torch.nn.Module, tokenizer, source: str) -> None:
    """The end-of-sequence token every runner stops on (LiteRT-LM refuses a model without one), in the model's
    config and generation config: the generation config's, else the config's, else the tokenizer's;
    ModelLoadError when none names one."""
    generation = getattr(model, "generation_config", None)
    eos = next((e for e in (getattr(generation, "eos_token_id", None), getattr(model.config, "eos_token_id", None),
                            getattr(tokenizer, "eos_token_id", None)) if e is not None), None)
    if eos is None:
        raise ModelLoadError(f"{source} names no end-of-sequence token, which the runtimes' LLM runners stop on; "
                             "set eos_token_id in config.json (or eos_token in tokenizer_config.json)")
    if generation is not None and generation.eos_token_id is None:
        generation.eos_token_id = eos
    if model.config.eos_token_id is None:
        model.config.eos_token_id = eos


def _plain(model: torch.nn.Module) -> torch.nn.Module:
    """A GGUF-loaded model rebuilt as a plain model of its class (its config without the GGUF
    quantization record, which exporters and save_pretrained refuse), holding the same float32 weights."""
    import torch

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain.to(torch.float32)


def _conv1d_as_linear(model: torch.nn.Module) -> int:
    """GPT-2's `Conv1D` layers (a linear layer whose weight is stored [in, out]) as nn.Linear computing the
    same values, so that every family's linear layers are nn.Linear; returns how many were replaced."""
    import torch
    from transformers.pytorch_utils import Conv1D

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Conv1D)]
    modules = dict(model.named_modules())
    for name, conv in found:
        linear = torch.nn.Linear(conv.weight.shape[0], conv.weight.shape[1], bias=conv.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.T)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else model, attr, linear)
    return len(found)
