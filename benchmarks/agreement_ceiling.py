"""How much top-1 agreement the benchmark's photos allow at a given output SQNR: the float MobileNetV2's
margins between its first and second class on the 56 held-out photos of benchmarks/stock_flows.py, and
the agreement with float when independent Gaussian noise of a given SQNR is added to the logits (the
mean over many draws, fixed seed), beside what edgeship's artifacts measured in
benchmarks/results/stock_flows.json.

Independent noise is kinder than quantization error (it spreads over 1000 logits instead of moving the
few that matter together): at the SQNR an int8 artifact reaches it predicts more agreement than the
artifacts measure. So the SQNR it needs for an agreement is a lower bound for what a quantized model
needs on these photos.

    .venv/bin/python benchmarks/agreement_ceiling.py [--out benchmarks/results/agreement_ceiling.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))

DRAWS = 400
LEVELS_DB = (15, 18, 20, 23, 25, 28, 30, 33, 36, 40, 45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/agreement_ceiling.json")
    opts = parser.parse_args()
    import mobilenet_v2
    from stock_flows import folds

    model = mobilenet_v2.build().eval()
    photos = [(f"fold {k} photo {i}", ev.sample(i)[0]) for k, (_, ev) in enumerate(folds()) for i in range(len(ev))]
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(x)) for _, x in photos]).double().numpy()
    top = np.sort(logits, axis=1)
    margins = top[:, -1] - top[:, -2]
    power = float((logits ** 2).mean())
    rng = np.random.default_rng(0)
    expected = {}
    for level in LEVELS_DB:
        sigma = np.sqrt(power / 10 ** (level / 10))
        hits = [(np.argmax(logits + rng.normal(0, sigma, logits.shape), 1) == logits.argmax(1)).mean()
                for _ in range(DRAWS)]
        expected[level] = round(float(np.mean(hits)), 4)
    measured = []
    flows = ROOT / "benchmarks/results/stock_flows.json"
    if flows.exists():
        measured = [{k: r[k] for k in ("runtime", "flow", "sqnr_db", "top1_agreement")}
                    for r in json.loads(flows.read_text())["summary"] if r["flow"].startswith("edgeship")]
    rms = float(np.sqrt(power))
    close = sorted(zip(margins, (n for n, _ in photos)))[:6]
    print(f"{len(photos)} photos, logit RMS {rms:.2f}; smallest top-1/top-2 margins: "
          + ", ".join(f"{name} {m:.3f}" for m, name in close))
    for level, agreement in expected.items():
        print(f"independent logit noise at {level:2d} dB SQNR: expected top-1 agreement {agreement * 100:5.1f}%")
    for r in measured:
        print(f"measured {r['runtime']:12s} {r['flow']:17s} {r['sqnr_db']:6.2f} dB  {r['top1_agreement'] * 100:5.1f}%")
    needed = next((level for level, a in expected.items() if a >= 0.98), None)
    print(f"98% needs at least {needed} dB even with independent noise" if needed else
          f"98% is not reached below {LEVELS_DB[-1]} dB even with independent noise")
    result = {"benchmark": "agreement_ceiling", "photos": len(photos), "logit_rms": round(rms, 3),
              "margins": {name: round(float(m), 4) for (name, _), m in zip(photos, margins)},
              "draws": DRAWS, "expected_top1_agreement_by_sqnr_db": expected,
              "sqnr_db_needed_for_98": needed, "measured": measured}
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
