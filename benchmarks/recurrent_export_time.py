"""Export time of a recurrent model against its sequence length: a 3-layer LSTM speaker encoder
(nn.LSTM(40, 256, num_layers=3), a linear layer and an L2 norm: tests/models.py `speaker_encoder`) for
android-arm64 at 40, 80, 160 and 320 frames, every artifact lowered and verified, with the time of each
stage. Calibration: 24 sequences of synthetic filterbank frames (`spoken_features`), evaluation 8 others.
Prints the stages and writes benchmarks/results/recurrent_export_time.json.

    .venv/bin/python benchmarks/recurrent_export_time.py [--frames 40 80 160 320]
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

from minilm_accuracy import save  # noqa: E402
from models import spoken_features  # noqa: E402

from edgeship import api, apart  # noqa: E402
from edgeship.logs import StageLines  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[40, 80, 160, 320])
    parser.add_argument("--serial", action="store_true",
                        help="lower every runtime in this process (default: ExecuTorch in a second one on 2+ cores)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recurrent_export_time.json")
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="edgeship-recurrent-time-"))
    rows = []
    for frames in args.frames:
        x, _ = spoken_features(32, frames=frames, seed=1)
        x = x.transpose(1, 2).contiguous().numpy()  # [B, frames, 40]
        np.savez(work / "calib.npz", mels=x[:24])
        np.savez(work / "eval.npz", mels=x[24:])
        stages = StageLines(lambda line: print(line, flush=True))
        begin = time.perf_counter()
        print(f"--- {frames} frames", flush=True)
        result = api.export(f"{ROOT / 'tests' / 'models.py'}:speaker_encoder", "android-arm64", work / "calib.npz",
                            eval_data=work / "eval.npz", out=work / "out", progress=stages.start,
                            lower_apart=False if args.serial else None)
        stages.finish()
        total = round(time.perf_counter() - begin, 1)
        print(f"{'export (all stages)':45s} {total:8.2f} s", flush=True)
        rows.append({"frames": frames, "export_seconds": total, "stages": stages.rows,
                     "artifacts": [{"path": a["path"], "sqnr_db": a["accuracy"]["sqnr_db"],
                                    "float_ops": a.get("float_ops")} for a in result.manifest["artifacts"]],
                     "not_produced": result.manifest["not_produced"]})
    header = {"benchmark": "recurrent_export_time", "model": "3-layer LSTM speaker encoder (256 units)",
              "target": "android-arm64", "calibration_samples": 24, "evaluation_samples": 8,
              "lowering": "one process" if args.serial or not apart.wanted(None) else
              "ExecuTorch in a second process beside the others"}
    save(header, rows, started, args.out, work)


if __name__ == "__main__":
    main()
