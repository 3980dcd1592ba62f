"""ONNX Runtime GenAI models: the scales and free offsets of a checkpoint whose int4 grid came with float16
parameters, stored as float16 with the same float32 values (`widened`)."""

from __future__ import annotations

import numpy as np


def widened(graph) -> list:
    """Scales and free offsets stored as float16 where that keeps their float32 values exactly: a checkpoint
    whose grid came with float16 parameters (GGUF's Q4_1 stores each group's scale d and minimum m as float16;
    edgeship's offset is m + 8 d, the value of q = -8 plus 8 steps). Such a scale initializer NAME becomes
    NAME.f16 and a Cast to float32 named NAME; such an offsets initializer becomes the groups' minimums,
    NAME.minimum.f16, and the nodes that give back minimum + 8 * scale (bit for bit, checked here). ONNX
    Runtime folds those nodes into float32 constants when it loads the model: the kernels read the same
    values as before. Other scales and offsets (a model quantized here from float weights) stay float32."""
    from onnx import TensorProto, helper, numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.data_type == TensorProto.FLOAT
              and i.name.endswith((".scales", ".offsets"))}
    half = {name: a.astype(np.float16) for name, a in arrays.items() if name.endswith(".scales")
            and np.array_equal(_half_back(a), a)}
    minimums = {}
    for name, offsets in arrays.items():
        scales = f"{name[:-len('.offsets')]}.scales"
        if name.endswith(".offsets") and scales in half:
            minimum = (offsets - 8 * arrays[scales].T).astype(np.float16)  # offsets are stored [blocks, N]
            if np.array_equal(minimum.astype(np.float32) + 8 * arrays[scales].T, offsets):
                minimums[name] = (minimum, scales)
    casts, offsets, kept = [], [], []  # the scales' casts come first: the offsets' nodes read them
    for init in graph.initializer:
        if init.name in half:
            kept.append(numpy_helper.from_array(half[init.name], f"{init.name}.f16"))
            casts.append(helper.make_node("Cast", [f"{init.name}.f16"], [init.name], name=f"{init.name}/Widen",
                                          to=TensorProto.FLOAT))
        elif init.name in minimums:
            minimum, scales = minimums[init.name]
            kept.append(numpy_helper.from_array(minimum, f"{init.name}.minimum.f16"))
            offsets += _offsets_from_minimum(init.name, scales)
        else:
            kept.append(init)
    if offsets:
        kept.append(numpy_helper.from_array(np.array(8, np.float32), "edgeship.eight_steps"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return casts + offsets


def _half_back(values: np.ndarray) -> np.ndarray:
    """`values` through float16 and back to float32."""
    return values.astype(np.float16).astype(np.float32)


def _offsets_from_minimum(name: str, scales: str) -> list:
    """The nodes giving the offsets `name` [blocks, N] back as minimum + 8 * scales^T."""
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [f"{name}.minimum.f16"], [f"{name}/minimum"], name=f"{name}/Minimum",
                             to=TensorProto.FLOAT),
            helper.make_node("Transpose", [scales], [f"{name}/scales_t"], name=f"{name}/ScalesT", perm=[1, 0]),
            helper.make_node("Mul", [f"{name}/scales_t", "edgeship.eight_steps"], [f"{name}/steps"],
                             name=f"{name}/Steps"),
            helper.make_node("Add", [f"{name}/minimum", f"{name}/steps"], [name], name=f"{name}/Widen")]
