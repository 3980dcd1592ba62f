"""Which of a model's forward parameters are inputs: the data names them (parameters with a default,
keyword-only ones), or gives them in order (arg0, arg1, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import faithful
from models import optional_inputs

from edgeship import api
from edgeship.calibration.readers import read_samples
from edgeship.errors import CalibrationError, ExportError
from edgeship.export.inputs import bind
from edgeship.export.load import signature_of

TESTS = Path(__file__).resolve().parent


def _bind(tmp_path: Path, **arrays):
    np.savez(tmp_path / "d.npz", **{k: np.ones((4, 8), np.float32) for k in arrays})
    return bind(read_samples(tmp_path / "d.npz"), signature_of(optional_inputs()), None).names


@pytest.mark.parametrize("arrays, names", [
    (("arg0",), ("x",)),
    (("x",), ("x",)),
    (("x", "mask"), ("x", "mask")),
    (("mask", "x"), ("x", "mask")),
    (("x", "offset"), ("x", "offset")),
    (("arg0", "arg1"), ("x", "embed")),
], ids=["positional-one", "named-required", "named-default", "named-any-order", "keyword-only", "positional-two"])
def test_defaulted_and_keyword_only_parameters_are_inputs_only_when_given(tmp_path, arrays, names) -> None:
    assert _bind(tmp_path, **dict.fromkeys(arrays)) == names


@pytest.mark.parametrize("arrays, message", [
    (("mask",), None),  # a single array binds to the one required input
    (("x", "weights"), r"holds 2 array\(s\) \(x, weights\) but the model requires 1 input\(s\) "
                       r"\(x; optional: embed, mask, offset\)"),
    (("arg0", "arg1", "arg2", "arg3"), r"holds 4 array\(s\)"),
    (("mask", "offset"), r"missing: x"),
], ids=["single-array", "unknown-name", "too-many", "required-missing"])
def test_data_that_fits_no_parameters_is_refused(tmp_path, arrays, message) -> None:
    if message is None:
        assert _bind(tmp_path, **dict.fromkeys(arrays)) == ("x",)
        return
    with pytest.raises(CalibrationError, match=message):
        _bind(tmp_path, **dict.fromkeys(arrays))


@pytest.mark.parametrize("given", [("x",), ("x", "mask"), ("x", "offset")], ids=["flag-default", "mask", "kw-only"])
def test_model_with_defaulted_parameters_exports_what_the_data_gives(tmp_path, given) -> None:
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(24, 8)).astype(np.float32),
              "mask": (rng.random((24, 8)) > 0.5).astype(np.float32),
              "offset": rng.normal(size=(24, 4)).astype(np.float32)}
    np.savez(tmp_path / "d.npz", **{k: arrays[k] for k in given})
    result = api.export(f"{TESTS / 'models.py'}:optional_inputs", "linux-arm64", tmp_path / "d.npz",
                        out=tmp_path / "out", require_all=True)
    assert result.manifest["model"]["inputs"] == list(given)
    net = optional_inputs()
    with torch.no_grad():
        expected = net(torch.from_numpy(arrays["x"][:1]),
                       **{k: torch.from_numpy(arrays[k][:1]) for k in given if k != "x"}).numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.out_dir / "model.fp32.onnx"))
    assert [i.name for i in session.get_inputs()] == list(given)
    got = session.run(None, {k: arrays[k][:1] for k in given})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert all(faithful(a["accuracy"]) for a in result.manifest["artifacts"] if a["precision"] == "fp32")


@pytest.mark.parametrize("builder, dtype", [("bfloat16_weights", torch.bfloat16), ("float64_weights", torch.float64)])
def test_weights_in_another_float_type_are_exported_from_float32(tmp_path, caplog, builder, dtype) -> None:
    """float32 data into a bfloat16 (or float64) model fails in PyTorch itself; edgeship converts the weights
    to float32, says so, and the float artifacts compute what the converted model computes."""
    x = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    result = api.export(f"{TESTS / 'models.py'}:{builder}", "linux-arm64", tmp_path / "d.npz",
                        out=tmp_path / "out", require_all=True)
    assert f"the model's weights are {str(dtype).removeprefix('torch.')}; converted to float32" in caplog.text
    with torch.no_grad():
        expected = optional_inputs().to(dtype).float()(torch.from_numpy(x[:1])).numpy()
    import onnxruntime as ort

    got = ort.InferenceSession(str(result.out_dir / "model.fp32.onnx")).run(None, {"x": x[:1]})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, axis", [
    ((2, 1, 32), 1), ((1, 2, 32), 0), ((2, 32), 0), ((4, 2, 32), 0),
], ids=["state-batch-second", "batch-first", "without-batch", "batch-of-4-read-as-1"])
def test_input_shape_says_where_the_batch_axis_is(shape, axis) -> None:
    from edgeship.export.inputs import InputSpec, _check

    assert _check("d.npz", InputSpec("h", shape, "float32"), np.zeros((5, 2, 32), np.float32)) == axis


def test_input_shape_that_fits_the_samples_nowhere_is_refused() -> None:
    from edgeship.export.inputs import InputSpec, _check

    with pytest.raises(CalibrationError, match="samples have shape 2x32 but the model input is 3x1x32"):
        _check("d.npz", InputSpec("h", (3, 1, 32), "float32"), np.zeros((5, 2, 32), np.float32))


def _state_data(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3, 16)).astype(np.float32)
    h = (0.5 * rng.normal(size=(12, 2, 32))).astype(np.float32)  # one [layers, hidden] state per sample
    np.savez(tmp_path / "d.npz", x=x, h=h)
    return x, h


def test_a_state_with_its_batch_axis_second_needs_input_shape(tmp_path) -> None:
    _state_data(tmp_path)
    with pytest.raises(ExportError, match="takes it where --input-shape puts it: --input-shape 2x1x64"):
        api.export(f"{TESTS / 'models.py'}:streaming_gru", "android-arm64", tmp_path / "d.npz", out=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.onnx"))


def test_a_state_with_its_batch_axis_second_exports_where_input_shape_puts_it(tmp_path) -> None:
    """`--input-shape 2x1x32` for a GRU state [layers, batch, hidden]: each sample of the state reaches the
    model (and every artifact) as [2, 1, 32], and each runtime computes what PyTorch does on it."""
    import onnxruntime as ort

    x, h = _state_data(tmp_path)
    result = api.export(f"{TESTS / 'models.py'}:streaming_gru", "android-arm64", tmp_path / "d.npz",
                        out=tmp_path / "out", input_shapes=["1x3x16", "2x1x32"], require_all=True)
    artifacts = {a["path"]: a for a in result.manifest["artifacts"]}
    assert {"model.fp32.onnx", "model.int8.pte", "model.int8.tflite"} <= set(artifacts)
    for artifact in artifacts.values():
        assert [i["shape"] for i in artifact["io"]["inputs"]] == [[1, 3, 16], [2, 1, 32]], artifact["path"]
        if artifact["precision"] == "fp32":
            assert faithful(artifact["accuracy"]), (artifact["path"], artifact["accuracy"])
        else:
            assert artifact["accuracy"]["sqnr_db"] > 20, (artifact["path"], artifact["accuracy"])
    from models import streaming_gru

    with torch.no_grad():
        score, state = streaming_gru()(torch.from_numpy(x[:1]), torch.from_numpy(h[0][:, None]))
    session = ort.InferenceSession(str(result.out_dir / "model.fp32.onnx"))
    got = session.run(None, {"x": x[:1], "h": np.ascontiguousarray(h[0][:, None])})
    np.testing.assert_allclose(got[0], score.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], state.numpy(), rtol=1e-4, atol=1e-5)
