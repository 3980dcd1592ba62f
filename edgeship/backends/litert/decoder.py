"""A causal language model as LiteRT-LM runs it: litert-torch's generative export (a .tflite with `prefill`
and `decode` signatures over a KV cache passed in and out, bundled with the tokenizer as a .litertlm),
converted in float from the decoder holding edgeship's dequantized weights, its quantizer replaced by
edgeship's own rewrite: every FULLY_CONNECTED weight becomes exactly edgeship's int4 values (block-wise; the
offsets of an asymmetric grid as a small layer beside it, litert/offsets.py) or int8 rows, and the token embeddings'
EMBEDDING_LOOKUP the same int8 rows (litert.int4.to_blockwise_int4). Verified through the LiteRT
interpreter's `decode` signature one token at a time; generated with `litert_lm`'s Engine, as an app runs it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
import types
from pathlib import Path
from typing import Callable

import numpy as np

from edgeship.errors import ExportError

PREFILL = 128  # the prefill signature's tokens (the runner feeds a longer prompt in several calls)


@contextlib.contextmanager
def _generative_export():
    """litert_torch's generative export modules, importable without TensorFlow: one of its model extensions
    imports TensorFlow's copy of the TFLite schema when it is imported, which ai_edge_litert ships too.
    The stand-in modules are removed again once the import is done."""
    import ai_edge_litert.schema_py_generated as schema
    import litert_torch  # noqa: F401  imported first: torch._dynamo must not see the stand-in package
    import torch._dynamo  # noqa: F401

    names = ["tensorflow", "tensorflow.lite", "tensorflow.lite.python", "tensorflow.lite.python.schema_py_generated"]
    added = [name for name in names if name not in sys.modules]
    for name in added[:-1]:
        sys.modules[name] = types.ModuleType(name)
    if "tensorflow.lite.python.schema_py_generated" in added:
        sys.modules["tensorflow.lite.python"].schema_py_generated = schema
        sys.modules["tensorflow.lite.python.schema_py_generated"] = schema
    try:
        from litert_torch.generative.export_hf import export
        from litert_torch.generative.export_hf.core import export_lib
    finally:
        for name in added:
            sys.modules.pop(name, None)
    yield export, export_lib


def build(hf_folder: Path, work: Path, length: int, rewrite: Callable[[Path], None]) -> tuple[Path, Path]:
    """litert-torch's generative export of the Hugging Face folder into `work` in float with a `length`
    KV cache, `rewrite` applied to the .tflite before it is bundled; (the .tflite, the .litertlm)."""
    printed = io.StringIO()  # litert-torch's progress lines and transformers' import-time notes
    with _native_stdout_to_stderr(), contextlib.redirect_stdout(printed), _generative_export() as (export, lib):
        quantizer = lib.maybe_quantize_model

        def edgeship_weights(path: str, recipe) -> str:  # in place of litert-torch's quantizer
            rewrite(Path(path))
            return path

        lib.maybe_quantize_model = edgeship_weights
        try:
            export.export(str(hf_folder), str(work), quantization_recipe="none", cache_length=length,
                          prefill_lengths=[min(PREFILL, length)], bundle_litert_lm=True, keep_temporary_files=True)
        except Exception as exc:  # litert-torch raises many types for a model it cannot convert
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ExportError(f"litert-torch's generative export failed on this model: {type(exc).__name__}: "
                              f"{reason}") from exc
        finally:
            lib.maybe_quantize_model = quantizer
    tflite, bundle = work / "model.tflite", work / "model.litertlm"
    if not tflite.is_file() or not bundle.is_file():
        raise ExportError("litert-torch's generative export wrote no model.litertlm: "
                          + (printed.getvalue().strip().splitlines() or ["no message"])[-1][:300])
    return tflite, bundle


def unpacked_tflite(bundle: Path, folder: Path) -> Path:
    """The prefill/decode .tflite inside a .litertlm, written into `folder` (LiteRT-LM's own reader)."""
    from litert_lm_builder import litertlm_peek

    folder.mkdir(parents=True, exist_ok=True)
    litertlm_peek.peek_litertlm_file(str(bundle), dump_files_dir=str(folder), output_stream=io.StringIO())
    found = sorted(folder.glob("*.tflite"))
    if len(found) != 1:
        raise ExportError(f"{bundle.name} holds {len(found)} .tflite models, not one prefill/decode model")
    return found[0]


@contextlib.contextmanager
def _native_stdout_to_stderr():
    """File descriptor 1 pointed at 2 in the block: native code printing there must not mix into the
    standard output a caller parses (`--format json`)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class DecoderSession:
    """A generative .tflite through the LiteRT interpreter's `decode` signature: `logits(tokens)`
    teacher-forced from position 0, `greedy(prompt, n)`, one token per call over the KV cache. The cache
    stays in the interpreter: each call's output cache is copied into the next call's input in place,
    where the signature runner would copy every layer's cache out to NumPy and back in (twice the copying,
    and an allocation of each per token); the logits are the same bit for bit. This reads the interpreter
    wrapper of ai-edge-litert (pinned) behind its public Python API, which gives in-place views of the
    first graph's tensors only, and the decode signature is another. `threads`: the interpreter's, by default
    one per core (as the other runtimes' sessions take)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count())
        decode = self._interp.get_signature_runner("decode")
        inputs = decode.get_input_details()
        self._in = {name: d["index"] for name, d in inputs.items()}
        self._out = {name: d["index"] for name, d in decode.get_output_details().items()}
        self._caches = [name for name in inputs if name.startswith("kv_cache")]
        self.max_seq_len = int(inputs["mask"]["shape"][-1])
        self._wrapper, self._graph = self._interp._interpreter, decode._subgraph_index
        self._wrapper.AllocateTensors(self._graph)

    def _view(self, index: int) -> np.ndarray:
        return self._wrapper.tensor(self._wrapper, index, self._graph)

    def _reset(self) -> None:
        for name in self._caches:
            self._view(self._in[name]).fill(0)

    def step(self, token: int, position: int) -> np.ndarray:
        """The logits [vocab] of `token` at `position`, the earlier positions read from the cache."""
        mask = np.full((1, 1, 1, self.max_seq_len), -np.inf, np.float32)
        mask[..., :position + 1] = 0.0
        for name, value in (("tokens", np.array([[token]], np.int32)), ("input_pos", np.array([position], np.int32)),
                            ("mask", mask)):
            self._wrapper.SetTensor(self._in[name], value, self._graph)
        self._wrapper.Invoke(self._graph)
        for name in self._caches:
            np.copyto(self._view(self._in[name]), self._view(self._out[name]))
        return self._wrapper.GetTensor(self._out["logits"], self._graph).reshape(-1)

    def logits(self, tokens: list[int]):
        import torch

        self._reset()
        return torch.from_numpy(np.stack([self.step(t, i) for i, t in enumerate(tokens)])).float()

    def greedy(self, prompt: list[int], count: int, stop: set[int] = frozenset(),
               on_token: Callable[[int], None] | None = None) -> list[int]:
        """Up to `count` tokens after `prompt`, each the argmax, ending early at a `stop` token."""
        from edgeship.backends.base import greedy_tokens

        self._reset()
        for position, token in enumerate(prompt):
            logits = self.step(token, position)
        return greedy_tokens(logits, len(prompt), count, self.max_seq_len, self.step, stop, on_token)


NO_CACHE = ":nocache"  # LiteRT-LM's cache_dir that writes no weight cache (by default, one beside the model)


def engine(path: Path, max_tokens: int, benchmark: bool = False):
    """`litert_lm`'s Engine on the CPU over the .litertlm, float32 activations (as the interpreter checked),
    writing no XNNPACK weight cache (by default a file as large as the model, beside it in the export)."""
    import litert_lm

    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)  # not its accelerator registry's notes
    return litert_lm.Engine(str(path), backend=litert_lm.Backend.CPU(), max_num_tokens=max_tokens,
                            activation_data_type=litert_lm.ActivationDataType.FLOAT32, enable_benchmark=benchmark,
                            cache_dir=NO_CACHE)


def runner_generate(path: Path, prompt: str, count: int, max_tokens: int, stream: bool = False
                    ) -> tuple[str, dict]:
    """Greedy text after `prompt` from LiteRT-LM's own runner (`litert_lm`, its tokenizer and sampler as
    an app runs them), each piece written to standard output as it comes when `stream`; the text and the
    runner's token counts and times."""
    from litert_lm import interfaces

    started = time.perf_counter()
    with engine(path, max_tokens) as lm:
        session = lm.create_session(apply_prompt_template=False, max_output_tokens=count,
                                    sampler_config=interfaces.SamplerConfig(top_k=1, temperature=0.0))
        prompt_tokens = len(lm.tokenize(prompt))
        session.run_prefill([prompt])
        first, pieces = None, []
        for response in session.run_decode_async():
            first = first or time.perf_counter()
            pieces.append("".join(response.texts))
            if stream:
                sys.stdout.write(pieces[-1])
                sys.stdout.flush()
        ended = time.perf_counter()
        session.close()
    return "".join(pieces), {"prompt_tokens": prompt_tokens, "pieces": len(pieces),
                             "first_token_ms": 1000 * ((first or ended) - started),
                             "decode_ms": 1000 * (ended - (first or ended))}
