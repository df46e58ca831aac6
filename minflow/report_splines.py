"""Compact text tables for the spline chapters (7-9): aligned columns, no pandas.

A table is a header and rows of cells; `cell` formats one number the way the course reports it
(non-finite values as "non-finite", missing ones as "-"), and `format_table` aligns the rows,
optionally transposed, so that a table with many measures and few models stays narrow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["cell", "format_table"]


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


def format_table(head: Sequence[str], rows: Sequence[Sequence], transpose: bool = False) -> str:
    """`rows` under `head` as aligned text: first column left-aligned, the others right-aligned.

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
