"""Evaluation helpers shared by the SR and low-light chapters: quality, consistency, diversity, artifacts.

- `psnr`, `ssim`: fidelity to the ground truth (data range 1).
- `lr_psnr`: consistency, the PSNR of the sample downscaled by the training degradation against the LR.
- `diversity`: how much samples for one input differ (mean per-pixel standard deviation).
- `artifact_mask`, `artifact_report`: the paper's per-pixel artifact criterion, and beside it what tells
  an explosion from ordinary sample tails (max |x|, non-finite count, `EXPLOSION` flag).
- `rate_interval`: a 95 % interval for a rate counted over few samples (k of n).

Everything measures the values it is given: pass *raw* samples to the artifact functions (never a
clamped copy), and clamped copies to the image-quality metrics if you want them to ignore explosions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import bicubic_down
from .utils import nanmin

__all__ = [
    "ARTIFACT_HIGH",
    "ARTIFACT_LOW",
    "EXPLOSION",
    "artifact_mask",
    "artifact_report",
    "diversity",
    "lr_psnr",
    "min_scale",
    "psnr",
    "rate_interval",
    "ssim",
]

ARTIFACT_HIGH, ARTIFACT_LOW = 1.5, -0.5  # the paper's bounds: outside [-0.5, 1.5] is an artifact
EXPLOSION = 1e3  # a sample "explodes" if it holds a non-finite value or max |x| > EXPLOSION


def _shaved_pair(x: Tensor, y: Tensor, shave: int, what: str, min_size: int = 1) -> tuple[Tensor, Tensor]:
    """x and y with `shave` px cut from each border, after checking they are float images (..., H, W)
    of one shape on one device, at least `min_size` px high and wide once shaved."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(
                f"{what}: {name} must be a float image (data range 1), got dtype {t.dtype}; "
                "convert an 8-bit image with x.float() / 255"
            )
    if x.shape != y.shape:
        raise ValueError(f"{what}: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"{what}: x is on {x.device} but y is on {y.device}")
    if x.dim() < 2:
        raise ValueError(f"{what} needs images (..., H, W), got shape {tuple(x.shape)}")
    if isinstance(shave, bool) or not isinstance(shave, int) or shave < 0:
        raise ValueError(f"{what}: shave must be an int >= 0, got {shave!r}")
    if x.numel() == 0:
        raise ValueError(f"{what}: x and y are empty, shape {tuple(x.shape)}")
    h, w = x.shape[-2] - 2 * shave, x.shape[-1] - 2 * shave
    if min(h, w) < min_size:
        need = f"its {min_size}x{min_size} window needs" if min_size > 1 else "it needs"
        raise ValueError(
            f"{what}: images of shape {tuple(x.shape)} with shave={shave} leave {max(h, 0)}x{max(w, 0)} px; "
            f"{need} at least {min_size}x{min_size}"
        )
    if shave:
        x, y = x[..., shave:-shave, shave:-shave], y[..., shave:-shave, shave:-shave]
    return x, y


def psnr(x: Tensor, y: Tensor, shave: int = 0) -> float:
    """Peak signal-to-noise ratio for peak 1: 10 log10(1 / MSE), over all channels, border shaved.

    Identical images give inf; an infinite value gives -inf and a nan gives nan (never a high score).
    x and y: float images of one shape (..., H, W); no broadcasting, no integer images.
    """
    x, y = _shaved_pair(x, y, shave, "psnr")
    mse = F.mse_loss(x.double(), y.double()).item()
    if not math.isfinite(mse):
        return -mse if mse == math.inf else math.nan
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def ssim(x: Tensor, y: Tensor, shave: int = 0, sigma: float = 1.5, radius: int = 5) -> float:
    """Mean SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), per channel, data range 1:

    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = 0.01^2, C2 = 0.03^2, local moments from the window; averaged over 'valid' positions.
    x and y: float images of one shape (..., H, W), at least the window (11 x 11) once shaved.
    """
    if not sigma > 0 or isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"ssim needs sigma > 0 and an int radius >= 0, got sigma={sigma!r}, radius={radius!r}")
    x, y = _shaved_pair(x, y, shave, "ssim", min_size=2 * radius + 1)
    x, y = x.double().reshape(-1, 1, *x.shape[-2:]), y.double().reshape(-1, 1, *y.shape[-2:])
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    win = (g[:, None] * g[None, :])[None, None]
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx, syy, sxy = F.conv2d(x * x, win) - mx**2, F.conv2d(y * y, win) - my**2, F.conv2d(x * y, win) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean().item()


def lr_psnr(sr: Tensor, lr: Tensor, factor: int) -> float:
    """LR consistency: PSNR of `bicubic_down(sr.clamp(0, 1), factor)` against `lr`, in dB.

    sr: (3, fH, fW) or (N, 3, fH, fW) (all N samples pooled in one MSE); lr: (3, H, W) or (N, 3, H, W).
    A sample that explains its input well scores high (a perfect SR model: > 40 dB); bicubic
    upscaling itself is not perfectly consistent, since down(up(lr)) != lr.
    """
    if not isinstance(lr, Tensor) or not lr.is_floating_point():
        raise TypeError(
            f"lr_psnr: lr must be a float image (data range 1), got {getattr(lr, 'dtype', type(lr).__name__)}"
        )
    if sr.shape[-2:] != (lr.shape[-2] * factor, lr.shape[-1] * factor):
        raise ValueError(f"sr {tuple(sr.shape)} must be {factor}x the size of lr {tuple(lr.shape)}")
    down = bicubic_down(sr.clamp(0, 1), factor)
    return psnr(down, lr.to(down).expand_as(down))


def diversity(samples: Tensor) -> float | Tensor:
    """Mean over pixels and channels of the per-pixel standard deviation across samples.

    samples: (N, C, H, W) -> float; (B, N, C, H, W) -> tensor (B,). N >= 2; the std uses the
    unbiased (N - 1) normalisation, so the expected value does not depend on N. Zero means all
    samples are identical; for i.i.d. values of std sigma it is about sigma. Measures the values
    given: pass clamped copies if some samples may have exploded.
    """
    if samples.dim() not in (4, 5) or samples.shape[-4] < 2:
        raise ValueError(f"need (N, C, H, W) or (B, N, C, H, W) samples with N >= 2, got {tuple(samples.shape)}")
    d = samples.double().std(dim=-4, correction=1).flatten(-3).mean(-1)
    return d.item() if samples.dim() == 4 else d


def artifact_mask(x: Tensor) -> Tensor:
    """The paper's per-pixel criterion: True where any channel is > 1.5, < -0.5 or non-finite.

    x: (..., C, H, W), raw (unclamped) values -> bool tensor (..., H, W).
    """
    if x.dim() < 3:
        raise ValueError(f"need an image (..., C, H, W), got shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x) | (x > ARTIFACT_HIGH) | (x < ARTIFACT_LOW)
    return bad.any(dim=-3)


def artifact_report(x: Tensor, min_scale: float | Tensor | None = None) -> dict:
    """Per-sample artifact figures of raw samples x (..., C, H, W), and a summary over all samples.

    Per sample (tensors of shape x.shape[:-3]):
      ``fraction``  fraction of pixels that are artifacts by `artifact_mask`;
      ``max_abs``   largest |value| among the finite values (nan if none is finite);
      ``nonfinite`` number of inf/nan values (over channels);
      ``explosion`` True if nonfinite > 0 or max_abs > `EXPLOSION` (1e3).
    ``summary``: samples, mean artifact fraction, share of samples with any artifact pixel, share
    exploding, max |x| and non-finite count over all samples, and `min_scale` (the smallest scale
    s the sampling pass used, from `min_scale` of trace rows or a recording's ``rec.min_scale()``) when given:
    the design asks every artifact report to carry it. A per-sample tensor is also kept as
    ``min_scale`` beside the other per-sample entries; the summary holds its minimum.
    """
    mask = artifact_mask(x)
    finite = torch.isfinite(x)
    nonfinite = (~finite).flatten(-3).sum(-1)
    absval = torch.where(finite, x.abs(), torch.full_like(x, -1.0)).flatten(-3).amax(-1).double()
    max_abs = torch.where(absval < 0, torch.full_like(absval, math.nan), absval)
    explosion = (nonfinite > 0) | (max_abs > EXPLOSION)  # nan > 1e3 is False, but then nonfinite > 0
    fraction = mask.flatten(-2).double().mean(-1)
    n = max(fraction.numel(), 1)
    per_scale = None
    if isinstance(min_scale, Tensor):
        per_scale = min_scale.detach().double().cpu().reshape(fraction.shape)
        min_scale = nanmin(per_scale).item()
    summary = {
        "samples": fraction.numel(),
        "artifact_fraction": fraction.sum().item() / n,
        "with_artifacts": (fraction > 0).sum().item() / n,
        "explosions": explosion.sum().item() / n,
        "max_abs": absval.max().item() if bool((absval >= 0).any()) else math.nan,
        "nonfinite": int(nonfinite.sum()),
        "min_scale": min_scale,
    }
    report = {
        "fraction": fraction,
        "max_abs": max_abs,
        "nonfinite": nonfinite,
        "explosion": explosion,
        "summary": summary,
    }
    if per_scale is not None:
        report["min_scale"] = per_scale
    return report


def min_scale(rows: list[dict]) -> float:
    """The smallest scale s any coupling or injector used, from `ConditionalFlow.trace` rows.

    nan is ignored (as in `utils.nanmin`): nan when every layer that reports a scale reported nan;
    a ValueError when no row reports one at all (a trace of a flow without couplings).
    """
    scales = [r["min_scale"] for r in rows if r.get("min_scale") is not None]
    if not scales:
        raise ValueError("no layer in these trace rows reports a scale")
    return nanmin(torch.tensor(scales, dtype=torch.float64)).item()


def rate_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a rate of k events in n trials (95 % for z = 1.96):

        (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n),   p = k / n.

    Unlike p -+ z sqrt(p(1-p)/n) it stays inside [0, 1] and is not empty at k = 0: 0 of 60 samples
    gives (0, 0.060), so "no artifact in 60 samples" only bounds the rate below about 6 %.
    """
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or not 0 <= k <= n or n < 1:
        raise ValueError(f"need counts 0 <= k <= n with n >= 1, got k={k!r}, n={n!r}")
    p, z2 = k / n, z * z
    mid, half = p + z2 / (2 * n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, (mid - half) / (1 + z2 / n)), min(1.0, (mid + half) / (1 + z2 / n))
