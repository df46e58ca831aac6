"""Course-wide figure style: one colour per model family, readable at projector size.

Imports matplotlib, so it is for notebooks (``pip install minflow[course]``), not the core.
"""

from __future__ import annotations

import matplotlib as mpl
from matplotlib.colors import to_rgb

__all__ = ["COLORS", "SEED_STYLES", "shade", "style"]

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
