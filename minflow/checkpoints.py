"""Shipped checkpoints: save with a manifest, load by name with a verified checksum.

A checkpoint ``NAME`` is two files in the data folder: ``NAME.pt`` (a state dict, loaded with
``weights_only=True``) and ``NAME.json``, its manifest: the builder and config that rebuild the
model, the command, seed and wall time that made it, its metrics, the file's SHA-256 (``sha256``)
and the SHA-256 of the builder and config (``config_sha256``, see `config_digest`). Loading
checks both, so neither an edited .pt file nor an edited config loads another model silently.
NAME is a plain file name (letters, digits, ``_``, ``-``, ``.``) inside the checkpoints folder.

The builder is a name in `BUILDERS`: the course's models are listed there as "module:function"
and imported only when a checkpoint needs them (`builder`); `register_builder` adds your own.

The data folder is ``$MINFLOW_DATA`` when set, else the repository's ``data/`` beside the package.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib
import json
import os
import pickle
import platform
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "BUILDERS",
    "MANIFEST_KEYS",
    "RENAMED_KEYS",
    "available",
    "build",
    "builder",
    "config_digest",
    "data_dir",
    "load_pretrained",
    "load_state",
    "read_manifest",
    "register_builder",
    "save_checkpoint",
    "upgrade_config",
]

BUILDERS: dict[str, str | Callable[..., nn.Module]] = {
    "srflow": "minflow.sr:build_srflow",
    "llflow": "minflow.lowlight:build_llflow",
    "toy": "minflow.toy:toy_flow",
}
"""Builder name -> the model constructor, or "module:function" to import it from when first needed."""

RENAMED_KEYS: dict[str, dict[str, str]] = {
    "srflow": {"steps": "flow_steps", "width": "hidden"},
    "llflow": {"steps": "flow_steps", "width": "hidden"},
    "toy": {"steps": "flow_steps"},
}
"""Builder name -> {older config key: its name now}: older manifests and run states keep the old keys."""


def upgrade_config(name: str, config: dict) -> dict:
    """`config` of builder `name` with older keys renamed (`RENAMED_KEYS`); other builders' unchanged."""
    renamed = RENAMED_KEYS.get(name, {})
    return {renamed.get(key, key): value for key, value in config.items()}


def register_builder(name: str):
    """Decorator: make a model constructor available to `load_pretrained` under `name`."""

    def wrap(fn):
        BUILDERS[name] = fn
        return fn

    return wrap


def builder(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as `name`, importing its module on first use."""
    if name not in BUILDERS:
        raise KeyError(f"unknown builder {name!r}; registered: {sorted(BUILDERS)} (add one with register_builder)")
    fn = BUILDERS[name]
    if isinstance(fn, str):
        module, _, attr = fn.partition(":")
        fn = BUILDERS[name] = getattr(importlib.import_module(module), attr)
    return fn


def build(name: str, config: dict | object) -> nn.Module:
    """The model of builder `name` for `config`: a dict as manifests store it (older keys renamed,
    `upgrade_config`), or a config dataclass."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return builder(name)(**upgrade_config(name, config))


def data_dir() -> Path:
    """Where data and checkpoints live: $MINFLOW_DATA, else <repository>/data."""
    env = os.environ.get("MINFLOW_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
REQUIRED = {"builder": str, "config": dict, "sha256": str, "config_sha256": str}  # manifest keys loading needs
# the keys `save_checkpoint` writes itself; a record (command, seed, metrics, ...) may not set them
MANIFEST_KEYS = frozenset({"name", *REQUIRED, "bytes", "torch", "machine", "created"})


def check_name(name: str) -> str:
    """`name`, or a clear error unless it is a plain file name that stays in the checkpoints folder."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"a checkpoint name must be a plain file name (letters, digits, '_', '-', '.'; "
            f"not starting with '.'), got {name!r}"
        )
    return name


def _paths(name: str, root: Path | None) -> tuple[Path, Path]:
    """NAME.pt and NAME.json in the checkpoints folder (after `check_name`)."""
    check_name(name)
    base = (root or data_dir()) / "checkpoints"
    return base / f"{name}.pt", base / f"{name}.json"


def config_digest(builder: str, config: dict) -> str:
    """SHA-256 of the canonical JSON of ``{"builder": ..., "config": ...}`` (sorted keys, no spaces)."""
    text = json.dumps({"builder": builder, "config": config}, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    model: nn.Module, name: str, builder: str, config: dict | object, record: dict, root: Path | None = None
) -> Path:
    """Write NAME.pt and its manifest NAME.json; `record` holds command, seed, wall time, metrics.
    `config` is a dict or a config dataclass (stored as a dict)."""
    pt, js = _paths(name, root)
    if builder not in BUILDERS:
        raise KeyError(f"unknown builder {builder!r}; registered: {sorted(BUILDERS)}")
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    config = json.loads(json.dumps(config))  # as it will be read back (tuples become lists)
    digest = config_digest(builder, config)
    reserved = MANIFEST_KEYS & set(record)
    if reserved:
        raise ValueError(f"record must not set the manifest's own keys {sorted(reserved)}")
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, pt)
    manifest = {
        "name": name,
        "builder": builder,
        "config": config,
        **record,
        "sha256": sha256(pt),
        "config_sha256": digest,
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
    """The manifest NAME.json as a dict, after checking it is JSON and holds the keys loading needs."""
    _, js = _paths(name, root)
    if not js.exists():
        raise FileNotFoundError(f"no checkpoint named {name!r} in {js.parent}; available: {available(root)}")
    try:
        manifest = json.loads(js.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint manifest {js} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"checkpoint manifest {js} must hold a JSON object, got {type(manifest).__name__}")
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise ValueError(f"checkpoint manifest {js} has no {key!r} key")
        if not isinstance(manifest[key], kind):
            raise ValueError(
                f"checkpoint manifest {js}: {key!r} must be a {kind.__name__}, got {type(manifest[key]).__name__}"
            )
    return manifest


def load_state(name: str, root: Path | None = None) -> tuple[dict, dict]:
    """(state dict, manifest) of checkpoint `name`, after checking the SHA-256 of the file and of
    the manifest's builder and config; the file holds tensors only (``weights_only=True``)."""
    manifest = read_manifest(name, root)
    pt, js = _paths(name, root)
    how = f"Recreate it with: {manifest.get('command', '(command not recorded)')}"
    digest = config_digest(manifest["builder"], manifest["config"])
    if digest != manifest["config_sha256"]:
        raise RuntimeError(
            f"checkpoint manifest {js} was edited: the SHA-256 of its builder and config is {digest[:12]}..., "
            f"its config_sha256 {manifest['config_sha256'][:12]}...; restore the file. {how}"
        )
    if not pt.exists():
        raise FileNotFoundError(f"checkpoint file {pt} is missing. {how}")
    digest = sha256(pt)
    if digest != manifest["sha256"]:
        raise RuntimeError(
            f"checkpoint {pt} is corrupt: SHA-256 {digest[:12]}... != manifest {manifest['sha256'][:12]}... {how}"
        )
    try:
        return torch.load(pt, map_location="cpu", weights_only=True), manifest
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"checkpoint {pt} holds more than tensors and was refused (it is loaded with weights_only=True)"
        ) from err


def load_pretrained(name: str, device: torch.device | str = "cpu", root: Path | None = None) -> nn.Module:
    """Rebuild the model of checkpoint `name` from its manifest, load its weights, eval mode."""
    state, manifest = load_state(name, root)
    if manifest["builder"] not in BUILDERS:
        raise KeyError(f"checkpoint {name!r} needs builder {manifest['builder']!r}; register it with register_builder")
    model = build(manifest["builder"], manifest["config"])
    model.load_state_dict(state)
    model.manifest = manifest
    return model.to(device).eval()
