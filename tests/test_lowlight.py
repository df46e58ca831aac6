"""Low-light enhancement: synthetic darkening and the LOL loader (minflow.data), the small LLFlow (minflow.lowlight)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import check_shipped_checkpoint, randomize_zero_layers

from minflow import cli, data, train
from minflow.checkpoints import available, load_pretrained, load_state
from minflow.couplings import Affine, Coupling, Injector
from minflow.data import LowLightPairs, darken, load_lol
from minflow.lowlight import LLFlow, encoder_inputs, enhance, equalize
from minflow.splines import BoundedSpline

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lol_tiny"
TINY = dict(levels=3, flow_steps=1, hidden=8, nf=8, blocks=1, gc=4, cond_channels=8)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kw) -> LLFlow:
    """A float64 model, ActNorm initialised, with every zero-initialised layer perturbed."""
    torch.manual_seed(0)
    model = LLFlow(**(TINY | kw)).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    model(x, 0.2 * x)  # data-dependent ActNorm init
    randomize_zero_layers(model, 0.05)
    return model.eval()


def pair(b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(b, 3, h, w, dtype=torch.float64)
    return x, darken(x, torch.Generator().manual_seed(0))[0]


# ----------------------------------------------------------------------------- darkening


def test_darken_ranges_and_determinism():
    x = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y, p = darken(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y, torch.round(y * 255) / 255)  # 8-bit capture
    assert y.mean() < 0.25 * x.mean()
    for name, (lo, hi) in data.DARKEN_RANGES.items():
        assert p[name].shape == (64,) and lo <= p[name].min() and p[name].max() <= hi, name
    logs = p["gains"].log()
    assert torch.allclose(logs.sum(1), torch.zeros(64, dtype=logs.dtype), atol=1e-12)
    assert torch.allclose(logs.abs().amax(1), p["cast"])
    again, q = darken(x, torch.Generator().manual_seed(1))
    assert torch.equal(y, again) and all(torch.equal(p[k], q[k]) for k in p)
    assert not torch.equal(y, darken(x, torch.Generator().manual_seed(2))[0])
    one, r = darken(x[0], torch.Generator().manual_seed(3), exposure=0.02)
    assert one.shape == (3, 16, 16) and r["exposure"].item() == pytest.approx(0.02) and r["gains"].shape == (3,)


def test_darken_follows_its_formula():
    """Without noise, cast and quantisation it is exactly x ** gamma * exposure."""
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    y, p = darken(x, torch.Generator().manual_seed(0), quantize=False, cast=0, photon=1e-12, read=0)
    expect = x ** p["gamma"].view(4, 1, 1, 1) * p["exposure"].view(4, 1, 1, 1)
    assert (y - expect).abs().max() < 1e-5
    with pytest.raises(ValueError, match="unknown darkening parameter"):
        darken(x, brightness=0.5)
    with pytest.raises(ValueError, match="exposure range"):
        darken(x, exposure=(0.5, 0.1))


def test_pair_streams():
    images = [torch.rand(3, 40, 50, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    normal, dark = next(iter(LowLightPairs(images, 16, 5, seed=0)))
    assert normal.shape == dark.shape == (5, 3, 16, 16) and dark.mean() < normal.mean()
    assert torch.equal(next(iter(LowLightPairs(images, 16, 5, seed=0)))[1], dark)
    halves = [0.5 * im for im in images]
    normal, dark = next(iter(LowLightPairs(images, 16, 5, seed=0, dark=halves)))
    assert torch.equal(dark, 0.5 * normal)  # real pairs: one crop for both
    with pytest.raises(ValueError, match="unknown darkening"):
        LowLightPairs(images, 16, 5, exposre=0.1)


# ----------------------------------------------------------------------------- LOL


def test_lol_reads_the_fixture():
    normal, dark = load_lol(FIXTURE, "our485")
    assert len(normal) == len(dark) == 2 and len(load_lol(FIXTURE, "eval15")[0]) == 1
    assert len(load_lol(FIXTURE, "our485", limit=1)[1]) == 1
    for x, y in zip(normal, dark):
        assert x.shape == y.shape == (3, 32, 48) and 0 <= y.min() and y.max() <= 1 and y.mean() < x.mean()
    assert sum(f.stat().st_size for f in FIXTURE.rglob("*") if f.is_file()) < 100_000


def test_lol_errors_explain_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download=True.*BMVC2018website"):
        load_lol(tmp_path, "eval15")
    with pytest.raises(ValueError, match="our485"):
        load_lol(FIXTURE, "test")
    shutil.copytree(FIXTURE, tmp_path / "LOLdataset")  # as the archive unpacks
    assert len(load_lol(tmp_path, "our485")[0]) == 2
    (tmp_path / "LOLdataset" / "our485" / "low" / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="same"):
        load_lol(tmp_path, "our485")


# ----------------------------------------------------------------------------- encoder inputs


def test_equalize_and_encoder_inputs():
    ramp = torch.randperm(256).double().view(1, 1, 16, 16) / 255  # every level once
    eq = equalize(ramp.expand(2, 3, 16, 16))
    assert torch.allclose(eq, ramp.expand(2, 3, 16, 16))  # already uniform: unchanged
    dark = 0.1 * ramp
    assert torch.allclose(equalize(dark.round(decimals=2)).amax(), torch.tensor(1.0, dtype=torch.float64))
    assert equalize(torch.full((1, 3, 4, 4), 0.3)).abs().max() == 0  # flat: no division by zero
    y = pair(2, 8, 8)[1]
    inputs = encoder_inputs(y)
    assert inputs.shape == (2, 9, 8, 8) and torch.isfinite(inputs).all()
    assert -1 <= inputs[:, :3].min() and inputs[:, :3].max() <= 0  # scaled log intensity
    assert torch.allclose(inputs[:, 3:6].sum(1)[y.sum(1) > 0.05], torch.ones(1, dtype=torch.float64), atol=1e-2)


# ----------------------------------------------------------------------------- the model


@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_round_trip_float64(coupling):
    model = tiny(coupling=coupling)
    x, y = pair(2, 16, 24)
    feats = model.condition(y)
    z, logdet = x, torch.zeros(2, dtype=torch.float64)
    for layer in model.layers:
        z, ld = layer(z, feats)
        logdet = logdet + ld
    assert torch.allclose(logdet, model(x, y)[1]) and z.abs().max() > 0
    back, inv = z, torch.zeros_like(logdet)
    for layer in reversed(model.layers):
        back, ld = layer.inverse(back, feats)
        inv = inv + ld
    assert (back - x).abs().max() < 1e-10 and torch.allclose(inv, -logdet)
    assert torch.isfinite(model.log_prob(x, y)).all()
    elementwise = [m for m in model.modules() if isinstance(m, (Coupling, Injector))]
    want = BoundedSpline if coupling == "spline" else Affine
    assert len(elementwise) == 6 and all(isinstance(m.bijection, want) for m in elementwise)


def test_logdet_matches_autograd_jacobian():
    model = tiny(levels=1, flow_steps=2)
    x, y = pair(1, 2, 2)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view_as(x), y)[0].flatten(), x.flatten())
    assert torch.allclose(torch.linalg.slogdet(jac)[1], model(x, y)[1][0], atol=1e-8)


@pytest.mark.parametrize("h, w", [(8, 8), (16, 24), (24, 8)])
def test_shapes(h, w):
    model = tiny()
    x, y = pair(3, h, w)
    z, logdet = model(x, y)
    feats = model.condition(y)
    assert z.shape == (3, 192, h // 8, w // 8) == feats.prior_mean.shape and logdet.shape == (3,)
    assert set(feats) == {(h // 2, w // 2), (h // 4, w // 4), (h // 8, w // 8)}
    assert model.latent_shape(feats, 5) == (5, 192, h // 8, w // 8)
    assert model.colour_map(y).shape == (3, 3, h, w)
    bpd = model.nll_bpd(x, y, torch.Generator().manual_seed(0))
    assert bpd.shape == (3,) and torch.isfinite(bpd).all()


def test_temperature_zero_is_the_inverse_of_the_prior_mean():
    model = tiny()
    y = pair(2, 16, 16)[1]
    feats = model.condition(y)
    out = model.sample(y, temperature=0.0)
    z = feats.prior_mean
    for layer in reversed(model.layers[:-1]):  # all but PriorMean
        z = layer.inverse(z, feats)[0]
    assert torch.allclose(out, z, atol=1e-12)
    assert model(out, y)[0].abs().max() < 1e-9  # and back: z - mu = 0
    noisy = model.sample(y, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy, out)
    odd = enhance(model, y[0, :, :13, :11])  # padded to 16 x 16, cropped back
    assert odd.shape == (1, 3, 13, 11) and torch.isfinite(odd).all()
    assert torch.allclose(enhance(model, y)[:, 0], out)
    _, rows = model.trace(y, temperature=0.0)
    assert rows[0]["max_abs"] == 0 and rows[1]["name"] == "PriorMean" and len(rows) == len(model.layers) + 1


def test_clear_errors():
    model = tiny()
    x, y = pair(1, 16, 16)
    with pytest.raises(ValueError, match="one shape"):
        model.log_prob(x, y[..., :8])
    with pytest.raises(ValueError, match="one shape"):
        model.log_prob(x, None)
    with pytest.raises(ValueError, match="divisible by 8"):
        model.sample(y[..., :12])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.sample(y[:, :2])
    with pytest.raises(ValueError, match="non-finite"):
        model.sample(torch.full_like(y, math.nan))
    with pytest.raises(ValueError, match=r"dark image must be a \(3, H, W\)"):
        enhance(model, y[0, :2])
    with pytest.raises(ValueError, match="non-finite"):
        enhance(model, torch.full_like(y[0], math.inf))
    with pytest.raises(ValueError, match="unknown coupling"):
        LLFlow(coupling="nope")


# ----------------------------------------------------------------------------- test inputs


def test_ood_sets_are_valid_deterministic_and_out_of_range():
    sets = data.lowlight_ood_sets(32)
    assert tuple(sets) == data.LL_GROUPS
    for group in sets.values():
        for inp in group.values():
            for t in (inp.dark, inp.normal):
                assert t.shape == (3, 32, 32) and 0 <= t.min() and t.max() <= 1 and torch.isfinite(t).all()
            assert inp.why
    again = data.lowlight_ood_sets(32)
    assert all(torch.equal(again[g][n].dark, i.dark) for g in sets for n, i in sets[g].items())
    ref, darker, brighter = sets["reference"], sets["darker"], sets["brighter"]
    for name in darker:  # the same photo, much darker, and far brighter, than its training darkening
        assert darker[name].dark.mean() < ref[name].dark.mean() / 3
        assert brighter[name].dark.mean() > 3 * ref[name].dark.mean()
        assert torch.equal(darker[name].normal, ref[name].normal)
    assert set(sets["content"]) == {*data.OTHER_IMAGES, "checker_1px", "stripes_2px", "uniform_noise"}
    with pytest.raises(ValueError, match="size"):
        data.lowlight_ood_sets(4)


def test_ood_sets_on_other_photos():
    photos = data.PHOTO_SPLITS["wide"].val[:3]
    sets = data.lowlight_ood_sets(16, photos=photos)
    assert tuple(sets) == data.LL_GROUPS
    for g in ("reference", *data.OOD_DARKEN):
        assert tuple(sets[g]) == photos
    assert set(sets["content"]) == set(data.lowlight_ood_sets(16)["content"])
    for bad in ((), ("coffee", "coffee"), ("retina",)):
        with pytest.raises(ValueError, match="photos"):
            data.lowlight_ood_sets(16, photos=bad)


# ----------------------------------------------------------------------------- training


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = LLFlow(**TINY)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = darken(x, torch.Generator().manual_seed(1))[0]
    optim = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for step in range(15):
        loss = model.nll_bpd(x, y, torch.Generator().manual_seed(step)).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert all(map(math.isfinite, losses)) and sum(losses[-3:]) / 3 < losses[0] - 0.5


ARGS = [
    "--levels",
    "2",
    "--hidden",
    "8",
    "--nf",
    "8",
    "--blocks",
    "1",
    "--batch",
    "2",
    "--crop",
    "16",
    "--val-size",
    "32",
    "--save-every",
    "2",
    "--threads",
    "1",
]


def test_command_trains_ships_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINFLOW_DATA", str(tmp_path))
    run = lambda name, *extra: cli.main(
        ["train-lowlight", "--name", name, "--runs", str(tmp_path / "runs"), *ARGS, *extra]
    )
    run("a", "--steps", "3", "--coupling", "spline")
    run("b", "--steps", "2", "--coupling", "spline")
    metrics = run("b", "--steps", "3", "--coupling", "spline")
    assert "resuming b from step 2" in capsys.readouterr().out
    runs = tmp_path / "runs"  # checkpoints go into the run folders, not the data folder
    assert available(tmp_path) == [] and available(runs / "a") == ["a"]
    (sa, _), (sb, mb) = load_state("a", runs / "a"), load_state("b", runs / "b")
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5) for k in sa)  # resumed == straight
    assert mb["metrics"] == metrics and math.isfinite(metrics["val_bpd"]) and "histeq_psnr" in metrics
    assert mb["command"].startswith("python -m minflow train-lowlight --name b") and mb["builder"] == "llflow"
    model = load_pretrained("b", root=runs / "b")
    assert isinstance(model, LLFlow) and model.config["coupling"] == "spline" and model.config["levels"] == 2
    with pytest.raises(SystemExit, match="other settings"):
        run("b", "--steps", "4", "--batch", "3", "--coupling", "spline")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train-lowlight"])
    assert exit_.value.code == 2 and "usage: python -m minflow train-lowlight" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["ll_affine", "ll_spline", "ll_affine_k3", "ll_spline_k3"])
def test_shipped_checkpoint_reproduces_validation_bpd(name):
    def pairs(model, metrics):  # on the photo split it was trained with (manifests before splits: "course")
        photos = model.manifest["training"].get("photos", "course")
        return train.validation_pairs(model, train.LOWLIGHT, metrics["val_size"], metrics["eval_seed"], photos=photos)

    check_shipped_checkpoint(name, "llflow", "python -m minflow", pairs)


def test_match_mean_gain_and_gamma():
    from minflow.lowlight import match_mean

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 0.2  # dark: gain 2 stays below the clamp
    out = match_mean(x, 2 * x.mean((1, 2, 3)), "gain")
    torch.testing.assert_close(out, 2 * x)
    target = torch.tensor([0.3, 0.6])
    out = match_mean(x, target, "gamma")
    torch.testing.assert_close(out.mean((1, 2, 3)), target, atol=1e-4, rtol=0)
    # a tone curve keeps the order of values (monotone) and the image in [0, 1]
    flat_x, flat_o = x[0].flatten(), out[0].flatten()
    assert torch.equal(flat_x.argsort(), flat_o.argsort()) and out.min() >= 0 and out.max() <= 1
    assert match_mean(x[0], 0.5, "gamma").shape == x[0].shape  # CHW in, CHW out


BAD_MATCH = [(0.0, "gain", "target mean"), (1.2, "gamma", "target mean"), (math.nan, "gain", "target mean"),
             (0.5, "log", "curve")]  # fmt: skip


@pytest.mark.parametrize("mean, curve, match", BAD_MATCH)
def test_match_mean_refuses_bad_input(mean, curve, match):
    from minflow.lowlight import match_mean

    with pytest.raises(ValueError, match=match):
        match_mean(torch.rand(3, 8, 8), mean, curve)
