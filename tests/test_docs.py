"""The docs that are generated stay what their generator writes: docs/benchmarks.md from
benchmarks/results/*.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_doc_is_generated_from_the_results() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "docs.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    for name in ("stock_flows", "minilm_accuracy", "recurrent_accuracy", "export_time", "recurrent_export_time"):
        assert f"## {name}" in text


def test_benchmarks_doc_check_fails_when_out_of_date(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import docs

    import json

    measured = str(json.loads((ROOT / "benchmarks" / "results" / "export_time.json").read_text())["rows"][0]
                   ["export_seconds"])
    text = docs.render()
    assert measured in text
    stale = tmp_path / "benchmarks.md"
    stale.write_text(text.replace(measured, "0.5"))  # a result that changed since the doc was written
    monkeypatch.setattr(docs, "DOC", stale)
    monkeypatch.setattr(sys, "argv", ["docs.py", "--check"])
    try:
        docs.main()
    except SystemExit as exc:
        assert "out of date" in str(exc.code)
    else:
        raise AssertionError("--check passed on a stale file")
