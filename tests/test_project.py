"""edgeship.toml validation: errors name the file, line and key; init writes a valid starter."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from edgeship.errors import ConfigError
from edgeship.pipeline.project import STARTER, load_project

GOOD = """[project]
targets = ["host"]

[models.a]
source = "m.py:build"
calibration = "c.npz"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edgeship.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, where, message", [
    (GOOD + "sourc = 'x'\n", 7, "[models.a] unknown key 'sourc'; valid keys:"),
    (GOOD.replace('targets = ["host"]', 'targets = ["pixel-99"]'), 2, "unknown target 'pixel-99'; known targets:"),
    (GOOD + "\n[budgets]\nmin_cosine = 'high'\n", 9, "budget min_cosine must be a number"),
    (GOOD + "\n[budgets.host.tflite]\nmax_latency_ms = 3\n", 8, "'tflite' is not a runtime"),
    (GOOD.replace('calibration = "c.npz"\n', ""), 4, "[models.a] needs calibration"),
    ("[project]\ntargets = ['host']\njobz = 2\n", 3, "unknown key 'jobz'"),
    (GOOD + "\n[budgets]\nmax_ppl_increase = 5\n", 9, "max_ppl_increase is a fraction of the float perplexity (0.05 for 5%)"),
    (GOOD + "eval_data = { wiki = 3 }\n", 7, "eval_data must be a file name, or for a language model a table"),
    (GOOD + "max_seq_len = 8\n", 7, "max_seq_len is a language model's KV cache length, a whole number of "
     "positions of 16 or more; got 8"),
    (GOOD + "max_seq_len = '1024'\n", 7, "got '1024'"),
    (GOOD + "int4_offsets = 'free'\n", 7, "int4_offsets must be one of checkpoint, whole; got 'free'"),
], ids=["unknown-key", "unknown-target", "budget-type", "budget-runtime", "missing-key", "project-key",
        "ppl-percent", "eval-data-table", "seq-len-short", "seq-len-text", "int4-offsets"])
def test_errors_point_at_line_and_key(tmp_path, text, where, message) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert f"{path}:{where}:" in str(err.value) and message in str(err.value), str(err.value)


def test_budgets_most_specific_wins(tmp_path) -> None:
    path = _write(tmp_path, GOOD + """
[budgets]
min_cosine = 0.9
max_size_mb = 10

[budgets.host]
min_cosine = 0.95

[budgets.host.litert]
max_size_mb = 2

[models.a.budgets]
min_sqnr_db = 20
""")
    model = load_project(path).models[0]
    assert model.budgets.for_artifact("host", "litert").active() == {
        "min_cosine": 0.95, "max_size_mb": 2.0, "min_sqnr_db": 20.0}
    assert model.budgets.for_artifact("host", "executorch").active()["max_size_mb"] == 10.0


def test_init_writes_a_starter_that_loads(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "edgeship.toml"
    code, out, _ = run_cli(["init", str(path)], monkeypatch, capsys)
    assert code == 0 and path.read_text() == STARTER
    project = load_project(path)
    assert [m.name for m in project.models] == ["starter"]
    code, _, err = run_cli(["init", str(path)], monkeypatch, capsys)
    assert code == 1 and "already exist" in err


def test_config_error_exits_2_from_build(tmp_path, monkeypatch, capsys) -> None:
    path = _write(tmp_path, GOOD + "colour = 1\n")
    code, _, err = run_cli(["build", "--project", str(path)], monkeypatch, capsys)
    assert code == 2 and "unknown key 'colour'" in err and len(err.strip().splitlines()) == 1


def test_init_then_build_in_an_empty_folder(tmp_path, monkeypatch, capsys) -> None:
    """`edgeship init && edgeship build` as the help writes it, in a new folder far from this repository:
    the starter's model and photos are written beside the project file and the build passes its budgets."""
    folder = tmp_path / "new-app"
    folder.mkdir()
    monkeypatch.chdir(folder)
    code, out, err = run_cli(["init"], monkeypatch, capsys)
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["calibration", "edgeship.toml", "model.py"]
    code, out, err = run_cli(["build"], monkeypatch, capsys)
    assert code == 0, out + err
    assert (folder / "build" / "starter" / "android-arm64" / "model.int8.tflite").is_file()
    code, _, err = run_cli(["init"], monkeypatch, capsys)
    assert code == 1 and "already exist" in err and "--force" in err


def test_app_pipeline_example_project_is_valid() -> None:
    from edgeship.pipeline.cache import job_key

    project = load_project(ROOT / "examples/app-pipeline/edgeship.toml")
    assert [(m.name, t) for m, t in project.matrix()] == [
        ("classifier", "android-arm64"), ("classifier", "ios-arm64"),
        ("embedder", "android-arm64"), ("embedder", "ios-arm64")]
    keys = {job_key(m, t, project.root) for m, t in project.matrix()}
    assert len(keys) == 4  # every job has its own cache key, computed from files that exist
