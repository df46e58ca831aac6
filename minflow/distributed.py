"""Several processes, one run: the few hooks `train.fit` calls to train with DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 -m minflow train-sr --name sr_ddp --batch 16

torchrun starts one process per GPU (or per CPU slot) and sets RANK, WORLD_SIZE and LOCAL_RANK;
`setup` reads them and joins the process group: NCCL when the run trains on CUDA, gloo on the CPU.
Without those variables it is one process and every hook here does nothing.

How the ranks share the work: every step has one *global batch* of ``batch`` examples, the same
in every run of that seed whatever the number of processes W. Rank r keeps rows
``share(batch)`` = [r B / W, (r + 1) B / W) of it, computes the mean bits per dim of its rows,
and DDP averages the gradients over the ranks: the mean over the whole global batch, so W
processes take the same steps as one (up to the order of float32 sums). Each rank keeps its own
copy of the seeded generator; all copies draw the same numbers, so they stay in step.

ActNorm's data-dependent init would otherwise see only the rank's rows: `sync_actnorm` makes
every rank initialise from the statistics of the whole global batch (means and variances
all-reduced), so the ranks agree and agree with one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Dist", "agree", "mean", "resolve_device", "setup", "share", "shutdown", "sync_actnorm", "wrap"]


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its `rank` of `world` processes, its `local_rank` on its
    machine, its `device`. ``world == 1``: one process, no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes files."""
        return self.rank == 0


def resolve_device(device: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """`device` as a torch.device (None: cuda when available, else cpu); a bare "cuda" becomes
    this process's GPU, cuda:`local_rank`. A device torch cannot use is a ValueError."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda asked for, but torch sees no GPU here; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"{device} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value is None else int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be a whole number, got {value!r}") from None


def setup(device: str | torch.device | None = None) -> Dist:
    """This process's `Dist` from torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: one process),
    joining the process group when there are several: NCCL on CUDA, gloo on the CPU."""
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise ValueError(f"inconsistent RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    where = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local, where)


def shutdown(d: Dist) -> None:
    """Leave the process group (if this process joined one)."""
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def share(d: Dist, batch: int) -> slice:
    """The rows of a global batch of `batch` examples that rank ``d.rank`` computes: the r-th of W
    equal parts (a `batch` that W does not divide is a ValueError)."""
    if batch % d.world:
        raise ValueError(f"the global batch {batch} must be a multiple of the number of processes {d.world}")
    part = batch // d.world
    return slice(d.rank * part, (d.rank + 1) * part)


def agree(d: Dist, bad: bool | Tensor) -> bool:
    """True on every rank when `bad` is true on any (an all-reduce of the flag): the ranks stop together."""
    if d.world == 1:
        return bool(bad)
    flag = torch.tensor([float(bool(bad))], device=d.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def mean(d: Dist, value: Tensor) -> Tensor:
    """The mean of a scalar over the ranks (the loss of the global batch); itself for one process."""
    if d.world == 1:
        return value
    total = value.detach().reshape(1).clone()
    dist.all_reduce(total)
    return total[0] / d.world


def wrap(d: Dist, module: nn.Module) -> nn.Module:
    """`module` wrapped in DistributedDataParallel (gradients averaged over the ranks), or itself
    for one process. Save ``model.state_dict()`` of the unwrapped model, never the wrapper's."""
    if d.world == 1:
        return module
    ids = [d.device.index] if d.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def sync_actnorm(d: Dist, model: nn.Module) -> None:
    """Make every uninitialised ActNorm of `model` initialise from the whole global batch: on its
    first training batch each rank all-reduces the per-channel sums, then the sums of squared
    deviations from the global mean, giving mean_c and std_c of all W shares (equal shares). One
    process: nothing changes (the layer's own `initialize`)."""
    if d.world == 1:
        return
    from .transforms import ActNorm

    for layer in model.modules():
        if isinstance(layer, ActNorm) and not bool(layer.initialized):
            layer.initialize = _global_initialize(d, layer)


def _global_initialize(d: Dist, layer: nn.Module):
    own = type(layer).initialize.__get__(layer)  # the layer's checks and assignment

    @torch.no_grad()
    def initialize(x: Tensor) -> None:
        bad = x.numel() == 0 or not bool(torch.isfinite(x).all())
        if agree(d, bad):  # every rank refuses, the one with the bad batch with the layer's message
            if bad:
                own(x)  # raises the layer's own message
            raise ValueError("ActNorm's first batch was empty or non-finite on another process")
        dims = [k for k in range(x.dim()) if k != 1]
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=x.dtype)
        dist.all_reduce(count)
        total = x.sum(dim=dims)
        dist.all_reduce(total)
        centre = total / count
        squares = ((x - centre.view(1, -1, *([1] * (x.dim() - 2)))) ** 2).sum(dim=dims)
        dist.all_reduce(squares)
        std = (squares / count).sqrt()
        own(x)  # its checks (empty, non-finite) and the flag; the values are set just below
        layer.bias.copy_(-centre)
        layer.logs.copy_(-torch.log(std + 1e-6))
        del layer.initialize  # back to the class's method

    return initialize
