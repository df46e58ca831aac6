"""SR flows measured against the course's targets on a validation split, in and out of distribution.

    .venv/bin/python benchmarks/sr_target.py sr_affine                        # a shipped checkpoint
    .venv/bin/python benchmarks/sr_target.py /work/runs/w_affine --photos wide --ood --json out.json

Each argument is a shipped checkpoint name or a run folder of ``python -m minflow train-sr`` (its
checkpoint ``NAME`` in ``FOLDER/checkpoints``, and ``NAME_early`` beside it if saved). For each
validation photo of ``--photos`` (`data.PHOTO_SPLITS`), mod-cropped to a size the flow accepts and
degraded as in training (`data.bicubic_down`), it measures:

- ``bpd``: bits per dim of the HR photo given its LR (dequantisation seed 0);
- ``T0`` and ``bicubic``: PSNR of the T = 0 output and of `data.bicubic_up` against the HR photo
  (the factor's border shaved; clamped to [0, 1] for the metric only);
- per sample at ``--temperature`` (``--samples`` of them, generator seed 0): PSNR, LR-PSNR
  (`metrics.lr_psnr`) and whether it has an artifact pixel (`metrics.artifact_mask`).

The summary gives, over the photos, mean and worst of T0 - bicubic and the share of photos with
T0 >= bicubic + 0.5 dB; over the clean samples (no artifact pixel), mean and worst of sample -
bicubic and of LR-PSNR; the share of samples with an artifact pixel and of exploding samples
(non-finite or max |x| > 1e3), each with its 95 % interval (`metrics.rate_interval`), and the share
of artifact pixels over all samples.

With ``--ood`` it also samples the "degradation" and "content" inputs of `data.ood_sets` made of
the same validation photos (64 x 64 LR, ``--samples`` each at ``--temperature``): the share of
samples with an artifact pixel and of exploding ones (non-finite or max |x| > 1e3), the number
of non-finite values and the largest finite |x|.

Nothing is trained; checkpoints are only read. One thread (``--threads 1``): about 1-2 min per
model on the 13 photos of the wide split, 3 samples each; ``--ood`` adds as much again.
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

from minflow import metrics  # noqa: E402
from minflow.data import PHOTO_SPLITS, bicubic_down, bicubic_up, load_photos, mod_crop, ood_sets  # noqa: E402
from minflow.sr import SRFlow  # noqa: E402

GAIN = 0.5  # dB over bicubic at T = 0 that a photo must reach to count


def load(spec: str):
    """`_common.load_model`'s specs, or FOLDER/state.pt: a run still training, at the step its state
    was last saved."""
    if not spec.endswith("state.pt"):
        return load_model(spec)
    state = torch.load(spec, map_location="cpu", weights_only=False)  # our own run's state, not a download
    model = SRFlow(**state["config"])
    model.load_state_dict(state["model"])
    model.manifest = {"steps": state["step"]}
    return model


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@torch.no_grad()
def in_distribution(model, photos: dict[str, torch.Tensor], samples: int, temperature: float) -> dict[str, dict]:
    """Per photo: bpd, T = 0 and bicubic PSNR, and per sample at `temperature` PSNR, LR-PSNR and artifact flag."""
    f, rows = model.factor, {}
    for name, photo in photos.items():
        hr = mod_crop(photo, f * model.lr_multiple)
        lr = bicubic_down(hr, f)
        xs = model.sample_images(lr, temperature, samples, gen())
        report = metrics.artifact_report(xs)
        rows[name] = {
            "bpd": model.nll_bpd(hr[None], lr[None], gen()).item(),
            "psnr_t0": metrics.psnr(model.sample_images(lr, 0.0, 1)[0].clamp(0, 1), hr, f),
            "psnr_bicubic": metrics.psnr(bicubic_up(lr, f), hr, f),
            "psnr_samples": [metrics.psnr(x.clamp(0, 1), hr, f) for x in xs],
            "lr_psnr_samples": [metrics.lr_psnr(x, lr, f) for x in xs],
            "artifact": (report["fraction"] > 0).tolist(),
            "artifact_pixels": report["fraction"].tolist(),
            "explosion": report["explosion"].tolist(),
            "max_abs": report["summary"]["max_abs"],
        }
    return rows


def summarise(rows: dict[str, dict]) -> dict:
    """The target figures over the photos and their clean samples (see the module docstring)."""
    gains = [r["psnr_t0"] - r["psnr_bicubic"] for r in rows.values()]
    clean = [(p - r["psnr_bicubic"], q) for r in rows.values()
             for p, q, a in zip(r["psnr_samples"], r["lr_psnr_samples"], r["artifact"]) if not a]  # fmt: skip
    k = sum(sum(r["artifact"]) for r in rows.values())
    n = sum(len(r["artifact"]) for r in rows.values())
    lo, hi = metrics.rate_interval(k, n)
    e = sum(sum(r["explosion"]) for r in rows.values())
    pixels = [f for r in rows.values() for f in r["artifact_pixels"]]
    return {
        "photos": len(rows),
        "bpd": sum(r["bpd"] for r in rows.values()) / len(rows),
        "t0_gain_mean": sum(gains) / len(gains),
        "t0_gain_worst": min(gains),
        "t0_share_gain": sum(g >= GAIN for g in gains) / len(gains),
        "sample_gain_mean": sum(c[0] for c in clean) / len(clean) if clean else float("nan"),
        "sample_gain_worst": min((c[0] for c in clean), default=float("nan")),
        "lr_psnr_mean": sum(c[1] for c in clean) / len(clean) if clean else float("nan"),
        "lr_psnr_worst": min((c[1] for c in clean), default=float("nan")),
        "artifact_samples": [k, n],
        "artifact_rate": k / n,
        "artifact_interval": [lo, hi],
        "artifact_pixel_share": sum(pixels) / len(pixels),
        "explosions": [e, n],
        "explosion_interval": list(metrics.rate_interval(e, n)),
    }


@torch.no_grad()
def out_of_distribution(model, photos: tuple[str, ...], samples: int, temperature: float) -> dict[str, dict]:
    """Per `ood_sets` group ("degradation", "content"): artifact and explosion shares, non-finite count, max |x|."""
    sets, out = ood_sets(model.factor, 64, photos), {}
    for group in ("degradation", "content"):
        reps = [metrics.artifact_report(model.sample_images(x.lr, temperature, samples, gen()))
                for x in sets[group].values()]  # fmt: skip
        n = sum(r["summary"]["samples"] for r in reps)
        bad = sum(round(r["summary"]["with_artifacts"] * r["summary"]["samples"]) for r in reps)
        out[group] = {
            "inputs": len(reps),
            "samples": n,
            "artifact_rate": bad / n,
            "artifact_interval": list(metrics.rate_interval(bad, n)),
            "explosion_rate": sum(r["summary"]["explosions"] * r["summary"]["samples"] for r in reps) / n,
            "nonfinite": sum(r["summary"]["nonfinite"] for r in reps),
            "max_abs": max(r["summary"]["max_abs"] for r in reps),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped checkpoint names, train-sr run folders, or FOLDER:NAME")
    p.add_argument("--photos", choices=sorted(PHOTO_SPLITS), default="course", help="whose validation photos")
    p.add_argument("--samples", type=int, default=3, help="samples per photo (and per OOD input) at --temperature")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--ood", action="store_true", help="also sample the OOD degradations and contents")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = PHOTO_SPLITS[args.photos].val
    photos = dict(zip(names, load_photos(names)))
    out = {}
    for spec in args.models:
        model = load(spec).eval()
        rows = in_distribution(model, photos, args.samples, args.temperature)
        s = summarise(rows)
        label = spec.removesuffix("/state.pt").rstrip("/").split("/")[-1]
        print(f"\n{label} (target {getattr(model, 'target', 'hr')}, {model.manifest.get('steps')} steps), "
              f"{s['photos']} {args.photos} validation photos, T = {args.temperature}")  # fmt: skip
        print(f"{'photo':<20}{'bpd':>7}{'T0':>8}{'bicubic':>9}{'sample':>8}{'LR-PSNR':>9}{'art':>5}{'max|x|':>10}")
        for name, r in rows.items():
            ps, qs = r["psnr_samples"], r["lr_psnr_samples"]
            print(f"{name:<20}{r['bpd']:>7.3f}{r['psnr_t0']:>8.2f}{r['psnr_bicubic']:>9.2f}{sum(ps) / len(ps):>8.2f}"
                  f"{sum(qs) / len(qs):>9.2f}{sum(r['artifact']):>5}{r['max_abs']:>10.3g}")  # fmt: skip
        lo, hi = s["artifact_interval"]
        print(f"T0 - bicubic: mean {s['t0_gain_mean']:+.2f} dB, worst {s['t0_gain_worst']:+.2f}, "
              f">= +{GAIN} dB on {s['t0_share_gain']:.0%} of photos")  # fmt: skip
        print(f"clean samples - bicubic: mean {s['sample_gain_mean']:+.2f} dB, worst {s['sample_gain_worst']:+.2f}; "
              f"LR-PSNR mean {s['lr_psnr_mean']:.1f}, worst {s['lr_psnr_worst']:.1f} dB")  # fmt: skip
        print(f"samples with an artifact: {s['artifact_samples'][0]}/{s['artifact_samples'][1]} "
              f"({s['artifact_rate']:.1%}, 95 % interval {lo:.1%}-{hi:.1%}); pixels with an artifact "
              f"{s['artifact_pixel_share']:.1e}")  # fmt: skip
        lo, hi = s["explosion_interval"]
        print(f"exploding samples (non-finite or max|x| > 1e3): {s['explosions'][0]}/{s['explosions'][1]} "
              f"({lo:.1%}-{hi:.1%})")  # fmt: skip
        result = {"target": getattr(model, "target", "hr"), "steps": model.manifest.get("steps"),
                  "per_photo": rows, "summary": s}  # fmt: skip
        if args.ood:
            result["ood"] = out_of_distribution(model, names, args.samples, args.temperature)
            for group, g in result["ood"].items():
                lo, hi = g["artifact_interval"]
                print(f"OOD {group}: {g['inputs']} inputs, artifact {g['artifact_rate']:.1%} ({lo:.1%}-{hi:.1%}), "
                      f"exploding {g['explosion_rate']:.1%}, non-finite {g['nonfinite']}, "
                      f"max|x| {g['max_abs']:.3g}")  # fmt: skip
        out[label] = result
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
