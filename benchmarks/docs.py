"""Writes docs/benchmarks.md from benchmarks/results/*.json, so the measured results in the docs are
always the committed ones (tests/test_docs.py checks the file is what this script writes).

    .venv/bin/python benchmarks/docs.py          # rewrite docs/benchmarks.md
    .venv/bin/python benchmarks/docs.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
RUNTIMES = ("onnxruntime", "executorch", "litert")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join("-" if c is None else str(c) for c in row) + " |" for row in rows])


def _about(name: str) -> list[str]:
    """The benchmark script's docstring, first paragraph: what it measures and how to run it."""
    script = ROOT / "benchmarks" / f"{name}.py"
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    return [doc.split("\n\n")[0].replace("\n", " "), "", f"Script: `benchmarks/{name}.py`."]


def _machine(data: dict) -> str:
    machine, versions = data.get("machine", {}), data.get("versions", {})
    if not machine and not versions:
        return "Computed from the float model's outputs; no runtime involved."
    libs = ", ".join(f"{k} {v}" for k, v in versions.items())
    took = f"; the run took {data['seconds']:.0f} s" if "seconds" in data else ""
    where = machine.get("arch", "this machine")
    if machine.get("processor"):
        where += f", {machine['processor']}" + (f", {machine['cores']} cores" if machine.get("cores") else "")
    return f"Measured on {where}{f' ({libs})' if libs else ''}{took}."


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}%"


def _by_flow(rows: list[dict], cell) -> list[list]:
    flows = list(dict.fromkeys(r["flow"] for r in rows))
    return [[f] + [next((cell(r) for r in rows if r["flow"] == f and r["runtime"] == rt), None) for rt in RUNTIMES]
            for f in flows]


def minilm_accuracy(data: dict) -> list[str]:
    fp32 = data["fp32_bytes"]
    rows = [r for r in data["rows"] if r.get("accuracy")]
    return [f"{data['model']}; calibration: {data['calibration']}; evaluation: {data['evaluation']}. Mean cosine "
            "to float in each runtime, size against that runtime's fp32 file:", ""] + _table(
        ["flow", *RUNTIMES], _by_flow(rows, lambda r: f"{r['accuracy']['cosine']:.4f}, "
                                                       f"{_percent(r['bytes'], fp32[r['runtime']])}"))


def recurrent_accuracy(data: dict) -> list[str]:
    lines = [f"{data['models']}; calibration: {data['calibration']}; evaluation: {data['evaluation']}. SQNR of "
             "the logits to float, size against that runtime's fp32 file:"]
    for model, fp32 in data["fp32_bytes"].items():
        rows = [r for r in data["rows"] if r["model"] == model and r.get("accuracy")]
        lines += ["", f"**{model}**", ""] + _table(["flow", *RUNTIMES], _by_flow(
            rows, lambda r: f"{r['accuracy']['sqnr_db']:.1f} dB, {_percent(r['bytes'], fp32[r['runtime']])}"))
    return lines


def stock_flows(data: dict) -> list[str]:
    fp32 = {r["runtime"]: r["bytes"] for r in data["summary"] if r["flow"] == "fp32"}
    return [f"{data['model']}; {data['data']}; {data['threads']} threads. Top-1 agreement with float / mean SQNR / "
            "size against fp32 / host median ms:", ""] + _table(["flow", *RUNTIMES], _by_flow(
        data["summary"], lambda r: f"{100 * r['top1_agreement']:.1f}% / "
                                   f"{'-' if r['sqnr_db'] is None else r['sqnr_db']} dB / "
                                   f"{_percent(r['bytes'], fp32[r['runtime']])} / {r['median_ms']} ms"))


WAITED = (" (in two processes, \"lower for executorch (second process)\" is the wait for it after the first "
          "process's own lowering; it started after \"prepare\")")


def export_time(data: dict) -> list[str]:
    rows = data["rows"] if "lowering" in data["rows"][0] else [{"lowering": "one process", "stages": data["rows"],
                                                               "export_seconds": data["export_seconds"]}]
    stages = list(dict.fromkeys(s["stage"] for r in rows for s in r["stages"]))
    seconds = [{s["stage"]: s["seconds"] for s in r["stages"]} for r in rows]
    return [f"{data['model']} for {data['target']}, {data['calibration_samples']} calibration and "
            f"{data['evaluation_samples']} evaluation samples; seconds{WAITED}:", ""] + _table(
        ["stage", *(r["lowering"] for r in rows)],
        [["export (all stages)", *(r["export_seconds"] for r in rows)]] +
        [[name, *(t.get(name, "-") for t in seconds)] for name in stages])


def recurrent_export_time(data: dict) -> list[str]:
    form = f"; recurrent layers: {data['recurrent_layers']}" if data.get("recurrent_layers") else ""
    return [f"{data['model']} for {data['target']}, {data['calibration_samples']} calibration and "
            f"{data['evaluation_samples']} evaluation sequences{form}; seconds{WAITED}:", ""] + _stage_table(
        data["rows"], ["frames", "lowering"], ("calibrate", "prepare", "lower"))


def _stage_table(rows: list[dict], keys: list[str], prefixes: tuple[str, ...] | None = None) -> list[str]:
    """One row per export: `keys`, the whole export, then each stage (those starting with `prefixes`, or all)."""
    stages = list(dict.fromkeys(s["stage"] for r in rows for s in r["stages"]
                                if prefixes is None or s["stage"].startswith(prefixes)))
    return _table([*keys, "export", *stages], [
        [r.get(k, "-") for k in keys] + [r["export_seconds"]] +
        [next((s["seconds"] for s in r["stages"] if s["stage"] == name), "-") for name in stages] for r in rows])


def llm_perplexity(data: dict) -> list[str]:
    forms = list(dict.fromkeys(r["form"] for r in data["rows"]))
    subjects = list(dict.fromkeys(r["subject"] for r in data["rows"]))
    cell = {(r["subject"], r["form"]): r for r in data["rows"]}

    def shown(r: dict) -> str:
        more = f" (+{100 * r['perplexity_increase']:.1f}%, top-1 {100 * r['top1_agreement']:.1f}%)" \
            if "top1_agreement" in r else ""
        return f"{r['perplexity']:.2f}{more}"

    return [f"{data['model']}; {data['windows_per_subject']} windows of {data['window']} tokens per subject; "
            f"calibration: {data['calibration']}; {data['simulated']}. Perplexity (increase over float, "
            "next-token top-1 agreement with float):", ""] + _table(
        ["subject", *forms], [[s] + [shown(cell[(s, f)]) for f in forms] for s in subjects])


def llm_export(data: dict) -> list[str]:
    if "outcome" in data:  # the export refused its perplexity budget
        return [f"{data['model']} with `--max-ppl-increase {data['max_ppl_increase']}`: refused after "
                f"{data['seconds']:.0f} s (exit {data['exit_code']}): {data['outcome']}", "",
                "Stages: " + "; ".join(data["stages"])]
    budget = data.get("budget")
    lines = [f"Budget `--max-ppl-increase {100 * budget['max_ppl_increase']:g}%`: {budget['int8_units']} of "
             f"{budget['units']} layer groups kept int8.", ""] if budget else []
    lines += [f"{data['model']}, `{data['command']}`; KV cache {data['max_seq_len']} positions; weights "
             + (f"{data['weights']['method']} ({data['weights']['quantized_layers']} linear layers, group "
                f"{data['weights']['group']})." if data["weights"]["quantized_layers"] else "float32."), ""]
    for a in data["artifacts"]:
        lines += [f"`{a['path']}` ({a['runtime']}): {a['size_bytes'] / 1e6:.1f} MB; greedy output equal to float's "
                  f"for the first 16 tokens on {a['greedy_equal_prompts']} prompts; the LLM runner's text "
                  f"{'equals' if a['runner']['equals_greedy'] else 'differs from'} the verified greedy text.", ""]
        lines += _table(["subject", "float ppl", "ppl", "increase", "top-1 vs float", "KL"], [
            [name, f"{data['subjects_float'][name]['float']['perplexity']:.2f}", f"{s['perplexity']:.2f}",
             f"{100 * s['perplexity_increase']:+.1f}%", f"{100 * s['top1_agreement']:.1f}%",
             f"{s['kl_divergence']:.3f}"] for name, s in a["subjects"].items()]) + [""]
    if data.get("bench"):
        lines += ["Timed by `edgeship bench` on this machine:", ""] + _table(
            ["artifact", "runtime", "size MB", "load ms", "first token ms", "prefill tok/s", "decode tok/s",
             "peak MB", "threads"],
            [[r["path"], r["runtime"], f"{r['size_bytes'] / 1e6:.1f}", f"{r['load_ms']:.0f}",
              f"{r['time_to_first_token_ms']:.0f}", r["prefill_tokens_per_s"], r["decode_tokens_per_s"],
              f"{r['peak_rss_mb']:.0f}", r["threads"]] for r in data["bench"]]) + [""]
    return lines + ["Stages: " + "; ".join(data["stages"])]


def llm_stock_flows(data: dict) -> list[str]:
    """Per runtime: its stock int4 flow's row, then edgeship's, on the same windows and the same timing."""
    ours = {a["runtime"]: a for a in data["edgeship"]["artifacts"]}
    timed = {r["runtime"]: r for r in data["edgeship"].get("bench") or []}
    rows = []
    for stock in data["stock"]:
        runtime = stock["runtime"]
        if "failed" in stock:
            rows.append([runtime, stock["flow"], "failed: " + stock["failed"][:160]] + [None] * 6)
        else:
            rows.append(_flow_row(runtime, stock["flow"], stock, stock["bench"]))
        if runtime in ours:
            rows.append(_flow_row(runtime, "edgeship int4", ours[runtime], timed.get(runtime)))
    subjects = list(data["subjects_float"])
    return [f"{data['model']}; KV cache {data['max_seq_len']} positions; {data['threads']} threads. Perplexity "
            f"increase over float on each subject ({', '.join(subjects)}), the worst first:", ""] + _table(
        ["runtime", "flow", "size MB", "worst ppl increase", "per subject", "top-1 vs float (worst)",
         "greedy = float", "prefill tok/s", "decode tok/s"], rows) + _paired(data.get("paired"))


def _paired(paired: dict | None) -> list[str]:
    """Decode rates timed in the same run, round after round: each artifact's rounds, its median, and
    edgeship int4's median over the others' on the same runtime."""
    if not paired:
        return ["", "edgeship's rates come from another run (results/llm_export.json): not a paired comparison."]
    rows = paired["rows"]
    int4 = {r["runtime"]: r["median"]["decode_tokens_per_s"] for r in rows if r["flow"] == "edgeship int4"}
    table = [[r["runtime"], r["flow"], " / ".join(map(str, r["decode_tokens_per_s"])),
              r["median"]["decode_tokens_per_s"], "-" if r["flow"] == "edgeship int4" or r["runtime"] not in int4 else
              f"{int4[r['runtime']] / r['median']['decode_tokens_per_s']:.2f}x"] for r in rows]
    return ["", f"Decode tokens/s timed in this run, {paired['rounds']} interleaved rounds (each round times every "
            "artifact once, in a fresh process); edgeship int4's median against each other artifact's:", ""] + _table(
        ["runtime", "flow", "decode tok/s by round", "median", "edgeship int4 / this"], table)


def _flow_row(runtime: str, flow: str, record: dict, bench: dict | None) -> list:
    scores = record["subjects"]
    worst = max(scores, key=lambda k: scores[k]["perplexity_increase"])
    return [runtime, flow, f"{record['size_bytes'] / 1e6:.1f}", f"{100 * scores[worst]['perplexity_increase']:+.1f}%",
            " / ".join(f"{100 * s['perplexity_increase']:+.1f}%" for s in scores.values()),
            f"{100 * scores[worst]['top1_agreement']:.1f}%", record["greedy_equal_prompts"],
            bench and bench["prefill_tokens_per_s"], bench and bench["decode_tokens_per_s"]]


def llm_table_bits(data: dict) -> list[str]:
    sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in data["table_bytes"].items())
    rows = [[r["variant"]] + [f"{100 * s['perplexity_increase']:+.2f}% (KL {s['kl_divergence']:.4f})"
                              for s in r["subjects"].values()]
            + [r["greedy_equal_prompts"], " ".join(map(str, r["first_divergence"]))] for r in data["rows"]]
    return [f"{data['model']}; table {data['table'][0]} x {data['table'][1]} ({sizes}). Perplexity increase over "
            "float (KL to float) by subject; greedy tokens equal to float's for 16 tokens; where each prompt's "
            "tokens first differ (None: never, in 32):", ""] + _table(
        ["table / head", *data["subjects_float"], "greedy = float", "first divergence"], rows)


def llm_families(data: dict) -> list[str]:
    def made(row: dict) -> str:
        return ", ".join(f"{a['runtime']} ({100 * a['perplexity_increase']:+.1f}%"
                         + f", top-1 {100 * a['top1_agreement']:.0f}%"
                         + ("" if a["runner_equals_greedy"] else ", runner text differs") + ")"
                         for a in row.get("artifacts", [])) or "-"

    def missing(row: dict) -> str:
        if "error" in row:
            return row["error"][:200]
        return "; ".join(f"{n['runtime']}: {n['reason'][:160]}" for n in row.get("not_produced", [])) or "-"

    return [f"int4 for target `{data['target']}`, a {data['max_seq_len']}-position KV cache; the perplexity "
            "increase and the next-token top-1 agreement with float are on the calibration text, random weights "
            "(their logits are nearly flat, so a perplexity barely moves where the agreement shows a fault).",
            ""] + _table(
        ["family", "artifacts (perplexity increase, top-1 agreement)", "not produced", "seconds"],
        [[r["family"], made(r), missing(r), r["seconds"]] for r in data["rows"]])


def agreement_ceiling(data: dict) -> list[str]:
    expected = data["expected_top1_agreement_by_sqnr_db"]
    return [f"{data['photos']} photos, {data['draws']} noise draws each: expected top-1 agreement with float "
            f"when independent Gaussian noise at a given SQNR is added to the logits; "
            f"{data['sqnr_db_needed_for_98']} dB is needed for 98%.", ""] + _table(
        ["SQNR dB", "expected top-1 agreement"], [[k, v] for k, v in expected.items()])


def algorithms(data: dict) -> list[str]:
    lines = []
    for row in data["rows"]:
        key, measure = next((k, m) for k, m in (("cosine", "mean cosine"), ("mean_sqnr_db", "mean SQNR dB"),
                                                ("sqnr_db", "SQNR dB")) if k in row)
        values = row[key]
        lines += [f"`{row['study']}`: {row['model']}; {measure} of the simulated int8 model to float.", ""]
        lines += _table(list(values), [list(values.values())]) + [""]
        lines += [f"- {'holds' if c['holds'] else '**fails**'}: {c['claim']}" for c in row["claims"]] + [""]
    return lines[:-1]


def render() -> str:
    lines = ["# Benchmarks", "",
             "Generated by `benchmarks/docs.py` from `benchmarks/results/*.json`; do not edit. Each benchmark "
             "script prints its results and writes that JSON; rerun a script, then this one.", ""]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        name = data.get("benchmark", path.stem)  # the script; the file's name tells runs of it apart
        renderer = globals().get(name)
        lines += [f"## {path.stem}", ""] + _about(name) + [""]
        if renderer is not None:
            lines += renderer(data) + [""]
        lines += [_machine(data), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/benchmarks.md is out of date")
    text = render()
    if parser.parse_args().check:
        if not DOC.is_file() or DOC.read_text() != text:
            sys.exit("docs/benchmarks.md is out of date: run .venv/bin/python benchmarks/docs.py")
        return
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
