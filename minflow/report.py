"""Compact text tables and summaries for the chapters' printed output.

Nothing here computes a result a chapter teaches: these helpers only pool, format and print what a
chapter measured (`format_table` for any table, `format_rows` and `cell` for tables laid out row by
row, `group_summary` for artifact reports by input group,
`bin_medians` and `decile_summary` for per-bin figures of a score). Non-finite numbers print as
``inf`` / ``nan`` and count as such; they are never replaced by a stand-in value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from .metrics import EXPLOSION

__all__ = ["bin_medians", "cell", "decile_summary", "format_rows", "format_table", "group_summary"]

Column = tuple[str, str, str]
"""(header, key, format spec): e.g. ("max|x|", "max_abs", ".3g")."""


def _cell(value, spec: str) -> str:
    """One table cell: strings as they are, None empty, non-finite numbers as inf / -inf / nan."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def format_table(rows: Iterable[Mapping | Sequence], columns: Sequence[Column], title: str | None = None) -> str:
    """A right-aligned text table, one line per row, as a string (``print`` it).

    Each column is ``(header, key, spec)``: the value ``row[key]`` (a mapping's key or a sequence's
    index) formatted with ``format(value, spec)``; strings print as they are, None as an empty cell,
    and a non-finite float as ``inf``, ``-inf`` or ``nan`` whatever the spec.
    Column widths fit the longest of header and cells, so no table needs hand-set widths.
    """
    if not columns:
        raise ValueError("format_table needs at least one column")
    cells = [[_cell(row[key], spec) for _, key, spec in columns] for row in rows]
    headers = [h for h, _, _ in columns]
    widths = [max([len(h), *(len(r[j]) for r in cells)]) for j, h in enumerate(headers)]
    lines = [title] if title else []
    lines.append("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def group_summary(results: Mapping[tuple[str, str], Mapping], groups: Iterable[str]) -> dict[str, dict]:
    """Pool per-input artifact reports by group.

    ``results`` maps ``(group, input name)`` to the dict of `minflow.metrics.artifact_report` (its
    per-sample ``fraction`` and ``explosion`` and its ``summary``). Per group, in the order of
    ``groups`` (groups without an input are left out): the number of inputs and samples, the mean
    artifact-pixel fraction, the share of samples with any artifact pixel and the share exploding,
    how many inputs exploded at least once, the largest finite |x| (nan if none is finite), the
    non-finite count and the smallest scale used.
    """
    table = {}
    for group in groups:
        rows = [r for (g, _), r in results.items() if g == group]
        if not rows:
            continue
        frac = torch.cat([r["fraction"].flatten() for r in rows])
        exploded = torch.cat([r["explosion"].flatten() for r in rows])
        finite_max = [r["summary"]["max_abs"] for r in rows if not math.isnan(r["summary"]["max_abs"])]
        scales = [r["summary"]["min_scale"] for r in rows if r["summary"].get("min_scale") is not None]
        table[group] = {
            "group": group,
            "inputs": len(rows),
            "samples": len(frac),
            "artifact_fraction": frac.mean().item(),
            "with_artifacts": (frac > 0).double().mean().item(),
            "explosions": exploded.double().mean().item(),
            "inputs_exploding": sum(r["summary"]["explosions"] > 0 for r in rows),
            "max_abs": max(finite_max) if finite_max else math.nan,
            "nonfinite": sum(r["summary"]["nonfinite"] for r in rows),
            "min_scale": min(scales) if scales else math.nan,
        }
    return table


def bin_medians(edges: Sequence[float], scores) -> tuple[np.ndarray, np.ndarray]:
    """The median score inside each bin of ``edges`` (as `minflow.ood.binned_rate` returns them), and
    the bin index of every score. Bin k holds edges[k] <= s < edges[k+1], the last also s == edges[-1]."""
    s = np.asarray(scores, dtype=float).ravel()
    edges = np.asarray(edges, dtype=float)
    k = max(len(edges) - 1, 1)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, k - 1)
    medians = np.array([np.median(s[idx == j]) if (idx == j).any() else math.nan for j in range(k)])
    return medians, idx


def decile_summary(
    edges: Sequence[float],
    score,
    spread,
    sample_score,
    events,
    magnitude,
    explosion: float = EXPLOSION,
) -> list[dict]:
    """Per score bin, the figures of chapter 6's uncertainty-versus-explosion comparison.

    ``score`` and ``spread`` hold one value per pixel (spread: e.g. the samples' median absolute
    deviation, inf where most samples are non-finite); ``sample_score``, ``events`` (bool: the
    paper's artifact criterion) and ``magnitude`` (largest |x|, inf if non-finite) one per pixel and
    sample. Per bin: ``median_spread``; ``nonfinite_spread``, the share of its pixels whose spread is
    not finite; ``exploded``, the share of pixel-samples with magnitude > ``explosion`` or non-finite;
    ``artifact_size``, the median magnitude of its flagged pixel-samples (``method="higher"``, so it
    is a value that occurred: inf when most of them are non-finite; nan when none is flagged);
    ``nonfinite_artifacts``, the share of flagged pixel-samples that are non-finite; and
    ``max_finite``, the largest finite magnitude (nan if there is none).
    """
    _, idx = bin_medians(edges, score)
    _, idx_rep = bin_medians(edges, sample_score)
    spread = np.asarray(spread, dtype=float).ravel()
    events = np.asarray(events, dtype=bool).ravel()
    mag = np.asarray(magnitude, dtype=float).ravel()
    if not (len(idx) == len(spread) and len(idx_rep) == len(events) == len(mag)):
        raise ValueError(
            "score and spread must have one value per pixel; sample_score, events, magnitude one per pixel-sample"
        )
    rows = []
    for k in range(max(len(edges) - 1, 1)):
        m, sp = mag[idx_rep == k], spread[idx == k]
        art = m[events[idx_rep == k]]
        finite = m[np.isfinite(m)]
        rows.append(
            {
                "bin": k + 1,
                "median_spread": float(np.median(sp)) if sp.size else math.nan,
                "nonfinite_spread": float(np.mean(~np.isfinite(sp))) if sp.size else math.nan,
                "exploded": float(np.mean(~np.isfinite(m) | (m > explosion))) if m.size else math.nan,
                "artifact_size": float(np.quantile(art, 0.5, method="higher")) if art.size else math.nan,
                "nonfinite_artifacts": float(np.mean(~np.isfinite(art))) if art.size else math.nan,
                "max_finite": float(finite.max()) if finite.size else math.nan,
            }
        )
    return rows


def cell(value, spec: str | None = None) -> str:
    """One table cell: `value` formatted with `spec` (default: integers as they are, other numbers
    ".3g"); None is "-", a non-finite number "non-finite", a string stays as it is."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return "non-finite"
    if spec is None:
        spec = "d" if isinstance(value, int) else ".3g"
    return format(value, spec)


def format_rows(head: Sequence[str], rows: Sequence[Sequence], transpose: bool = False) -> str:
    """`rows` under `head` as aligned text, first column left-aligned, the others right-aligned: the
    form of `format_table` for rows already laid out as lists (the spline chapters' model tables).

    Cells that are not strings go through `cell`. With ``transpose=True`` the header becomes the
    first column and each row a column (a few models by many measures: a narrow table).
    """
    head = [str(h) for h in head]
    rows = [[cell(c) for c in row] for row in rows]
    if any(len(row) != len(head) for row in rows):
        raise ValueError(f"every row needs {len(head)} cells (one per header entry)")
    if transpose:
        columns = [[h, *(row[i] for row in rows)] for i, h in enumerate(head)]
        head, rows = columns[0], columns[1:]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])
