"""Model forms the other tests do not hold, exported end to end to every runtime: T5's encoder (its
float ONNX failed: the exporter's decomposition dropped a `.contiguous()` copy before a view), GPT-2
(its Hugging Face `Conv1D` layers are addmm calls with (in, out) weights: none was quantized), and a
Conv-TasNet-like separator (PReLU after conv1d: ExecuTorch's XNNPACK lowering raised, no .pte), and a
CNN pooling with one window larger than its feature map (Hugging Face EfficientNet: ONNX Runtime's and
LiteRT's int8 outputs were all zeros), and an audio model that computes its own spectrogram with
`torch.stft` (complex tensors: ExecuTorch and LiteRT made nothing), and Mamba (its split projection: LiteRT's
converter refused the int8 model), and FNet (`torch.fft.fftn` token mixing: ExecuTorch and LiteRT made nothing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import faithful, runtime_profile
from models import token_batches

from edgeship import api

TESTS = Path(__file__).resolve().parent
MATMULS = {"addmm", "mm", "matmul", "linear"}


def _int8_only(tmp_path: Path) -> str:
    """linux-arm64 without fp32 artifacts, for the forms whose fault was in the int8 model (each fp32 file
    is another lowering per runtime)."""
    return str(runtime_profile(tmp_path / "int8-only.toml", "linux-arm64", precisions=("int8",)))


# T5's fault was its float ONNX: it keeps the fp32 artifacts; GPT-2's and Mamba's were in the int8 model
@pytest.mark.parametrize("builder, fp32", [("tiny_t5_encoder", True), ("tiny_gpt2", False), ("tiny_mamba", False)])
def test_transformer_exports_int8_to_every_runtime(builder, fp32, tmp_path) -> None:
    np.savez(tmp_path / "tokens.npz", **token_batches(32))
    result = api.export(f"{TESTS / 'models.py'}:{builder}", "linux-arm64" if fp32 else _int8_only(tmp_path),
                        tmp_path / "tokens.npz", out=tmp_path / "out", require_all=True)
    manifest = result.manifest
    assert not manifest["not_produced"]
    assert not MATMULS & set(manifest["float_ops_in_quantized_graph"])  # every layer with a weight is int8
    int8 = {a["path"]: a["accuracy"]["sqnr_db"] for a in manifest["artifacts"] if a["precision"] == "int8"}
    fp32s = {a["path"]: a["accuracy"] for a in manifest["artifacts"] if a["precision"] == "fp32"}
    assert set(int8) == {"model.int8.onnx", "model.int8.ort", "model.int8.pte", "model.int8.tflite"}
    assert len(fp32s) == (3 if fp32 else 0) and all(faithful(a) for a in fp32s.values()), fp32s
    # quantized (not the float model under another name), and close to float on every runtime
    assert all(25 < db < 60 for db in int8.values()), int8
    assert max(int8.values()) - min(int8.values()) < 1.0


def test_constant_matmuls_become_linear_layers_with_one_weight_copy() -> None:
    """addmm / mm / matmul with a constant weight become linear calls (what gets per-channel int8
    weights); a weight two calls read gets one transposed copy, and the graph computes the same."""

    from edgeship.export.passes.constant_matmuls import constant_matmuls_as_linear

    class Raw(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 6))
            self.b = torch.nn.Parameter(torch.randn(6))
            self.v = torch.nn.Parameter(torch.randn(6, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.addmm(self.b, x, self.w)  # Hugging Face Conv1D
            y = torch.relu(y) @ self.v
            return torch.mm(y, self.w) + torch.matmul(x, x.t()).sum(1, keepdim=True)  # w again; x x^T: no layer

    torch.manual_seed(0)
    x = torch.randn(4, 8)
    module = torch.export.export(Raw().eval(), (x,), strict=False).module()
    expected = module(x)
    assert constant_matmuls_as_linear(module) == 3
    ops = [n.target for n in module.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.aten.linear.default) == 3 and torch.ops.aten.matmul.default in ops
    attrs = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    assert attrs == {"w_transposed", "v_transposed", "b"}
    assert not hasattr(module, "w") and not hasattr(module, "v")
    torch.testing.assert_close(module(x), expected)


def test_separator_with_prelu_after_conv1d_exports_to_every_runtime(tmp_path) -> None:
    audio = np.sin(np.linspace(0, 600, 2000))[None] * np.random.default_rng(0).uniform(0.2, 1, (24, 1))
    np.savez(tmp_path / "audio.npz", audio=audio.astype(np.float32))
    result = api.export(f"{TESTS / 'models.py'}:masking_separator", "linux-arm64", tmp_path / "audio.npz",
                        out=tmp_path / "out", require_all=True)
    artifacts = {a["path"]: a for a in result.manifest["artifacts"]}
    assert {"model.fp32.pte", "model.int8.pte"} <= set(artifacts)
    int8 = {p: a["accuracy"]["sqnr_db"] for p, a in artifacts.items() if a["precision"] == "int8"}
    assert all(25 < db < 70 for db in int8.values()), int8
    assert max(int8.values()) - min(int8.values()) < 1.0
    # the PReLUs run in the delegate, fp32 and int8 alike
    for path in ("model.fp32.pte", "model.int8.pte"):
        assert not any("prelu" in op["op"] for op in artifacts[path]["not_quantized"]
                       if "XNNPACK" in op["reason"]), artifacts[path]["not_quantized"]


def test_pool_with_a_window_larger_than_the_input_is_int8_right_everywhere(tmp_path) -> None:
    np.savez(tmp_path / "images.npz", x=np.random.default_rng(0).normal(size=(24, 3, 16, 16)).astype(np.float32))
    result = api.export(f"{TESTS / 'models.py'}:whole_window_pool", _int8_only(tmp_path), tmp_path / "images.npz",
                        out=tmp_path / "out", require_all=True)
    int8 = {a["path"]: a["accuracy"]["sqnr_db"] for a in result.manifest["artifacts"] if a["precision"] == "int8"}
    simulated = result.manifest["simulated_int8"]["sqnr_db"]
    assert simulated > 25
    assert all(abs(db - simulated) < 1.0 for db in int8.values()), (simulated, int8)
    assert not any(a.get("off_simulation") for a in result.manifest["artifacts"])


def test_an_int8_artifact_far_from_the_simulation_is_flagged_and_reported(caplog) -> None:
    """What the pool above gave before its rewrite (ONNX Runtime and LiteRT 0 dB, 40.5 simulated): the
    artifact is flagged in the manifest and the report, with a warning; one within 3 dB is not."""
    from edgeship.flows.checks import flag_off_simulation
    from edgeship.report.markdown import _off_simulation_lines

    artifacts = [{"path": p, "runtime": r, "precision": q, "vs_simulated_steps": steps, "accuracy": {"sqnr_db": db}}
                 for p, r, q, db, steps in [("model.fp32.onnx", "onnxruntime", "fp32", 120.0, None),
                                            ("model.int8.onnx", "onnxruntime", "int8", 0.0, 188.0),
                                            ("model.int8.pte", "executorch", "int8", 38.0, 1.0)]]
    flag_off_simulation(artifacts, {"sqnr_db": 40.5})
    assert [a.get("off_simulation") for a in artifacts] == [None, True, False]
    assert "model.int8.onnx computes other values" in caplog.text and "model.int8.pte" not in caplog.text
    lines = _off_simulation_lines({"artifacts": artifacts, "simulated_int8": {"sqnr_db": 40.5}})
    assert any("model.int8.onnx: SQNR 0.0 dB against 40.5 dB simulated" in line for line in lines)
    assert not any("model.int8.pte" in line for line in lines)


class _Spectra(torch.nn.Module):
    """Every reader of a complex spectrum the DFT convolution replaces."""

    def __init__(self, normalized: bool = False, center: bool = True) -> None:
        super().__init__()
        self.normalized, self.center = normalized, center
        self.register_buffer("window", torch.hann_window(200))  # shorter than n_fft: padded on both sides

    def forward(self, x: torch.Tensor):
        spec = torch.stft(x, 256, 64, 200, window=self.window, normalized=self.normalized, center=self.center,
                          return_complex=True)
        return spec.abs(), spec.abs() ** 2, spec.angle(), torch.view_as_real(spec), spec.real, spec.imag


@pytest.mark.parametrize("shape", [(2, 3000), (3000,)])
@pytest.mark.parametrize("options", [{}, {"normalized": True}, {"center": False}])
def test_stft_becomes_a_real_convolution_with_the_same_values(shape, options) -> None:
    from edgeship.export.capture import capture

    torch.manual_seed(0)
    model, x = _Spectra(**options).eval(), torch.randn(*shape)
    program = capture(model, (x,), None)
    ops = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.stft.default not in ops and torch.ops.aten.conv1d.default in ops
    assert not any(n.meta["val"].is_complex() for n in program.graph.nodes
                   if isinstance(n.meta.get("val"), torch.Tensor))
    got, expected = program.module()(x), model(x)
    for k in (0, 1, 3, 4, 5):
        torch.testing.assert_close(got[k], expected[k], atol=2e-3 * expected[k].abs().max().item(), rtol=1e-3)
    loud = expected[0] > 1e-2 * expected[0].max()  # the phase of a bin with almost no energy is noise
    torch.testing.assert_close(torch.polar(torch.ones_like(got[2]), got[2])[loud],
                               torch.polar(torch.ones_like(expected[2]), expected[2])[loud], atol=1e-3, rtol=0)


def test_stft_whose_output_is_used_as_complex_is_left_alone() -> None:
    from edgeship.export.capture import capture

    class Filtered(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            spec = torch.stft(x, 64, 16, window=torch.hann_window(64), return_complex=True)
            return torch.view_as_real(spec * spec.conj())  # complex arithmetic: no real form here

    x = torch.randn(1, 800)
    program = capture(Filtered().eval(), (x,), None)
    assert torch.ops.aten.stft.default in {n.target for n in program.graph.nodes}
    torch.testing.assert_close(program.module()(x), Filtered()(x))


def test_audio_model_with_its_own_spectrogram_exports_to_every_runtime(tmp_path) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(1024) / 8000  # 9 frames: each is a step of the unrolled GRU to lower
    audio = np.sin(2 * np.pi * rng.uniform(100, 2000, (32, 1)) * t) * rng.uniform(0.1, 1, (32, 1))
    np.savez(tmp_path / "audio.npz", audio=(audio + rng.normal(0, 0.02, audio.shape)).astype(np.float32))
    result = api.export(f"{TESTS / 'models.py'}:log_mel_gru", "linux-arm64", tmp_path / "audio.npz",
                        out=tmp_path / "out", require_all=True)
    manifest = result.manifest
    assert not manifest["not_produced"]
    assert "stft" not in manifest["float_ops_in_quantized_graph"]
    # the mel matmul that the log reads stays float: int8 energies gave 9.8 dB on every runtime
    kept = next(a["changes"] for a in manifest["algorithms"] if a["algorithm"] == "float_before_log")
    assert [c["log"] for c in kept] == ["log"]
    fourier = next(a["changes"] for a in manifest["algorithms"] if a["algorithm"] == "float_fourier")
    assert len(fourier) == 1  # the DFT convolution
    artifacts = {a["path"]: a["accuracy"]["sqnr_db"] for a in manifest["artifacts"]}
    assert {"model.fp32.pte", "model.int8.pte", "model.fp32.tflite", "model.int8.tflite"} <= set(artifacts)
    assert all(db > 80 for p, db in artifacts.items() if ".fp32." in p), artifacts
    int8 = [db for p, db in artifacts.items() if ".int8." in p]
    assert all(20 < db < 60 for db in int8), artifacts
    assert max(int8) - min(int8) < 1.0


def test_ops_read_by_a_log_are_found_through_reshapes_and_constant_arithmetic() -> None:
    from edgeship.quantize.graphs import outputs_read_by_log

    class Logs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 8, 3)
            self.mel = torch.nn.Linear(8, 6)

        def forward(self, x: torch.Tensor):
            y = self.conv(x)
            power = y * y + y.abs()  # two activations: the add is what the log reads
            mel = torch.log(self.mel(y.transpose(1, 2)).clamp(min=1e-5) * 2.0 + 1e-3)
            return mel, torch.log1p(power), torch.log(x.abs().view(-1) + 1)  # the input: no producer op

    module = torch.export.export(Logs().eval(), (torch.randn(1, 4, 16),), strict=False).module()
    found = {c["layer"]: c["log"] for c in outputs_read_by_log(module)}
    targets = {n.name: n.target for n in module.graph.nodes}
    assert targets[next(k for k, v in found.items() if v == "log")] is torch.ops.aten.linear.default
    assert targets[next(k for k, v in found.items() if v == "log1p")] is torch.ops.aten.add.Tensor
    assert len(found) == 2


class _Transforms(torch.nn.Module):
    def __init__(self, norm: str | None) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor):
        half = torch.fft.rfft(x, dim=-1, norm=self.norm)
        both = torch.fft.fftn(x, dim=(0, 2), norm=self.norm)
        return (half.abs(), half.abs() ** 2, both.real, both.imag,
                torch.view_as_real(torch.fft.fft(x, dim=1, norm=self.norm)), torch.fft.fftn(x).real)


@pytest.mark.parametrize("norm", [None, "ortho", "forward"])
def test_fft_of_real_input_becomes_real_matmuls_with_the_same_values(norm) -> None:
    from edgeship.export.capture import capture

    torch.manual_seed(0)
    model, x = _Transforms(norm).eval(), torch.randn(3, 10, 16)
    program = capture(model, (x,), None)
    assert not {n.target for n in program.graph.nodes if n.op == "call_function"} & {
        torch.ops.aten.fft_fft.default, torch.ops.aten.fft_rfft.default, torch.ops.aten.fft_fftn.default}
    for got, expected in zip(program.module()(x), model(x)):
        torch.testing.assert_close(got, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-4)


def test_fnet_exports_to_every_runtime_with_its_fourier_mixing_in_float(tmp_path) -> None:
    np.savez(tmp_path / "tokens.npz", input_ids=token_batches(32)["input_ids"])
    result = api.export(f"{TESTS / 'models.py'}:tiny_fnet", _int8_only(tmp_path), tmp_path / "tokens.npz",
                        out=tmp_path / "out", require_all=True)
    manifest = result.manifest
    assert not manifest["not_produced"]
    fourier = next(a["changes"] for a in manifest["algorithms"] if a["algorithm"] == "float_fourier")
    assert len(fourier) == 8  # 2 layers x 2 axes x (cosine, sine)
    int8 = {a["path"]: a["accuracy"]["sqnr_db"] for a in manifest["artifacts"] if a["precision"] == "int8"}
    assert set(int8) == {"model.int8.onnx", "model.int8.ort", "model.int8.pte", "model.int8.tflite"}
    assert all(25 < db < 60 for db in int8.values()), int8
    assert max(int8.values()) - min(int8.values()) < 1.0


def test_fp32_artifact_far_from_the_model_is_flagged() -> None:
    """An fp32 file below 60 dB to the PyTorch model (ONNX Runtime's optimizations on a Hugging Face BiT:
    44 dB) gets `off_float` and a report line; int8 files and fp32 files at float precision do not."""
    from edgeship.flows.checks import flag_off_float
    from edgeship.report.markdown import _off_float_lines

    artifacts = [{"path": path, "runtime": runtime, "precision": precision, "accuracy": {"sqnr_db": db}}
                 for path, runtime, precision, db in [("model.fp32.onnx", "onnxruntime", "fp32", 44.7),
                                                      ("model.fp32.pte", "executorch", "fp32", 121.0),
                                                      ("model.int8.pte", "executorch", "int8", 21.0)]]
    flag_off_float(artifacts)
    assert [a.get("off_float") for a in artifacts] == [True, False, None]
    lines = _off_float_lines({"artifacts": artifacts})
    assert len(lines) == 4 and "model.fp32.onnx: SQNR 44.7 dB to the model" in lines[-1]
