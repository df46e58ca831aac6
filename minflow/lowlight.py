"""Low-light enhancement, the paper's second task: a small LLFlow (its data: `minflow.data.lowlight`).

    log p(x | y) = log N(f(x; g(y)); mu(y), I) + sum_layers log|det J_layer|,   x = normal, y = dark

x and y have the same size (no upscaling). g(y) is `Features` {(H, W): features} with one feature
map per flow level, and as its ``prior_mean`` the squeezed colour map mu(y) of the top prior. The
flow has L levels of

    Squeeze -> T transition steps [ActNorm, 1x1 conv]
            -> K conditional steps [ActNorm, 1x1 conv, Injector(g), Coupling(x_a, g)]

and *no split* (as LLFlow): the prior mean is the squeezed colour map, one value per dimension of
the top latent, so every dimension of x must reach the top. The last layer, `PriorMean`, subtracts
mu(y), so the flow's Gaussian base N(0, I) on its output is N(mu, I) on the top latent, and
`sample(y, temperature=T)` draws z = mu + T eps: LLFlow enhances at T = 0, z = mu. The prior's
variance is fixed, so the condition moves the latent by a bounded shift only: the exploding paths
are the injector and coupling scales, as in SRFlow.

The encoder sees what LLFlow's sees (`encoder_inputs`): the log intensity of y, its colour-ratio
map y / sum_c y (illumination invariant) and a histogram-equalised copy (`equalize`); LLFlow also
feeds a noise map, left out here. Its colour map is 3 y / sum_c y plus a learned, zero-initialised
correction, so the prior starts at the dark image's own colours.

`LLFlowConfig` holds the architecture; dequantisation, bits per dim and padded sampling come from
`imageflow.ImageFlow`, as for SRFlow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from .bijections import Spec, make_bijection, spec_name
from .imageflow import ImageFlow, ImageFlowConfig
from .sr import Encoder, flow_level
from .transforms import Cond, Features, Offset, Squeeze, zero_layer

__all__ = [
    "LLFlow",
    "LLFlowConfig",
    "LowLightEncoder",
    "PriorMean",
    "build_llflow",
    "colour_ratio",
    "encoder_inputs",
    "enhance",
    "equalize",
    "match_mean",
    "squeeze_times",
]

# ----------------------------------------------------------------------------- encoder inputs


def equalize(x: Tensor, bins: int = 256) -> Tensor:
    """Histogram equalisation of each image and channel of an NCHW batch in [0, 1] (no gradient).

    Values are binned to `bins` levels and mapped through the channel's empirical CDF, stretched
    so the darkest level present goes to 0 and the brightest to 1: (cdf(v) - cdf_min) / (N - cdf_min).
    """
    b, c, h, w = x.shape
    q = (x.detach().clamp(0, 1) * (bins - 1)).round().long().flatten(2)  # (B, C, HW)
    counts = torch.zeros(b, c, bins, dtype=x.dtype, device=x.device)
    cdf = counts.scatter_add_(2, q, torch.ones_like(q, dtype=x.dtype)).cumsum(2)
    low = cdf.gather(2, q.amin(2, keepdim=True))  # count at the darkest level present
    return ((cdf.gather(2, q) - low) / (h * w - low).clamp(min=1)).view(b, c, h, w)


def match_mean(x: Tensor, mean: float | Tensor, curve: str = "gain", iters: int = 50) -> Tensor:
    """x (CHW or NCHW in [0, 1]) brightened by one global curve so its mean is `mean` (per image):

        "gain":   g x, clamped to [0, 1], with g = mean / mean(x)   (brightness match);
        "gamma":  x ** gamma, with gamma found by bisection         (tone-curve match).

    Given the reference's mean it is a strong baseline for low-light enhancement (the mean is
    what evaluations "with the ground-truth mean" grant a model; a model's output can be matched
    the same way). The gain's clamp can keep the mean below `mean`; the gamma curve stays in [0, 1].
    """
    if curve not in ("gain", "gamma"):
        raise ValueError(f"curve must be 'gain' or 'gamma', got {curve!r}")
    batch = x[None] if x.dim() == 3 else x
    if batch.dim() != 4 or not batch.is_floating_point():
        raise ValueError(f"need a float CHW or NCHW image, got {tuple(x.shape)} {x.dtype}")
    n, v = batch.shape[0], batch.detach().clamp(0, 1)
    target = torch.as_tensor(mean, dtype=v.dtype, device=v.device).reshape(-1).expand(n).clone()
    if not (torch.isfinite(target).all() and (target > 0).all() and (target < 1).all()):
        raise ValueError(f"the target mean must lie in (0, 1), got {mean}")
    if curve == "gain":
        out = v * (target / v.mean((1, 2, 3)).clamp(min=1e-6)).view(n, 1, 1, 1)
    else:  # mean(v ** g) falls as g rises: bisect log g in [-8, 8]
        base = v.clamp(min=1e-6)
        lo, hi = torch.full_like(target, -8.0), torch.full_like(target, 8.0)
        for _ in range(iters):
            mid = (lo + hi) / 2
            brighter = (base ** mid.exp().view(n, 1, 1, 1)).mean((1, 2, 3)) > target
            lo, hi = torch.where(brighter, mid, lo), torch.where(brighter, hi, mid)
        out = base ** ((lo + hi) / 2).exp().view(n, 1, 1, 1)
    out = out.clamp(0, 1)
    return out[0] if x.dim() == 3 else out


def colour_ratio(x: Tensor, eps: float = 1e-4) -> Tensor:
    """x / sum over channels: the colour without the brightness (illumination invariant)."""
    return x / (x.sum(1, keepdim=True) + eps)


def encoder_inputs(dark: Tensor) -> Tensor:
    """LLFlow's encoder inputs, (B, 9, H, W): log intensity log(y + 1e-3) scaled to [-1, 0], the
    colour-ratio map and the histogram-equalised copy."""
    log = torch.log(dark.clamp(min=0) + 1e-3) / math.log(1e3)
    return torch.cat([log, colour_ratio(dark.clamp(min=0)), equalize(dark)], 1)


def squeeze_times(x: Tensor, times: int, inverse: bool = False) -> Tensor:
    """`Squeeze` applied `times` times (or undone, with inverse=True)."""
    for _ in range(times):
        x = (Squeeze().inverse if inverse else Squeeze())(x)[0]
    return x


class LowLightEncoder(nn.Module):
    """g(y): `sr.Encoder` (RDBs) on the space-to-depth of `encoder_inputs(y)` (36 channels at H/2),
    giving features at H/2, ..., H/2^L; and the colour map 3 y / sum_c y + a zero-initialised
    correction read from the H/2 features, squeezed L times into the prior mean (``prior_mean``)."""

    def __init__(self, levels: int, nf: int, blocks: int, gc: int, cond_channels: int):
        super().__init__()
        self.levels = levels
        self.body = Encoder(2, levels, nf, blocks, gc, cond_channels, in_channels=36)
        self.colour = zero_layer(nn.Conv2d(cond_channels, 12, 3, padding=1))

    def forward(self, dark: Tensor) -> Features:
        m = 2**self.levels
        if dark.dim() != 4 or dark.shape[1] != 3:
            raise ValueError(f"the dark image must have shape (B, 3, H, W), got {tuple(dark.shape)}")
        if dark.shape[2] % m or dark.shape[3] % m:
            raise ValueError(
                f"image size {tuple(dark.shape[2:])} must be divisible by {m} for this flow; enhance() pads for you"
            )
        feats = self.body(squeeze_times(encoder_inputs(dark), 1))
        first = feats[(dark.shape[2] // 2, dark.shape[3] // 2)]
        colour = 3 * colour_ratio(dark.clamp(min=0)) + squeeze_times(self.colour(first), 1, inverse=True)
        return Features(feats, prior_mean=squeeze_times(colour, self.levels))


class PriorMean(Offset):
    """z -> z - mu(y), logdet 0: the last layer, so that N(0, I) after it is N(mu, I) before it
    (`Offset` reading ``prior_mean`` of `Features`)."""

    field = "prior_mean"


@dataclass(frozen=True)
class LLFlowConfig(ImageFlowConfig):
    """The architecture of an `LLFlow` (checked when made): L = `levels`, T = `transitions` and K =
    `flow_steps` per level, conditioner width `hidden`, encoder `nf`, `blocks` and growth `gc`, `cond_channels`
    per level, the `coupling` bijection's name, `quant` levels, LU-parametrised 1x1 convs. Same
    size in and out, RGB."""

    factor: ClassVar[int] = 1
    channels: ClassVar[int] = 3
    levels: int = 3
    flow_steps: int = 1
    transitions: int = 1
    hidden: int = 32
    nf: int = 32
    blocks: int = 2
    gc: int = 16
    cond_channels: int = 32
    coupling: Spec = "affine"
    quant: int = 32
    lu: bool = True

    def __post_init__(self) -> None:
        # fail early on a bad name; a registered factory is recorded by its name
        object.__setattr__(self, "coupling", spec_name(self.coupling))
        make_bijection(self.coupling)


class LLFlow(ImageFlow):
    """LLFlow-like conditional flow on normal-light images given the dark ones (see the module docstring)."""

    cond_name = "the dark image"

    def __init__(self, config: LLFlowConfig | None = None, **fields):
        cfg = replace(config or LLFlowConfig(), **fields)
        layers, c = [], 3
        for _ in range(cfg.levels):
            c *= 4
            layers += flow_level(
                c, cfg.transitions, cfg.flow_steps, cfg.cond_channels, cfg.hidden, cfg.coupling, cfg.lu
            )
        encoder = LowLightEncoder(cfg.levels, cfg.nf, cfg.blocks, cfg.gc, cfg.cond_channels)
        super().__init__([*layers, PriorMean()], encoder=encoder)
        self.settings = cfg
        self.config = asdict(cfg)

    def latent_shape(self, feats: Cond, num_samples: int) -> tuple[int, ...]:
        return (num_samples, *feats.prior_mean.shape[1:])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """normal x, dark cond -> (z - mu, logdet): the standardised top latent."""
        if cond is None or x.dim() != 4 or x.shape != cond.shape or x.shape[1] != 3:
            raise ValueError(
                f"need normal and dark images of one shape (B, 3, H, W), got {tuple(x.shape)} "
                f"and {None if cond is None else tuple(cond.shape)}"
            )
        return super().forward(x, cond)

    def colour_map(self, dark: Tensor) -> Tensor:
        """The predicted colour map (B, 3, H, W) whose squeeze is the prior mean."""
        return squeeze_times(self.condition(dark).prior_mean, self.levels, inverse=True)


def build_llflow(**config) -> LLFlow:
    """The checkpoint builder "llflow": `LLFlow(**config)` (config as stored in a checkpoint manifest)."""
    return LLFlow(**config)


def enhance(
    model: LLFlow,
    dark: Tensor,
    temperature: float = 0.0,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    chunk: int = 8,
) -> Tensor:
    """Enhanced images for dark images of any size, *unclamped*; T = 0 (LLFlow's choice) gives z = mu.

    (3, H, W) -> (num_samples, 3, H, W); (B, 3, H, W) -> (B, num_samples, 3, H, W). Sizes that are
    not multiples of 2^levels are edge-padded and cropped back (`ImageFlow.sample_images`).
    """
    return model.sample_images(dark, temperature, num_samples, generator, chunk)


if (
    __name__ == "__main__"
):  # the old form `python -m minflow.lowlight train ...`: `python -m minflow train-lowlight ...`
    import sys

    from .cli import main

    main(["train-lowlight", *sys.argv[2:]] if sys.argv[1:2] == ["train"] else sys.argv[1:])
