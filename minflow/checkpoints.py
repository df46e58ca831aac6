"""Shipped checkpoints: save with a manifest, load by name with a verified checksum.

A checkpoint ``NAME`` is two files in the data folder: ``NAME.pt`` (a state dict, loaded with
``weights_only=True``) and ``NAME.json``, its manifest: the builder and config that rebuild the
model, the command, seed and wall time that made it, its metrics, and the file's SHA-256.

The data folder is ``$MINFLOW_DATA`` when set, else the repository's ``data/`` beside the package.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Callable

import torch
from torch import nn

BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_builder(name: str):
    """Decorator: make a model constructor available to `load_pretrained` under `name`."""

    def wrap(fn):
        BUILDERS[name] = fn
        return fn

    return wrap


def data_dir() -> Path:
    """Where data and checkpoints live: $MINFLOW_DATA, else <repository>/data."""
    env = os.environ.get("MINFLOW_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def _paths(name: str, root: Path | None) -> tuple[Path, Path]:
    base = (root or data_dir()) / "checkpoints"
    return base / f"{name}.pt", base / f"{name}.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: nn.Module, name: str, builder: str, config: dict, record: dict, root: Path | None = None) -> Path:
    """Write NAME.pt and its manifest NAME.json; `record` holds command, seed, wall time, metrics."""
    if builder not in BUILDERS:
        raise KeyError(f"unknown builder {builder!r}; registered: {sorted(BUILDERS)}")
    pt, js = _paths(name, root)
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, pt)
    manifest = {
        "name": name,
        "builder": builder,
        "config": config,
        **record,
        "sha256": sha256(pt),
        "bytes": pt.stat().st_size,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    js.write_text(json.dumps(manifest, indent=2) + "\n")
    return pt


def available(root: Path | None = None) -> list[str]:
    """Names of the checkpoints present in the data folder."""
    folder = (root or data_dir()) / "checkpoints"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []


def read_manifest(name: str, root: Path | None = None) -> dict:
    _, js = _paths(name, root)
    if not js.exists():
        raise FileNotFoundError(f"no checkpoint named {name!r} in {js.parent}; available: {available(root)}")
    return json.loads(js.read_text())


def load_state(name: str, root: Path | None = None) -> tuple[dict, dict]:
    """(state dict, manifest) of checkpoint `name`, after checking the file's SHA-256."""
    manifest = read_manifest(name, root)
    pt, _ = _paths(name, root)
    how = f"Recreate it with: {manifest.get('command', '(command not recorded)')}"
    if not pt.exists():
        raise FileNotFoundError(f"checkpoint file {pt} is missing. {how}")
    digest = sha256(pt)
    if digest != manifest["sha256"]:
        raise RuntimeError(f"checkpoint {pt} is corrupt: SHA-256 {digest[:12]}... != manifest {manifest['sha256'][:12]}... {how}")
    return torch.load(pt, map_location="cpu", weights_only=True), manifest


def load_pretrained(name: str, device: torch.device | str = "cpu", root: Path | None = None) -> nn.Module:
    """Rebuild the model of checkpoint `name` from its manifest, load its weights, eval mode."""
    state, manifest = load_state(name, root)
    if manifest["builder"] not in BUILDERS:
        raise KeyError(f"checkpoint {name!r} needs builder {manifest['builder']!r}; import the module that registers it")
    model = BUILDERS[manifest["builder"]](**manifest["config"])
    model.load_state_dict(state)
    model.manifest = manifest
    return model.to(device).eval()
