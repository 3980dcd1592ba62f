"""Match data samples to a model's inputs and build example inputs for capture."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from edgeship.calibration.samples import Samples
from edgeship.errors import CalibrationError, ConfigError

DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32,
          "uint8": np.uint8, "int8": np.int8, "bool": np.bool_}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def describe(self) -> str:
        return f"{self.name} {'x'.join(map(str, self.shape))} {self.dtype}"


def parse_shape(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(x\d+)*", text.strip()):
        raise ConfigError(f"input shape {text!r} is not of the form 1x3x224x224; pass sizes joined by 'x'")
    return tuple(int(s) for s in text.strip().split("x"))


def parse_dtype(text: str) -> str:
    if text not in DTYPES:
        raise ConfigError(f"input dtype {text!r} is not supported; use one of: {', '.join(DTYPES)}")
    return text


def specs_from_flags(shapes: list[str], dtypes: list[str], names: tuple[str, ...]) -> list[InputSpec]:
    if dtypes and len(dtypes) not in (1, len(shapes)):
        raise ConfigError(f"{len(dtypes)} --input-dtype for {len(shapes)} --input-shape; give one dtype "
                          "for all inputs or one per --input-shape")
    parsed = [parse_shape(s) for s in shapes]
    kinds = [parse_dtype(d) for d in dtypes] or ["float32"]
    kinds = kinds * len(parsed) if len(kinds) == 1 else kinds
    return [InputSpec(names[i] if i < len(names) else f"arg{i}", shape, kind)
            for i, (shape, kind) in enumerate(zip(parsed, kinds))]


def bind(samples: Samples, names: tuple[str, ...], specs: list[InputSpec] | None) -> Samples:
    """Order the samples' arrays as the model's inputs and check count, shape and dtype.

    Arrays are matched by input name, or positionally when named arg0, arg1, ... (or a single array).
    """
    arrays = dict(zip(samples.names, samples.arrays))
    expected = len(specs) if specs else len(names) or len(arrays)
    if len(arrays) != expected:
        raise CalibrationError(
            f"{samples.source}: holds {len(arrays)} array(s) ({', '.join(arrays)}) but the model takes "
            f"{expected} input(s) ({', '.join(names) or '?'}); save one array per model input")
    order = list(names[:expected]) if names else [f"arg{i}" for i in range(expected)]
    if set(order) <= set(arrays):
        picked = [arrays[n] for n in order]
    elif all(f"arg{i}" in arrays for i in range(expected)):
        picked = [arrays[f"arg{i}"] for i in range(expected)]
    elif expected == 1:
        picked = list(arrays.values())
    else:
        raise CalibrationError(
            f"{samples.source}: array names {', '.join(arrays)} do not match the model's inputs "
            f"({', '.join(order)}); name the arrays after the inputs or arg0, arg1, ... in order")
    if specs:
        for spec, array in zip(specs, picked):
            _check(samples.source, spec, array)
    return Samples(tuple(order), tuple(picked), samples.source)


def _check(source: str, spec: InputSpec, array: np.ndarray) -> None:
    per_sample = tuple(array.shape[1:])
    want = spec.shape[1:] if len(spec.shape) == array.ndim else spec.shape
    if per_sample != tuple(want):
        raise CalibrationError(
            f"{source}: input {spec.name!r} samples have shape {'x'.join(map(str, per_sample))} but the "
            f"model input is {'x'.join(map(str, spec.shape))}; fix the data or --input-shape")
    if np.dtype(DTYPES[spec.dtype]) != array.dtype:
        raise CalibrationError(
            f"{source}: input {spec.name!r} is {array.dtype} but the model input is {spec.dtype}; "
            f"save it as {spec.dtype} or pass --input-dtype {array.dtype}")


def specs_from_samples(samples: Samples) -> list[InputSpec]:
    return [InputSpec(n, (1, *a.shape[1:]), str(a.dtype)) for n, a in zip(samples.names, samples.arrays)]


def example_inputs(samples: Samples) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in samples.sample(0))


def to_torch(sample: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample)
