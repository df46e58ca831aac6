"""Low-light enhancement, the paper's second task: synthetic dark pairs, the LOL loader, a small LLFlow.

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
"""

from __future__ import annotations

import argparse
import math
import sys
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import register_builder
from .data import (OTHER_IMAGES, TEST_PHOTOS, TRAIN_PHOTOS, VAL_PHOTOS, _check, _require, center_crop, fit_square, load_photo,
                   load_photos, mod_crop, random_crops, synthetic_patterns, to_tensor)  # fmt: skip
from .flow import ConditionalFlow
from .metrics import psnr, ssim
from .bijections import Spec, make_bijection, spec_name
from .sr import Encoder, SRFlow, flow_level, super_resolve
from .transforms import Cond, Features, Generator, Squeeze, Transform, zero_layer

# ----------------------------------------------------------------------------- synthetic low light

DARKEN_RANGES = {  # each drawn per image, uniformly (log-uniformly for exposure and photon)
    "gamma": (1.5, 3.0),  # tone curve x -> x ** gamma: shadows sink faster than highlights
    "exposure": (0.1, 0.5),  # less light: multiply by e (log-uniform)
    "cast": (0.0, 0.2),  # colour of the light: per-channel gains exp(c v), max |c v| = c, sum v = 0
    "photon": (5e-4, 5e-3),  # shot noise a Poisson(x / a): 1 / a photons fill [0, 1] (log-uniform)
    "read": (1e-3, 1e-2),  # read noise: Gaussian std b
}
_LOG_UNIFORM = ("exposure", "photon")


def darken_ranges(**ranges: float | tuple[float, float]) -> dict[str, tuple[float, float]]:
    """`DARKEN_RANGES` with the given overrides (a number fixes a parameter), checked."""
    unknown = set(ranges) - set(DARKEN_RANGES)
    if unknown:
        raise ValueError(f"unknown darkening parameter(s) {sorted(unknown)}; choose from {sorted(DARKEN_RANGES)}")
    out = {}
    for name, default in DARKEN_RANGES.items():
        value = ranges.get(name, default)
        lo, hi = (value, value) if isinstance(value, (int, float)) else value
        if not 0 <= lo <= hi or (name in _LOG_UNIFORM and lo <= 0):
            raise ValueError(f"{name} range must satisfy 0 <= lo <= hi (lo > 0 for {name} if log-uniform), got {(lo, hi)}")
        out[name] = (float(lo), float(hi))
    return out


def darken(img: Tensor, generator: torch.Generator | None = None, quantize: bool = True,
           **ranges: float | tuple[float, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """A synthetic low-light capture of `img` (CHW or NCHW in [0, 1]) and the parameters used.

    Per image, with parameters drawn from `DARKEN_RANGES` (override any as ``name=(lo, hi)``, or a
    number to fix it, e.g. ``exposure=0.02`` for a much darker OOD input):

        y = x ** gamma * exposure * gains             (tone curve, less light, coloured light)
        y = a Poisson(clip(y) / a) + b N(0, 1)        (Poisson-Gaussian sensor noise)
        y = round(255 clip(y)) / 255                  (8-bit capture, if `quantize`)

    Returns (dark, params): params maps each name to a float64 tensor of shape (N,) ((), for CHW
    input) and "gains" to (N, 3) ((3,)). All randomness comes from `generator`: same seed, same
    output. With the defaults, 64 x 64 crops of the training photos (mean 0.39) come out at mean
    0.05, and about 16 % of the values clip at 0 (black level), as in a real dark capture.
    """
    _check(img)
    bounds = darken_ranges(**ranges)
    x = (img[None] if img.dim() == 3 else img).detach().cpu().double()
    n, p = x.shape[0], {}
    for name, (lo, hi) in bounds.items():
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        p[name] = (math.log(lo) + u * math.log(hi / lo)).exp() if name in _LOG_UNIFORM else lo + u * (hi - lo)
    v = torch.rand(n, 3, generator=generator, dtype=torch.float64) * 2 - 1
    v = v - v.mean(1, keepdim=True)
    v = v / v.abs().amax(1, keepdim=True).clamp(min=1e-12)
    p["gains"] = torch.exp(p["cast"][:, None] * v)
    col = lambda t: t.view(n, 1, 1, 1)
    y = x.clamp(0, 1) ** col(p["gamma"]) * col(p["exposure"]) * p["gains"].view(n, 3, 1, 1)
    a = col(p["photon"])
    y = a * torch.poisson(y.clamp(0, 1) / a, generator=generator)
    y = y + col(p["read"]) * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    y = y.clamp(0, 1)
    if quantize:
        y = torch.round(y * 255) / 255
    y = y.to(img)
    return (y[0], {k: t[0] for k, t in p.items()}) if img.dim() == 3 else (y, p)


def paired_crops(normal: Sequence[Tensor], dark: Sequence[Tensor], size: int, n: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`n` random `size` x `size` crops at the same place in each (normal, dark) pair, with random flips."""
    if len(normal) != len(dark) or any(a.shape != b.shape for a, b in zip(normal, dark)):
        raise ValueError("normal and dark must be lists of equally shaped images")
    both = [torch.cat([a, b], 0) for a, b in zip(normal, dark)]  # (6, H, W): one crop for both
    which = torch.randint(len(both), (n,), generator=generator)
    crops = []
    for k in which.tolist():
        img = both[k]
        if min(img.shape[1:]) < size:
            raise ValueError(f"pair {k} is {tuple(img.shape[1:])}, smaller than the crop size {size}")
        top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=generator))
        crop = img[:, top:top + size, left:left + size]
        flip_x, flip_y = (torch.rand(2, generator=generator) < 0.5).tolist()
        crop = crop.flip(-1) if flip_x else crop
        crops.append(crop.flip(-2) if flip_y else crop)
    out = torch.stack(crops)
    return out[:, :3], out[:, 3:]


class LowLightPairs:
    """An endless, seeded stream of `(normal, dark)` batches; iterating again restarts it.

    Synthetic (default): random crops of `images`, darkened by `darken` with `ranges`. Real pairs:
    pass `dark` (e.g. from `load_lol`), matched to `images`, and both are cropped at one place.
    """

    def __init__(self, images: Sequence[Tensor], size: int, batch_size: int, seed: int = 0,
                 dark: Sequence[Tensor] | None = None, **ranges) -> None:
        self.images, self.dark, self.size, self.batch_size, self.seed = list(images), dark, size, batch_size, seed
        self.ranges = ranges
        darken_ranges(**ranges)  # fail early on bad ranges

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            if self.dark is not None:
                yield paired_crops(self.images, self.dark, self.size, self.batch_size, generator)
            else:
                normal = random_crops(self.images, self.size, self.batch_size, generator)
                yield normal, darken(normal, generator, **self.ranges)[0]


# ----------------------------------------------------------------------------- test inputs


@dataclass(frozen=True)
class LowLightInput:
    """One test input: the dark condition, its normal-light truth, and why it is here."""

    dark: Tensor  # (3, size, size) in [0, 1]
    normal: Tensor  # (3, size, size) in [0, 1]
    why: str


LL_GROUPS = ("reference", "darker", "brighter", "noise", "cast", "content")
OOD_DARKEN = {  # `darken` overrides per out-of-distribution group (training ranges: DARKEN_RANGES)
    "darker": ({"exposure": 0.02}, "exposure 0.02: 5-25x less light than in training"),
    "brighter": ({"exposure": 1.0, "gamma": 1.0}, "exposure 1, no tone curve: a normally lit photo"),
    "noise": ({"photon": 5e-2, "read": 0.05}, "photon 5e-2, read 0.05: 10x the strongest training noise"),
    "cast": ({"cast": 0.8}, "colour cast 0.8: gains up to e^0.8, 4x the training cast"),
}


def ood_sets(size: int = 128) -> dict[str, dict[str, LowLightInput]]:
    """Named (dark, normal) test pairs in the groups `LL_GROUPS`, each (3, size, size) in [0, 1].

    - "reference": the validation photos and the unseen test photo, darkened with the training
      ranges (in distribution).
    - "darker", "brighter", "noise", "cast": the validation photos darkened with one parameter
      far outside its training range (`OOD_DARKEN`), the others drawn from the training ranges.
    - "content": the non-photographic images (`data.OTHER_IMAGES`) and `data.synthetic_patterns`,
      darkened with the training ranges.
    Photos are centre crops at native scale (`data.fit_square`; retina and cell whole). Deterministic:
    every input has its own fixed seed.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"need an int size >= 8, got {size!r}")
    seeds = iter(range(1000))

    def make(name: str, why: str, **ranges) -> LowLightInput:
        normal = fit_square(load_photo(name), size, whole=name in ("retina", "cell"))
        return LowLightInput(darken(normal, torch.Generator().manual_seed(next(seeds)), **ranges)[0], normal, why)

    photos = (*VAL_PHOTOS, *TEST_PHOTOS)
    out = {"reference": {n: make(n, "in distribution: training darkening of a photo not trained on") for n in photos}}
    for group, (ranges, why) in OOD_DARKEN.items():
        out[group] = {n: make(n, why, **ranges) for n in VAL_PHOTOS}
    out["content"] = {n: make(n, "not a photo of a scene, training darkening") for n in OTHER_IMAGES}
    for name, normal in synthetic_patterns(size).items():
        dark = darken(normal, torch.Generator().manual_seed(next(seeds)))[0]
        out["content"][name] = LowLightInput(dark, normal, "synthetic pattern (data.synthetic_patterns), training darkening")
    return out


# ----------------------------------------------------------------------------- LOL

LOL_PAGE = "https://daooshee.github.io/BMVC2018website/"  # LOL (Wei et al., BMVC 2018), research use
LOL_URL = "https://drive.usercontent.google.com/download?id=157bjO1_cFuSd0HWDUuAmcHRJDVyWpOxB&export=download&confirm=t"


def load_lol(root: str | Path, split: str = "our485", download: bool = False,
             limit: int | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """The LOL pairs of `split` ("our485": 485 training pairs, "eval15": 15 test pairs) as two lists
    (normal, dark) of (3, 400, 600) tensors, matched by file name, in sorted order.

    Reads root/{split}/high/*.png and root/{split}/low/*.png (or the same under root/LOLdataset,
    as the archive unpacks). With download=True a missing folder is fetched (the ~330 MB
    LOLdataset.zip from the authors' Google Drive, linked from LOL_PAGE) and unpacked into root.
    """
    if split not in ("our485", "eval15"):
        raise ValueError(f"split must be 'our485' or 'eval15', got {split!r}")
    root = Path(root)
    find = lambda: next((r / split for r in (root, root / "LOLdataset") if (r / split / "low").is_dir()), None)
    folder = find()
    if folder is None and download:
        root.mkdir(parents=True, exist_ok=True)
        archive = root / "LOLdataset.zip"
        urllib.request.urlretrieve(LOL_URL, archive)
        if not zipfile.is_zipfile(archive):
            raise RuntimeError(f"the download at {archive} is not a zip (Google Drive may have changed); "
                               f"download LOLdataset.zip by hand from {LOL_PAGE} and unzip it into {root}")
        with zipfile.ZipFile(archive) as z:
            z.extractall(root)
        folder = find()
    if folder is None:
        raise FileNotFoundError(
            f"LOL folder {root / split}/low not found. Call load_lol({str(root)!r}, {split!r}, download=True), "
            f"or download LOLdataset.zip from {LOL_PAGE} yourself and unzip it into {root}.")
    low, high = (sorted((folder / k).glob("*.png")) for k in ("low", "high"))
    if not low or [f.name for f in low] != [f.name for f in high]:
        raise FileNotFoundError(f"{folder}/low and {folder}/high must hold the same, non-empty set of .png files")
    image = _require("PIL.Image")
    read = lambda files: [to_tensor(np.asarray(image.open(f).convert("RGB"))) for f in files[:limit]]
    return read(high), read(low)


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
            raise ValueError(f"image size {tuple(dark.shape[2:])} must be divisible by {m} for this flow; enhance() pads for you")
        feats = self.body(squeeze_times(encoder_inputs(dark), 1))
        first = feats[(dark.shape[2] // 2, dark.shape[3] // 2)]
        colour = 3 * colour_ratio(dark.clamp(min=0)) + squeeze_times(self.colour(first), 1, inverse=True)
        return Features(feats, prior_mean=squeeze_times(colour, self.levels))


class PriorMean(Transform):
    """z -> z - mu(y), logdet 0: the last layer, so that N(0, I) after it is N(mu, I) before it."""

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        return x - self._mean(x, cond), x.new_zeros(x.shape[0])

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        return z + self._mean(z, cond), z.new_zeros(z.shape[0])

    @staticmethod
    def _mean(x: Tensor, cond: Cond) -> Tensor:
        mean = cond.prior_mean if isinstance(cond, Features) else None
        if mean is None or mean.shape[1:] != x.shape[1:]:
            raise ValueError(f"PriorMean needs Features whose prior_mean is shaped like {tuple(x.shape[1:])} per sample")
        return mean


class LLFlow(ConditionalFlow):
    """LLFlow-like conditional flow on normal-light images given the dark ones (see the module docstring)."""

    factor, channels = 1, 3  # same size in and out, RGB (what `enhance` / `super_resolve` read)

    def __init__(self, levels: int = 3, steps: int = 1, transitions: int = 1, width: int = 32, nf: int = 32,
                 blocks: int = 2, gc: int = 16, cond_channels: int = 32, coupling: Spec = "affine",
                 quant: int = 32, lu: bool = True):
        coupling = spec_name(coupling)  # fail early on a bad name; a registered factory is recorded by name
        make_bijection(coupling)
        layers, c = [], 3
        for _ in range(levels):
            c *= 4
            layers += flow_level(c, transitions, steps, cond_channels, width, coupling, lu)
        super().__init__([*layers, PriorMean()], encoder=LowLightEncoder(levels, nf, blocks, gc, cond_channels))
        self.levels, self.quant = levels, quant
        self.config = dict(levels=levels, steps=steps, transitions=transitions, width=width, nf=nf, blocks=blocks,
                           gc=gc, cond_channels=cond_channels, coupling=coupling, quant=quant, lu=lu)  # fmt: skip

    @property
    def lr_multiple(self) -> int:
        """Image height and width must be multiples of this (2^levels)."""
        return 2**self.levels

    def latent_shape(self, feats: Cond, num_samples: int) -> tuple[int, ...]:
        return (num_samples, *feats.prior_mean.shape[1:])

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """normal x, dark cond -> (z - mu, logdet): the standardised top latent."""
        if cond is None or x.dim() != 4 or x.shape != cond.shape or x.shape[1] != 3:
            raise ValueError(f"need normal and dark images of one shape (B, 3, H, W), got {tuple(x.shape)} "
                             f"and {None if cond is None else tuple(cond.shape)}")  # fmt: skip
        return super().forward(x, cond)

    def colour_map(self, dark: Tensor) -> Tensor:
        """The predicted colour map (B, 3, H, W) whose squeeze is the prior mean."""
        return squeeze_times(self.condition(dark).prior_mean, self.levels, inverse=True)

    # Same dequantisation and bits per dim as SRFlow: x + U(-1/2q, 1/2q); -log2 p / D + log2 q.
    dequantize = SRFlow.dequantize
    nll_bpd = SRFlow.nll_bpd


@register_builder("llflow")
def build_llflow(**config) -> LLFlow:
    """The registered builder: `LLFlow(**config)` (config as stored in a checkpoint manifest)."""
    return LLFlow(**config)


def enhance(model: LLFlow, dark: Tensor, temperature: float = 0.0, num_samples: int = 1,
            generator: torch.Generator | None = None, chunk: int = 8) -> Tensor:
    """Enhanced images for dark images of any size, *unclamped*; T = 0 (LLFlow's choice) gives z = mu.

    (3, H, W) -> (num_samples, 3, H, W); (B, 3, H, W) -> (B, num_samples, 3, H, W). Sizes that are
    not multiples of 2^levels are edge-padded and cropped back (`sr.super_resolve` with factor 1).
    """
    from .utils import check_image

    check_image(dark, "the dark image", 3)  # a float image in [0, 1]: no 0..255 images, no inf/NaN
    return super_resolve(model, dark, temperature, num_samples, generator, chunk)


# ----------------------------------------------------------------------------- evaluation and training


def validation_pairs(model: LLFlow, size: int = 0, seed: int = 0) -> list[tuple[str, Tensor, Tensor]]:
    """(name, normal, dark) per validation photo (whole, or its centre `size` crop), darkened with seed + i."""
    out = []
    for i, (name, x) in enumerate(zip(VAL_PHOTOS, load_photos(VAL_PHOTOS))):
        x = mod_crop(center_crop(x, size) if size else x, model.lr_multiple)
        out.append((name, x, darken(x, torch.Generator().manual_seed(seed + i))[0]))
    return out


@torch.no_grad()
def evaluate(model: LLFlow, size: int = 0, seed: int = 0) -> dict:
    """Validation metrics: bpd (fixed dequantisation noise), PSNR / SSIM of the T = 0 output
    (clamped for the metric only) and of histogram equalisation, and max |x| / non-finite count
    of the raw output."""
    was_training, rows = model.training, {}
    model.eval()
    for name, x, y in validation_pairs(model, size, seed):
        bpd = model.nll_bpd(x[None], y[None], torch.Generator().manual_seed(seed)).item()
        out = enhance(model, y)[0]
        finite, eq = torch.isfinite(out), equalize(y[None])[0]
        rows[name] = {"bpd": bpd, "psnr": psnr(out.clamp(0, 1), x), "ssim": ssim(out.clamp(0, 1), x),
                      "histeq_psnr": psnr(eq, x), "histeq_ssim": ssim(eq, x),
                      "max_abs": out[finite].abs().max().item() if finite.any() else math.nan,
                      "nonfinite": int((~finite).sum())}  # fmt: skip
    model.train(was_training)
    avg = {k: sum(r[k] for r in rows.values()) / len(rows) for k in ("bpd", "psnr", "ssim", "histeq_psnr", "histeq_ssim")}
    return {"val_bpd": avg.pop("bpd"), **avg, "temperature": 0.0, "eval_seed": seed, "val_size": size, "per_image": rows}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of ``python -m minflow.lowlight train ...`` (argv starts with ``train``); ``args.config``
    is the LLFlow config they describe."""
    # imported here: `python -m minflow.train` must not find minflow.train imported already
    from .train import add_training_args, check_model, checkpoint_name, nonnegative_int, positive_int

    top = argparse.ArgumentParser(prog="python -m minflow.lowlight", description="Low-light enhancement with the small LLFlow.")
    commands = top.add_subparsers(dest="task", required=True, metavar="COMMAND")
    p = commands.add_parser("train", help="train the small LLFlow on synthetic low-light pairs",
                            description="Train the small LLFlow on synthetic low-light pairs (see minflow.train for "
                                        "where checkpoints go and how a run resumes).")  # fmt: skip
    p.add_argument("--name", type=checkpoint_name, required=True, help="run name: run folder RUNS/NAME, checkpoint NAME")
    p.add_argument("--coupling", default="affine", help="'affine', an Affine scale name, or a spline")
    add_training_args(p, steps=2000, batch=8, lr=5e-4, threads=0)
    p.add_argument("--crop", type=positive_int, default=64, help="training crop size")
    p.add_argument("--levels", type=positive_int, default=3)
    p.add_argument("--flow-steps", type=positive_int, default=1, help="conditional steps K per level")
    p.add_argument("--width", type=positive_int, default=32, help="conditioner width")
    p.add_argument("--nf", type=positive_int, default=32, help="encoder width")
    p.add_argument("--blocks", type=positive_int, default=2, help="encoder residual dense blocks")
    p.add_argument("--save-every", type=positive_int, default=100)
    p.add_argument("--val-size", type=nonnegative_int, default=0, help="validate on centre crops of this size (0: whole photos)")
    args = top.parse_args(argv)
    args.config = check_model(p, args, lambda: LLFlow(levels=args.levels, steps=args.flow_steps, width=args.width, nf=args.nf,
                                                      blocks=args.blocks, coupling=args.coupling))  # fmt: skip
    return args


def train(args: argparse.Namespace, command: str) -> dict:
    """Run or resume training (`minflow.train.fit`: state in runs/NAME/state.pt); save NAME at the end
    (into runs/NAME/checkpoints, or with --ship the shipped folder: `minflow.train.checkpoint_root`)."""
    from .train import checkpoint_root, fit, ship

    root = checkpoint_root(args, [args.name])
    torch.manual_seed(args.seed)
    model = LLFlow(**args.config)
    images = load_photos(TRAIN_PHOTOS)

    def batches(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = random_crops(images, args.crop, args.batch, gen)
        return x, darken(x, gen)[0]

    progress = fit(model, batches, args, model.config, command=command)
    metrics = ship(model, args.name, "llflow", model.config, args, command, progress,
                   lambda: evaluate(model, args.val_size), root, data="darken(TRAIN_PHOTOS crops)")  # fmt: skip
    print(f"saved {args.name} in {root / 'checkpoints'}: val bpd {metrics['val_bpd']:.3f}, PSNR {metrics['psnr']:.2f} dB "
          f"(histeq {metrics['histeq_psnr']:.2f})", flush=True)  # fmt: skip
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """``python -m minflow.lowlight train ...``: train (or resume) and save a checkpoint; ``--help`` for the options."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from .train import TrainError, command_line

    try:
        return train(args, command_line("minflow.lowlight", argv))
    except TrainError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
