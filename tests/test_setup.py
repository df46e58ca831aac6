"""The project's set-up: dependency lists agree, CI runs README's command, the core stays light,
and every chapter's .py source and .ipynb notebook have the same cells."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import notebooks  # noqa: E402

CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name, where they differ


def _split(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def test_environment_yml_lists_what_pyproject_lists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for extra in ("course", "test") for r in project["optional-dependencies"][extra]
    ]
    pip_side = {CONDA_NAMES.get(n, n): s for n, s in map(_split, wanted)}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = dict(
        _split(d) for d in env["dependencies"] if isinstance(d, str) and not d.startswith(("python", "pip"))
    )
    assert conda_side == pip_side
    assert any(isinstance(d, dict) and "--editable ." in d.get("pip", []) for d in env["dependencies"])


def test_core_needs_only_torch_and_numpy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(_split(r)[0] for r in project["dependencies"]) == ["numpy", "torch"]
    code = (
        "import sys, minflow, minflow.checkpoints, minflow.ood, minflow.splines, minflow.data;"
        # (tqdm is not listed: torch itself imports it when it is installed)
        "heavy = {'matplotlib', 'skimage', 'sklearn', 'scipy', 'PIL', 'IPython'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TEST_ENV := MINFLOW_QUICK=1 ", makefile, re.M), "the test run is in quick mode"
    run = re.search(r"^test:.*\n\t\$\(TEST_ENV\) \$\(PY\) -m pytest (.*)$", makefile, re.M)
    assert run and {"tests", "chapters", "--nbval-lax"} <= set(run[1].split()), (
        "unit tests and every chapter under nbval"
    )


def test_chapter_pairs_are_in_step():
    assert notebooks.sources(), "no chapters found"
    assert notebooks.mismatches() == []


def test_notebooks_carry_no_outputs():
    import nbformat

    for src in notebooks.sources():
        nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{src.stem}.ipynb has outputs in cells {dirty}: run `make notebooks`"


def test_ci_proves_the_oldest_and_newest_torch():
    """CI tests the torch range the package claims: its floor (pyproject, environment.yml, README)
    is the version the oldest leg installs, and the newest leg takes pip's pick with no local wheels."""
    makefile = (ROOT / "Makefile").read_text()
    oldest = re.search(r"^TORCH_OLDEST \?= torch==(\S+)$", makefile, re.M).group(1)
    assert re.search(r"^TORCH_NEWEST \?= torch$", makefile, re.M)
    assert re.search(
        r"^test-newest:\n\tPIP_FIND_LINKS=\$\$\(mktemp -d\) \$\(MAKE\) test .*TORCH='\$\(TORCH_NEWEST\)'",
        makefile,
        re.M,
    )
    assert re.search(r"^unit-oldest:\n\t\$\(MAKE\) unit .*TORCH='\$\(TORCH_OLDEST\)'", makefile, re.M)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"torch>={oldest}" in project["dependencies"]
    assert f"pytorch>={oldest}" in (ROOT / "environment.yml").read_text()
    assert f"torch {oldest}" in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make test-newest") < ci.index("make unit-oldest")


def test_make_test_runs_ruff():
    """`make test` lints and checks the formatting first (ruff, pinned in the test extra)."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: lint$", makefile, re.M)
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert (
        "ruff check minflow tests tools benchmarks" in lint
        and "ruff format --check minflow tests tools benchmarks" in lint
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert any(r.startswith("ruff==") for r in project["project"]["optional-dependencies"]["test"])
    assert project["tool"]["ruff"]["line-length"] == 120
