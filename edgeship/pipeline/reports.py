"""Build reports: report.md (pull-request comment), report.html (self-contained, with plots),
junit.xml (one test case per job and per budget), index.json (every manifest)."""

from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path

from edgeship.report.language import ARTIFACT_COLUMNS as LANGUAGE_COLUMNS
from edgeship.report.language import artifact_rows as language_rows
from edgeship.report.markdown import rows as artifact_rows

COLUMNS = ("artifact", "runtime", "precision", "size", "SQNR dB", "cosine", "top-1", "steps vs sim", "median ms",
           "p90 ms", "not int8")


def _table(manifest: dict) -> tuple[tuple[str, ...], list[list[str]]]:
    """The artifacts' columns and rows: a language model's (perplexity, generation) or any other's."""
    if manifest.get("kind") == "language_model":
        return LANGUAGE_COLUMNS, language_rows(manifest)
    return COLUMNS, artifact_rows(manifest)


def write_reports(result) -> None:
    out = Path(result.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.md", markdown(result)), ("report.html", page(result)),
                       ("junit.xml", junit(result)), ("index.json", index(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


def _status(job) -> str:
    if job.status in ("failed", "skipped"):
        return job.status.upper()
    return "ok" if job.ok else "BUDGET FAILED"


def summary_rows(result) -> list[list[str]]:
    return [[job.name, job.status, _status(job), f"{job.seconds:.1f}",
             "; ".join(b.describe() for b in job.budgets if not b.passed) or (job.error or "")]
            for job in result.jobs]


def markdown(result) -> str:
    ok = sum(j.ok for j in result.jobs)
    lines = [f"# edgeship build: {ok} of {len(result.jobs)} jobs ok", "",
             "| job | run | result | seconds | what failed |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(result)]
    for job in result.jobs:
        if job.manifest is None:
            continue
        columns, rows = _table(job.manifest)
        lines += ["", f"## {job.name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if job.budgets:
            lines += [""] + [f"- {'pass' if b.passed else 'FAIL'}: {b.describe()}" for b in job.budgets]
    return "\n".join(lines) + "\n"


def index(result) -> str:
    return json.dumps({"project": str(result.project), "exit_code": result.exit_code, "jobs": [
        {"model": j.model, "target": j.target, "status": j.status, "ok": j.ok, "key": j.key,
         "seconds": j.seconds, "out_dir": str(j.out_dir) if j.out_dir else None, "error": j.error,
         "budgets": [b.__dict__ for b in j.budgets], "manifest": j.manifest} for j in result.jobs]}, indent=1) + "\n"


def junit(result) -> str:
    suite = ET.Element("testsuite", name="edgeship build", tests="0", failures="0", errors="0")
    tests = failures = errors = 0
    for job in result.jobs:
        case = ET.SubElement(suite, "testcase", classname=f"edgeship.{job.model}", name=f"{job.target} export",
                             time=f"{job.seconds:.3f}")
        tests += 1
        if job.status in ("failed", "skipped"):
            errors += 1
            ET.SubElement(case, "error", message=job.error or job.status).text = job.error or job.status
        for b in job.budgets:
            check = ET.SubElement(suite, "testcase", classname=f"edgeship.{job.model}.{job.target}",
                                  name=f"{b.artifact} {b.budget}", time="0")
            tests += 1
            if not b.passed:
                failures += 1
                ET.SubElement(check, "failure", message=b.describe()).text = b.describe()
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


# ---- HTML with inline SVG plots (no scripts, no external files) ----

def _bars(title: str, unit: str, items: list[tuple[str, float, float | None]], lower_is_better: bool) -> str:
    """Horizontal bars; items: (label, value, whisker end or None)."""
    if not items:
        return ""
    width, label_w, row_h = 720, 300, 22
    top = max(max(v, w or 0) for _, v, w in items) or 1.0
    scale = (width - label_w - 80) / top
    rows = []
    for i, (label, value, whisker) in enumerate(items):
        y = 28 + i * row_h
        bar = max(1.0, value * scale)
        rows.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="lbl">{html.escape(label)}</text>'
                    f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{bar:.1f}" height="{row_h - 8}">'
                    f'<title>{html.escape(label)}: {value:.4g} {unit}</title></rect>'
                    f'<text x="{label_w + bar + 4 + (max(0, (whisker or 0) - value) * scale)}" y="{y + 14}" '
                    f'class="val">{value:.4g}</text>')
        if whisker is not None and whisker > value:
            x1, x2 = label_w + value * scale, label_w + whisker * scale
            rows.append(f'<line class="whisker" x1="{x1:.1f}" x2="{x2:.1f}" y1="{y + row_h / 2}" y2="{y + row_h / 2}"/>'
                        f'<line class="whisker" x1="{x2:.1f}" x2="{x2:.1f}" y1="{y + 6}" y2="{y + row_h - 6}"/>')
    height = 36 + len(items) * row_h
    hint = "lower is better" if lower_is_better else "higher is better"
    return (f'<figure><svg class="plot" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">'
            f'<text x="0" y="16" class="ttl">{html.escape(title)} ({unit}; {hint})</text>{"".join(rows)}</svg></figure>')


def page(result) -> str:
    jobs = [j for j in result.jobs if j.manifest is not None]
    sizes, cosines, sqnrs, latency = [], [], [], []
    for job in jobs:
        for a in job.manifest["artifacts"]:
            label = f"{job.name} {a['path']}"
            if job.manifest.get("kind") == "language_model":
                sizes.append((label, a["size_bytes"] / 1e6, None))
                continue
            sizes.append((label, a["bytes"] / 1e6, None))
            latency.append((label, a["latency_ms"]["median"], a["latency_ms"]["p90"]))
            if a["precision"] != "fp32":
                cosines.append((label, a["accuracy"]["cosine"], None))
                if a["accuracy"]["sqnr_db"] is not None:
                    sqnrs.append((label, a["accuracy"]["sqnr_db"], None))
    summary = "".join(
        f'<tr class="{"ok" if j.ok else "bad"}"><td>{html.escape(r[0])}</td><td>{r[1]}</td><td>{r[2]}</td>'
        f"<td>{r[3]}</td><td>{html.escape(r[4])}</td></tr>" for j, r in zip(result.jobs, summary_rows(result)))
    details = []
    for job in jobs:
        columns, rows = _table(job.manifest)
        head = "".join(f"<th>{c}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        checks = "".join(f'<li class="{"ok" if b.passed else "bad"}">{"pass" if b.passed else "FAIL"}: '
                         f"{html.escape(b.describe())}</li>" for b in job.budgets)
        details.append(f'<section><h2>{html.escape(job.name)}</h2><table><tr>{head}</tr>{body}</table>'
                       f"<ul>{checks}</ul></section>")
    ok = sum(j.ok for j in result.jobs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgeship build report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1a1a1a; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
tr.ok td:nth-child(3), li.ok {{ color: #106010; }} tr.bad td:nth-child(3), li.bad {{ color: #b00020; font-weight: 600; }}
.plot .bar {{ fill: #3b6fb6; }} .plot .whisker {{ stroke: #222; stroke-width: 1.5; }}
.plot .lbl, .plot .val {{ font-size: 12px; }} .plot .ttl {{ font-size: 14px; font-weight: 600; }}
figure {{ margin: 12px 0; }}
</style></head><body>
<h1 id="headline">edgeship build: {ok} of {len(result.jobs)} jobs ok</h1>
<table id="summary"><tr><th>job</th><th>run</th><th>result</th><th>seconds</th><th>what failed</th></tr>{summary}</table>
{_bars("Artifact size", "MB", sizes, True)}
{_bars("int8 accuracy vs float: cosine", "cosine", cosines, False)}
{_bars("int8 accuracy vs float: SQNR", "dB", sqnrs, False)}
{_bars("Latency on the build machine, median with p90 whisker", "ms", latency, True)}
<p>Per-layer error: not computed by this build.</p>
{"".join(details)}
</body></html>
"""
