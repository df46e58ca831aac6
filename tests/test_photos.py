"""The photos shipped in data/photos, their table, their checksums and the photo splits."""

import hashlib
import importlib.util
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minflow import data

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "photos"
WIDE = data.PHOTO_SPLITS["wide"]


@pytest.mark.parametrize("name", data.SHIPPED_PHOTOS)
def test_every_shipped_photo_loads_as_rgb_with_longer_side_at_most_512(name):
    x = data.load_photo(name)
    assert x.dtype == torch.float32 and x.dim() == 3 and x.shape[0] == 3
    assert max(x.shape[1:]) <= 512 and min(x.shape[1:]) >= 172
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.01


def test_the_folder_holds_exactly_the_table_and_matches_its_checksums():
    files = sorted(p.name for p in PHOTOS.glob("*.jpg"))
    assert files == sorted(f"{n}.jpg" for n in data.SHIPPED_PHOTOS)
    listed = {}
    for line in (PHOTOS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        listed[name] = digest
    assert listed == {f: hashlib.sha256((PHOTOS / f).read_bytes()).hexdigest() for f in files}
    total = sum(p.stat().st_size for p in PHOTOS.iterdir())
    print(f"{len(files)} photos, {total / 1e6:.2f} MB")
    assert total < 6e6


def test_the_table_has_one_row_per_name_with_a_licence_and_credit():
    names = [s.name for s in data.PHOTO_SOURCES]
    assert len(names) == len(set(names)) and tuple(names) == data.SHIPPED_PHOTOS
    assert not set(names) & {*data.TRAIN_PHOTOS, *data.VAL_PHOTOS, *data.TEST_PHOTOS, *data.OTHER_IMAGES}
    for s in data.PHOTO_SOURCES:
        assert re.fullmatch(r"[a-z0-9_]+", s.name), s.name
        assert s.package and s.version and s.path and s.member and s.licence and s.credit, s.name
    assert data.photo_source("swans").package == "gcompris-qt-data"
    with pytest.raises(ValueError, match="not a shipped photo.*alpaca"):
        data.photo_source("lena")


def test_images_md_names_every_shipped_photo_with_the_tables_licence():
    rows = {}
    for line in (ROOT / "data" / "IMAGES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == 6:
            rows[cells[0].strip("`")] = cells
    use = {**{n: "train" for n in WIDE.train}, **{n: "val" for n in WIDE.val}, **{n: "test" for n in WIDE.test}}
    for s in data.PHOTO_SOURCES:
        _, package, file, licence, credit, used = rows[s.name]
        assert package.startswith(f"{s.package} {s.version}"), s.name
        assert f"`{s.path}`" in file and f"`{s.member}`" in file, s.name
        assert licence.startswith(s.licence) and credit, s.name
        assert used == f"wide: {use[s.name]}", s.name
    for name in (*data.TRAIN_PHOTOS, *data.VAL_PHOTOS, *data.TEST_PHOTOS):
        assert rows[name][5].endswith(f"wide: {use[name]}"), name


def test_the_docs_state_the_counts_the_code_has():
    train, val, test = len(WIDE.train), len(WIDE.val), len(WIDE.test)
    images = " ".join((ROOT / "data" / "IMAGES.md").read_text().split())
    assert f"({train} train, {val} val, {test} test photos)" in images
    assert f"{len(data.SHIPPED_PHOTOS)} files" in images
    assert f"{train} train / {val} val / {test} test photos" in (ROOT / "docs" / "API.md").read_text()
    changelog = " ".join((ROOT / "CHANGELOG.md").read_text().split())
    assert f"photos/ ({len(data.SHIPPED_PHOTOS)} JPEGs)" in (ROOT / "README.md").read_text()
    assert f"{len(data.SHIPPED_PHOTOS)} photographs" in changelog and f"({train} train, {val} val, {test}" in changelog


def test_the_course_split_is_the_chapters_split():
    course = data.PHOTO_SPLITS["course"]
    assert (course.train, course.val, course.test) == (data.TRAIN_PHOTOS, data.VAL_PHOTOS, data.TEST_PHOTOS)


def test_the_wide_split_is_large_disjoint_and_keeps_the_course_photos_on_their_side():
    train, val, test = set(WIDE.train), set(WIDE.val), set(WIDE.test)
    print(f"wide split: {len(train)} train, {len(val)} val, {len(test)} test")
    assert len(train) == len(WIDE.train) >= 40 and len(val) == len(WIDE.val) >= 10 and len(test) >= 3
    assert not train & val and not train & test and not val & test
    assert train | val | test <= set(data.photo_names()) - set(data.OTHER_IMAGES)
    assert set(data.TRAIN_PHOTOS) <= train and set(data.VAL_PHOTOS) <= val and set(data.TEST_PHOTOS) <= test
    with pytest.raises(ValueError, match="train and val share photos: \\['coffee'\\]"):
        data.PhotoSplit(("coffee", "camera"), ("coffee",), ())
    with pytest.raises(AttributeError):
        WIDE.train = ()


def _luminance(x):
    return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def test_the_wide_val_holds_dark_green_smooth_and_textured_photos():
    # The kinds, defined on the image: dark = mean luminance below 0.25; green = at least 30 % of
    # the pixels green-dominant with saturation above 0.4; smooth = mean absolute difference of
    # neighbouring pixels (luminance, down plus across) below 0.04; textured = above 0.09.
    kinds = {"dark": [], "green": [], "smooth": [], "textured": []}
    for name in WIDE.val:
        x = data.load_photo(name)
        lum = _luminance(x)
        top, low = x.max(0).values, x.min(0).values
        saturation = (top - low) / top.clamp_min(1e-6)
        green = ((x[1] >= x[0]) & (x[1] >= x[2]) & (saturation > 0.4) & (top > 0.2)).float().mean()
        detail = (lum[1:] - lum[:-1]).abs().mean() + (lum[:, 1:] - lum[:, :-1]).abs().mean()
        for kind, holds in [
            ("dark", lum.mean() < 0.25),
            ("green", green > 0.3),
            ("smooth", detail < 0.04),
            ("textured", detail > 0.09),
        ]:
            if holds:
                kinds[kind].append(name)
    print(kinds)
    assert all(kinds.values()), kinds


def test_no_two_photos_are_the_same_scene():
    names = [n for n in data.photo_names() if n not in data.OTHER_IMAGES]
    thumbs = []
    for name in names:
        t = F.adaptive_avg_pool2d(_luminance(data.load_photo(name))[None, None], (16, 16)).flatten()
        thumbs.append((t - t.mean()) / t.std())
    corr = torch.stack(thumbs) @ torch.stack(thumbs).T / thumbs[0].numel()
    corr.fill_diagonal_(-1)
    i, j = divmod(int(corr.argmax()), len(names))
    print(f"most similar pair: {names[i]} / {names[j]}, correlation of 16x16 thumbnails {corr.max():.3f}")
    assert corr.max() < 0.95, (names[i], names[j])


def test_unknown_photo_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown image 'lena'.*swans"):
        data.load_photo("lena")


def test_a_missing_photo_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MINFLOW_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "photos" / "swans.jpg"))):
        data.load_photo("swans")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "swans.jpg").write_bytes((PHOTOS / "swans.jpg").read_bytes())
    assert torch.equal(data.load_photo("swans"), data.images.to_tensor(np.asarray(_open(PHOTOS / "swans.jpg"))))


def _open(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def _collect_photos():
    spec = importlib.util.spec_from_file_location("collect_photos", ROOT / "tools" / "collect_photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_photos_shrinks_only_large_images_and_reads_qt_resources():
    from PIL import Image

    tool = _collect_photos()
    assert tool.shrink(Image.new("L", (1920, 1080))).size == (512, 288)
    assert tool.shrink(Image.new("RGB", (300, 200))).size == (300, 200)
    assert tool.shrink(Image.new("RGBA", (100, 700))).mode == "RGB"
    # a Qt resource (version 3) holding d/a.txt (stored) and d/b.txt (zlib): nodes root -> d -> files
    names, name_at = b"", []
    for n in ("d", "a.txt", "b.txt"):
        name_at.append(len(names))
        names += len(n).to_bytes(2, "big") + b"\0" * 4 + n.encode("utf-16-be")
    stored, packed = b"hello", (6).to_bytes(4, "big") + zlib.compress(b"world!")
    blobs = len(stored).to_bytes(4, "big") + stored + len(packed).to_bytes(4, "big") + packed
    u32 = lambda v: v.to_bytes(4, "big")
    node = lambda name, flags, a, b: u32(name) + flags.to_bytes(2, "big") + a + b + b"\0" * 8
    tree = (
        node(0, 2, u32(1), u32(1))  # root: one child, node 1
        + node(name_at[0], 2, u32(2), u32(2))  # d: two children from node 2
        + node(name_at[1], 0, u32(0), u32(0))  # a.txt: locale 0, data offset 0
        + node(name_at[2], 1, u32(0), u32(4 + len(stored)))  # b.txt: zlib, after a.txt's data
    )
    offsets = (24, 24 + len(tree), 24 + len(tree) + len(blobs))
    blob = b"qres" + u32(3) + b"".join(map(u32, offsets)) + u32(0) + tree + blobs + names
    assert tool.rcc_entries(blob) == {"d/a.txt": b"hello", "d/b.txt": b"world!"}
