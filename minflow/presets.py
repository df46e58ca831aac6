"""Named settings of the image trainers: ``--preset laptop`` (the course's models, the default)
and ``--preset paper`` (the published setting as far as it is known). Every value is the
default of a command-line flag, and a flag given explicitly beats its preset.

SR, paper: K = 16 steps per level, L = 3 levels, SRFlow's RRDB encoder (23 blocks, 64 features),
160 x 160 crops, the learning rate halved at 50, 75, 90 and 95 % of the steps. Its 200 000 steps,
batch 16, learning rate 2.5e-4, conditioner width 64, growth 32 and two transition steps per
level are SRFlow's 4x settings as recalled here, unverified. Low light, paper: LLFlow's K = 12 and
L = 3; the rest of its setting is not known here, so it keeps the laptop values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["LOWLIGHT_PRESETS", "SR_PRESETS", "LowLightPreset", "SRPreset", "TrainPreset", "preset_values"]

PAPER_MILESTONES = (0.5, 0.75, 0.9, 0.95)


@dataclass(frozen=True)
class TrainPreset:
    """What every image preset sets: optimiser `steps`, global `batch`, `crop` size, Adam
    `learning_rate`, halved at each fraction of the steps in `lr_milestones`; the model's `levels`,
    `flow_steps` K and `transitions` T per level, conditioner `hidden`, encoder `nf`, `blocks`, `gc`."""

    steps: int
    batch: int
    crop: int = 64
    learning_rate: float = 5e-4
    lr_milestones: tuple[float, ...] = ()
    levels: int = 3
    flow_steps: int = 3
    transitions: int = 1
    hidden: int = 32
    nf: int = 32
    blocks: int = 4
    gc: int = 16


@dataclass(frozen=True)
class SRPreset(TrainPreset):
    """An SR preset: `TrainPreset`, the `encoder` kind ("rdb" or "rrdb", `sr.ENCODERS`) and the
    `target` the flow models ("hr" or "residual", `sr.TARGETS`; both presets model "hr", as SRFlow)."""

    encoder: str = "rdb"
    target: str = "hr"


@dataclass(frozen=True)
class LowLightPreset(TrainPreset):
    """A low-light preset (its model has no other choices)."""


_SR_LAPTOP = SRPreset(steps=1800, batch=16)
SR_PRESETS = {
    "laptop": _SR_LAPTOP,
    "paper": replace(
        _SR_LAPTOP,
        steps=200_000,
        crop=160,
        learning_rate=2.5e-4,
        lr_milestones=PAPER_MILESTONES,
        flow_steps=16,
        transitions=2,
        hidden=64,
        nf=64,
        blocks=23,
        gc=32,
        encoder="rrdb",
    ),
}
"""train-sr's presets by name (see the module docstring)."""

_LL_LAPTOP = LowLightPreset(steps=2000, batch=8, flow_steps=1, blocks=2)
LOWLIGHT_PRESETS = {"laptop": _LL_LAPTOP, "paper": replace(_LL_LAPTOP, levels=3, flow_steps=12)}
"""train-lowlight's presets by name (see the module docstring)."""


def preset_values(preset: TrainPreset, given: dict) -> dict:
    """Every field of `preset`, with the values in `given` that are not None instead: an
    explicit flag beats the preset."""
    return {f.name: given[f.name] if given.get(f.name) is not None else getattr(preset, f.name) for f in fields(preset)}
