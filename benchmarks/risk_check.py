"""How well the shipped risk statistics and the audit's calibration predict artifacts (README, "Your own images").

    .venv/bin/python benchmarks/risk_check.py --out risk_check.json     # ~10-20 min on 1 thread

For each model, the test inputs of its task (SR: `data.ood_sets`, 27 inputs, 64 x 64 LR; low
light: `data.lowlight_ood_sets(64)`) are split in two by their position (even / odd). `minflow.audit`
fits its calibration on one half and audits the other, then the other way round; it reports the
risk score's ROC-AUC for the audited (sample, pixel) artifact events and the predicted and
measured artifact rates of inputs its calibration never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import minflow as mf  # noqa: E402


def conditions(builder: str) -> torch.Tensor:
    if builder == "srflow":
        return torch.stack([it.lr for group in mf.data.ood_sets().values() for it in group.values()])
    return torch.stack([it.dark for group in mf.data.lowlight_ood_sets(64).values() for it in group.values()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["sr_affine", "sr_spline", "ll_affine", "ll_spline"])
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.models:
        model = mf.load_pretrained(name)
        conds = conditions(model.manifest["builder"])
        halves = {"even": conds[0::2], "odd": conds[1::2]}
        start, runs = time.perf_counter(), {}
        for audited, calibrated in (("odd", "even"), ("even", "odd")):
            rep = mf.audit(model, halves[audited], temperature=args.temperature, samples=args.samples,
                           calibration_conds=halves[calibrated], seed=0)  # fmt: skip
            runs[f"audit {audited}, calibrate on {calibrated}"] = {
                "inputs": len(halves[audited]),
                "auc": rep.auc,
                "predicted_rate": rep.predicted_rate,
                "measured_rate": rep.measured_rate,
                "calibration": {
                    "a": rep.calibration.a,
                    "b": rep.calibration.b,
                    "events": rep.calibration.events,
                    "pairs": rep.calibration.pairs,
                },  # fmt: skip
            }
        results[name] = {"runs": runs, "seconds": time.perf_counter() - start}
        print(name, json.dumps(results[name], indent=1), flush=True)
    settings = {"temperature": args.temperature, "samples": args.samples, "threads": args.threads}
    if args.out:
        args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
