"""Export time of a recurrent model against its sequence length: a 3-layer LSTM speaker encoder
(nn.LSTM(40, 256, num_layers=3), a linear layer and an L2 norm: tests/models.py `speaker_encoder`) for
android-arm64 at 40, 80, 160 and 320 frames (each layer one loop over the frames: edgeship/export/loops.py),
every artifact lowered and verified, with the time of each
stage; at 40 frames both with every runtime lowered in one process and with ExecuTorch lowered in a second
process beside the others (what an export does on two or more cores), the other lengths the second way. Calibration: 24 sequences of synthetic filterbank frames (`spoken_features`), evaluation 8 others.
Prints the stages and writes benchmarks/results/recurrent_export_time.json.

    .venv/bin/python benchmarks/recurrent_export_time.py [--frames 40 80 160 320] [--lowering "two processes"]
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

from edgeship import api  # noqa: E402
from edgeship.export.recurrent import LOOP_STEPS  # noqa: E402
from edgeship.logs import StageLines  # noqa: E402

MODES = {"one process": False, "two processes": True}  # api.export's lower_apart


def timed_export(model: str, work: Path, lower_apart: bool) -> dict:
    """One export of `model` on work/calib.npz and work/eval.npz: its stages' and its total seconds, the
    artifacts' SQNR and what was not produced."""
    stages = StageLines(lambda line: print(line, flush=True))
    begin = time.perf_counter()
    out = work / f"out-{len(list(work.glob('out-*')))}"  # a new folder: no statistics cached by an earlier run
    result = api.export(model, "android-arm64", work / "calib.npz", eval_data=work / "eval.npz", out=out,
                        progress=stages.start, lower_apart=lower_apart)
    stages.finish()
    total = round(time.perf_counter() - begin, 1)
    print(f"{'export (all stages)':45s} {total:8.2f} s", flush=True)
    return {"export_seconds": total, "stages": stages.rows,
            "artifacts": [{"path": a["path"], "sqnr_db": a["accuracy"]["sqnr_db"],
                           "top1": a["accuracy"].get("top1_agreement")} for a in result.manifest["artifacts"]],
            "not_produced": result.manifest["not_produced"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[40, 80, 160, 320])
    parser.add_argument("--lowering", nargs="+", choices=list(MODES), default=list(MODES),
                        help="one process: every runtime lowered in turn; two processes: ExecuTorch beside the others")
    parser.add_argument("--both-at", type=int, nargs="*", default=[40],
                        help="frame counts measured in every --lowering mode; the others in the last mode only")
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
        for mode in args.lowering if frames in args.both_at else args.lowering[-1:]:
            print(f"--- {frames} frames, {mode}", flush=True)
            row = timed_export(f"{ROOT / 'tests' / 'models.py'}:speaker_encoder", work, MODES[mode])
            rows.append({"frames": frames, "lowering": mode} | row)
    header = {"benchmark": "recurrent_export_time", "model": "3-layer LSTM speaker encoder (256 units)",
              "target": "android-arm64", "calibration_samples": 24, "evaluation_samples": 8,
              "recurrent_layers": f"one loop per layer from {LOOP_STEPS} steps on (edgeship/export/loops.py)"}
    save(header, rows, started, args.out, work)


if __name__ == "__main__":
    main()
