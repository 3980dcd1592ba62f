"""Lowering in a second process (edgeship/apart.py): the same files as lowering in one, results and errors
back in order, a dead or busy worker never hangs the export."""

from __future__ import annotations

import hashlib
import operator
import os
import time
from pathlib import Path

import pytest
from conftest import runtime_profile

from edgeship import api, apart
from edgeship.errors import ExportError


def _files(out_dir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.iterdir())
            if p.name.startswith("model.")}


def test_lowering_in_a_second_process_writes_the_same_artifacts(tmp_path, conv_npz) -> None:
    model = f"{Path(__file__).parent / 'models.py'}:tiny_conv_net"
    target = str(runtime_profile(tmp_path / "android-arm64.toml", "android-arm64", precisions=("int8",)))
    one = api.export(model, target, conv_npz, out=tmp_path / "one", lower_apart=False)
    two = api.export(model, target, conv_npz, out=tmp_path / "two", lower_apart=True)
    assert _files(one.out_dir) == _files(two.out_dir)
    assert {p.suffix for p in two.out_dir.glob("model.*")} >= {".pte", ".onnx", ".ort", ".tflite"}
    assert [p.name for p in two.out_dir.iterdir() if p.name.startswith(".")] == []  # no work folder left
    fields = ("runtime", "precision", "path", "sha256", "not_quantized")
    assert [{k: a.get(k) for k in fields} for a in one.manifest["artifacts"]] == \
        [{k: a.get(k) for k in fields} for a in two.manifest["artifacts"]]
    assert one.manifest["not_produced"] == two.manifest["not_produced"]


def test_results_and_errors_come_back_in_order() -> None:
    worker = apart.Worker()
    try:
        worker.send([(operator.add, (1, 2)), (operator.truediv, (1, 0)), (operator.mul, (3, 4))])
        assert worker.result() == 3
        with pytest.raises(ZeroDivisionError):
            worker.result()
        assert worker.result() == 12  # a failed unit does not stop the next
    finally:
        worker.close()


def test_a_worker_that_dies_is_an_export_error_not_a_hang() -> None:
    worker = apart.Worker()
    try:
        worker.send([(os._exit, (3,))])
        with pytest.raises(ExportError, match="exit code 3.*EDGESHIP_LOWER_APART=0"):
            worker.result()
    finally:
        worker.close()


def test_closing_a_busy_worker_stops_it() -> None:
    worker = apart.Worker()
    worker.send([(time.sleep, (600,))])
    worker.close()
    assert worker._process.poll() is not None


@pytest.mark.parametrize(("setting", "env", "expected"), [
    (True, "0", True), (False, "", False), (None, "0", False), (None, "off", False),
], ids=["asked", "refused", "env-0", "env-off"])
def test_when_to_lower_apart(monkeypatch, setting, env, expected) -> None:
    monkeypatch.setenv("EDGESHIP_LOWER_APART", env)
    assert apart.wanted(setting) is expected


def test_on_by_default_with_two_cores(monkeypatch) -> None:
    monkeypatch.delenv("EDGESHIP_LOWER_APART", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert apart.wanted(None) is True
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert apart.wanted(None) is False
