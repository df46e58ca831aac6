"""SR flows that model the HR image ("hr") against ones that model its residual to bicubic ("residual").

    .venv/bin/python benchmarks/sr_target.py sr_affine                       # a shipped checkpoint
    .venv/bin/python benchmarks/sr_target.py runs/a_hr runs/a_res --json out.json  # run folders (RUNS/NAME)

Each argument is a shipped checkpoint name or a run folder of ``python -m minflow train-sr`` (its
checkpoint ``NAME`` in ``FOLDER/checkpoints``). For the validation photos (`data.VAL_PHOTOS`) and
the test photo (`data.TEST_PHOTOS`), each mod-cropped to a size the flow accepts and degraded as in
training (`data.bicubic_down`, the model's factor), it prints per photo:

- ``bpd``: bits per dim of the HR photo given its LR (`ImageFlow.nll_bpd`, dequantisation seed 0);
- ``T0``: PSNR of the T = 0 output against the HR photo, and ``bicubic``: PSNR of `data.bicubic_up`
  (both with the factor's border shaved, clamped to [0, 1] for the metric only);
- ``T0.7``: mean PSNR of single samples at T = 0.7 (``--samples`` of them, generator seed 0);
- ``LR-PSNR``: `metrics.lr_psnr` of those samples (bicubic_down of each against the LR, pooled);
- ``art``: the share of those samples' pixels that `metrics.artifact_mask` flags, and ``bad``: how
  many of the samples have any flagged pixel (one exploding sample makes T0.7 and LR-PSNR nan).

Then the mean over the validation photos. Nothing is trained; a checkpoint is only read. Run with
one thread (``OMP_NUM_THREADS=1``) on a shared machine: about 25 s per model (3 photos, 3 samples).
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

from minflow import metrics  # noqa: E402
from minflow.checkpoints import load_pretrained  # noqa: E402
from minflow.data import TEST_PHOTOS, VAL_PHOTOS, bicubic_down, bicubic_up, load_photos, mod_crop  # noqa: E402


def load(spec: str):
    """A shipped checkpoint by name, or the checkpoint of run folder `spec` (its last path part is the name)."""
    path = Path(spec)
    if path.is_dir():
        return load_pretrained(path.name, root=path)
    return load_pretrained(spec)


@torch.no_grad()
def measure(model, photos: dict[str, torch.Tensor], samples: int, temperature: float) -> dict[str, dict]:
    """Per photo: bpd, T = 0 PSNR, bicubic PSNR, single-sample PSNR and LR-PSNR at `temperature`, artifact share."""
    f, rows = model.factor, {}
    for name, photo in photos.items():
        hr = mod_crop(photo, f * model.lr_multiple)
        lr = bicubic_down(hr, f)
        bpd = model.nll_bpd(hr[None], lr[None], torch.Generator().manual_seed(0)).item()
        t0 = model.sample_images(lr, 0.0, 1)[0]
        xs = model.sample_images(lr, temperature, samples, torch.Generator().manual_seed(0))
        rows[name] = {
            "bpd": bpd,
            "psnr_t0": metrics.psnr(t0.clamp(0, 1), hr, f),
            "psnr_bicubic": metrics.psnr(bicubic_up(lr, f), hr, f),
            "psnr_sample": sum(metrics.psnr(x.clamp(0, 1), hr, f) for x in xs) / samples,
            "lr_psnr": metrics.lr_psnr(xs, lr, f),
            "artifact_share": metrics.artifact_mask(xs).double().mean().item(),
            "bad_samples": int(metrics.artifact_mask(xs).flatten(1).any(1).sum()),
        }
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="shipped checkpoint names or train-sr run folders")
    p.add_argument("--samples", type=int, default=3, help="samples per photo at --temperature")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [*VAL_PHOTOS, *TEST_PHOTOS]
    photos = dict(zip(names, load_photos(names)))
    out = {}
    head = f"{'model':<22}{'target':<9}{'photo':<14}{'bpd':>7}{'T0':>8}{'bicubic':>9}{'T0.7':>8}{'LR-PSNR':>9}"
    head += f"{'art':>8}{'bad':>5}"
    print(head)
    for spec in args.models:
        model = load(spec).eval()
        target = getattr(model, "target", "hr")
        rows = measure(model, photos, args.samples, args.temperature)
        val = {k: sum(rows[n][k] for n in VAL_PHOTOS) / len(VAL_PHOTOS) for k in rows[VAL_PHOTOS[0]]}
        label = Path(spec).name
        for photo, r in [*rows.items(), ("val mean", val)]:
            print(
                f"{label:<22}{target:<9}{photo:<14}{r['bpd']:>7.3f}{r['psnr_t0']:>8.2f}{r['psnr_bicubic']:>9.2f}"
                f"{r['psnr_sample']:>8.2f}{r['lr_psnr']:>9.2f}{r['artifact_share']:>8.1e}{r['bad_samples']:>5g}"
            )
        out[label] = {"target": target, "steps": model.manifest.get("steps"), "per_photo": rows, "val_mean": val}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
