"""The command line's shared option types and the parsers of option values (percentages, number lists,
KEY=VALUE pairs, evaluation subjects)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeship.errors import ConfigError


class Format(str, Enum):
    table = "table"
    json = "json"


TargetOpt = Annotated[str, typer.Option("--target", "-t", help="Device profile name (see `edgeship targets`) "
                                        "or a path to your own profile .toml.")]
CalibrationOpt = Annotated[Path, typer.Option("--calibration", "-c", help="Image folder, .npz (one array per "
                                              "input, first axis = samples) or folder of .npy files.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output root; artifacts go to OUT/<model>/<target>/.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table or json (json prints the manifest).")]
# language models only
MaxSeqLenOpt = Annotated[Optional[int], typer.Option("--max-seq-len", help="Language models: the KV cache's "
                                                     "positions (default: 1024, or the model's limit).")]
MaxPplIncreaseOpt = Annotated[Optional[str], typer.Option("--max-ppl-increase", help="Language models, int4: budget "
                              "on the worst subject's perplexity increase, e.g. 5%; the most sensitive layers stay "
                              "int8 until it holds.")]
Int4OffsetsOpt = Annotated[Optional[str], typer.Option("--int4-offsets", help="Language models, int4: checkpoint "
                           "(default; a checkpoint already on an int4 grid with free offsets, GGUF Q4_1, keeps its "
                           "values exactly) or whole (integer zero points, what the int4 kernels take: smaller, "
                           "faster decoding; such values are rounded again).")]


def percent(flag: str, text: str) -> float:
    try:
        value = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number or a percentage like 0.5%", param_hint=flag)
    if not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"{text!r} must be between 0% and 100%", param_hint=flag)
    return value


def budget(min_cosine: float | None, min_sqnr: float | None, max_drop: str | None) -> dict | None:
    """The export's accuracy budget from its options (None: no budget)."""
    found = {}
    if min_cosine is not None:
        found["cosine"] = min_cosine
    if min_sqnr is not None:
        found["sqnr_db"] = min_sqnr
    if max_drop is not None:
        found["top1_agreement"] = 1.0 - percent("--max-drop", max_drop)
    return found or None


def floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=flag)


def pairs(option: str, values: list[str] | None) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, path = value.partition("=")
        if not sep or not key or not path:
            raise typer.BadParameter(f"{value!r} is not RUNTIME=PATH, e.g. litert=./benchmark_model",
                                     param_hint=option)
        pairs[key] = path
    return pairs


def subjects(values: list[str] | None) -> dict[str, str]:
    """--eval-data NAME=file values (a bare file: named by its stem), one subject each."""
    found = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        name, path = (name, path) if sep else (Path(value).stem, value)
        if not name or not path or name in found:
            raise ConfigError(f"--eval-data {value!r}: give each text as NAME=file.txt with a distinct NAME, e.g. "
                              "--eval-data wiki=test.txt --eval-data code=stdlib.txt")
        found[name] = path
    return found
