from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeship.calibration.images import Preprocess
from edgeship.calibration.readers import read_samples
from edgeship.calibration.samples import split_held_out
from edgeship.errors import CalibrationError, ConfigError
from edgeship.export.inputs import InputSpec, bind
from edgeship.export.load import Signature


def test_image_folder_uses_imagenet_defaults(image_folder: Path) -> None:
    samples = read_samples(image_folder)
    assert samples.arrays[0].shape == (8, 3, 224, 224)
    assert samples.arrays[0].dtype == np.float32
    # normalised with ImageNet mean/std: the values straddle zero, within a few std of it
    x = samples.arrays[0]
    assert -3.0 < x.min() < -1.0 and 1.0 < x.max() < 3.0


def test_preprocess_toml_next_to_images(image_folder: Path) -> None:
    (image_folder / "preprocess.toml").write_text('resize = 40\ncrop = 32\nlayout = "nhwc"\n')
    samples = read_samples(image_folder)
    assert samples.arrays[0].shape == (8, 32, 32, 3)


def test_preprocess_rejects_unknown_key(image_folder: Path) -> None:
    (image_folder / "preprocess.toml").write_text("size = 40\n")
    with pytest.raises(ConfigError, match="unknown preprocessing key.*size.*valid keys"):
        read_samples(image_folder)


def test_preprocess_flags_override(image_folder: Path) -> None:
    samples = read_samples(image_folder, Preprocess(resize=64, crop=48))
    assert samples.arrays[0].shape == (8, 3, 48, 48)


def test_overrides_apply_on_top_of_the_toml(image_folder: Path) -> None:
    (image_folder / "preprocess.toml").write_text('resize = 40\ncrop = 32\nlayout = "nhwc"\n')
    plain = read_samples(image_folder).arrays[0]
    shifted = read_samples(image_folder, overrides={"crop": 24, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    assert shifted.arrays[0].shape == (8, 24, 24, 3) and plain.shape == (8, 32, 32, 3)
    assert 0.0 <= shifted.arrays[0].min() and shifted.arrays[0].max() <= 1.0  # only scaled to [0, 1]


def test_bad_override_is_a_config_error(image_folder: Path) -> None:
    with pytest.raises(ConfigError, match="layout 'nwhc' is not one of"):
        read_samples(image_folder, overrides={"layout": "nwhc"})


def test_npz_and_npy_folder(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    np.savez(tmp_path / "d.npz", arg0=data)
    assert np.array_equal(read_samples(tmp_path / "d.npz").arrays[0], data)
    folder = tmp_path / "npy"
    folder.mkdir()
    for i in range(2):
        np.save(folder / f"{i}.npy", data[i])
    assert np.array_equal(read_samples(folder).arrays[0], data)


def test_float64_and_float16_data_is_read_as_float32(tmp_path: Path, caplog) -> None:
    """numpy's default float64 (and float16) would fail in a float32 model; integer inputs stay as they are."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8))
    np.savez(tmp_path / "d.npz", x=x, half=x.astype(np.float16), ids=np.arange(32).reshape(4, 8))
    samples = read_samples(tmp_path / "d.npz")
    assert [a.dtype for a in samples.arrays] == [np.float32, np.float32, np.arange(1).dtype]
    np.testing.assert_array_equal(samples.arrays[0], x.astype(np.float32))
    assert "x is float64, half is float16; read as float32" in caplog.text
    (tmp_path / "npy").mkdir()
    for i in range(3):
        np.save(tmp_path / "npy" / f"{i}.npy", x[i])
    assert read_samples(tmp_path / "npy").arrays[0].dtype == np.float32


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="holds no images"):
        read_samples(tmp_path)


def test_unreadable_image(image_folder: Path) -> None:
    (image_folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationError, match="broken.jpg: not a readable image"):
        read_samples(image_folder)


def test_nan_values(tmp_path: Path) -> None:
    data = np.zeros((4, 3), np.float32)
    data[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=data)
    with pytest.raises(CalibrationError, match="NaN or infinite values in 1 sample"):
        read_samples(tmp_path / "nan.npz")


@pytest.mark.parametrize("arrays, specs, message", [
    ({"x": np.zeros((2, 8), np.float32), "y": np.zeros((2, 8), np.float32)}, None, "holds 2 array"),
    ({"x": np.zeros((2, 7), np.float32)}, [InputSpec("x", (1, 8), "float32")], "shape 7 but the model input is 1x8"),
    ({"x": np.zeros((2, 8), np.int32)}, [InputSpec("x", (1, 8), "float32")], "is int32 but the model input is float32"),
], ids=["count", "shape", "dtype"])
def test_npz_mismatch(tmp_path: Path, arrays, specs, message) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(CalibrationError, match=message):
        bind(read_samples(tmp_path / "d.npz"), Signature(("x",), positional=("x",)), specs)


def test_bind_orders_by_input_name(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", right=np.ones((3, 6), np.float32), left=np.zeros((3, 8), np.float32))
    bound = bind(read_samples(tmp_path / "d.npz"), Signature(("left", "right"), positional=("left", "right")), None)
    assert bound.names == ("left", "right") and bound.arrays[0].shape == (3, 8)


def test_held_out_split_never_overlaps(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.arange(20, dtype=np.float32)[:, None])
    calib, held = split_held_out(read_samples(tmp_path / "d.npz"))
    a, b = set(calib.arrays[0].ravel()), set(held.arrays[0].ravel())
    assert not a & b and len(a) + len(b) == 20 and len(b) == 5
