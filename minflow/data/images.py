"""SR data: bundled photos, training crops, degradations, the SR OOD inputs, DIV2K.

Every image is a float tensor in [0, 1], RGB (grey images replicated to 3 channels), shape
(3, H, W) for one image and (N, 3, H, W) for a batch. Nothing downloads unless you ask
(`load_div2k(download=True)`): the course's photos ship inside scikit-image, scikit-learn and
matplotlib, and the wider collection (`SHIPPED_PHOTOS`) as JPEGs in the repository's
data/photos; data/IMAGES.md lists them all with their licences. The core of minflow needs only torch and
numpy, so those packages (and Pillow, for JPEG and text) are imported inside the functions that
use them.
"""

from __future__ import annotations

import functools
import importlib
import io
import math
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import data_dir
from ..utils import check_image
from .photo_sources import PHOTO_SOURCES

__all__ = [
    "TRAIN_PHOTOS",
    "VAL_PHOTOS",
    "TEST_PHOTOS",
    "OTHER_IMAGES",
    "SHIPPED_PHOTOS",
    "PHOTO_SPLITS",
    "PhotoSplit",
    "OOD_GROUPS",
    "DIV2K_URLS",
    "CropDataset",
    "OODInput",
    "add_noise",
    "bicubic_down",
    "bicubic_up",
    "blur_down",
    "box_kernel",
    "center_crop",
    "check_size",
    "contrast",
    "fit_square",
    "gamma",
    "gaussian_kernel",
    "invert",
    "jpeg",
    "load_div2k",
    "load_photo",
    "load_photos",
    "mod_crop",
    "motion_kernel",
    "nearest_down",
    "ood_sets",
    "photo_names",
    "random_crops",
    "synthetic_patterns",
    "to_tensor",
]

Tensor = torch.Tensor

TRAIN_PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "rocket",
    "coins",
    "hubble_deep_field",
    "clock",
    "brick",
    "grass",
    "gravel",
    "flower",
)
VAL_PHOTOS = ("coffee", "china")
TEST_PHOTOS = ("grace_hopper",)  # a natural photo in neither split, for an unseen in-distribution check
OTHER_IMAGES = ("checkerboard", "page", "text", "cell", "retina")  # not photos of scenes: OOD inputs only
_PACKAGE = {"flower": "sklearn", "china": "sklearn", "grace_hopper": "matplotlib"}  # default: skimage
SHIPPED_PHOTOS = tuple(s.name for s in PHOTO_SOURCES)  # data/photos/NAME.jpg (see photo_sources.py)


@dataclass(frozen=True)
class PhotoSplit:
    """Photo names for training, validation (model choice) and a final test; pairwise disjoint."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = {"train": set(self.train), "val": set(self.val), "test": set(self.test)}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if parts[a] & parts[b]:
                raise ValueError(f"{a} and {b} share photos: {sorted(parts[a] & parts[b])}")


# The wide split holds out photos of every kind: defocused backgrounds (kingfisher, bee),
# saturated foliage (gibbon), dark scenes (swans, sydney_opera_night), fine texture (crab,
# hedgehog, hawa_mahal), a landscape, people, an underwater scene, plus coffee and china.
_WIDE_VAL = (
    *VAL_PHOTOS,
    "kingfisher",
    "bee",
    "gibbon",
    "swans",
    "sydney_opera_night",
    "crab",
    "hedgehog",
    "hawa_mahal",
    "machu_picchu",
    "mariachi",
    "porthole_reef",
)
_WIDE_TEST = (*TEST_PHOTOS, "jaguars", "tower_bridge_night", "orchestra")
PHOTO_SPLITS = {
    "course": PhotoSplit(TRAIN_PHOTOS, VAL_PHOTOS, TEST_PHOTOS),  # what the chapters train and validate on
    "wide": PhotoSplit(  # the course's training photos and every shipped photo not held out
        (*TRAIN_PHOTOS, *(n for n in SHIPPED_PHOTOS if n not in _WIDE_VAL + _WIDE_TEST)), _WIDE_VAL, _WIDE_TEST
    ),
}


def _require(module: str):
    """Import an optional dependency, or fail saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module} is needed for this function; install it with: pip install minflow[course]"
        ) from err


def photo_names() -> list[str]:
    """Every image name `load_photo` accepts: the course's train, val and test photos, the other
    images, then the photos shipped in data/photos."""
    return [*TRAIN_PHOTOS, *VAL_PHOTOS, *TEST_PHOTOS, *OTHER_IMAGES, *SHIPPED_PHOTOS]


@functools.cache
def _read_jpeg(path: Path) -> np.ndarray:
    """A photo file as an (H, W, 3) uint8 array (cached by path, so $MINFLOW_DATA may change)."""
    with _require("PIL.Image").open(path) as image:
        return np.asarray(image.convert("RGB"))


def _shipped_photo(name: str) -> np.ndarray:
    """A photo of data/photos, read from $MINFLOW_DATA/photos when that is set; a clear error if absent."""
    path = data_dir() / "photos" / f"{name}.jpg"
    if not path.is_file():
        raise FileNotFoundError(
            f"photo file {path} not found: the photos ship in the repository's data/photos folder "
            "(rebuild it with tools/collect_photos.py); if you set MINFLOW_DATA, copy data/photos there"
        )
    return _read_jpeg(path)


@functools.cache
def _load_array(name: str) -> np.ndarray:
    """A course image from the package that ships it, as a uint8 array (cached)."""
    package = _PACKAGE.get(name, "skimage")
    if package == "skimage":
        return getattr(_require("skimage.data"), name)()
    if package == "sklearn":
        return _require("sklearn.datasets").load_sample_image(name + ".jpg")
    image = _require("PIL.Image")
    with _require("matplotlib.cbook").get_sample_data(name + ".jpg") as fh:
        return np.asarray(image.open(fh).convert("RGB"))


def to_tensor(image: np.ndarray) -> Tensor:
    """An (H, W) or (H, W, C) uint8 / bool / float array as a (3, H, W) float32 tensor in [0, 1].

    Grey images are replicated to three channels and an alpha channel is dropped.
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255
    elif a.dtype == bool or np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    else:
        raise TypeError(f"expected a uint8, bool or float image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array, got shape {a.shape}")
    a = np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).clamp_(0, 1)


def load_photo(name: str) -> Tensor:
    """The bundled image `name` (see `photo_names()`) as a (3, H, W) tensor in [0, 1]; works offline.

    Course images come from the package that ships them, `SHIPPED_PHOTOS` from data/photos.
    """
    if name not in photo_names():
        raise ValueError(f"unknown image {name!r}; choose one of: {', '.join(photo_names())}")
    return to_tensor(_shipped_photo(name) if name in SHIPPED_PHOTOS else _load_array(name))


def load_photos(names: Sequence[str]) -> list[Tensor]:
    """`load_photo` for each name, e.g. `load_photos(TRAIN_PHOTOS)` or `load_photos(PHOTO_SPLITS["wide"].val)`."""
    return [load_photo(n) for n in names]


def _check_factor(x: Tensor, factor: int, name: str = "hr", divisible: bool = True) -> None:
    check_image(x, name, values=False)
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    h, w = x.shape[-2:]
    if divisible and (h % factor or w % factor):
        raise ValueError(
            f"{name} size {h}x{w} is not divisible by the factor {factor}; crop it first with mod_crop(x, {factor})"
        )


def _batched(x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a function written for NCHW to a CHW or NCHW tensor."""
    return fn(x[None])[0] if x.dim() == 3 else fn(x)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic resize with Matlab's kernel (see `bicubic_down`), unclamped."""
    return _batched(x, lambda b: F.interpolate(b, size=size, mode="bicubic", antialias=True, align_corners=False))


def random_crops(
    images: Sequence[Tensor],
    size: int,
    n: int,
    generator: torch.Generator | None = None,
    flips: bool = True,
    channels: int = 3,
) -> Tensor:
    """`n` random `size` x `size` crops, shape (n, channels, size, size).

    Each crop comes from a uniformly chosen image at a uniform position and, with `flips`, is
    flipped left-right and up-down with probability 1/2 each. The same generator seed gives the
    same crops. (`paired_crops` crops image pairs stacked into `channels` = 6.)
    """
    if len(images) == 0:
        raise ValueError("images is empty")
    for i, img in enumerate(images):
        check_image(img, f"images[{i}]", channels, values=False)
        if img.dim() != 3 or min(img.shape[-2:]) < size:
            raise ValueError(f"images[{i}] must be ({channels}, H, W) with H, W >= size={size}, got {tuple(img.shape)}")
    which = torch.randint(len(images), (n,), generator=generator)
    crops = []
    for k in which.tolist():
        img = images[k]
        top = int(torch.randint(img.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(img.shape[2] - size + 1, (1,), generator=generator))
        crop = img[:, top : top + size, left : left + size]
        if flips:
            flip_x, flip_y = (torch.rand(2, generator=generator) < 0.5).tolist()
            crop = crop.flip(-1) if flip_x else crop
            crop = crop.flip(-2) if flip_y else crop
        crops.append(crop)
    return torch.stack(crops)


def center_crop(x: Tensor, size: int) -> Tensor:
    """The central `size` x `size` window of a CHW or NCHW image."""
    check_image(x, "image", values=False)
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"cannot take a {size}x{size} crop of a {h}x{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def fit_square(x: Tensor, size: int, whole: bool = False) -> Tensor:
    """A `size` x `size` version of an image, to give every test input one size: the centre crop
    at native scale when the image is large enough, else (or with `whole`) its centre square
    resized to `size` (antialiased bicubic, clamped)."""
    check_image(x, "image", values=False)
    side = min(x.shape[-2:])
    if side >= size and not whole:
        return center_crop(x, size)
    return _resize(center_crop(x, side), (size, size)).clamp(0, 1)


class CropDataset:
    """An endless, seeded stream of training batches `(hr, lr)`: random HR crops and their LR.

    Iterating again restarts the same stream, so training is reproducible::

        data = CropDataset(load_photos(TRAIN_PHOTOS), size=64, batch_size=16, factor=4, seed=0)
        for step, (hr, lr) in zip(range(steps), data): ...
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        size: int,
        batch_size: int,
        factor: int = 4,
        seed: int = 0,
        degrade: Callable[[Tensor, int], Tensor] | None = None,
    ) -> None:
        if size % factor:
            raise ValueError(f"crop size {size} must be divisible by the factor {factor}")
        self.images, self.size, self.batch_size = list(images), size, batch_size
        self.factor, self.seed, self.degrade = factor, seed, degrade or bicubic_down

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            hr = random_crops(self.images, self.size, self.batch_size, generator)
            yield hr, self.degrade(hr, self.factor)


# ---------------------------------------------------------------------------------- degradations


def mod_crop(x: Tensor, factor: int) -> Tensor:
    """Crop the bottom and right edges so that H and W are multiples of `factor`."""
    check_image(x, "image", values=False)
    h, w = x.shape[-2:]
    return x[..., : h - h % factor, : w - w % factor]


def bicubic_down(hr: Tensor, factor: int) -> Tensor:
    """The training degradation: antialiased bicubic downscaling by `factor`, clamped to [0, 1].

    Matlab's `imresize(x, 1/f, 'bicubic')` (what SR datasets use) convolves with Keys' cubic,
    a = -0.5, widened f times when shrinking (antialiasing), and renormalises the weights.
    torch's `interpolate(mode="bicubic", antialias=True)` uses the same kernel (a = -0.5) with
    the same widening; without antialias it uses a = -0.75 and no widening, which aliases.
    Away from the border the two agree to float rounding (tests/test_data.py checks < 1e-6 in
    float32 against a numpy port of the Matlab rule: measured 1e-7). Only the outermost 2 LR
    pixels differ: Matlab mirrors the image at the border, torch drops the missing taps and
    renormalises (measured up to 0.03 on a photo crop, 0.06 on pure noise). H and W must be
    divisible by `factor` (see `mod_crop`).
    """
    _check_factor(hr, factor)
    return _resize(hr, (hr.shape[-2] // factor, hr.shape[-1] // factor)).clamp(0, 1)


def bicubic_up(lr: Tensor, factor: int, clamp: bool = True) -> Tensor:
    """The bicubic baseline: upscale by `factor` with Matlab's kernel (a = -0.5), clamped by default."""
    _check_factor(lr, factor, "lr", divisible=False)
    out = _resize(lr, (lr.shape[-2] * factor, lr.shape[-1] * factor))
    return out.clamp(0, 1) if clamp else out


def nearest_down(hr: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour downscaling: keep the pixel nearest each f x f block's centre, no
    antialiasing, so fine detail aliases into a sharper, jaggier LR than bicubic ever gives."""
    _check_factor(hr, factor)
    return hr[..., factor // 2 :: factor, factor // 2 :: factor]


def gaussian_kernel(sigma: float, radius: int | None = None) -> Tensor:
    """A normalised 2D Gaussian kernel of std `sigma` (HR pixels), size 2 * radius + 1 (radius 3 sigma)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = math.ceil(3 * sigma) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return k / k.sum()


def box_kernel(width: int) -> Tensor:
    """A normalised, centred box of `width` pixels; an even width gets half-weight end taps so
    the kernel stays odd-sized and centred. `box_kernel(f)` + decimation is area averaging."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    t = torch.ones(width + 1 - width % 2)
    if width % 2 == 0:
        t[0] = t[-1] = 0.5
    k = t[:, None] * t[None, :]
    return k / k.sum()


def motion_kernel(length: int, angle: float = 0.0) -> Tensor:
    """A normalised straight motion-blur kernel: a `length`-pixel line through the centre at
    `angle` degrees (0 = horizontal), like a camera moved during the exposure."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    radius = length // 2 + 1
    k = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.float32)
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * length)
    rows = np.rint(radius - t * math.sin(math.radians(angle))).astype(int)
    cols = np.rint(radius + t * math.cos(math.radians(angle))).astype(int)
    np.add.at(k, (rows, cols), 1.0)
    return torch.from_numpy(k / k.sum())


def blur_down(hr: Tensor, kernel: Tensor, factor: int) -> Tensor:
    """Blur each channel with an odd-sized 2D `kernel` (edges replicated), then decimate as in
    `nearest_down`: the classical y = (x * k) downsampled model with a kernel other than bicubic."""
    _check_factor(hr, factor)
    if kernel.dim() != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be a 2D tensor with odd sides, got shape {tuple(kernel.shape)}")
    ph, pw = kernel.shape[0] // 2, kernel.shape[1] // 2
    weight = kernel.to(hr).expand(3, 1, *kernel.shape)
    blur = lambda b: F.conv2d(F.pad(b, (pw, pw, ph, ph), mode="replicate"), weight, groups=3)
    return nearest_down(_batched(hr, blur).clamp(0, 1), factor)


def add_noise(lr: Tensor, sigma: float, generator: torch.Generator | None = None, clamp: bool = True) -> Tensor:
    """Additive white Gaussian noise of std `sigma` on the LR (clamped to [0, 1] by default)."""
    check_image(lr, "lr", values=False)
    noise = torch.randn(lr.shape, generator=generator).to(lr)
    out = lr + sigma * noise
    return out.clamp(0, 1) if clamp else out


def jpeg(lr: Tensor, quality: int) -> Tensor:
    """JPEG-compress each image at `quality` (1-100) with Pillow, in memory: 8x8 blocking, ringing."""
    check_image(lr, "lr", values=False)
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    image = _require("PIL.Image")

    def one(x: Tensor) -> Tensor:
        array = (x.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return to_tensor(np.asarray(image.open(buffer).convert("RGB"))).to(x)

    return _batched(lr, lambda b: torch.stack([one(x) for x in b]))


def contrast(x: Tensor, factor: float, center: float = 0.5, clamp: bool = True) -> Tensor:
    """Scale contrast by `factor` about `center`. With clamp=False the values leave [0, 1]: at x8,
    x16 that breaks even the bounded spline flow (chapter 8), so clamping is the default."""
    check_image(x, "image", values=False)
    out = center + factor * (x - center)
    return out.clamp(0, 1) if clamp else out


def gamma(x: Tensor, g: float) -> Tensor:
    """Gamma curve x ** g (g < 1 brightens the shadows, g > 1 darkens); stays in [0, 1]."""
    check_image(x, "image", values=False)
    if g <= 0:
        raise ValueError(f"gamma must be positive, got {g}")
    return x.clamp(0, 1) ** g


def invert(x: Tensor) -> Tensor:
    """The photographic negative 1 - x."""
    check_image(x, "image", values=False)
    return 1 - x


# ------------------------------------------------------------------------------------ OOD inputs


@dataclass(frozen=True)
class OODInput:
    """One test input: the LR condition, its HR ground truth when one exists, and why it is here."""

    lr: Tensor  # (3, size, size)
    hr: Tensor | None  # (3, size * factor, size * factor), None for inputs made at LR size
    why: str


OOD_GROUPS = ("reference", "content", "degradation", "benign")


def _rendered_text(size: int) -> Tensor:
    """Black text on white, drawn with Pillow's built-in font (no font file needed)."""
    image, draw, font_module = _require("PIL.Image"), _require("PIL.ImageDraw"), _require("PIL.ImageFont")
    try:
        font = font_module.load_default(size=max(size // 12, 8))
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType: the small bitmap font
        font = font_module.load_default()
    canvas = image.new("L", (size, size), 255)
    pen = draw.Draw(canvas)
    lines = ["Normalizing flows", "explode on OOD", "inputs: 1/s -> 1e4", "0123456789 +-*/", "THE QUICK BROWN FOX"]
    for i in range(9):
        pen.text((size // 32, size // 32 + i * size // 10), lines[i % len(lines)], fill=0, font=font)
    return to_tensor(np.asarray(canvas))


def check_size(size: int, least: int) -> int:
    """`size`, or a clear error unless it is an int >= `least` (the side of an OOD test input)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < least:
        raise ValueError(f"size must be an int >= {least}, got {size!r}")
    return size


def synthetic_patterns(size: int) -> dict[str, Tensor]:
    """Three (3, size, size) test images that no photo looks like: "checker_1px" (all energy at the
    highest frequency), "stripes_2px" (vertical stripes, one pure high frequency) and
    "uniform_noise" (i.i.d. colour noise from seed 0, no structure at all)."""
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    grey = lambda p: p.float().expand(3, size, size).clone()
    return {
        "checker_1px": grey((i + j) % 2),
        "stripes_2px": grey((j // 2) % 2),
        "uniform_noise": torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)),
    }


def _distinct_photos(photos: Sequence[str], exclude: Sequence[str] = ()) -> tuple[str, ...]:
    """`photos` as a tuple, or a clear error unless it names one or more distinct photos, none of
    them in `exclude` (the test-input builders' check of their `photos` argument)."""
    photos = tuple(photos)
    if not photos or len(set(photos)) != len(photos) or set(photos) & set(exclude):
        not_these = f" (not {tuple(exclude)})" if exclude else ""
        raise ValueError(f"photos must name one or more distinct photos{not_these}, got {photos!r}")
    return photos


def ood_sets(factor: int = 4, size: int = 64, photos: Sequence[str] = VAL_PHOTOS) -> dict[str, dict[str, OODInput]]:
    """Named SR test inputs in four groups (`OOD_GROUPS`); every LR is (3, size, size) in [0, 1].

    `photos` are the validation photos the "reference", "degradation" and inverted "benign" inputs
    are made of (default: the course's; ``PHOTO_SPLITS["wide"].val`` for a wider measurement).

    - "reference": the validation photos with the training degradation (in distribution).
    - "content": images unlike the training photos (an earlier, exploratory affine model exploded on the
      checkerboard photo and the synthetic patterns; retina and rendered text are untested).
    - "degradation": validation photos degraded unlike training (that model exploded on
      nearest, noise 0.1 and contrast x4; the blur kernels and JPEG are for you to try).
    - "benign": odd inputs that model found harmless (flat, close to the training features), so
      not every strange input looks dangerous. Page, text and cell are unusual *content*, but
      they live here, not in "content".
    Images are brought to HR size size * factor by `fit_square` (retina and cell whole). The low-light
    counterpart is `lowlight_ood_sets(size)`: in both, `size` is the side of every condition image.
    Deterministic: the random inputs use fixed seeds.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"need an int factor >= 1, got {factor!r}")
    check_size(size, 4)
    hr_size = size * factor
    photos = _distinct_photos(photos)
    names = (*photos, *(n for n in OTHER_IMAGES if n not in photos))
    hr_of = {n: fit_square(load_photo(n), hr_size, whole=n in ("retina", "cell")) for n in names}

    def pair(hr: Tensor, why: str) -> OODInput:
        return OODInput(bicubic_down(hr, factor), hr, why)

    patterns = synthetic_patterns(size)
    reference = {p: pair(hr_of[p], "in distribution: validation photo, bicubic LR as in training") for p in photos}
    content = {
        "checkerboard": pair(hr_of["checkerboard"], "photo of a chessboard: flat saturated squares, straight edges"),
        "checker_1px": OODInput(
            patterns["checker_1px"], None, "1-px LR checkerboard: all energy at Nyquist, never in a bicubic LR"
        ),
        "stripes_2px": OODInput(
            patterns["stripes_2px"], None, "2-px vertical LR stripes: one pure high frequency, no natural texture"
        ),
        "uniform_noise": OODInput(
            patterns["uniform_noise"], None, "i.i.d. uniform colour noise: no spatial structure at all"
        ),
        "retina": pair(hr_of["retina"], "fundus photograph: medical content, red-orange palette, vessels"),
        "rendered_text": pair(_rendered_text(hr_size), "black-on-white glyphs drawn with Pillow's font"),
    }
    benign = {
        n: pair(hr_of[n], f"{why}; harmless for an exploratory model")
        for n, why in [
            ("page", "scanned printed page: unusual content, yet flat"),
            ("text", "grey characters on a smooth background"),
            ("cell", "quantitative phase microscopy of a cell"),
        ]
    }
    degradation = {}
    for seed, p in enumerate(photos):
        hr = hr_of[p]
        lr = bicubic_down(hr, factor)
        made = {
            "nearest": (nearest_down(hr, factor), "nearest-neighbour downscaling: aliased, no antialiasing"),
            "noise_0.1": (add_noise(lr, 0.1, torch.Generator().manual_seed(seed)), "LR + Gaussian noise of std 0.1"),
            "gaussian_blur_3": (blur_down(hr, gaussian_kernel(3.0), factor), "Gaussian blur, sigma 3 HR px, decimated"),
            "box_blur": (blur_down(hr, box_kernel(factor), factor), "box average (pixel binning), decimated"),
            "motion_blur": (blur_down(hr, motion_kernel(2 * factor + 1), factor), "horizontal camera shake, decimated"),
            "jpeg_10": (jpeg(lr, 10), "JPEG quality 10 on the LR: 8x8 blocks and ringing"),
            "contrast_x4": (contrast(lr, 4.0), "contrast x4 about 0.5, clamped: saturated areas, hard edges"),
        }
        degradation.update({f"{p}/{k}": OODInput(x, hr, why) for k, (x, why) in made.items()})
        benign[f"{p}/inverted"] = pair(
            invert(hr), "the photo's negative: unusual colours; harmless for an exploratory model"
        )
    return {"reference": reference, "content": content, "degradation": degradation, "benign": benign}


# ----------------------------------------------------------------------------------------- DIV2K

DIV2K_URLS = {  # the official DIV2K HR archives (Agustsson & Timofte, NTIRE 2017); research use only
    "train": "http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
    "valid": "http://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",
}


def load_div2k(
    root: str | Path, split: str = "train", download: bool = False, limit: int | None = None
) -> list[Tensor]:
    """The DIV2K HR images of `split` ("train": 800, "valid": 100) as (3, H, W) tensors.

    Reads the standard layout root/DIV2K_{split}_HR/*.png in sorted order. With download=True a
    missing folder is fetched from the official zip (about 3.5 GB for train, 0.4 GB for valid)
    and unpacked into `root`. The images are 2K: the whole train split is ~30 GB as float32,
    so pass `limit` to read the first few only.
    """
    if split not in DIV2K_URLS:
        raise ValueError(f"split must be one of {list(DIV2K_URLS)}, got {split!r}")
    root = Path(root)
    folder = root / f"DIV2K_{split}_HR"
    if not folder.is_dir():
        if not download:
            raise FileNotFoundError(
                f"DIV2K folder {folder} not found. Call load_div2k({str(root)!r}, {split!r}, download=True), or "
                f"download {DIV2K_URLS[split]} yourself and unzip it into {root}."
            )
        root.mkdir(parents=True, exist_ok=True)
        archive = root / Path(DIV2K_URLS[split]).name
        urllib.request.urlretrieve(DIV2K_URLS[split], archive)
        with zipfile.ZipFile(archive) as z:
            z.extractall(root)
    files = sorted(folder.glob("*.png"))[:limit]
    if not files:
        raise FileNotFoundError(f"no .png files in {folder}")
    image = _require("PIL.Image")
    return [to_tensor(np.asarray(image.open(f).convert("RGB"))) for f in files]
