"""Training on a photo split (`TrainConfig.photos`, --photos) and the validation curve
(`TrainConfig.val_every`, --val-every): the course split draws the batches it always drew, the
curve changes no batch and no weight, a resumed run continues its curve, and the manifest says
which photos and which curve. Tiny models and few steps; every file goes to tmp folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from minflow import checkpoints, cli
from minflow import train as train_mod
from minflow.data import (
    PHOTO_SPLITS,
    TRAIN_PHOTOS,
    VAL_PHOTOS,
    bicubic_down,
    darken,
    load_photos,
    random_crops,
)
from minflow.distributed import Dist
from minflow.lowlight import LLFlowConfig
from minflow.sr import SRFlowConfig

SR = [
    *("--levels", "2", "--flow-steps", "1", "--hidden", "8", "--nf", "8", "--blocks", "1", "--batch", "2"),
    *("--crop", "32", "--val-size", "64", "--val-samples", "1", "--no-progress", "--threads", "1"),
]
LL = [
    *("--levels", "2", "--hidden", "8", "--nf", "8", "--blocks", "1", "--batch", "2", "--crop", "16"),
    *("--val-size", "32", "--no-progress", "--threads", "1"),
]
OPTIONS = {"sr": ("train-sr", SR), "lowlight": ("train-lowlight", LL)}


PHOTOS = checkpoints.data_dir() / "photos"  # the repository's, read before any test changes $MINFLOW_DATA


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """A data folder standing in for the shipped one ($MINFLOW_DATA): no checkpoints, the photos."""
    folder = tmp_path / "data"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "photos").symlink_to(PHOTOS)
    monkeypatch.setenv("MINFLOW_DATA", str(folder))
    return folder


def run(which: str, runs: Path, name: str, *extra: str) -> dict:
    head, options = OPTIONS[which]
    return cli.main([head, "--name", name, "--runs", str(runs), *options, *extra])


def manifest(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "checkpoints" / f"{name}.json").read_text())


def state(runs: Path, name: str) -> dict:
    return torch.load(runs / name / "state.pt", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def recording(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every training batch `fit` takes from now on, in order."""
    seen: list = []
    real = train_mod.batch_source

    def source(*args, **kwargs):
        batches = real(*args, **kwargs)

        def take(gen):
            x, cond = batches(gen)
            seen.append((x.clone(), cond.clone()))
            return x, cond

        return take

    monkeypatch.setattr(train_mod, "batch_source", source)
    return seen


# ----------------------------------------------------------------------------- the photo split


def tiny(task):
    torch.manual_seed(0)
    if task is train_mod.SR:
        return checkpoints.build("srflow", SRFlowConfig(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1))
    return checkpoints.build("llflow", LLFlowConfig(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1))


@pytest.mark.parametrize("task", [train_mod.SR, train_mod.LOWLIGHT], ids=["sr", "lowlight"])
def test_the_course_split_draws_the_batches_training_always_drew(task, tmp_path):
    """The recipe before splits existed: crops of TRAIN_PHOTOS, then the task's degradation."""
    model = tiny(task)
    cfg = train_mod.TrainConfig(name="c", batch=3, crop=32, runs=tmp_path)
    batches = train_mod.batch_source(task, model, cfg, Dist())
    gen, old = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    images = load_photos(TRAIN_PHOTOS)
    for _ in range(3):
        x, cond = batches(gen)
        want = random_crops(images, 32, 3, old)
        want_cond = bicubic_down(want, 4) if task is train_mod.SR else darken(want, old)[0]
        assert torch.equal(x, want) and torch.equal(cond, want_cond)
    assert torch.equal(gen.get_state(), old.get_state())
    wide = train_mod.batch_source(task, model, train_mod.TrainConfig(name="w", batch=3, crop=32, photos="wide"), Dist())
    x_wide, _ = wide(torch.Generator().manual_seed(0))
    want = random_crops(load_photos(PHOTO_SPLITS["wide"].train), 32, 3, torch.Generator().manual_seed(0))
    assert torch.equal(x_wide, want) and not torch.equal(x_wide, batches(torch.Generator().manual_seed(0))[0])


def test_validation_pairs_and_evaluate_read_the_split(tmp_path):
    model = tiny(train_mod.SR)
    model.nll_bpd(
        *train_mod.batch_source(train_mod.SR, model, train_mod.TrainConfig(name="a", crop=32), Dist())(
            torch.Generator().manual_seed(0)
        )
    )  # ActNorm initialised, as after a training step
    assert [n for n, _, _ in train_mod.validation_pairs(model, train_mod.SR, 32)] == list(VAL_PHOTOS)
    wide = PHOTO_SPLITS["wide"].val
    pairs = train_mod.validation_pairs(model, train_mod.SR, 32, photos="wide")
    assert [n for n, _, _ in pairs] == list(wide) and len(wide) > len(VAL_PHOTOS)
    metrics = train_mod.evaluate(model, train_mod.SR, 32, photos="wide")
    assert list(metrics["per_image"]) == list(wide)
    assert train_mod.validation_bpd(model, pairs) == metrics["val_bpd"]  # the same noise, the same number
    with pytest.raises(ValueError, match="'course', 'wide'"):
        train_mod.validation_pairs(model, train_mod.SR, 32, photos="nope")


def test_a_wide_run_records_its_photos_and_validates_on_them(tmp_path, data):
    runs = tmp_path / "runs"
    run("sr", runs, "w", "--steps", "1", "--photos", "wide")
    wide, training = PHOTO_SPLITS["wide"], manifest(runs, "w")["training"]
    assert training["photos"] == "wide"
    assert training["train_photos"] == list(wide.train) and training["val_photos"] == list(wide.val)
    assert list(manifest(runs, "w")["metrics"]["per_image"]) == list(wide.val)
    from minflow import apply

    first = next(apply.training_stream(checkpoints.load_pretrained("w", root=runs / "w")))  # what fit-ood fits on
    crops = random_crops(load_photos(wide.train), 32, 2, torch.Generator().manual_seed(0))
    assert torch.equal(first, bicubic_down(crops, 4))  # the wide train photos, as in training
    run("lowlight", runs, "c", "--steps", "1")
    training = manifest(runs, "c")["training"]
    assert (training["photos"], training["train_photos"], training["val_photos"]) == (
        "course",
        list(TRAIN_PHOTOS),
        list(VAL_PHOTOS),
    )
    assert training["data"] == "darken(TRAIN_PHOTOS crops)"  # as the course's runs recorded it
    with pytest.raises(SystemExit, match="setting photos: 'wide' there, 'course' now"):
        run("sr", runs, "w", "--steps", "2")


def test_data_replaces_the_train_photos_and_may_not_hold_validation_photos(tmp_path, data, capsys):
    from PIL import Image

    folder = tmp_path / "mine"
    folder.mkdir()
    pixels = torch.randint(0, 256, (40, 48, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(folder / "mine.png")
    runs = tmp_path / "runs"
    run("sr", runs, "d", "--steps", "1", "--data", str(folder), "--photos", "wide")
    training = manifest(runs, "d")["training"]
    assert training["photos"] == "wide" and "train_photos" not in training and training["data"] == str(folder)
    assert training["val_photos"] == list(PHOTO_SPLITS["wide"].val)
    Image.fromarray(pixels.numpy()).save(folder / "kingfisher.jpg")  # a val photo of the wide split only
    run("sr", runs, "d2", "--steps", "1", "--data", str(folder))  # fine for the course split
    with pytest.raises(SystemExit) as exit_:
        run("sr", runs, "d3", "--steps", "1", "--data", str(folder), "--photos", "wide")
    assert exit_.value.code == 2 and "holds photos the 'wide' split holds out" in capsys.readouterr().err
    assert not (runs / "d3").exists()


def test_meaningless_split_and_curve_settings_are_refused(tmp_path, data, capsys):
    with pytest.raises(ValueError, match="photos must be one of 'course', 'wide', got 'big'"):
        train_mod.TrainConfig(name="x", photos="big")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="val_every"):
            train_mod.TrainConfig(name="x", val_every=bad)
    for option, value, said in (
        ("--photos", "big", "--photos: invalid choice: 'big'"),
        ("--val-every", "-1", "--val-every: must be at least 0"),
        ("--val-size", "2048", "val_size 2048 is larger than the 'course' split's val photo"),
    ):
        with pytest.raises(SystemExit) as exit_:
            run("sr", tmp_path / "runs", "x", "--steps", "1", option, value)
        assert exit_.value.code == 2 and said in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the toy has no photos and no curve
        cli.main(["train-toy", "--steps", "1", "--val-every", "1", "--no-progress"])
    cfg = train_mod.TrainConfig(name="t", photos="wide", runs=tmp_path)
    with pytest.raises(train_mod.TrainError, match="--photos and --val-every are for the image tasks"):
        train_mod.train_toy_checkpoint(train_mod.toy.ToyFlowConfig(), cfg, "test")
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- the curve


@pytest.mark.parametrize("which", OPTIONS)
def test_the_curve_changes_no_batch_and_no_weight(which, tmp_path, data, monkeypatch):
    runs = tmp_path / "runs"
    seen = recording(monkeypatch)
    run(which, runs, "plain", "--steps", "5")
    plain = seen.copy()
    seen.clear()
    run(which, runs, "curved", "--steps", "5", "--val-every", "2")
    curved = seen.copy()
    assert len(plain) == len(curved) == 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, curved))
    a, b = state(runs, "plain"), state(runs, "curved")
    assert same_weights(a["model"], b["model"]) and torch.equal(a["generator"], b["generator"])
    one, two = manifest(runs, "plain"), manifest(runs, "curved")
    assert one["metrics"] == two["metrics"] and "curve" not in one
    saved = [checkpoints.load_state(n, runs / n)[0] for n in ("plain", "curved")]
    assert same_weights(*saved)
    curve = two["curve"]
    assert (curve["every"], curve["step"], curve["val_size"]) == (2, [2, 4, 5], one["metrics"]["val_size"])
    assert curve["val_bpd"][-1] == two["metrics"]["val_bpd"]  # the last point is the final validation
    assert len(set(curve["val_bpd"])) == 3 and all(v == v for v in curve["val_bpd"])  # the weights moved


class Killed(Exception):
    pass


def test_a_resumed_run_continues_its_curve(tmp_path, data, monkeypatch, capsys):
    runs = tmp_path / "runs"
    run("sr", runs, "whole", "--steps", "6", "--val-every", "2")
    real = train_mod.batch_source

    def dies_at_step_4(*args, **kwargs):
        batches, calls = real(*args, **kwargs), []

        def take(gen):
            calls.append(1)
            if len(calls) == 4:
                raise Killed  # as a kill after the state of step 3 was saved
            return batches(gen)

        return take

    monkeypatch.setattr(train_mod, "batch_source", dies_at_step_4)
    with pytest.raises(Killed):
        run("sr", runs, "cut", "--steps", "6", "--val-every", "2", "--save-every", "1")
    assert state(runs, "cut")["curve"]["step"] == [2]
    monkeypatch.setattr(train_mod, "batch_source", real)
    run("sr", runs, "cut", "--steps", "6", "--val-every", "2", "--save-every", "1")
    assert "resuming cut from step 3" in capsys.readouterr().out
    whole, cut = manifest(runs, "whole")["curve"], manifest(runs, "cut")["curve"]
    assert cut["step"] == whole["step"] == [2, 4, 6] and cut["val_bpd"] == whole["val_bpd"]
    # a run that goes on past its end keeps the point of its old last step
    run("sr", runs, "cut", "--steps", "8", "--val-every", "2")
    assert manifest(runs, "cut")["curve"]["step"] == [2, 4, 6, 8]
    run("sr", runs, "short", "--steps", "3", "--val-every", "2")
    run("sr", runs, "short", "--steps", "5", "--val-every", "2")
    assert manifest(runs, "short")["curve"]["step"] == [2, 3, 4, 5]
    with pytest.raises(SystemExit, match="setting val_every: 2 there, 3 now"):
        run("sr", runs, "short", "--steps", "7", "--val-every", "3")


def test_the_early_checkpoint_has_the_curve_so_far(tmp_path, data):
    runs = tmp_path / "runs"
    run("sr", runs, "e", "--steps", "4", "--early", "3", "--val-every", "1")
    early = json.loads((runs / "e" / "checkpoints" / "e_early.json").read_text())
    assert early["curve"]["step"] == [1, 2, 3] and manifest(runs, "e")["curve"]["step"] == [1, 2, 3, 4]
    assert early["curve"]["val_bpd"] == manifest(runs, "e")["curve"]["val_bpd"][:3]
    assert checkpoints.load_pretrained("e", root=runs / "e").manifest["curve"]["every"] == 1


def test_manifests_without_a_curve_still_load(tmp_path):
    """Manifests written before the curve and the photo splits (as early shipped ones were) load."""
    names = [n for n in ("sr_affine", "ll_affine") if n in checkpoints.available()]
    if not names:
        pytest.skip("no shipped SR or low-light checkpoint")
    (tmp_path / "checkpoints").mkdir()
    for name in names:
        shipped = checkpoints.data_dir() / "checkpoints"
        shutil.copy(shipped / f"{name}.pt", tmp_path / "checkpoints")
        old = json.loads((shipped / f"{name}.json").read_text())
        old.pop("curve", None)
        for key in ("photos", "val_photos", "train_photos"):
            old["training"].pop(key, None)
        (tmp_path / "checkpoints" / f"{name}.json").write_text(json.dumps(old))
        model = checkpoints.load_pretrained(name, root=tmp_path)
        assert "curve" not in model.manifest and "photos" not in model.manifest["training"]


def test_curve_flattened():
    flat = train_mod.curve_flattened
    assert not flat([5.0, 4.0, 3.9]) and not flat([])  # too few points to say
    assert not flat([5.0, 4.0, 3.0, 2.5, 2.4])  # still falling: 4.0 -> 2.4
    assert flat([5.0, 4.0, 3.0, 3.0, 3.001, 2.999])  # 3.0 -> 2.999: 3e-4 relative
    assert not flat([5.0, 4.0, 3.0, 3.0, 3.001, 2.99], tolerance=0.002)  # 3.3e-3 relative
    assert flat([3.0, 3.2, 3.1, 3.05])  # worse than the best before: flat (or overfitting)
    assert flat([2.0, 1.0], points=1, tolerance=0.6) and not flat([2.0, 1.0], points=1, tolerance=0.4)
    with pytest.raises(ValueError, match="points"):
        flat([1.0, 2.0], points=0)
