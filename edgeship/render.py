"""What the CLI prints: rich tables of each flow's result, and progress (bars on a terminal, one line
per stage otherwise)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.table import Table

from edgeship import logs


def cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def export_table(result) -> None:
    from edgeship.report.markdown import COLUMNS, rows

    m = result.manifest
    table = Table(*COLUMNS, title=f"{m['model']['name']} for {m['target']['name']}: {result.out_dir}")
    for row in rows(m):
        table.add_row(*row)
    Console(width=200).print(table)
    for n in m.get("not_produced", []):
        typer.echo(f"not produced: {n['runtime']} {n['precision']}: {n['reason']}", err=True)


def language_table(result) -> None:
    from edgeship.report.language import SUBJECT_COLUMNS, subject_rows

    m = result.manifest
    for artifact in m["artifacts"]:
        table = Table(*SUBJECT_COLUMNS, title=f"{m['model']['name']} for {m['target']['name']}: "
                      f"{result.out_dir / artifact['path']} ({artifact['size_bytes'] / 1e6:.1f} MB)")
        for row in subject_rows(artifact, m["subjects"]):
            table.add_row(*row)
        Console(width=160).print(table)
        typer.echo(f"lost the most: {artifact['worst_subject']}; greedy output equal to float's for the first 16 "
                   f"tokens on {artifact['greedy_equal_prompts']} prompts")


def language_bench_table(result, out_dir) -> None:
    host = result.host
    table = Table("artifact", "runtime", "precision", "size MB", "load ms", "first token ms", "prefill tok/s",
                  "decode tok/s (range)", "peak MB", "threads",
                  title=f"{out_dir} on {host.get('cpu_model')} ({host.get('cpu_count')} cpus), median of "
                        f"{result.rows[0].get('rounds', 1) if result.rows else 1} rounds")
    for r in result.rows:
        table.add_row(r["path"], r["runtime"], r["precision"], f"{r['size_bytes'] / 1e6:.1f}", f"{r['load_ms']:.0f}",
                      f"{r['time_to_first_token_ms']:.0f}", f"{r['prefill_tokens_per_s']:.1f}",
                      _with_range(r["decode_tokens_per_s"], r.get("decode_tokens_per_s_range")),
                      f"{r['peak_rss_mb']:.0f}", str(r["threads"]))
    Console(width=200).print(table)


def _with_range(value, spread) -> str:
    return f"{value:.1f}" + (f" ({spread[0]:.0f}-{spread[1]:.0f})" if spread else "")


def analyze_table(result, top: int) -> None:
    m, p = result.metric, result.precision
    table = Table("rank", "layer", "op", "module", f"{m}: only this {p}", f"{m}: this in float",
                  f"{m}: this and above in float",
                  title=f"{result.model}: all layers {p} gives {m} {result.all_int8[m]}")

    def shown(acc: dict) -> str:
        return "exact" if acc[m] is None and acc["max_abs_error"] == 0 else str(acc[m])

    for i, row in enumerate(result.rows[:top], 1):
        module = row["module"] + (f" ({row['calls']} calls, one weight)" if row.get("calls", 1) > 1 else "")
        table.add_row(str(i), row["layer"], row["op"], module, shown(row["alone"]),
                      shown(row["kept_float"]), shown(row["cumulative"]))
    Console(width=180).print(table)


def debug_table(result, out_dir) -> None:
    table = Table("layer", "op", "SQNR dB simulated", f"SQNR dB {result.artifact}", "drop dB",
                  "runtime vs simulated max abs",
                  title=f"{out_dir}: each layer's output against float, {result.samples} eval samples")
    for r in result.rows:
        table.add_row(r["layer"], r["op"], cell(r["simulated_sqnr_db"], ".1f"), cell(r["runtime_sqnr_db"], ".1f"),
                      cell(r["drop_db"], ".1f"), cell(r["runtime_vs_simulated_max_abs"], ".4g"))
    console = Console(width=160)
    console.print(table)
    if result.worst is not None:
        console.print(f"The error jumps most at {result.worst['layer']} ({result.worst['op']}): "
                      f"{result.worst['drop_db']:.1f} dB below the layer before it. Keep it in float with "
                      f"--min-cosine / --min-sqnr; outlier channels are what the int8 recipe's outlier_channels and "
                      f"smoothquant algorithms handle.")


def bench_table(result, out_dir, compare: bool) -> None:
    if result.rows and "decode_tokens_per_s" in result.rows[0]:
        return language_bench_table(result, out_dir)
    host = result.host
    title = f"{out_dir} on {host.get('cpu_model')} ({host.get('cpu_count')} cpus, governor {host.get('governor')})"
    if host.get("emulated"):
        title += f"\nEMULATED ({host['emulated']}): outputs are checked; timings are NOT ARM latency"
    table = Table("artifact", "runtime", "precision", "load ms", "first ms", "median ms", "p90", "p99", "min",
                  "spread", "runs", "peak MB", "threads",
                  title=title)
    remote = any("vs_host_max_abs" in r for r in result.rows)
    if remote:
        table.add_column("vs this machine")
    for r in result.rows:
        cells = [r["path"], r["runtime"] + (f" ({r['tool']})" if "tool" in r else ""), r["precision"],
                 *[cell(r.get(k), f) for k, f in (("load_ms", ".1f"), ("first_inference_ms", ".2f"),
                                                    ("median", ".3f"), ("p90", ".3f"), ("p99", ".3f"),
                                                    ("min", ".3f"), ("spread", ".2f"), ("runs", "d"),
                                                    ("peak_rss_mb", ".0f"), ("threads", "d"))]]
        if remote:
            cells.append(f"{r['vs_host_steps']:g} steps" if "vs_host_steps" in r
                         else f"{r['vs_host_relative']:.1e} rel" if "vs_host_relative" in r
                         else "not checked (tool's own inputs)")
        table.add_row(*cells)
    console = Console(width=200)
    console.print(table)
    if compare:
        for name, ratio in result.ratios.items():
            console.print(f"{name}: {ratio:.3f}x")
    for r in result.rows:
        if "profile" not in r:
            continue
        console.print(f"\n{r['path']}: {r['delegated_share'] * 100:.1f}% of compute ops int8/delegated")
        for op in r["profile"]["ops"][:12]:
            flag = op.get("delegated", op.get("int8"))
            timing = f"{op['ms_per_run']:.4f} ms ({op['share'] * 100:.1f}%)" if op["ms_per_run"] is not None else "-"
            console.print(f"  {op['op']:40s} x{op['count']:<4d} {timing:24s} "
                          f"{'-' if flag is None else 'yes' if flag else 'NO'}")
    for reg in result.regressions:
        if reg.get("gate") == "device_outputs":
            console.print(f"FAILED {reg['path']}: outputs on the device differ from this machine's by "
                          f"{reg['measured']:.3g} {reg['unit']} (allowed {reg['allowed']:g})")
            continue
        if "gate" in reg:
            console.print(f"FAILED {reg['gate']} {reg['path']}: "
                          + (", ".join(reg["ops"]) if reg["gate"] == "fallback" else
                             f"{reg['share'] * 100:.1f}% < {reg['required'] * 100:.1f}%"))
            continue
        console.print(f"REGRESSION {reg['path']}: median {reg['baseline_median']:.3f} -> {reg['median']:.3f} ms "
                      f"(+{reg['change'] * 100:.1f}%, allowed +{reg['allowed'] * 100:.1f}%)")


def build_table(result) -> None:
    from edgeship.pipeline.reports import summary_rows

    table = Table("job", "run", "result", "seconds", "what failed", title=f"edgeship build: {result.out}")
    for row in summary_rows(result):
        table.add_row(*row)
    Console(width=200).print(table)


class Stages:
    """Rich progress bars on stderr when it is a terminal (with each stage's time so far); otherwise one line
    per stage when it ends, with its duration (`calibrate (100) ... 12.3 s`), unless `quiet`."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __enter__(self):
        if not sys.stderr.isatty():
            self._bars = None
            self._lines = logs.StageLines(lambda text: typer.echo(text, err=True), quiet=self.quiet)
            return self._lines.start
        from rich.console import Console
        from rich.progress import Progress, TimeElapsedColumn

        self._bars = Progress(*Progress.get_default_columns(), TimeElapsedColumn(), console=Console(stderr=True),
                              transient=True)  # a long stage of few steps (a lowering) shows its time going on
        self._bars.start()

        def start(task: str, total: int):
            task_id = self._bars.add_task(task, total=total)
            return lambda n: self._bars.advance(task_id, n)

        return start

    def __exit__(self, *exc) -> None:
        if self._bars is not None:
            self._bars.stop()
        elif exc[0] is None:
            self._lines.finish()
