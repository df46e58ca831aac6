"""Tests of minflow.data: bundled photos (offline), crops, degradations, OOD sets, DIV2K loader."""

from __future__ import annotations

import ast
import re
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from minflow import data

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "div2k_tiny"


def in_unit_range(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1)


# ------------------------------------------------------------------------------------------ photos


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", data.photo_names())
def test_every_image_loads_offline_as_rgb_in_unit_range(name, no_network):
    data._load_array.cache_clear()
    x = data.load_photo(name)
    assert x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] == 3 and min(x.shape[1:]) >= 172
    assert in_unit_range(x)
    assert x.max() > 0.5 and x.std() > 0.01  # a real picture, not a blank


def test_grey_images_are_replicated_to_three_channels():
    x = data.load_photo("camera")
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert data.to_tensor(np.zeros((4, 5, 4), np.uint8)).shape == (3, 4, 5)  # alpha dropped


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="astronaut.*coffee"):
        data.load_photo("lena")


def test_split_is_fixed_and_disjoint():
    assert data.TRAIN_PHOTOS == (
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
    assert data.VAL_PHOTOS == ("coffee", "china")
    groups = [set(data.TRAIN_PHOTOS), set(data.VAL_PHOTOS), set(data.TEST_PHOTOS), set(data.OTHER_IMAGES)]
    groups.append(set(data.SHIPPED_PHOTOS))  # the photos of data/photos (tests/test_photos.py)
    assert sum(map(len, groups)) == len(set().union(*groups)) == len(data.photo_names())


def test_core_imports_only_torch_and_numpy():
    top = set()
    for path in (ROOT / "minflow" / "data").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                top |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                top.add(node.module.split(".")[0])
    assert not top & {"skimage", "sklearn", "matplotlib", "PIL", "scipy"}, top
    with pytest.raises(ImportError, match=re.escape("pip install minflow[course]")):
        data._require("surely_not_an_installed_module")


# ------------------------------------------------------------------------------------------- crops


def test_random_crops_shape_reproducible_and_windows_of_the_images():
    images = [torch.arange(3 * 20 * 30, dtype=torch.float32).reshape(3, 20, 30), torch.rand(3, 16, 17)]
    a = data.random_crops(images, 8, 12, torch.Generator().manual_seed(0))
    b = data.random_crops(images, 8, 12, torch.Generator().manual_seed(0))
    c = data.random_crops(images, 8, 12, torch.Generator().manual_seed(1))
    assert a.shape == (12, 3, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    big = images[0]
    for crop in a:
        corner = crop[0].min()  # every window of the arange image, flipped or not, has a unique minimum
        if (big[0] == corner).any():
            i, j = [int(t) for t in (big[0] == corner).nonzero()[0]]
            window = big[:, i : i + 8, j : j + 8]
            assert any(torch.equal(crop, w) for w in (window, window.flip(-1), window.flip(-2), window.flip(-1, -2)))
    with pytest.raises(ValueError, match="size=32"):
        data.random_crops(images, 32, 1)


def test_crop_dataset_restarts_the_same_stream():
    photos = [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(3))]
    stream = data.CropDataset(photos, size=16, batch_size=4, factor=4, seed=7)
    (hr1, lr1), (hr2, _) = [batch for _, batch in zip(range(2), stream)]
    hr1_again, lr1_again = next(iter(stream))
    assert hr1.shape == (4, 3, 16, 16) and lr1.shape == (4, 3, 4, 4)
    assert torch.equal(hr1, hr1_again) and torch.equal(lr1, lr1_again) and not torch.equal(hr1, hr2)
    assert torch.allclose(lr1, data.bicubic_down(hr1, 4))
    with pytest.raises(ValueError, match="divisible"):
        data.CropDataset(photos, size=18, batch_size=4, factor=4)


# ------------------------------------------------------------------------------ bicubic and Matlab


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def matlab_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Matlab imresize's bicubic weights as an (n_out, n_in) matrix, written from its documented rule:
    output pixel j sits at input coordinate (j + 0.5) * n_in / n_out - 0.5; when shrinking by s the
    cubic is stretched s times (antialiasing); taps beyond the border are mirrored (symmetric
    padding); each row is normalised to sum 1."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for j in range(n_out):
        centre = (j + 0.5) * scale - 0.5
        for i in range(int(np.floor(centre - 2 * stretch)), int(np.ceil(centre + 2 * stretch)) + 1):
            mirrored = -i - 1 if i < 0 else (2 * n_in - 1 - i if i >= n_in else i)
            m[j, mirrored] += keys_cubic((centre - i) / stretch)
    return m / m.sum(axis=1, keepdims=True)


def matlab_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    rows, cols = matlab_resize_matrix(img.shape[1], h), matlab_resize_matrix(img.shape[2], w)
    return np.einsum("ij,cjk,lk->cil", rows, img, cols)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bicubic_down_matches_matlab_imresize_away_from_the_border(factor):
    hr = data.center_crop(data.load_photo("astronaut"), 48)  # float32, a real photo
    lr = data.bicubic_down(hr, factor).double().numpy()
    ref = np.clip(matlab_resize(hr.double().numpy(), 48 // factor, 48 // factor), 0, 1)
    diff = np.abs(lr - ref)
    interior = diff[:, 2:-2, 2:-2].max()
    # Measured (torch 2.13, float32 input): interior 1.5e-7 / 2.3e-7 / 9.5e-8 (x2 / x3 / x4, float
    # rounding); the outermost 2 LR pixels differ by up to 0.025 / 0.034 / 0.026, because Matlab
    # mirrors the image there and torch renormalises the truncated kernel.
    print(f"x{factor}: max |torch - matlab| interior {interior:.2e}, whole image {diff.max():.2e}")
    assert interior < 1e-6
    assert diff.max() < 0.05


def test_torch_without_antialias_is_not_matlab():
    hr = data.center_crop(data.load_photo("astronaut"), 48).double()
    plain = torch.nn.functional.interpolate(hr[None], size=(12, 12), mode="bicubic", align_corners=False)[0]
    assert np.abs(plain.numpy() - matlab_resize(hr.numpy(), 12, 12))[:, 2:-2, 2:-2].max() > 0.01


def test_bicubic_up_matches_matlab_and_keeps_shapes():
    lr = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    up = data.bicubic_up(lr, 4, clamp=False)
    assert up.shape == (3, 40, 48)
    assert np.abs(up.numpy() - matlab_resize(lr.numpy(), 40, 48))[:, 8:-8, 8:-8].max() < 1e-6
    assert in_unit_range(data.bicubic_up(lr, 3)) and data.bicubic_up(lr[None], 3).shape == (1, 3, 30, 36)


def test_bicubic_shapes_range_and_batching():
    hr = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    lr = data.bicubic_down(hr, 4)
    assert lr.shape == (2, 3, 8, 6) and in_unit_range(lr)
    assert torch.allclose(data.bicubic_down(hr[1], 4), lr[1])
    with pytest.raises(ValueError, match="mod_crop"):
        data.bicubic_down(torch.rand(3, 30, 24), 4)
    assert data.mod_crop(torch.rand(3, 30, 27), 4).shape == (3, 28, 24)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        data.bicubic_down(torch.rand(1, 32, 32), 4)
    with pytest.raises(ValueError, match="positive int"):
        data.bicubic_down(hr, 0)


def test_bicubic_of_a_constant_image_is_constant():
    flat = torch.full((3, 32, 32), 0.3)
    assert torch.allclose(data.bicubic_down(flat, 4), torch.full((3, 8, 8), 0.3), atol=1e-6)
    assert torch.allclose(data.bicubic_up(flat[:, :8, :8], 4), torch.full((3, 32, 32), 0.3), atol=1e-6)


# ------------------------------------------------------------------------------ other degradations


HR = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
DEGRADATIONS = {
    "nearest": lambda hr: data.nearest_down(hr, 4),
    "gaussian": lambda hr: data.blur_down(hr, data.gaussian_kernel(2.0), 4),
    "box": lambda hr: data.blur_down(hr, data.box_kernel(4), 4),
    "motion": lambda hr: data.blur_down(hr, data.motion_kernel(9, angle=30), 4),
    "noise": lambda hr: data.add_noise(data.bicubic_down(hr, 4), 0.1, torch.Generator().manual_seed(0)),
    "jpeg": lambda hr: data.jpeg(data.bicubic_down(hr, 4), 10),
    "contrast": lambda hr: data.contrast(data.bicubic_down(hr, 4), 4.0),
    "gamma": lambda hr: data.gamma(data.bicubic_down(hr, 4), 0.5),
    "invert": lambda hr: data.invert(data.bicubic_down(hr, 4)),
}


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_degradation_shape_range_determinism(name):
    fn = DEGRADATIONS[name]
    lr = fn(HR)
    assert lr.shape == (2, 3, 8, 8) and lr.dtype == HR.dtype and in_unit_range(lr)
    assert torch.equal(lr, fn(HR))
    assert fn(HR[0]).shape == (3, 8, 8)
    assert not torch.allclose(lr, data.bicubic_down(HR, 4), atol=1e-3)  # it does change the LR


def test_kernels_are_normalised_odd_and_centred():
    for k in (data.gaussian_kernel(1.5), data.box_kernel(4), data.box_kernel(3), data.motion_kernel(9, 45)):
        assert abs(float(k.sum()) - 1) < 1e-6 and k.shape[0] % 2 == 1 and k.shape[1] % 2 == 1
        assert torch.allclose(k, k.flip(0, 1), atol=1e-6)  # symmetric about its centre
    assert data.box_kernel(4).shape == (5, 5)
    horizontal = data.motion_kernel(9)
    assert (horizontal.sum(1) > 0).sum() == 1 and (horizontal > 0).sum() == 9


def test_contrast_unclamped_leaves_the_unit_range_and_nearest_keeps_pixels():
    lr = data.bicubic_down(HR, 4)
    wild = data.contrast(lr, 16.0, clamp=False)
    assert wild.min() < -1 and wild.max() > 2
    assert torch.allclose(data.contrast(lr, 16.0), wild.clamp(0, 1))
    assert torch.equal(data.nearest_down(HR, 4), HR[..., 2::4, 2::4])
    assert torch.equal(data.gamma(lr, 1.0), lr)


def test_degradations_reject_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        data.blur_down(HR, torch.ones(4, 4) / 16, 4)
    with pytest.raises(ValueError, match="quality"):
        data.jpeg(HR, 0)
    with pytest.raises(ValueError, match="sigma"):
        data.gaussian_kernel(0.0)
    with pytest.raises(ValueError, match="gamma"):
        data.gamma(HR, -1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        data.invert(HR.numpy())


# ------------------------------------------------------------------------------------- OOD inputs


@pytest.fixture(scope="module")
def ood():
    return data.ood_sets()


def test_ood_sets_have_the_documented_groups_names_shapes_and_range(ood):
    assert tuple(ood) == data.OOD_GROUPS
    assert set(ood["content"]) == {
        "checkerboard",
        "checker_1px",
        "stripes_2px",
        "uniform_noise",
        "retina",
        "rendered_text",
    }
    kinds = ("nearest", "noise_0.1", "gaussian_blur_3", "box_blur", "motion_blur", "jpeg_10", "contrast_x4")
    assert set(ood["degradation"]) == {f"{p}/{k}" for p in data.VAL_PHOTOS for k in kinds}
    assert set(ood["benign"]) == {"page", "text", "cell", "coffee/inverted", "china/inverted"}
    assert set(ood["reference"]) == set(data.VAL_PHOTOS)
    for group in ood.values():
        for name, item in group.items():
            assert item.lr.shape == (3, 64, 64) and item.lr.dtype == torch.float32 and in_unit_range(item.lr), name
            assert item.hr is None or (item.hr.shape == (3, 256, 256) and in_unit_range(item.hr)), name
            assert item.why and "\n" not in item.why, name
            assert item.lr.std() > 0.01, name  # not blank


def test_ood_sets_are_deterministic_and_sized_by_the_caller(ood):
    a, b = data.ood_sets(factor=2, size=16), data.ood_sets(factor=2, size=16)
    for group in a:
        for name in a[group]:
            assert a[group][name].lr.shape == (3, 16, 16)
            assert torch.equal(a[group][name].lr, b[group][name].lr), name
    assert a["degradation"]["coffee/nearest"].hr.shape == (3, 32, 32)
    assert torch.equal(ood["content"]["checker_1px"].lr[0, :2, :2], torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    for bad in (2, 16.0, True):
        with pytest.raises(ValueError, match="size must be an int >= 4"):
            data.ood_sets(size=bad)


def test_ood_sets_can_be_made_of_other_validation_photos():
    val = data.PHOTO_SPLITS["wide"].val[:3]
    sets = data.ood_sets(factor=2, size=16, photos=val)
    assert set(sets["reference"]) == set(val)
    assert {k.split("/")[0] for k in sets["degradation"]} == set(val) and len(sets["degradation"]) == 7 * len(val)
    assert set(sets["content"]) == set(data.ood_sets(factor=2, size=16)["content"])  # content does not change
    for bad in ((), ("coffee", "coffee")):
        with pytest.raises(ValueError, match="distinct photos"):
            data.ood_sets(photos=bad)


# ------------------------------------------------------------------------------------------ DIV2K


def test_div2k_reads_the_fixture():
    train = data.load_div2k(FIXTURE, "train")
    valid = data.load_div2k(FIXTURE, "valid")
    assert len(train) == 2 and len(valid) == 1 and len(data.load_div2k(FIXTURE, "train", limit=1)) == 1
    for x in train + valid:
        assert x.shape == (3, 48, 64) and in_unit_range(x)


def test_div2k_missing_folder_explains_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download=True.*DIV2K_valid_HR\.zip"):
        data.load_div2k(tmp_path, "valid")
    with pytest.raises(ValueError, match="train"):
        data.load_div2k(FIXTURE, "test")


def test_div2k_download_unpacks_the_archive(tmp_path, monkeypatch):
    """The download path, with urllib replaced by a local copy of the fixture (no network)."""

    def fake_urlretrieve(url, filename):
        assert url == data.DIV2K_URLS["valid"]
        with zipfile.ZipFile(filename, "w") as z:
            for f in (FIXTURE / "DIV2K_valid_HR").glob("*.png"):
                z.write(f, f"DIV2K_valid_HR/{f.name}")

    monkeypatch.setattr(data.images.urllib.request, "urlretrieve", fake_urlretrieve)
    images = data.load_div2k(tmp_path / "div2k", "valid", download=True)
    assert len(images) == 1 and images[0].shape == (3, 48, 64)


def test_fixture_is_tiny():
    assert sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file()) < 200_000


# --------------------------------------------------------------------------------------- manifest


def manifest_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "data" / "IMAGES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            rows[cells[0].strip("`")] = cells
    return rows


def test_manifest_names_every_loadable_image_with_its_file_and_use():
    import matplotlib
    import skimage
    import sklearn

    rows = manifest_rows()
    assert set(rows) == set(data.photo_names())
    homes = {
        "scikit-image": Path(skimage.__file__).parent.parent,
        "scikit-learn": Path(sklearn.__file__).parent.parent,
        "matplotlib": Path(matplotlib.__file__).parent.parent,
    }
    use = {
        **{n: "train" for n in data.TRAIN_PHOTOS},
        **{n: "val" for n in data.VAL_PHOTOS},
        **{n: "test" for n in data.TEST_PHOTOS},
        **{n: "OOD" for n in data.OTHER_IMAGES},
    }
    for name, (_, package, file, licence, credit, used) in rows.items():
        if name in data.SHIPPED_PHOTOS:  # copied into data/photos; checked in tests/test_photos.py
            assert (ROOT / "data" / "photos" / f"{name}.jpg").is_file() and licence and credit, name
            continue
        assert (homes[package] / file.strip("`")).is_file(), (name, file)
        assert licence and credit, name
        assert used.startswith(use[name]), (name, used)
