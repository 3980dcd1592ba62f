"""A causal language model exported end to end through the README's command: int4 decoder weights by GPTQ
on calibration text, an ExecuTorch .pte with a KV cache run by the Module API and by ExecuTorch's own LLM
runner, verified per subject against float; `edgeship generate`; and the bad inputs. On a 2-layer Llama
with a byte-level BPE tokenizer trained here (the form ExecuTorch's runner reads), saved as a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, runtime_profile
from test_ssh_device import SSHD, ssh_host  # noqa: F401  (the fixture: a real OpenSSH server on 127.0.0.1)

from edgeship.metrics.language import distinct, first_divergence, generation_record

pytestmark = pytest.mark.xdist_group("test_llm_export")  # one worker builds the module's export once

TEXT = " ".join(f"the {a} {b} sat on the {c} mat ." for a in ("red", "big", "old", "shy") for b in ("cat", "dog", "owl")
                for c in ("blue", "flat", "warm", "soft", "new")) * 4
LENGTH = 64
SHIPPED = ["manifest.json", "model.int4.litertlm", "model.int4.ptd", "model.int4.pte", "onnxruntime-genai", "report.md",
           "tokenizer"]


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    root = tmp_path_factory.mktemp("lm")
    LlamaForCausalLM(config).eval().save_pretrained(root / "tiny-llama")
    tokenizer.save_pretrained(root / "tiny-llama")
    (root / "calibration.txt").write_text(TEXT)
    (root / "reversed.txt").write_text(TEXT[::-1])
    return root


@pytest.fixture(scope="module")
def exported(lm_folder: Path, tmp_path_factory):
    """The README's command on the tiny model: int4, two evaluation subjects, a 64-position KV cache."""
    out = tmp_path_factory.mktemp("out")
    code = subprocess.run(
        [sys.executable, "-m", "edgeship", "export", str(lm_folder / "tiny-llama"), "--target", "host",
         "--recipe", "int4", "--calibration", str(lm_folder / "calibration.txt"), "--eval-data",
         f"forward={lm_folder / 'calibration.txt'}", "--eval-data", f"reversed={lm_folder / 'reversed.txt'}",
         "--max-seq-len", str(LENGTH), "--out", str(out), "--format", "json"], capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    folder = out / "tiny-llama" / "host"
    return folder, json.loads(code.stdout)


def test_the_manifest_records_the_weights_every_artifact_holds(exported, lm_folder: Path) -> None:
    from edgeship.calibration.text import read_text, token_windows
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.flows.language import _encodings
    from edgeship.quantize.decoder import int4_decoder

    folder, manifest = exported
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert sorted(p.name for p in folder.iterdir()) == SHIPPED  # no runtime's cache left beside the artifacts
    lm = load_causal_lm(str(lm_folder / "tiny-llama"))
    windows = token_windows(lm.tokenizer, read_text(lm_folder / "calibration.txt"), LENGTH, 32)
    assert manifest["recipe"]["asymmetric"] is True  # every runtime takes the offsets (LiteRT as a layer beside)
    again = int4_decoder(lm.model, 32, windows, asymmetric=True)
    assert manifest["weights"]["encodings"] == _encodings(again)
    assert manifest["weights"]["method"] == "gptq" and manifest["weights"]["quantized_layers"] == 14
    assert {k: manifest["calibration"][k] for k in ("windows", "tokens")} == {"windows": len(windows),
                                                                           "tokens": windows.numel()}


def test_exporting_again_for_another_target_runs_no_gptq(exported, lm_folder: Path, tmp_path: Path) -> None:
    """GPTQ's weights are kept beside the model's exports: a second export of the model on the same text
    (for another target) takes them and runs no window; another calibration text is another key."""
    from edgeship import api

    folder, manifest = exported
    stats = manifest["calibration"]["statistics"]
    assert stats["reused"] == [] and Path(stats["file"]).parent == folder.parent / ".calibration"
    runtime_profile(tmp_path / "genai-only.toml", "host", ("onnxruntime",))
    stages = []

    def progress(stage: str, total: int):
        stages.append((stage, total))
        return lambda n: None

    again = api.export_language(str(lm_folder / "tiny-llama"), str(tmp_path / "genai-only.toml"),
                                lm_folder / "calibration.txt", eval_data={"forward": lm_folder / "calibration.txt"},
                                out=folder.parents[1], max_seq_len=LENGTH, progress=progress).manifest
    assert again["calibration"]["statistics"] == {"file": stats["file"], "reused": ["gptq"]}
    assert again["weights"]["encodings"] == manifest["weights"]["encodings"]
    assert ("int4 weights (GPTQ) from the kept statistics", 1) in stages
    other = tmp_path / "other.txt"
    other.write_text((lm_folder / "reversed.txt").read_text())
    fresh = api.export_language(str(lm_folder / "tiny-llama"), str(tmp_path / "genai-only.toml"), other,
                                eval_data={"forward": lm_folder / "calibration.txt"}, out=folder.parents[1],
                                max_seq_len=LENGTH).manifest
    assert fresh["calibration"]["statistics"]["reused"] == []
    assert fresh["calibration"]["statistics"]["file"] != stats["file"]


def test_kept_gptq_weights_are_the_weights_gptq_chose() -> None:
    """The kept form of int4 layers (values two to a byte, offsets free or whole) gives them back exactly,
    and layers of another model are not taken from it."""
    from edgeship.quantize.decoder import _replayed, _stored
    from edgeship.quantize.grid import Int4Weight, quantize_affine

    torch.manual_seed(0)
    linears = [(f"l{i}", torch.nn.Linear(64, rows, bias=False)) for i, rows in enumerate((16, 8))]
    weights = []
    for name, module in linears:
        q, scale, offset = quantize_affine(module.weight.detach(), 32)
        weights.append(Int4Weight(name, "weight", q, scale, 32, 4, offset))
    with torch.no_grad():
        replayed = _replayed(linears, [_stored(w) for w in weights])
    for w, r in zip(weights, replayed):
        assert torch.equal(w.q, r.q) and torch.equal(w.scale, r.scale) and torch.equal(w.offset, r.offset)
        assert torch.equal(dict(linears)[w.layer].weight.detach(), w.dequantized())
    assert _replayed(linears[::-1], [_stored(w) for w in weights]) is None


def test_the_pte_computes_the_integer_model_with_its_kv_cache(exported, lm_folder: Path) -> None:
    """The .pte's logits, teacher-forced and step by step over its KV cache, against the same integer
    weights (and per-token int8 activations) in PyTorch."""
    from edgeship.backends.executorch.decoder import DecoderSession, export_decoder, with_integer_weights
    from edgeship.calibration.text import read_text, token_windows
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.quantize.decoder import int4_decoder

    folder, manifest = exported
    lm = load_causal_lm(str(lm_folder / "tiny-llama"))
    windows = token_windows(lm.tokenizer, read_text(lm_folder / "calibration.txt"), LENGTH, 32)
    decoder = int4_decoder(lm.model, 32, windows, asymmetric=True)
    integer = with_integer_weights(decoder)
    tokens = windows[1, :40].tolist()
    with torch.no_grad():
        expected = integer(torch.tensor([tokens])).logits[0]
        quantization = float((lm.model(torch.tensor([tokens])).logits[0] - expected).pow(2).mean().sqrt())
    session = DecoderSession(folder / _artifact(manifest, "executorch")["path"])
    whole = session.logits(tokens)
    stepped = torch.cat([session.step(tokens[:30], 0), *(session.step([t], 30 + i) for i, t in enumerate(tokens[30:]))])
    spread = float(expected.std())
    for got in (whole, stepped):  # off by rounding in the kernels: far less than int4 is off float
        assert float((got - expected).abs().max()) < 0.05 * spread
        assert float((got - expected).pow(2).mean().sqrt()) < 0.35 * quantization
        assert bool((got.argmax(-1) == expected.argmax(-1)).all())
    assert session.max_seq_len == LENGTH
    program = export_decoder(integer, LENGTH)  # one product of group sums per input (q, k, v read one)
    assert len([n for n in program.graph.nodes if n.target is torch.ops.aten.linear.default
                and n.args[1].name.endswith("sums")]) == 4 * lm.model.config.num_hidden_layers
    artifact = _artifact(manifest, "executorch")  # the tied head's int8 table: stored once, in the .ptd
    pte, ptd = (folder / artifact["path"]).read_bytes(), (folder / artifact["data"]).read_bytes()
    table = decoder.embeddings.q.numpy().tobytes()
    assert (pte.count(table), ptd.count(table)) == (0, 1)
    assert artifact["size_bytes"] == len(pte) + len(ptd)


def test_the_genai_model_computes_the_integer_model(exported, lm_folder: Path) -> None:
    """The ONNX Runtime GenAI folder: every linear layer MatMulNBits with the int4 values (the head int8),
    its logits through onnxruntime_genai against the same weights in PyTorch."""
    import onnx

    from edgeship.backends.onnxruntime.genai import GenaiSession
    from edgeship.calibration.text import read_text, token_windows
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.quantize.decoder import int4_decoder

    folder, manifest = exported
    artifact = _artifact(manifest, "onnxruntime")
    graph = onnx.load(str(folder / artifact["path"] / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert not [n for n in graph.node if n.op_type == "MatMul"]  # the offsets are MatMulNBits' zero points
    assert sum(len(n.input) == 4 for n in graph.node if n.op_type == "MatMulNBits") == artifact["matmul_nbits"]
    assert ops.count("GatherBlockQuantized") == 1
    assert not [n for n in graph.node if n.op_type == "Gather" and "input_ids" in n.input]
    assert ops.count("MatMulNBits") == artifact["matmul_nbits"] + 1 and artifact["float_matmuls"] == []
    lm = load_causal_lm(str(lm_folder / "tiny-llama"))
    windows = token_windows(lm.tokenizer, read_text(lm_folder / "calibration.txt"), LENGTH, 32)
    decoder = int4_decoder(lm.model, 32, windows, asymmetric=True)
    tokens = windows[1, :40].tolist()
    with torch.no_grad():
        expected = decoder.model(torch.tensor([tokens])).logits[0]
        quantization = float((lm.model(torch.tensor([tokens])).logits[0] - expected).pow(2).mean().sqrt())
    got = GenaiSession(folder / artifact["path"]).logits(tokens)
    assert float((got - expected).pow(2).mean().sqrt()) < 0.35 * quantization
    assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) >= 0.95


def test_a_float16_grid_is_stored_as_float16_with_the_same_values() -> None:
    """A checkpoint's grid with float16 parameters (GGUF's Q4_1: each group's scale and minimum float16):
    the ONNX Runtime model stores its scales and offsets as float16 (the offsets as the minimums) and computes
    the same outputs bit for bit; scales that float16 would round stay float32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgeship.backends.onnxruntime.genai import _affine, _packed
    from edgeship.backends.onnxruntime.half import widened
    from edgeship.quantize.grid import Int4Weight

    rng = np.random.default_rng(0)
    q = torch.tensor(rng.integers(-8, 8, (48, 64)), dtype=torch.int8)
    scale = torch.tensor(rng.uniform(0.01, 0.1, (48, 2)).astype(np.float16).astype(np.float32))
    minimum = torch.tensor(rng.uniform(-1, 0, (48, 2)).astype(np.float16).astype(np.float32))
    x = rng.standard_normal((1, 3, 64)).astype(np.float32)  # [batch, tokens, channels], as the decoder's

    def run(w: Int4Weight, widen: bool):
        graph = helper.make_graph([], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 48])])
        packed, scales, block = _packed(w)
        graph.initializer.extend([numpy_helper.from_array(packed, "l.B"), numpy_helper.from_array(scales, "l.scales")])
        nodes = _affine(graph, helper.make_node("MatMul", ["x", "W"], ["y"], name="l"), "l", w, block)
        graph.node.extend((widened(graph) if widen else []) + nodes)
        model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                          helper.make_opsetid("com.microsoft", 1)])
        stored = {i.name: i.data_type for i in graph.initializer}
        return ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], stored

    on_grid = Int4Weight("l", "l.weight", q, scale, 32, 4, minimum + 8 * scale)
    before, _ = run(on_grid, False)
    after, stored = run(on_grid, True)
    assert np.array_equal(before, after)
    assert stored["l.scales.f16"] == stored["l.offsets.minimum.f16"] == TensorProto.FLOAT16
    assert "l.scales" not in stored and "l.offsets" not in stored
    rounded = Int4Weight("l", "l.weight", q, scale * 1.0001, 32, 4, minimum + 8 * scale)
    assert run(rounded, True)[1] == run(rounded, False)[1] == {"l.B": TensorProto.UINT8, "l.scales": TensorProto.FLOAT,
                                                                 "l.offsets": TensorProto.FLOAT, "l.groups_shape": 7,
                                                                 "l.last_axis": 7}


def test_the_litertlm_computes_the_integer_model(exported, lm_folder: Path, tmp_path: Path) -> None:
    """The .litertlm's model: every linear layer and the embeddings the integer values (int4 block-wise,
    int8 rows), its logits through the LiteRT interpreter against the same weights in PyTorch."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    from edgeship.backends.litert.decoder import DecoderSession, unpacked_tflite
    from edgeship.backends.litert.int4 import unpack
    from edgeship.calibration.text import read_text, token_windows
    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.quantize.decoder import int4_decoder

    folder, manifest = exported
    artifact = _artifact(manifest, "litert")
    tflite = unpacked_tflite(folder / artifact["path"], tmp_path)
    lm = load_causal_lm(str(lm_folder / "tiny-llama"))
    windows = token_windows(lm.tokenizer, read_text(lm_folder / "calibration.txt"), LENGTH, 32)
    decoder = int4_decoder(lm.model, 32, windows, asymmetric=True)
    model = flatbuffer_utils.read_model(str(tflite))
    int4 = {np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes() for g in model.subgraphs
            for t in g.tensors if t.type == schema.TensorType.INT4}
    assert {unpack(np.frombuffer(b, np.uint8), w.q.shape).tobytes() for b in int4 for w in decoder.linears
            if len(b) * 2 == w.q.numel()} == {w.q.numpy().astype(np.int8).tobytes() for w in decoder.linears}
    assert not [t for g in model.subgraphs for t in g.tensors if t.type == schema.TensorType.FLOAT32
                and model.buffers[t.buffer].data is not None and len(t.shape) == 2 and min(t.shape) >= 32]
    offsets = {np.asarray(model.buffers[t.buffer].data, np.uint8).tobytes() for g in model.subgraphs
               for t in g.tensors if t.type == schema.TensorType.FLOAT16 and b"_offsets16" in t.name}
    assert offsets == {w.offset.numpy().astype(np.float16).tobytes() for w in decoder.linears}
    for graph in model.subgraphs:  # one block sum per input the int4 layers read: q, k and v share one
        reads = [op.inputs[0] for op in graph.operators if b"_int4_part" in graph.tensors[op.outputs[0]].name]
        sums = [t for t in graph.tensors if b"_block_sums" in t.name]
        assert len(sums) == len(set(reads)) < len(reads)
        if graph.name == b"decode":  # each layer: q/k/v's input, o's, gate/up's, down's
            assert len(sums) == 4 * lm.model.config.num_hidden_layers
    tokens = windows[1, :40].tolist()
    with torch.no_grad():
        expected = decoder.model(torch.tensor([tokens])).logits[0]
        quantization = float((lm.model(torch.tensor([tokens])).logits[0] - expected).pow(2).mean().sqrt())
    session = DecoderSession(tflite)
    got = session.logits(tokens)
    assert float((got - expected).pow(2).mean().sqrt()) < 0.35 * quantization
    assert float((got.argmax(-1) == expected.argmax(-1)).float().mean()) >= 0.95
    assert session.max_seq_len == LENGTH and artifact["integer_layers"] == len(decoder.all_weights())


def test_the_litert_session_keeps_the_cache_as_the_signature_runner_passes_it(exported, tmp_path: Path) -> None:
    """The LiteRT session's cache, copied in place inside the interpreter, gives the logits that passing every
    layer's cache out and back in through the decode signature runner gives, bit for bit."""
    from ai_edge_litert.interpreter import Interpreter

    from edgeship.backends.litert.decoder import DecoderSession, unpacked_tflite

    folder, manifest = exported
    tflite = unpacked_tflite(folder / _artifact(manifest, "litert")["path"], tmp_path)
    decode = Interpreter(model_path=str(tflite)).get_signature_runner("decode")
    inputs = decode.get_input_details()
    state = {n: np.zeros(d["shape"], d["dtype"]) for n, d in inputs.items() if n.startswith("kv_cache")}
    tokens, expected = [5, 17, 9, 30, 12, 7], []
    for position, token in enumerate(tokens):
        mask = np.full(inputs["mask"]["shape"], -np.inf, np.float32)
        mask[..., :position + 1] = 0.0
        out = decode(tokens=np.array([[token]], np.int32), input_pos=np.array([position], np.int32), mask=mask,
                     **state)
        state = {n: out[n] for n in state}
        expected.append(out["logits"].reshape(-1))
    session = DecoderSession(tflite)
    assert np.array_equal(session.logits(tokens).numpy(), np.stack(expected))
    assert np.array_equal(session.logits(tokens[:3]).numpy(), np.stack(expected[:3]))  # a new sequence resets it


def _artifact(manifest: dict, runtime: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["runtime"] == runtime)


def test_scores_per_subject_are_measured_against_float(exported, lm_folder: Path) -> None:
    from edgeship.export.causal_lm import load_causal_lm

    _, manifest = exported
    lm = load_causal_lm(str(lm_folder / "tiny-llama"))
    assert sorted(a["runtime"] for a in manifest["artifacts"]) == ["executorch", "litert", "onnxruntime"]
    for artifact in manifest["artifacts"]:
        _subjects_against_float(artifact, manifest, lm, lm_folder)


def _subjects_against_float(artifact: dict, manifest: dict, lm, lm_folder: Path) -> None:
    from edgeship.calibration.text import read_text, token_windows
    from edgeship.metrics.language import LanguageScore

    assert set(artifact["subjects"]) == set(manifest["subjects"]) == {"forward", "reversed"}
    for name, path in (("forward", "calibration.txt"), ("reversed", "reversed.txt")):
        windows = token_windows(lm.tokenizer, read_text(lm_folder / path), LENGTH - 1, 8)
        score = LanguageScore()
        with torch.no_grad():
            for window in windows:
                score.add(lm.model(window[None]).logits, window[None])
        assert manifest["subjects"][name]["float"]["perplexity"] == pytest.approx(score.result()["perplexity"], rel=1e-4)
        got = artifact["subjects"][name]
        assert got["tokens"] == score.result()["tokens"]
        assert got["perplexity_increase"] == pytest.approx(got["perplexity"] / score.result()["perplexity"] - 1,
                                                           abs=1e-3)
    worst = max(artifact["subjects"], key=lambda n: artifact["subjects"][n]["perplexity_increase"])
    assert artifact["worst_subject"] == worst


def test_generation_is_checked_against_float_and_by_the_runtime_runner(exported, lm_folder: Path) -> None:
    from transformers import AutoTokenizer

    folder, manifest = exported
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    report = (folder / "report.md").read_text()
    for artifact in manifest["artifacts"]:
        for record in artifact["generation"]:
            prompt = tokenizer(record["prompt"])["input_ids"]
            assert record["tokens"] == min(32, LENGTH - len(prompt))
            margin = record["float_margin_at_divergence"]
            assert (margin is None) == (record["first_divergence"] is None or record["first_divergence"] >= 32)
            assert margin is None or 0 <= margin
            assert record["float_median_margin"] > 0  # float's margins over the first 16 tokens, always recorded
        assert artifact["runner"]["equals_greedy"], artifact["runner"]
        assert artifact["runner"]["text"] == artifact["generation"][0]["text"]
        assert f"Lost the most: **{artifact['worst_subject']}**" in report
    assert "| reversed |" in report


def test_generate_streams_from_the_runner(exported) -> None:
    from edgeship import api

    folder, manifest = exported
    for runtime in ("executorch", "onnxruntime", "litert"):
        result = api.generate(folder, "the red cat", runtime=runtime, max_new_tokens=8)
        assert result.tokens == 8
        shown = subprocess.run([sys.executable, "-m", "edgeship", "generate", str(folder), "--prompt", "the red cat",
                                "--runtime", runtime, "--max-new-tokens", "8"], capture_output=True, text=True)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.strip() == result.text.strip() and result.text.strip()


def test_the_executorch_runner_text_is_read_as_the_bytes_it_prints(tmp_path: Path) -> None:
    """ExecuTorch's runner prints each piece, a byte-level tokenizer's piece can end inside a character (its
    Python token callback then raises), then a newline and its statistics: the text is the bytes before them,
    a character split across pieces whole again, streamed as it comes."""
    import os

    from edgeship.backends.executorch.decoder import _Printed

    read_fd, write_fd = os.pipe()
    shown = os.open(tmp_path / "shown", os.O_WRONLY | os.O_CREAT)
    printed = _Printed(read_fd, shown)
    for piece in (b"caf", b"\xc3", b"\xa9 ok\n", b"\xe2\x82", b"\xac \xff", b"\n", b'PyTorchObserver {"a":1}\n'):
        os.write(write_fd, piece)
    os.close(write_fd)
    printed.close()
    os.close(shown)
    assert printed.text == "caf\u00e9 ok\n\u20ac \ufffd"
    assert (tmp_path / "shown").read_text() == printed.text


def test_generation_records() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 4], [1, 2, 3]) == 2
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert distinct([5, 5, 5, 5]) == pytest.approx(1 / 3, abs=1e-4) and distinct([1, 2, 3, 4]) == 1.0
    record = generation_record("p", [1, 2, 3, 9] + [0] * 16, [1, 2, 3, 4] + [0] * 16)
    assert record["first_divergence"] == 3 and not record["equal_first_16"]
    assert record["float_margin_at_divergence"] is None  # no margins given
    assert generation_record("p", [7] * 20, [7] * 16 + [1] * 4)["equal_first_16"]
    margins = [float(i) for i in range(20)]
    assert generation_record("p", [1, 2, 3, 9], [1, 2, 3, 4], margins=margins)["float_margin_at_divergence"] == 3.0
    assert generation_record("p", [1, 2, 3, 9], [1, 2, 3, 4], margins=margins)["float_median_margin"] == 7.5  # 0..15
    assert generation_record("p", [1, 2, 3, 9], [1, 2, 3, 4])["float_median_margin"] is None
    assert generation_record("p", [1, 2], [1, 2], margins=margins)["float_margin_at_divergence"] is None


def test_float_margins_are_the_gap_between_its_top_two_logits(lm_folder: Path) -> None:
    """Each greedy token's margin is its logit minus the runner-up's, recomputed here from a full forward
    pass over the prompt and the tokens before it."""
    import torch

    from edgeship.export.causal_lm import load_causal_lm
    from edgeship.flows.language import _float_greedy

    lm = load_causal_lm(str(lm_folder / "tiny-llama"))
    ids = list(lm.tokenizer("The capital of France is")["input_ids"])
    tokens, margins = _float_greedy(lm, ids, 64)
    assert len(tokens) == len(margins) == 32
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1].float()
    logits[:, lm.tokenizer.eos_token_id] = -torch.inf  # generation may not end before its 32 tokens
    top = logits.topk(2, -1)
    assert top.indices[:, 0].tolist() == tokens
    torch.testing.assert_close(torch.tensor(margins), top.values[:, 0] - top.values[:, 1], atol=2e-3, rtol=1e-3)


def _bad(monkeypatch, capsys, tmp_path: Path, model: str, calibration: Path, *extra: str):
    out = tmp_path / "out"
    code, _, err = run_cli(["export", model, "--target", "host", "--calibration", str(calibration),
                            "--out", str(out), *extra], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip() and " ... " not in line]
    assert code == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))
    return lines[0]


def test_bad_language_model_inputs(lm_folder: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import shutil

    from transformers import BertConfig

    text = lm_folder / "calibration.txt"
    model = str(lm_folder / "tiny-llama")
    assert "longer than the model's 128 positions" in _bad(monkeypatch, capsys, tmp_path, model, text,
                                                           "--max-seq-len", "4096")
    assert "does not apply to a language model" in _bad(monkeypatch, capsys, tmp_path, model, text,
                                                        "--recipe", "int8-percentile")
    assert "NAME=file.txt" in _bad(monkeypatch, capsys, tmp_path, model, text, "--eval-data", "=x.txt")
    assert "no such text file" in _bad(monkeypatch, capsys, tmp_path, model, tmp_path / "missing.txt")
    assert "has no int4 layers" in _bad(monkeypatch, capsys, tmp_path, model, text, "--recipe", "int8",
                                        "--max-ppl-increase", "5%")
    assert "is not one of checkpoint, whole" in _bad(monkeypatch, capsys, tmp_path, model, text,
                                                     "--int4-offsets", "free")
    assert "--int4-offsets is for int4 recipes" in _bad(monkeypatch, capsys, tmp_path, model, text, "--recipe", "int8",
                                                        "--int4-offsets", "whole")
    conv = f"{Path(__file__).parent / 'models.py'}:tiny_conv_net"
    assert "--max-ppl-increase is for causal language models" in _bad(monkeypatch, capsys, tmp_path, conv, text,
                                                                      "--max-ppl-increase", "5%")
    assert "--int4-offsets is for causal language models" in _bad(monkeypatch, capsys, tmp_path, conv, text,
                                                                  "--int4-offsets", "whole")
    bert = tmp_path / "bert"
    BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(bert)
    assert "is a bert model; edgeship exports causal language models" in _bad(monkeypatch, capsys, tmp_path,
                                                                             str(bert), text)
    untokenized = tmp_path / "no-tokenizer"
    shutil.copytree(model, untokenized, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    assert "has no tokenizer" in _bad(monkeypatch, capsys, tmp_path, str(untokenized), text)


def test_bench_times_every_language_artifact(exported) -> None:
    """A prefill of half the 64-position context, then greedy decode to its end, three rounds after one load,
    the median of each rate; LiteRT-LM's benchmark counts the first token (from the prefill) among its decode
    tokens."""
    from edgeship import api

    folder, _ = exported
    result = api.bench(folder, threads=1)
    assert sorted(r["runtime"] for r in result.rows) == ["executorch", "litert", "onnxruntime"]
    for row in result.rows:
        assert row["prompt_tokens"] == 32 and row["decode_tokens"] == (32 if row["runtime"] == "litert" else 31)
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
        low, high = row["decode_tokens_per_s_range"]
        assert row["rounds"] == 3 and low <= row["decode_tokens_per_s"] <= high
    executorch = next(r for r in result.rows if r["runtime"] == "executorch")  # its pool alone (runner.py)
    assert executorch["openmp_threads"] == 1
    assert json.loads((folder / "bench.json").read_text())["rows"] == result.rows
    assert json.loads((folder / "manifest.json").read_text())["bench"]["rows"] == result.rows
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SHIPPED, "bench.json"])


@pytest.mark.skipif(SSHD is None, reason="OpenSSH server not installed (make test installs it as root)")
def test_bench_times_language_artifacts_on_an_ssh_device(exported, ssh_host, monkeypatch, capsys) -> None:  # noqa: F811
    """The artifacts (the GenAI folder among them) and the runner are copied to the device and timed there
    by the same method; options that do not apply to language models are refused by name."""
    folder, _ = exported
    code, out, err = run_cli(["bench", str(folder), "--device", "ssh://test-device", "--ssh-config", str(ssh_host),
                              "--remote-python", sys.executable, "--threads", "1", "--format", "json"],
                             monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["host"]["device"] == "test-device" and result["host"]["language_runtimes"]["onnxruntime"] is None
    assert sorted(r["runtime"] for r in result["rows"]) == ["executorch", "litert", "onnxruntime"]
    for row in result["rows"]:
        assert row["device"] == "ssh://test-device" and row["threads"] == 1
        assert row["prompt_tokens"] == 32 and row["decode_tokens"] == (32 if row["runtime"] == "litert" else 31)
        assert row["decode_tokens_per_s"] > 0 and row["peak_rss_mb"] > 0
    assert json.loads((folder / "bench.json").read_text())["rows"] == result["rows"]
    code, _, err = run_cli(["bench", str(folder), "--profile", "--setup"], monkeypatch, capsys)
    assert code != 0 and "timed without --profile, --setup; drop it" in err


def test_a_family_one_runtime_cannot_take_is_exported_for_the_others(lm_folder: Path, tmp_path: Path) -> None:
    """GPT-2 (its linear layers stored as Conv1D, taken as nn.Linear with the same values): ExecuTorch takes
    it; onnxruntime-genai's builder has no GPT-2 and litert-torch's generative export reloads the folder
    with other shapes, so those runtimes are listed as not produced, with why."""
    from tokenizers import Tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from edgeship import api
    from edgeship.export.causal_lm import load_causal_lm

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(lm_folder / "tiny-llama" / "tokenizer.json")),
                                        bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=1, n_head=2, n_positions=64)).eval()
    model.save_pretrained(tmp_path / "tiny-gpt2")
    tokenizer.save_pretrained(tmp_path / "tiny-gpt2")
    lm = load_causal_lm(str(tmp_path / "tiny-gpt2"))
    ids = torch.tensor([[5, 9, 17, 3]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, model(ids).logits)
    assert not any(type(m).__name__ == "Conv1D" for m in lm.model.modules())
    result = api.export_language(str(tmp_path / "tiny-gpt2"), "host", lm_folder / "calibration.txt",
                                 out=tmp_path / "out", max_seq_len=64)
    manifest = result.manifest
    assert [a["runtime"] for a in manifest["artifacts"]] == ["executorch"]
    assert manifest["weights"]["quantized_layers"] == 4
    assert [n["runtime"] for n in manifest["not_produced"]] == ["onnxruntime", "litert"]
    assert "model builder" in manifest["not_produced"][0]["reason"]
    assert "litert-torch's generative export failed" in manifest["not_produced"][1]["reason"]
    assert manifest["artifacts"][0]["runner"]["equals_greedy"]
    assert not (result.out_dir / "onnxruntime-genai").exists() and not list(result.out_dir.glob("*.litertlm"))


def test_the_genai_builder_takes_gemma3_as_transformers_5_saves_it(lm_folder: Path, tmp_path: Path) -> None:
    """transformers 5 writes Gemma 3's RoPE parameters per layer type, which onnxruntime-genai's builder reads
    flat (it raised KeyError: 'rope_type'): edgeship gives them to it in its form, and the float model it
    builds computes what PyTorch does."""
    import onnxruntime_genai as og
    from tokenizers import Tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    from edgeship.backends.onnxruntime.builder_run import flat_rope
    from edgeship.backends.onnxruntime.genai import build_float

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(lm_folder / "tiny-llama" / "tokenizer.json")),
                                        bos_token="<s>", eos_token="</s>")
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=32,
                              max_position_embeddings=128)
    assert set(config.rope_parameters) == {"full_attention", "sliding_attention"}
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "gemma3")
    tokenizer.save_pretrained(tmp_path / "gemma3")
    flat = flat_rope(Gemma3TextConfig.from_pretrained(tmp_path / "gemma3"))
    assert flat.rope_parameters["rope_type"] == "default" and flat.rope_parameters["rope_theta"] == 1e6
    assert flat.rope_local_base_freq == 1e4
    build_float(tmp_path / "gemma3", tmp_path / "onnx", tmp_path / "cache")
    ids = [5, 9, 17, 3, 11]
    built = og.Model(str(tmp_path / "onnx"))
    params = og.GeneratorParams(built)
    params.set_search_options(max_length=32)
    generator = og.Generator(built, params)
    generator.append_tokens(ids)
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(torch.from_numpy(generator.get_logits()).reshape(-1), expected, atol=1e-4, rtol=1e-4)


def test_sliding_window_layers_attend_within_their_window_over_the_executorch_cache() -> None:
    """Gemma 3's sliding layers see only their window: the program ExecuTorch lowers (custom_sdpa over the
    custom KV cache) computes float's logits past the window, teacher-forced and one token at a time."""
    import copy

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from edgeship.backends.executorch.decoder import export_decoder

    config = Gemma3TextConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=64)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 24))
    with torch.no_grad():
        expected = model(ids).logits[0]
        program = export_decoder(copy.deepcopy(model), 32).module()
        whole = program(input_ids=ids, cache_position=torch.tensor([0]))[0]
        program = export_decoder(copy.deepcopy(model), 32).module()
        stepped = torch.cat([program(input_ids=ids[:, :16], cache_position=torch.tensor([0]))[0],
                             *(program(input_ids=ids[:, i:i + 1], cache_position=torch.tensor([i]))[0]
                               for i in range(16, 24))])
    for got in (whole, stepped):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_the_executorch_int8_rows_keep_the_factor_the_embeddings_scale_rows_by() -> None:
    """Gemma's embedding module multiplies each row by the square root of the width: ExecuTorch's int8 rows
    (embedding_byte) carry that factor, so the integer model's embeddings are the quantized model's; an
    embedding module that does anything else to its rows is refused with a clear error."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from edgeship.backends.executorch.decoder import _row_factor, with_integer_weights
    from edgeship.errors import ExportError
    from edgeship.quantize.decoder import int4_decoder

    config = Gemma3TextConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    decoder = int4_decoder(Gemma3ForCausalLM(config).eval(), 32, asymmetric=True)
    ids = torch.arange(64)
    with torch.no_grad():
        expected = decoder.model.get_input_embeddings()(ids)
        got = with_integer_weights(decoder).get_input_embeddings()(ids)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert _row_factor(torch.nn.Embedding(8, 4)) is None

    class Shifted(torch.nn.Embedding):
        def forward(self, ids):
            return super().forward(ids) + 1.0

    with pytest.raises(ExportError, match="do more to each row than scale it"):
        _row_factor(Shifted(8, 4))


def test_a_layer_the_genai_builder_splits_is_matched_by_its_output_channels() -> None:
    """The builder writes a fused layer (Phi-3's gate_up_proj) as two MatMuls: each is matched to its rows of
    the one int4 layer; layers it packs side by side (q, k, v) are matched whole, as themselves; a matrix of
    no layer is matched to none."""
    from edgeship.backends.onnxruntime.genai import _Rows, _split
    from edgeship.quantize.decoder import Int4Decoder
    from edgeship.quantize.grid import Int4Weight, quantize_weight

    torch.manual_seed(0)
    layers = [Int4Weight(name, f"{name}.weight", *quantize_weight(torch.randn(rows, 64), 32), 32)
              for name, rows in (("gate_up", 48), ("down", 16), ("q", 24), ("k", 8))]
    rows = _Rows(Int4Decoder(None, layers, None, None, {}))
    dense = layers[0].dequantized().numpy().T
    gate, up = (_split(np.ascontiguousarray(dense[:, part]), rows) for part in (slice(0, 24), slice(24, 48)))
    assert [w.layer for w in gate] == ["gate_up[0:24]"] and [w.layer for w in up] == ["gate_up[24:48]"]
    assert torch.equal(up[0].q, layers[0].q[24:]) and torch.equal(up[0].scale, layers[0].scale[24:])
    packed = np.ascontiguousarray(np.concatenate([w.dequantized().numpy().T for w in layers[2:]], axis=1))
    found = _split(packed, rows)  # the layers themselves: their names and bytes as they are
    assert len(found) == 2 and found[0] is layers[2] and found[1] is layers[3]
    assert _split(np.ascontiguousarray(dense[:, :24] + 1.0), rows) is None


def test_the_fp32_reference_artifacts_match_float(lm_folder: Path, tmp_path: Path) -> None:
    """`--recipe fp32`: both runtimes' float artifacts, which score as PyTorch does (what int4 is compared to)."""
    from edgeship import api

    result = api.export_language(str(lm_folder / "tiny-llama"), "host", lm_folder / "calibration.txt",
                                 out=tmp_path / "out", recipe="fp32", max_seq_len=64)
    manifest = result.manifest
    assert sorted(a["path"] for a in manifest["artifacts"]) == ["model.fp32.litertlm", "model.fp32.pte", "onnxruntime-genai"]
    for artifact in manifest["artifacts"]:
        for score in artifact["subjects"].values():
            assert abs(score["perplexity_increase"]) < 1e-3 and score["top1_agreement"] == 1.0
        assert all(g["first_divergence"] is None for g in artifact["generation"])
    assert manifest["weights"] == {"method": "float", "quantized_layers": 0}
    et = next(a for a in manifest["artifacts"] if a["runtime"] == "executorch")  # the tied table held once
    folder = tmp_path / "out" / "tiny-llama" / "host"
    pte, ptd = (folder / et["path"]).read_bytes(), (folder / et["data"]).read_bytes()
    from transformers import AutoModelForCausalLM

    table = AutoModelForCausalLM.from_pretrained(lm_folder / "tiny-llama").get_input_embeddings().weight
    assert (pte.count(table.detach().numpy().tobytes()), ptd.count(table.detach().numpy().tobytes())) == (0, 1)


def test_a_project_builds_a_language_model_against_its_budgets(lm_folder: Path, tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """`edgeship build` recognises a causal LM in the project file: its subjects from an eval_data table,
    the perplexity budget driving the int4 export, decode tokens/s timed by the build, a size budget that
    fails; a second build is a cache hit with the same checks, a changed perplexity budget is not."""
    app = tmp_path / "app"
    app.mkdir()
    runtime_profile(app / "genai-only.toml", "host", ("onnxruntime",))
    (app / "edgeship.toml").write_text(f"""
[project]
targets = ["genai-only.toml"]

[models.tiny]
source = "{lm_folder / 'tiny-llama'}"
calibration = "{lm_folder / 'calibration.txt'}"
recipe = "int4"
eval_data = {{ forward = "{lm_folder / 'calibration.txt'}", backward = "{lm_folder / 'reversed.txt'}" }}
max_seq_len = 48
int4_offsets = "whole"

[models.tiny.budgets]
max_ppl_increase = 0.5
min_decode_tps = 1.0
max_size_mb = 0.01
min_cosine = 0.99
""")
    monkeypatch.chdir(app)
    runs = [run_cli(["build", "--format", "json"], monkeypatch, capsys) for _ in range(2)]
    for (code, out, err), status in zip(runs, ("built", "cached")):
        assert code == 1, err  # the size budget fails
        job, = json.loads(out)["jobs"]
        assert job["status"] == status and job["ok"] is False
        artifact, = job["manifest"]["artifacts"]
        checks = {b["budget"]: b for b in job["budgets"]}
        assert set(checks) == {"max_ppl_increase", "min_decode_tps", "max_size_mb"}  # min_cosine: not a language budget
        worst = max(s["perplexity_increase"] for s in artifact["subjects"].values())
        assert set(artifact["subjects"]) == {"forward", "backward"}
        assert checks["max_ppl_increase"]["value"] == worst and checks["max_ppl_increase"]["passed"]
        bench, = job["manifest"]["bench"]["rows"]
        assert checks["min_decode_tps"]["value"] == bench["decode_tokens_per_s"] > 1.0
        assert checks["max_size_mb"]["value"] == artifact["size_bytes"] / 1e6 and not checks["max_size_mb"]["passed"]
    assert job["manifest"]["budget"]["max_ppl_increase"] == 0.5  # the export searched for the perplexity budget
    assert job["manifest"]["max_seq_len"] == 48 and job["manifest"]["recipe"]["offsets"] == "whole"
    report = (app / "build" / "report.md").read_text()
    assert "| lost the most |" in report and "FAIL: onnxruntime-genai: max_size_mb 0.01" in report
    project = (app / "edgeship.toml").read_text()
    (app / "edgeship.toml").write_text(project.replace("max_ppl_increase = 0.5", "max_ppl_increase = 0.4"))
    code, out, err = run_cli(["build", "--format", "json"], monkeypatch, capsys)
    job, = json.loads(out)["jobs"]  # the budget the export searches for is part of the job's key
    assert job["status"] == "built" and job["manifest"]["budget"]["max_ppl_increase"] == 0.4
