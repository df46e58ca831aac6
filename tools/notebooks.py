"""Chapter tooling: keep .py/.ipynb pairs in step, and render the course.

    python tools/notebooks.py sync            # chapters/NN_*.py -> NN_*.ipynb (no outputs)
    python tools/notebooks.py check           # exit 1 if a pair's cells differ
    python tools/notebooks.py book --out build  # execute every chapter, write HTML + index

The .py files (jupytext percent format) are the sources; the .ipynb files are generated.
Pairs are compared by cell type and source, never by file times.
"""

from __future__ import annotations

import argparse
import html
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"


def sources() -> list[Path]:
    """Every chapter source chapters/NN_name.py, in order."""
    return sorted(p for p in CHAPTERS.glob("[0-9][0-9]_*.py"))


def cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def sync(paths: list[Path] | None = None) -> list[Path]:
    """Write the .ipynb of every source (outputs empty); returns the notebooks written."""
    import jupytext

    written = []
    for src in paths or sources():
        nb = jupytext.read(src)
        nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
        nb.metadata.pop("jupytext", None)
        for index, cell in enumerate(nb.cells):
            cell.id = f"c{index:03d}"  # deterministic ids: re-syncing an unchanged source changes nothing
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        out = src.with_suffix(".ipynb")
        jupytext.write(nb, out, fmt="ipynb")
        written.append(out)
    return written


def mismatches() -> list[str]:
    """Pairs whose cells differ, or sources without a notebook (and notebooks without a source)."""
    import jupytext
    import nbformat

    problems = []
    for src in sources():
        nbp = src.with_suffix(".ipynb")
        if not nbp.exists():
            problems.append(f"{src.name} has no {nbp.name}: run `make notebooks`")
        elif cells(jupytext.read(src)) != cells(nbformat.read(nbp, as_version=4)):
            problems.append(f"{src.name} and {nbp.name} differ: run `make notebooks`")
    for nbp in sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")):
        if not nbp.with_suffix(".py").exists():
            problems.append(f"{nbp.name} has no .py source")
    return problems


def book(out: Path, timeout: int = 3600) -> None:
    """Execute every chapter (in the caller's environment, full mode unless MINFLOW_QUICK=1) to HTML."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for src in sources():
        nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
        start = time.time()
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(CHAPTERS)}}).execute()
        seconds = time.time() - start
        body, _ = HTMLExporter().from_notebook_node(nb)
        (out / f"{src.stem}.html").write_text(body)
        title = next((c.source.splitlines()[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown"), src.stem)
        rows.append((src.stem, title, seconds))
        print(f"{src.stem}: {seconds:.0f} s", flush=True)
    items = "\n".join(f'<li><a href="{s}.html">{html.escape(t)}</a> <small>({sec:.0f} s)</small></li>' for s, t, sec in rows)
    (out / "index.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>minflow course</title>"
        f"<h1>minflow: the course</h1><p>Every chapter, executed.</p><ol>{items}</ol>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("sync")
    sub.add_parser("check")
    b = sub.add_parser("book")
    b.add_argument("--out", type=Path, default=ROOT / "build")
    args = parser.parse_args(argv)
    if args.cmd == "sync":
        for p in sync():
            print(f"wrote {p.relative_to(ROOT)}")
    elif args.cmd == "check":
        problems = mismatches()
        print("\n".join(problems) or "all chapter pairs in step")
        return 1 if problems else 0
    else:
        book(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
