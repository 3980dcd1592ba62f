"""Render a manifest as a table (stdout) and as `report.md`."""

from __future__ import annotations

COLUMNS = ("artifact", "runtime", "precision", "size", "SQNR dB", "cosine", "top-1", "steps vs sim",
           "median ms", "p90 ms", "not int8")


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def rows(manifest: dict) -> list[list[str]]:
    table = []
    for a in manifest["artifacts"]:
        acc, lat = a["accuracy"], a["latency_ms"]
        top1 = f"{acc['top1_agreement'] * 100:.1f}%" if acc["top1_agreement"] is not None else "-"
        not_int8 = ", ".join(sorted({n["op"] for n in a["not_quantized"]})) if a["precision"] != "fp32" else ""
        table.append([a["path"], a["runtime"], a["precision"], _size(a["bytes"]),
                      _fmt(acc["sqnr_db"], ".1f"), _fmt(acc["cosine"], ".4f"), top1,
                      _fmt(a["vs_simulated_steps"], ".1f"), _fmt(lat["median"], ".2f"),
                      _fmt(lat["p90"], ".2f"), not_int8 or "-"])
    return table


def report(manifest: dict) -> str:
    cal = manifest["calibration"]
    lines = [
        f"# {manifest['model']['name']} for {manifest['target']['name']}",
        "",
        f"- model: `{manifest['model']['source']}`",
        f"- target: {manifest['target']['name']} ({manifest['target']['description']})",
        f"- recipe: {manifest['recipe']['name']} ({manifest['recipe']['scheme']}, activations "
        f"{manifest['recipe']['activation_method']})",
        f"- calibration: {cal['samples']} samples from {cal['source']} (sha256 {cal['sha256'][:12]})",
        f"- verification: {manifest['evaluation']['samples']} samples from {manifest['evaluation']['source']}",
        f"- latency: on this machine ({manifest['host']['machine']}, {manifest['host']['cpu_count']} cores), "
        "not on the device",
        "",
        "Accuracy is measured against the float PyTorch model on the verification samples. "
        "`steps vs sim` is the largest difference from the simulated quantized graph, in output "
        "quantization steps.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(manifest)]
    if manifest["host"]["machine"].lower() not in ("aarch64", "arm64") and any(
            a["path"].endswith(".ort") for a in manifest["artifacts"]):
        lines += ["", "`model.int8.ort` is optimised for ARM CPUs (signed int8 kernels, as ONNX Runtime Mobile "
                  "runs them); on this x86 host those kernels are slow, so its latency here says nothing "
                  "about the device. `model.int8.onnx` is timed with this host's own ONNX Runtime settings."]
    lines += _agreement_lines(manifest)
    if manifest.get("not_produced"):
        lines += ["", "## Not produced", ""]
        lines += [f"- {n['runtime']} {n['precision']}: {n['reason']}" for n in manifest["not_produced"]]
    lines += _off_simulation_lines(manifest)
    lines += _host_accuracy_lines(manifest)
    lines += _off_float_lines(manifest)
    lines += _decision_lines(manifest)
    slower = [a for a in manifest["artifacts"] if a.get("slower_than_fp32")]
    if slower:
        lines += ["", "## Slower than fp32 on this machine", ""]
        lines += [f"- {a['path']}: {a['latency_ms']['vs_fp32']:.2f}x its runtime's fp32 median"
                  + (f" ({a['host_timing']})" if a.get("host_timing") else "") for a in slower]
    lines += _budget_lines(manifest)
    lines += ["", "## Ops that do not run in int8", ""]
    for a in manifest["artifacts"]:
        if a["precision"] == "fp32":
            continue
        ops = ", ".join(f"{n['op']} x{n['count']} ({n['reason']})" for n in a["not_quantized"]) or "none"
        lines.append(f"- {a['path']}: {ops}")
    if manifest.get("bench"):
        lines += bench_section(manifest["bench"])
    return "\n".join(lines) + "\n"


def _agreement_lines(manifest: dict) -> list[str]:
    agreement = manifest.get("int8_agreement_steps") or {}
    max_abs = manifest.get("int8_agreement_max_abs") or {}
    if not agreement:
        return []
    return ["", "## int8 artifacts against each other", "",
            "Largest output difference, in output quantization steps where the output is quantized:", ""] + [
        f"- {k}: {_fmt(v, '.1f') + ' steps, ' if v is not None else ''}max abs {max_abs.get(k, 0):.4g}"
        for k, v in agreement.items()]


def _budget_lines(manifest: dict) -> list[str]:
    choice = manifest.get("precision_choice")
    if not choice:
        return []
    wanted = ", ".join(f"{k} >= {v:g}" for k, v in choice["budget"].items())
    kept = ", ".join(choice["keep_float"]) or "none"
    return ["", "## Accuracy budget", "",
            f"Budget {wanted} on the verification samples: {len(choice['keep_float'])} of "
            f"{choice['candidates']} quantizable layers kept in float ({kept}), chosen by per-layer "
            f"sensitivity ({choice['ranking_metric']}); simulated result: "
            + ", ".join(f"{k} {choice['simulated'][k]}" for k in choice["budget"]) + "."]


def bench_section(bench: dict) -> list[str]:
    """`edgeship bench` results: one table for every artifact, ratios, and per-op profiles."""
    host = bench["host"]
    where = f"{host.get('cpu_model') or host.get('machine')} ({host.get('cpu_count')} cpus"
    where += f", {host['device']})" if host.get("device") else ")"
    lines = ["", "## Benchmark (`edgeship bench`)", "", f"Measured on {where}."]
    if host.get("emulated"):
        lines += ["", f"**Emulated** ({host['emulated']}): the outputs are checked against this machine's; "
                  "the timings are NOT ARM latency."]
    remote = any("vs_host_max_abs" in r for r in bench["rows"])
    head = ["artifact", "runtime", "median ms", "p90 ms", "p99 ms", "min ms", "spread", "runs", "load ms",
            "peak MB"] + (["vs this machine"] if remote else [])
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in bench["rows"]:
        cells = [r["path"], r["runtime"] + (f" ({r['tool']})" if "tool" in r else "")]
        cells += [_fmt(r.get(k), ".3f") for k in ("median", "p90", "p99", "min")]
        cells += [_fmt(r.get("spread"), ".2f"), _fmt(r.get("runs")), _fmt(r.get("load_ms"), ".1f"),
                  _fmt(r.get("peak_rss_mb"), ".0f")]
        if remote:
            cells.append(f"{r['vs_host_steps']:g} steps" if "vs_host_steps" in r else
                         f"{r['vs_host_relative']:.1e} relative" if "vs_host_relative" in r else "not checked")
        lines.append("| " + " | ".join(cells) + " |")
    if bench.get("ratios"):
        lines += ["", "Median ratios, one run:", ""]
        lines += [f"- {name}: {ratio:.3f}x" for name, ratio in bench["ratios"].items()]
    for r in bench["rows"]:
        if "profile" not in r:
            continue
        prof = r["profile"]
        key = "delegated" if prof["runtime"] == "executorch" else "int8"
        lines += ["", f"### Per-op profile: {r['path']}", "",
                  f"{r['delegated_share'] * 100:.1f}% of compute ops "
                  f"{'in the XNNPACK delegate' if key == 'delegated' else 'in int8 kernels'}"
                  + (f"; {prof['note']}" if prof.get("note") else "") + ".", "",
                  f"| op | count | ms per run | share | {key} |", "|---|---|---|---|---|"]
        for op in prof["ops"]:
            flag = op[key]
            lines.append(f"| {op['op']} | {op['count']} | {_fmt(op['ms_per_run'], '.4f')} | "
                         f"{_fmt(op['share'] and op['share'] * 100, '.1f')}{'%' if op['share'] else ''} | "
                         f"{'-' if flag is None else 'yes' if flag else '**no**'} |")
    return lines


def _off_simulation_lines(manifest: dict) -> list[str]:
    """The int8 artifacts flagged `off_simulation` (flows/checks.py flag_off_simulation), as a report section."""
    off = [a for a in manifest["artifacts"] if a.get("off_simulation")]
    if not off:
        return []
    simulated = manifest.get("simulated_int8", {}).get("sqnr_db")
    return ["", "## Not what the simulated int8 graph computes", ""] + [
        f"- {a['path']}: SQNR {_fmt(a['accuracy']['sqnr_db'], '.1f')} dB against {_fmt(simulated, '.1f')} dB "
        f"simulated; {a['runtime']} lowers an op differently (`edgeship debug` names the layer)" for a in off]


def _host_accuracy_lines(manifest: dict) -> list[str]:
    """The artifacts flagged `host_accuracy` (flows/checks.py flag_host_saturation)."""
    flagged = [a for a in manifest["artifacts"] if a.get("host_accuracy")]
    if not flagged:
        return []
    return ["", "## Accuracy measured on this host", ""] + [f"- {a['path']}: {a['host_accuracy']}" for a in flagged]


def _off_float_lines(manifest: dict) -> list[str]:
    """The fp32 artifacts flagged `off_float` (flows/checks.py flag_off_float), as a report section."""
    off = [a for a in manifest["artifacts"] if a.get("off_float")]
    if not off:
        return []
    return ["", "## fp32 artifacts that are not the PyTorch model", ""] + [
        f"- {a['path']}: SQNR {_fmt(a['accuracy']['sqnr_db'], '.1f')} dB to the model (float32 runtimes agree "
        f"to 100 dB and more); {a['runtime']} computes an op otherwise" for a in off]


def _decision_lines(manifest: dict) -> list[str]:
    """Each artifact's agreement with float on its sigmoid / softmax outputs' decisions; those flagged
    `decisions_changed` (metrics/decisions.py flag_changed_decisions) marked."""
    rows = [(a, d) for a in manifest["artifacts"] for d in a["accuracy"].get("decisions") or []]
    if not rows:
        return []
    lines = ["", "## Decisions against float", "",
             "Share of the eval samples' decisions (a sigmoid at 0.5, a softmax's largest entry) that match the "
             "float model's:", ""]
    for a, d in rows:
        from edgeship.metrics.decisions import DECISION_AGREEMENT

        low = a.get("decisions_changed") and d["agreement"] < DECISION_AGREEMENT
        flag = f" (below {100 * DECISION_AGREEMENT:.0f}%: check with `edgeship debug`)" if low else ""
        lines.append(f"- {a['path']} output {d['output']} ({d['rule']}): {100 * d['agreement']:.1f}% of "
                     f"{d['decisions']}{flag}")
    return lines
