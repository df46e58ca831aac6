"""Training crops from an image folder (minflow.data.folders): found recursively, seeded per
example, streamed from disk, the same through DataLoader workers, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from minflow.data import FolderCrops, StepBatches, bicubic_down, example_seed, image_files, to_tensor


def write(path: Path, h: int, w: int, seed: int, mode: str = "RGB") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).convert(mode).save(path)
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def folder(tmp_path) -> Path:
    write(tmp_path / "a.png", 40, 50, 0)
    write(tmp_path / "sub" / "b.JPG", 36, 36, 1)
    write(tmp_path / "sub" / "deeper" / "c.bmp", 64, 33, 2, mode="L")  # grey: replicated to RGB
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_files_are_found_recursively_in_sorted_order(folder):
    assert [p.relative_to(folder).as_posix() for p in image_files(folder)] == [
        "a.png",
        "sub/b.JPG",
        "sub/deeper/c.bmp",
    ]


def test_clear_errors_for_missing_empty_and_imageless_folders_and_small_images(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is empty"):
        FolderCrops(tmp_path / "empty", 16)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no image files \(.png.*1 other file"):
        FolderCrops(tmp_path / "text", 16)
    with pytest.raises(
        ValueError, match=r"2 of 3 images .* smaller than the 40x40 crop, e.g. .*b.JPG \(36x36\) and 1 more"
    ):
        FolderCrops(folder, 40)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not an image Pillow can read"):
        FolderCrops(tmp_path / "broken", 8)
    with pytest.raises(ValueError, match="crop must be"):
        FolderCrops(folder, 0)


def test_example_n_is_a_seeded_window_of_one_image_with_flips(folder):
    data = FolderCrops(folder, 16, seed=3)
    images = [to_tensor(np.asarray(Image.open(p).convert("RGB"))) for p in data.files]
    seen_flips = set()
    for n in range(40):
        x, cond = data[n]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and torch.equal(cond, x)
        again = FolderCrops(folder, 16, seed=3)[n][0]  # another instance (another process): the same
        assert torch.equal(x, again)
        found = False
        for img in images:
            for fx in (False, True):
                for fy in (False, True):
                    y = x.flip(-1) if fx else x
                    y = y.flip(-2) if fy else y
                    windows = img.unfold(1, 16, 1).unfold(2, 16, 1)  # (3, H', W', 16, 16)
                    hit = (windows == y[:, None, None]).flatten(3).all(3).all(0)
                    if hit.any():
                        found = True
                        seen_flips.add((fx, fy))
        assert found, n
    assert len(seen_flips) == 4  # every flip occurs
    assert not torch.equal(FolderCrops(folder, 16, seed=4)[0][0], data[0][0])  # another seed, another crop
    assert not any(isinstance(v, torch.Tensor) for v in vars(data).values())  # nothing held in memory
    seeds = {example_seed(s, n) for s in range(3) for n in range(1000)}
    assert len(seeds) == 3000  # no two examples share a generator seed here


def test_the_condition_comes_from_the_degradation_with_the_example_generator(folder):
    def degrade(x, gen):
        return bicubic_down(x, 4) + torch.rand((), generator=gen)

    data = FolderCrops(folder, 16, seed=0, degrade=degrade)
    x, cond = data[5]
    assert cond.shape == (3, 4, 4)
    assert torch.equal(cond, data[5][1])  # the example's own generator: the same condition again


def test_step_batches_and_workers_give_the_rows_of_each_step(folder):
    assert list(StepBatches(2, 4, 6)) == [[12, 13, 14, 15, 16, 17], [18, 19, 20, 21, 22, 23]]
    assert list(StepBatches(0, 2, 4, slice(2, 4))) == [[2, 3], [6, 7]] and len(StepBatches(1, 4, 2)) == 3
    data = FolderCrops(folder, 16, seed=0)
    whole = list(DataLoader(data, batch_sampler=StepBatches(0, 3, 4)))
    halves = [
        list(DataLoader(data, batch_sampler=StepBatches(0, 3, 4, slice(r * 2, r * 2 + 2)), num_workers=w))
        for r, w in ((0, 0), (1, 2))
    ]
    for step in range(3):
        joined = torch.cat([halves[0][step][0], halves[1][step][0]])
        assert torch.equal(joined, whole[step][0])
