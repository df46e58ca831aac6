"""Training crops from any folder of images (DIV2K, your own photos), read from disk as needed.

    data = FolderCrops("DIV2K_train_HR", crop=160, seed=0)
    hr, cond = data[n]                      # example n of the run: always the same crop

Example n of a run is drawn by its own generator, seeded from (`seed`, n) (`example_seed`): which image
(uniformly), where the crop sits (uniformly) and its flips (probability 1/2 each). So example n
is the same in every run of that seed, whichever process or DataLoader worker reads it, and a
training step s with a global batch of B examples reads examples s B, ..., s B + B - 1
(`StepBatches`; rank r of W processes reads its B / W of them). Only the file of each example is
opened, so the set never sits in memory; the folder is scanned once for image files (recursively)
and their sizes (headers only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import _require, to_tensor

__all__ = ["IMAGE_SUFFIXES", "FolderCrops", "StepBatches", "example_seed", "image_files"]

Tensor = torch.Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
"""File endings (any case) that `image_files` takes for images."""

_EXAMPLES = 2**32  # example numbers per seed


def example_seed(seed: int, n: int) -> int:
    """The generator seed of example n of run seed `seed`: (n * 0x9E3779B1 + seed * 0x85EBCA77) mod 2^32.

    torch's CPU generator keeps 32 bits of its seed; the odd multiplier makes n -> seed a one-to-one
    map of the 2^32 example numbers, so no two examples of a run share a generator."""
    return (n * 0x9E3779B1 + seed * 0x85EBCA77) % 2**32


def image_files(root: str | Path) -> list[Path]:
    """The image files (`IMAGE_SUFFIXES`) under `root`, recursively, in sorted order; a clear
    FileNotFoundError for a missing or empty folder, or one without image files."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (or is not a folder)")
    everything = [p for p in root.rglob("*") if p.is_file()]
    if not everything:
        raise FileNotFoundError(f"image folder {root} is empty")
    files = sorted(p for p in everything if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        endings = ", ".join(IMAGE_SUFFIXES)
        raise FileNotFoundError(f"no image files ({endings}) under {root}: {len(everything)} other file(s)")
    return files


class FolderCrops(Dataset):
    """Random `crop` x `crop` training crops of the images under `root`, with flips, as
    ``(x, condition)`` pairs: ``condition = degrade(x, generator)`` (the task's degradation, with
    the example's own generator; None: the crop itself). Example n is a pure function of (`seed`,
    n), see the module docstring. Images smaller than the crop are a ValueError naming them."""

    def __init__(
        self,
        root: str | Path,
        crop: int,
        seed: int = 0,
        flips: bool = True,
        degrade: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    ) -> None:
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 1:
            raise ValueError(f"crop must be a whole number >= 1, got {crop!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
        self.root, self.crop, self.seed, self.flips, self.degrade = Path(root), crop, seed, flips, degrade
        self.files = image_files(root)
        image = _require("PIL.Image")
        self.sizes = []  # (width, height) from each file's header
        for f in self.files:
            try:
                with image.open(f) as im:
                    self.sizes.append(im.size)
            except (OSError, SyntaxError) as err:
                raise ValueError(f"{f} is not an image Pillow can read: {err}") from None
        small = [(f, s) for f, s in zip(self.files, self.sizes) if min(s) < crop]
        if small:
            (f, (w, h)), more = small[0], len(small) - 1
            raise ValueError(
                f"{len(small)} of {len(self.files)} images under {self.root} are smaller than the "
                f"{crop}x{crop} crop, e.g. {f} ({w}x{h}){f' and {more} more' if more else ''}; "
                "use a smaller --crop or remove them"
            )

    def __len__(self) -> int:
        return _EXAMPLES

    def __getitem__(self, n: int) -> tuple[Tensor, Tensor]:
        if not 0 <= n < _EXAMPLES:
            raise IndexError(f"example {n} out of range [0, 2^32)")
        gen = torch.Generator().manual_seed(example_seed(self.seed, n))
        k = int(torch.randint(len(self.files), (1,), generator=gen))
        (w, h), size = self.sizes[k], self.crop
        top = int(torch.randint(h - size + 1, (1,), generator=gen))
        left = int(torch.randint(w - size + 1, (1,), generator=gen))
        flip_x, flip_y = (torch.rand(2, generator=gen) < 0.5).tolist() if self.flips else (False, False)
        image = _require("PIL.Image")
        with image.open(self.files[k]) as im:
            window = np.asarray(im.crop((left, top, left + size, top + size)).convert("RGB"))
        x = to_tensor(window)
        x = x.flip(-1) if flip_x else x
        x = x.flip(-2) if flip_y else x
        cond = x if self.degrade is None else self.degrade(x[None], gen)[0]
        return x, cond


class StepBatches:
    """A DataLoader ``batch_sampler``: for steps `start`, ..., `steps` - 1 the example numbers
    ``s * batch + i`` for i in `rows` (a slice of range(batch): this process's share)."""

    def __init__(self, start: int, steps: int, batch: int, rows: slice = slice(None)) -> None:
        self.start, self.steps, self.batch = start, steps, batch
        self.rows = range(batch)[rows]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.steps):
            yield [s * self.batch + i for i in self.rows]
