"""The edgeship command line: parses options, calls edgeship.api, renders results."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeship import logs, render
from edgeship import cli_options as options
from edgeship.errors import ConfigError, EdgeshipError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Take a PyTorch model to verified int8 ONNX Runtime, ExecuTorch and LiteRT artifacts.")
log = logging.getLogger("edgeship")

_state = {"debug": False, "quiet": False}




@app.callback()
def _root(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging.")] = 0,
          quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors on stderr.")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="Full tracebacks on errors.")] = False) -> None:
    _state["debug"], _state["quiet"] = debug, quiet
    if not verbose and not debug and sys.stderr is sys.__stderr__:  # a test harness's stderr is left alone
        logs.filter_native_stderr()
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logs.configure(level)


@app.command(no_args_is_help=True)
def export(
    model: Annotated[str, typer.Argument(help="path/to/file.py:callable or package.module:callable "
                                         "returning an nn.Module; or a causal language model: a Hugging Face "
                                         "folder or a .gguf file.")],
    target: options.TargetOpt,
    calibration: options.CalibrationOpt,
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Verification samples (same "
                         "formats); default: a held-out quarter of the calibration set. Language models: "
                         "NAME=text.txt (or .jsonl), repeatable, one subject each.")] = None,
    max_seq_len: options.MaxSeqLenOpt = None,
    max_ppl_increase: options.MaxPplIncreaseOpt = None,
    int4_offsets: options.Int4OffsetsOpt = None,
    out: options.OutOpt = Path("out"),
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape", help="e.g. 1x3x224x224; "
                           "repeat for several inputs.")] = None,
    input_dtype: Annotated[Optional[list[str]], typer.Option("--input-dtype", help="float32, int64, ...; "
                           "one for all inputs or one per --input-shape.")] = None,
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (see `edgeship recipes`) "
                                        "or a .toml/.json recipe file.")] = "int8",
    resize: Annotated[Optional[int], typer.Option(help="Images: resize the short side to this.")] = None,
    crop: Annotated[Optional[int], typer.Option(help="Images: center crop size.")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Images: per-channel mean, e.g. 0.5,0.5,0.5.")] = None,
    std: Annotated[Optional[str], typer.Option(help="Images: per-channel std, e.g. 0.5,0.5,0.5.")] = None,
    layout: Annotated[Optional[str], typer.Option(help="Images: nchw or nhwc.")] = None,
    color: Annotated[Optional[str], typer.Option(help="Images: rgb, bgr or gray.")] = None,
    min_cosine: Annotated[Optional[float], typer.Option(help="Budget: mean cosine to float, e.g. 0.99.")] = None,
    min_sqnr: Annotated[Optional[float], typer.Option(help="Budget: SQNR to float in dB, e.g. 25.")] = None,
    max_drop: Annotated[Optional[str], typer.Option(help="Budget: top-1 agreement drop, e.g. 0.5%.")] = None,
    require_all: Annotated[bool, typer.Option("--require-all", help="Fail (exit 1, nothing written) when "
                           "any runtime cannot make its artifacts, instead of exporting the others.")] = False,
    format: options.FormatOpt = options.Format.table,
) -> None:
    """Export MODEL for a device target: fp32 and int8 artifacts for each runtime, verified and timed.

    Example: edgeship export examples/mobilenet_v2.py:build --target android-arm64
    --calibration calibration_data/imagenet-sample
    """
    from edgeship import api
    from edgeship.export.causal_lm import is_causal_lm_source

    if is_causal_lm_source(model):
        limit = options.percent("--max-ppl-increase", max_ppl_increase) if max_ppl_increase is not None else None
        _export_language(model, target, calibration, eval_data, out, recipe, max_seq_len, limit, int4_offsets,
                         format)
        return
    _not_language_options(model, eval_data, max_seq_len, max_ppl_increase, int4_offsets)
    budget = options.budget(min_cosine, min_sqnr, max_drop)
    preprocess = {"resize": resize, "crop": crop, "mean": options.floats("--mean", mean),
                  "std": options.floats("--std", std), "layout": layout, "color": color}
    logs.quiet_torch()
    with render.Stages(_state["quiet"]) as progress:
        result = api.export(model, target, calibration, eval_data=eval_data[0] if eval_data else None, out=out,
                            input_shapes=input_shape, input_dtypes=input_dtype, recipe=recipe,
                            preprocess=preprocess, budget=budget, require_all=require_all,
                            progress=progress)
    if format is options.Format.json:
        typer.echo(json.dumps(result.manifest, indent=1))
        return
    render.export_table(result)


def _not_language_options(model: str, eval_data: list[str] | None, max_seq_len: int | None,
                          max_ppl_increase: str | None, int4_offsets: str | None) -> None:
    if int4_offsets is not None:
        raise ConfigError(f"--int4-offsets is for causal language models; {model} is not one (int4 recipes for "
                          "other models use symmetric weights): drop it")
    if max_ppl_increase is not None:
        raise ConfigError(f"--max-ppl-increase is for causal language models; {model} is not one: use --min-cosine, "
                          "--min-sqnr or --max-drop")
    if len(eval_data or []) > 1:
        raise ConfigError("--eval-data is given more than once; a model that is not a language model takes one "
                          "eval set (an image folder, .npz or folder of .npy files)")
    if max_seq_len is not None:
        raise ConfigError(f"--max-seq-len is for causal language models; {model} is not one (a language model "
                          "is a Hugging Face folder with config.json, or a .gguf file)")


def _export_language(model: str, target: str, calibration: Path, eval_data: list[str] | None, out: Path,
                     recipe: str, max_seq_len: int | None, max_ppl_increase: float | None, int4_offsets: str | None,
                     format: options.Format) -> None:
    from edgeship import api

    logs.quiet_torch()
    with render.Stages(_state["quiet"]) as progress:
        result = api.export_language(model, target, calibration, eval_data=options.subjects(eval_data), out=out,
                                     recipe=recipe, max_seq_len=max_seq_len, max_ppl_increase=max_ppl_increase,
                                     int4_offsets=int4_offsets, progress=progress)
    if format is options.Format.json:
        typer.echo(json.dumps(result.manifest, indent=1))
        return
    render.language_table(result)


@app.command(no_args_is_help=True)
def generate(
    out_dir: Annotated[Path, typer.Argument(help="A language-model export folder, out/<model>/<target>.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The text to continue (in the model's chat "
                      "template when its tokenizer has one).")],
    runtime: Annotated[str, typer.Option("--runtime", help="Whose artifact runs it.")] = "executorch",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Tokens to generate.")] = 128,
    raw: Annotated[bool, typer.Option("--raw", help="Send the prompt as it is, without the chat template.")] = False,
) -> None:
    """Stream greedy tokens from a language-model artifact, run by its runtime's own LLM runner.

    Example: edgeship generate out/smollm2/android-arm64 --prompt "Name three colours."
    """
    from edgeship import api

    result = api.generate(out_dir, prompt, runtime=runtime, max_new_tokens=max_new_tokens, chat=not raw,
                          stream=True)
    typer.echo("")
    if not _state["quiet"]:
        typer.echo(f"{result.tokens} tokens, {result.decode_tokens_per_s:.1f} tokens/s", err=True)


@app.command()
def targets(show: Annotated[Optional[str], typer.Option("--show", help="Show one profile in full.")] = None,
            format: options.FormatOpt = options.Format.table) -> None:
    """List the built-in device targets (or show one with --show NAME).

    Example: edgeship targets --show raspberry-pi-5
    """
    from edgeship import api

    if show is not None:
        from edgeship.targets.devices import load_device

        device = load_device(show)
        if format is options.Format.json:
            typer.echo(json.dumps(device.to_dict(), indent=1))
        else:
            for key, value in device.to_dict().items():
                typer.echo(f"{key:12s} {', '.join(value) if isinstance(value, tuple) else value}")
        return
    devices = api.list_targets()
    if format is options.Format.json:
        typer.echo(json.dumps([d.to_dict() for d in devices], indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("target", "os / abi", "cores", "int8 ISA", "threads", "reach", "description")
    for d in devices:
        table.add_row(d.name, f"{d.os} / {d.abi}", str(d.cores), ", ".join(d.isa) or "-", str(d.threads),
                      d.reach, d.description)
    Console(width=160).print(table)


@app.command(no_args_is_help=True)
def analyze(
    model: Annotated[str, typer.Argument(help="path/to/file.py:callable or package.module:callable.")],
    calibration: options.CalibrationOpt,
    eval_data: Annotated[Optional[Path], typer.Option("--eval-data", help="Evaluation samples.")] = None,
    input_shape: Annotated[Optional[list[str]], typer.Option("--input-shape")] = None,
    input_dtype: Annotated[Optional[list[str]], typer.Option("--input-dtype")] = None,
    recipe: Annotated[str, typer.Option("--recipe", "-r")] = "int8",
    metric: Annotated[str, typer.Option(help="Rank by sqnr_db, cosine or top1_agreement.")] = "sqnr_db",
    top: Annotated[int, typer.Option(help="Rows to show.")] = 20,
    format: options.FormatOpt = options.Format.table,
) -> None:
    """Rank the layers by how much int8 (or, with an int4 recipe, int4 weights) hurts them (simulated on
    the eval samples).

    Example: edgeship analyze examples/minilm.py:build -c calibration_data/sentences-minilm.npz --metric cosine
    """
    from edgeship import api

    logs.quiet_torch()
    with render.Stages(_state["quiet"]) as progress:
        result = api.analyze(model, calibration, eval_data=eval_data, input_shapes=input_shape,
                             input_dtypes=input_dtype, recipe=recipe, metric=metric, progress=progress)
    if format is options.Format.json:
        typer.echo(json.dumps({"model": result.model, "metric": result.metric, "precision": result.precision,
                               "all_int8": result.all_int8, "rows": result.rows}, indent=1))
        return
    render.analyze_table(result, top)


@app.command(no_args_is_help=True)
def debug(
    out_dir: Annotated[Path, typer.Argument(help="An int8 export folder, out/<model>/<target>.")],
    samples: Annotated[int, typer.Option(min=1, help="Eval samples to compare on.")] = 8,
    format: options.FormatOpt = options.Format.table,
) -> None:
    """Layer by layer: float vs simulated int8 vs the ONNX Runtime artifact; names where the error jumps.

    Example: edgeship debug out/minilm/linux-arm64
    """
    from edgeship import api

    logs.quiet_torch()
    with render.Stages(_state["quiet"]) as progress:
        result = api.debug(out_dir, samples=samples, progress=progress)
    if format is options.Format.json:
        typer.echo(json.dumps({"artifact": result.artifact, "samples": result.samples, "rows": result.rows,
                               "worst": result.worst}, indent=1))
        return
    render.debug_table(result, out_dir)


@app.command(no_args_is_help=True)
def bench(
    out_dir: Annotated[Path, typer.Argument(help="An export folder, out/<model>/<target>.")],
    artifact: Annotated[Optional[list[str]], typer.Option("--artifact", "-a", help="Only this artifact; repeatable.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Default: the target's, capped by local cores.")] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Time bound per artifact.")] = 2.0,
    compare: Annotated[bool, typer.Option("--compare", help="Print int8/fp32 and runtime/runtime ratios.")] = False,
    baseline: Annotated[Optional[Path], typer.Option(help="An earlier bench.json: fail on regressions.")] = None,
    threshold: Annotated[float, typer.Option(help="Smallest median slowdown counted as a regression.")] = 0.05,
    profile: Annotated[bool, typer.Option("--profile", help="Per-op profile of each artifact.")] = False,
    fail_on_fallback: Annotated[bool, typer.Option("--fail-on-fallback", help="Fail when an int8 artifact runs "
                                "any op outside int8 kernels / the delegate.")] = False,
    min_delegated: Annotated[Optional[str], typer.Option(help="Fail below this share of int8/delegated ops, "
                             "e.g. 95%.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Run on ssh://[user@]host[:port], adb://SERIAL, or a device "
                      "profile (name or .toml) with an address, instead of here.")] = None,
    ssh_config: Annotated[Optional[Path], typer.Option(help="ssh config file (default: your own).")] = None,
    remote_python: Annotated[Optional[str], typer.Option(help="Python on the device (ssh default: python3).")] = None,
    benchmark_tool: Annotated[Optional[list[str]], typer.Option("--benchmark-tool", help="RUNTIME=PATH of the "
                              "runtime's own benchmark binary for an adb device (onnxruntime_perf_test, "
                              "benchmark_model, executor_runner); repeatable.")] = None,
    setup: Annotated[bool, typer.Option("--setup", help="Install the runtime wheels on the device first, "
                     "(numpy, onnxruntime, ai-edge-litert wheels for its platform, downloaded here) into "
                     "~/.edgeship/site-MACHINE-cpXY there.")] = False,
    format: options.FormatOpt = options.Format.table,
) -> None:
    """Time every artifact of an export on this machine, one method for all runtimes.

    Example: edgeship bench out/mobilenet_v2/android-arm64 --compare --baseline old/bench.json
    """
    from edgeship import api

    with render.Stages(_state["quiet"]) as progress:
        result = api.bench(out_dir, artifacts=artifact, threads=threads, budget_s=seconds, baseline=baseline,
                           threshold=threshold, profile=profile, fail_on_fallback=fail_on_fallback,
                           min_delegated=options.percent("--min-delegated", min_delegated) if min_delegated else None,
                           device=device, ssh_config=ssh_config, remote_python=remote_python, setup=setup,
                           benchmark_tools=options.pairs("--benchmark-tool", benchmark_tool), progress=progress)
    if format is options.Format.json:
        typer.echo(json.dumps({"host": result.host, "rows": result.rows, "ratios": result.ratios,
                               "regressions": result.regressions}, indent=1))
    else:
        render.bench_table(result, out_dir, compare)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
def recipes(format: options.FormatOpt = options.Format.table) -> None:
    """List the built-in quantization recipes (a .toml/.json file with the same keys works too).

    Example: edgeship export m.py:build -t host -c data.npz --recipe int8-percentile
    """
    from edgeship.quantize.recipe import RECIPES

    if format is options.Format.json:
        typer.echo(json.dumps({n: r.to_dict() for n, r in RECIPES.items()}, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("recipe", "scheme", "weights", "activations", "activation ranges", "algorithms")
    for name, r in RECIPES.items():
        weights, activations, ranges = {
            "w4a8": (f"int4 linear, 1 scale / {r.group_size}; int8 conv per channel",
                     "int8 per token, at run time; conv int8 per tensor", r.activation_method),
            "w8a8-dynamic": ("int8 linear, per channel", "int8, at run time", "-"),
            "fp16": ("float16", "float16 (float32 inputs and outputs)", "-"),
        }.get(r.scheme, (f"int8 {r.weight_granularity}", f"int8 {r.activation_granularity}", r.activation_method))
        if r.int16_activations:
            layers = "every layer" if r.int16_activations == ("*",) else ", ".join(r.int16_activations)
            activations = f"int16 per_tensor (symmetric, min/max) in {layers}; else {activations}"
        table.add_row(name, r.scheme, weights, activations, ranges, ", ".join(r.algorithms) or "none")
    Console(width=160).print(table)


@app.command()
def init(path: Annotated[Path, typer.Argument(help="Project file to write.")] = Path("edgeship.toml"),
         force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False) -> None:
    """Write a starter project that builds as written: edgeship.toml, a small model.py and sample
    photos in calibration/ beside it. Replace the model and photos with yours (see model.py).

    Example: edgeship init && edgeship build
    """
    from edgeship import api

    for written in api.init_project(path, force):
        typer.echo(f"wrote {written}")


@app.command()
def build(
    project: Annotated[Path, typer.Option("--project", "-p", help="Project file.")] = Path("edgeship.toml"),
    only: Annotated[Optional[list[str]], typer.Option("--only", help="MODEL or MODEL/TARGET; repeatable.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild cached jobs.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop starting jobs after one fails.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, help="Parallel exports.")] = None,
    format: options.FormatOpt = options.Format.table,
) -> None:
    """Export every model for every target of the project, check budgets, write reports.

    Exit code 0: every job built and met its budgets; 1: a job or a budget failed; 2: usage or
    project-file error. Example: edgeship build --only mobilenet/android-arm64
    """
    from edgeship import api

    def on_event(kind: str, job, name: str) -> None:
        if kind == "start":
            typer.echo(f"… {name}: exporting", err=True)
        else:
            typer.echo(f"{'✓' if job.ok else '✗'} {name}: {job.status} in {job.seconds:.1f} s"
                       + (f" ({job.error})" if job.error else ""), err=True)

    try:
        result = api.build(project, only=only, force=force, fail_fast=fail_fast, workers=jobs, on_event=on_event)
    except ConfigError as exc:  # a project-file or usage problem: exit code 2
        exc.exit_code = 2
        raise
    if format is options.Format.json:
        typer.echo((result.out / "index.json").read_text())
    else:
        render.build_table(result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # typer returns 130 here for Ctrl-C
    except EdgeshipError as exc:
        if _state["debug"]:
            raise
        typer.echo(f"edgeship: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("edgeship: interrupted; no output was written", err=True)
        sys.exit(130)
    except (typer.Abort, typer.Exit) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except Exception as exc:
        # typer's (vendored) click reports usage errors this way; exit code 2
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if code == 130:
        typer.echo("edgeship: interrupted; no output was written", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)
