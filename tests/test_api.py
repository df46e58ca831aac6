"""The public API: every module declares `__all__`, and the chapters use only names it lists."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import minflow as mf

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(mf.__path__, "minflow.") if m.name != "minflow.__main__") + [
    "minflow"
]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_all_and_its_names_exist(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
    assert len(set(module.__all__)) == len(module.__all__), f"{name}.__all__ repeats a name"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


def test_internal_helpers_are_not_exported():
    for name in ("cond_for", "leaves", "check_tensor", "nanmin"):
        assert name not in mf.__all__ and not hasattr(mf, name)


def _module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> minflow module it stands for, from a chapter's imports."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "minflow":
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "minflow":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if importlib.util.find_spec(full.split(".")[0]) and _is_module(full):
                    aliases[a.asname or a.name] = full
    return aliases


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _used_names(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from minflow... import name` and `alias.name` attribute use in a chapter."""
    tree = ast.parse(path.read_text())
    aliases = _module_aliases(tree)
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "minflow":
            used += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Attribute):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                module = aliases[base.id]
                for attr in chain:  # mf.sr.SRFlow: sr in minflow, SRFlow in minflow.sr
                    used.append((module, attr))
                    if not _is_module(f"{module}.{attr}"):
                        break
                    module = f"{module}.{attr}"
    return used


@pytest.mark.parametrize("chapter", sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_chapters_use_only_the_public_api(chapter):
    private = sorted({f"{m}.{n}" for m, n in _used_names(chapter) if n not in importlib.import_module(m).__all__})
    assert not private, f"{chapter.name} uses names outside __all__: {private}"


def test_the_api_page_names_every_export_and_the_readme_links_it():
    page = (ROOT / "docs" / "API.md").read_text()
    missing = [n for n in mf.__all__ if f"`{n}`" not in page and f"`mf.{n}`" not in page]
    assert not missing, f"docs/API.md does not mention {missing}"
    assert "docs/API.md" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", mf.checkpoints.available())
def test_every_shipped_manifest_config_maps_to_the_current_names_and_builds(name):
    from minflow.checkpoints import RENAMED_KEYS, build, read_manifest, upgrade_config

    manifest = read_manifest(name)
    builder, config = manifest["builder"], manifest["config"]
    current = upgrade_config(builder, config)
    assert not set(RENAMED_KEYS.get(builder, {})) & set(current)
    model = build(builder, config)
    if hasattr(model, "config"):  # the image flows record their config; the toy flow is built from keywords
        assert model.config.items() >= current.items()


def test_old_config_keys_map_only_for_their_builder():
    from minflow.checkpoints import upgrade_config

    assert upgrade_config("srflow", {"steps": 2, "width": 8, "nf": 4}) == {"flow_steps": 2, "hidden": 8, "nf": 4}
    assert upgrade_config("toy", {"steps": 2, "hidden": 8}) == {"flow_steps": 2, "hidden": 8}
    assert upgrade_config("mine", {"steps": 2, "width": 8}) == {"steps": 2, "width": 8}


def test_the_old_width_flag_still_parses():
    args = mf.cli.parser().parse_args(["train-sr", "--name", "x", "--width", "8", "--flow-steps", "2"])
    assert args.hidden == 8 and args.flow_steps == 2


def test_model_modules_import_neither_training_nor_the_command_line():
    import subprocess
    import sys

    code = (
        "import sys, minflow.sr, minflow.lowlight, minflow.toy, minflow.imageflow, minflow.ood, minflow.metrics; "
        "print(sorted(m for m in ('minflow.train', 'minflow.cli') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
