"""A set of model-input samples: what calibration and verification iterate over."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from edgeship.errors import CalibrationError


@dataclass(frozen=True)
class Samples:
    """`arrays[i]` holds input i for every sample (first axis = samples); `names` names the inputs.

    `source` says where the samples came from (a path and, for images, the preprocessing). `batch_axes[i]`:
    where input i takes its batch axis of 1 (0, in front, unless --input-shape puts it elsewhere, as in a
    recurrent state [layers, 1, hidden]); empty: 0 for every input.
    """

    names: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    source: str
    batch_axes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        counts = {a.shape[0] for a in self.arrays}
        if len(counts) != 1:
            raise CalibrationError(
                f"{self.source}: inputs hold different sample counts "
                f"({', '.join(f'{n}: {a.shape[0]}' for n, a in zip(self.names, self.arrays))}); "
                "give every input the same number of samples along the first axis")
        if not counts or 0 in counts:
            raise CalibrationError(f"{self.source}: holds no samples; add at least one sample")
        for name, array in zip(self.names, self.arrays):
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).reshape(array.shape[0], -1).any(axis=1).sum())
                raise CalibrationError(
                    f"{self.source}: input {name!r} holds NaN or infinite values in {bad} sample(s); "
                    "remove or fix those samples")

    def __len__(self) -> int:
        return self.arrays[0].shape[0]

    @property
    def axes(self) -> tuple[int, ...]:
        """Each input's batch axis (`batch_axes`, or 0 for every input)."""
        return self.batch_axes or (0,) * len(self.arrays)

    def sample(self, i: int) -> tuple[np.ndarray, ...]:
        """Sample i with a batch axis of 1 (where `batch_axes` puts it), contiguous, as the model takes it."""
        return tuple(np.ascontiguousarray(np.expand_dims(a[i], axis)) for a, axis in zip(self.arrays, self.axes))

    def take(self, indices: list[int], source: str) -> Samples:
        return Samples(self.names, tuple(a[indices] for a in self.arrays), source, self.batch_axes)

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for name, array in zip(self.names, self.arrays):
            digest.update(name.encode())
            digest.update(str(array.dtype).encode())
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        if any(self.batch_axes):
            digest.update(str(self.batch_axes).encode())
        return digest.hexdigest()


def split_held_out(samples: Samples, fraction: float = 0.25) -> tuple[Samples, Samples]:
    """Split into (calibration, evaluation): every k-th sample is held out for evaluation.

    Interleaving keeps both parts spread over the whole set (folders are often sorted by class).
    Needs at least two samples; the held-out part is never used for calibration.
    """
    n = len(samples)
    if n < 2:
        raise CalibrationError(
            f"{samples.source}: holds {n} sample; verification needs held-out samples: "
            "add more samples or pass --eval-data")
    step = max(2, round(1 / fraction))
    held = [i for i in range(n) if i % step == step - 1] or [n - 1]
    kept = [i for i in range(n) if i not in set(held)]
    return (samples.take(kept, f"{samples.source} (calibration part, {len(kept)} of {n})"),
            samples.take(held, f"{samples.source} (held-out part, {len(held)} of {n})"))
