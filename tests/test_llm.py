"""The language-model groundwork: text read and cut into token windows, a causal LM folder recognised and
loaded with its own tokenizer, next-token scores against float, and int4 decoder weights computed once
(on a tiny Llama with a tokenizer trained here, saved as a Hugging Face folder)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from edgeship.calibration.text import read_text, token_windows
from edgeship.errors import CalibrationError, ModelLoadError
from edgeship.export.causal_lm import is_causal_lm_source, load_causal_lm
from edgeship.metrics.language import LanguageScore, perplexity_increase
from edgeship.quantize.decoder import block_linears, int4_decoder

TEXT = " ".join(f"the {a} {b} sat on the {c} mat ." for a in ("red", "big", "old", "shy") for b in ("cat", "dog", "owl")
                for c in ("blue", "flat", "warm", "soft", "new")) * 4


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer Llama (width 64, 4 query and 2 key/value heads, tied embeddings) and a byte-level BPE
    tokenizer trained on TEXT, saved as a model folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


def test_text_files(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "first", "id": 1}) + "\n\n" + json.dumps({"body": "second"}) + "\n")
    assert read_text(tmp_path / "a.txt") == "one\ntwo\n"
    assert read_text(tmp_path / "b.jsonl") == "first\n\nsecond"
    (tmp_path / "c.jsonl").write_text(json.dumps({"a": "x", "b": "y"}) + "\n")
    (tmp_path / "d.csv").write_text("x")
    (tmp_path / "e.txt").write_text("  \n")
    for name, message in (("c.jsonl", "c.jsonl:1: no `text` field"), ("d.csv", "unsupported text file"),
                          ("e.txt", "holds no text"), ("missing.txt", "no such text file")):
        with pytest.raises(CalibrationError, match=message):
            read_text(tmp_path / name)


def test_token_windows_are_the_tokenized_text(tiny_lm) -> None:
    _, _, tokenizer = tiny_lm
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    windows = token_windows(tokenizer, TEXT, 16, count=3)
    assert windows.shape == (3, 16) and windows.flatten().tolist() == ids[:48]
    assert token_windows(tokenizer, TEXT, 16).shape[0] == len(ids) // 16
    with pytest.raises(CalibrationError, match="fewer than one window"):
        token_windows(tokenizer, "the cat", 16)


def test_scores_against_float() -> None:
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    uniform = torch.zeros(2, 9, 50)
    score = LanguageScore()
    score.add(uniform, ids)
    assert score.result()["tokens"] == 16 and math.isclose(score.result()["perplexity"], 50.0, rel_tol=1e-6)
    logits = torch.randn(2, 9, 50, generator=torch.Generator().manual_seed(1))
    same, other = LanguageScore(), LanguageScore()
    same.add(logits, ids, logits)
    other.add(logits + torch.randn(2, 9, 50, generator=torch.Generator().manual_seed(2)), ids, logits)
    assert same.result()["top1_agreement"] == 1.0 and same.result()["kl_divergence"] == 0.0
    assert other.result()["top1_agreement"] < 1.0 and other.result()["kl_divergence"] > 0.01
    assert perplexity_increase({"perplexity": 10.5}, {"perplexity": 10.0}) == 0.05


def test_a_model_folder_loads_with_its_tokenizer(tiny_lm, tmp_path) -> None:
    folder, model, tokenizer = tiny_lm
    assert is_causal_lm_source(str(folder)) and not is_causal_lm_source(str(tmp_path))
    lm = load_causal_lm(str(folder))
    assert lm.family == "llama" and lm.max_positions == 128 and lm.name == folder.name
    ids = token_windows(lm.tokenizer, TEXT, 16, count=1)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, model(ids).logits)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())  # weights, but no tokenizer
    for name in ("model.safetensors",):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_causal_lm(str(tmp_path))


def test_another_family_is_named(tmp_path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="is a bert model; .* families llama, qwen2"):
        load_causal_lm(str(tmp_path))


def test_the_end_of_sequence_token_comes_from_the_tokenizer_where_the_config_names_none(tiny_lm, tmp_path) -> None:
    """A Qwen2 config names no end-of-sequence token unless told: the runners stop on the tokenizer's (LiteRT-LM
    refuses a model without one); with none anywhere, one line naming the fix."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder, _, tokenizer = tiny_lm
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    assert config.eos_token_id is None
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "qwen")
    tokenizer.save_pretrained(tmp_path / "qwen")
    lm = load_causal_lm(str(tmp_path / "qwen"))
    eos = tokenizer.convert_tokens_to_ids("</s>")
    assert lm.model.generation_config.eos_token_id == eos and lm.model.config.eos_token_id == eos

    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, eos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "none")
    without = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="<unk>")
    without.save_pretrained(tmp_path / "none")
    with pytest.raises(ModelLoadError, match="names no end-of-sequence token.*set eos_token_id in config.json"):
        load_causal_lm(str(tmp_path / "none"))


def test_int4_decoder_weights(tiny_lm) -> None:
    _, model, tokenizer = tiny_lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = token_windows(tokenizer, TEXT, 32, count=8)
    decoder = int4_decoder(model, group=32, windows=windows[:6])
    quantized, weights, record = decoder.model, decoder.linears, decoder.record
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the float model unchanged
    assert record["method"] == "gptq" and record["tied_head"] and len(weights) == len(block_linears(model)) == 14
    layers = dict(quantized.named_modules())
    for w in weights:  # every weight on its int4 grid: q in [-8, 7] times one scale per 32 inputs
        assert int(w.q.min()) >= -8 and int(w.q.max()) <= 7
        assert torch.equal(layers[w.layer].weight.detach(), w.dequantized())
    rows = quantized.get_input_embeddings().weight.detach()
    steps = rows / (rows.abs().amax(dim=1, keepdim=True) / 127)
    torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)  # int8 per row
    assert torch.equal(decoder.embeddings.dequantized(), rows) and decoder.head is None
    assert quantized.get_output_embeddings().weight is quantized.get_input_embeddings().weight
    rounded_decoder = int4_decoder(model, group=32)
    nearest, plain = rounded_decoder.model, rounded_decoder.record
    assert plain["method"] == "nearest"
    scores = {"gptq": LanguageScore(), "nearest": LanguageScore()}
    with torch.no_grad():  # on held-out windows
        for window in windows[6:]:
            reference = model(window[None]).logits
            scores["gptq"].add(quantized(window[None]).logits, window[None], reference)
            scores["nearest"].add(nearest(window[None]).logits, window[None], reference)
    gptq, rounded = scores["gptq"].result(), scores["nearest"].result()
    assert 0 < gptq["kl_divergence"] < rounded["kl_divergence"] < 1e-3  # measured 1.9e-5 and 1.5e-4
    assert gptq["top1_agreement"] > 0.9


def test_asymmetric_groups_reproduce_a_grid_with_zero_points() -> None:
    """Weights already of the form (q - zero) * scale per group of 32 (an integer zero point) come back
    exactly, offsets a whole number of steps; GPTQ with zero points lowers the calibration error below
    rounding with them."""
    from edgeship.quantize.grid import Int4Weight, gptq_weight, quantize_affine

    generator = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (16, 64), generator=generator).to(torch.int8)
    q[:, ::32], q[:, 1::32] = -8, 7  # each group spans the grid, as when it was rounded from its min and max
    scale, zero = torch.rand(16, 2, generator=generator) + 0.1, torch.randint(-8, 8, (16, 2), generator=generator)
    exact = Int4Weight("w", "w", q, scale, 32, 4, -zero * scale).dequantized()
    def affine(values: tuple) -> Int4Weight:
        return Int4Weight("w", "w", values[0], values[1], 32, 4, values[2])

    again = affine(quantize_affine(exact, 32))
    assert torch.allclose(again.dequantized(), exact, atol=1e-5) and torch.equal(again.q, q)
    assert torch.equal(torch.round(-again.offset / again.scale), zero.float())
    weight = torch.randn(16, 64, generator=generator)
    x = torch.randn(256, 64, generator=generator) @ torch.randn(64, 64, generator=generator)  # correlated inputs
    rounded = affine(quantize_affine(weight, 32))
    gptq = affine(gptq_weight(weight, x.T @ x, 32, asymmetric=True))
    error = {name: float(((x @ (w.dequantized() - weight).T) ** 2).sum()) for name, w in (("rtn", rounded), ("gptq", gptq))}
    assert error["gptq"] < 0.9 * error["rtn"], error
    for w in (rounded, gptq):  # every offset -zero * scale, recomputable exactly from the integer zero
        assert torch.equal(-(w.scale * torch.round(-w.offset / w.scale)), w.offset)


def test_a_layer_already_on_a_grid_with_free_offsets_keeps_it(tiny_lm) -> None:
    """A checkpoint quantized before with free offsets (GGUF's Q4_1: each group min + q * d) keeps its grid:
    moving it to whole-step offsets would round every value a second time. Its layers come back exactly,
    with free offsets; the layers of a model on no grid get whole-step offsets (integer zero points), and so
    does every layer when grids are not kept (`--int4-offsets whole`)."""
    from edgeship.quantize.grid import keeps_its_grid, whole_steps

    _, model, tokenizer = tiny_lm
    generator = torch.Generator().manual_seed(1)
    gridded = copy.deepcopy(model)
    with torch.no_grad():
        for _, linear in block_linears(gridded):  # Q4_1: d = (max - min) / 15, values min + q * d
            blocks = linear.weight.reshape(linear.out_features, -1, 32)
            low, high = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)
            q = torch.randint(0, 16, blocks.shape, generator=generator).float()
            q[..., 0], q[..., 1] = 0, 15
            linear.weight.copy_((low + q * (high - low) / 15).reshape_as(linear.weight))
    windows = token_windows(tokenizer, TEXT, 32, count=4)
    for source, free in ((gridded, True), (model, False)):
        decoder = int4_decoder(source, group=32, windows=windows, asymmetric=True)
        layers = dict(block_linears(source))
        assert decoder.record["free_offset_layers"] == (len(decoder.linears) if free else 0)
        for w in decoder.linears:
            assert keeps_its_grid(layers[w.layer].weight.detach(), 32) is free
            assert whole_steps(w) is not free
            if free:  # GPTQ leaves a weight it can represent exactly as it is
                assert torch.allclose(w.dequantized(), layers[w.layer].weight.detach(), atol=1e-5)
    requantized = int4_decoder(gridded, group=32, windows=windows, asymmetric=True, keep_grids=False)
    assert requantized.record["free_offset_layers"] == 0  # --int4-offsets whole: integer zero points throughout
    assert all(whole_steps(w) for w in requantized.linears)


def test_a_perplexity_budget_keeps_the_fewest_most_sensitive_layers_int8(tiny_lm) -> None:
    from edgeship.quantize.mixed import meet_budget, sensitive_units, with_int8

    _, model, tokenizer = tiny_lm
    windows = token_windows(tokenizer, TEXT, 32, count=8)
    decoder = int4_decoder(model, group=32)  # nearest: int4 loses more than GPTQ, so int8 layers matter
    units = sensitive_units(model, decoder, windows[:2])
    # layers reading one input change together: q, k, v and gate, up in each block; o and down alone
    assert sorted(len(u) for u, _ in units) == [1, 1, 1, 1, 2, 2, 3, 3]
    assert all(u[0].rsplit(".", 1)[0] == n.rsplit(".", 1)[0] for u, _ in units for n in u)
    assert [s for _, s in units] == sorted((s for _, s in units), reverse=True) and units[-1][1] > 0

    def kl(candidate) -> float:  # a measure that only int4's error raises
        score = LanguageScore()
        with torch.no_grad():
            for window in windows[6:]:
                score.add(candidate(window[None]).logits, window[None], model(window[None]).logits)
        return score.result()["kl_divergence"]

    int4_kl = kl(decoder.model)
    assert meet_budget(decoder, model, windows[:2], kl, limit=1.0)[1]["int8_units"] == 0  # int4 meets a loose one
    with pytest.raises(ValueError):  # every layer int8 still differs from float
        meet_budget(decoder, model, windows[:2], kl, limit=0.0)
    all_int8_kl = kl(with_int8(decoder, model, {w.layer for w in decoder.linears}).model)
    assert 0 < all_int8_kl < int4_kl
    limit = (int4_kl + all_int8_kl) / 2
    chosen, record = meet_budget(decoder, model, windows[:2], kl, limit)
    count = record["int8_units"]
    assert 0 < count < len(units) and kl(chosen.model) <= limit
    assert kl(with_int8(decoder, model, {n for u, _ in units[:count - 1] for n in u}).model) > limit  # fewest
    assert record["int8_layers"] == sorted(n for u, _ in units[:count] for n in u) == chosen.record["int8_layers"]
    layers = dict(chosen.model.named_modules())
    for w in chosen.linears:
        if w.layer in record["int8_layers"]:  # int8, one scale per output channel
            assert w.bits == 8 and w.group == w.q.shape[1] and w.offset is None and int(w.q.abs().max()) <= 127
        else:
            assert w.bits == 4 and any(w is v for v in decoder.linears)
        assert torch.equal(layers[w.layer].weight.detach(), w.dequantized())
    assert kl(decoder.model) == int4_kl  # the int4 decoder itself is unchanged


def test_artifacts_over_the_perplexity_budget_fail_the_export() -> None:
    from edgeship.flows.language_budget import check
    from edgeship.flows.quantize import BudgetError

    budget = {"max_ppl_increase": 0.02, "int8_units": 3, "units": 10,
              "simulated": [{"int8_units": 0, "ppl_increase": 0.05}, {"int8_units": 3, "ppl_increase": 0.015}]}

    def artifact(path: str, increase: float) -> dict:
        return {"path": path, "worst_subject": "legal", "subjects": {"legal": {"perplexity_increase": increase}}}

    rows = check([artifact("model.int4.pte", 0.019), artifact("onnxruntime-genai", 0.01)], budget)
    assert [r["ppl_increase"] for r in rows] == [0.019, 0.01]
    with pytest.raises(BudgetError) as error:
        check([artifact("model.int4.pte", 0.031), artifact("onnxruntime-genai", 0.01)], budget)
    message = str(error.value)
    assert "model.int4.pte +3.10% on legal" in message and "onnxruntime-genai" not in message
    assert "+1.50% with 3 of 10" in message


def test_budget_search_sees_per_token_int8_activations() -> None:
    from edgeship.quantize.mixed import per_token_int8_inputs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8))
    seen = []
    x = torch.randn(1, 5, 16) * torch.tensor([1.0, 10.0, 0.1, 3.0, 0.5])[None, :, None]
    with per_token_int8_inputs(model, ["0"]):
        hook = model[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))  # runs after it
        inside = model(x)
        hook.remove()
    outside = model(x)
    assert torch.equal(outside, model[0](x)) and not torch.equal(inside, outside)
    rounded = seen[0]
    for token in range(5):  # each token on its own grid: 255 steps over its range (with 0)
        low, high = min(float(x[0, token].min()), 0.0), max(float(x[0, token].max()), 0.0)
        step = (high - low) / 255
        steps = rounded[0, token] / step
        torch.testing.assert_close(steps, steps.round(), rtol=0, atol=1e-3)
        assert float((rounded[0, token] - x[0, token]).abs().max()) <= step / 2 + 1e-6
