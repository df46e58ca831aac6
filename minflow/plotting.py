"""Course-wide figure style: one colour per model family, readable at projector size.

Seeds of one family share its colour and differ in line style *and* marker (`seed_style`), so they
stay apart in grey scale and on a washed-out projector. Values that cannot be drawn as data
(inf, nan) go into a labelled strip above the axes (`plot_finite`), or, on axes whose range is
already set, into a labelled band at their top or bottom (`mark_off_scale`: non-finite, exploded,
or zero on a log axis), never at a stand-in value.

Imports matplotlib, so it is for notebooks (``pip install minflow[course]``), not the core.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

__all__ = [
    "COLORS",
    "MIN_FONT_SIZE",
    "NONFINITE_LABEL",
    "SEED_MARKERS",
    "SEED_STYLES",
    "mark_off_scale",
    "nonfinite_strip",
    "plot_finite",
    "seed_style",
    "shade",
    "style",
]

COLORS = {
    "affine": "#d1495b",  # every affine-coupling model, in every chapter
    "spline": "#00798c",  # every spline-coupling model
    "data": "#5c5c5c",  # ground truth / training data
    "other": "#edae49",  # a third family (soft clamp, additive, ...)
    "bicubic": "#8d96a3",
}


SEED_STYLES = ["-", "--", "-.", ":", (0, (6, 1.5, 1, 1.5, 1, 1.5))]
"""Five distinct line styles (solid, dashed, dash-dot, dotted, dash-dot-dot): with `SEED_MARKERS`,
they tell the seeds of one family apart (`seed_style`)."""


def shade(family: str, i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of a family's course colour, from light (i = 0) to full strength."""
    r, g, b = to_rgb(COLORS[family])
    a = 0.45 + 0.55 * i / max(n - 1, 1)
    return (1 - a + a * r, 1 - a + a * g, 1 - a + a * b)


SEED_MARKERS = ["o", "s", "^", "D", "v"]
"""Five markers, one per seed, paired with `SEED_STYLES`."""

MIN_FONT_SIZE = 10
"""No legend, title or label of a course figure is smaller than this (points)."""

NONFINITE_LABEL = "non-finite"
"""The label of the strip where `plot_finite` marks inf / nan values."""


def seed_style(family: str, i: int) -> dict:
    """Plot keywords for seed number i of a family: the family's colour, the i-th line style and marker.

    The i-th style and marker repeat after five seeds: ``ax.plot(x, y, **seed_style("affine", i))``.
    """
    if family not in COLORS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(COLORS)}")
    if i < 0:
        raise ValueError(f"seed number i must be >= 0, got {i}")
    return {
        "color": COLORS[family],
        "ls": SEED_STYLES[i % len(SEED_STYLES)],
        "marker": SEED_MARKERS[i % len(SEED_MARKERS)],
        "ms": 5,
    }


def nonfinite_strip(ax, label: str = NONFINITE_LABEL, height: float = 0.12):
    """The labelled strip above `ax` (sharing its x axis) where non-finite values are marked.

    Made on the first call and returned again on later ones, so several series share one strip.
    The title of `ax` moves above it by itself (matplotlib places titles above inset axes).
    """
    strip = getattr(ax, "_nonfinite_strip", None)
    if strip is None:
        strip = ax.inset_axes([0.0, 1.03, 1.0, height], sharex=ax)
        strip.set_ylim(0, 1)
        strip.set_yticks([])
        strip.tick_params(axis="x", which="both", bottom=False, labelbottom=False)
        strip.set_facecolor("#f1f1f1")
        for side in ("top", "right", "left", "bottom"):
            strip.spines[side].set_visible(False)
        strip.text(1.005, 0.5, label, transform=strip.transAxes, ha="left", va="center", fontsize=MIN_FONT_SIZE)
        ax._nonfinite_strip = strip
    return strip


def plot_finite(ax, x: Sequence[float], y: Sequence[float], *, label: str | None = None, **kw) -> np.ndarray:
    """Plot the finite points of (x, y) on `ax`, and mark the x of every non-finite y in `nonfinite_strip`.

    The finite points are drawn as one line (``kw`` as for ``ax.plot``); a non-finite value is never
    replaced by a stand-in number. Returns the boolean mask of finite y.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of the same length, got shapes {x.shape} and {y.shape}")
    finite = np.isfinite(y)
    (line,) = ax.plot(x[finite], y[finite], label=label, **kw)
    if not finite.all():
        strip = nonfinite_strip(ax)
        marker = kw.get("marker") or "X"
        if marker in ("", "None", None):
            marker = "X"
        n = getattr(strip, "_series", 0)  # each series at its own height, so coinciding marks stay visible
        strip._series = n + 1
        height = 0.2 + 0.6 * ((0.5 + 0.618 * n) % 1.0)
        xs = x[~finite]
        strip.plot(
            xs,
            np.full(len(xs), height),
            ls="",
            marker=marker,
            ms=kw.get("ms", 6),
            color=line.get_color(),
            clip_on=False,
        )
    return finite


def style() -> None:
    """Apply the course style: larger fonts and lines, no top/right spines.

    Every title, legend and label is at least `MIN_FONT_SIZE` points, readable on a projector.
    """
    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "font.size": 12,
            "axes.titlesize": 13,
            "axes.labelsize": 12,
            "figure.titlesize": 14,
            "legend.fontsize": 11,
            "legend.title_fontsize": 11,
            "xtick.labelsize": 11,
            "ytick.labelsize": 11,
            "lines.linewidth": 2.0,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "image.cmap": "viridis",
        }
    )


OFF_SCALE_BAND = 0.1
"""Share of the axes height that `mark_off_scale` reserves for its band."""


def _reserve_band(ax, where: str, label: str) -> float:
    """Grow ax's y-limits so that they fill all but a band at the top (or bottom), shade and label it.
    Returns the band's middle in axes coordinates. Ticks are kept off the band: nothing in it is a value."""
    bands = ax.__dict__.setdefault("_minflow_bands", {})
    middle = 1 - OFF_SCALE_BAND / 2 if where == "top" else OFF_SCALE_BAND / 2
    if where in bands:
        return middle
    lo, hi = ax.get_ylim()
    inside = (
        (lambda t: lo <= t < hi) if where == "top" else (lambda t: lo < t <= hi)
    )  # the edge tick would touch the band
    ticks = {minor: [t for t in ax.get_yticks(minor=minor) if inside(t)] for minor in (False, True)}
    grow = 1 / (1 - OFF_SCALE_BAND)
    if ax.get_yscale() == "log":
        lo, hi = (lo, lo * (hi / lo) ** grow) if where == "top" else (hi / (hi / lo) ** grow, hi)
    else:
        lo, hi = (lo, lo + (hi - lo) * grow) if where == "top" else (hi - (hi - lo) * grow, hi)
    ax.set_ylim(lo, hi)
    for minor, kept in ticks.items():
        ax.set_yticks(kept, minor=minor)
    y0 = 1 - OFF_SCALE_BAND if where == "top" else 0.0
    ax.add_patch(Rectangle((0, y0), 1, OFF_SCALE_BAND, transform=ax.transAxes, color="0.9", lw=0, zorder=0))
    ax.text(-0.01, middle, label, transform=ax.transAxes, ha="right", va="center", fontsize=10, color="0.2")
    bands[where] = label
    return middle


def mark_off_scale(ax, x, label: str = NONFINITE_LABEL, where: str = "top", **kw) -> None:
    """Mark positions x whose value has no place on the axis (non-finite, exploded, zero on a log
    axis) in a shaded band labelled `label` at the top (or bottom) of ax, instead of plotting a
    stand-in number as if it were data. Set the y-limits (or draw the finite data) first: the first
    call per band grows them so that they end at the band. `kw` go to ``ax.plot`` (colour, marker)."""
    if where not in ("top", "bottom"):
        raise ValueError(f"where must be 'top' or 'bottom', got {where!r}")
    middle = _reserve_band(ax, where, label)
    xs = list(x)
    if xs:
        kw = {"marker": "x", "ms": 7, "ls": "none", **kw}
        ax.plot(xs, [middle] * len(xs), transform=ax.get_xaxis_transform(), clip_on=False, **kw)
