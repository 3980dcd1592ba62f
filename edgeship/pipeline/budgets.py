"""Check an export's int8 artifacts against the project's budgets."""

from __future__ import annotations

from dataclasses import dataclass

from edgeship.pipeline.project import Budgets


@dataclass(frozen=True)
class BudgetCheck:
    artifact: str
    runtime: str
    budget: str  # max_size_mb, min_cosine, ...
    limit: float
    value: float | None
    passed: bool

    def describe(self) -> str:
        if self.value is None:
            return f"{self.artifact}: {self.budget} {self.limit:g}: outputs identical to float"
        over = self.value - self.limit
        verb = "within" if self.passed else ("over by" if self.budget.startswith("max") else "under by")
        return f"{self.artifact}: {self.budget} {self.limit:g}, measured {self.value:.4g} ({verb} {abs(over):.3g})"


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
    for artifact in manifest["artifacts"]:
        if artifact["precision"] == "fp32":
            continue
        for name, limit in budgets.for_artifact(target, artifact["runtime"]).active().items():
            value = _measure(artifact, name)
            if value is None and name == "min_top1":
                continue  # outputs that are not class scores have no top-1
            if value is None:  # SQNR of identical outputs is infinite
                passed = name == "min_sqnr_db"
            else:
                passed = value <= limit if name.startswith("max") else value >= limit
            checks.append(BudgetCheck(artifact["path"], artifact["runtime"], name, limit, value, passed))
    return checks
