"""A language model's perplexity budget (`--max-ppl-increase`): the int4 decoder's most sensitive layers
kept int8 (quantize/mixed.py) until its worst subject's perplexity increase, measured in PyTorch on the
evaluation windows (with the runtimes' int8 activations), is within the budget; then each runtime's artifact, measured through that runtime,
must be within it too, or the export fails (nothing written) saying by how much and what to do."""

from __future__ import annotations

from edgeship.flows import Progress
from edgeship.flows.quantize import BudgetError

SENSITIVITY_WINDOWS = 8  # calibration windows whose inputs rank the layers


def meet(lm, decoder, calib, subjects: dict, reference: dict, limit: float, runtimes: list[str],
         progress: Progress):
    """The decoder with the fewest int8 units that meets `limit` in PyTorch, and the search's record. With
    ExecuTorch among `runtimes`, the linear layers' inputs are rounded to int8 per token as its XNNPACK
    kernels read them (the coarsest activations of the runtimes; ONNX Runtime's MatMulNBits rounds them per
    block of 32), so the search sees what that artifact will compute."""
    import torch

    from edgeship.metrics.language import LanguageScore, perplexity_increase
    from edgeship.quantize.mixed import meet_budget, per_token_int8_inputs

    windows = calib[:SENSITIVITY_WINDOWS] if calib is not None else next(iter(subjects.values()))
    advance = progress("perplexity budget: int8 layers", 2 + max(1, len(decoder.linears)).bit_length())

    layers = [w.layer for w in decoder.linears] if "executorch" in runtimes else []

    def worst_increase(model) -> float:
        worst = -1.0
        with torch.no_grad(), per_token_int8_inputs(model, layers):
            for name, evaluation in subjects.items():
                score = LanguageScore()
                for window in evaluation:
                    score.add(model(window[None]).logits.float(), window[None])
                worst = max(worst, perplexity_increase(score.result(), reference["scores"][name]))
        return worst

    try:
        return meet_budget(decoder, lm.model, windows, worst_increase, limit, advance)
    except ValueError as exc:
        raise BudgetError(f"--max-ppl-increase {limit * 100:g}% cannot be met: with every linear layer int8 the "
                          f"perplexity rises {float(str(exc)) * 100:.2f}% on the worst subject"
                          + (" (int8 activations per token, as ExecuTorch computes them)" if layers else "")
                          + "; allow more" + (", or export for a target without ExecuTorch" if layers else "")) from exc


def check(artifacts: list[dict], budget: dict) -> list[dict]:
    """Each artifact's measured worst increase against the budget; BudgetError naming those over it."""
    limit = budget["max_ppl_increase"]
    rows = [{"path": a["path"], "worst_subject": a["worst_subject"],
             "ppl_increase": a["subjects"][a["worst_subject"]]["perplexity_increase"]} for a in artifacts]
    over = [r for r in rows if r["ppl_increase"] > limit]
    if over:
        simulated = next(s["ppl_increase"] for s in budget["simulated"] if s["int8_units"] == budget["int8_units"])
        names = "; ".join(f"{r['path']} +{r['ppl_increase'] * 100:.2f}% on {r['worst_subject']}" for r in over)
        raise BudgetError(f"--max-ppl-increase {limit * 100:g}% is not met by {names} (the weights alone, in "
                          f"PyTorch: +{simulated * 100:.2f}% with {budget['int8_units']} of {budget['units']} "
                          "layer groups int8): that runtime's int8 activations add the rest; allow more, or pass "
                          "a lower --max-ppl-increase to keep more layers int8")
    return rows
