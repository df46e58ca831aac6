"""Where each photo in data/photos comes from: package, file inside it, licence and credit.

One table serves the loader (the names `load_photo` accepts) and tools/collect_photos.py (which
rebuilds data/photos from these packages). Every file is a real photograph, shrunk so that its
longer side is at most 512 px and saved as JPEG; data/IMAGES.md lists the same rows for readers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PHOTO_SOURCES", "PhotoSource", "photo_source"]


@dataclass(frozen=True)
class PhotoSource:
    """One shipped photo: `package` (Debian or PyPI) at `version`, `path` inside it, and `member`
    inside that file where it is a container (a Qt resource, a jigzo puzzle, an .npz key)."""

    name: str
    package: str
    version: str
    path: str
    member: str
    licence: str
    credit: str
    crop: tuple[int, int, int, int] | None = None  # (left, top, right, bottom) before resizing


_GC, _GCV = "gcompris-qt-data", "3.1-2"
_RCC = "usr/share/gcompris-qt/rcc/{}.rcc"
_ACT = "gcompris/src/activities/{}/resource/{}"


def _gc(name: str, activity: str, file: str, licence: str, author: str) -> PhotoSource:
    """A photo inside one of GCompris' Qt resource files (licence from that folder's README)."""
    return PhotoSource(name, _GC, _GCV, _RCC.format(activity), _ACT.format(activity, file), licence, author)


def _jigzo(name: str, puzzle: str) -> PhotoSource:
    """The picture of one of jigzo's puzzles (licence: `Files: *` of jigzo-data's copyright file)."""
    path = f"usr/share/games/jigzo/puzzles/00_default/{puzzle}.pzl"
    return PhotoSource(name, "jigzo-data", "0.6.1-7.1", path, f"{puzzle}.jpg", "GPL-2+", "Maarten de Boer (jigzo)")


_DETAILS = "CC-BY-SA-4.0 (Bruno Coudoin and others, after a CC-BY-SA-3.0 photo)"

PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    # GCompris "erase": wildlife photos from Wikimedia Commons, cropped and sharpened by GCompris
    _gc("alpaca", "erase", "alpaca.webp", "CC-BY-SA-4.0", "Dietmar Rabich / Wikimedia Commons"),
    _gc("bee", "erase", "bee.webp", "CC-BY-2.0", "aussiegall"),
    _gc("butterfly", "erase", "butterfly.webp", "CC-BY-SA-4.0", "Jee & Rani Nature Photography (2014)"),
    _gc("calf", "erase", "calf.webp", "CC-BY-SA-4.0", "Basile Morin"),
    _gc("camels", "erase", "camels.webp", "CC-BY-SA-4.0", "Alexandr frolov"),
    _gc("caterpillar", "erase", "caterpillar.webp", "CC-BY-SA-4.0", "Ivar Leidus"),
    _gc("cheetah", "erase", "cheetah.webp", "CC-BY-SA-4.0", "Charles J. Sharp"),
    _gc("crab", "erase", "crab.webp", "CC0-1.0", "Nosferattus"),
    _gc("dolphin", "erase", "dolphin.webp", "CC-BY-SA-4.0", "טל שמע (Wikimedia Commons)"),
    _gc("gibbon", "erase", "gibbon.webp", "CC-BY-3.0", "JJ Harrison"),
    _gc("gorilla", "erase", "gorilla.webp", "CC-BY-SA-4.0", "Charles J. Sharp"),
    _gc("gosling", "erase", "gosling.webp", "CC-BY-SA-4.0", "Stephan Sprinz"),
    _gc("heron", "erase", "heron.webp", "CC-BY-SA-4.0", "Stephan Sprinz"),
    _gc("kingfisher", "erase", "kingfisher.webp", "CC0-1.0", "Frank-2.0"),
    _gc("meerkats", "erase", "meerkats.webp", "CC-BY-SA-4.0", "Charles J. Sharp"),
    _gc("northern_harrier", "erase", "northern_harrier.webp", "CC-BY-SA-4.0", "Frank Schulenburg"),
    _gc("penguin", "erase", "penguin.webp", "CC-BY-SA-4.0", "Gordon Leggett / Wikimedia Commons"),
    _gc("red_panda", "erase", "red_panda.webp", "CC0-1.0", "Mathias Appel"),
    _gc("squirrel", "erase", "squirrel.webp", "CC-BY-SA-4.0", "Роман Наумов (Wikimedia Commons)"),
    _gc("swans", "erase", "swans.webp", "CC-BY-SA-4.0", "Charles J. Sharp"),
    _gc("toucan", "erase", "toucan.webp", "CC-BY-SA-4.0", "LG Nyqvist"),
    # GCompris "explore world animals" / "explore farm animals"
    _gc("bison", "explore_world_animals", "animals/bison.webp", "CC0-1.0", "Kurt Kaiser"),
    _gc("hedgehog", "explore_world_animals", "animals/hedgehog.webp", "public domain", "George Chernilevsky"),
    _gc("jaguars", "explore_world_animals", "animals/jaguar.webp", "CC0-1.0", "Frieda Bredesen"),
    _gc("kangaroo", "explore_world_animals", "animals/kangaroo.webp", "public domain", "Vicki Nunn"),
    _gc("koala", "explore_world_animals", "animals/koala.webp", "public domain", "BurningWell"),
    _gc("komodo_dragon", "explore_world_animals", "animals/dragon.webp", "public domain", "TimVickers"),
    _gc("moose", "explore_world_animals", "animals/moose.webp", "public domain", "Ryan Hagerty"),
    _gc("narwhals", "explore_world_animals", "animals/narwhal.webp", "public domain", "Dr Kristin Laidre"),
    _gc("polar_bear", "explore_world_animals", "animals/polar_bear.webp", "public domain", "anonymous"),
    _gc("chickens", "explore_farm_animals", "animals/chicken.webp", "public domain", "Tranquilles"),
    _gc("horses", "explore_farm_animals", "animals/horse.webp", "CC0-1.0", "Seth Zeigler"),
    _gc("sheep", "explore_farm_animals", "animals/sheep.webp", "CC0-1.0", "Rob Mitchell"),
    # GCompris "explore monuments"
    _gc("ajanta_caves", "explore_monuments", "india/ajantaCave.webp", "public domain", "Jonathanawhite"),
    _gc("carcassonne", "explore_monuments", "france/citedeCarcassonne.webp", "public domain", "Petitemontagnedujura"),
    _gc("colosseum", "explore_monuments", "wonders/colosseum.webp", "public domain", "Urse Ovidiu"),
    _gc("great_wall", "explore_monuments", "wonders/greatWallofChina.webp", "CC0-1.0", "Nicolas Perrault III"),
    _gc("hawa_mahal", "explore_monuments", "india/hawaMahal.webp", "public domain", "Janwiki"),
    _gc("konark_temple", "explore_monuments", "india/konarkSunTemple.webp", "public domain", "Tetraktys"),
    _gc("machu_picchu", "explore_monuments", "wonders/machuPicchu.webp", "CC0-1.0", "Guillaume Pascal"),
    _gc("petra", "explore_monuments", "wonders/petra.webp", "public domain", "Berthold Werner"),
    _gc("pont_du_gard", "explore_monuments", "france/pontduGard.webp", "public domain", "Mimova"),
    # GCompris "details": whole backgrounds of the spot-the-detail game
    _gc("egeskov_castle", "details", "image/EgeskovSlotSpejling_background.webp", _DETAILS, "Malene Thyssen"),
    _gc("louvre_night", "details", "image/Louvre_2007_02_24_c_background.webp", _DETAILS, "Benh LIEU SONG"),
    _gc("notre_dame_night", "details", "image/NDP_background.webp", _DETAILS, "Sanchezn"),
    _gc("sydney_opera_night", "details", "image/OperaSidney_background.webp", _DETAILS, "David Iliff"),
    _gc(
        "tower_bridge_night",
        "details",
        "image/TowerBridgeLondon_background.webp",
        "CC-BY-SA-4.0 (Bruno Coudoin and others, after a CC-BY-SA-4.0 photo)",
        "David Iliff",
    ),
    # GCompris "explore world music" and "clickgame" (underwater backgrounds)
    _gc("mariachi", "explore_world_music", "music/mexico.webp", "CC0-1.0", "Elidealista"),
    _gc("orchestra", "explore_world_music", "music/orchestra.webp", "public domain", "ABC Informática"),
    _gc("porthole_reef", "clickgame", "sea3.webp", "public domain", "SolarSurfer"),
    _gc("sea_cave", "clickgame", "sea5.webp", "public domain", "Rita Segantini"),
    _gc("starfish", "clickgame", "sea6.webp", "public domain", "U.S. Fish and Wildlife Service"),
    # jigzo's puzzles: the whole picture is the top-left region of each puzzle's texture
    _jigzo("blackberries", "blackberry-3x3"),
    _jigzo("bare_tree_sky", "clouds-4x4"),
    # PyWavelets (not a course dependency): a grey photo of people climbing stairs
    PhotoSource(
        "ascent",
        "PyWavelets",
        "1.9.0",
        "pywt/data/ascent.npz",
        "data",
        "public domain",
        "derived from accent-to-the-top.jpg, public-domain-image.com (PyWavelets, after SciPy)",
    ),
)

_BY_NAME = {s.name: s for s in PHOTO_SOURCES}


def photo_source(name: str) -> PhotoSource:
    """The table row of shipped photo `name`, or a clear error."""
    if name not in _BY_NAME:
        raise ValueError(f"{name!r} is not a shipped photo; choose one of: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]
