"""tools/ship_run.py: a run's checkpoint shipped under another name, weights and record unchanged."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import load_script

from minflow import checkpoints
from minflow.sr import SRFlowConfig

ship_run = load_script("ship_run", Path(__file__).resolve().parent.parent / "tools")

RUN_COMMAND = (
    "python -m minflow train-sr --name w --coupling affine --steps 6 --runs /tmp/some/runs --no-progress --early 3"
)


def test_shipped_command_names_the_shipped_checkpoint():
    assert ship_run.shipped_command(RUN_COMMAND, "sr_affine") == (
        "python -m minflow train-sr --name sr_affine --coupling affine --steps 6 --early 3 --ship --force"
    )
    assert ship_run.shipped_command(RUN_COMMAND, "sr_affine_early").startswith(
        "python -m minflow train-sr --name sr_affine "
    )
    spaced = "python -m minflow train-sr --name w --data '/my photos' --ship"
    assert (
        ship_run.shipped_command(spaced, "x")
        == "python -m minflow train-sr --name x --data '/my photos' --ship --force"
    )


def test_ship_run_copies_weights_and_record(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = checkpoints.build("srflow", SRFlowConfig(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1))
    record = {
        "command": RUN_COMMAND,
        "seed": 0,
        "steps": 6,
        "wall_time_s": 1.5,
        "metrics": {"val_bpd": 3.25},
        "curve": {"step": [6]},
    }
    run = tmp_path / "runs" / "w"
    checkpoints.save_checkpoint(model, "w", "srflow", model.config, record, root=run)
    data = tmp_path / "data"
    monkeypatch.setenv("MINFLOW_DATA", str(data))
    path = ship_run.ship_run(run, "w", "sr_new")
    assert path == data / "checkpoints" / "sr_new.pt"
    shipped = checkpoints.load_pretrained("sr_new")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in shipped.state_dict().items())
    manifest = shipped.manifest
    assert manifest["name"] == "sr_new" and manifest["command"] == ship_run.shipped_command(RUN_COMMAND, "sr_new")
    assert {k: manifest[k] for k in ("seed", "steps", "wall_time_s", "metrics", "curve")} == {
        k: record[k] for k in record if k != "command"
    }
