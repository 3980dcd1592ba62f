"""Check an export's quantized artifacts against the project's budgets: a language model's against
LANGUAGE_BUDGETS, any other's against the rest (a budget that does not apply to the model is skipped)."""

from __future__ import annotations

from dataclasses import dataclass

from edgeship.pipeline.project import LANGUAGE_BUDGETS, Budgets


@dataclass(frozen=True)
class BudgetCheck:
    artifact: str
    runtime: str
    budget: str  # max_size_mb, min_cosine, ..., max_ppl_increase
    limit: float
    value: float | None
    passed: bool

    def describe(self) -> str:
        if self.value is None and self.budget == "min_decode_tps":
            return f"{self.artifact}: {self.budget} {self.limit:g}: not timed"
        if self.value is None:
            return f"{self.artifact}: {self.budget} {self.limit:g}: outputs identical to float"
        over = self.value - self.limit
        verb = "within" if self.passed else ("over by" if self.budget.startswith("max") else "under by")
        return f"{self.artifact}: {self.budget} {self.limit:g}, measured {self.value:.4g} ({verb} {abs(over):.3g})"


def _measure_language(artifact: dict, budget: str, manifest: dict) -> float | None:
    if budget == "max_size_mb":
        return artifact["size_bytes"] / 1e6
    if budget == "max_ppl_increase":
        return max(s["perplexity_increase"] for s in artifact["subjects"].values())
    timed = {row["path"]: row for row in manifest.get("bench", {}).get("rows", [])}
    return timed[artifact["path"]]["decode_tokens_per_s"] if artifact["path"] in timed else None


def _measure(artifact: dict, budget: str) -> float | None:
    acc = artifact["accuracy"]
    return {
        "max_size_mb": artifact["bytes"] / 1e6,
        "min_cosine": acc["cosine"],
        "min_sqnr_db": acc["sqnr_db"],
        "min_top1": acc["top1_agreement"],
        "max_latency_ms": artifact["latency_ms"]["median"],
    }[budget]


def check_budgets(manifest: dict, target: str, budgets: Budgets) -> list[BudgetCheck]:
    checks = []
    language = manifest.get("kind") == "language_model"
    for artifact in manifest["artifacts"]:
        if artifact["precision"] == "fp32":
            continue
        for name, limit in budgets.for_artifact(target, artifact["runtime"]).active().items():
            if language != (name in LANGUAGE_BUDGETS) and name != "max_size_mb":
                continue  # e.g. min_cosine for a language model, max_ppl_increase for an image classifier
            value = _measure_language(artifact, name, manifest) if language else _measure(artifact, name)
            if language and value is None:  # not timed: a failed check that says so
                checks.append(BudgetCheck(artifact["path"], artifact["runtime"], name, limit, None, False))
                continue
            if value is None and name == "min_top1":
                continue  # outputs that are not class scores have no top-1
            if value is None:  # SQNR of identical outputs is infinite
                passed = name == "min_sqnr_db"
            else:
                passed = value <= limit if name.startswith("max") else value >= limit
            checks.append(BudgetCheck(artifact["path"], artifact["runtime"], name, limit, value, passed))
    return checks
