"""`edgeship build` end to end: a two-model x two-target project, the cache, budgets and exit
codes, JUnit, concurrent builds on one cache, and the HTML report in headless Chromium. The project's
targets are the built-in host and linux-arm64 profiles making int8 only (its own profile files of the same
names): the build's matrix, cache and reports are the point here, not a second lowering per runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, runtime_profile

# one xdist worker runs this file's tests: its module fixtures are built once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_build")]

EDGESHIP = str(Path(sys.executable).parent / "edgeship")

ZOO = '''
from pathlib import Path
import torch
from torch import nn

HERE = Path(__file__).parent


def conv():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    net.load_state_dict(torch.load(HERE / "conv.pt"))
    return net.eval()


def mlp():
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    net.load_state_dict(torch.load(HERE / "mlp.pt"))
    return net.eval()
'''

PROJECT = '''[project]
targets = ["host.toml", "linux-arm64.toml"]
jobs = 2

[models.conv]
source = "zoo.py:conv"
calibration = "conv.npz"
inputs = ["conv.pt"]

[models.mlp]
source = "zoo.py:mlp"
calibration = "mlp.npz"
inputs = ["mlp.pt"]

[budgets]
min_cosine = 0.9
max_size_mb = 5
'''


def _weights(path: Path, make, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(make().state_dict(), path)


def _conv():
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def _mlp():
    from torch import nn
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def make_project(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zoo.py").write_text(ZOO)
    (folder / "edgeship.toml").write_text(PROJECT)
    for target in ("host", "linux-arm64"):
        runtime_profile(folder / f"{target}.toml", target, precisions=("int8",))
    _weights(folder / "conv.pt", _conv, 0)
    _weights(folder / "mlp.pt", _mlp, 1)
    rng = np.random.default_rng(0)
    np.savez(folder / "conv.npz", x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    np.savez(folder / "mlp.npz", x=rng.standard_normal((8, 16)).astype(np.float32))
    return folder


def build(folder: Path, *args: str) -> tuple[int, dict, str]:
    """(exit code, index, stderr) of `edgeship build --format json` in `folder`."""
    proc = subprocess.run([EDGESHIP, "build", "--format", "json", *args], cwd=folder, capture_output=True,
                          text=True, timeout=900)
    assert proc.stdout, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def statuses(index: dict) -> dict:
    return {f"{j['model']}/{j['target']}": j["status"] for j in index["jobs"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("app"))


@pytest.fixture(scope="module")
def first_build(project):
    return build(project)


def test_first_build_exports_the_matrix(project, first_build) -> None:
    code, index, _ = first_build
    assert code == 0, index
    assert statuses(index) == {"conv/host.toml": "built", "conv/linux-arm64.toml": "built",
                               "mlp/host.toml": "built", "mlp/linux-arm64.toml": "built"}
    for name in ("report.md", "report.html", "junit.xml", "index.json"):
        assert (project / "build" / name).is_file()
    for job in index["jobs"]:
        assert (Path(job["out_dir"]) / "model.int8.tflite").is_file()
    suite = ET.parse(project / "build/junit.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert int(suite.get("tests")) == 4 + 4 * 4 * 2  # 4 exports; 4 int8 artifacts x 2 budgets per job


def test_rebuild_with_nothing_changed_is_all_cache_hits(project, first_build) -> None:
    entries = {p: p.stat().st_mtime_ns for p in (project / ".edgeship-cache").rglob("*")}
    code, index, log = build(project)
    assert code == 0 and set(statuses(index).values()) == {"cached"}
    assert "exporting" not in log  # no job ran: every artifact came from the cache, which is unchanged
    assert {p: p.stat().st_mtime_ns for p in (project / ".edgeship-cache").rglob("*")} == entries


def test_artifacts_are_byte_identical_across_rebuilds(project, first_build) -> None:
    before = {j["model"] + j["target"]: {a["path"]: a["sha256"] for a in j["manifest"]["artifacts"]}
              for j in first_build[1]["jobs"]}
    code, index, _ = build(project, "--force", "--only", "mlp/host.toml")
    assert code == 0 and statuses(index)["mlp/host.toml"] == "built"
    after = {a["path"]: a["sha256"] for a in next(j for j in index["jobs"] if j["target"] == "host.toml"
                                                   and j["model"] == "mlp")["manifest"]["artifacts"]}
    assert after == before["mlphost.toml"]  # every artifact, the .ort written without address randomization too


def test_changed_weights_rebuild_only_that_model(project, first_build) -> None:
    _weights(project / "conv.pt", _conv, 7)
    code, index, _ = build(project)
    assert code == 0
    assert statuses(index) == {"conv/host.toml": "built", "conv/linux-arm64.toml": "built",
                               "mlp/host.toml": "cached", "mlp/linux-arm64.toml": "cached"}


def test_failed_budget_exits_1_with_junit_failure(project, first_build) -> None:
    text = (project / "edgeship.toml").read_text()
    (project / "edgeship.toml").write_text(text + "\n[budgets.host.litert]\nmax_size_mb = 0.001\n")
    try:
        code, index, _ = build(project)
    finally:
        (project / "edgeship.toml").write_text(text)
    assert code == 1
    failed = [b for j in index["jobs"] for b in j["budgets"] if not b["passed"]]
    assert {(b["artifact"], b["budget"]) for b in failed} == {("model.int8.tflite", "max_size_mb")}
    assert len(failed) == 2  # conv/host.toml and mlp/host.toml
    suite = ET.parse(project / "build/junit.xml").getroot()
    assert suite.get("failures") == "2"
    messages = [f.get("message") for f in suite.iter("failure")]
    assert all("max_size_mb 0.001" in m and "over by" in m for m in messages), messages
    assert "BUDGET FAILED" in (project / "build/report.md").read_text()


def test_failed_job_exits_1_and_others_finish(tmp_path) -> None:
    folder = make_project(tmp_path / "app")
    (folder / "mlp.npz").unlink()
    np.savez(folder / "mlp.npz", x=np.zeros((8, 5), np.float32))  # wrong feature size for the model
    code, index, _ = build(folder, "--only", "mlp/host.toml", "--only", "conv/host.toml")
    assert code == 1
    assert statuses(index) == {"conv/host.toml": "built", "mlp/host.toml": "failed"}
    job = next(j for j in index["jobs"] if j["model"] == "mlp")
    assert "failed on its example inputs" in job["error"]


def test_concurrent_builds_share_one_cache(tmp_path) -> None:
    folder = make_project(tmp_path / "app")
    (folder / "edgeship.toml").write_text(PROJECT.replace('"host.toml", "linux-arm64.toml"', '"host.toml"')
                                          .replace("jobs = 2", "jobs = 1"))
    runtime_profile(folder / "host.toml", "host", ("onnxruntime",), ("int8",))  # the cache is the point
    twin = tmp_path / "twin"
    shutil.copytree(folder, twin)
    cache = tmp_path / "shared-cache"
    for f in (folder, twin):
        toml = (f / "edgeship.toml").read_text().replace("[project]", f'[project]\ncache = "{cache}"')
        (f / "edgeship.toml").write_text(toml)
    procs = [subprocess.Popen([EDGESHIP, "build", "--format", "json"], cwd=f, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for f in (folder, twin)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    keys = {j["key"] for o in outs for j in json.loads(o[0])["jobs"]}
    entries = [p for p in cache.glob("*/*") if p.is_dir()]
    assert sorted(p.name for p in entries) == sorted(keys)  # one whole entry per key, nothing temporary
    for entry in entries:
        assert json.loads((entry / "manifest.json").read_text())["artifacts"]
    code, index, _ = build(folder)
    assert code == 0 and set(statuses(index).values()) == {"cached"}


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_html_report_renders_in_headless_chromium(project, first_build, tmp_path) -> None:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    code, _, _ = build(project)  # all cached: regenerates the reports of a passing build
    assert code == 0
    page = (project / "build/report.html").as_uri()
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert "edgeship build: 4 of 4 jobs ok" in html
    assert html.count("<svg") == 4  # size, cosine, SQNR, latency plots
    artifacts = sum(len(j["manifest"]["artifacts"]) for j in first_build[1]["jobs"])
    assert artifacts >= 4 * 4 and html.count('class="bar"') >= artifacts  # one bar per artifact in the size plot alone
    for job in ("conv/host.toml", "conv/linux-arm64.toml", "mlp/host.toml", "mlp/linux-arm64.toml"):
        assert f"<td>{job}</td>" in html
    shot = tmp_path / "report.png"
    run = subprocess.run([_chromium(), *flags, "--window-size=1100,1400", f"--screenshot={shot}", page],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.stat().st_size > 10_000, run.stderr[-2000:]
    if os.environ.get("EDGESHIP_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs/report.png")


def test_fail_fast_starts_nothing_after_a_failure(tmp_path) -> None:
    folder = make_project(tmp_path / "app")
    np.savez(folder / "conv.npz", x=np.zeros((8, 5), np.float32))  # conv (first in the matrix) fails
    code, index, _ = build(folder, "--only", "conv/host.toml", "--only", "mlp/host.toml", "--fail-fast", "-j", "1")
    assert code == 1
    assert statuses(index) == {"conv/host.toml": "failed", "mlp/host.toml": "skipped"}
    suite = ET.parse(folder / "build/junit.xml").getroot()
    assert suite.get("errors") == "2"
