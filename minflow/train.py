"""Training: one resumable loop (`fit`) for every image flow, the SR and low-light tasks, the toy.

    python -m minflow train-sr --coupling affine --steps 1800 --seed 0 --name sr_affine --early 400

(``python -m minflow --help`` lists the commands; `minflow.cli` turns their options into the
configs here.) A run is a `TrainConfig` plus a model config (`SRFlowConfig`, `LLFlowConfig`,
`ToyFlowConfig`). An image task (`SR`, `LOWLIGHT`: a `Task`) trains on random crops of the
training photos and their degradation (SR: antialiased bicubic downscaling; low light: `darken`),
one Adam step per step on the bits per dim of the dequantised image given its condition
(`ImageFlow.nll_bpd`). Every ``save_every`` steps the whole state (model, optimiser, random
generator, step, wall time, learning-rate history) goes to runs/NAME/state.pt, so a killed run
resumes when the same command is run again. At step ``early`` (SR) the model is also saved as
NAME_early; at the end as NAME, with validation metrics in its manifest (`evaluate`): bits per dim
(fixed dequantisation noise), and PSNR / SSIM against the truth of the mean of a few samples next to
the task's baseline (bicubic, histogram equalisation).

Which photos: ``photos`` (``--photos``) names a split of `data.PHOTO_SPLITS`, "course" (the
chapters' photos, the default) or "wide"; training crops come from its train photos, validation
from its val photos, and the manifest's training settings name both lists. ``val_every N``
(``--val-every N``) also records a validation curve, the val bits per dim every N steps and at the
last step (`validation_bpd`: the same crops and dequantisation noise each time), kept in the state
and written into the manifest as "curve"; `curve_flattened` reads it.

Where checkpoints go: into the run folder, runs/NAME/checkpoints/ (load them with
``load_pretrained(NAME, root=Path("runs/NAME"))``). ``ship=True`` (``--ship``) writes them into the
shipped folder data/checkpoints/ (or $MINFLOW_DATA/checkpoints/) instead, and only with ``force``
(``--ship --force``) replaces a checkpoint already there; the check comes before any training.

A run that diverges (a non-finite loss or gradient) stops before the optimiser moves, saves the
state from before the update that led there, and names the command that retakes that update
with half the learning rate. A run may go on with a smaller learning rate (never a larger one, nor any
other changed setting); the manifest records the learning rates as ``lr_history``.

Beyond one laptop: ``--device`` (default cuda when there is a GPU) places model, data and loss;
the random generator stays on the CPU, so a seed draws the same numbers on every device, and the
run on the CPU is the same, bit for bit, as before these options existed. ``--data DIR`` trains on
crops streamed from any image folder (`data.FolderCrops`, ``--workers`` DataLoader processes)
instead of the bundled photos. Under ``torchrun`` the run is data-parallel (`minflow.distributed`):
each of W processes computes its share of the same global batch of ``batch`` examples, so W
processes take the steps one process takes; only rank 0 prints and writes.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import checkpoints, distributed, toy
from .data import (
    PHOTO_SPLITS,
    bicubic_down,
    bicubic_up,
    center_crop,
    darken,
    load_photos,
    mod_crop,
    random_crops,
)
from .data.folders import FolderCrops, StepBatches, image_files
from .distributed import Dist
from .imageflow import ImageFlow, ImageFlowConfig
from .lowlight import LLFlowConfig, equalize
from .metrics import psnr, ssim
from .sr import SRFlowConfig
from .toy import ToyFlowConfig
from .utils import adam, seed_everything

__all__ = [
    "LOWLIGHT",
    "RUNS",
    "SR",
    "NonFiniteLoss",
    "Progress",
    "Task",
    "TrainConfig",
    "TrainError",
    "batch_source",
    "check_run",
    "checkpoint_root",
    "curve_flattened",
    "evaluate",
    "fit",
    "ship",
    "train_images",
    "train_toy_checkpoint",
    "validation_bpd",
    "validation_pairs",
    "with_learning_rate",
]

RUNS = Path(__file__).resolve().parent.parent / "runs"


class TrainError(RuntimeError):
    """A run that cannot go on (the command prints the message and exits with status 1)."""


class NonFiniteLoss(TrainError):
    """Raised when a training step produces a non-finite loss or gradient."""


def _at_least(low: int | float, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
            raise ValueError(f"{key} must be a number >= {low}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains, checked when made: run `name` (folder ``runs / name``, checkpoint NAME),
    `steps` optimiser iterations of `batch` examples (image crops of `crop` pixels), Adam at `learning_rate`,
    random `seed`, the state saved every `save_every` steps, `threads` torch CPU threads (0: torch's
    default), a progress bar, and where the checkpoint goes (`ship`, `force`: see the module docstring).
    `device` ("": cuda when available, else cpu; "cpu", "cuda", "cuda:1"), `data` (an image folder,
    None: the bundled photos) read by `workers` DataLoader processes, and `lr_milestones`: fractions
    of the steps at each of which the learning rate halves (() : constant). `photos` names the photo
    split (a key of `data.PHOTO_SPLITS`: "course", the chapters' photos, or "wide"): training crops
    come from its train photos (unless `data` replaces them), validation from its val photos.
    `val_every` > 0 records a validation curve: the validation bits per dim every `val_every` steps
    and at the last step (0: no curve; see `fit`)."""

    name: str
    steps: int = 1800
    batch: int = 16
    crop: int = 64
    learning_rate: float = 5e-4
    seed: int = 0
    save_every: int = 100
    threads: int = 0
    runs: Path = RUNS
    progress: bool = True
    ship: bool = False
    force: bool = False
    device: str = ""
    data: Path | None = None
    workers: int = 0
    lr_milestones: tuple[float, ...] = ()
    photos: str = "course"
    val_every: int = 0

    def __post_init__(self) -> None:
        checkpoints.check_name(self.name)
        _at_least(1, steps=self.steps, batch=self.batch, crop=self.crop, save_every=self.save_every)
        _at_least(0, seed=self.seed, threads=self.threads, workers=self.workers, val_every=self.val_every)
        _split(self.photos)  # a clear error for an unknown split
        for key in ("steps", "batch", "crop", "save_every", "seed", "threads", "workers", "val_every"):
            if not isinstance(getattr(self, key), int):
                raise ValueError(f"{key} must be a whole number, got {getattr(self, key)!r}")
        rate = self.learning_rate
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0, got {rate!r}")
        object.__setattr__(self, "runs", Path(self.runs))
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
        marks = tuple(self.lr_milestones)
        if any(not isinstance(m, (int, float)) or not 0 < m < 1 for m in marks) or list(marks) != sorted(set(marks)):
            raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got {self.lr_milestones!r}")
        object.__setattr__(self, "lr_milestones", marks)

    def rate_at(self, step: int, base: float | None = None) -> float:
        """The learning rate of the update after `step` steps: `base` (default ``learning_rate``)
        halved once for each milestone fraction m with step >= round(m * steps)."""
        base = self.learning_rate if base is None else base
        return base * 0.5 ** sum(step >= round(m * self.steps) for m in self.lr_milestones)


def checkpoint_root(cfg: TrainConfig, names: list[str], data: Path | None = None) -> Path:
    """The folder whose checkpoints/ receives this run's checkpoints `names`; checked before training.

    Without ``cfg.ship``: the run folder ``cfg.runs / cfg.name``. With it: the data folder
    (`data`, default `checkpoints.data_dir()`), whose checkpoints/ is the shipped one. A name that
    is already there is a `TrainError` unless ``cfg.force``; in the run folder of a run that
    resumes from its state the checkpoints are the run's own, and are replaced.
    """
    if cfg.ship:
        root = data or checkpoints.data_dir()
    else:
        root = cfg.runs / cfg.name
        if (root / "state.pt").exists():
            return root
    taken = [n for n in names if n in checkpoints.available(root)]
    if taken and not cfg.force:
        what = (
            f"checkpoint {taken[0]} already exists"
            if len(taken) == 1
            else f"checkpoints {', '.join(taken)} already exist"
        )
        raise TrainError(f"{what} in {root / 'checkpoints'}; add --force to replace, or choose another --name")
    return root


def with_learning_rate(command: str, learning_rate: float) -> str:
    """`command` with its (last) --lr set to `learning_rate`, or --lr added."""
    words = shlex.split(command)
    for i in reversed(range(len(words))):
        if words[i] == "--lr" and i + 1 < len(words):
            words[i + 1] = repr(learning_rate)
            break
        if words[i].startswith("--lr="):
            words[i] = f"--lr={learning_rate!r}"
            break
    else:
        words += ["--lr", repr(learning_rate)]
    return shlex.join(words)


# ----------------------------------------------------------------------------- the loop


class Progress(NamedTuple):
    """Where a run stands: steps done, training wall seconds, ``lr_history`` [[from_step, lr], ...],
    and the validation ``curve`` so far ({"step": [...], "val_bpd": [...], "seconds": s}; None: no curve)."""

    step: int
    wall: float
    lr_history: list[list]
    curve: dict | None = None


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


_ADDED_KEYS = {"srflow": {"encoder": "rdb", "target": "hr"}}
"""Builder -> {config key added after runs were saved: the value those runs had}."""
_HYPER_ADDED = {"photos": "course", "val_every": 0}
"""Settings a state records only off these values (added later: older runs had them)."""


def _resumed_lr_history(
    state: dict, config: dict, hyper: dict, cfg: TrainConfig, path: Path, builder: str
) -> list[list]:
    """The saved run's lr history, after checking that it may go on with these settings (the saved
    config's older keys renamed as for `builder`, `checkpoints.upgrade_config`)."""
    saved = _HYPER_ADDED | dict(state["hyper"])
    older = checkpoints.upgrade_config(builder, state["config"])
    older = _ADDED_KEYS.get(builder, {}) | older  # keys added since, at the value older runs had
    history = [list(e) for e in state.get("lr_history") or [[0, saved["lr"]]]]
    saved.pop("lr", None)  # older states kept their one lr here
    differ = [
        f"{what} {k}: {old.get(k)!r} there, {new.get(k)!r} now"
        for what, old, new in (
            ("config", older, _ADDED_KEYS.get(builder, {}) | config),
            ("setting", saved, _HYPER_ADDED | hyper),
        )
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
    if differ:
        raise TrainError(
            f"{path} was made with other settings ({'; '.join(differ)}); use another --name, "
            f"or delete {path.parent} to start over"
        )
    if cfg.learning_rate > history[-1][1]:
        raise TrainError(
            f"{path} goes on at --lr {history[-1][1]!r} (lr history {history}); a run may go on with the "
            f"same or a smaller --lr, not {cfg.learning_rate!r}; use another --name, or delete {path.parent} "
            "to start over"
        )
    return history


def _divergence(
    what: str, loss: Tensor, failed: int, saved: dict, retake: bool, path: Path, command: str | None
) -> str:
    """The message of a `NonFiniteLoss` at step `failed`, with the state `saved` on disk at `path`."""
    head = f"non-finite {what} at step {failed} (loss {loss.item():.4g}). "
    if not retake:
        where = "the initial model" if saved["step"] == 0 else f"the state resumed from {path} (step {saved['step']})"
        return (
            head + f"It comes from {where} before any update, so a smaller --lr cannot help: check the model and "
            f"data, or try another --seed."
        )
    half = saved["lr_history"][-1][1] / 2
    again = f"\n    {with_learning_rate(command, half)}" if command else f" (learning_rate={half!r})"
    return (
        head + f"The last good state, from before the update of step {saved['step'] + 1} that led there, "
        f"is saved in {path} (step {saved['step']}). Resume it with half the learning rate:{again}"
    )


class _Objective(nn.Module):
    """What DDP wraps: the bits per dim of `model` at x + u / q for given dequantisation noise u,
    uniform in [-1/2, 1/2) (`ImageFlow.nll_bpd` with the noise drawn outside), shape (B,)."""

    def __init__(self, model: ImageFlow):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, cond: Tensor, noise: Tensor) -> Tensor:
        return self.model.nll_bpd(x, cond, noise=noise)


def _noise(gen: torch.Generator, shape: tuple[int, ...], rows: slice, like: Tensor) -> Tensor:
    """Dequantisation noise u = U[0, 1) - 1/2 of the whole global batch `shape`, drawn on the CPU
    from `gen` (the numbers `ImageFlow.dequantize` draws), its `rows` on `like`'s device."""
    return (torch.rand(shape, generator=gen, dtype=like.dtype) - 0.5)[rows].to(like.device)


def fit(
    model,
    batches: Callable[[torch.Generator], tuple[Tensor, Tensor]],
    cfg: TrainConfig,
    config: dict,
    on_step: Callable[[Progress], None] | None = None,
    command: str | None = None,
    builder: str = "",
    procs: Dist | None = None,
    validate: Callable[[], float] | None = None,
) -> Progress:
    """The resumable training loop shared by SR and low-light training; returns where it ended.

    Each step takes ``x, cond = batches(gen)`` and one Adam step (betas 0.9, 0.99) on
    ``model.nll_bpd(x, cond, gen).mean()``; `gen` (seeded with ``cfg.seed``) drives all the
    randomness, so a run is reproducible and resumes exactly. Every ``cfg.save_every`` steps the
    state goes to ``cfg.runs / cfg.name / "state.pt"``. A saved state resumes with the same config
    and hyper-parameters and the same or a smaller ``cfg.learning_rate`` (recorded in ``lr_history``); anything
    else is refused. A non-finite loss or gradient raises `NonFiniteLoss` before the optimiser moves,
    once the last good state (model, optimiser, generator from before the update that led there) is
    saved and loaded back into `model`: resuming retakes that update on the same batch (the state
    after it would meet the same non-finite value again, whatever the learning rate). The message
    names the command (`command` with half the ``--lr``) that resumes it. ``on_step(progress)`` runs
    after every step (e.g. to save an early checkpoint). `builder` names the checkpoint builder of
    `config` (a saved state's older config keys are renamed as for it).

    `procs` (default: one process on the CPU) says where the model is and which process this is.
    Off that default, `model` must be an `ImageFlow` on ``procs.device``: `batches` gives this
    process's share of the global batch, the dequantisation noise is drawn on the CPU for the whole
    global batch and sliced (`distributed.share`), the model runs wrapped in DDP, the loss is the
    mean over all processes, and all of them stop together on a non-finite one. Rank 0 alone
    prints, shows progress, writes the state and calls `on_step`.

    The validation curve (``cfg.val_every`` > 0): after every ``val_every``-th step and after the
    last one, rank 0 calls ``validate()`` (a number, e.g. `validation_bpd`; it must draw nothing from
    `gen` and restore the model's mode) and prints it; the points ({"step", "val_bpd", "seconds"},
    seconds not counted in the training wall time) are kept in the state, so a resumed run
    continues its curve. The other ranks wait at the next step's all-reduce. With or without a curve
    the run takes the same batches and ends with the same weights.
    """
    procs = procs or Dist()
    plain = procs.world == 1 and procs.device.type == "cpu"  # the loop as it always was
    talk = procs.main
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    hyper = {k: getattr(cfg, k) for k in ("seed", "batch", "crop")}
    if cfg.lr_milestones:
        hyper["lr_milestones"] = list(cfg.lr_milestones)
    if cfg.data is not None:
        hyper["data"] = str(cfg.data)
    if cfg.photos != "course":  # keys added later appear only off their old value: older states resume
        hyper["photos"] = cfg.photos
    if cfg.val_every:
        hyper["val_every"] = cfg.val_every
    if cfg.val_every and talk and validate is None:
        raise ValueError("cfg.val_every > 0 needs a validate function")
    curve = {"step": [], "val_bpd": [], "seconds": 0.0} if cfg.val_every else None
    optim = adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed)
    run = cfg.runs / cfg.name
    run.mkdir(parents=True, exist_ok=True)
    state_path, step, wall, lr_history = run / "state.pt", 0, 0.0, [[0, cfg.learning_rate]]
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        lr_history = _resumed_lr_history(state, config, hyper, cfg, state_path, builder)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        gen.set_state(state["generator"])
        step, wall = state["step"], state["wall"]
        curve = _clone(state.get("curve", curve)) if cfg.val_every else None
        for group in optim.param_groups:
            group["lr"] = cfg.learning_rate
        if cfg.learning_rate < lr_history[-1][1] and step < cfg.steps:
            lr_history = [e for e in lr_history if e[0] < step] + [[step, cfg.learning_rate]]
            if talk:
                print(f"learning rate {cfg.learning_rate!r} from step {step} on (lr history {lr_history})", flush=True)
        if talk:
            print(f"resuming {cfg.name} from step {step} ({state_path})", flush=True)
    net = None
    if not plain:
        distributed.sync_actnorm(procs, model)
        net = distributed.wrap(procs, _Objective(model))

    def snapshot(copy: bool) -> dict:
        keep = _clone if copy else (lambda obj: obj)
        return {
            "model": keep(model.state_dict()),
            "optim": keep(optim.state_dict()),
            "generator": gen.get_state(),
            "step": step,
            "wall": wall,
            "config": config,
            "hyper": hyper,
            "lr_history": lr_history,
            **({"curve": keep(curve)} if curve is not None else {}),
        }

    model.train()
    bar = None
    if talk and cfg.progress and step < cfg.steps:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=cfg.name, mininterval=5, dynamic_ncols=True)
    ema, before = None, None  # before: the state before the last update
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            now = snapshot(copy=True)
            x, cond = batches(gen)
            if plain:
                loss = model.nll_bpd(x, cond, gen).mean()
            else:
                x, cond = x.to(procs.device, non_blocking=True), cond.to(procs.device, non_blocking=True)
                rows = distributed.share(procs, x.shape[0] * procs.world)
                loss = net(x, cond, _noise(gen, (x.shape[0] * procs.world, *x.shape[1:]), rows, x)).mean()
            total = distributed.mean(procs, loss)  # the same value on every rank: they agree
            optim.zero_grad(set_to_none=True)
            if torch.isfinite(total):
                loss.backward()
            grad = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf) if torch.isfinite(total) else total
            if distributed.agree(procs, not (torch.isfinite(total) and torch.isfinite(grad))):
                good = now if before is None else before
                if talk:
                    _save_state(state_path, good)
                model.load_state_dict(good["model"])
                what = "loss" if not torch.isfinite(total) else "gradient"
                raise NonFiniteLoss(_divergence(what, total, step + 1, good, before is not None, state_path, command))
            before = now
            if cfg.lr_milestones:
                for group in optim.param_groups:
                    group["lr"] = cfg.rate_at(step, lr_history[-1][1])
            optim.step()
            step += 1
            wall += time.perf_counter() - t0
            ema = total.item() if ema is None else 0.98 * ema + 0.02 * total.item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(bpd=f"{ema:.3f}", refresh=False)
            if talk and curve is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                t1 = time.perf_counter()
                value = float(validate())
                seconds = time.perf_counter() - t1
                curve["step"].append(step)
                curve["val_bpd"].append(value)
                curve["seconds"] += seconds
                print(f"step {step}/{cfg.steps}  val bpd {value:.4f}  ({seconds:.1f} s)", flush=True)
            if talk and on_step is not None:
                on_step(Progress(step, wall, lr_history, curve))
            if talk and (step % cfg.save_every == 0 or step == cfg.steps):
                _save_state(state_path, snapshot(copy=False))
                print(f"step {step}/{cfg.steps}  bpd(ema) {ema:.4f}  train wall {wall:.0f} s", flush=True)
    finally:
        if bar is not None:
            bar.close()
    return Progress(step, wall, lr_history, curve)


def curve_flattened(val_bpd: list[float], points: int = 3, tolerance: float = 0.002) -> bool:
    """Whether a validation curve has flattened: its best value over the last `points` points
    improves on its best value before them by less than `tolerance` relative to the latter,
    (min(before) - min(last)) / |min(before)| < tolerance. False while the curve has `points`
    points or fewer (nothing to compare). Advice for whoever reads the curve; nothing calls it."""
    _at_least(1, points=points)
    _at_least(0, tolerance=tolerance)
    if len(val_bpd) <= points:
        return False
    before, last = min(val_bpd[:-points]), min(val_bpd[-points:])
    return (before - last) / abs(before) < tolerance


def ship(
    model: nn.Module,
    name: str,
    builder: str,
    config: dict,
    cfg: TrainConfig,
    command: str,
    progress: Progress,
    evaluate: Callable[[], dict],
    root: Path,
    curve: dict | None = None,
    **training,
) -> dict:
    """Validate with ``evaluate()`` and save checkpoint `name` under `root` (see `checkpoint_root`)
    with the record every manifest carries: the command, seed, steps, training and evaluation
    seconds, the metrics, and the training settings (``batch``, ``crop``, ``lr`` (the learning rate),
    ``threads``, Adam betas, ``lr_history``, plus ``training``), and the validation `curve` when
    given (manifest key "curve"; older manifests have none). Returns the metrics."""
    t0 = time.perf_counter()
    metrics = evaluate()
    settings = {"batch": cfg.batch, "crop": cfg.crop, "lr": cfg.learning_rate, "threads": cfg.threads}
    settings |= {"lr_milestones": list(cfg.lr_milestones)} if cfg.lr_milestones else {}
    settings |= {"data": str(cfg.data), "workers": cfg.workers} if cfg.data is not None else {}
    record = {
        "command": command,
        "seed": cfg.seed,
        "steps": progress.step,
        "wall_time_s": round(progress.wall, 1),
        "eval_time_s": round(time.perf_counter() - t0, 1),
        "metrics": metrics,
        "training": settings | {"adam_betas": [0.9, 0.99], "lr_history": progress.lr_history, **training},
        **({"curve": curve} if curve is not None else {}),
    }
    checkpoints.save_checkpoint(model, name, builder=builder, config=config, record=record, root=root)
    return metrics


# ----------------------------------------------------------------------------- image tasks


@dataclass(frozen=True)
class Task:
    """What an image task plugs into training and validation.

    `degrade(model, x, gen)` makes the condition of clean images x (training batches and validation
    photos); `baseline(model, cond)` is the classical answer the flow is compared with, called
    `baseline_name` in the metrics; validation draws `temperature` samples, PSNR / SSIM shave a border
    of `factor` pixels when `shave`; `training` is recorded in the manifest's training settings.
    """

    builder: str
    degrade: Callable[[ImageFlow, Tensor, torch.Generator], Tensor]
    baseline: Callable[[ImageFlow, Tensor], Tensor]
    baseline_name: str
    temperature: float
    shave: bool
    training: dict = field(default_factory=dict)


def _sr_degrade(model, hr: Tensor, gen: torch.Generator) -> Tensor:
    return bicubic_down(hr, model.factor)


def _sr_baseline(model, low_res: Tensor) -> Tensor:
    return bicubic_up(low_res, model.factor)


def _ll_degrade(model, x: Tensor, gen: torch.Generator) -> Tensor:
    return darken(x, gen)[0]


def _ll_baseline(model, dark: Tensor) -> Tensor:
    return equalize(dark[None])[0]


SR = Task(
    "srflow",
    degrade=_sr_degrade,
    baseline=_sr_baseline,
    baseline_name="bicubic",
    temperature=0.7,
    shave=True,
)
"""Super-resolution: HR given its bicubic LR, against bicubic upscaling (chapters 4-7)."""
LOWLIGHT = Task(
    "llflow",
    degrade=_ll_degrade,
    baseline=_ll_baseline,
    baseline_name="histeq",
    temperature=0.0,
    shave=False,
    training={"data": "darken(TRAIN_PHOTOS crops)"},
)
"""Low light: the photo given its `darken` capture, against histogram equalisation (chapter 9)."""


def validation_pairs(
    model: ImageFlow, task: Task, size: int = 0, seed: int = 0, photos: str = "course"
) -> list[tuple[str, Tensor, Tensor]]:
    """(name, x, condition) for each val photo of the split `photos` (`data.PHOTO_SPLITS`): whole (or
    its centre `size` crop), cropped to a size the flow accepts, its condition by the task's
    degradation (photo i with generator seed + i)."""
    names = _split(photos).val
    out = []
    for i, (name, x) in enumerate(zip(names, load_photos(names))):
        x = mod_crop(center_crop(x, size) if size else x, model.factor * model.lr_multiple)
        out.append((name, x, task.degrade(model, x, torch.Generator().manual_seed(seed + i))))
    return out


class _Factor(NamedTuple):
    """What a task's `degrade` reads of the model (its `factor`), small enough to send to DataLoader workers."""

    factor: int


def _example_degrade(task: Task, factor: int, x: Tensor, gen: torch.Generator) -> Tensor:
    return task.degrade(_Factor(factor), x, gen)


def _split(photos: str):
    """The `data.PHOTO_SPLITS` entry named `photos`, or a clear error naming the choices."""
    if not isinstance(photos, str) or photos not in PHOTO_SPLITS:
        raise ValueError(f"photos must be one of {', '.join(map(repr, PHOTO_SPLITS))}, got {photos!r}")
    return PHOTO_SPLITS[photos]


@torch.no_grad()
def validation_bpd(model: ImageFlow, pairs: list[tuple[str, Tensor, Tensor]], seed: int = 0) -> float:
    """The mean bits per dim of `model` (in eval mode, its mode restored) over `pairs` (from
    `validation_pairs`), each photo's dequantisation noise from a generator seeded `seed`: the
    ``val_bpd`` that `evaluate` reports for the same pairs and seed, without the samples."""
    was_training = model.training
    model.eval()
    try:
        values = [_bpd(model, x[None], cond[None], torch.Generator().manual_seed(seed)).item() for _, x, cond in pairs]
    finally:
        model.train(was_training)
    return sum(values) / len(values)


def _bpd(model: ImageFlow, x: Tensor, cond: Tensor, gen: torch.Generator) -> Tensor:
    """`ImageFlow.nll_bpd` of CPU tensors x, cond on the model's device, the noise drawn on the CPU."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        return model.nll_bpd(x, cond, gen)
    noise = _noise(gen, tuple(x.shape), slice(None), x).to(device)
    return model.nll_bpd(x.to(device), cond.to(device), noise=noise)


@torch.no_grad()
def evaluate(
    model: ImageFlow, task: Task, size: int = 0, num_samples: int = 1, seed: int = 0, photos: str = "course"
) -> dict:
    """Validation metrics on the val photos of the split `photos` (`validation_pairs`), deterministic
    for a given seed (dequantisation noise and samples).

    Per photo: bpd; PSNR / SSIM of the mean of `num_samples` samples at the task's temperature
    (clamped to [0, 1] for the metric only) and of the task's baseline; and of the raw samples: max
    |x| and the non-finite count, so an explosion cannot hide behind the mean.
    """
    was_training = model.training
    model.eval()
    shave, base, rows = model.factor if task.shave else 0, task.baseline_name, {}
    for name, x, cond in validation_pairs(model, task, size, seed, photos):
        bpd = _bpd(model, x[None], cond[None], torch.Generator().manual_seed(seed)).item()
        samples = model.sample_images(cond, task.temperature, num_samples, torch.Generator().manual_seed(seed)).cpu()
        mean, baseline = samples.mean(0).clamp(0, 1), task.baseline(model, cond)
        finite = torch.isfinite(samples)
        rows[name] = {
            "bpd": bpd,
            "psnr": psnr(mean, x, shave),
            "ssim": ssim(mean, x, shave),
            f"{base}_psnr": psnr(baseline, x, shave),
            f"{base}_ssim": ssim(baseline, x, shave),
            "max_abs": samples[finite].abs().max().item() if finite.any() else math.nan,
            "nonfinite": int((~finite).sum()),
        }
    model.train(was_training)
    keys = ("bpd", "psnr", "ssim", f"{base}_psnr", f"{base}_ssim")
    avg = {k: sum(r[k] for r in rows.values()) / len(rows) for k in keys}
    return {
        "val_bpd": avg.pop("bpd"),
        **avg,
        "temperature": task.temperature,
        "num_samples": num_samples,
        "eval_seed": seed,
        "val_size": size,
        "per_image": rows,
    }


def check_run(
    config: ImageFlowConfig, cfg: TrainConfig, early: int = 0, val_size: int = 0, val_samples: int = 1
) -> None:
    """A clear error unless these settings of `train_images` suit each other and the model: the
    crop and `val_size` (0: whole photos) multiples of what the model accepts, `val_size` within
    every val photo of the split ``cfg.photos``, `early` below the steps, and an image folder
    ``cfg.data`` without files named like the split's val or test photos."""
    _at_least(0, early=early, val_size=val_size)
    _at_least(1, val_samples=val_samples)
    multiple = config.factor * config.lr_multiple
    if cfg.crop % multiple:
        raise ValueError(f"crop {cfg.crop} must be a multiple of {multiple} for this model")
    if 0 < val_size < multiple:
        raise ValueError(f"val_size {val_size} must be 0 (whole photos) or at least {multiple} for this model")
    if early >= cfg.steps:
        raise ValueError(f"early {early} must be smaller than steps {cfg.steps}")
    split = _split(cfg.photos)
    if val_size:
        side, name = min((min(x.shape[-2:]), n) for n, x in zip(split.val, load_photos(split.val)))
        if val_size > side:
            raise ValueError(
                f"val_size {val_size} is larger than the {cfg.photos!r} split's val photo {name} ({side} px on its "
                "short side); choose at most that, or 0 (whole photos)"
            )
    if cfg.data is not None:
        try:
            stems = {p.stem for p in image_files(cfg.data)}
        except FileNotFoundError:
            stems = set()  # said when the run reads the folder (`batch_source`)
        held_out = sorted(stems & {*split.val, *split.test})
        if held_out:
            raise ValueError(
                f"--data {cfg.data} holds photos the {cfg.photos!r} split holds out for validation or test "
                f"({', '.join(held_out)}): training on them would make its validation meaningless; "
                "train on a folder without them, or pick another --photos"
            )


def batch_source(
    task: Task, model: ImageFlow, cfg: TrainConfig, procs: Dist, start: int = 0
) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """``batches(gen)`` for `fit`: this process's share (`distributed.share`) of each step's global
    batch of ``cfg.batch`` crops and their conditions, on the CPU.

    Bundled photos (``cfg.data`` None): the train photos of the split ``cfg.photos``; every
    process draws the whole global batch from `gen` (`random_crops`, then the task's degradation)
    and keeps its rows, so the generators stay in step. An image folder: `FolderCrops` example
    ``s * batch + i`` is row i of step s (from step `start` on), each process reading only its rows,
    with ``cfg.workers`` DataLoader workers.
    """
    rows = distributed.share(procs, cfg.batch)
    if cfg.data is None:
        images = load_photos(_split(cfg.photos).train)

        def photos(gen: torch.Generator) -> tuple[Tensor, Tensor]:
            x = random_crops(images, cfg.crop, cfg.batch, gen)
            cond = task.degrade(model, x, gen)
            return (x, cond) if procs.world == 1 else (x[rows], cond[rows])

        return photos
    from torch.utils.data import DataLoader

    crops = FolderCrops(cfg.data, cfg.crop, cfg.seed, degrade=functools.partial(_example_degrade, task, model.factor))
    loader = DataLoader(
        crops,
        batch_sampler=StepBatches(start, cfg.steps, cfg.batch, rows),
        num_workers=cfg.workers,
        pin_memory=procs.device.type == "cuda",
    )
    stream = None

    def folder(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        nonlocal stream
        stream = iter(loader) if stream is None else stream
        x, cond = next(stream)
        return x, cond

    return folder


def train_images(
    task: Task,
    config: SRFlowConfig | LLFlowConfig,
    cfg: TrainConfig,
    command: str,
    early: int = 0,
    val_size: int = 0,
    val_samples: int = 1,
) -> dict:
    """Run (or resume) training of an image task as the module docstring says; returns the final metrics
    (on rank 0; {} on the other processes of a distributed run).

    Saves NAME at the end and NAME_early at step `early` (0: none; it must be below ``cfg.steps``);
    validates on centre crops of `val_size` (0: whole photos) with `val_samples` samples each.
    `command` is the command line recorded in the manifests. Under torchrun the processes join one
    process group for the run (`distributed.setup`) and leave it at the end.
    """
    check_run(config, cfg, early, val_size, val_samples)
    try:
        procs = distributed.setup(cfg.device or None)
    except ValueError as err:
        raise TrainError(str(err)) from None
    try:
        return _train_images(task, config, cfg, command, early, val_size, val_samples, procs)
    finally:
        distributed.shutdown(procs)


def _train_images(task, config, cfg, command, early, val_size, val_samples, procs: Dist) -> dict:
    if cfg.batch % procs.world:
        raise TrainError(f"--batch {cfg.batch} (the global batch) must be a multiple of the {procs.world} processes")
    state_path = cfg.runs / cfg.name / "state.pt"
    done = torch.load(state_path, map_location="cpu", weights_only=True)["step"] if state_path.exists() else 0
    early_name = [f"{cfg.name}_early"] if early > done else []  # saved again only if not reached yet
    root = checkpoint_root(cfg, [cfg.name, *early_name])
    torch.manual_seed(cfg.seed)
    model = checkpoints.build(task.builder, config).to(procs.device)
    model_config = model.config
    try:
        batches = batch_source(task, model, cfg, procs, done)
    except (FileNotFoundError, ValueError) as err:
        raise TrainError(str(err)) from None
    split = _split(cfg.photos)
    training = task.training | {"device": str(procs.device), "processes": procs.world}
    if cfg.data is not None and "data" in training:
        training["data"] = f"{training['data'].split('(')[0]}(crops of {cfg.data})"
    elif cfg.photos != "course" and "data" in training:
        training["data"] = f"{training['data'].split('(')[0]}({cfg.photos} train photos crops)"
    training |= {"photos": cfg.photos, "val_photos": list(split.val)}
    training |= {"train_photos": list(split.train)} if cfg.data is None else {}
    pairs = validation_pairs(model, task, val_size, 0, cfg.photos) if cfg.val_every and procs.main else []

    def save(name: str, progress: Progress) -> dict:
        metrics = ship(
            model,
            name,
            task.builder,
            model_config,
            cfg,
            command,
            progress,
            lambda: evaluate(model, task, val_size, val_samples, seed=0, photos=cfg.photos),
            root,
            curve=None if progress.curve is None else {"every": cfg.val_every, "val_size": val_size, **progress.curve},
            **training,
        )
        base = task.baseline_name
        print(
            f"saved checkpoint {name} at step {progress.step} in {root / 'checkpoints'}: "
            f"val bpd {metrics['val_bpd']:.3f}, "
            f"PSNR {metrics['psnr']:.2f} dB ({base} {metrics[f'{base}_psnr']:.2f}), "
            f"SSIM {metrics['ssim']:.3f} ({base} {metrics[f'{base}_ssim']:.3f})",
            flush=True,
        )
        return metrics

    def save_early(progress: Progress) -> None:
        if early and progress.step == early:
            save(f"{cfg.name}_early", progress)

    progress = fit(
        model,
        batches,
        cfg,
        model_config,
        on_step=save_early,
        command=command,
        builder=task.builder,
        procs=procs,
        validate=(lambda: validation_bpd(model, pairs, seed=0)) if pairs else None,
    )
    return save(cfg.name, progress) if procs.main else {}


# ----------------------------------------------------------------------------- the toy


def train_toy_checkpoint(config: ToyFlowConfig, cfg: TrainConfig, command: str, data: Path | None = None) -> Path:
    """Train a toy flow (`toy.train_toy`, from the weights `cfg.seed` gives) and save it as checkpoint
    ``cfg.name`` with its metrics (held-out NLL, spread and inside fraction at y = 0); its path.
    `data` is the data folder ``cfg.ship`` writes into (default `checkpoints.data_dir()`). It trains
    on ``cfg.device`` in one process (its batches are drawn on the CPU, the same on every device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainError("train-toy trains in one process; run it without torchrun")
    if cfg.data is not None or cfg.photos != "course" or cfg.val_every:
        raise TrainError("the toy draws its own data; --data, --photos and --val-every are for the image tasks")
    try:
        device = distributed.resolve_device(cfg.device or None)
    except ValueError as err:
        raise TrainError(str(err)) from None
    root = checkpoint_root(cfg, [cfg.name], data)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)  # the model's initial weights
    flow = checkpoints.build("toy", config).to(device)
    start = time.time()
    try:
        history = toy.train_toy(
            flow, cfg.steps, batch=cfg.batch, learning_rate=cfg.learning_rate, seed=cfg.seed, progress=cfg.progress
        )
    except FloatingPointError as err:
        raise TrainError(f"{err}; nothing was saved") from None
    wall = time.time() - start
    x0 = toy.sample_at(flow, (0.0, 0.0), 4000, generator=torch.Generator().manual_seed(7))
    tail = history[-100:]
    metrics = {
        "train_nll_last100": sum(tail) / len(tail),
        "val_nll": toy.validation_nll(flow),
        "true_nll": toy.TRUE_NLL,
        "spread_y0": toy.spread(x0),
        "true_spread": toy.true_spread(),
        "inside_frac_y0": toy.inside_fraction(x0, torch.zeros(2)),
    }
    record = {
        "command": command,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "batch": cfg.batch,
        "lr": cfg.learning_rate,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "wall_time_s": round(wall, 1),
        "metrics": {k: round(v, 5) for k, v in metrics.items()},
    }
    path = checkpoints.save_checkpoint(flow, cfg.name, builder="toy", config=asdict(config), record=record, root=root)
    print(f"saved {path} in {wall:.1f} s: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return path


if __name__ == "__main__":  # the old form, `python -m minflow.train ...`: `python -m minflow train-sr ...`
    import sys

    from .cli import main

    main(["train-sr", *sys.argv[1:]])
