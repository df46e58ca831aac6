"""Presets of the image trainers (minflow.presets), the flags that beat them, and the RRDB encoder."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from minflow import cli, train
from minflow.presets import LOWLIGHT_PRESETS, SR_PRESETS, preset_values
from minflow.sr import RRDB, SRFlow, SRFlowConfig, encoder_taps


def prepared(monkeypatch, argv: list[str]) -> dict:
    """What a train command would run with `argv`: its model config and TrainConfig."""
    seen = {}

    def fake(task, model, cfg, command, *rest, **kw):
        seen.update(model=model, cfg=cfg)

    monkeypatch.setattr(train, "train_images", fake)
    cli.main(argv)
    return seen


def test_the_laptop_preset_is_the_course_default(monkeypatch, tmp_path):
    got = prepared(monkeypatch, ["train-sr", "--name", "x", "--runs", str(tmp_path)])
    assert got["model"] == SRFlowConfig()  # the course's model: the dataclass defaults
    cfg = got["cfg"]
    assert (cfg.steps, cfg.batch, cfg.crop, cfg.learning_rate, cfg.lr_milestones) == (1800, 16, 64, 5e-4, ())
    got = prepared(monkeypatch, ["train-lowlight", "--name", "x", "--runs", str(tmp_path)])
    assert dataclasses.asdict(got["model"]) == dataclasses.asdict(type(got["model"])(levels=3, flow_steps=1, blocks=2))
    assert (got["cfg"].steps, got["cfg"].batch, got["cfg"].crop) == (2000, 8, 64)


def test_the_paper_preset_and_explicit_flags_beat_it(monkeypatch, tmp_path):
    got = prepared(monkeypatch, ["train-sr", "--name", "x", "--runs", str(tmp_path), "--preset", "paper"])
    m, cfg = got["model"], got["cfg"]
    assert (m.flow_steps, m.levels, m.encoder, m.blocks, m.nf) == (16, 3, "rrdb", 23, 64)
    assert cfg.crop == 160 and cfg.lr_milestones == (0.5, 0.75, 0.9, 0.95)
    argv = ["train-sr", "--name", "x", "--runs", str(tmp_path), "--preset", "paper", "--flow-steps", "2"]
    argv += ["--crop", "32", "--lr-milestones", "none", "--encoder", "rdb", "--batch", "4"]
    got = prepared(monkeypatch, argv)
    m, cfg = got["model"], got["cfg"]
    assert (m.flow_steps, m.encoder, m.blocks, cfg.crop, cfg.batch, cfg.lr_milestones) == (2, "rdb", 23, 32, 4, ())
    got = prepared(monkeypatch, ["train-lowlight", "--name", "x", "--runs", str(tmp_path), "--preset", "paper"])
    assert (got["model"].flow_steps, got["model"].levels) == (12, 3)
    with pytest.raises(SystemExit):
        prepared(monkeypatch, ["train-sr", "--name", "x", "--lr-milestones", "0.9,0.5"])


def test_preset_values_take_the_given_ones_first():
    values = preset_values(SR_PRESETS["laptop"], {"steps": 7, "crop": None})
    assert (
        values["steps"] == 7
        and values["crop"] == 64
        and set(values) == {f.name for f in dataclasses.fields(SR_PRESETS["laptop"])}
    )
    assert set(LOWLIGHT_PRESETS) == set(SR_PRESETS) == {"laptop", "paper"}


def test_learning_rate_halves_at_the_milestones():
    cfg = train.TrainConfig(name="x", steps=100, learning_rate=1.0, lr_milestones=(0.5, 0.75))
    assert [cfg.rate_at(s) for s in (0, 49, 50, 74, 75, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert train.TrainConfig(name="x").rate_at(10**6) == 5e-4
    for bad in ((0.5, 0.5), (1.0,), (0.7, 0.2)):
        with pytest.raises(ValueError, match="lr_milestones"):
            train.TrainConfig(name="x", lr_milestones=bad)


def test_fractions_type():
    assert cli.fractions("0.5,0.75") == (0.5, 0.75) and cli.fractions("none") == ()
    for bad in ("a", "0.5,0.2", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.fractions(bad)


# ----------------------------------------------------------------------------- the RRDB encoder


def test_rrdb_taps_are_srflows_and_the_encoder_has_the_right_shapes():
    assert encoder_taps("rrdb", 23) == [1, 8, 15, 22] and encoder_taps("rdb", 3) == [0, 1, 2]
    assert encoder_taps("rrdb", 1) == [0] and encoder_taps("rrdb", 2) == [0, 1]
    with pytest.raises(ValueError, match="encoder must be one of"):
        SRFlowConfig(encoder="unet")
    torch.manual_seed(0)
    model = SRFlow(encoder="rrdb", blocks=5, nf=8, gc=4, levels=2, flow_steps=1, hidden=8, cond_channels=6)
    assert sum(isinstance(m, RRDB) for m in model.encoder.modules()) == 5 and model.encoder.taps == [1, 2, 3, 4]
    lr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    feats = model.encoder(lr)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {(16, 16): (2, 6, 16, 16), (8, 8): (2, 6, 8, 8)}
    torch.manual_seed(0)
    again = SRFlow(encoder="rrdb", blocks=5, nf=8, gc=4, levels=2, flow_steps=1, hidden=8, cond_channels=6)
    for key, value in again.encoder(lr).items():  # same seed, same weights, same features
        assert torch.equal(value, feats[key])
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    bpd = model.eval().nll_bpd(hr, lr, torch.Generator().manual_seed(3))
    assert bpd.shape == (2,) and torch.isfinite(bpd).all()
    assert torch.equal(bpd, again.eval().nll_bpd(hr, lr, torch.Generator().manual_seed(3)))


def test_the_rdb_encoder_keeps_its_weights_names():
    names = set(SRFlow(levels=2, flow_steps=1, hidden=8, nf=8, blocks=2).state_dict())
    assert "encoder.blocks.1.convs.1.weight" in names and "encoder.blocks.1.fuse.weight" in names
    assert not any(".body." in n for n in names)
