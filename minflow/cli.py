"""The command line of minflow: ``python -m minflow COMMAND [options]`` (``--help`` at both levels).

    python -m minflow train-sr --name sr_affine --coupling affine --steps 1800 --early 200
    python -m minflow train-lowlight --name ll_affine --coupling affine --steps 2000
    python -m minflow train-toy --coupling affine --seed 0 --steps 2000
    python -m minflow train-sr --name sr_paper --preset paper --data DIV2K_train_HR --workers 4
    torchrun --standalone --nproc_per_node=4 -m minflow train-sr --name sr_ddp --preset paper --data DIR

Each command turns its options into a model config (`SRFlowConfig`, `LLFlowConfig`,
`ToyFlowConfig`) and a `train.TrainConfig`, and runs `minflow.train` (see its docstring for where
checkpoints go, how a run resumes and what a diverged run prints). Meaningless options are
argparse errors (exit status 2) before anything is written; a run that cannot go on exits with
status 1 and says why. The image commands take their defaults from a preset (``--preset laptop``,
the course's models, or ``paper``: `minflow.presets`); a flag given explicitly beats the preset.
Under torchrun only rank 0 prints errors. The older forms ``python -m minflow.train``, ``python -m minflow.toy`` and
``python -m minflow.lowlight train`` run the same commands.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from . import checkpoints, train
from .bijections import ALIASES, bijection_names
from .data import PHOTO_SPLITS
from .lowlight import LLFlowConfig
from .presets import LOWLIGHT_PRESETS, SR_PRESETS, TrainPreset, preset_values
from .sr import ENCODERS, TARGETS, SRFlowConfig
from .toy import ToyFlowConfig

__all__ = [
    "PROG",
    "add_apply_commands",
    "checkpoint_name",
    "main",
    "nonnegative_int",
    "parser",
    "positive_float",
    "positive_int",
]

PROG = "python -m minflow"

# ----------------------------------------------------------------------------- argument types


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


def fractions(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated increasing fractions in (0, 1), e.g. "0.5,0.75" ("" or "none": none)."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        marks = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(not 0 < m < 1 for m in marks) or list(marks) != sorted(set(marks)):
        raise argparse.ArgumentTypeError(f"must be increasing fractions in (0, 1), got {text}")
    return marks


def checkpoint_name(text: str) -> str:
    """argparse type: a run and checkpoint name (a plain file name, as `checkpoints.save_checkpoint` needs)."""
    try:
        return checkpoints.check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def command_line(argv: list[str]) -> str:
    """The shell command that runs ``python -m minflow`` with `argv`, quoted to copy and paste."""
    return shlex.join([*PROG.split(), *argv])


# ----------------------------------------------------------------------------- the commands


def add_training_args(
    p: argparse.ArgumentParser,
    *,
    steps: int | None,
    batch: int | None,
    learning_rate: float | None,
    threads: int,
    presets: dict[str, TrainPreset] | None = None,
) -> None:
    """The options every training command shares (with its own defaults): a `train.TrainConfig`.
    A default of None is the preset's (`presets`: the command's presets by name)."""

    def default(value, key: str, what: str = "") -> str:
        if value is not None or presets is None:
            return what
        each = ", ".join(f"{name} {getattr(preset, key)}" for name, preset in presets.items())
        return f"{what} (default: the preset's: {each})".strip()

    p.add_argument("--steps", type=positive_int, default=steps, help=default(steps, "steps", "training steps"))
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--batch",
        type=positive_int,
        default=batch,
        help=default(batch, "batch", "examples per step (the global batch, shared by torchrun's processes)"),
    )
    p.add_argument(
        "--lr",
        dest="learning_rate",
        type=positive_float,
        default=learning_rate,
        help=default(learning_rate, "learning_rate", "Adam learning rate (a resumed run may lower it)"),
    )
    p.add_argument("--threads", type=nonnegative_int, default=threads, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--device",
        default="",
        help="where to train: cpu, cuda or cuda:N (default: cuda when a GPU is visible, else cpu; "
        "under torchrun each process takes its own GPU)",
    )
    p.add_argument(
        "--runs",
        type=Path,
        default=train.RUNS,
        help="where run folders go: RUNS/NAME holds a run's state and checkpoints",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help="save the checkpoint into the shipped folder data/checkpoints "
        "($MINFLOW_DATA/checkpoints when set) instead of the run folder",
    )
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint of this name")
    p.add_argument("--no-progress", action="store_true")


def add_image_args(p: argparse.ArgumentParser, presets: dict[str, TrainPreset]) -> None:
    """The architecture, data and validation options the image tasks share; None defaults come from
    ``--preset`` (`presets`)."""

    def preset(key: str, what: str) -> str:
        each = ", ".join(f"{name} {getattr(value, key)}" for name, value in presets.items())
        return f"{what} (default: the preset's: {each})"

    p.add_argument(
        "--preset",
        default="laptop",
        choices=sorted(presets),
        help="named defaults (minflow.presets): laptop, the course's models, or paper, the published setting",
    )
    p.add_argument(
        "--coupling",
        default="affine",
        help="a bijection of minflow.bijections by name or alias, e.g. 'affine' (SRFlow's) or 'bounded_spline'",
    )
    p.add_argument("--crop", type=positive_int, help=preset("crop", "training crop size (of the clean image)"))
    p.add_argument(
        "--lr-milestones",
        type=fractions,
        help=preset("lr_milestones", "fractions of the steps at which the learning rate halves, e.g. 0.5,0.75"),
    )
    p.add_argument("--levels", type=positive_int, help=preset("levels", "flow levels L"))
    p.add_argument("--flow-steps", type=positive_int, help=preset("flow_steps", "conditional steps K per level"))
    p.add_argument("--transitions", type=nonnegative_int, help=preset("transitions", "transition steps per level"))
    p.add_argument("--hidden", "--width", type=positive_int, help=preset("hidden", "conditioner width"))
    p.add_argument("--nf", type=positive_int, help=preset("nf", "encoder width"))
    p.add_argument("--blocks", type=positive_int, help=preset("blocks", "encoder blocks"))
    p.add_argument("--gc", type=positive_int, help=preset("gc", "encoder growth channels"))
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="train on random crops of the images in this folder (searched recursively; png, jpg, ...) "
        "instead of the split's train photos; validation stays on the val photos of --photos, and a "
        "folder holding any of the split's val or test photos (by file name) is refused",
    )
    p.add_argument(
        "--photos",
        default="course",
        choices=sorted(PHOTO_SPLITS),
        help="photo split (minflow.data.PHOTO_SPLITS): "
        + ", ".join(f"{k} ({len(v.train)} train / {len(v.val)} val photos)" for k, v in PHOTO_SPLITS.items())
        + "; training crops from its train photos (unless --data), validation from its val photos "
        "(default: course, the chapters' photos)",
    )
    p.add_argument(
        "--val-every",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="record a validation curve: the val bits per dim (the --val-size crops, fixed noise) every N "
        "steps and at the last step, printed, kept when the run resumes, in the manifest's 'curve' (0: none)",
    )
    p.add_argument(
        "--workers", type=nonnegative_int, default=0, help="DataLoader worker processes reading --data (0: none)"
    )
    p.add_argument("--save-every", type=positive_int, default=100)
    p.add_argument(
        "--val-size", type=nonnegative_int, default=0, help="validate on centre crops of this size (0: whole photos)"
    )


def with_preset(args: argparse.Namespace, presets: dict[str, TrainPreset]) -> argparse.Namespace:
    """`args` with every option left unset (None) taken from the preset ``args.preset``."""
    return argparse.Namespace(**(vars(args) | preset_values(presets[args.preset], vars(args))))


def train_config(args: argparse.Namespace, name: str | None = None) -> train.TrainConfig:
    """The `train.TrainConfig` of a training command's options (after `with_preset`)."""
    return train.TrainConfig(
        name=name or args.name,
        steps=args.steps,
        batch=args.batch,
        crop=getattr(args, "crop", 64),
        learning_rate=args.learning_rate,
        seed=args.seed,
        save_every=getattr(args, "save_every", 100),
        threads=args.threads,
        runs=args.runs,
        progress=not args.no_progress,
        ship=args.ship,
        force=args.force,
        device=args.device,
        data=getattr(args, "data", None),
        workers=getattr(args, "workers", 0),
        lr_milestones=getattr(args, "lr_milestones", ()),
        photos=getattr(args, "photos", "course"),
        val_every=getattr(args, "val_every", 0),
    )


Job = Callable[[str], object]  # a checked run, given the command line to record


def prepare_sr(args: argparse.Namespace) -> Job:
    args = with_preset(args, SR_PRESETS)
    model = SRFlowConfig(
        factor=args.factor,
        levels=args.levels,
        flow_steps=args.flow_steps,
        transitions=args.transitions,
        hidden=args.hidden,
        nf=args.nf,
        blocks=args.blocks,
        gc=args.gc,
        coupling=args.coupling,
        prior=args.prior,
        encoder=args.encoder,
        target=args.target,
    )
    cfg = train_config(args)
    train.check_run(model, cfg, args.early, args.val_size, args.val_samples)
    return lambda command: train.train_images(
        train.SR, model, cfg, command, args.early, args.val_size, args.val_samples
    )


def prepare_lowlight(args: argparse.Namespace) -> Job:
    args = with_preset(args, LOWLIGHT_PRESETS)
    model = LLFlowConfig(
        levels=args.levels,
        flow_steps=args.flow_steps,
        transitions=args.transitions,
        hidden=args.hidden,
        nf=args.nf,
        blocks=args.blocks,
        gc=args.gc,
        coupling=args.coupling,
    )
    cfg = train_config(args)
    train.check_run(model, cfg, val_size=args.val_size)
    return lambda command: train.train_images(train.LOWLIGHT, model, cfg, command, val_size=args.val_size)


def prepare_toy(args: argparse.Namespace) -> Job:
    if args.root is not None and not args.ship:
        raise ValueError("--root names the data folder that --ship writes into; add --ship")
    model = ToyFlowConfig(coupling=args.coupling, flow_steps=args.flow_steps, hidden=args.hidden, depth=args.depth)
    cfg = train_config(args, args.name or f"toy_{args.coupling}_s{args.seed}")
    return lambda command: train.train_toy_checkpoint(model, cfg, command, args.root)


# ----------------------------------------------------------------------------- own images (minflow.apply)


def default_device() -> str:
    """cuda when a GPU is available, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_apply(args: argparse.Namespace) -> Job:
    """``upscale`` / ``enhance``: check the image, the model and the output folder before any work."""
    from . import apply

    known = apply.known_models(args.command)
    if args.model not in known:
        raise ValueError(
            f"unknown model {args.model!r} for {args.command}; known: {', '.join(known) or '(none shipped)'}"
        )
    try:
        image = apply.read_image(args.image)
    except (OSError, ValueError) as err:
        raise ValueError(str(err)) from None
    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not args.force:
        raise ValueError(f"--out {out} exists and is not empty; pick another folder or add --force to write into it")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA device is available; use --device cpu")
    from .utils import check_temperature

    check_temperature(args.temperature)
    settings = apply.ApplySettings(
        temperature=args.temperature,
        samples=args.samples,
        seed=args.seed,
        tile=args.tile,
        margin=args.margin,
        chunk=args.chunk,
        device=args.device,
    )

    def job(command: str):
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        model = checkpoints.load_pretrained(args.model, device=args.device)
        try:
            stats = apply.load_ood_stats(args.model).to(args.device)
        except (FileNotFoundError, RuntimeError) as err:
            print(f"warning: no risk map: {err}", file=sys.stderr)
            stats = None
        result = apply.apply_image(model, image, settings, stats, progress=not args.no_progress)
        extra = {
            "command": command,
            "image": str(args.image),
            "model": args.model,
            "checkpoint_sha256": model.manifest["sha256"],
            "risk_stats_sha256": None if stats is None else stats.meta.get("sha256"),
            "device": args.device,
        }
        path = apply.write_outputs(result, out, extra)
        rep = result.report
        print(
            f"wrote {out}: artifact rate {rep['artifact_rate']:.4f}, max |x| {rep['max_abs']:.3g}, "
            f"non-finite {rep['nonfinite']}, smallest scale {rep['smallest_scale']:.3g}, "
            f"{rep['seconds']:.1f} s, peak memory {rep['peak_memory_mb']:.0f} MiB"
        )
        return path

    return job


def prepare_fit_ood(args: argparse.Namespace) -> Job:
    """``fit-ood``: fit and ship the risk statistics of a shipped SR or low-light checkpoint."""
    from . import apply

    known = apply.known_models()
    if args.model not in known:
        raise ValueError(f"unknown model {args.model!r}; known: {', '.join(known)}")

    def job(command: str):
        model = checkpoints.load_pretrained(args.model, device=args.device)
        stats = apply.fit_ood_stats(model, args.batches, args.held_out, progress=not args.no_progress)
        path = apply.save_ood_stats(stats, args.model, command)
        print(f"wrote {path} ({stats.meta['samples']} feature vectors, training q0.99 {stats.quantiles['0.99']:.2f})")
        return path

    return job


def add_apply_commands(commands) -> None:
    """Register ``upscale``, ``enhance`` and ``fit-ood`` (minflow.apply) on the subparsers `commands`."""
    for name, what in (("upscale", "super-resolve (4x)"), ("enhance", "enhance a low-light")):
        p = commands.add_parser(
            name,
            help=f"Run a shipped model to {what} image of your own; write samples, artifact and risk maps, report.json",
            description=f"Run a shipped model to {what} image of your own (see minflow.apply for the input rules "
            "and what is measured).",
        )
        p.set_defaults(prepare=prepare_apply, parser=p)
        p.add_argument("image", type=Path, help="the input image (any format Pillow reads)")
        p.add_argument("--model", required=True, help="a shipped checkpoint (an unknown name lists the known ones)")
        p.add_argument("--out", type=Path, required=True, help="output folder (must be empty unless --force)")
        p.add_argument("--temperature", type=float, default=0.8)
        p.add_argument("--samples", type=positive_int, default=8)
        p.add_argument("--seed", type=nonnegative_int, default=0)
        p.add_argument("--tile", type=positive_int, default=128, help="tile size in input pixels (bounds memory)")
        p.add_argument("--margin", type=nonnegative_int, default=16, help="context pixels around each tile")
        p.add_argument("--chunk", type=positive_int, default=4, help="samples drawn at once")
        p.add_argument("--device", default=default_device(), help="torch device (default: cuda when available)")
        p.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (0: torch's default)")
        p.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
        p.add_argument("--no-progress", action="store_true")
    p = commands.add_parser(
        "fit-ood",
        help="Fit a shipped model's risk statistics on its training data (data/checkpoints/ood/NAME.*)",
        description="Fit the Mahalanobis statistics of a shipped model's conditioning features on its own "
        "training stream and save them beside the checkpoint, checksummed (minflow.apply.save_ood_stats).",
    )
    p.set_defaults(prepare=prepare_fit_ood, parser=p)
    p.add_argument("--model", required=True)
    p.add_argument("--batches", type=positive_int, default=32, help="training batches to fit on")
    p.add_argument("--held-out", type=positive_int, default=8, help="batches of a second stream for the quantiles")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def parser() -> argparse.ArgumentParser:
    """``python -m minflow`` and its commands; each command's parser holds its `prepare` function."""
    top = argparse.ArgumentParser(
        prog=PROG, description="minflow: conditional normalizing flows for imaging inverse problems."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, prepare: Callable[[argparse.Namespace], Job], summary: str) -> argparse.ArgumentParser:
        p = commands.add_parser(
            name,
            help=summary,
            description=f"{summary} (see minflow.train for where checkpoints go and how a run resumes).",
        )
        p.set_defaults(prepare=prepare, parser=p)
        return p

    p = command(
        "train-sr",
        prepare_sr,
        "Train the small SRFlow of chapters 4-7 on the course's photos (or the wide split, --photos wide)",
    )
    p.add_argument(
        "--name", type=checkpoint_name, required=True, help="run folder RUNS/NAME, checkpoint NAME (and NAME_early)"
    )
    p.add_argument("--prior", default="srflow", choices=["srflow", "conditional"])
    add_training_args(p, steps=None, batch=None, learning_rate=None, threads=0, presets=SR_PRESETS)
    add_image_args(p, SR_PRESETS)
    p.add_argument("--encoder", choices=ENCODERS, help="encoder kind: rdb (the course's) or rrdb (SRFlow's)")
    p.add_argument(
        "--target",
        choices=TARGETS,
        help="what the flow models: hr, the HR image (SRFlow's, the presets'), or residual, the HR image "
        "minus the bicubic upscale of the LR image (NCSR's); samples are bicubic + residual",
    )
    p.add_argument(
        "--early", type=nonnegative_int, default=0, help="also save NAME_early at this step (0: no; < --steps)"
    )
    p.add_argument("--factor", type=positive_int, default=4)
    p.add_argument("--val-samples", type=positive_int, default=3)

    p = command("train-lowlight", prepare_lowlight, "Train the small LLFlow of chapter 9 on synthetic low-light pairs")
    p.add_argument(
        "--name", type=checkpoint_name, required=True, help="run name: run folder RUNS/NAME, checkpoint NAME"
    )
    add_training_args(p, steps=None, batch=None, learning_rate=None, threads=0, presets=LOWLIGHT_PRESETS)
    add_image_args(p, LOWLIGHT_PRESETS)

    p = command("train-toy", prepare_toy, "Train a toy conditional flow of chapters 2-7 and save a checkpoint")
    p.add_argument("--coupling", default="affine", choices=bijection_names() + sorted(ALIASES))
    p.add_argument(
        "--name", type=checkpoint_name, help="run folder and checkpoint name (default toy_<coupling>_s<seed>)"
    )
    add_training_args(p, steps=2000, batch=512, learning_rate=1e-3, threads=1)
    p.add_argument(
        "--root", type=Path, default=None, help="with --ship: the data folder (default $MINFLOW_DATA or data/)"
    )
    p.add_argument("--flow-steps", type=positive_int, default=4, help="coupling blocks")
    p.add_argument("--hidden", type=positive_int, default=64, help="conditioner width")
    p.add_argument("--depth", type=positive_int, default=4, help="conditioner layers")

    add_apply_commands(commands)  # upscale, enhance, fit-ood: minflow.apply
    return top


def main(argv: list[str] | None = None):
    """Run ``python -m minflow`` with `argv` (default: the process's arguments); what the command returns
    (the final metrics of an image run, the checkpoint path of a toy run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    try:
        job = args.prepare(args)
    except ValueError as err:
        args.parser.error(str(err))
    try:
        return job(command_line(argv))
    except train.TrainError as err:
        sys.exit(f"error: {err}" if os.environ.get("RANK", "0") == "0" else 1)  # one message per run
