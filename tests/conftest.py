from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeship  # noqa: F401,I001  (before torch: it makes MKL's sums independent of memory alignment)
import torch  # noqa: E402,I001

# Import-time warnings of torchao (missing CUDA kernels, Enum registration) are printed once per
# process; trigger them here so that tests reading one CLI run's stderr see only that run.
import torchao.quantization.pt2e  # noqa: E402,F401

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    torch.set_num_threads(1)
# and no second lowering process (edgeship/apart.py) beside each worker; tests/test_apart.py asks for it
os.environ["EDGESHIP_LOWER_APART"] = "0"

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "calibration_data" / "imagenet-sample"
sys.path.insert(0, str(Path(__file__).parent))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """Under `--dist loadgroup` a file marked `xdist_group` must run on one worker: its module fixtures
    are built once and its tests share state outside the test's folder (the ssh device's home). xdist
    says so by a suffix on each test's id; a pytest / pytest-xdist pair that drops it splits the file
    across workers, so that is refused here rather than left to race."""
    if not getattr(config.option, "loadgroup", False):
        return
    # xdist hands out the grouped files first, then single tests in this order: the slow ones first, so
    # that no worker is left with a long test while the other has finished
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        message = (f"pytest-xdist did not group {lost[0]} (and {len(lost) - 1} more): this pytest and "
                   "pytest-xdist do not work together; install the versions pyproject.toml pins")
        print(message, file=sys.__stderr__, flush=True)  # a worker's exception reaches the user only as a crash
        raise pytest.UsageError(message)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Eight real photographs from the shipped calibration set."""
    folder = tmp_path / "images"
    folder.mkdir()
    for f in sorted(IMAGES.glob("*.jpg"))[::3][:8]:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture
def conv_npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((12, 3, 32, 32)).astype(np.float32))
    return path


def faithful(accuracy: dict) -> bool:
    """A float artifact's accuracy against PyTorch: equal outputs (SQNR null, no error: a host whose kernels
    round as PyTorch's do) or above 80 dB."""
    return accuracy["max_abs_error"] == 0 if accuracy["sqnr_db"] is None else accuracy["sqnr_db"] > 80


def runtime_profile(path: Path, target: str, runtimes: tuple[str, ...] | None = None,
                    precisions: tuple[str, ...] | None = None) -> Path:
    """The built-in profile `target` with only `runtimes` and / or only `precisions`, written to `path` (a
    .toml): tests whose point is not lowering skip the other runtimes' minutes, tests that read no fp32
    artifact skip making them."""
    from edgeship.targets.devices import BUILTIN

    wanted = {"runtimes": runtimes, "precisions": precisions}
    lines = []
    for line in (BUILTIN / f"{target}.toml").read_text().splitlines():
        key = line.split("=")[0].strip()
        if wanted.get(key) is not None:
            line = f"{key} = {list(wanted[key])!r}".replace("'", '"')
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process; returns (exit code, stdout, stderr)."""
    from edgeship import cli

    monkeypatch.setattr(sys, "argv", ["edgeship", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def export_json(model: str, calibration: Path, recipe: str, out: Path, monkeypatch, capsys) -> tuple[dict, Path]:
    """`edgeship export tests/models.py:MODEL --target host --format json` through the real CLI; returns
    the manifest and the export folder."""
    import json

    code, text, err = run_cli(["export", f"{Path(__file__).parent / 'models.py'}:{model}", "--target", "host",
                               "--calibration", str(calibration), "--recipe", recipe, "--out", str(out),
                               "--format", "json"], monkeypatch, capsys)
    assert code == 0, err
    return json.loads(text), out / f"models-{model}" / "host"
