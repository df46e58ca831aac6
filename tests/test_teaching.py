"""The teaching kit: Colab set-up cells, exercises with tagged solutions, student versions, slides."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

CHAPTERS = ROOT / "chapters"
SOURCES = notebooks.sources()
IDS = [p.stem for p in SOURCES]


def first_code_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_colab_badge_and_setup_cell_come_from_the_one_repository_setting(src):
    nb = notebooks.notebook(src)
    title = nb.cells[0].source
    assert title.startswith("# "), "a chapter opens with its title"
    assert notebooks.colab_url(src.stem) in title
    assert notebooks.colab_url(src.stem) in (ROOT / "README.md").read_text(), "README lists every chapter"
    setup = first_code_cell(nb)
    assert "colab" in setup.metadata["tags"]
    assert setup.source == notebooks.setup_cell(src.read_text()), (
        f"run `make notebooks` to rewrite {src.name}'s set-up cell"
    )


def _run_setup_cell(src, repo: str, tmp_path: Path, monkeypatch) -> list:
    """Run a chapter's set-up cell in this process, in tmp_path, as if on Colab (a fake google.colab)."""
    widget_calls: list = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: widget_calls.append(1))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.chdir(tmp_path)
    cell = notebooks.setup_cell(src.read_text()).replace(notebooks.REPOSITORY, repo)
    exec(compile(cell, f"{src.stem}[setup]", "exec"), {})
    return widget_calls


def test_colab_cell_does_nothing_outside_colab(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    exec(compile(notebooks.setup_cell(SOURCES[0].read_text()), "setup", "exec"), {})
    assert sys.path == path_before and list(tmp_path.iterdir()) == []


def test_colab_cell_says_what_to_do_when_the_clone_fails(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="set REPO at the top of this cell"):
        _run_setup_cell(SOURCES[0], f"file://{tmp_path}/no-such-repository", tmp_path, monkeypatch)


def test_colab_extra_keeps_what_colab_ships():
    """Colab's torch, numpy and ipywidgets 7.7 satisfy what the set-up cell installs, so pip keeps them."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    colab = {r.name: r.specifier for r in map(Requirement, project["optional-dependencies"]["colab"])}
    assert colab["ipywidgets"].contains("7.7.1")
    assert not {"torch", "numpy", "jupyterlab", "jupytext", "nbconvert"} & set(colab)


def test_colab_cell_clones_and_installs_and_the_chapter_imports_work(tmp_path):
    """Chapter 3's set-up cell under a fake google.colab, cloning this repository (its committed
    HEAD) through file://; pip resolves for real but only reports (no index, nothing installed).
    Then the chapter's import cell runs against the fresh clone."""
    src = CHAPTERS / "03_exploding_inverse.py"
    nb = notebooks.notebook(src)
    imports = [c for c in nb.cells if c.cell_type == "code"][1].source
    script = "\n".join(
        [
            "import sys, types",
            "colab = types.ModuleType('google.colab')",
            "colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: print('WIDGET MANAGER ON'))",
            "sys.modules['google.colab'] = colab",
            notebooks.setup_cell(src.read_text()).replace(notebooks.REPOSITORY, f"file://{ROOT}"),
            imports,
            "import minflow; print('MINFLOW FROM', minflow.__file__)",
        ]
    )
    report = tmp_path / "pip-report.json"
    # pip only reports what it would install; "0" is how pip's environment spells --no-build-isolation
    pip_env = {"PIP_DRY_RUN": "1", "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "0", "PIP_REPORT": str(report)}
    env = {**os.environ, **pip_env, "MPLBACKEND": "Agg", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WIDGET MANAGER ON" in run.stdout
    assert f"MINFLOW FROM {tmp_path / 'minflow' / 'minflow' / '__init__.py'}" in run.stdout
    clone_head, our_head = (
        subprocess.run(["git", "rev-parse", "HEAD"], cwd=d, capture_output=True, text=True).stdout
        for d in (tmp_path / "minflow", ROOT)
    )
    assert clone_head == our_head, "the cell cloned this repository's HEAD"
    would_install = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert would_install == ["minflow"], "on a runtime that has the dependencies, pip adds only minflow"


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
    solution = (
        "a = 1\nb = a + 2\ntmp = 5\nfor f in range(3):\n    r = [s for s in range(f)]\n"
        "def g(x):\n    local = x\n    return local"
    )
    stub = notebooks.stub(
        solution, "assert b == 3 and a and g(1) and f and r and s and local", hint="add two", number=2
    )
    assert stub.startswith("# Exercise 2:") and "# Hint: add two" in stub
    assert "a = ..." in stub and "b = ..." in stub and "g = ..." in stub and "r = ..." in stub
    assert "tmp" not in stub and "f = ..." not in stub and "s = ..." not in stub and "local" not in stub


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_every_solution_has_a_hint_of_its_own(src):
    nb = notebooks.notebook(src)
    hints = [c.metadata.get("hint") for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert all(hints), f"{src.stem}: a solution cell has no hint"
    assert len(set(hints)) == len(hints), f"{src.stem}: two solutions share a hint"


@pytest.mark.parametrize("src", SOURCES, ids=IDS)
def test_an_unfilled_stub_says_which_exercise_is_not_done(src):
    """Run each student stub, then its check: the check names the exercise and what to define."""
    nb = notebooks.student_version(notebooks.notebook(src))
    checked = 0
    for i, cell in enumerate(nb.cells):
        if "exercise" in cell.metadata.get("tags", []) and cell.cell_type == "markdown":
            assert not cell.source.lstrip().startswith("#"), "a written answer's stub is plain text, no heading"
        if "check" not in cell.metadata.get("tags", []) or "not done yet" not in cell.source:
            continue
        scope: dict = {}
        for stub in nb.cells[:i]:
            if "exercise" in stub.metadata.get("tags", []) and stub.cell_type == "code":
                exec(stub.source, scope)
        with pytest.raises(AssertionError, match=r"^Exercise \d+ is not done yet: define `\w+`$"):
            exec(cell.source, scope)
        checked += 1
    assert checked >= 3


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


def test_book_pages_decks_and_pdfs_show_every_figure(tmp_path, monkeypatch):
    """Chapter 1 (quick mode) through `make book`'s code path, with MPLBACKEND=Agg set as `make`
    sets it for tests: every plt.show() of the chapter is an image in the page and in the deck."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINFLOW_QUICK", "1")
    src = CHAPTERS / "01_change_of_variables.py"
    notebooks.book(tmp_path, timeout=900, chapters=[src])
    figures = src.read_text().count("plt.show()")
    page = (tmp_path / f"{src.stem}.html").read_text()
    deck = (tmp_path / "slides" / f"{src.stem}.slides.html").read_text()
    assert figures >= 3
    assert page.count("data:image/png") >= figures and deck.count("data:image/png") >= figures
    index = (tmp_path / "index.html").read_text()
    if shutil.which("chromium"):
        assert (tmp_path / f"{src.stem}.pdf").read_bytes().startswith(b"%PDF")
        assert f'href="{src.stem}.pdf"' in index


def test_make_lab_opens_the_repository_root_and_runs_as_root():
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "lab", "VENV=.venv-dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )  # (a make inside `make test` prints directories)
    command = [line for line in dry.stdout.splitlines() if "jupyter lab" in line][-1]
    assert "jupyter lab --notebook-dir=." in command
    assert ("--allow-root" in command) == (os.geteuid() == 0)


def test_readme_says_what_quick_mode_changes():
    readme = (ROOT / "README.md").read_text()
    full, quick = re.search(
        r"^steps = mf\.pick\((\d+), (\d+)\)$", (CHAPTERS / "01_change_of_variables.py").read_text(), re.M
    ).groups()
    assert f"chapter 1: {quick} instead of {full}" in readme.replace("\n", " ")
    assert "`.ipynb`" in readme and "python3-venv" in readme and "--allow-root" in readme


def test_chapter3_slider_starts_where_the_first_drawing_is():
    source = (CHAPTERS / "03_exploding_inverse.py").read_text()
    assert source.count("continuous_update=False") == 2  # the two sliders redraw when released
    assert "redraw(seed_w.value, angle_w.value, logr_w.value)" in source  # the first drawing is the sliders' values


LEARNER_FACING = [*SOURCES, ROOT / "README.md", *sorted((ROOT / "minflow").rglob("*.py"))]  # docstrings too


@pytest.mark.parametrize("path", LEARNER_FACING, ids=[p.name for p in LEARNER_FACING])
def test_learner_facing_text_speaks_of_the_course_and_the_paper(path):
    """No tracker numbers, no study-internal jargon, no pass/fail printouts: a finding that goes
    against an expectation is told as a lesson."""
    text = path.read_text()
    for pattern in [r"(?i)\bissue \d", r"(?i)\bpilot\b", r"(?i)pre-registered", r"(?i)fixed before", r"\bFAILS\b"]:
        assert not re.search(pattern, text), f"{path.name}: {pattern}"


def test_readme_checkpoint_table_matches_the_manifests():
    """Each row of README's shipped-checkpoint table says what that checkpoint's manifest says:
    steps, training wall time, validation bits per dim and the command."""
    from minflow import checkpoints

    text = (ROOT / "README.md").read_text()
    table = text[text.index("| name | model | steps | train wall | val bpd | command |") :].split("\n\n")[0]
    rows = [line for line in table.splitlines() if re.match(r"\| `(sr|ll)_\w+` \|", line)]
    shipped = {n for n in checkpoints.available() if n.startswith(("sr_", "ll_"))}
    assert {re.match(r"\| `(\w+)`", row).group(1) for row in rows} == shipped, (
        "one row per shipped SR / low-light checkpoint"
    )
    for row in rows:
        name, _, steps, wall, bpd, command = (cell.strip() for cell in row.strip("|").split("|"))
        manifest = checkpoints.read_manifest(name.strip("`"))
        assert int(steps) == manifest["steps"], name
        assert wall == f"{manifest['wall_time_s']:.0f} s", name
        assert bpd == f"{manifest['metrics']['val_bpd']:.3f}", name
        new_form = manifest["command"]  # the README writes the older command forms as today's
        for old, new in (
            ("python -m minflow.train ", "python -m minflow train-sr "),
            ("python -m minflow.lowlight train ", "python -m minflow train-lowlight "),
        ):
            new_form = new_form.replace(old, new)
        assert command == f"`{new_form}`", name
