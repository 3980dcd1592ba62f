"""A language-model export's report: per artifact, one row per evaluation subject (perplexity against
float, its increase, next-token agreement, KL), the subject that lost the most, and greedy generation
against float's."""

from __future__ import annotations

SUBJECT_COLUMNS = ("subject", "float ppl", "ppl", "increase", "top-1 vs float", "KL")
ARTIFACT_COLUMNS = ("artifact", "runtime", "precision", "size", "lost the most", "ppl increase", "top-1 vs float",
                    "greedy = float", "decode tokens/s")


def artifact_rows(manifest: dict) -> list[list[str]]:
    """One row per artifact of a language-model export: its worst subject's scores, greedy agreement and,
    where it was timed, its decode speed (a build report's table)."""
    timed = {row["path"]: row for row in manifest.get("bench", {}).get("rows", [])}
    rows = []
    for a in manifest["artifacts"]:
        worst = a["subjects"][a["worst_subject"]]
        speed = timed.get(a["path"], {}).get("decode_tokens_per_s")
        rows.append([a["path"], a["runtime"], a["precision"], f"{a['size_bytes'] / 1e6:.1f} MB", a["worst_subject"],
                     f"{worst['perplexity_increase'] * 100:+.1f}%", f"{worst['top1_agreement'] * 100:.1f}%",
                     str(a["greedy_equal_prompts"]), "-" if speed is None else f"{speed:.1f}"])
    return rows


def subject_rows(artifact: dict, floats: dict) -> list[list[str]]:
    rows = []
    for name, score in artifact["subjects"].items():
        rows.append([name, f"{floats[name]['float']['perplexity']:.3f}", f"{score['perplexity']:.3f}",
                     f"{score['perplexity_increase'] * 100:+.1f}%", f"{score['top1_agreement'] * 100:.1f}%",
                     f"{score['kl_divergence']:.4f}"])
    return rows


def _table(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def language_report(manifest: dict) -> str:
    weights = manifest["weights"]
    recipe = (f"{weights['quantized_layers']} linear layers {manifest['recipe']['precision']} ({weights['method']}, "
              f"group {weights['group'] or 'per channel'}), embeddings {weights['embeddings']}"
              + (", head tied to them" if weights["tied_head"] else "")) if weights["quantized_layers"] else "float32"
    lines = [f"# {manifest['model']['name']} ({manifest['model']['family']}) for {manifest['target']['name']}", "",
             f"- model: `{manifest['model']['source']}`", f"- recipe: {manifest['recipe']['name']}: {recipe}",
             f"- KV cache: {manifest['max_seq_len']} positions, float", *_budget_lines(manifest.get("budget")), ""]
    for artifact in manifest["artifacts"]:
        lines += [f"## {artifact['path']} ({artifact['runtime']}, {artifact['size_bytes'] / 1e6:.1f} MB)", "",
                  *_table(SUBJECT_COLUMNS, subject_rows(artifact, manifest["subjects"])), "",
                  f"Lost the most: **{artifact['worst_subject']}**. Greedy output equal to float's for the first "
                  f"16 tokens on {artifact['greedy_equal_prompts']} prompts.", ""]
        for g in artifact["generation"]:
            where = "equal throughout" if g["first_divergence"] is None else f"differs from token {g['first_divergence']}"
            if g.get("float_margin_at_divergence") is not None:
                where += f", where float's top two logits are {g['float_margin_at_divergence']:.2f} apart"
                if g.get("float_median_margin") is not None:
                    where += f" (median over the first 16 tokens: {g['float_median_margin']:.2f})"
            lines += [f"- `{g['prompt']}` ({where}; distinct 2-grams {g['distinct_2']:.2f}, float "
                      f"{g['float_distinct_2']:.2f})", f"  - {artifact['runtime']}: {g['text']!r}",
                      f"  - float: {g['float_text']!r}"]
        runner = artifact.get("runner")
        if runner:
            lines += ["", f"Run by `{runner['name']}`: {runner['text']!r} "
                      f"({'the same as' if runner['equals_greedy'] else 'NOT the same as'} the verified greedy text)."]
        lines.append("")
    return "\n".join(lines)


def _budget_lines(budget: dict | None) -> list[str]:
    if not budget:
        return []
    measured = ", ".join(f"{a['path']} {a['ppl_increase'] * 100:+.2f}%" for a in budget.get("artifacts", []))
    return [f"- perplexity budget: at most {budget['max_ppl_increase'] * 100:+g}% on the worst subject; "
            f"{budget['int8_units']} of {budget['units']} layer groups kept int8 "
            f"({len(budget['int8_layers'])} linear layers); measured: {measured}"]
