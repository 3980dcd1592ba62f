"""A causal language model as ONNX Runtime GenAI runs it: the model folder onnxruntime-genai's model
builder writes (model.onnx with GroupQueryAttention over past key/values, genai_config.json, tokenizer
files), built in float from the decoder holding edgeship's dequantized weights, then rewritten so that
every linear layer is MatMulNBits carrying exactly edgeship's int4 (or int8) values and scales (those of a
checkpoint's float16 grid stored as float16, half.py; the builder packs
q, k and v into one MatMul: its columns are matched layer by layer), the head MatMulNBits with the int8
rows, and the token embeddings GatherBlockQuantized over those same int8 rows (one table for both when
they are tied). Generation goes through `onnxruntime_genai`'s Generator, as an app runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from edgeship.errors import ExportError
from edgeship.quantize.decoder import Int4Decoder
from edgeship.quantize.grid import Int4Weight, whole_steps

TABLE_BLOCK = 32  # the block of the int8 head / embedding rows in MatMulNBits and GatherBlockQuantized


def build_float(hf_folder: Path, out: Path, cache: Path) -> None:
    """onnxruntime-genai's model builder, fp32 for the CPU, from a Hugging Face folder into `out` (through
    builder_run, which gives it a transformers 5 configuration in the form it reads)."""
    done = subprocess.run([sys.executable, "-m", "edgeship.backends.onnxruntime.builder_run", "-i", str(hf_folder),
                           "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(cache),
                           "--extra_options", "hf_token=false"], capture_output=True, text=True)
    if done.returncode or not (out / "model.onnx").is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no model.onnx written"]
        reason = tail[0].replace(f"The {hf_folder} model", "This model").replace(str(hf_folder), "the model")
        raise ExportError(f"onnxruntime-genai's model builder failed on this model: {reason[:300]}")


def _table_weight(rows: Int4Weight) -> tuple[np.ndarray, np.ndarray]:
    """int8 rows as MatMulNBits' 8-bit B (uint8 [N, blocks, TABLE_BLOCK], value + 128) and scales [N, blocks]
    (the row's scale repeated)."""
    q = rows.q.numpy().astype(np.int16) + 128
    n, k = q.shape
    blocks = k // TABLE_BLOCK
    scales = np.repeat(rows.scale.numpy().astype(np.float32).reshape(n, 1), blocks, axis=1)
    return q.astype(np.uint8).reshape(n, blocks, TABLE_BLOCK), scales


def _packed(w: Int4Weight) -> tuple[np.ndarray, np.ndarray, int]:
    """MatMulNBits' B, scales [N, blocks] and block size for an int4 layer (its own groups) or an int8 one
    (one scale per row, repeated over blocks of TABLE_BLOCK)."""
    from edgeship.backends.onnxruntime.int4 import _pack

    if w.bits == 8:
        return (*_table_weight(w), TABLE_BLOCK)
    packed, scales = _pack(w)
    return packed, scales.reshape(w.q.shape[0], -1), w.group


def _split(array: np.ndarray, rows: _Rows) -> list[Int4Weight] | None:
    """The int4 layers whose W^T, side by side, are exactly `array` [K, N]: whole layers (one, or q/k/v
    packed), or consecutive output channels of one (a layer the builder splits, Phi-3's gate_up_proj)."""
    parts, start = [], 0
    while start < array.shape[1]:
        hit = rows.slice_at(array, start)
        if hit is None:
            return None
        parts.append(hit)
        start += hit.q.shape[0]
    return parts


class _Rows:
    """Every output channel of the int4 layers by a hash of its weights, built on the first lookup: the
    columns of a MatMul from `start` on are the longest run of consecutive channels of one layer found there,
    that layer itself when the run is all of it."""

    def __init__(self, decoder: Int4Decoder) -> None:
        self._decoder, self._index = decoder, None

    def slice_at(self, array: np.ndarray, start: int) -> Int4Weight | None:
        if self._index is None:  # (layer, row) pairs only: a candidate layer is dequantized again when looked at
            self._index = {}
            for w in self._decoder.linears:
                dense = w.dequantized().numpy()
                for r in range(dense.shape[0]):
                    self._index.setdefault(hash(np.ascontiguousarray(dense[r]).tobytes()), []).append((w, r))
        best = None  # (channels, layer, first row)
        for w, r in self._index.get(hash(np.ascontiguousarray(array[:, start]).tobytes()), []):
            dense = w.dequantized().numpy()
            n = min(array.shape[1] - start, dense.shape[0] - r)
            while n > 0 and not np.array_equal(array[:, start:start + n], dense[r:r + n].T):
                n -= 1
            if n > 0 and (best is None or n > best[0]):
                best = (n, w, r)
        if best is None:
            return None
        n, w, r = best
        return w if n == w.q.shape[0] else _rows_of(w, r, r + n)


def _rows_of(w: Int4Weight, first: int, end: int) -> Int4Weight:
    """Output channels [first, end) of `w` (its groups run along the input channels, so each row stands alone)."""
    return Int4Weight(f"{w.layer}[{first}:{end}]", w.attr, w.q[first:end], w.scale[first:end], w.group, w.bits,
                      None if w.offset is None else w.offset[first:end])


def _merged(parts: list[Int4Weight]) -> Int4Weight:
    import torch

    if len(parts) == 1:
        return parts[0]
    offsets = [p.offset for p in parts]
    return Int4Weight("+".join(p.layer for p in parts), parts[0].attr, torch.cat([p.q for p in parts]),
                      torch.cat([p.scale for p in parts]), parts[0].group, parts[0].bits,
                      None if offsets[0] is None else torch.cat(offsets))


def rewrite(path: Path, decoder: Int4Decoder) -> dict:
    """The builder's float model at `path` with edgeship's integer weights, written as one file; returns
    what was rewritten and what was left float."""
    import onnx
    from onnx import numpy_helper

    from edgeship.backends.onnxruntime.half import widened
    from edgeship.backends.onnxruntime.int4 import replace_nodes

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    rows, table = _Rows(decoder), decoder.head or decoder.embeddings
    dense_table = np.ascontiguousarray(table.dequantized().numpy().T)
    nodes, drop, record = [], set(), {"matmul_nbits": 0, "layers": 0, "float_matmuls": []}
    table_name, covered = None, {}  # each int4 layer's output channels found in the builder's MatMuls
    for node in graph.node:
        array = numpy_helper.to_array(inits[node.input[1]]) if node.op_type == "MatMul" and len(node.input) > 1 \
            and node.input[1] in inits else None
        if array is None:
            nodes.append(node)
            continue
        if array.shape == dense_table.shape and np.array_equal(array, dense_table):
            table_name = table_name or _add_table(graph, table)
            nodes.append(_nbits(node, table_name, table.q.shape, 8, TABLE_BLOCK))
            drop.add(node.input[1])
            continue
        parts = _split(array, rows)
        if parts is None:
            record["float_matmuls"].append(node.name)
            nodes.append(node)
            continue
        merged = _merged(parts)
        packed, scales, block = _packed(merged)
        base = f"{node.name.strip('/').replace('/', '.')}.int{merged.bits}"
        graph.initializer.extend([numpy_helper.from_array(packed, f"{base}.B"),
                                  numpy_helper.from_array(scales, f"{base}.scales")])
        if merged.offset is None:
            nodes.append(_nbits(node, base, merged.q.shape, merged.bits, block))
        else:
            nodes += _affine(graph, node, base, merged, block)
        drop.add(node.input[1])
        record["matmul_nbits"] += 1
        for part in parts:
            layer = part.layer.split("[")[0]
            covered[layer] = covered.get(layer, 0) + part.q.shape[0]
    nodes = _embeddings(graph, nodes, inits, decoder, table_name, drop)
    replace_nodes(model, widened(graph) + nodes, drop)
    record["layers"] = sum(covered.get(w.layer) == w.q.shape[0] for w in decoder.linears)
    if record["layers"] != len(decoder.linears):
        raise ExportError(f"the ONNX Runtime GenAI model holds {record['layers']} of the {len(decoder.linears)} "
                          "int4 layers; the builder wrote the others in a form edgeship does not match")
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    onnx.save(model, str(path))
    return record


def _add_table(graph, table: Int4Weight) -> str:
    from onnx import numpy_helper

    data, scales = _table_weight(table)
    name = f"{table.layer}.int8"
    graph.initializer.extend([numpy_helper.from_array(data, f"{name}.B"),
                              numpy_helper.from_array(scales, f"{name}.scales"),
                              numpy_helper.from_array(np.full(scales.shape, 128, np.uint8), f"{name}.zero_points")])
    return name


def _affine(graph, node, base: str, w: Int4Weight, block: int) -> list:
    """Asymmetric block weights (q * scale + offset): MatMulNBits with integer zero points where every
    offset is a whole number of steps (-zero * scale, what edgeship's grid gives); else MatMulNBits of the
    symmetric part q * scale plus the sums of each group of inputs times the offsets (a small float MatMul)."""
    from onnx import helper, numpy_helper

    zero_points = _zero_points(w)
    if zero_points is not None:
        graph.initializer.append(numpy_helper.from_array(zero_points, f"{base}.zero_points"))
        return [_nbits(node, base, w.q.shape, w.bits, block, zero_points=True)]
    n, k = w.q.shape
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(w.offset.numpy().T.astype(np.float32)), f"{base}.offsets"),
        numpy_helper.from_array(np.array([0, 0, k // w.group, w.group], np.int64), f"{base}.groups_shape"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{base}.last_axis")])
    x, y, name = node.input[0], node.output[0], node.name
    return [_nbits(node, base, w.q.shape, w.bits, block, f"{name}/symmetric"),
            helper.make_node("Reshape", [x, f"{base}.groups_shape"], [f"{name}/groups"], name=f"{name}/Groups"),
            helper.make_node("ReduceSum", [f"{name}/groups", f"{base}.last_axis"], [f"{name}/sums"],
                             name=f"{name}/Sums", keepdims=0),
            helper.make_node("MatMul", [f"{name}/sums", f"{base}.offsets"], [f"{name}/offsets"],
                             name=f"{name}/Offsets"),
            helper.make_node("Add", [f"{name}/symmetric", f"{name}/offsets"], [y], name=f"{name}/Add")]


def _zero_points(w: Int4Weight) -> np.ndarray | None:
    """MatMulNBits' uint4 zero points (two per byte, low nibble first, each row padded to a byte) when every
    offset of the int4 layer `w` is -zero * scale with an integer zero in [-8, 7] (stored as zero + 8, as B
    stores q + 8, grid.whole_steps); None otherwise."""
    if w.bits != 4 or not whole_steps(w):
        return None
    stored = (np.round(-w.offset.double().numpy() / w.scale.double().numpy()) + 8).astype(np.uint8)
    if stored.shape[1] % 2:
        stored = np.pad(stored, ((0, 0), (0, 1)))
    return (stored[:, 0::2] | (stored[:, 1::2] << 4)).reshape(-1)


def _nbits(node, base: str, shape, bits: int, block: int, output: str | None = None, zero_points: bool = False):
    from onnx import helper

    n, k = shape
    return helper.make_node("MatMulNBits", [node.input[0], f"{base}.B", f"{base}.scales"]
                            + ([f"{base}.zero_points"] if zero_points else []),
                            [output] if output else list(node.output),
                            name=node.name + "NBits", domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=4)


def _embeddings(graph, nodes: list, inits: dict, decoder: Int4Decoder, table_name: str | None, drop: set) -> list:
    """The embeddings' Gather (of the head's weight transposed when tied, or of its own table) as
    GatherBlockQuantized over the int8 rows."""
    from onnx import helper

    producers = {o: n for n in nodes for o in n.output}
    out = []
    for node in nodes:
        if node.op_type != "Gather" or node.input[1] != _input_ids(graph):
            out.append(node)
            continue
        source = producers.get(node.input[0])
        tied = source is not None and source.op_type == "Transpose" and source.input[0] in drop
        if not tied and node.input[0] not in inits:
            out.append(node)
            continue
        name = table_name if tied and decoder.head is None else _add_table(graph, decoder.embeddings)
        rows, cols = decoder.embeddings.q.shape
        shape = helper.make_tensor(f"{name}.rows_shape", 7, [2], [rows, cols])
        graph.initializer.append(shape)
        out += [helper.make_node("Reshape", [f"{name}.B", f"{name}.rows_shape"], [f"{name}.rows"],
                                 name=f"{node.name}/Reshape"),
                helper.make_node("GatherBlockQuantized", [f"{name}.rows", node.input[1], f"{name}.scales",
                                                          f"{name}.zero_points"], list(node.output),
                                 name=f"{node.name}BlockQuantized", domain="com.microsoft", bits=8,
                                 block_size=TABLE_BLOCK, gather_axis=0, quantize_axis=1)]
        drop.add(node.input[0])
        if tied:
            out = [n for n in out if n is not source]
            drop.add(source.input[0])
    return out


def _input_ids(graph) -> str:
    return next(i.name for i in graph.input if i.name == "input_ids")


def set_context(folder: Path, max_seq_len: int) -> None:
    """genai_config.json's context and search length: `max_seq_len` positions, greedy by default."""
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    config["model"]["context_length"] = max_seq_len
    config["search"].update({"max_length": max_seq_len, "do_sample": False})
    path.write_text(json.dumps(config, indent=4) + "\n")


class GenaiSession:
    """A GenAI model folder through onnxruntime_genai: `logits(tokens)` teacher-forced from position 0,
    `greedy(prompt, n)` one token at a time over its KV cache."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime_genai as og

        self._og = og
        self.model = og.Model(str(folder))
        self.max_seq_len = json.loads((folder / "genai_config.json").read_text())["search"]["max_length"]

    def _generator(self, length: int):
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        return self._og.Generator(self.model, params)

    def logits(self, tokens: list[int]):
        import torch

        generator = self._generator(len(tokens) + 1)
        generator.append_tokens([tokens])
        return torch.from_numpy(np.array(generator.get_output("logits"))[0]).float()

    def greedy(self, prompt: list[int], count: int, stop: set[int] = frozenset(),
               on_token: Callable[[int], None] | None = None) -> list[int]:
        generator = self._generator(min(len(prompt) + count, self.max_seq_len))
        generator.append_tokens([prompt])
        out = []
        while not generator.is_done() and len(out) < count:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop:
                break
        return out


def genai_generate(folder: Path, prompt: str, count: int, stream: bool = False) -> tuple[str, dict]:
    """Greedy text after `prompt` through onnxruntime_genai (its tokenizer, its Generator), each piece
    written to standard output as it comes when `stream`; the text and token counts and times."""
    import time

    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    ids = list(tokenizer.encode(prompt))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + count)
    generator = og.Generator(model, params)
    decoder, pieces = tokenizer.create_stream(), []
    started = time.perf_counter()
    generator.append_tokens([ids])
    first = None
    while not generator.is_done():
        generator.generate_next_token()
        first = first or time.perf_counter()
        pieces.append(decoder.decode(int(generator.get_next_tokens()[0])))
        if stream:
            sys.stdout.write(pieces[-1])
            sys.stdout.flush()
    ended = time.perf_counter()
    return "".join(pieces), {"prompt_tokens": len(ids), "pieces": len(pieces),
                             "first_token_ms": 1000 * ((first or ended) - started),
                             "decode_ms": 1000 * (ended - (first or ended))}
