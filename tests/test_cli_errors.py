"""Bad input: one line on stderr naming the problem and the fix, exit code 1 (2 for usage), no
traceback, and no output folder left behind."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import faithful, run_cli

MODELS = str(Path(__file__).parent / "models.py")


STAGE_LINE = re.compile(r"^.+ \(\d+\) \.\.\. \d+\.\d s$")  # progress of the stages that ran before the failure


def _assert_clean_failure(code, err, out_root: Path, expected: str, exit_code: int = 1) -> None:
    assert code == exit_code, err
    lines = [line for line in err.splitlines() if line.strip() and not STAGE_LINE.match(line)]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert not out_root.exists() or not any(out_root.rglob("*")), list(out_root.rglob("*"))


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32))
    return path


def _export(monkeypatch, capsys, model, calibration, out, *extra):
    return run_cli(["export", model, "--target", "host", "--calibration", str(calibration),
                    "--out", str(out), *extra], monkeypatch, capsys)


CASES = [
    ("missing file", "nope/missing.py:build", None, "does not exist"),
    ("missing callable", f"{MODELS}:no_such_builder", None, "has no callable 'no_such_builder'"),
    ("not a module", f"{MODELS}:not_a_module", None, "not a torch.nn.Module"),
    ("export fails", f"{MODELS}:data_dependent", None, "torch.export cannot capture the model"),
    ("unknown target", f"{MODELS}:tiny_conv_net", "--target=pixel-99", "unknown target 'pixel-99'; known targets:"),
    ("returns a string", f"{MODELS}:returns_string", None, "the model's forward returns str, which holds no tensor"),
    ("returns None", f"{MODELS}:returns_none", None, "the model's forward returns NoneType, which holds no tensor"),
    ("returns numbers", f"{MODELS}:returns_numbers", None, "returns dict of bool, float, which holds no tensor"),
]


@pytest.mark.parametrize("name, model, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_model_and_target_errors(tmp_path, npz, monkeypatch, capsys, name, model, extra, expected) -> None:
    out = tmp_path / "out"
    args = ["export", model, "--target", "host", "--calibration", str(npz), "--out", str(out)]
    if extra:
        args[3] = extra.split("=")[1]
    code, _, err = run_cli(args, monkeypatch, capsys)
    _assert_clean_failure(code, err, out, expected)


def test_export_failure_names_the_user_line(tmp_path, npz, monkeypatch, capsys) -> None:
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:data_dependent", npz, tmp_path / "out")
    assert code == 1 and "models.py:" in err and "if x.sum() > 0" in err, err


def test_export_failure_names_the_library_line_that_raised(tmp_path, npz, monkeypatch, capsys) -> None:
    """The data-dependent branch sits in an installed library (a Hugging Face model's padding code): the
    error names the user's call and the library line that raised."""
    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "gatelib_for_test.py").write_text(
        "import torch\n\n\nclass Gate(torch.nn.Module):\n    def forward(self, x):\n"
        "        if x.sum() > 0:\n            return x * 2\n        return x\n")
    monkeypatch.syspath_prepend(str(lib))
    (tmp_path / "net.py").write_text(
        "import torch\nfrom gatelib_for_test import Gate\n\n\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.gate = Gate()\n\n"
        "    def forward(self, x):\n        return self.gate(x)\n\n\ndef build():\n    return Net()\n")
    code, _, err = _export(monkeypatch, capsys, f"{tmp_path / 'net.py'}:build", npz, tmp_path / "out")
    assert code == 1 and "net.py:11: return self.gate(x)" in err, err
    assert "the call that raised: gatelib_for_test.py:6: if x.sum() > 0:" in err, err

def test_empty_calibration_folder(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", tmp_path / "empty", tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "holds no images")


def test_unreadable_images(tmp_path, monkeypatch, capsys) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", folder, tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "a.jpg: not a readable image")


@pytest.mark.parametrize("arrays, expected", [
    ({"left": np.zeros((4, 8), np.float32)}, "holds 1 array(s)"),
    ({"left": np.zeros((4, 8), np.float32), "right": np.zeros((4, 5), np.float32)}, "failed on its example inputs"),
    ({"left": np.zeros((4, 8), np.int64), "right": np.zeros((4, 6), np.int64)}, "failed on its example inputs"),
], ids=["count", "shape", "dtype"])
def test_npz_does_not_match_model(tmp_path, monkeypatch, capsys, arrays, expected) -> None:
    np.savez(tmp_path / "d.npz", **arrays)
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:two_inputs", tmp_path / "d.npz", tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", expected)


def test_npz_does_not_match_input_shape_flag(tmp_path, monkeypatch, capsys) -> None:
    np.savez(tmp_path / "d.npz", left=np.zeros((4, 8), np.float32), right=np.zeros((4, 5), np.float32))
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:two_inputs", tmp_path / "d.npz", tmp_path / "out",
                           "--input-shape", "1x8", "--input-shape", "1x6")
    _assert_clean_failure(code, err, tmp_path / "out", "'right' samples have shape 5 but the model input is 1x6")


def test_nan_calibration(tmp_path, monkeypatch, capsys) -> None:
    data = np.zeros((4, 3, 32, 32), np.float32)
    data[1, 0, 0, 0] = np.inf
    np.savez(tmp_path / "d.npz", x=data)
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", tmp_path / "d.npz", tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "NaN or infinite values")


@pytest.fixture
def locked(tmp_path: Path):
    """A folder nobody can write into: immutable for root, mode 0500 for anyone else."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here, and root can write to any folder")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)


def test_output_not_writable(locked, npz, monkeypatch, capsys) -> None:
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, locked / "out")
    _assert_clean_failure(code, err, locked / "out", "is not writable")


def test_output_under_a_file(tmp_path, npz, monkeypatch, capsys) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, tmp_path / "file" / "out")
    assert code == 1 and "which is a file" in err and (tmp_path / "file").read_text() == "x"


def test_usage_error_exit_code_2(monkeypatch, capsys) -> None:
    code, _, err = run_cli(["export", "x.py:build", "--no-such-flag"], monkeypatch, capsys)
    assert code == 2 and "No such option" in err


def _fail(message: str):
    from edgeship.errors import ExportError

    def fail(*a, **k):
        raise ExportError(f"{message}: injected; run with --debug")
    return fail


def test_failure_late_in_export_leaves_no_folder(tmp_path, npz, monkeypatch, capsys) -> None:
    """A failure after artifacts were written (here: every runtime's lowering; ONNX Runtime's after its
    fp32 .onnx was written) leaves nothing behind."""
    from edgeship.backends.executorch import lower as executorch
    from edgeship.backends.litert import lower as litert
    from edgeship.backends.onnxruntime import lower as onnxruntime

    write_float_onnx = onnxruntime._float_onnx

    def written_then_failed(job):
        write_float_onnx(job)
        _fail("ONNX Runtime cannot load the float model")()

    monkeypatch.setattr(litert, "_convert", _fail("litert-torch cannot convert the int8 model"))
    monkeypatch.setattr(executorch, "_lower", _fail("ExecuTorch cannot lower the model"))
    monkeypatch.setattr(onnxruntime, "_float_onnx", written_then_failed)
    monkeypatch.setattr(onnxruntime, "_save_ort_format", _fail("ONNX Runtime cannot convert"))
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "no runtime could take the model")
    assert "litert fp32: litert-torch cannot convert" in err and "executorch int8: ExecuTorch cannot lower" in err
    assert "onnxruntime fp32: ONNX Runtime cannot load the float model" in err


def test_one_runtime_failing_leaves_the_others(tmp_path, npz, monkeypatch, capsys) -> None:
    """A converter that cannot take the int8 model costs that artifact only: the other runtimes' artifacts
    and the same runtime's fp32 file are made and verified, the failed file is removed, and the manifest
    and stderr say why."""
    import json

    from edgeship.backends.litert import lower as litert

    monkeypatch.setattr(litert, "_convert_int8", _fail("litert-torch cannot convert the int8 model"))
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out/models-tiny_conv_net/host"
    manifest = json.loads((out / "manifest.json").read_text())
    made = {(a["runtime"], a["precision"]) for a in manifest["artifacts"]}
    assert {("onnxruntime", "int8"), ("executorch", "int8"), ("litert", "fp32")} <= made
    assert ("litert", "int8") not in made
    assert [p.name for p in out.glob("*.tflite")] == ["model.fp32.tflite"]
    fp32 = next(a for a in manifest["artifacts"] if a["path"] == "model.fp32.tflite")
    assert faithful(fp32["accuracy"])  # verified in its runtime like the others
    missing = {(n["runtime"], n["precision"]) for n in manifest["not_produced"]}
    assert missing == {("litert", "int8")}
    assert "not produced: litert int8: litert-torch cannot convert the int8 model: injected" in err


def test_artifact_its_runtime_cannot_run_is_not_shipped(tmp_path, npz, monkeypatch, capsys) -> None:
    """A file its runtime fails to run (ExecuTorch's execute raised on RWKV's .pte) is removed and named in
    `not_produced`; the other artifacts are verified and written, and the export succeeds."""
    import json

    from edgeship.backends.executorch import session as executorch

    def execute_fails(self, inputs):
        raise RuntimeError("method->execute() failed with error 0x12")

    monkeypatch.setattr(executorch.ExecuTorchSession, "run", execute_fails)
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out/models-tiny_conv_net/host"
    manifest = json.loads((out / "manifest.json").read_text())
    assert not list(out.glob("*.pte"))
    assert {a["runtime"] for a in manifest["artifacts"]} == {"onnxruntime", "litert"}
    reasons = {(n["runtime"], n["precision"]): n["reason"] for n in manifest["not_produced"]}
    assert set(reasons) == {("executorch", "fp32"), ("executorch", "int8")}
    assert all("executorch cannot run it on the eval samples: RuntimeError: method->execute() failed" in r
               for r in reasons.values())
    assert "not produced: executorch int8: executorch cannot run it on the eval samples" in err

def test_require_all_fails_when_one_runtime_cannot(tmp_path, npz, monkeypatch, capsys) -> None:
    """--require-all: the same failing converter fails the export, and nothing is written."""
    from edgeship.backends.litert import lower as litert

    monkeypatch.setattr(litert, "_convert_int8", _fail("litert-torch cannot convert the int8 model"))
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, tmp_path / "out", "--require-all")
    _assert_clean_failure(code, err, tmp_path / "out", "not every artifact could be made (--require-all)")
    assert "litert int8: litert-torch cannot convert the int8 model: injected" in err
    assert "Drop --require-all" in err


def test_interrupt_leaves_no_folder(tmp_path, npz, monkeypatch, capsys) -> None:
    """Ctrl-C in the middle of an export (here: while lowering) removes what was written."""
    from edgeship.backends.executorch import lower as executorch

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(executorch, "_lower", interrupt)
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:tiny_conv_net", npz, tmp_path / "out")
    assert code == 130 and "interrupted; no output was written" in err
    assert not (tmp_path / "out").exists()


def test_builder_that_raises(tmp_path, npz, monkeypatch, capsys) -> None:
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:broken_builder", npz, tmp_path / "out")
    _assert_clean_failure(code, err, tmp_path / "out", "broken_builder() raised AssertionError")
    assert "models.py:" in err and "padding_idx=12" in err


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MB tmpfs (needs the right to mount, as root in CI has)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_full_disk_is_refused_before_any_work(small_disk, npz, monkeypatch, capsys) -> None:
    """A model whose export needs more than the disk has: one line with both sizes, nothing written."""
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:three_megabytes_of_weights", npz, small_disk / "out")
    _assert_clean_failure(code, err, small_disk / "out", "free but this export needs about")


def test_disk_that_fills_during_the_export(small_disk, npz, monkeypatch, capsys) -> None:
    """The disk fills while artifacts are written (the estimate said it would fit): one line naming the
    folder, exit 1, and the staging folder removed; the disk is as empty as before."""
    from edgeship import outputs

    monkeypatch.setattr(outputs, "SPACE_PER_WEIGHT_BYTE", 0)  # past the up-front estimate
    (small_disk / "ballast").write_bytes(b"\0" * 5_000_000)  # 3 MB left for a model of 1 MB weights
    code, _, err = _export(monkeypatch, capsys, f"{MODELS}:megabytes_of_weights", npz, small_disk / "out")
    _assert_clean_failure(code, err, small_disk / "out", f"no space left on device while writing to {small_disk / 'out'}")
    assert sorted(p.name for p in small_disk.iterdir()) == ["ballast"]
