"""How close a language model's next-token predictions are to float, from its logits over the same text
windows: perplexity (teacher-forced), next-token top-1 agreement and the KL divergence to float's
distribution, accumulated window by window so no full-vocabulary logits are kept."""

from __future__ import annotations

import math
import statistics

import torch


class LanguageScore:
    """Feed `add(logits, ids, reference)` once per window ([batch, length, vocab] logits for the ids they
    were computed on; `reference`: float's logits on the same ids, or None); read `result()`."""

    def __init__(self) -> None:
        self.nll = 0.0
        self.tokens = 0
        self.agree = 0
        self.kl = 0.0
        self.compared = 0

    def add(self, logits: torch.Tensor, ids: torch.Tensor, reference: torch.Tensor | None = None) -> None:
        predicted = logits[:, :-1].double().log_softmax(-1)  # position t predicts token t + 1
        targets = ids[:, 1:]
        self.nll -= float(predicted.gather(-1, targets[..., None]).sum())
        self.tokens += targets.numel()
        if reference is not None:
            expected = reference[:, :-1].double().log_softmax(-1)
            self.agree += int((predicted.argmax(-1) == expected.argmax(-1)).sum())
            self.kl += float((expected.exp() * (expected - predicted)).sum())
            self.compared += targets.numel()

    def result(self) -> dict:
        out = {"tokens": self.tokens, "perplexity": round(math.exp(self.nll / self.tokens), 4)}
        if self.compared:
            out |= {"top1_agreement": round(self.agree / self.compared, 4),
                    "kl_divergence": round(self.kl / self.compared, 6)}
        return out


def perplexity_increase(candidate: dict, reference: dict) -> float:
    """The candidate's perplexity above the reference's, as a fraction (0.05: 5% higher)."""
    return round(candidate["perplexity"] / reference["perplexity"] - 1.0, 5)


def first_divergence(tokens: list[int], reference: list[int]) -> int | None:
    """The first position where `tokens` differ from `reference` (None: equal throughout)."""
    for index, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return index
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def distinct(tokens: list[int], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of `tokens` (1.0: no n-gram repeats; low: a loop)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 1.0


def generation_record(prompt: str, tokens: list[int], reference: list[int], checked: int = 16,
                      margins: list[float] | None = None) -> dict:
    """Greedy tokens from one prompt against float's: where they first differ, whether the first
    `checked` agree, and the repetition of each (distinct 2-grams). With float's `margins` (its chosen
    token's logit minus the runner-up's, per token): the margin where they first differ, small where
    float itself nearly chose the other token, and the median margin of the first `checked` tokens to
    compare it with."""
    diverges = first_divergence(tokens, reference)
    margin = margins[diverges] if margins is not None and diverges is not None and diverges < len(margins) else None
    return {"prompt": prompt, "tokens": len(tokens), "first_divergence": diverges,
            f"equal_first_{checked}": diverges is None or diverges >= min(checked, len(reference)),
            "float_margin_at_divergence": margin,
            "float_median_margin": round(statistics.median(margins[:checked]), 4) if margins else None,
            "distinct_2": distinct(tokens), "float_distinct_2": distinct(reference)}
