"""Train the small SRFlow of chapters 4-5 and ship it as a checkpoint.

    python -m minflow.train --coupling affine --steps 1800 --seed 0 --name sr_affine --early 400

Each step draws `--batch` random HR crops of `--crop` pixels from the training photos, makes
their LR by antialiased bicubic downscaling, and takes one Adam step on the bits per dim of the
dequantised HR given the LR (`SRFlow.nll_bpd`). Every `--save-every` steps the whole state
(model, optimiser, random generator, step, wall time) goes to runs/NAME/state.pt, so a killed
run resumes when the same command is run again. A non-finite loss or gradient stops the run
with a message before anything is saved. At step `--early` the model is also shipped as
NAME_early (before artifacts emerge); at the end as NAME, with validation metrics in its
manifest: bits per dim (fixed dequantisation noise), and PSNR / SSIM against HR of the mean of
a few samples at temperature 0.7, next to the bicubic baseline's.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .checkpoints import save_checkpoint
from .data import TRAIN_PHOTOS, VAL_PHOTOS, bicubic_down, bicubic_up, center_crop, load_photos, mod_crop, random_crops
from .metrics import psnr, ssim
from .sr import SRFlow, super_resolve

RUNS = Path(__file__).resolve().parent.parent / "runs"


class TrainError(RuntimeError):
    """A run that cannot go on (the command prints the message and exits with status 1)."""


class NonFiniteLoss(TrainError):
    """Raised when a training step produces a non-finite loss or gradient."""


def validation_pairs(model: SRFlow, size: int = 0) -> list[tuple[str, Tensor, Tensor]]:
    """(name, HR, LR) for each validation photo: whole (or its centre `size` crop), cropped to a
    size the flow accepts, LR by the training degradation."""
    out = []
    for name, hr in zip(VAL_PHOTOS, load_photos(VAL_PHOTOS)):
        hr = mod_crop(center_crop(hr, size) if size else hr, model.factor * model.lr_multiple)
        out.append((name, hr, bicubic_down(hr, model.factor)))
    return out


@torch.no_grad()
def validation_bpd(model: SRFlow, hr: Tensor, lr: Tensor, seed: int = 0) -> float:
    """Bits per dim of one (3, H, W) HR given its LR, with dequantisation noise from `seed`."""
    return model.nll_bpd(hr[None], lr[None], torch.Generator().manual_seed(seed)).item()


@torch.no_grad()
def evaluate(model: SRFlow, size: int = 0, temperature: float = 0.7, num_samples: int = 3, seed: int = 0) -> dict:
    """Validation metrics, deterministic for a given seed (dequantisation noise and samples).

    Per photo: bpd; PSNR / SSIM (border of `factor` px shaved) of the mean of `num_samples`
    samples (clamped to [0, 1] for the metric only) and of bicubic upscaling; and of the raw
    samples: max |x| and the non-finite count, so an explosion cannot hide behind the mean.
    """
    was_training = model.training
    model.eval()
    f, rows = model.factor, {}
    for name, hr, lr in validation_pairs(model, size):
        bpd = validation_bpd(model, hr, lr, seed)
        x = super_resolve(model, lr, temperature, num_samples, generator=torch.Generator().manual_seed(seed))
        mean, bic = x.mean(0).clamp(0, 1), bicubic_up(lr, f)
        finite = torch.isfinite(x)
        rows[name] = {
            "bpd": bpd,
            "psnr": psnr(mean, hr, f), "ssim": ssim(mean, hr, f),
            "bicubic_psnr": psnr(bic, hr, f), "bicubic_ssim": ssim(bic, hr, f),
            "max_abs": x[finite].abs().max().item() if finite.any() else math.nan,
            "nonfinite": int((~finite).sum()),
        }  # fmt: skip
    model.train(was_training)
    avg = {k: sum(r[k] for r in rows.values()) / len(rows) for k in ("bpd", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    return {
        "val_bpd": avg["bpd"], "psnr": avg["psnr"], "ssim": avg["ssim"],
        "bicubic_psnr": avg["bicubic_psnr"], "bicubic_ssim": avg["bicubic_ssim"],
        "temperature": temperature, "num_samples": num_samples, "eval_seed": seed, "val_size": size, "per_image": rows,
    }  # fmt: skip


# ----------------------------------------------------------------------------- training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minflow.train", description=__doc__.split("\n")[0])
    p.add_argument("--name", required=True, help="checkpoint name (data/checkpoints/NAME.pt) and run folder")
    p.add_argument("--coupling", default="affine", help="'affine' (SRFlow), an Affine scale name, or a spline")
    p.add_argument("--prior", default="srflow", choices=["srflow", "conditional"])
    p.add_argument("--steps", type=int, default=1800, help="training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--early", type=int, default=0, help="also ship NAME_early at this step (0: no)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="HR crop size")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--flow-steps", type=int, default=3, help="conditional steps K per level")
    p.add_argument("--width", type=int, default=32, help="conditioner width")
    p.add_argument("--nf", type=int, default=32, help="encoder width")
    p.add_argument("--blocks", type=int, default=4, help="encoder residual dense blocks")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--val-size", type=int, default=0, help="validate on centre crops of this size (0: whole photos)")
    p.add_argument("--val-samples", type=int, default=3)
    p.add_argument("--runs", type=Path, default=RUNS, help="folder for resumable run state")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> dict:
    """The JSON-able SRFlow config for these arguments."""
    return dict(SRFlow(factor=args.factor, levels=args.levels, steps=args.flow_steps, width=args.width, nf=args.nf,
                       blocks=args.blocks, coupling=args.coupling, prior=args.prior).config)  # fmt: skip


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-write never leaves a broken state


def ship(model, name: str, builder: str, config: dict, args: argparse.Namespace, command: str, step: int,
         wall: float, evaluate: Callable[[], dict], **training) -> dict:
    """Validate with ``evaluate()`` and save checkpoint `name` with the record every manifest carries:
    the command, seed, steps, training and evaluation seconds, the metrics, and the training
    settings (batch, crop, lr, threads, Adam betas, plus ``training``). Returns the metrics."""
    t0 = time.perf_counter()
    metrics = evaluate()
    record = {"command": command, "seed": args.seed, "steps": step, "wall_time_s": round(wall, 1),
              "eval_time_s": round(time.perf_counter() - t0, 1), "metrics": metrics,
              "training": {k: getattr(args, k) for k in ("batch", "crop", "lr", "threads")} | {"adam_betas": [0.9, 0.99], **training}}  # fmt: skip
    save_checkpoint(model, name, builder=builder, config=config, record=record)
    return metrics


def _ship(model: SRFlow, name: str, config: dict, args, command: str, step: int, wall: float) -> dict:
    metrics = ship(model, name, "srflow", config, args, command, step, wall,
                   lambda: evaluate(model, args.val_size, num_samples=args.val_samples, seed=0))  # fmt: skip
    print(f"saved checkpoint {name} at step {step}: val bpd {metrics['val_bpd']:.3f}, PSNR {metrics['psnr']:.2f} dB "
          f"(bicubic {metrics['bicubic_psnr']:.2f}), SSIM {metrics['ssim']:.3f} (bicubic {metrics['bicubic_ssim']:.3f})", flush=True)  # fmt: skip
    return metrics


def fit(model, batches: Callable[[torch.Generator], tuple[Tensor, Tensor]], args: argparse.Namespace, config: dict,
        on_step: Callable[[int, float], None] | None = None) -> tuple[int, float]:
    """The resumable training loop shared by SR and low-light training; returns (steps, wall seconds).

    Each step takes ``x, cond = batches(gen)`` and one Adam step (betas 0.9, 0.99) on
    ``model.nll_bpd(x, cond, gen).mean()``; `gen` (seeded with ``args.seed``) drives all the
    randomness, so a run is reproducible and resumes exactly. Every ``args.save_every`` steps the
    state goes to ``args.runs / args.name / "state.pt"``; a state made with another config or other
    hyper-parameters is refused. A non-finite loss or gradient raises `NonFiniteLoss` before the
    optimiser moves. ``on_step(step, wall)`` runs after every step (e.g. to ship an early checkpoint).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    hyper = {k: getattr(args, k) for k in ("seed", "batch", "crop", "lr")}
    optim = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    run = args.runs / args.name
    run.mkdir(parents=True, exist_ok=True)
    state_path, step, wall = run / "state.pt", 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        if state["config"] != config or state["hyper"] != hyper:
            raise TrainError(f"{state_path} was made with other settings ({state['config']}, {state['hyper']}); "
                             f"use another --name or delete {run}")  # fmt: skip
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        gen.set_state(state["generator"])
        step, wall = state["step"], state["wall"]
        print(f"resuming {args.name} from step {step} ({state_path})", flush=True)
    model.train()
    bar = None
    if not args.no_progress and step < args.steps:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=step, desc=args.name, mininterval=5, dynamic_ncols=True)
    ema = None
    while step < args.steps:
        t0 = time.perf_counter()
        x, cond = batches(gen)
        loss = model.nll_bpd(x, cond, gen).mean()
        optim.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf) if torch.isfinite(loss) else loss
        if not (torch.isfinite(loss) and torch.isfinite(grad)):
            raise NonFiniteLoss(
                f"non-finite {'loss' if not torch.isfinite(loss) else 'gradient'} at step {step + 1} "
                f"(loss {loss.item():.4g}); nothing was saved for it. The last good state (step {step}) is in "
                f"{state_path if state_path.exists() else '(none yet)'}; try a smaller --lr or another --seed."
            )  # fmt: skip
        optim.step()
        step += 1
        wall += time.perf_counter() - t0
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(bpd=f"{ema:.3f}", refresh=False)
        if on_step is not None:
            on_step(step, wall)
        if step % args.save_every == 0 or step == args.steps:
            _save_state(state_path, {"model": model.state_dict(), "optim": optim.state_dict(), "generator": gen.get_state(),
                                     "step": step, "wall": wall, "config": config, "hyper": hyper})  # fmt: skip
            print(f"step {step}/{args.steps}  bpd(ema) {ema:.4f}  train wall {wall:.0f} s", flush=True)
    if bar is not None:
        bar.close()
    return step, wall


def train(args: argparse.Namespace, command: str) -> dict:
    """Run (or resume) SR training as described in the module docstring; returns the final metrics."""
    config = model_config(args)
    torch.manual_seed(args.seed)
    model = SRFlow(**config)
    images = load_photos(TRAIN_PHOTOS)

    def batches(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        hr = random_crops(images, args.crop, args.batch, gen)
        return hr, bicubic_down(hr, args.factor)

    def ship_early(step: int, wall: float) -> None:
        if step == args.early:
            _ship(model, f"{args.name}_early", config, args, command, step, wall)

    step, wall = fit(model, batches, args, config, on_step=ship_early)
    return _ship(model, args.name, config, args, command, step, wall)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    command = "python -m minflow.train " + shlex.join(argv)
    try:
        return train(parse_args(argv), command)
    except TrainError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
