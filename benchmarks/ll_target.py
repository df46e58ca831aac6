"""Low-light flows measured against simple baselines on a validation split, over many darkenings.

    .venv/bin/python benchmarks/ll_target.py ll_affine ll_spline                # shipped checkpoints
    .venv/bin/python benchmarks/ll_target.py /work/runs/l_affine --photos wide --darkenings 4 --json out.json

Each argument is a shipped checkpoint name or a run folder of ``python -m minflow train-lowlight``.
Every validation photo of ``--photos`` (`data.PHOTO_SPLITS`), centre-cropped to ``--size`` (0: the
whole photo, cropped to a multiple the flow accepts), is darkened ``--darkenings`` times by
`data.darken` with the training ranges (generator seeds 0, 1, ...: the same inputs for every model).
For each input it measures the PSNR against the clean photo of

- the model at T = 0 (LLFlow's choice), clamped for the metric, and the same output brought to the
  clean photo's mean by a gain (``model+mean``: what an evaluation "with the ground-truth mean" grants);
- three baselines: histogram equalisation (`lowlight.equalize`), and a global gain or gamma curve
  that matches the clean photo's mean (`lowlight.match_mean`: they too are given the mean);

and whether the T = 0 output, or any of ``--samples`` samples at ``--temperature``, has an artifact
pixel (`metrics.artifact_mask`), with the smallest scale the sampling used (`minflow.recording`).

The summary: mean and worst PSNR of each method over the inputs, the share of inputs where the
model beats the gamma match, and the artifact rates with 95 % intervals (`metrics.rate_interval`).
Nothing is trained. One thread: about 1 min per model for 13 photos x 4 darkenings at --size 128.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from anywhere, without installing minflow
    sys.path.insert(0, str(ROOT))

from _common import load_model  # noqa: E402

import minflow  # noqa: E402
from minflow import lowlight, metrics  # noqa: E402
from minflow.data import PHOTO_SPLITS, center_crop, darken, load_photos, mod_crop  # noqa: E402

METHODS = ("model", "model+mean", "hist. eq.", "gain match", "gamma match")


def inputs(names: tuple[str, ...], size: int, darkenings: int, multiple: int) -> list[dict]:
    """(photo, seed, clean, dark) for every validation photo and darkening seed."""
    out = []
    for name, photo in zip(names, load_photos(names)):
        clean = center_crop(photo, size) if size else photo
        clean = mod_crop(clean, multiple)
        for seed in range(darkenings):
            out.append({"photo": name, "seed": seed, "clean": clean,
                        "dark": darken(clean, torch.Generator().manual_seed(seed))[0]})  # fmt: skip
    return out


@torch.no_grad()
def measure(model, cases: list[dict], samples: int, temperature: float) -> list[dict]:
    rows = []
    for c in cases:
        clean, dark = c["clean"], c["dark"]
        mean = clean.mean().item()
        with minflow.recording() as rec:
            t0 = lowlight.enhance(model, dark)[0]
        xs = lowlight.enhance(model, dark, temperature, samples, torch.Generator().manual_seed(c["seed"]))
        shown = t0.nan_to_num(0).clamp(0, 1)  # for the metrics only; the artifact flags read t0 itself
        outs = {
            "model": shown,
            "model+mean": lowlight.match_mean(shown, mean, "gain"),
            "hist. eq.": lowlight.equalize(dark[None])[0],
            "gain match": lowlight.match_mean(dark, mean, "gain"),
            "gamma match": lowlight.match_mean(dark, mean, "gamma"),
        }
        rows.append({
            "photo": c["photo"], "seed": c["seed"],
            "psnr": {k: metrics.psnr(v, clean) for k, v in outs.items()},
            "t0_artifact": bool(metrics.artifact_mask(t0).any()),
            "sample_artifacts": int(metrics.artifact_mask(xs).flatten(1).any(1).sum()),
            "min_scale_t0": rec.min_scale().min().item(),
        })  # fmt: skip
    return rows


def summarise(rows: list[dict], samples: int) -> dict:
    psnr = {k: [r["psnr"][k] for r in rows] for k in METHODS}
    k0, n0 = sum(r["t0_artifact"] for r in rows), len(rows)
    ks, ns = sum(r["sample_artifacts"] for r in rows), samples * len(rows)
    return {
        "inputs": n0,
        "psnr_mean": {k: sum(v) / len(v) for k, v in psnr.items()},
        "psnr_worst": {k: min(v) for k, v in psnr.items()},
        "beats_gamma": sum(m > g for m, g in zip(psnr["model"], psnr["gamma match"])) / n0,
        "t0_artifacts": [k0, n0, *metrics.rate_interval(k0, n0)],
        "sample_artifacts": [ks, ns, *metrics.rate_interval(ks, ns)],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped checkpoint names or train-lowlight run folders")
    p.add_argument("--photos", choices=sorted(PHOTO_SPLITS), default="course", help="whose validation photos")
    p.add_argument("--size", type=int, default=128, help="centre crop of each photo (0: whole)")
    p.add_argument("--darkenings", type=int, default=4, help="darkenings per photo (seeds 0, 1, ...)")
    p.add_argument("--samples", type=int, default=2, help="samples per input at --temperature")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = PHOTO_SPLITS[args.photos].val
    out, cases = {}, None
    for spec in args.models:
        model = load_model(spec).eval()
        cases = cases or inputs(names, args.size, args.darkenings, model.lr_multiple)
        rows = measure(model, cases, args.samples, args.temperature)
        s = summarise(rows, args.samples)
        label = Path(spec).name
        print(f"\n{label}: {s['inputs']} inputs ({len(names)} {args.photos} validation photos x {args.darkenings} "
              f"darkenings, size {args.size or 'whole'})")  # fmt: skip
        for k in METHODS:
            print(f"  {k:<12} PSNR mean {s['psnr_mean'][k]:6.2f} dB, worst {s['psnr_worst'][k]:6.2f}")
        k0, n0, lo0, hi0 = s["t0_artifacts"]
        ks, ns, los, his = s["sample_artifacts"]
        print(f"  model beats the gamma match on {s['beats_gamma']:.0%} of inputs")
        print(f"  artifacts: T = 0 {k0}/{n0} ({lo0:.1%}-{hi0:.1%}); T = {args.temperature} samples {ks}/{ns} "
              f"({los:.1%}-{his:.1%})")  # fmt: skip
        out[label] = {"steps": model.manifest.get("steps"), "rows": rows, "summary": s}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
