"""Low-light data: synthetic dark captures (`darken`), paired crops, the LOL loader, OOD test pairs.

Every image is a float tensor in [0, 1], (3, H, W) or (N, 3, H, W), as in `minflow.data`, whose
names this module's are exported with (``data.darken``, ``data.lowlight_ood_sets``, ...).
"""

from __future__ import annotations

import math
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..utils import check_image
from .images import (
    OTHER_IMAGES,
    TEST_PHOTOS,
    VAL_PHOTOS,
    _distinct_photos,
    _require,
    check_size,
    fit_square,
    load_photo,
    random_crops,
    synthetic_patterns,
    to_tensor,
)

__all__ = [
    "DARKEN_RANGES",
    "LL_GROUPS",
    "LOL_PAGE",
    "LOL_URL",
    "OOD_DARKEN",
    "LowLightInput",
    "LowLightPairs",
    "darken",
    "darken_ranges",
    "load_lol",
    "lowlight_ood_sets",
    "paired_crops",
]

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
            raise ValueError(
                f"{name} range must satisfy 0 <= lo <= hi (lo > 0 for {name} if log-uniform), got {(lo, hi)}"
            )
        out[name] = (float(lo), float(hi))
    return out


def darken(
    img: Tensor, generator: torch.Generator | None = None, quantize: bool = True, **ranges: float | tuple[float, float]
) -> tuple[Tensor, dict[str, Tensor]]:
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
    check_image(img, "img", values=False)
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


def paired_crops(
    normal: Sequence[Tensor], dark: Sequence[Tensor], size: int, n: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """`n` random `size` x `size` crops at the same place in each (normal, dark) pair, with random
    flips: `random_crops` of the pairs stacked into 6 channels, split again."""
    if len(normal) != len(dark) or any(a.shape != b.shape for a, b in zip(normal, dark)):
        raise ValueError("normal and dark must be lists of equally shaped images")
    both = [torch.cat([a, b], 0) for a, b in zip(normal, dark)]  # (6, H, W): one crop for both
    out = random_crops(both, size, n, generator, channels=6)
    return out[:, :3], out[:, 3:]


class LowLightPairs:
    """An endless, seeded stream of `(normal, dark)` batches; iterating again restarts it.

    Synthetic (default): random crops of `images`, darkened by `darken` with `ranges`. Real pairs:
    pass `dark` (e.g. from `load_lol`), matched to `images`, and both are cropped at one place.
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        size: int,
        batch_size: int,
        seed: int = 0,
        dark: Sequence[Tensor] | None = None,
        **ranges,
    ) -> None:
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


def lowlight_ood_sets(size: int = 128, photos: Sequence[str] | None = None) -> dict[str, dict[str, LowLightInput]]:
    """Named (dark, normal) test pairs in the groups `LL_GROUPS`, each (3, size, size) in [0, 1].

    `photos` are the photos of the reference and out-of-distribution groups (default: the course's
    validation photos, and its test photo in "reference"; ``PHOTO_SPLITS["wide"].val`` for a wider
    measurement).

    - "reference": the photos darkened with the training ranges (in distribution).
    - "darker", "brighter", "noise", "cast": the photos darkened with one parameter far outside
      its training range (`OOD_DARKEN`), the others drawn from the training ranges.
    - "content": the non-photographic images (`OTHER_IMAGES`) and `synthetic_patterns`,
      darkened with the training ranges.
    Photos are centre crops at native scale (`fit_square`; retina and cell whole). Deterministic:
    every input has its own fixed seed.
    """
    check_size(size, 8)
    seeds = iter(range(1000))

    def make(name: str, why: str, **ranges) -> LowLightInput:
        normal = fit_square(load_photo(name), size, whole=name in ("retina", "cell"))
        return LowLightInput(darken(normal, torch.Generator().manual_seed(next(seeds)), **ranges)[0], normal, why)

    if photos is None:
        reference, others = (*VAL_PHOTOS, *TEST_PHOTOS), VAL_PHOTOS
    else:
        reference = others = _distinct_photos(photos, exclude=OTHER_IMAGES)
    in_distribution = "in distribution: training darkening of a photo not trained on"
    out = {"reference": {n: make(n, in_distribution) for n in reference}}
    for group, (ranges, why) in OOD_DARKEN.items():
        out[group] = {n: make(n, why, **ranges) for n in others}
    out["content"] = {n: make(n, "not a photo of a scene, training darkening") for n in OTHER_IMAGES}
    for name, normal in synthetic_patterns(size).items():
        dark = darken(normal, torch.Generator().manual_seed(next(seeds)))[0]
        out["content"][name] = LowLightInput(
            dark, normal, "synthetic pattern (data.synthetic_patterns), training darkening"
        )
    return out


# ----------------------------------------------------------------------------- LOL

LOL_PAGE = "https://daooshee.github.io/BMVC2018website/"  # LOL (Wei et al., BMVC 2018), research use
LOL_URL = "https://drive.usercontent.google.com/download?id=157bjO1_cFuSd0HWDUuAmcHRJDVyWpOxB&export=download&confirm=t"


def load_lol(
    root: str | Path, split: str = "our485", download: bool = False, limit: int | None = None
) -> tuple[list[Tensor], list[Tensor]]:
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
            raise RuntimeError(
                f"the download at {archive} is not a zip (Google Drive may have changed); "
                f"download LOLdataset.zip by hand from {LOL_PAGE} and unzip it into {root}"
            )
        with zipfile.ZipFile(archive) as z:
            z.extractall(root)
        folder = find()
    if folder is None:
        raise FileNotFoundError(
            f"LOL folder {root / split}/low not found. Call load_lol({str(root)!r}, {split!r}, download=True), "
            f"or download LOLdataset.zip from {LOL_PAGE} yourself and unzip it into {root}."
        )
    low, high = (sorted((folder / k).glob("*.png")) for k in ("low", "high"))
    if not low or [f.name for f in low] != [f.name for f in high]:
        raise FileNotFoundError(f"{folder}/low and {folder}/high must hold the same, non-empty set of .png files")
    image = _require("PIL.Image")
    read = lambda files: [to_tensor(np.asarray(image.open(f).convert("RGB"))) for f in files[:limit]]
    return read(high), read(low)
