"""Read calibration / evaluation data: an image folder, a .npz file, or a folder of .npy files."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from edgeship.calibration.images import Preprocess, image_files, load_image_folder
from edgeship.calibration.samples import Samples
from edgeship.errors import CalibrationError

log = logging.getLogger(__name__)


def read_samples(path: str | Path, preprocess: Preprocess | None = None,
                 overrides: dict | None = None) -> Samples:
    """Samples from `path`: a folder of images (with `preprocess`, or the folder's
    preprocess.toml, or ImageNet defaults, then `overrides` on top), a .npz with one array per
    input, or a folder of .npy."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"{path}: no such file or folder; pass an image folder, a .npz file "
                               "or a folder of .npy files")
    if path.is_file():
        if path.suffix != ".npz":
            raise CalibrationError(f"{path}: unsupported data file (suffix {path.suffix!r}); "
                                   "pass an image folder, a .npz file or a folder of .npy files")
        return _in_float32(_read_npz(path))
    npy = sorted(path.glob("*.npy"))
    if npy and not image_files(path):
        return _in_float32(_read_npy_folder(path, npy))
    return load_image_folder(path, preprocess, overrides=overrides)


def _in_float32(samples: Samples) -> Samples:
    """float64 arrays (numpy's default) and float16 ones as float32, said in one warning: the model and every
    runtime's artifact take float32 (a model with other float weights is converted too: export/load.in_float32)."""
    other = {name: str(a.dtype) for name, a in zip(samples.names, samples.arrays)
             if a.dtype.kind == "f" and a.dtype != np.float32}
    if not other:
        return samples
    log.warning("%s: %s; read as float32, which the model and its artifacts take", samples.source,
                ", ".join(f"{name} is {dtype}" for name, dtype in other.items()))
    return Samples(samples.names, tuple(a.astype(np.float32) if name in other else a
                                        for name, a in zip(samples.names, samples.arrays)), samples.source)


def _read_npz(path: Path) -> Samples:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            arrays = [data[name] for name in names]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CalibrationError(f"{path}: not a readable .npz file ({exc}); write it with numpy.savez") from exc
    if not names:
        raise CalibrationError(f"{path}: holds no arrays; save one array per model input")
    return Samples(tuple(names), tuple(arrays), str(path))


def _read_npy_folder(folder: Path, files: list[Path]) -> Samples:
    """Each .npy file is one sample of a single-input model (or a stack of samples if its first
    axis is the batch); all are concatenated along the first axis."""
    arrays = []
    for f in files:
        try:
            arrays.append(np.load(f, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{f}: not a readable .npy file ({exc}); write it with numpy.save") from exc
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise CalibrationError(f"{folder}: .npy files have different shapes {sorted(shapes)}; "
                               "give every sample the same shape")
    return Samples(("arg0",), (_stack_samples(arrays),), f"{folder} ({len(files)} .npy files)")


def _stack_samples(arrays: list[np.ndarray]) -> np.ndarray:
    # a file whose first axis is 1 holds one sample with its batch axis: drop that axis first
    items = [a[0] if a.ndim > 1 and a.shape[0] == 1 else a for a in arrays]
    return np.stack(items)
