"""Chapter tooling: keep .py/.ipynb pairs in step, and render the course.

    python tools/notebooks.py sync            # chapters/NN_*.py -> NN_*.ipynb (no outputs)
    python tools/notebooks.py check           # exit 1 if a pair's cells differ
    python tools/notebooks.py book --out build  # execute every chapter: HTML, index, slide decks, PDFs
    python tools/notebooks.py book 01 03        # only chapters 1 and 3
    python tools/notebooks.py student         # students/NN_*.ipynb: solutions replaced by stubs

The .py files (jupytext percent format) are the sources; the .ipynb files are generated.
Pairs are compared by cell type and source, never by file times. `sync` also writes, from
REPOSITORY below, every chapter's Colab set-up cell and the Colab badges (chapters and README).
"""

from __future__ import annotations

import argparse
import ast
import html
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
STUDENTS = ROOT / "students"

REPOSITORY = "https://github.com/minflow-course/minflow"
"""The one place that names the GitHub repository the course is cloned from on Colab and that the
Colab badges open. No public copy of the course lives at this address yet: to use Colab, put the
course in a GitHub repository of your own (a fork, or an upload of this folder), write its URL
here, run `make notebooks`, and commit and push the result."""
BRANCH = "main"

SETUP_CELL = """# On Colab: fetch the course and install only what Colab lacks (Colab's torch, numpy and
# ipywidgets stay). Locally `make lab` has done this already, and this cell does nothing.
REPO = "@REPOSITORY@"  # the course's GitHub repository; a fork's URL goes here
import sys

if "google.colab" in sys.modules:
    import subprocess
    from pathlib import Path

    course = Path("minflow").resolve()  # /content/minflow on Colab
    if not course.exists():
        clone = subprocess.run(
            ["git", "clone", "-q", "--depth", "1", REPO, str(course)], capture_output=True, text=True
        )
        if clone.returncode != 0:
            raise RuntimeError(
                f"Could not clone {REPO}: {clone.stderr.strip()}\\n"
                "Put the course in a GitHub repository you can read (a fork, or an upload of the course "
                "folder), set REPO at the top of this cell to its URL, and run the cell again; or upload "
                f"the course folder to {course} and run the cell again (it then skips the clone)."
            )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{course}[colab]"], check=True)
    sys.path.insert(0, str(course))@WIDGETS@"""
"""Every chapter's first code cell (`sync` writes it into the sources): @REPOSITORY@ is REPOSITORY,
and @WIDGETS@ turns on Colab's widget manager in the chapters that import ipywidgets."""
WIDGETS = """
    from google.colab import output

    output.enable_custom_widget_manager()  # this chapter's sliders need it on Colab"""


def colab_url(stem: str = "") -> str:
    """The address that opens chapters/<stem>.ipynb of REPOSITORY in Colab (no stem: the repository's)."""
    base = f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}/blob/{BRANCH}/"
    return base + f"chapters/{stem}.ipynb" if stem else base


def setup_cell(source: str) -> str:
    """The first code cell of a chapter whose source text is `source` (the widget manager if it uses widgets)."""
    widgets = WIDGETS if "import ipywidgets" in source else ""
    return SETUP_CELL.replace("@REPOSITORY@", REPOSITORY).replace("@WIDGETS@", widgets)


def point_at_repository(text: str, setup: bool = True) -> str:
    """`text` with its Colab badges pointing at REPOSITORY and (a chapter source) its set-up cell rewritten."""
    text = re.sub(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/[^/\s]+/", colab_url(), text)
    if setup:
        cell = re.compile(r'(# %% tags=\["colab"\]\n).*?(?=\n+# %%)', re.S)
        text = cell.sub(lambda m: m.group(1) + setup_cell(text), text, count=1)
    return text


def _rewrite(path: Path, setup: bool = True) -> None:
    """Point `path` at REPOSITORY (see point_at_repository), writing it only if that changes it."""
    text = path.read_text()
    if (new := point_at_repository(text, setup)) != text:
        path.write_text(new)


def sources() -> list[Path]:
    """Every chapter source chapters/NN_name.py, in order."""
    return sorted(p for p in CHAPTERS.glob("[0-9][0-9]_*.py"))


def cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def notebook(src: Path):
    """The notebook of a chapter source: outputs empty, deterministic cell ids, slide metadata."""
    import jupytext

    nb = jupytext.read(src)
    nb.metadata.setdefault("kernelspec", {"display_name": "Python 3", "language": "python", "name": "python3"})
    nb.metadata.pop("jupytext", None)
    for index, cell in enumerate(nb.cells):
        cell.id = f"c{index:03d}"  # deterministic ids: re-syncing an unchanged source changes nothing
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        # slides: the title and every "## " section start a new slide; other cells follow on it
        starts = cell.cell_type == "markdown" and cell.source.lstrip().startswith(("# ", "## "))
        cell.metadata["slideshow"] = {"slide_type": "slide" if starts else "-"}
    return nb


def sync(paths: list[Path] | None = None) -> list[Path]:
    """Write the .ipynb of every source (after pointing its set-up cell and badge at REPOSITORY)."""
    import nbformat

    _rewrite(ROOT / "README.md", setup=False)
    written = []
    for src in paths or sources():
        _rewrite(src)
        out = src.with_suffix(".ipynb")
        nbformat.write(notebook(src), out)
        written.append(out)
    return written


def _names(source: str, kind: type) -> set[str]:
    """Names a cell assigns (kind=ast.Store) or reads (kind=ast.Load)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, kind)}


def _defined(source: str) -> set[str]:
    """Names a solution leaves for later cells: what it assigns, defines and imports, but not its
    loop and comprehension variables nor the names local to its functions."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)  # and not what its body assigns
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            for child in [node.iter, *node.body, *node.orelse]:  # not the loop variable
                visit(child)
        elif not isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            for child in ast.iter_child_nodes(node):
                visit(child)

    visit(tree)
    return names


def needed(solution: str, check: str) -> list[str]:
    """The names a solution defines that its check reads: what a student must define."""
    return sorted(_defined(solution) & _names(check, ast.Load))


DEFAULT_HINT = "re-read the exercise above; the check cell below tests your answer."


def stub(solution: str, check: str, hint: str | None, number: int | None = None) -> str:
    """What a student sees instead of a solution: the names the check needs, and a hint."""
    lines = [
        f"# Exercise {number}: your solution here." if number else "# Your solution here.",
        f"# Hint: {hint or DEFAULT_HINT}",
    ]
    lines += [f"{name} = ...  # define this; the check below uses it" for name in needed(solution, check)]
    return "\n".join(lines)


def markdown_stub(hint: str | None) -> str:
    """What a student sees instead of a written answer: plain text, no headings."""
    return f"*Your answer here.* Hint: {hint or DEFAULT_HINT}"


def not_done_guard(number: int | None, names: list[str]) -> str:
    """The lines a student version puts before a check, so that an unfilled stub fails plainly."""
    exercise = f"Exercise {number}" if number else "This exercise"
    return (
        f"for _name in {names!r}:  # a plain message while a stub is still `...`\n"
        f'    assert globals().get(_name, ...) is not ..., f"{exercise} is not done yet: define `{{_name}}`"\n\n'
    )


def student_version(nb):
    """A copy of a chapter with every `solution` cell replaced by a stub, and a not-done-yet
    guard before each check."""
    import copy

    nb = copy.deepcopy(nb)
    number, names = None, []
    for i, cell in enumerate(nb.cells):
        tags = cell.metadata.get("tags", [])
        heading = (
            re.search(r"^(?:#+ *|\*\*)Exercise (\d+)", cell.source, re.M) if cell.cell_type == "markdown" else None
        )
        if heading and "solution" not in tags:
            number = int(heading.group(1))
        if "solution" not in tags:
            continue
        # a solution may span several cells; the check is the first cell after them
        check = next((c for c in nb.cells[i + 1 :] if "solution" not in c.metadata.get("tags", [])), None)
        hint = cell.metadata.get("hint")
        if cell.cell_type == "markdown":
            cell.source = markdown_stub(hint)
        else:
            names += needed(cell.source, check.source if check else "")
            cell.source = stub(cell.source, check.source if check else "", hint, number)
        cell.metadata["tags"] = [t for t in tags if t != "solution"] + ["exercise"]
        if check is not None and check is nb.cells[i + 1] and names:
            check.source = not_done_guard(number, sorted(set(names))) + check.source
            names = []
    return nb


def students(out: Path = STUDENTS) -> list[Path]:
    """Write the student version of every chapter notebook into `out`."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources():
        nb = student_version(notebook(src))
        path = out / f"{src.stem}.ipynb"
        nbformat.write(nb, path)
        written.append(path)
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


KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}
"""What the book's kernels run with on top of this process's environment: figures go inline into
the pages and decks whatever MPLBACKEND says here (`make test` sets Agg, which shows nothing)."""


def pdf(page: Path) -> Path | None:
    """`page` printed to a PDF beside it by headless Chromium; None where no Chromium is installed."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        return None
    out = page.with_suffix(".pdf")
    root = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium refuses root (containers) otherwise
    flags = ["--headless", "--disable-gpu", "--no-pdf-header-footer", f"--print-to-pdf={out}"]
    subprocess.run([browser, *root, *flags, page.resolve().as_uri()], check=True, capture_output=True, timeout=600)
    return out


def book(out: Path, timeout: int = 3600, chapters: list[Path] | None = None) -> None:
    """Execute every chapter (full mode unless MINFLOW_QUICK=1): HTML pages, an index, slide decks,
    and a PDF of each page where Chromium is installed (`apt-get install chromium`, say)."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter, SlidesExporter

    out.mkdir(parents=True, exist_ok=True)
    (out / "slides").mkdir(exist_ok=True)
    rows = []
    for src in chapters or sources():
        nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
        start = time.time()
        client = NotebookClient(
            nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}
        )
        client.execute(env={**os.environ, **KERNEL_ENV})
        seconds = time.time() - start
        body, _ = HTMLExporter().from_notebook_node(nb)
        (out / f"{src.stem}.html").write_text(body)
        printed = pdf(out / f"{src.stem}.html")
        deck, _ = SlidesExporter().from_notebook_node(nb)  # reveal.js; one slide per "## " section
        (out / "slides" / f"{src.stem}.slides.html").write_text(deck)
        title = next((c.source.splitlines()[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown"), src.stem)
        rows.append((src.stem, title, seconds, printed))
        print(f"{src.stem}: {seconds:.0f} s", flush=True)
    items = "\n".join(
        f'<li><a href="{s}.html">{html.escape(t)}</a>'
        + (f' (<a href="{s}.pdf">PDF</a>)' if printed else "")
        + f" <small>({sec:.0f} s)</small></li>"
        for s, t, sec, printed in rows
    )
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
    b.add_argument("only", nargs="*", help="chapter numbers (01, 03, ...) to render; default: all")
    st = sub.add_parser("student")
    st.add_argument("--out", type=Path, default=STUDENTS)
    args = parser.parse_args(argv)
    if args.cmd == "sync":
        for p in sync():
            print(f"wrote {p.relative_to(ROOT)}")
    elif args.cmd == "check":
        problems = mismatches()
        print("\n".join(problems) or "all chapter pairs in step")
        return 1 if problems else 0
    elif args.cmd == "student":
        for p in students(args.out):
            print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    else:
        chosen = [src for src in sources() if src.name[:2] in args.only]
        if args.only and len(chosen) != len(set(args.only)):
            parser.error(f"no chapter for some of {args.only}")
        book(args.out, chapters=chosen or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
