"""minflow.report (the chapters' printed tables and summaries) and the projector rules of minflow.plotting."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minflow import metrics, ood, plotting, report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_format_table_fits_widths_and_prints_nonfinite_as_words():
    rows = [
        {"name": "coffee", "x": 0.5, "n": 3},
        {"name": "a", "x": math.inf, "n": 12345},
        {"name": "b", "x": math.nan, "n": 0},
    ]
    text = report.format_table(rows, [("input", "name", ""), ("share", "x", ".0%"), ("count", "n", ",")], title="t")
    lines = text.splitlines()
    assert lines[0] == "t"
    assert len({len(line) for line in lines[1:]}) == 1  # every line as wide as the header
    assert lines[2].split() == ["coffee", "50%", "3"]
    assert lines[3].split() == ["a", "inf", "12,345"]
    assert lines[4].split() == ["b", "nan", "0"]
    assert report.format_table([(1, None)], [("a", 0, "d"), ("b", 1, ".2f")]).splitlines()[1].split() == ["1"]
    with pytest.raises(ValueError, match="at least one column"):
        report.format_table(rows, [])


def _report(x, min_scale):
    return {"x": x, **metrics.artifact_report(x, torch.tensor(min_scale))}


def test_group_summary_pools_samples_of_each_group():
    ok = torch.full((2, 3, 4, 4), 0.5)
    bad = ok.clone()
    bad[0, 0, 0, 0] = math.inf  # sample 0 explodes
    tail = ok.clone()
    tail[1, 0, 1, 1] = 2.0  # one artifact pixel, no explosion
    results = {
        ("ref", "a"): _report(ok, [0.5, 0.4]),
        ("ref", "b"): _report(tail, [0.3, 0.2]),
        ("ood", "c"): _report(bad, [1e-4, 0.6]),
    }
    table = report.group_summary(results, ["ref", "ood", "empty"])
    assert list(table) == ["ref", "ood"]
    ref, ood_ = table["ref"], table["ood"]
    assert (ref["inputs"], ref["samples"], ood_["samples"]) == (2, 4, 2)
    assert ref["explosions"] == 0 and ood_["explosions"] == 0.5 and ood_["inputs_exploding"] == 1
    assert ref["with_artifacts"] == 0.25 and ref["artifact_fraction"] == pytest.approx(1 / 16 / 4)
    assert ref["max_abs"] == 2.0 and ood_["nonfinite"] == 1 and ood_["max_abs"] == 0.5
    assert ref["min_scale"] == pytest.approx(0.2) and ood_["min_scale"] == pytest.approx(1e-4)


def test_bin_medians_match_binned_rate_bins():
    rng = np.random.default_rng(0)
    scores = rng.lognormal(size=1000)
    binned = ood.binned_rate(scores, rng.random(1000) < 0.1, 10)
    medians, idx = report.bin_medians(binned.edges, scores)
    assert np.array_equal(np.bincount(idx, minlength=10), binned.count)
    assert np.all(np.diff(medians) > 0)
    assert np.all((medians >= binned.edges[:-1]) & (medians <= binned.edges[1:]))


def test_decile_summary_counts_nonfinite_apart():
    edges = np.array([0.0, 1.0, 2.0])
    score = np.array([0.5, 0.6, 1.5, 1.7])  # two pixels per bin
    spread = np.array([0.1, 0.3, math.inf, 0.2])
    sample_score = np.repeat(score, 2)  # two samples per pixel
    events = np.array([0, 0, 1, 0, 1, 1, 1, 0], dtype=bool)
    mag = np.array([0.5, 0.6, 2.0, 0.4, math.inf, 5e3, math.inf, 0.9])
    low, high = report.decile_summary(edges, score, spread, sample_score, events, mag)
    assert low["median_spread"] == pytest.approx(0.2) and low["nonfinite_spread"] == 0
    assert low["exploded"] == 0 and low["artifact_size"] == 2.0 and low["max_finite"] == 2.0
    assert high["nonfinite_spread"] == 0.5 and high["exploded"] == 0.75
    assert math.isinf(high["artifact_size"]) and high["nonfinite_artifacts"] == pytest.approx(2 / 3)
    assert high["max_finite"] == 5e3
    with pytest.raises(ValueError, match="one value per pixel"):
        report.decile_summary(edges, score, spread[:3], sample_score, events, mag)


def test_style_sets_legend_and_title_fonts_of_at_least_ten_points():
    from matplotlib.font_manager import FontProperties

    with matplotlib.rc_context():
        plotting.style()
        rc = matplotlib.rcParams
        for key in ("legend.fontsize", "axes.titlesize", "figure.titlesize", "axes.labelsize", "legend.title_fontsize"):
            size = FontProperties(size=rc[key]).get_size_in_points()
            assert size >= plotting.MIN_FONT_SIZE >= 10, (key, size)
        fig, ax = plt.subplots()
        ax.plot([0, 1], label="a")
        ax.set_title("t")
        assert ax.legend().get_texts()[0].get_fontsize() >= 10 and ax.title.get_fontsize() >= 10
        plt.close(fig)


def test_seed_styles_differ_in_line_style_and_marker_not_colour():
    styles = [plotting.seed_style("affine", i) for i in range(5)]
    assert len({s["color"] for s in styles}) == 1
    assert len({str(s["ls"]) for s in styles}) == 5 and len({s["marker"] for s in styles}) == 5
    with pytest.raises(ValueError, match="unknown family"):
        plotting.seed_style("nope", 0)


def test_plot_finite_marks_nonfinite_values_in_a_labelled_strip_not_as_data():
    fig, ax = plt.subplots()
    finite = plotting.plot_finite(ax, [1, 2, 3, 4], [1.0, math.inf, 3.0, math.nan], marker="o", label="a")
    assert finite.tolist() == [True, False, True, False]
    assert ax.lines[0].get_xdata().tolist() == [1, 3] and ax.lines[0].get_ydata().tolist() == [1, 3]
    strip = plotting.nonfinite_strip(ax)
    assert strip is plotting.nonfinite_strip(ax)  # one strip per axes
    assert strip.lines[0].get_xdata().tolist() == [2, 4]
    assert any(t.get_text() == plotting.NONFINITE_LABEL for t in strip.texts)
    plotting.plot_finite(ax, [1, 2], [1.0, 2.0])  # all finite: no new strip marks
    assert len(strip.lines) == 1
    with pytest.raises(ValueError, match="same length"):
        plotting.plot_finite(ax, [1, 2], [1.0])
    plt.close(fig)


# a number compared with (``x > 1e30``) is a threshold, not a stand-in: only other uses count
SENTINELS = re.compile(r"(?<![<>]\s)(?<![<>])(?<![\w.])(1e8|1e\+?38|1e\+?39|1e-7|1e30)(?![\w.])")
CHAPTERS = sorted((ROOT / "chapters").glob("0[1-6]_*.py"))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_draw_no_sentinel_in_place_of_a_non_finite_value(chapter):
    """A stand-in such as 1e38 for inf, or a floor of 1e-7 for zero on a log axis, reads as data."""
    hits = [
        line.strip() for line in chapter.read_text().splitlines() if not line.startswith("#") and SENTINELS.search(line)
    ]
    assert not hits, hits


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_set_no_font_below_ten_points(chapter):
    small = re.compile(r"fontsize\s*=\s*([0-9.]+)")
    hits = [m.group(0) for m in small.finditer(chapter.read_text()) if float(m.group(1)) < plotting.MIN_FONT_SIZE]
    assert not hits, hits


def test_the_sentinel_check_tells_a_stand_in_from_a_threshold():
    assert SENTINELS.search("y = x.nan_to_num(posinf=1e38)") and SENTINELS.search("ax.set_ylim(1e-7, 1)")
    assert not SENTINELS.search("assert v > 1e30") and not SENTINELS.search("if f >1e8:")
