"""Recurrent keyword spotters (2-layer LSTM and GRU, 128 units, 32 frames): edgeship against the stock
flows, in one run.

The models are the tests' `tests/models.py` spotters, trained in seconds on synthetic filterbank frames
(no recurrent audio model with pretrained weights ships in a registry package); 48 calibrate, 16 evaluate,
other frames than training. Per artifact, run in its own runtime: SQNR and cosine of the 8 logits to the
float PyTorch model, size against the fp32 artifact of the same runtime, host median.
  edgeship int8               default recipe (recurrent layers unrolled, int8 matmuls, float gates)
  edgeship int8-dynamic       int8 weights, activations quantized at run time
  stock onnxruntime dynamic   onnxruntime.quantization.quantize_dynamic on the fp32 ONNX (ONNX LSTM / GRU ops)
  stock executorch            XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True)) on the
                              model as written
Prints a table and writes benchmarks/results/recurrent_accuracy.json.

    .venv/bin/python benchmarks/recurrent_accuracy.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from minilm_accuracy import run, save, stock_executorch, stock_ort_dynamic  # noqa: E402
from models import spoken_features, trained_keyword_spotter  # noqa: E402

from edgeship import api  # noqa: E402
from edgeship.calibration.samples import Samples  # noqa: E402
from edgeship.verify import torch_outputs  # noqa: E402


def _stock(cell: str, flow: str, runtime: str, make, evaluation: Samples, reference) -> dict:
    """One stock flow's row; a flow that fails is a result too (its error, first line)."""
    row = {"model": cell, "flow": flow, "runtime": runtime}
    try:
        return row | run(runtime, make(), evaluation, reference)
    except Exception as exc:  # the stock tools raise many types
        return row | {"failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/recurrent_accuracy.json")
    opts = parser.parse_args()
    from edgeship.export.capture import FlatOutputs

    started = time.time()
    frames, _ = spoken_features(64, seed=11)
    calib = Samples(("x",), (frames[:48].numpy(),), "48 synthetic utterances")
    evaluation = Samples(("x",), (frames[48:].numpy(),), "16 held-out synthetic utterances")
    work = Path(tempfile.mkdtemp(prefix="edgeship-recurrent-"))
    np.savez(work / "calib.npz", x=calib.arrays[0])
    np.savez(work / "eval.npz", x=evaluation.arrays[0])
    rows, fp32 = [], {}
    for cell in ("lstm", "gru"):
        model = FlatOutputs(trained_keyword_spotter(cell)).eval()
        reference = torch_outputs(model, evaluation)
        source = f"{ROOT / 'tests/models.py'}:trained_{cell}_spotter"
        for recipe in ("int8", "int8-dynamic"):
            result = api.export(source, "host", work / "calib.npz", eval_data=work / "eval.npz",
                                out=work / f"{cell}-{recipe}", recipe=recipe)
            fp32[cell] = {a["runtime"]: a["bytes"] for a in result.manifest["artifacts"] if a["precision"] == "fp32"}
            rows += [{"model": cell, "flow": f"edgeship {recipe}", "runtime": a["runtime"], "path": a["path"],
                      "bytes": a["bytes"], "accuracy": a["accuracy"], "median_ms": a["latency_ms"]["median"],
                      "not_quantized": sorted({f["op"] for f in a["not_quantized"]})}
                     for a in result.manifest["artifacts"] if a["precision"] != "fp32"]
        # the fp32 .onnx keeps ONNX's LSTM / GRU op, the form quantize_dynamic knows (DynamicQuantizeLSTM)
        float_onnx = result.out_dir / "model.fp32.onnx"
        rows.append(_stock(cell, "stock onnxruntime quantize_dynamic", "onnxruntime",
                           lambda: stock_ort_dynamic(float_onnx, work), evaluation, reference))
        rows.append(_stock(cell, "stock executorch XNNPACKQuantizer", "executorch",
                           lambda: stock_executorch(model, calib, work, integer_constants=False), evaluation, reference))
    for r in rows:
        if "failed" in r:
            print(f"{r['model']:5s} {r['flow']:36s} {r['runtime']:12s} failed: {r['failed']}", flush=True)
            continue
        print(f"{r['model']:5s} {r['flow']:36s} {r.get('path', ''):26s} {r['runtime']:12s} "
              f"SQNR {r['accuracy']['sqnr_db']:6.2f} dB  cosine {r['accuracy']['cosine']:.5f}  "
              f"{r['bytes'] / 1e3:7.0f} KB ({r['bytes'] / fp32[r['model']][r['runtime']] * 100:.0f}% of fp32)", flush=True)
    save({"benchmark": "recurrent_accuracy", "models": "tests/models.py trained_{lstm,gru}_spotter, 32 frames",
          "calibration": calib.source, "evaluation": evaluation.source, "fp32_bytes": fp32}, rows, started,
         opts.out, work)


if __name__ == "__main__":
    main()
