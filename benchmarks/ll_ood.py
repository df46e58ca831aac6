"""Where low-light flows explode, over many photos and darkenings, and what predicts it.

    .venv/bin/python benchmarks/ll_ood.py ll_affine ll_affine_k3 ll_spline ll_spline_k3 --json out.json
    .venv/bin/python benchmarks/ll_ood.py /work/runs/l_affine --seeds 2 --samples 2       # a run folder
    .venv/bin/python benchmarks/ll_ood.py ll_affine_k3 --size 256                         # larger crops

Each argument is a shipped checkpoint name or a run folder of ``python -m minflow train-lowlight``.

Inputs: every validation and test photo of the wide split (`data.PHOTO_SPLITS`, 13 + 4), centre-
cropped to ``--size``, darkened by `data.darken` with the training ranges for generator seeds
0 .. ``--seeds`` - 1 (in distribution), and once (seed 0) for each out-of-distribution kind of
`KINDS`: the override replaces one parameter, every other draw is that of seed 0. The same
inputs for every model. Photos alternate between two halves (A: 1st, 3rd, ... photo; B: the rest).

Per model and input: the T = 0 output and ``--samples`` samples at ``--temperature`` (generator
seed 0): explosions (non-finite or max |x| > 1e3, `metrics.artifact_report`), artifact pixels
(`metrics.artifact_mask`), the smallest scale of each pass (`minflow.recording`), and the
smallest scale of a forward pass of the model on its own T = 0 output (the "self-check").
Events of an input: an artifact pixel in its T = 0 output or in any sample ("art."), in any
sample ("art. T": what the T = 0 pass must foresee), an explosion of any of them ("expl.").

Candidate predictors, each fitted (where it needs fitting) on ``--fit-batches`` batches of the
model's training stream (`data.LowLightPairs` with its manifest's photos, crop, batch and seed),
each an input-level number (mean or max over the pixels of a per-pixel map):

- Mahalanobis distance (`ood.Mahalanobis`) of the encoder's features at levels 1, 2, 3 (level 1
  is chapter 9's score); of level 1 for the dark input brought by a gain to the training darks'
  mean (a scorer input only: the model still samples the original); of `lowlight.encoder_inputs`;
- colour of the dark input (2x2-averaged): green dominance r_g - max(r_r, r_b) of the colour
  ratio, and saturation (max - min) / max; the darkness -mean(y);
- -log10 of the smallest scale: of the T = 0 sampling pass, of its injectors alone (their scale
  is a function of the dark input only, so this one needs no latent) and of the self-check.

Reported: per kind, the event counts and the medians of the level-1 scores and injector scale;
pixel-level Spearman of each map with the artifact frequency of the 2x2 blocks over the
samples (chapter 9, section 6), AUC of each candidate for each event over all inputs and of
"art." per half, the ranks (1 = highest) of the exploding inputs by the level-1 mean score, and the
Spearman correlation of that score with the input's brightness (its mean).
One pick is made: the best candidate by "art." AUC on half A, reported on half B, with the
threshold of largest TPR - FPR on half A and its TPR / FPR on half B. Nothing is trained.
One thread, default run (17 photos x 8 darkenings = 136 inputs, 6 samples each): about 5.5 min
for the four shipped models on a shared 2-core machine (about 1 min per affine model, 2 per spline
model); ``--size 256`` costs about 4 times as much.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from anywhere, without installing minflow
    sys.path.insert(0, str(ROOT))

from _common import load_model  # noqa: E402

import minflow  # noqa: E402
from minflow import lowlight, metrics, ood  # noqa: E402
from minflow.couplings import Injector  # noqa: E402
from minflow.data import PHOTO_SPLITS, LowLightPairs, center_crop, darken, load_photos  # noqa: E402
from minflow.utils import nanmin  # noqa: E402

KINDS = {  # out-of-distribution darkenings: one parameter far outside DARKEN_RANGES
    "darker": {"exposure": 0.02},
    "lit": {"exposure": 1.0, "gamma": 1.0},
    "cast": {"cast": 0.6},
    "noise": {"read": 0.05},
}
MAHA = ("maha L1", "maha L2", "maha L3", "maha L1 mean-norm.", "maha enc. inputs")
MAPS = (*MAHA, "green dominance", "saturation")
SCALARS = ("darkness", "-log s, T=0 pass", "-log s, T=0 injectors", "-log s, self-check")
EVENTS = ("art.", "art. T", "expl.")


def inputs(size: int, seeds: int) -> list[dict]:
    split = PHOTO_SPLITS["wide"]
    names = (*split.val, *split.test)
    out = []
    for i, (name, photo) in enumerate(zip(names, load_photos(names))):
        clean = center_crop(photo, size)
        for kind, seed, over in [*(("train", s, {}) for s in range(seeds)), *((k, 0, v) for k, v in KINDS.items())]:
            dark = darken(clean, torch.Generator().manual_seed(seed), **over)[0]
            out.append({"photo": name, "half": "AB"[i % 2], "kind": kind, "seed": seed, "dark": dark})
    return out


def gain_to(dark: torch.Tensor, mean: float) -> torch.Tensor:
    """Each image times the gain that brings its mean to `mean`, clipped to [0, 1]."""
    return (dark * mean / dark.mean((1, 2, 3), keepdim=True).clamp(min=1e-4)).clamp(0, 1)


def feature_maps(model, dark: torch.Tensor, mean: float) -> dict[str, torch.Tensor]:
    """The maps each Mahalanobis candidate scores, for a (B, 3, H, W) batch of dark images."""
    h, w = dark.shape[-2:]
    f, g = model.condition(dark), model.condition(gain_to(dark, mean))
    return {"maha L1": f[(h // 2, w // 2)], "maha L2": f[(h // 4, w // 4)], "maha L3": f[(h // 8, w // 8)],
            "maha L1 mean-norm.": g[(h // 2, w // 2)], "maha enc. inputs": lowlight.encoder_inputs(dark)}  # fmt: skip


@torch.no_grad()
def fit_scorers(model, batches: int) -> tuple[dict[str, ood.Mahalanobis], float]:
    """One scorer per Mahalanobis candidate on the model's training stream, and its darks' mean."""
    train = model.manifest["training"]
    photos = load_photos(PHOTO_SPLITS[train.get("photos", "course")].train)
    stream = LowLightPairs(photos, train["crop"], train["batch"], seed=model.manifest["seed"])
    darks = [dark for _, (_, dark) in zip(range(batches), stream)]
    mean = torch.stack(darks).mean().item()
    scorers = {k: ood.Mahalanobis() for k in MAHA}
    for dark in darks:
        for k, m in feature_maps(model, dark, mean).items():
            scorers[k].partial_fit_maps(m)
    return {k: s.finalize() for k, s in scorers.items()}, mean


def to_half_grid(m: torch.Tensor, h: int) -> torch.Tensor:
    """(B, h', w') maps on the (B, h/2, w/2) grid of the level-1 features and 2x2 pixel blocks."""
    f = m.shape[-2] / (h // 2)
    if f > 1:
        return F.avg_pool2d(m[:, None], int(f))[:, 0]
    return m.repeat_interleave(int(1 / f), -2).repeat_interleave(int(1 / f), -1)


def colour_maps(dark: torch.Tensor) -> dict[str, torch.Tensor]:
    y = F.avg_pool2d(dark, 2)
    r = lowlight.colour_ratio(y)
    hi, lo = y.amax(1), y.amin(1)
    return {"green dominance": r[:, 1] - torch.maximum(r[:, 0], r[:, 2]), "saturation": (hi - lo) / (hi + 1e-3)}


def min_s(rec, kind: type = nn.Module) -> float:
    """The smallest scale a recording saw, over the layers of type `kind` (default: all)."""
    return nanmin(torch.cat([s for layer, s in rec.scales if isinstance(layer, kind)])).item()


@torch.no_grad()
def measure(model, cases: list[dict], scorers, mean: float, samples: int, temperature: float):
    """Per input: the events and candidate scores (a row), and the pixel maps and artifact frequencies."""
    rows, pixel = [], {k: [] for k in (*MAPS, "freq")}
    for c in cases:
        dark = c["dark"][None]
        h = dark.shape[-2]
        with minflow.recording() as rec0:
            x0 = lowlight.enhance(model, c["dark"])
        with minflow.recording() as rec:
            xs = lowlight.enhance(model, c["dark"], temperature, samples, torch.Generator().manual_seed(0))
        with minflow.recording() as check:
            model(x0, dark)
        r0, rs = metrics.artifact_report(x0)["summary"], metrics.artifact_report(xs)
        maps = {k: to_half_grid(scorers[k].score_maps(v), h) for k, v in feature_maps(model, dark, mean).items()}
        maps |= colour_maps(dark)
        for k, v in maps.items():
            pixel[k].append(v.flatten())
        pixel["freq"].append(F.max_pool2d(metrics.artifact_mask(xs).float(), 2).mean(0).flatten())
        n_art, n_expl = int((rs["fraction"] > 0).sum()), int(rs["explosion"].sum())
        s0, sc = min_s(rec0), min_s(check)
        score = {f"{k} {a}": getattr(v, a)().item() for k, v in maps.items() for a in ("mean", "max")}
        score |= {"darkness": -dark.mean().item(), "-log s, T=0 pass": -math.log10(s0)}
        score["-log s, T=0 injectors"] = -math.log10(min_s(rec0, Injector))
        score["-log s, self-check"] = -math.log10(sc)
        rows.append({
            **{k: c[k] for k in ("photo", "half", "kind", "seed")}, "dark_mean": dark.mean().item(),
            "t0_artifact_fraction": r0["artifact_fraction"], "t0_explosion": bool(r0["explosions"]),
            "t0_max_abs": r0["max_abs"], "sample_artifacts": n_art, "sample_explosions": n_expl,
            "sample_artifact_fraction": rs["summary"]["artifact_fraction"],
            "min_scale_t0": s0, "min_scale_samples": min_s(rec), "min_scale_self_check": sc,
            "art.": bool(r0["artifact_fraction"] > 0 or n_art), "art. T": bool(n_art),
            "expl.": bool(r0["explosions"] or n_expl),
            "score": score,
        })  # fmt: skip
    return rows, {k: torch.cat(v).double().numpy() for k, v in pixel.items()}


def auc(scores, labels) -> float:
    """ROC AUC, NaN when the labels hold one class only (nothing to predict)."""
    labels = np.asarray(labels, dtype=float)
    if not 0 < labels.sum() < labels.size:
        return math.nan
    return ood.roc_auc(np.nan_to_num(np.asarray(scores), nan=np.inf), labels)  # a NaN scale: the worst


def youden(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t (flag score >= t) of largest TPR - FPR."""
    best = max(np.unique(scores), key=lambda t: (scores[labels] >= t).mean() - (scores[~labels] >= t).mean())
    return float(best)


def summarise(rows: list[dict], pixel: dict[str, np.ndarray]) -> dict:
    names = [*(f"{k} {a}" for k in MAPS for a in ("mean", "max")), *SCALARS]
    col = lambda k, sub=rows: np.array([r["score"][k] for r in sub])  # noqa: E731
    ev = {e: np.array([r[e] for r in rows]) for e in EVENTS}
    half = {h: [r for r in rows if r["half"] == h] for h in "AB"}
    aucs = {k: {e: auc(col(k), ev[e]) for e in EVENTS} for k in names}
    for k in names:
        aucs[k] |= {f"art. {h}": auc(col(k, half[h]), [r["art."] for r in half[h]]) for h in "AB"}
    freq = pixel["freq"]
    rho = {k: ood.spearman(pixel[k], freq) if freq.std() > 0 else math.nan for k in MAPS}
    by_l1 = sorted(range(len(rows)), key=lambda i: -rows[i]["score"]["maha L1 mean"])
    out = {
        "inputs": len(rows), "art.": int(ev["art."].sum()), "expl.": int(ev["expl."].sum()),
        "t0_art": sum(r["t0_artifact_fraction"] > 0 for r in rows), "t0_expl": sum(r["t0_explosion"] for r in rows),
        "min_scale": min(r["min_scale_samples"] for r in rows),
        "pixel_spearman": rho, "auc": aucs,
        "expl_ranks_l1_mean": sorted(by_l1.index(i) + 1 for i, r in enumerate(rows) if r["expl."]),
        "l1_vs_brightness": ood.spearman(col("maha L1 mean"), [r["dark_mean"] for r in rows]),
        "kinds": {k: {"n": len(sub), "art.": sum(r["art."] for r in sub), "expl.": sum(r["expl."] for r in sub),
                      "dark_mean": np.mean([r["dark_mean"] for r in sub]),
                      "l1_mean": np.median(col("maha L1 mean", sub)),
                      "l1_norm_mean": np.median(col("maha L1 mean-norm. mean", sub)),
                      "inj_scale": 10 ** -np.median(col("-log s, T=0 injectors", sub))}
                  for k in ("train", *KINDS) for sub in [[r for r in rows if r["kind"] == k]]},
        "exploding_photos": sorted({r["photo"] for r in rows if r["expl."]}),
    }  # fmt: skip
    a, b = half["A"], half["B"]
    if 0 < sum(r["art."] for r in a) < len(a):  # the pick: on half A only (ties: the first in `names`)
        pick = max(names, key=lambda k: aucs[k]["art. A"])
        la, lb = np.array([r["art."] for r in a]), np.array([r["art."] for r in b])
        t, sb = youden(col(pick, a), la), col(pick, b)
        out["pick"] = {"candidate": pick, "auc_A": aucs[pick]["art. A"], "auc_B": aucs[pick]["art. B"],
                       "threshold": t, "tpr_B": (sb[lb] >= t).mean() if lb.any() else math.nan,
                       "fpr_B": (sb[~lb] >= t).mean()}  # fmt: skip
    return out


def report(label: str, s: dict, n_photos: int, seeds: int) -> None:
    print(f"\n{label}: {s['inputs']} inputs ({n_photos} photos x ({seeds} training darkenings + {len(KINDS)} OOD))")
    print(f"  inputs with an artifact {s['art.']} (at T = 0: {s['t0_art']}), exploding {s['expl.']} "
          f"(at T = 0: {s['t0_expl']}), "
          f"smallest sample scale {s['min_scale']:.1e}")  # fmt: skip
    print(f"  exploding photos: {', '.join(s['exploding_photos']) or 'none'}")
    print(f"  level-1 Mahalanobis: ranks of exploding inputs by mean score {s['expl_ranks_l1_mean']}; "
          f"Spearman(mean score, brightness) {s['l1_vs_brightness']:+.2f}")  # fmt: skip
    print(f"  {'kind':<8}{'n':>4}{'art.':>6}{'expl.':>6}{'dark mean':>11}   medians: {'L1 score':>8}"
          f"{'L1 mean-norm.':>14}{'injector s, T=0':>16}")  # fmt: skip
    for k, v in s["kinds"].items():
        print(f"  {k:<8}{v['n']:>4}{v['art.']:>6}{v['expl.']:>6}{v['dark_mean']:>11.4f}{'':>12}{v['l1_mean']:>8.2f}"
              f"{v['l1_norm_mean']:>14.2f}{v['inj_scale']:>16.3f}")  # fmt: skip
    if not s["art."]:
        print("  no input has an artifact: nothing to predict")
        return
    print(f"  {'candidate':<26}{'AUC art.':>9}{'art. T':>8}{'expl.':>7}{'art. A':>8}{'art. B':>8}{'pixel rho':>10}")
    for k, v in s["auc"].items():
        rho = s["pixel_spearman"].get(k.rsplit(" ", 1)[0]) if k.endswith("mean") else None
        print(f"  {k:<26}{v['art.']:>9.2f}{v['art. T']:>8.2f}{v['expl.']:>7.2f}{v['art. A']:>8.2f}{v['art. B']:>8.2f}"
              + (f"{rho:>10.2f}" if rho is not None else ""))  # fmt: skip
    if "pick" in s:
        p = s["pick"]
        print(f"  picked on half A: {p['candidate']} (AUC {p['auc_A']:.2f}; threshold {p['threshold']:.3g}); "
              f"on half B: AUC {p['auc_B']:.2f}, TPR {p['tpr_B']:.2f}, FPR {p['fpr_B']:.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped checkpoint names or train-lowlight run folders")
    p.add_argument("--size", type=int, default=128, help="centre crop of each photo")
    p.add_argument("--seeds", type=int, default=4, help="darkenings per photo with the training ranges")
    p.add_argument("--samples", type=int, default=6, help="samples per input at --temperature")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--fit-batches", type=int, default=32, help="training-stream batches to fit the scorers on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases, out = inputs(args.size, args.seeds), {}
    n_photos = len({c["photo"] for c in cases})
    for spec in args.models:
        t = time.perf_counter()
        model = load_model(spec).eval()
        scorers, mean = fit_scorers(model, args.fit_batches)
        rows, pixel = measure(model, cases, scorers, mean, args.samples, args.temperature)
        s = summarise(rows, pixel) | {"seconds": time.perf_counter() - t}
        report(Path(spec).name, s, n_photos, args.seeds)
        out[Path(spec).name] = {"steps": model.manifest.get("steps"), "summary": s, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()
