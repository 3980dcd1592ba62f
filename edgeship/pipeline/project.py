"""`edgeship.toml`: the models, targets and budgets of an app's build, validated with errors that
point at the file, line and key."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from edgeship.backends import RUNTIMES as RUNTIME_NAMES
from edgeship.errors import ConfigError

PROJECT_FILE = "edgeship.toml"
BUDGET_KEYS = ("max_size_mb", "min_cosine", "min_sqnr_db", "min_top1", "max_latency_ms", "max_ppl_increase",
               "min_decode_tps")
LANGUAGE_BUDGETS = ("max_size_mb", "max_ppl_increase", "min_decode_tps")  # the rest: one forward pass


@dataclass(frozen=True)
class Budget:
    """Limits a quantized artifact must meet; None: not checked. A language model's artifacts are held to
    LANGUAGE_BUDGETS (perplexity increase on the worst subject as a fraction, decode tokens/s timed by
    the build), the others to the rest and max_size_mb."""

    max_size_mb: float | None = None
    min_cosine: float | None = None
    min_sqnr_db: float | None = None
    min_top1: float | None = None
    max_latency_ms: float | None = None
    max_ppl_increase: float | None = None
    min_decode_tps: float | None = None

    def merged(self, other: Budget) -> Budget:
        """`other`'s limits where it sets them, ours elsewhere."""
        return Budget(**{k: getattr(other, k) if getattr(other, k) is not None else getattr(self, k)
                         for k in BUDGET_KEYS})

    def active(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Budgets:
    """Budgets for every artifact, then per target, then per target and runtime (most specific wins)."""

    default: Budget = Budget()
    per_target: dict = field(default_factory=dict)  # target -> Budget
    per_runtime: dict = field(default_factory=dict)  # (target, runtime) -> Budget

    def for_artifact(self, target: str, runtime: str) -> Budget:
        budget = self.default
        if target in self.per_target:
            budget = budget.merged(self.per_target[target])
        if (target, runtime) in self.per_runtime:
            budget = budget.merged(self.per_runtime[(target, runtime)])
        return budget

    def for_language_export(self, target: str) -> tuple[float | None, bool]:
        """What a language model's export for `target` depends on: the perplexity budget its int4 search
        aims at (one set of weights for every runtime: the target's limit), and whether any of its
        artifacts has a min_decode_tps (the build then times them)."""
        own = self.default.merged(self.per_target.get(target, Budget()))
        timed = [own, *(b for (t, _), b in self.per_runtime.items() if t == target)]
        return own.max_ppl_increase, any(b.min_decode_tps is not None for b in timed)

    def merged(self, other: Budgets) -> Budgets:
        targets = {t: self.per_target.get(t, Budget()).merged(b) for t, b in other.per_target.items()}
        runtimes = {k: self.per_runtime.get(k, Budget()).merged(b) for k, b in other.per_runtime.items()}
        return Budgets(self.default.merged(other.default), self.per_target | targets, self.per_runtime | runtimes)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str
    calibration: str
    targets: tuple[str, ...]
    eval_data: str | dict | None = None  # a language model: {subject: text file} too
    recipe: str = "int8"
    inputs: tuple[str, ...] = ()  # extra files (weights, ...) whose content is part of the cache key
    input_shapes: tuple[str, ...] = ()
    input_dtypes: tuple[str, ...] = ()
    budgets: Budgets = Budgets()
    max_seq_len: int | None = None  # a language model's KV cache length (--max-seq-len)
    int4_offsets: str | None = None  # a language model's --int4-offsets


@dataclass(frozen=True)
class Project:
    path: Path
    root: Path
    out: Path
    cache: Path
    jobs: int | None
    models: tuple[ModelEntry, ...]

    def matrix(self) -> list[tuple[ModelEntry, str]]:
        return [(m, t) for m in self.models for t in m.targets]


_PROJECT_KEYS = {"out", "cache", "jobs", "targets"}
_MODEL_KEYS = {"source", "calibration", "eval_data", "recipe", "inputs", "targets", "input_shapes",
               "input_dtypes", "budgets", "max_seq_len", "int4_offsets"}


class _Where:
    """Finds the line of a table or key in the project file's text, for error messages."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.lines = path, text.splitlines()

    def __call__(self, table: tuple[str, ...], key: str | None = None) -> str:
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(
            rf"(?:{re.escape(p)}|\"{re.escape(p)}\")" for p in table) + r"\s*\]\s*(#.*)?$")
        start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
        if key is None:
            return f"{self.path}:{start + 1}" if start is not None else str(self.path)
        key_re = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*=")
        begin = (start + 1) if start is not None else 0
        for i in range(begin, len(self.lines)):
            if i > begin and start is not None and self.lines[i].lstrip().startswith("["):
                break
            if key_re.match(self.lines[i]):
                return f"{self.path}:{i + 1}"
        return f"{self.path}:{start + 1}" if start is not None else str(self.path)


def load_project(path: str | Path = PROJECT_FILE) -> Project:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no project file; create one with `edgeship init`")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from exc
    where = _Where(path, text)
    _unknown(where, (), data, {"project", "models", "budgets"})
    proj = _table(where, ("project",), data.get("project", {}))
    _unknown(where, ("project",), proj, _PROJECT_KEYS)
    root = path.resolve().parent
    default_targets = _strings(where, ("project",), "targets", proj.get("targets", []))
    budgets = _budgets(where, ("budgets",), data.get("budgets", {}))
    models_table = _table(where, ("models",), data.get("models", {}))
    if not models_table:
        raise ConfigError(f"{where(('project',))}: the project declares no models; add a [models.NAME] table "
                          "with source and calibration")
    models = tuple(_model(where, name, _table(where, ("models", name), body), default_targets, budgets)
                   for name, body in models_table.items())
    jobs = proj.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"{where(('project',), 'jobs')}: [project] jobs must be a positive integer")
    return Project(path, root, root / str(proj.get("out", "build")), root / str(proj.get("cache", ".edgeship-cache")),
                   jobs, models)


def _model(where, name: str, body: dict, default_targets, budgets: Budgets) -> ModelEntry:
    table = ("models", name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where(table)}: model name {name!r} may hold only letters, digits, '.', '_' and '-'")
    _unknown(where, table, body, _MODEL_KEYS)
    for key in ("source", "calibration"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ConfigError(f"{where(table)}: [models.{name}] needs {key} = \"...\"")
    targets = _strings(where, table, "targets", body.get("targets", default_targets))
    if not targets:
        raise ConfigError(f"{where(table)}: [models.{name}] has no targets; set targets here or in [project]")
    from edgeship.targets.devices import builtin_names

    declared = table if "targets" in body else ("project",)
    for t in targets:
        if not t.endswith(".toml") and t not in builtin_names():
            raise ConfigError(f"{where(declared, 'targets')}: unknown target {t!r}; known targets: "
                              f"{', '.join(builtin_names())}")
    from edgeship.quantize.recipe import RECIPES

    recipe = body.get("recipe", "int8")
    if recipe not in RECIPES and not str(recipe).endswith((".toml", ".json")):
        raise ConfigError(f"{where(table, 'recipe')}: unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    own = _budgets(where, (*table, "budgets"), body.get("budgets", {}))
    return ModelEntry(name, body["source"], body["calibration"], tuple(targets), _eval_data(where, table, body),
                      recipe,
                      tuple(_strings(where, table, "inputs", body.get("inputs", []))),
                      tuple(_strings(where, table, "input_shapes", body.get("input_shapes", []))),
                      tuple(_strings(where, table, "input_dtypes", body.get("input_dtypes", []))),
                      budgets.merged(own), *_language_options(where, table, body))


def _language_options(where, table: tuple[str, ...], body: dict) -> tuple[int | None, str | None]:
    """A language model's max_seq_len (a whole number of positions) and int4_offsets (checkpoint or whole)."""
    from edgeship.flows.language import INT4_OFFSETS, MIN_SEQ_LEN

    length, offsets = body.get("max_seq_len"), body.get("int4_offsets")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < MIN_SEQ_LEN):
        raise ConfigError(f"{where(table, 'max_seq_len')}: max_seq_len is a language model's KV cache length, a "
                          f"whole number of positions of {MIN_SEQ_LEN} or more; got {length!r}")
    if offsets is not None and offsets not in INT4_OFFSETS:
        raise ConfigError(f"{where(table, 'int4_offsets')}: int4_offsets must be one of {', '.join(INT4_OFFSETS)}; "
                          f"got {offsets!r}")
    return length, offsets


def _eval_data(where, table: tuple[str, ...], body: dict) -> str | dict | None:
    """eval_data = "file" or (a language model's subjects) a table {subject = "file"}."""
    value = body.get("eval_data")
    if value is None or (isinstance(value, str) and value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, str) and v for v in value.values()):
        return dict(value)
    raise ConfigError(f"{where(table, 'eval_data')}: eval_data must be a file name, or for a language model a table "
                      f"of subjects and text files like {{ wiki = \"wiki.txt\", code = \"code.txt\" }}; got {value!r}")


def _budgets(where, table: tuple[str, ...], body: dict) -> Budgets:
    body = _table(where, table, body)
    default = _budget(where, table, {k: v for k, v in body.items() if not isinstance(v, dict)})
    per_target, per_runtime = {}, {}
    for target, sub in body.items():
        if not isinstance(sub, dict):
            continue
        scalars = {k: v for k, v in sub.items() if not isinstance(v, dict)}
        per_target[target] = _budget(where, (*table, target), scalars)
        for runtime, limits in sub.items():
            if not isinstance(limits, dict):
                continue
            if runtime not in RUNTIME_NAMES:
                raise ConfigError(f"{where((*table, target, runtime))}: {runtime!r} is not a runtime; use one of "
                                  f"{', '.join(RUNTIME_NAMES)}")
            per_runtime[(target, runtime)] = _budget(where, (*table, target, runtime), limits)
    return Budgets(default, per_target, per_runtime)


def _budget(where, table, body: dict) -> Budget:
    _unknown(where, table, body, set(BUDGET_KEYS))
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where(table, key)}: budget {key} must be a number, got {value!r}")
        if key == "max_ppl_increase" and not 0 <= value <= 1:
            raise ConfigError(f"{where(table, key)}: max_ppl_increase is a fraction of the float perplexity "
                              f"(0.05 for 5%), got {value!r}")
    return Budget(**{k: float(v) for k, v in body.items()})


def _unknown(where, table: tuple[str, ...], body: dict, valid: set[str]) -> None:
    for key in body:
        if key not in valid:
            name = f"[{'.'.join(table)}] " if table else ""
            raise ConfigError(f"{where(table, key)}: {name}unknown key {key!r}; valid keys: {', '.join(sorted(valid))}")


def _table(where, table: tuple[str, ...], value) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where(table[:-1], table[-1])}: {'.'.join(table)} must be a table")
    return value


def _strings(where, table, key: str, value) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where(table, key)}: {key} must be a list of strings, got {value!r}")
    return list(value)


STARTER_FOLDER = Path(__file__).resolve().parent / "starter"  # edgeship.toml, model.py, calibration/
STARTER = (STARTER_FOLDER / "edgeship.toml").read_text()
