"""Course-wide figure style: one colour per model family, readable at projector size.

Imports matplotlib, so it is for notebooks (``pip install minflow[course]``), not the core.
"""

from __future__ import annotations

import matplotlib as mpl
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle

__all__ = ["COLORS", "SEED_MARKERS", "SEED_STYLES", "mark_off_scale", "seed_style", "shade", "style"]

COLORS = {
    "affine": "#d1495b",  # every affine-coupling model, in every chapter
    "spline": "#00798c",  # every spline-coupling model
    "data": "#5c5c5c",  # ground truth / training data
    "other": "#edae49",  # a third family (soft clamp, additive, ...)
    "bicubic": "#8d96a3",
}


SEED_STYLES = ["-", "--", "-.", ":", "-"]
"""Line styles that, with `shade`, tell the seeds of one family apart."""


def shade(family: str, i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of a family's course colour, from light (i = 0) to full strength."""
    r, g, b = to_rgb(COLORS[family])
    a = 0.45 + 0.55 * i / max(n - 1, 1)
    return (1 - a + a * r, 1 - a + a * g, 1 - a + a * b)


def style() -> None:
    """Apply the course style: larger fonts and lines, no top/right spines."""
    mpl.rcParams.update(
        {
            "figure.dpi": 100,
            "font.size": 12,
            "axes.titlesize": 13,
            "axes.labelsize": 12,
            "legend.fontsize": 11,
            "lines.linewidth": 2.0,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "image.cmap": "viridis",
        }
    )


SEED_MARKERS = ["o", "s", "^", "D", "v"]
"""Markers that, with `SEED_STYLES` and `shade`, tell seeds apart without relying on colour."""


def seed_style(i: int) -> dict:
    """Matplotlib keywords (line style and marker) of the i-th seed: ``ax.plot(x, y, **seed_style(i))``."""
    return {"ls": SEED_STYLES[i % len(SEED_STYLES)], "marker": SEED_MARKERS[i % len(SEED_MARKERS)]}


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


def mark_off_scale(ax, x, label: str = "non-finite", where: str = "top", **kw) -> None:
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
