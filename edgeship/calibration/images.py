"""A folder of images turned into model inputs with a preprocessing spec."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeship.errors import CalibrationError, ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SPEC_FILE = "preprocess.toml"


@dataclass(frozen=True)
class Preprocess:
    """Resize the short side to `resize`, center-crop `crop`, scale to [0, 1], then (x - mean) / std.

    Defaults are ImageNet's. `layout` is `nchw` or `nhwc`; `color` is `rgb`, `bgr` or `gray`.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    layout: str = "nchw"
    color: str = "rgb"

    def __post_init__(self) -> None:
        if self.layout not in ("nchw", "nhwc"):
            raise ConfigError(f"preprocess layout {self.layout!r} is not one of: nchw, nhwc")
        if self.color not in ("rgb", "bgr", "gray"):
            raise ConfigError(f"preprocess color {self.color!r} is not one of: rgb, bgr, gray")
        channels = 1 if self.color == "gray" else 3
        if len(self.mean) != channels or len(self.std) != channels:
            raise ConfigError(
                f"preprocess mean and std need {channels} values for color {self.color!r}, "
                f"got {len(self.mean)} and {len(self.std)}")
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(f"preprocess needs 0 < crop <= resize, got crop {self.crop}, resize {self.resize}")
        if any(s <= 0 for s in self.std):
            raise ConfigError("preprocess std values must be positive")

    def describe(self) -> str:
        return (f"resize {self.resize}, crop {self.crop}, mean {list(self.mean)}, std {list(self.std)}, "
                f"{self.layout}, {self.color}")

    @classmethod
    def from_file(cls, path: Path) -> Preprocess:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the preprocessing spec ({exc}); fix the TOML") from exc
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str) -> Preprocess:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"{where}: unknown preprocessing key(s) {', '.join(unknown)}; "
                              f"valid keys: {', '.join(sorted(valid))}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def apply(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.color == "gray" else "RGB")
                img = _resize_short_side(img, self.resize)
                img = _center_crop(img, self.crop)
                pixels = np.asarray(img, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise CalibrationError(
                f"{path}: not a readable image ({exc}); remove it from the folder or replace it") from exc
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if self.color == "bgr":
            pixels = pixels[:, :, ::-1]
        pixels = (pixels - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        if self.layout == "nchw":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)


def _resize_short_side(img, size: int):
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


def _center_crop(img, size: int):
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(folder: Path, preprocess: Preprocess | None, on_image=None, overrides: dict | None = None):
    """Images of `folder` as one NCHW/NHWC float32 array. `preprocess` None: the folder's
    preprocess.toml if there is one, else ImageNet defaults; `overrides` (keys of Preprocess)
    replace single settings. `on_image` is called once per image."""
    from edgeship.calibration.samples import Samples

    files = image_files(folder)
    if not files:
        raise CalibrationError(
            f"{folder}: holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); "
            "add images, or pass a .npz file or a folder of .npy files")
    if preprocess is None:
        spec = folder / SPEC_FILE
        preprocess = Preprocess.from_file(spec) if spec.exists() else Preprocess()
    if overrides:
        merged = dataclasses.asdict(preprocess) | {k: v for k, v in overrides.items() if v is not None}
        preprocess = Preprocess.from_dict(merged, "preprocessing options")
    arrays = []
    for path in files:
        arrays.append(preprocess.apply(path))
        if on_image is not None:
            on_image()
    stacked = np.stack(arrays)
    return Samples(("image",), (stacked,), f"{folder} ({len(files)} images; {preprocess.describe()})")
