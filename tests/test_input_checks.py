"""Clear errors on bad input: images, temperatures, ActNorm's first batch, checkpoint manifests and names."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

import minflow as mf
from minflow import data
from minflow.checkpoints import (
    MANIFEST_KEYS,
    config_digest,
    data_dir,
    load_pretrained,
    load_state,
    read_manifest,
    register_builder,
    save_checkpoint,
    sha256,
)
from minflow.lowlight import LLFlow, enhance
from minflow.sr import SRFlow, super_resolve
from minflow.utils import PIXEL_LIMIT, check_image, check_temperature

BAD_TEMPERATURES = [-0.1, -math.inf, math.inf, math.nan]


def tiny_sr() -> SRFlow:
    torch.manual_seed(0)
    return SRFlow(
        factor=2, levels=2, flow_steps=1, hidden=4, nf=4, blocks=1, gc=4, cond_channels=4
    ).eval()  # has a Split


def tiny_ll() -> LLFlow:
    torch.manual_seed(0)
    return LLFlow(levels=1, flow_steps=1, hidden=4, nf=4, blocks=1, gc=4, cond_channels=4).eval()


# ----------------------------------------------------------------------------- ActNorm's first batch


@pytest.mark.parametrize("shape", [(0, 2), (0, 2, 4, 4), (3, 2, 0, 4)])
def test_actnorm_refuses_an_empty_first_batch_and_stays_uninitialised(shape):
    layer = mf.ActNorm(2).train()
    with pytest.raises(ValueError, match=re.escape(f"empty: shape {shape}")):
        layer(torch.empty(shape))
    assert not bool(layer.initialized)
    assert torch.equal(layer.bias, torch.zeros(2)) and torch.equal(layer.logs, torch.zeros(2))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_actnorm_refuses_a_non_finite_first_batch_then_initialises_from_a_good_one(bad):
    layer = mf.ActNorm(3).train()
    x = torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 + 5
    spoilt = x.clone()
    spoilt[3, 1, 2, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        layer(spoilt)
    assert not bool(layer.initialized) and torch.isfinite(layer.bias).all() and torch.isfinite(layer.logs).all()
    y, logdet = layer(x)  # the next good batch initialises it, as if nothing had happened
    assert bool(layer.initialized) and torch.isfinite(logdet).all()
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)


# ----------------------------------------------------------------------------- images for super_resolve / enhance


def course_inputs() -> dict[str, torch.Tensor]:
    """Every input the course feeds a model: the SR and low-light test sets, chapter 8's stretched
    photos (contrast x8 and x16 about 0.5, unclamped) and an unclamped bicubic upscale."""
    out = {f"sr {k}": v.lr for group in data.ood_sets(4, 8).values() for k, v in group.items()}
    out |= {f"ll {k}": v.dark for group in data.lowlight_ood_sets(16).values() for k, v in group.items()}
    lr = data.ood_sets(4, 8)["reference"]["coffee"].lr
    out |= {f"contrast x{c}": data.contrast(lr, float(c), clamp=False) for c in (8, 16)}
    out["bicubic_up unclamped"] = data.bicubic_up(data.synthetic_patterns(8)["checker_1px"], 2, clamp=False)
    return out


def test_check_image_accepts_every_course_input():
    inputs = course_inputs()
    assert max(x.abs().max().item() for x in inputs.values()) > 8  # the stretched photos are in there
    assert min(x.min().item() for x in inputs.values()) < 0  # and the bicubic overshoot
    for name, x in inputs.items():
        check_image(x, name, 3)
        check_image(x[None].double(), name, 3)


def test_super_resolve_and_enhance_accept_out_of_range_course_inputs():
    x16 = course_inputs()["contrast x16"][:, :4, :4]
    assert super_resolve(tiny_sr(), x16).shape == (1, 3, 8, 8)
    assert enhance(tiny_ll(), x16).shape == (1, 3, 4, 4)


def as_0_255(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_super_resolve_and_enhance_refuse_integer_images(dtype):
    image = as_0_255(torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))).to(dtype)
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"LR must be a float image in [0, 1], got dtype {dtype}; convert an 8-bit image with x.float() / 255"
        ),
    ):
        super_resolve(tiny_sr(), image)
    with pytest.raises(
        TypeError, match=re.escape(f"the dark image must be a float image in [0, 1], got dtype {dtype}")
    ):
        enhance(tiny_ll(), image)


def test_super_resolve_and_enhance_refuse_0_255_float_images():
    photo = data.ood_sets(4, 8)["reference"]["coffee"].lr
    dark = data.lowlight_ood_sets(16)["darker"]["coffee"].dark
    assert as_0_255(dark).max() <= PIXEL_LIMIT  # so dark that only its whole numbers give it away
    for image in (as_0_255(photo), as_0_255(photo) + 0.25, as_0_255(dark)):
        with pytest.raises(
            ValueError, match=r"LR has values in \[.*\]: it looks like a 0\.\.255 image.*divide it by 255"
        ):
            super_resolve(tiny_sr(), image[:, :4, :4])
        with pytest.raises(ValueError, match="the dark image has values in .*divide it by 255"):
            enhance(tiny_ll(), image)
    with pytest.raises(ValueError, match="divide it by 255"):
        check_image(torch.full((3, 4, 4), -PIXEL_LIMIT - 1), "x", 3)
    check_image(torch.tensor([0.0, 1.0]).repeat(3, 2, 1), "binary", 3)  # whole numbers, but in [0, 1]
    check_image(torch.zeros(3, 4, 4, dtype=torch.float16), "black", 3)


def test_super_resolve_refuses_bad_sample_counts():
    for arg in ({"num_samples": 0}, {"chunk": 0}, {"num_samples": 1.5}):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            super_resolve(tiny_sr(), torch.rand(3, 4, 4), **arg)


# ----------------------------------------------------------------------------- temperatures


def test_check_temperature():
    assert check_temperature(0) == 0.0 and check_temperature(0.7) == 0.7
    for bad in BAD_TEMPERATURES:
        with pytest.raises(ValueError, match=f"temperature must be finite and >= 0, got {bad}"):
            check_temperature(bad)
    for bad in ("0.5", True, None, torch.tensor(0.5)):
        with pytest.raises(TypeError, match="temperature must be a number"):
            check_temperature(bad)


@pytest.mark.parametrize("t", BAD_TEMPERATURES)
def test_every_sampling_path_refuses_a_bad_temperature(t):
    toy = mf.ConditionalFlow([mf.ActNorm(2)], event_shape=(2,)).eval()  # no Split: the temperature is only the base's
    split = mf.Split(4, image=False)
    sr, ll, lr = tiny_sr(), tiny_ll(), torch.rand(1, 3, 4, 4)
    calls = {
        "base": lambda: mf.StandardNormal().sample((2, 2), t),
        "Split.inverse": lambda: split.inverse(torch.zeros(2, 2), temperature=t),
        "Split.inverse with z2": lambda: split.inverse(torch.zeros(2, 2), z2=torch.zeros(2, 2), temperature=t),
        "sample": lambda: toy.sample(num_samples=2, temperature=t),
        "sample with z": lambda: toy.sample(z=torch.zeros(2, 2), temperature=t),
        "inverse": lambda: toy.inverse(torch.zeros(2, 2), temperature=t),
        "trace": lambda: toy.trace(num_samples=2, temperature=t),
        "SRFlow.sample with z": lambda: sr.sample(lr, z=torch.zeros(1, 24, 2, 2), temperature=t),
        "super_resolve": lambda: super_resolve(sr, lr[0], temperature=t),
        "enhance": lambda: enhance(ll, lr[0], temperature=t),
        "trace of LLFlow": lambda: ll.trace(lr, temperature=t),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="temperature must be finite and >= 0"):
            call()
            pytest.fail(f"{name} accepted temperature {t}")
    assert torch.equal(toy.sample(z=torch.zeros(2, 2), temperature=0), toy.sample(z=torch.zeros(2, 2)))  # 0 is fine


# ----------------------------------------------------------------------------- checkpoints


@register_builder("test-input-checks")
def _build(channels: int = 2) -> mf.ConditionalFlow:
    return mf.ConditionalFlow([mf.ActNorm(channels), mf.InvConv1x1(channels)], event_shape=(channels,))


RECORD = {"command": "pytest tests/test_input_checks.py", "seed": 0, "wall_time_s": 0.0, "metrics": {}}


def saved(tmp_path, name: str = "t", channels: int = 2):
    torch.manual_seed(0)
    save_checkpoint(_build(channels), name, "test-input-checks", {"channels": channels}, RECORD, root=tmp_path)
    return tmp_path / "checkpoints" / f"{name}.json"


def edit(js, **changes) -> None:
    manifest = json.loads(js.read_text())
    manifest.update(changes)
    js.write_text(json.dumps(manifest, indent=2))


def test_save_checkpoint_records_the_config_digest(tmp_path):
    js = saved(tmp_path)
    manifest = json.loads(js.read_text())
    assert manifest["config_sha256"] == config_digest("test-input-checks", {"channels": 2})
    assert list(manifest).index("config_sha256") == list(manifest).index("sha256") + 1
    assert load_pretrained("t", root=tmp_path).manifest == manifest
    with pytest.raises(ValueError, match=r"manifest's own keys \['config', 'sha256'\]"):
        save_checkpoint(_build(), "u", "test-input-checks", {}, RECORD | {"sha256": "0", "config": {}}, root=tmp_path)
    assert not (tmp_path / "checkpoints" / "u.pt").exists()
    # MANIFEST_KEYS names exactly what save_checkpoint adds to the record
    assert set(manifest) == MANIFEST_KEYS | set(RECORD)
    assert not MANIFEST_KEYS & set(RECORD)


def test_reformatted_manifest_still_loads(tmp_path):
    js = saved(tmp_path)
    manifest = json.loads(js.read_text())
    js.write_text(json.dumps(dict(reversed(list(manifest.items()))), indent=4, sort_keys=True))  # same content
    load_pretrained("t", root=tmp_path)


@pytest.mark.parametrize(
    "change", [{"config": {"channels": 3}}, {"builder": "srflow"}, {"config": {"channels": 2, "x": 1}}]
)
def test_edited_config_is_refused_naming_the_file(tmp_path, change):
    js = saved(tmp_path)
    saved(tmp_path, "other", channels=3)  # a valid model the edit could otherwise build
    edit(js, **change)
    with pytest.raises(
        RuntimeError, match=re.escape(f"checkpoint manifest {js} was edited") + ".*pytest tests/test_input_checks.py"
    ):
        load_pretrained("t", root=tmp_path)
    with pytest.raises(RuntimeError, match="was edited"):
        load_state("t", tmp_path)


@pytest.mark.skipif("sr_affine" not in mf.available(), reason="sr_affine checkpoint not shipped")
def test_shipped_manifest_with_another_coupling_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for ext in ("pt", "json"):
        shutil.copy(data_dir() / "checkpoints" / f"sr_affine.{ext}", tmp_path / "checkpoints")
    js = tmp_path / "checkpoints" / "sr_affine.json"
    load_state("sr_affine", tmp_path)  # the copy is intact
    js.write_text(js.read_text().replace('"coupling": "affine"', '"coupling": "spline"'))
    with pytest.raises(RuntimeError, match=re.escape(f"checkpoint manifest {js} was edited")):
        load_pretrained("sr_affine", root=tmp_path)


@pytest.mark.parametrize("key", ["builder", "config", "sha256", "config_sha256"])
def test_missing_manifest_key_names_the_file_and_the_key(tmp_path, key):
    js = saved(tmp_path)
    manifest = json.loads(js.read_text())
    del manifest[key]
    js.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(f"checkpoint manifest {js} has no {key!r} key")):
        load_pretrained("t", root=tmp_path)
    manifest[key] = 3
    js.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=re.escape(f"checkpoint manifest {js}: {key!r} must be a")):
        read_manifest("t", tmp_path)


@pytest.mark.parametrize("text", ['{"builder": "test-input-checks",', "", "\udcff", "[1, 2]"])
def test_unreadable_manifest_names_the_file(tmp_path, text):
    js = saved(tmp_path)
    js.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(
        ValueError, match=re.escape(f"checkpoint manifest {js} ") + "(is not valid JSON|must hold a JSON object)"
    ):
        load_pretrained("t", root=tmp_path)


ESCAPING = ["../x", "..", ".", "", "/tmp/x", "a/b", "a\\b", "checkpoints/../x", ".x", "x\x00", "c:x", 3, None]


@pytest.mark.parametrize("name", ESCAPING)
def test_names_that_leave_the_checkpoints_folder_are_refused(tmp_path, name):
    # a valid checkpoint one folder above the checkpoints folder: '../x' would reach it without the check
    root = tmp_path / "root"
    (root / "checkpoints").mkdir(parents=True)
    for f in saved(tmp_path / "made", "x").parent.iterdir():
        shutil.copy(f, root)
    message = re.escape(
        "a checkpoint name must be a plain file name (letters, digits, '_', '-', '.'; not starting with '.'), "
        f"got {name!r}"
    )
    for call in (
        lambda: load_pretrained(name, root=root),
        lambda: load_state(name, root),
        lambda: read_manifest(name, root),
        lambda: save_checkpoint(_build(), name, "test-input-checks", {}, RECORD, root=root),
    ):
        with pytest.raises(ValueError, match=message):
            call()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "checkpoints",
        "x.json",
        "x.pt",
    ]  # nothing written


def test_checkpoint_holding_code_is_refused_and_the_code_does_not_run(tmp_path):
    """A .pt file whose unpickling would run code, with a manifest whose digests match it."""
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('ran')",)

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    pt = folder / "evil.pt"
    torch.save({"weight": Payload()}, pt)
    builder, config = "test-input-checks", {"channels": 2}
    manifest = {
        "name": "evil",
        "builder": builder,
        "config": config,
        **RECORD,
        "sha256": sha256(pt),
        "config_sha256": config_digest(builder, config),
    }
    (folder / "evil.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeError, match="holds more than tensors and was refused"):
        load_state("evil", tmp_path)
    with pytest.raises(RuntimeError, match="holds more than tensors"):
        load_pretrained("evil", root=tmp_path)
    assert not marker.exists()


def test_one_image_check_with_or_without_the_value_checks():
    for bad, error in [
        (torch.rand(3, 4, 4).numpy(), TypeError),
        (torch.rand(2, 4, 4), ValueError),
        (torch.ones(3, 4, 4, dtype=torch.uint8), TypeError),
    ]:
        for values in (True, False):
            with pytest.raises(error):
                check_image(bad, "x", 3, values=values)
    exploded = torch.full((3, 4, 4), math.inf)
    check_image(exploded, "x", 3, values=False)  # what data functions accept (exploded samples)
    with pytest.raises(ValueError, match="non-finite"):
        check_image(exploded, "x", 3)
    assert data.bicubic_down(torch.full((3, 8, 8), 300.0), 4).shape == (3, 2, 2)  # no value check in the data functions
