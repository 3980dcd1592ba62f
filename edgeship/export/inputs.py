"""Match data samples to a model's inputs and build example inputs for capture."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from edgeship.calibration.samples import Samples
from edgeship.errors import CalibrationError, ConfigError
from edgeship.export.load import Signature

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


def bind(samples: Samples, signature: Signature, specs: list[InputSpec] | None) -> Samples:
    """Order the samples' arrays as the model's inputs and check count, shape and dtype.

    Arrays named after forward's parameters bind by name: every parameter without a default must be
    there, one with a default (or keyword-only) is an input only when named. Arrays named arg0, arg1, ...
    (or a single array) bind to the positional parameters in order. The names returned are the inputs the
    model is called with (LoadedModel.with_inputs).
    """
    arrays = dict(zip(samples.names, samples.arrays))
    order = _by_name(arrays, signature)
    if order is not None:
        picked = [arrays[n] for n in order]
    else:
        order = _by_position(samples.source, arrays, signature)
        picked = list(arrays.values()) if len(arrays) == 1 else [arrays[f"arg{i}"] for i in range(len(order))]
    if specs and len(specs) != len(order):
        raise CalibrationError(
            f"{samples.source}: holds {len(order)} input array(s) ({', '.join(order)}) but {len(specs)} "
            "--input-shape were given; give one --input-shape per array in the data")
    axes = tuple(_check(samples.source, spec, array) for spec, array in zip(specs, picked)) if specs else ()
    return Samples(tuple(order), tuple(picked), samples.source, axes if any(axes) else ())


def _by_name(arrays: dict, signature: Signature) -> list[str] | None:
    """The inputs in forward's parameter order when the arrays are named after its parameters; else None."""
    if not signature.known or not all(signature.accepts(n) for n in arrays):
        return None
    if any(n not in arrays for n in signature.required):
        return None
    ordered = [n for n in (*signature.positional, *signature.required, *signature.optional) if n in arrays]
    ordered = list(dict.fromkeys(ordered))
    return ordered + [n for n in arrays if n not in ordered]  # **kwargs inputs, in the data's order


def _by_position(source: str, arrays: dict, signature: Signature) -> list[str]:
    count = len(arrays)
    positional_names = count == 1 or all(f"arg{i}" in arrays for i in range(count))
    if not signature.known:
        if not positional_names and count > 1:
            raise CalibrationError(f"{source}: array names {', '.join(arrays)} cannot be matched to the model's "
                                   "inputs (its forward's signature cannot be read); name them arg0, arg1, ... in order")
        return [f"arg{i}" for i in range(count)]
    slots = len(signature.positional) if not signature.var_positional else max(count, len(signature.positional))
    keyword_required = [n for n in signature.required if n not in signature.positional]
    fits = len([n for n in signature.required if n in signature.positional]) <= count <= slots
    if not positional_names or not fits or keyword_required:
        missing = [n for n in signature.required if n not in arrays]
        hint = f"; missing: {', '.join(missing)}" if not positional_names and missing else ""
        raise CalibrationError(
            f"{source}: holds {count} array(s) ({', '.join(arrays)}) but the model requires "
            f"{len(signature.required)} input(s) ({signature.describe()}){hint}; save one array per model input, named after "
            "forward's parameters (or arg0, arg1, ... in order); parameters with a default are inputs only "
            "when the data names them")
    return [signature.positional[i] if i < len(signature.positional) else f"arg{i}" for i in range(count)]


def _check(source: str, spec: InputSpec, array: np.ndarray) -> int:
    """Where `spec` puts each sample's batch axis of 1: in front where the samples fit spec's other axes,
    else at the first axis of size 1 that, left out, gives the samples' shape (a recurrent state given as
    2x1x128 with samples of 2x128: axis 1). Raises CalibrationError when the samples fit neither."""
    per_sample = tuple(array.shape[1:])
    shape = tuple(spec.shape)
    if len(shape) == array.ndim - 1:  # the shape of one sample, without a batch axis: it goes in front
        shape = (1, *shape)
    axes = [k for k in range(len(shape))
            if (shape[k] == 1 or k == 0) and shape[:k] + shape[k + 1:] == per_sample]
    if not axes:
        raise CalibrationError(
            f"{source}: input {spec.name!r} samples have shape {'x'.join(map(str, per_sample))} but the "
            f"model input is {'x'.join(map(str, spec.shape))}; fix the data or --input-shape (the model's input "
            "shape with a batch axis of 1 where the model has its batch axis)")
    if np.dtype(DTYPES[spec.dtype]) != array.dtype:
        raise CalibrationError(
            f"{source}: input {spec.name!r} is {array.dtype} but the model input is {spec.dtype}; "
            f"save it as {spec.dtype} or pass --input-dtype {array.dtype}")
    return axes[0]


def specs_from_samples(samples: Samples) -> list[InputSpec]:
    """The model's inputs as the samples reach it: each with its batch axis of 1."""
    return [InputSpec(n, (*a.shape[1:axis + 1], 1, *a.shape[axis + 1:]), str(a.dtype))
            for n, a, axis in zip(samples.names, samples.arrays, samples.axes)]


def example_inputs(samples: Samples) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a) for a in samples.sample(0))


def to_torch(sample: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample)


def torch_outputs(module: torch.nn.Module, samples: Samples) -> list[list[np.ndarray]]:
    outs = []
    with torch.no_grad():
        for i in range(len(samples)):
            result = module(*to_torch(samples.sample(i)))
            result = result if isinstance(result, (tuple, list)) else (result,)
            outs.append([r.detach().numpy().copy() for r in result])
    return outs
