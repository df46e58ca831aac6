"""Train the small SRFlow of chapters 4-5 and save it as a checkpoint.

    python -m minflow.train --coupling affine --steps 1800 --seed 0 --name sr_affine --early 400

Each step draws `--batch` random HR crops of `--crop` pixels from the training photos, makes
their LR by antialiased bicubic downscaling, and takes one Adam step on the bits per dim of the
dequantised HR given the LR (`SRFlow.nll_bpd`). Every `--save-every` steps the whole state
(model, optimiser, random generator, step, wall time, learning-rate history) goes to
runs/NAME/state.pt, so a killed run resumes when the same command is run again. At step
`--early` the model is also saved as NAME_early (before artifacts emerge); at the end as NAME,
with validation metrics in its manifest: bits per dim (fixed dequantisation noise), and PSNR /
SSIM against HR of the mean of a few samples at temperature 0.7, next to the bicubic baseline's.

Where checkpoints go: into the run folder, runs/NAME/checkpoints/ (load them with
``load_pretrained(NAME, root=Path("runs/NAME"))``). ``--ship`` writes them into the shipped
folder data/checkpoints/ (or $MINFLOW_DATA/checkpoints/) instead, and only ``--ship --force``
replaces a checkpoint already there; the check comes before any training.

A run that diverges (a non-finite loss or gradient) stops before the optimiser moves, saves the
state from before the update that led there, and prints the command that retakes that update
with half the learning rate. A run may go on with a smaller ``--lr`` (never a larger one, nor
any other changed setting); the manifest records the learning rates as ``lr_history``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import checkpoints
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


# ----------------------------------------------------------------------------- command lines


def _int_at_least(low: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (steps, sizes, counts)."""
    return _int_at_least(1, text)


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (where 0 means "off" or "default")."""
    return _int_at_least(0, text)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def checkpoint_name(text: str) -> str:
    """argparse type: a run and checkpoint name (a plain file name, as `checkpoints.save_checkpoint` needs)."""
    try:
        return checkpoints.check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_training_args(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float, threads: int) -> None:
    """The options every training command shares (with its own defaults)."""
    p.add_argument("--steps", type=positive_int, default=steps, help="training steps")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--batch", type=positive_int, default=batch)
    p.add_argument("--lr", type=positive_float, default=lr, help="Adam learning rate (a resumed run may lower it)")
    p.add_argument("--threads", type=nonnegative_int, default=threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--runs", type=Path, default=RUNS, help="where run folders go: RUNS/NAME holds a run's state and checkpoints")
    p.add_argument("--ship", action="store_true", help="save the checkpoint into the shipped folder data/checkpoints "
                   "($MINFLOW_DATA/checkpoints when set) instead of the run folder")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint of this name")
    p.add_argument("--no-progress", action="store_true")


def check_model(p: argparse.ArgumentParser, args: argparse.Namespace, build: Callable[[], nn.Module]) -> dict:
    """argparse errors for a model `build()` refuses, or a --crop / --val-size it cannot take; its config."""
    try:
        model = build()
    except ValueError as err:
        p.error(str(err))
    multiple = model.factor * model.lr_multiple
    if args.crop % multiple:
        p.error(f"--crop {args.crop} must be a multiple of {multiple} for this model")
    if 0 < args.val_size < multiple:
        p.error(f"--val-size {args.val_size} must be 0 (whole photos) or at least {multiple} for this model")
    return dict(model.config)


def command_line(module: str, argv: list[str]) -> str:
    """The shell command that runs `python -m module` with `argv`, quoted to copy and paste."""
    return shlex.join(["python", "-m", module, *argv])


def with_lr(command: str, lr: float) -> str:
    """`command` with its (last) --lr set to `lr`, or --lr added."""
    words = shlex.split(command)
    for i in reversed(range(len(words))):
        if words[i] == "--lr" and i + 1 < len(words):
            words[i + 1] = repr(lr)
            break
        if words[i].startswith("--lr="):
            words[i] = f"--lr={lr!r}"
            break
    else:
        words += ["--lr", repr(lr)]
    return shlex.join(words)


def checkpoint_root(args: argparse.Namespace, names: list[str], data: Path | None = None) -> Path:
    """The folder whose checkpoints/ receives this run's checkpoints `names`; checked before training.

    Without ``args.ship``: the run folder ``args.runs / args.name``. With it: the data folder
    (`data`, default `checkpoints.data_dir()`), whose checkpoints/ is the shipped one. A name that
    is already there is a `TrainError` unless ``args.force``; in the run folder of a run that
    resumes from its state the checkpoints are the run's own, and are replaced.
    """
    if args.ship:
        root = data or checkpoints.data_dir()
    else:
        root = args.runs / args.name
        if (root / "state.pt").exists():
            return root
    taken = [n for n in names if n in checkpoints.available(root)]
    if taken and not args.force:
        what = f"checkpoint {taken[0]} already exists" if len(taken) == 1 else f"checkpoints {', '.join(taken)} already exist"
        raise TrainError(f"{what} in {root / 'checkpoints'}; add --force to replace, or choose another --name")
    return root


# ----------------------------------------------------------------------------- training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments of ``python -m minflow.train``; meaningless ones are argparse errors (exit status 2)."""
    p = argparse.ArgumentParser(prog="python -m minflow.train", description=__doc__.split("\n")[0])
    p.add_argument("--name", type=checkpoint_name, required=True, help="run folder RUNS/NAME, checkpoint NAME (and NAME_early)")
    p.add_argument("--coupling", default="affine", help="'affine' (SRFlow), an Affine scale name, or a spline")
    p.add_argument("--prior", default="srflow", choices=["srflow", "conditional"])
    add_training_args(p, steps=1800, batch=16, lr=5e-4, threads=0)
    p.add_argument("--early", type=nonnegative_int, default=0, help="also save NAME_early at this step (0: no; < --steps)")
    p.add_argument("--crop", type=positive_int, default=64, help="HR crop size")
    p.add_argument("--factor", type=positive_int, default=4)
    p.add_argument("--levels", type=positive_int, default=3)
    p.add_argument("--flow-steps", type=positive_int, default=3, help="conditional steps K per level")
    p.add_argument("--width", type=positive_int, default=32, help="conditioner width")
    p.add_argument("--nf", type=positive_int, default=32, help="encoder width")
    p.add_argument("--blocks", type=positive_int, default=4, help="encoder residual dense blocks")
    p.add_argument("--save-every", type=positive_int, default=100)
    p.add_argument("--val-size", type=nonnegative_int, default=0, help="validate on centre crops of this size (0: whole photos)")
    p.add_argument("--val-samples", type=positive_int, default=3)
    args = p.parse_args(argv)
    if args.early >= args.steps:
        p.error(f"--early {args.early} must be smaller than --steps {args.steps}")
    check_model(p, args, lambda: SRFlow(**model_config(args)))
    return args


def model_config(args: argparse.Namespace) -> dict:
    """The JSON-able SRFlow config for these arguments."""
    return dict(SRFlow(factor=args.factor, levels=args.levels, steps=args.flow_steps, width=args.width, nf=args.nf,
                       blocks=args.blocks, coupling=args.coupling, prior=args.prior).config)  # fmt: skip


class Progress(NamedTuple):
    """Where a run stands: steps done, training wall seconds, and ``lr_history`` [[from_step, lr], ...]."""

    step: int
    wall: float
    lr_history: list[list]


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-write never leaves a broken state


def _clone(obj):
    """A copy of a nested state dict whose tensors later steps cannot change."""
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def _resumed_lr_history(state: dict, config: dict, hyper: dict, args: argparse.Namespace, path: Path) -> list[list]:
    """The saved run's lr history, after checking that it may go on with these settings."""
    saved = dict(state["hyper"])
    history = [list(e) for e in state.get("lr_history") or [[0, saved["lr"]]]]
    saved.pop("lr", None)  # older states kept their one lr here
    differ = [f"{what} {k}: {old.get(k)!r} there, {new.get(k)!r} now"
              for what, old, new in (("config", state["config"], config), ("setting", saved, hyper))
              for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]  # fmt: skip
    if differ:
        raise TrainError(f"{path} was made with other settings ({'; '.join(differ)}); use another --name, "
                         f"or delete {path.parent} to start over")  # fmt: skip
    if args.lr > history[-1][1]:
        raise TrainError(f"{path} goes on at --lr {history[-1][1]!r} (lr history {history}); a run may go on with the "
                         f"same or a smaller --lr, not {args.lr!r}; use another --name, or delete {path.parent} to start over")  # fmt: skip
    return history


def _divergence(what: str, loss: Tensor, failed: int, saved: dict, retake: bool, path: Path, command: str | None) -> str:
    """The message of a `NonFiniteLoss` at step `failed`, with the state `saved` on disk at `path`."""
    head = f"non-finite {what} at step {failed} (loss {loss.item():.4g}). "
    if not retake:
        where = "the initial model" if saved["step"] == 0 else f"the state resumed from {path} (step {saved['step']})"
        return (head + f"It comes from {where} before any update, so a smaller --lr cannot help: check the model and "
                f"data, or try another --seed.")  # fmt: skip
    lr = saved["lr_history"][-1][1]
    again = f"\n    {with_lr(command, lr / 2)}" if command else f" (lr={lr / 2!r})"
    return (head + f"The last good state, from before the update of step {saved['step'] + 1} that led there, "
            f"is saved in {path} (step {saved['step']}). Resume it with half the learning rate:{again}")  # fmt: skip


def fit(model, batches: Callable[[torch.Generator], tuple[Tensor, Tensor]], args: argparse.Namespace, config: dict,
        on_step: Callable[[Progress], None] | None = None, command: str | None = None) -> Progress:
    """The resumable training loop shared by SR and low-light training; returns where it ended.

    Each step takes ``x, cond = batches(gen)`` and one Adam step (betas 0.9, 0.99) on
    ``model.nll_bpd(x, cond, gen).mean()``; `gen` (seeded with ``args.seed``) drives all the
    randomness, so a run is reproducible and resumes exactly. Every ``args.save_every`` steps the
    state goes to ``args.runs / args.name / "state.pt"``. A saved state resumes with the same config
    and hyper-parameters and the same or a smaller ``args.lr`` (recorded in ``lr_history``); anything
    else is refused. A non-finite loss or gradient raises `NonFiniteLoss` before the optimiser moves,
    once the last good state (model, optimiser, generator from before the update that led there) is
    saved and loaded back into `model`: resuming retakes that update on the same batch (the state
    after it would meet the same non-finite value again, whatever the lr). The message names the
    command (`command` with half the ``--lr``) that resumes it. ``on_step(progress)`` runs after every step (e.g. to save an early
    checkpoint).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    hyper = {k: getattr(args, k) for k in ("seed", "batch", "crop")}
    optim = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    run = args.runs / args.name
    run.mkdir(parents=True, exist_ok=True)
    state_path, step, wall, lr_history = run / "state.pt", 0, 0.0, [[0, args.lr]]
    if state_path.exists():
        state = torch.load(state_path, weights_only=True)
        lr_history = _resumed_lr_history(state, config, hyper, args, state_path)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        gen.set_state(state["generator"])
        step, wall = state["step"], state["wall"]
        for group in optim.param_groups:
            group["lr"] = args.lr
        if args.lr < lr_history[-1][1] and step < args.steps:
            lr_history = [e for e in lr_history if e[0] < step] + [[step, args.lr]]
            print(f"learning rate {args.lr!r} from step {step} on (lr history {lr_history})", flush=True)
        print(f"resuming {args.name} from step {step} ({state_path})", flush=True)

    def snapshot(copy: bool) -> dict:
        keep = _clone if copy else (lambda obj: obj)
        return {"model": keep(model.state_dict()), "optim": keep(optim.state_dict()), "generator": gen.get_state(),
                "step": step, "wall": wall, "config": config, "hyper": hyper, "lr_history": lr_history}  # fmt: skip

    model.train()
    bar = None
    if not args.no_progress and step < args.steps:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, initial=step, desc=args.name, mininterval=5, dynamic_ncols=True)
    ema, before = None, None  # before: the state before the last update
    try:
        while step < args.steps:
            t0 = time.perf_counter()
            now = snapshot(copy=True)
            x, cond = batches(gen)
            loss = model.nll_bpd(x, cond, gen).mean()
            optim.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
            grad = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf) if torch.isfinite(loss) else loss
            if not (torch.isfinite(loss) and torch.isfinite(grad)):
                good = now if before is None else before
                _save_state(state_path, good)
                model.load_state_dict(good["model"])
                what = "loss" if not torch.isfinite(loss) else "gradient"
                raise NonFiniteLoss(_divergence(what, loss, step + 1, good, before is not None, state_path, command))
            before = now
            optim.step()
            step += 1
            wall += time.perf_counter() - t0
            ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(bpd=f"{ema:.3f}", refresh=False)
            if on_step is not None:
                on_step(Progress(step, wall, lr_history))
            if step % args.save_every == 0 or step == args.steps:
                _save_state(state_path, snapshot(copy=False))
                print(f"step {step}/{args.steps}  bpd(ema) {ema:.4f}  train wall {wall:.0f} s", flush=True)
    finally:
        if bar is not None:
            bar.close()
    return Progress(step, wall, lr_history)


def ship(model, name: str, builder: str, config: dict, args: argparse.Namespace, command: str, progress: Progress,
         evaluate: Callable[[], dict], root: Path, **training) -> dict:
    """Validate with ``evaluate()`` and save checkpoint `name` under `root` (see `checkpoint_root`)
    with the record every manifest carries: the command, seed, steps, training and evaluation
    seconds, the metrics, and the training settings (batch, crop, lr, threads, Adam betas, the
    lr history, plus ``training``). Returns the metrics."""
    t0 = time.perf_counter()
    metrics = evaluate()
    settings = {k: getattr(args, k) for k in ("batch", "crop", "lr", "threads")}
    record = {"command": command, "seed": args.seed, "steps": progress.step, "wall_time_s": round(progress.wall, 1),
              "eval_time_s": round(time.perf_counter() - t0, 1), "metrics": metrics,
              "training": settings | {"adam_betas": [0.9, 0.99], "lr_history": progress.lr_history, **training}}  # fmt: skip
    checkpoints.save_checkpoint(model, name, builder=builder, config=config, record=record, root=root)
    return metrics


def _ship(model: SRFlow, name: str, config: dict, args, command: str, progress: Progress, root: Path) -> dict:
    metrics = ship(model, name, "srflow", config, args, command, progress,
                   lambda: evaluate(model, args.val_size, num_samples=args.val_samples, seed=0), root)  # fmt: skip
    print(f"saved checkpoint {name} at step {progress.step} in {root / 'checkpoints'}: val bpd {metrics['val_bpd']:.3f}, "
          f"PSNR {metrics['psnr']:.2f} dB (bicubic {metrics['bicubic_psnr']:.2f}), "
          f"SSIM {metrics['ssim']:.3f} (bicubic {metrics['bicubic_ssim']:.3f})", flush=True)  # fmt: skip
    return metrics


def train(args: argparse.Namespace, command: str) -> dict:
    """Run (or resume) SR training as described in the module docstring; returns the final metrics."""
    state_path = args.runs / args.name / "state.pt"
    done = torch.load(state_path, weights_only=True)["step"] if state_path.exists() else 0
    early = [f"{args.name}_early"] if args.early > done else []  # saved again only if not reached yet
    root = checkpoint_root(args, [args.name, *early])
    config = model_config(args)
    torch.manual_seed(args.seed)
    model = SRFlow(**config)
    images = load_photos(TRAIN_PHOTOS)

    def batches(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        hr = random_crops(images, args.crop, args.batch, gen)
        return hr, bicubic_down(hr, args.factor)

    def ship_early(progress: Progress) -> None:
        if progress.step == args.early:
            _ship(model, f"{args.name}_early", config, args, command, progress, root)

    progress = fit(model, batches, args, config, on_step=ship_early, command=command)
    return _ship(model, args.name, config, args, command, progress, root)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return train(args, command_line("minflow.train", argv))
    except TrainError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
