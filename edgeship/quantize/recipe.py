"""Quantization recipes: frozen, validated, round-tripped through JSON/TOML."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgeship.errors import ConfigError, unknown_name

SCHEMES = ("w8a8", "w4a8", "w8a8-dynamic", "fp16")
GROUP_SIZES = (32, 64, 128, 256)  # XNNPACK's int4 kernels take multiples of 32
ACTIVATION_METHODS = ("auto", "histogram", "mse", "minmax", "percentile", "entropy")
# post-training algorithms, applied in this order before calibration (see edgeship/quantize/<name>.py)
ALGORITHMS = ("embeddings", "cross_layer_equalization", "outlier_channels", "smoothquant", "gptq",
              "bias_correction")
# one pass over the calibration samples each
READS_SAMPLES = ("cross_layer_equalization", "outlier_channels", "smoothquant", "gptq", "bias_correction")
WEIGHT_GRANULARITIES = ("per_channel", "per_tensor")
DEFAULT_ALGORITHMS = {"w8a8": ("embeddings", "outlier_channels", "smoothquant", "gptq", "bias_correction"),
                      "w4a8": ("embeddings", "gptq"), "w8a8-dynamic": ("embeddings",), "fp16": ()}
# what each scheme may take (its defaults and more)
SCHEME_ALGORITHMS = DEFAULT_ALGORITHMS | {"w8a8-dynamic": ("embeddings", "gptq"),
                                         "w8a8": DEFAULT_ALGORITHMS["w8a8"] + ("cross_layer_equalization",)}


@dataclass(frozen=True)
class Recipe:
    """`w8a8`: int8 weights per output channel (symmetric, -127..127), int8 activations per tensor
    (affine, -128..127; `weight_granularity = "per_tensor"`: one weight scale per tensor, for delegates that
    take no other), ranges calibrated by `activation_method` (`auto`: of the L2-optimal and the
    percentile ranges, the one whose simulated outputs are closer to float on the calibration samples). `algorithms`: `embeddings` (int8
    embedding tables, one scale per row), `outlier_channels`
    (linear output channels far above the rest computed in float), `smoothquant` (activation outliers
    moved into the weights, alpha chosen per layer), `cross_layer_equalization` (consecutive
    convolutions' channel ranges equalized: for per-tensor weights), `gptq` (the int8 weights of convolutions
    and linear layers rounded by GPTQ, with the scales calibration gave them), `bias_correction` (the mean
    output shift of the int8 weights taken out of each bias, after calibration).

    `w4a8`: int4 weights for linear layers, one symmetric scale per `group_size` input channels, and
    int8 activations quantized per token at run time by the runtime's int4 kernels; convolutions (and
    the adds and pools between their int8 outputs) static int8 as in `w8a8`, with `activation_method`
    and bias correction, and so are the linear layers `keep_int8` names; other ops float.
    It takes `embeddings` (int4 tables) and `gptq` (GPTQ's error-compensating rounding of the int4
    weights, and of the static int8 ones); layer norms are always folded into the linear layers that read them first
    (quantize/norm_fold.py).

    `w8a8-dynamic`: int8 weights for linear layers (symmetric, one scale per output channel), int8
    activations quantized at run time by the runtime (`group_size` does not apply); other ops float.
    It takes `embeddings` (int8 tables) and, when asked, `gptq`.

    `fp16`: the float model in float16 (weights and compute where the runtime computes in float16;
    float32 inputs and outputs); no calibration and no algorithms."""

    name: str = "int8"
    scheme: str = "w8a8"
    weight_granularity: str = "per_channel"
    activation_granularity: str = "per_tensor"
    activation_method: str = "auto"
    algorithms: tuple[str, ...] | None = None  # None: the scheme's defaults (DEFAULT_ALGORITHMS)
    group_size: int = 32
    # layers to leave in float: glob patterns over module paths ("encoder.layer.*.output.dense") or op
    # types ("linear", "conv2d", "matmul"); a pattern that matches no layer is an error
    keep_float: tuple[str, ...] = ()
    # w4a8 only: linear layers to give static int8 (int8 weights per output channel, int8 activations)
    # instead of int4 weights, for layers int4 hurts most; the same kind of patterns as keep_float
    keep_int8: tuple[str, ...] = ()
    # w8a8 only: layers whose input and output activations are int16 (symmetric, min/max range) instead of
    # int8, weights still int8; the adds, pools and concats between such layers follow them. The same kind
    # of patterns as keep_float ("*": every layer). ONNX Runtime computes them in float between int16
    # Q/DQ, LiteRT with its 16x8 kernels; ExecuTorch's XNNPACK has no int16 kernels and computes them in float
    int16_activations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise unknown_name("scheme", self.scheme, SCHEMES)
        if self.activation_method not in ACTIVATION_METHODS:
            raise unknown_name("activation method", self.activation_method, ACTIVATION_METHODS)
        for key in ("keep_float", "keep_int8", "int16_activations"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
                object.__setattr__(self, key, tuple(value))
            else:
                raise ConfigError(f"{key} must be a list of module-path or op-type patterns, e.g. "
                                  '["encoder.layer.*.output.dense", "linear"]')
        if self.keep_int8 and self.scheme != "w4a8":
            raise ConfigError(f"keep_int8 is for w4a8 (int4) recipes, where it gives linear layers int8 instead of "
                              f"int4; {self.scheme} already quantizes them to int8 or leaves them float (keep_float)")
        if self.int16_activations and self.scheme != "w8a8":
            raise ConfigError(f"int16_activations is for w8a8 (static int8) recipes; {self.scheme} quantizes "
                              "activations another way: remove int16_activations or use scheme w8a8")
        if self.algorithms is None:
            object.__setattr__(self, "algorithms", DEFAULT_ALGORITHMS.get(self.scheme, ()))
        if isinstance(self.algorithms, (list, tuple)):
            object.__setattr__(self, "algorithms", tuple(self.algorithms))
        else:
            raise ConfigError(f"algorithms must be a list of names from {', '.join(ALGORITHMS)}")
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise unknown_name("algorithm", name, ALGORITHMS)
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"group_size {self.group_size} is not supported; choose one of "
                              f"{', '.join(map(str, GROUP_SIZES))} (every runtime's int4 kernels take them)")
        wrong = sorted(set(self.algorithms) - set(SCHEME_ALGORITHMS[self.scheme]))
        if wrong:
            raise ConfigError(f"algorithms {', '.join(wrong)} do not apply to {self.scheme}; it takes "
                              f"{', '.join(SCHEME_ALGORITHMS[self.scheme])}")
        if self.weight_granularity not in WEIGHT_GRANULARITIES:
            raise unknown_name("weight granularity", self.weight_granularity, WEIGHT_GRANULARITIES)
        if self.weight_granularity != "per_channel" and self.scheme != "w8a8":
            raise ConfigError(f"{self.scheme} takes per_channel weights only; per_tensor is for w8a8")
        if self.activation_granularity != "per_tensor":
            raise ConfigError("activations are quantized per_tensor (static) or by the runtime (dynamic); "
                              "remove activation_granularity or set it to per_tensor")

    @property
    def calibration_passes(self) -> int:
        """How many times calibration reads the samples (for progress)."""
        return (0 if self.scheme == "fp16" else 1) + sum(a in READS_SAMPLES for a in self.algorithms)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown recipe key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
        return cls(**data)


RECIPES = {
    "int8": Recipe(),
    "int8-plain": Recipe(name="int8-plain", algorithms=()),
    "int4": Recipe(name="int4", scheme="w4a8"),
    "int8-dynamic": Recipe(name="int8-dynamic", scheme="w8a8-dynamic"),
    "fp16": Recipe(name="fp16", scheme="fp16"),
    "int8-histogram": Recipe(name="int8-histogram", activation_method="histogram"),
    "int8-percentile": Recipe(name="int8-percentile", activation_method="percentile"),
    "int8-entropy": Recipe(name="int8-entropy", activation_method="entropy"),
    "int8-minmax": Recipe(name="int8-minmax", activation_method="minmax"),
    "int8-a16": Recipe(name="int8-a16", int16_activations=("*",)),
    "int8-per-tensor": Recipe(name="int8-per-tensor", weight_granularity="per_tensor",
                              algorithms=DEFAULT_ALGORITHMS["w8a8"] + ("cross_layer_equalization",)),
}


def recipe_by_name(name: str) -> Recipe:
    """A built-in recipe by name, or a recipe file (.toml or .json) with Recipe's keys."""
    if name.endswith((".toml", ".json")):
        return _from_file(Path(name))
    if name not in RECIPES:
        raise unknown_name("recipe", name, tuple(RECIPES))
    return RECIPES[name]


def _from_file(path: Path) -> Recipe:
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist; check the path or use a built-in recipe "
                          f"({', '.join(RECIPES)})")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc}); fix the syntax") from exc
    data.setdefault("name", path.stem)
    try:
        return Recipe.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
