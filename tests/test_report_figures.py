"""The table helpers of `minflow.report` (`cell`, `format_rows`) and the figure helpers the spline chapters added
to `minflow.plotting` (seed markers, the band for values that have no place on an axis)."""

import math

import pytest

from minflow.report import cell, format_rows


def test_cell_formats_numbers_and_names_what_is_not_a_number():
    assert cell(3) == "3" and cell(1234, ",") == "1,234"
    assert cell(0.123456) == "0.123" and cell(0.5, ".0%") == "50%"
    assert cell(math.inf) == "non-finite" and cell(math.nan) == "non-finite" and cell(-math.inf, ".2f") == "non-finite"
    assert cell(None) == "-" and cell("as is") == "as is"


def test_format_rows_aligns_columns_and_transposes():
    text = format_rows(["model", "bpd", "max"], [["affine", 1.23456, math.inf], ["spline", 1.1, 2]])
    lines = text.splitlines()
    assert lines[0].split() == ["model", "bpd", "max"] and set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["affine", "1.23", "non-finite"] and lines[3].split() == ["spline", "1.1", "2"]
    assert len({len(line) for line in lines[:3]}) == 1  # every cell padded to its column's width
    assert lines[3].startswith("spline ") and lines[3].endswith(" 2")  # first column left, others right
    flipped = format_rows(["model", "bpd", "max"], [["affine", 1.23456, math.inf], ["spline", 1.1, 2]], transpose=True)
    rows = [line.split() for line in flipped.splitlines()]
    assert rows[0] == ["model", "affine", "spline"] and rows[2] == ["bpd", "1.23", "1.1"]
    assert rows[3] == ["max", "non-finite", "2"]


def test_format_rows_refuses_ragged_rows():
    with pytest.raises(ValueError, match="3 cells"):
        format_rows(["a", "b", "c"], [[1, 2]])


def test_seed_styles_tell_five_seeds_apart_without_colour():
    from minflow.plotting import SEED_MARKERS, seed_style

    styles = [seed_style("spline", i) for i in range(5)]
    assert len({s["marker"] for s in styles}) == 5 and set(SEED_MARKERS) >= {s["marker"] for s in styles}
    assert seed_style("spline", 5) == seed_style("spline", 0)


@pytest.mark.parametrize("scale", ["log", "linear"])
@pytest.mark.parametrize("where", ["top", "bottom"])
def test_mark_off_scale_puts_markers_in_a_labelled_band_outside_the_data(scale, where):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minflow.plotting import OFF_SCALE_BAND, mark_off_scale

    fig, ax = plt.subplots()
    lo, hi = (1e-3, 1e5) if scale == "log" else (-2.0, 8.0)
    ax.set(yscale=scale, ylim=(lo, hi))
    ax.plot([1, 2, 3], [lo * 2 if scale == "log" else lo + 1, 1, hi / 2], "o")
    mark_off_scale(ax, [1.5, 2.5], label="exploded", where=where)
    mark_off_scale(ax, [3.5], label="exploded", where=where)  # the band is reserved once
    new_lo, new_hi = ax.get_ylim()
    if scale == "log":
        to_axes = lambda v: math.log(v / new_lo) / math.log(new_hi / new_lo)  # noqa: E731
    else:
        to_axes = lambda v: (v - new_lo) / (new_hi - new_lo)  # noqa: E731
    if where == "top":
        assert new_lo == pytest.approx(lo) and to_axes(hi) == pytest.approx(1 - OFF_SCALE_BAND)
    else:
        assert new_hi == pytest.approx(hi) and to_axes(lo) == pytest.approx(OFF_SCALE_BAND)
    band = (1 - OFF_SCALE_BAND, 1.0) if where == "top" else (0.0, OFF_SCALE_BAND)
    ticks = [*ax.get_yticks(), *ax.get_yticks(minor=True)]
    tol = 1e-9 * (hi - lo)
    assert all(lo - tol <= t <= hi + tol for t in ticks)  # no tick in the band: nothing there is a value
    marks = [line for line in ax.lines if line.get_transform() != ax.transData]
    assert [len(m.get_xdata()) for m in marks] == [2, 1]
    assert all(band[0] < y < band[1] for m in marks for y in m.get_ydata())
    assert [t.get_text() for t in ax.texts] == ["exploded"]
    plt.close(fig)


def test_mark_off_scale_rejects_an_unknown_place():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minflow.plotting import mark_off_scale

    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="top"):
        mark_off_scale(ax, [1], where="left")
    plt.close(fig)
