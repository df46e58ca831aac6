"""The teaching kit: Colab set-up cells, exercises with tagged solutions, student versions, slides."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

SOURCES = notebooks.sources()
IDS = [p.stem for p in SOURCES]


def first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_colab_badge_points_at_this_notebook(src):
    nb = notebooks.notebook(src)
    title = nb.cells[0].source
    assert title.startswith("# "), "a chapter opens with its title"
    assert f"colab.research.google.com/github/minflow-course/minflow/blob/main/chapters/{src.stem}.ipynb" in title
    assert f"chapters/{src.stem}.ipynb" in (ROOT / "README.md").read_text(), "README lists every chapter"


def _run_setup_cell(src, monkeypatch, colab: bool):
    calls = []
    fake = types.SimpleNamespace(run=lambda *a, **k: calls.append((a, k)))
    monkeypatch.setitem(sys.modules, "subprocess", fake)
    if colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    path_before = list(sys.path)
    cell = first_code_cell(notebooks.notebook(src))
    exec(compile(cell.source, f"{src.stem}[setup]", "exec"), {})
    added = [p for p in sys.path if p not in path_before]
    sys.path[:] = path_before
    return calls, added


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_colab_cell_installs_minflow_on_colab_only(src, monkeypatch):
    calls, added = _run_setup_cell(src, monkeypatch, colab=False)
    assert calls == [] and added == [], "outside Colab the set-up cell does nothing"
    calls, added = _run_setup_cell(src, monkeypatch, colab=True)
    assert len(calls) == 1
    command = calls[0][0][0]
    assert "git clone" in command and "pip install" in command and "[course]" in command
    # Colab's own torch and numpy stay: nothing pins or reinstalls them
    assert not re.search(r"\b(torch|numpy)\s*(==|<|>|~=)", command)
    assert "--force-reinstall" not in command and "--upgrade" not in command
    assert added == ["/content/minflow"], "the fresh clone is importable (data and checkpoints are found beside it)"


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_every_solution_has_a_check_and_the_chapter_ends_with_exercises(src):
    nb = notebooks.notebook(src)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    solutions = [i for i, t in enumerate(tags) if "solution" in t]
    assert solutions, f"{src.stem} has no exercises with tagged solutions"
    for i in solutions:  # a solution may span several cells; a check cell follows the last one
        j = i + 1
        while j < len(nb.cells) and "solution" in tags[j]:
            j += 1
        assert j < len(nb.cells) and "check" in tags[j], f"solution cell {i} of {src.stem} is not followed by a check"
        assert "assert" in nb.cells[j].source
    assert any("Exercises" in c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_student_versions_are_current_and_hide_the_solutions(src):
    path = notebooks.STUDENTS / f"{src.stem}.ipynb"
    assert path.exists(), f"{path.name} missing: run `make notebooks`"
    committed = nbformat.read(path, as_version=4)
    fresh = notebooks.student_version(notebooks.notebook(src))
    assert notebooks.cells(committed) == notebooks.cells(fresh), f"students/{path.name} is stale: run `make notebooks`"
    original = notebooks.notebook(src)
    for cell, orig in zip(committed.cells, original.cells):
        if "solution" in orig.metadata.get("tags", []):
            assert cell.source != orig.source and "Hint:" in cell.source
            assert "exercise" in cell.metadata["tags"]


def test_stub_names_what_the_check_needs():
    stub = notebooks.stub("a = 1\nb = a + 2\ntmp = 5", "assert b == 3 and a", hint="add two")
    assert "a = ..." in stub and "b = ..." in stub and "tmp" not in stub and "# Hint: add two" in stub


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_sections_start_slides(src):
    nb = notebooks.notebook(src)
    kinds = [c.metadata["slideshow"]["slide_type"] for c in nb.cells]
    assert kinds[0] == "slide" and kinds.count("slide") >= 3


def test_readme_assignment_example_runs():
    """The worked example in README's 'minflow in an assignment' runs as printed (fewer steps)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## minflow in an assignment") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "steps=2000" in code
    scope: dict = {}
    exec(compile(code.replace("steps=2000", "steps=20"), "README example", "exec"), scope)
    couplings = [layer for layer in scope["flow"].layers if type(layer).__name__ == "Coupling"]
    assert couplings and all(type(c.bijection).__name__ == "Clipped" for c in couplings)
    assert len(scope["far"]) > 0


def test_book_executes_chapters_into_html_with_an_index_and_decks(tmp_path, monkeypatch):
    """`make book`'s machinery on a two-section chapter: executed HTML, a table of contents, a deck."""
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "01_tiny.py").write_text(
        "# %% [markdown]\n# # Chapter 1: Tiny\n\n# %%\nanswer = 6 * 7\nprint('the answer is', answer)\n"
        "\n# %% [markdown]\n# ## A second section\n\n# %%\nassert answer == 42\n"
    )
    monkeypatch.setattr(notebooks, "CHAPTERS", chapters)
    notebooks.sync()
    notebooks.book(tmp_path / "build", timeout=120)
    page = (tmp_path / "build" / "01_tiny.html").read_text()
    assert "the answer is 42" in page  # executed, outputs kept
    assert 'href="01_tiny.html"' in (tmp_path / "build" / "index.html").read_text()
    deck = (tmp_path / "build" / "slides" / "01_tiny.slides.html").read_text()
    assert "reveal" in deck.lower() and deck.count("<section") >= 2
