"""A causal language model as ExecuTorch's LLM runner runs it: one `forward(tokens [1, n], input_pos [1])`
method over a static KV cache held in the program (ExecuTorch's own cache update and attention ops,
kv_cache.py; transformers' static-cache wrapper for a family they cannot take), every linear layer
lowered to XNNPACK with the int4 (or int8) block weights computed once by quantize/decoder.py and int8
dynamic activations, the head int8 per row, the token embeddings int8 per row
(`quantized_decomposed::embedding_byte`), and the metadata the runner reads (`get_max_seq_len`,
`get_bos_id`, `get_eos_ids`, `use_kv_cache`, `enable_dynamic_shape`, ...). Prefill takes up to
`max_seq_len - 1` tokens in one call; each call returns the logits of every position it was given."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import re
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgeship.errors import ExportError
from edgeship.quantize.decoder import Int4Decoder
from edgeship.quantize.grid import Int4Weight
from edgeship.runtimes.runner import load_et_kernels as load_kernels


class _Int8Rows(nn.Module):
    """Token embeddings read from int8 rows and one scale per row (ExecuTorch's embedding_byte), times the
    factor the model's own embedding module multiplies its rows by (`_row_factor`)."""

    def __init__(self, rows: Int4Weight, factor: float | None = None) -> None:
        super().__init__()
        self.register_buffer("q", rows.q.clone())
        self.register_buffer("scale", rows.scale.reshape(-1).clone())
        self.factor = factor

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = torch.ops.quantized_decomposed.embedding_byte.default(self.q, self.scale, None, -127, 127, ids)
        return rows if self.factor is None else rows * self.factor


def _row_factor(embedding: nn.Module) -> float | None:
    """What `embedding` multiplies the rows it looks up by (Gemma's square root of the width), None when it
    returns them as they are; refused when it does anything else to them."""
    ids = torch.arange(min(64, embedding.weight.shape[0]))
    with torch.no_grad():
        out, rows = embedding(ids), nn.functional.embedding(ids, embedding.weight)
    if torch.equal(out, rows):
        return None
    largest = int(rows.abs().argmax())
    factor = float(out.flatten()[largest] / rows.flatten()[largest])
    if not torch.allclose(out, rows * factor, rtol=1e-6, atol=0.0):
        raise ExportError(f"the token embeddings ({type(embedding).__name__}) do more to each row than scale it, "
                          "which ExecuTorch's int8 rows cannot carry; export for a target without ExecuTorch")
    return factor


def _packed(w: Int4Weight) -> torch.Tensor:
    """`w` as torchao's integer tensor with per-token int8 activations: what XNNPACK's qd8 kernels take."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    return IntxUnpackedToInt8Tensor(w.q, w.scale.reshape(w.q.shape[0], -1), torch.zeros(w.q.shape[0], w.q.shape[1] // w.group,
                                    dtype=torch.int8), torch.int4 if w.bits == 4 else torch.int8, (1, w.group),
                                    torch.float32, IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN)


class _AffineLinear(nn.Module):
    """A linear layer with asymmetric block weights (q * scale + offset): the symmetric part q * scale in
    XNNPACK's int4 kernels, the offsets as a small float linear over the sums of each group of inputs
    (themselves a linear with a 0/1 matrix, `sums`, one tied parameter for every layer of that width, so
    that all of it stays in the XNNPACK delegate, and the layers reading one input share one product of
    it: `shared_products`)."""

    def __init__(self, w: Int4Weight, bias: nn.Parameter | None, sums: nn.Parameter) -> None:
        super().__init__()
        self.weight = nn.Parameter(_packed(w), requires_grad=False)
        self.offset = nn.Parameter(w.offset.clone(), requires_grad=False)
        self.bias = bias
        self.sums = sums

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sums = nn.functional.linear(x, self.sums)
        return nn.functional.linear(x, self.weight, self.bias) + nn.functional.linear(sums, self.offset)


def _group_sums(width: int, group: int) -> nn.Parameter:
    """The [width / group, width] 0/1 matrix whose product with an input sums each group of it."""
    return nn.Parameter(torch.block_diag(*[torch.ones(1, group)] * (width // group)), requires_grad=False)


def with_integer_weights(decoder: Int4Decoder) -> nn.Module:
    """A copy of the decoder's model whose linear layers, head and embeddings hold the integer weights."""
    import executorch.exir.passes._quant_patterns_and_replacements  # noqa: F401  (registers embedding_byte)

    model = copy.deepcopy(decoder.model).eval()
    modules = dict(model.named_modules())
    sums: dict[tuple[int, int], nn.Parameter] = {}
    for w in decoder.linears:
        if w.offset is not None:
            parent, _, name = w.layer.rpartition(".")
            shared = sums.setdefault((w.q.shape[1], w.group), _group_sums(w.q.shape[1], w.group))
            setattr(modules[parent], name, _AffineLinear(w, modules[w.layer].bias, shared))
        else:
            modules[w.layer].weight = nn.Parameter(_packed(w), requires_grad=False)
    head = model.get_output_embeddings()
    if head is not None:  # a tied head reads the embeddings' int8 rows
        head.weight = nn.Parameter(_packed(decoder.head or decoder.embeddings), requires_grad=False)
    model.set_input_embeddings(_Int8Rows(decoder.embeddings, _row_factor(model.get_input_embeddings())))
    return model


def export_decoder(model: nn.Module, max_seq_len: int) -> torch.export.ExportedProgram:
    """`model` (a transformers causal LM) with a static KV cache of `max_seq_len` positions, exported with
    `tokens [1, n]` (1 <= n < max_seq_len) and `input_pos [1]` as inputs."""
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    from edgeship.backends.executorch import kv_cache

    if kv_cache.applies(model):
        wrapped = kv_cache.CustomCacheDecoder(model, max_seq_len)
    else:
        model.generation_config.cache_implementation = "static"
        wrapped = TorchExportableModuleWithStaticCache(model, 1, max_seq_len)
    tokens = torch.tensor([[1, 2, 3]], dtype=torch.long)
    length = torch.export.Dim("tokens", min=1, max=max_seq_len - 1)
    try:
        with torch.no_grad():
            program = torch.export.export(wrapped, (), {"input_ids": tokens, "cache_position": torch.tensor([0])},
                                          dynamic_shapes={"input_ids": {1: length}, "cache_position": None},
                                          strict=True)
    except Exception as exc:  # torch.export's failures have many types; the user sees one line
        raise ExportError(f"torch.export cannot capture this model with a static KV cache "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
    shared_products(program.graph_module)
    return program


def shared_products(graph_module: torch.fx.GraphModule) -> int:
    """Merges the linear products of `graph_module` that compute the same thing (one input, one weight, one
    bias): the group sums of an input that q, k and v (or gate and up) each take (_AffineLinear) become one
    product read by all of them. Returns how many were merged."""
    seen, merged = {}, 0
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        key = (node.args, tuple(sorted(node.kwargs.items())))
        if key in seen:
            node.replace_all_uses_with(seen[key])
            graph_module.graph.erase_node(node)
            merged += 1
        else:
            seen[key] = node
    if merged:
        graph_module.recompile()
    return merged


def metadata(config, tokenizer, max_seq_len: int) -> dict:
    """The constant methods ExecuTorch's LLM runner reads from the program."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(config, "eos_token_id", None)
    eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else getattr(config, "bos_token_id", None)
    return {"get_max_seq_len": max_seq_len, "get_max_context_len": max_seq_len,
            "get_vocab_size": int(config.vocab_size), "get_bos_id": int(bos if bos is not None else eos_ids[0]),
            "get_eos_ids": eos_ids, "use_kv_cache": True, "use_sdpa_with_kv_cache": False,
            "enable_dynamic_shape": True}


def tied_table(model: nn.Module) -> tuple[str, str] | None:
    """The names of `model`'s token embeddings and output head when the head is tied to them (one table)."""
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not embedding.weight:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return names[id(embedding)], names[id(head)]


def data_file(pte: Path) -> Path | None:
    """The .ptd beside a decoder .pte (its shared token table, `write_decoder`), when it has one."""
    data = Path(pte).with_suffix(".ptd")
    return data if data.is_file() else None


def _in_table(node: torch.fx.Node, table: tuple[str, str] | None) -> bool:
    """Whether `node` is a placeholder holding the embeddings' or the head's weights (or scales): named from
    their module's path, also where torchao's integer weights are unwrapped into several placeholders."""
    return node.op == "placeholder" and table is not None and any(
        f"_{name.replace('.', '_')}_" in node.name for name in table)


def write_decoder(program: torch.export.ExportedProgram, constants: dict, path: Path,
                  table: tuple[str, str] | None = None) -> list[str]:
    """Lower `program` to XNNPACK with the runner's `constants`, write the .pte; the ops left outside the
    delegate. `table` (`tied_table`): the embeddings' and the tied head's weights, which the program's
    embedding op and the XNNPACK head would each hold, are written once, to a .ptd beside the .pte (the
    same name; ExecuTorch's data file, which its runners take as `data_path`)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.pass_base import PassResult

    from edgeship.backends.executorch.lower import without_history

    def tag(graph_module: torch.fx.GraphModule) -> PassResult:  # XNNPACK's copy of the head to the .ptd
        for node in graph_module.graph.nodes:
            if _in_table(node, table):
                node.meta.setdefault("custom", {})["delegate_constant_tag"] = path.stem
        return PassResult(graph_module, table is not None)

    try:
        edge = to_edge_transform_and_lower(without_history(program), partitioner=[XnnpackPartitioner()],
                                           transform_passes=[tag], constant_methods=constants,
                                           compile_config=EdgeCompileConfig(_check_ir_validity=False))
    except Exception as exc:
        raise ExportError(f"ExecuTorch cannot lower this model to XNNPACK ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from exc
    outside = [re.sub(r"^<EdgeOpOverload: ([\w.]+)>.*$", r"\1", str(n.target))
               for n in edge.exported_program().graph.nodes
               if n.op == "call_function" and "executorch_call_delegate" not in str(n.target)
               and "getitem" not in str(n.target)]
    lowered = edge.to_executorch(ExecutorchBackendConfig(  # the program's own copy (the embeddings') too
        external_constants=lambda node: path.stem if _in_table(node, table) else None))
    path.write_bytes(lowered.buffer)
    if table is not None:
        lowered.write_tensor_data_to_file(str(path.parent))
    return outside


class DecoderSession:
    """A decoder .pte through ExecuTorch's Module API: `logits(tokens)` teacher-forced from position 0,
    `greedy(prompt, n)` one token per call over the KV cache."""

    def __init__(self, path: Path) -> None:
        from executorch.runtime import Runtime

        load_kernels()
        data = data_file(path)
        program = Runtime.get().load_program(str(path), data_path=str(data) if data else None)
        self._method = program.load_method("forward")
        self.max_seq_len = int(program.load_method("get_max_seq_len").execute([])[0])
        self.vocab_size = int(program.load_method("get_vocab_size").execute([])[0])

    def step(self, tokens: list[int], position: int) -> torch.Tensor:
        """The logits [n, vocab] of `tokens` placed at `position` onwards (earlier positions cached)."""
        out = self._method.execute([torch.tensor([tokens], dtype=torch.long), torch.tensor([position])])[0]
        return out[0].float()

    def logits(self, tokens: list[int]) -> torch.Tensor:
        return self.step(tokens, 0)

    def greedy(self, prompt: list[int], count: int, stop: set[int] = frozenset(),
               on_token: Callable[[int], None] | None = None) -> list[int]:
        """Up to `count` tokens after `prompt`, each the argmax, ending early at a `stop` token."""
        from edgeship.backends.base import greedy_tokens

        return greedy_tokens(self.step(prompt, 0)[-1], len(prompt), count, self.max_seq_len,
                             lambda token, position: self.step([token], position)[-1], stop, on_token)


REPORT = b"\nPyTorchObserver "  # the runner's line of statistics, after the generated text and a newline


def runner_generate(path: Path, tokenizer_json: Path, prompt: str, count: int, stream: bool = False
                    ) -> tuple[str, dict]:
    """Greedy text from ExecuTorch's own LLM runner (TextLLMRunner, as an app runs it): the text after
    `prompt` and the runner's statistics (tokens, times in ms). The text is what the runner prints, read
    from its standard output as bytes: its Python token callback cannot take a piece that is not whole
    UTF-8, which byte-level tokenizers give in the middle of a character. `stream`: the text is written to
    standard output as it comes."""
    import json

    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    load_kernels()
    stats: dict = {}
    with _native_output_read(stream) as printed:
        data = data_file(path)
        runner = TextLLMRunner(str(path), str(tokenizer_json), str(data) if data else None)
        runner.generate(prompt, GenerationConfig(max_new_tokens=count, temperature=0.0, echo=False),
                        stats_callback=lambda s: stats.update(json.loads(s.to_json_string())))
    tokens = int(stats.get("generated_tokens", 0)) + 1 if stats else 0  # the first token comes from the prefill
    return printed.text, stats | {"pieces": tokens}


class _Printed:
    """What the runner writes to a pipe: the generated text (UTF-8, a broken sequence shown as U+FFFD),
    passed on to `stream_fd` as it comes when given, up to the runner's statistics line."""

    def __init__(self, read_fd: int, stream_fd: int | None) -> None:
        import codecs
        import threading

        self._fd, self._stream, self._raw, self._shown = read_fd, stream_fd, bytearray(), 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := os.read(self._fd, 4096):
            self._raw += chunk
            if self._stream is not None:  # up to the report, or to the last newline: the report may follow it
                report = self._raw.find(REPORT)
                self._show(report if report >= 0 else self._raw.rfind(b"\n"))

    def _show(self, upto: int) -> None:
        if upto > self._shown:
            os.write(self._stream, self._decoder.decode(bytes(self._raw[self._shown:upto])).encode())
            self._shown = upto

    def close(self) -> None:
        self._thread.join()
        os.close(self._fd)
        end = self._raw.rfind(REPORT)
        self._raw = self._raw[:end if end >= 0 else len(self._raw)]
        if self._stream is not None:
            self._show(len(self._raw))
            os.write(self._stream, self._decoder.decode(b"", final=True).encode())

    @property
    def text(self) -> str:
        return bytes(self._raw).decode("utf-8", errors="replace")


@contextlib.contextmanager
def _native_output_read(stream: bool):
    """File descriptor 1 sent into a pipe read by `_Printed` and 2 to the null device (the runner prints
    every piece and its statistics itself) for the block; yields the `_Printed`, complete after it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    read_fd, write_fd = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    printed = _Printed(read_fd, saved[0] if stream else None)
    os.dup2(write_fd, 1)
    os.dup2(null, 2)
    try:
        yield printed
    finally:
        sys.stdout.flush()
        ctypes.CDLL(None).fflush(None)  # the C library's buffered output goes into the pipe, not later elsewhere
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (write_fd, null):
            os.close(fd)
        printed.close()
        for fd in saved:
            os.close(fd)
