"""Small helpers every chapter uses: the device, quick mode, seeds, input checks."""

from __future__ import annotations

import math
import numbers
import os
import random

import numpy as np
import torch

__all__ = ["QUICK_ENV", "adam", "get_device", "pick", "quick_mode", "seed_everything"]

QUICK_ENV = "MINFLOW_QUICK"


def get_device() -> torch.device:
    """`cuda` when a GPU is available, else `cpu`. Every chapter takes its device from here."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


FUSED_ADAM_DEVICES = ("cpu", "cuda")
"""Devices whose parameters `adam` updates with torch's fused kernel (torch >= 2.4 has it on both)."""


def adam(params, lr: float = 1e-3, **kwargs) -> torch.optim.Adam:
    """`torch.optim.Adam(params, lr, **kwargs)`, fused where torch has the kernel for the parameters'
    device (`FUSED_ADAM_DEVICES`): one pass over every parameter per step, where the default on a CPU
    runs about ten small operations per parameter tensor, most of a toy flow's optimiser step. The
    update is Adam's either way (to float rounding); ``fused=False`` in kwargs keeps the default."""

    def listed(ps) -> list:  # torch takes a tensor, or any iterable of them (read once)
        return [ps] if isinstance(ps, torch.Tensor) else list(ps)

    params = [{**g, "params": listed(g["params"])} if isinstance(g, dict) else g for g in listed(params)]
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    if "fused" not in kwargs and "foreach" not in kwargs and tensors:
        kwargs["fused"] = all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in tensors) or None
    return torch.optim.Adam(params, lr=lr, **kwargs)


def quick_mode() -> bool:
    """True when the environment variable MINFLOW_QUICK is set to 1/true/yes (the test run sets it)."""
    value = os.environ.get(QUICK_ENV, "0").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{QUICK_ENV} must be 0 or 1, got {value!r}")


def pick(full, quick):
    """`quick` in quick mode, else `full`: e.g. `steps = pick(2000, 400)`."""
    return quick if quick_mode() else full


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); returns a torch generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_tensor(
    x: torch.Tensor,
    name: str,
    ndim: tuple[int, ...],
    channels: int | None = None,
    floating: bool = False,
    shape: str | None = None,
) -> None:
    """Raise a clear error unless `x` is a tensor with one of the allowed ranks and `channels` in dim 1.

    The one input check of minflow (`check_image` builds on it): a non-tensor or, with `floating`,
    a non-float dtype is a TypeError; a wrong rank or channel count a ValueError, whose message
    shows `shape` (e.g. ``"(N, D)"``) when given.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndim:
        want = f"shape {shape}" if shape else f"{' or '.join(map(str, ndim))} dimensions"
        raise ValueError(f"{name} must have {want}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels in dim 1, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


PIXEL_LIMIT = 16.0
"""Largest |value| an image in [0, 1] may hold: about twice the course's most stretched input
(chapter 8's contrast x16 without clamping, -7.5 to 8.5); beyond it is taken for a 0..255 image."""


def check_image(x: torch.Tensor, name: str, channels: int = 3, size: str = "H, W", values: bool = True) -> None:
    """Raise a clear error unless `x` is a (channels, H, W) or (B, channels, H, W) float image in [0, 1].

    With ``values=False`` only the type, shape and dtype are checked (the data functions, which
    also take exploded samples). Otherwise values outside [0, 1] are allowed (unclamped bicubic
    output overshoots a little, and the course feeds stretched inputs on purpose), but not
    non-finite ones, nor what looks like a 0..255 image: |values| above `PIXEL_LIMIT`, or whole
    numbers in 0..255 that exceed 1. `size` names the spatial dimensions in the messages.
    """
    shape = f"({channels}, {size}) or (B, {channels}, {size})"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if x.dim() not in (3, 4) or x.shape[-3] != channels:
        raise ValueError(f"{name} must be a {shape} tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a float image in [0, 1], got dtype {x.dtype}; convert an 8-bit image with x.float() / 255"
        )
    if not values:
        return
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    if x.numel() == 0:
        return
    low, high = x.min().item(), x.max().item()
    whole_0_255 = low >= 0 and high > 1 and high <= 255 and bool((x == x.round()).all())
    if max(-low, high) > PIXEL_LIMIT or whole_0_255:
        raise ValueError(
            f"{name} has values in [{low:.4g}, {high:.4g}]: it looks like a 0..255 image, and images are "
            "floats in [0, 1]; divide it by 255 first"
        )


def check_temperature(temperature: float) -> float:
    """`temperature` as a float, or a clear error unless it is a finite number >= 0 (the noise scale T)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    return float(temperature)


def check_cond(x: torch.Tensor, cond: torch.Tensor | None, channels: int) -> None:
    """Check a condition against the input it conditions: present, same batch, device, dtype and size."""
    if channels == 0:
        return
    if cond is None:
        raise ValueError(f"this layer is conditional ({channels} condition channels) but cond is None")
    if not isinstance(cond, torch.Tensor):
        raise TypeError(f"cond must be a torch.Tensor, got {type(cond).__name__}")
    if cond.device != x.device:
        raise ValueError(f"cond is on {cond.device} but the input is on {x.device}; move both to one device")
    if (
        cond.dim() != x.dim()
        or cond.shape[0] != x.shape[0]
        or cond.shape[1] != channels
        or cond.shape[2:] != x.shape[2:]
    ):
        want = (x.shape[0], channels) + tuple(x.shape[2:])
        raise ValueError(f"cond must have shape {want} for an input of shape {tuple(x.shape)}, got {tuple(cond.shape)}")


def param_planes(params: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A bijection's ``params`` (x.shape + (n,)) as (planes, dim), ``planes.unbind(dim)`` its n parameters.

    planes is the contiguous tensor params views, dim the one that indexes the parameters: a conv
    conditioner's (B, C, n, H, W) output, viewed as (B, C, H, W, n), comes back as itself with dim 2;
    row-packed params (or any other layout) as themselves with their last dim. Taken apart along
    that dim, the parameters' gradient comes out in the conditioner's layout: no copy on the way back.
    """
    for dim in range(params.dim() - 1):
        planes = params.movedim(-1, dim)
        if planes.is_contiguous():
            return planes, dim
    return params, params.dim() - 1


def nanmin(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The smallest value that is not NaN, over `dim` (or over everything); NaN where all are NaN.

    How every "smallest scale s" in minflow is taken (`minflow.recording`): a layer reached by NaN
    values must not hide the small scale of the layer that produced them.
    """
    v = values.flatten() if dim is None else values
    d = 0 if dim is None else dim
    if v.shape[d] == 0:
        return v.new_full(v.shape[:d] + v.shape[d + 1 :], math.nan)
    low = v.nan_to_num(nan=math.inf, posinf=math.inf, neginf=-math.inf).amin(d)
    return low.masked_fill(v.isnan().all(d), math.nan)
