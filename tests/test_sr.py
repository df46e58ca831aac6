"""The small SRFlow (minflow.sr), its training command (python -m minflow train-sr) and the shipped checkpoint."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import check_shipped_checkpoint

from minflow.checkpoints import available, data_dir, load_pretrained, load_state
from minflow.couplings import Affine, Coupling
from minflow.sr import SRFlow, make_bijection, super_resolve
from minflow.transforms import Split

TINY = dict(levels=3, flow_steps=1, hidden=8, nf=8, blocks=1, gc=4, cond_channels=8)


def tiny(**kw) -> SRFlow:
    """A small float64 model with ActNorm initialised and every zero-initialised layer perturbed,
    so that no coupling, injector or prior is the identity."""
    torch.manual_seed(0)
    model = SRFlow(**(TINY | kw)).double()
    hr = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    model(hr, F.avg_pool2d(hr, model.factor))  # data-dependent ActNorm init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def pair(b: int, h: int, w: int, factor: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    hr = torch.rand(b, 3, h * factor, w * factor, dtype=torch.float64)
    return hr, F.avg_pool2d(hr, factor)


@pytest.mark.parametrize("prior", ["srflow", "conditional"])
def test_round_trip_float64(prior):
    model = tiny(prior=prior)
    hr, lr = pair(2, 6, 10)
    feats = model.condition(lr)
    x, dropped, logdet = hr, [], torch.zeros(2, dtype=torch.float64)
    for layer in model.layers:
        if isinstance(layer, Split):
            dropped.append(x[:, layer.keep :])
        x, ld = layer(x, feats)
        logdet = logdet + ld
    assert torch.allclose(logdet, model(hr, lr)[1])
    inv_logdet = torch.zeros_like(logdet)
    for layer in reversed(model.layers):
        kw = {"z2": dropped.pop()} if isinstance(layer, Split) else {}
        x, ld = layer.inverse(x, feats, **kw)
        inv_logdet = inv_logdet + ld
    assert (x - hr).abs().max() < 1e-10
    assert torch.allclose(inv_logdet, -logdet)
    assert torch.isfinite(model.log_prob(hr, lr)).all()
    splits = [layer for layer in model.layers if isinstance(layer, Split)]
    assert len(splits) == 2 and all(s.cond_channels == (8 if prior == "conditional" else 0) for s in splits)


def test_logdet_matches_autograd_jacobian():
    """One level (no split) is a bijection of R^48: its logdet is log|det J| of the whole map."""
    model = tiny(levels=1, factor=2, flow_steps=2)
    hr, lr = pair(1, 2, 2, factor=2)
    z, logdet = model(hr, lr)
    jac = torch.autograd.functional.jacobian(lambda x: model(x.view_as(hr), lr)[0].flatten(), hr.flatten())
    assert torch.allclose(torch.linalg.slogdet(jac)[1], logdet[0], atol=1e-8)


@pytest.mark.parametrize("h, w", [(2, 2), (4, 6), (10, 4)])
def test_shapes(h, w):
    model = tiny()
    hr, lr = pair(3, h, w)
    z, logdet = model(hr, lr)
    assert z.shape == (3, 48, h // 2, w // 2) and logdet.shape == (3,)
    assert model.latent_shape(model.condition(lr), 5) == (5, 48, h // 2, w // 2)
    bpd = model.nll_bpd(hr, lr, torch.Generator().manual_seed(0))
    assert bpd.shape == (3,) and torch.isfinite(bpd).all()
    assert model.sample(lr, temperature=0.5).shape == hr.shape


def test_super_resolve_any_size_and_unclamped():
    model = tiny()
    lr = torch.rand(3, 5, 7, dtype=torch.float64)  # odd: padded to 6 x 8, cropped back
    x = super_resolve(model, lr, temperature=1.0, num_samples=3, chunk=2, generator=torch.Generator().manual_seed(1))
    assert x.shape == (3, 3, 20, 28)
    y = super_resolve(model, lr, temperature=1.0, num_samples=3, chunk=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, y)
    assert x.min() < 0 or x.max() > 1  # nothing clamped
    assert super_resolve(model, torch.rand(2, 3, 4, 4), num_samples=2).shape == (2, 2, 3, 16, 16)
    out, rows = model.trace(torch.rand(2, 3, 4, 4, dtype=torch.float64), temperature=0.9)
    assert out.shape == (2, 3, 16, 16) and len(rows) == len(model.layers) + 1
    assert all(0 < r["min_scale"] <= 1 + 1e-4 for r in rows if r["name"] in ("Injector", "Coupling"))


def test_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"LR must be a \(3, h, w\)"):
        super_resolve(model, torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="non-finite"):
        super_resolve(model, torch.full((3, 4, 4), math.nan))
    with pytest.raises(ValueError, match="4x the LR size"):
        model.log_prob(pair(1, 4, 4)[0], torch.rand(1, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by 2"):
        model.sample(torch.rand(1, 3, 3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown coupling"):
        SRFlow(coupling="nope")
    with pytest.raises(ValueError, match="power of 2"):
        SRFlow(factor=3)
    with pytest.raises(FileNotFoundError, match="no checkpoint named"):
        load_pretrained("no_such_checkpoint")


def test_coupling_choice():
    model = SRFlow(**(TINY | {"coupling": "softclamp"}))
    scales = {m.bijection.scale_name for m in model.modules() if isinstance(m, Coupling)}
    assert scales == {"softclamp"}
    sig = make_bijection("affine")
    assert isinstance(sig, Affine) and sig.scale_name == "sigmoid" and sig.eps == 1e-4
    splines = pytest.importorskip("minflow.splines")
    if hasattr(splines, "BoundedSpline"):
        assert torch.isfinite(tiny(coupling="spline").log_prob(*pair(1, 2, 2))).all()


def test_metrics():
    from minflow.train import psnr, ssim

    x = torch.rand(3, 32, 32)
    assert psnr(x, x) == math.inf and ssim(x, x) == pytest.approx(1.0)
    assert psnr(x, x + 0.1) == pytest.approx(20.0, abs=1e-3)
    assert ssim(x, torch.rand(3, 32, 32)) < 0.2


# ----------------------------------------------------------------------------- the command

ARGS = [
    "--levels",
    "2",
    "--flow-steps",
    "1",
    "--hidden",
    "8",
    "--nf",
    "8",
    "--blocks",
    "1",
    "--batch",
    "2",
    "--crop",
    "32",
    "--val-size",
    "64",
    "--val-samples",
    "1",
    "--save-every",
    "2",
    "--no-progress",
    "--threads",
    "1",
]


def run(tmp_path, name, *extra):
    from minflow.cli import main

    return main(["train-sr", "--name", name, "--runs", str(tmp_path / "runs"), *ARGS, *extra])


def test_command_trains_ships_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINFLOW_DATA", str(tmp_path))
    run(tmp_path, "a", "--steps", "4")
    run(tmp_path, "b", "--steps", "2", "--early", "1")
    metrics = run(tmp_path, "b", "--steps", "4")
    assert "resuming b from step 2" in capsys.readouterr().out
    runs = tmp_path / "runs"  # checkpoints go into the run folders, not the data folder
    assert (
        available(tmp_path) == [] and available(runs / "a") == ["a"] and set(available(runs / "b")) == {"b", "b_early"}
    )
    (sa, ma), (sb, mb) = load_state("a", runs / "a"), load_state("b", runs / "b")
    assert ma["steps"] == mb["steps"] == 4 and load_state("b_early", runs / "b")[1]["steps"] == 1
    assert all(torch.allclose(sa[k].float(), sb[k].float(), atol=1e-5) for k in sa)  # resumed == straight
    assert mb["metrics"] == metrics and math.isfinite(metrics["val_bpd"]) and "bicubic_psnr" in metrics
    assert mb["command"].startswith("python -m minflow train-sr --name b") and mb["seed"] == 0
    model = load_pretrained("b", root=runs / "b")
    assert model.config["levels"] == 2
    with pytest.raises(SystemExit, match="other settings"):
        run(tmp_path, "b", "--steps", "6", "--batch", "3")


def test_nonfinite_guard(tmp_path, monkeypatch):
    monkeypatch.setenv("MINFLOW_DATA", str(tmp_path))
    calls = []

    def nan_after_two(self, hr, lr, generator=None):
        calls.append(1)
        out = self.bits_per_dim(hr, lr)
        return out * math.nan if len(calls) > 2 else out

    monkeypatch.setattr(SRFlow, "nll_bpd", nan_after_two)
    with pytest.raises(SystemExit, match="non-finite loss at step 3.*before the update of step 2.*\\(step 1\\)"):
        run(tmp_path, "bad", "--steps", "5")
    assert available(tmp_path) == available(tmp_path / "runs" / "bad") == []  # no checkpoint saved
    assert torch.load(tmp_path / "runs" / "bad" / "state.pt", weights_only=True)["step"] == 1


# ----------------------------------------------------------------------------- shipped checkpoint


@pytest.mark.parametrize(
    "name", ["sr_affine", "sr_affine_early", "sr_spline", "sr_spline_full", "sr_spline_full_cprior"]
)
def test_shipped_checkpoint_reproduces_validation_bpd(name):
    from minflow.train import SR, validation_pairs

    def pairs(model, metrics):  # on the photo split it was trained with (manifests before splits: "course")
        return validation_pairs(
            model, SR, metrics["val_size"], photos=model.manifest["training"].get("photos", "course")
        )

    check_shipped_checkpoint(name, "srflow", "python -m minflow", pairs)


@pytest.mark.skipif("sr_affine" not in available(), reason="sr_affine checkpoint not shipped yet")
def test_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for ext in ("pt", "json"):
        shutil.copy(data_dir() / "checkpoints" / f"sr_affine.{ext}", tmp_path / "checkpoints")
    with open(tmp_path / "checkpoints" / "sr_affine.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(RuntimeError, match="corrupt"):
        load_state("sr_affine", tmp_path)
    assert json.loads((tmp_path / "checkpoints" / "sr_affine.json").read_text())["name"] == "sr_affine"
    (tmp_path / "checkpoints" / "sr_affine.pt").unlink()
    with pytest.raises(FileNotFoundError, match="is missing. Recreate it with: python -m minflow.train"):
        load_state("sr_affine", tmp_path)


def test_config_dataclass_builds_the_same_model_and_checks_itself():
    from minflow import checkpoints
    from minflow.imageflow import ImageFlow
    from minflow.lowlight import LLFlow, LLFlowConfig
    from minflow.sr import SRFlowConfig

    cfg = SRFlowConfig(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1)
    torch.manual_seed(0)
    a = SRFlow(cfg)
    torch.manual_seed(0)
    b = checkpoints.build("srflow", dict(a.config))  # as a manifest stores it
    assert a.config == b.config == dict(vars(cfg)) and all(
        torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict()
    )
    assert SRFlow(cfg, coupling="tanh").config["coupling"] == "tanh" and a.lr_multiple == cfg.lr_multiple == 1
    for bad, match in [
        ({"factor": 3}, "power of 2"),
        ({"prior": "x"}, "prior"),
        ({"coupling": "nope"}, "unknown coupling"),
    ]:
        with pytest.raises(ValueError, match=match):
            SRFlowConfig(**bad)
    with pytest.raises(TypeError):
        SRFlowConfig(nope=1)
    # one base owns dequantisation, bits per dim and padded sampling for both image flows
    for cls in (SRFlow, LLFlow):
        assert issubclass(cls, ImageFlow) and all(
            name not in vars(cls) for name in ("dequantize", "nll_bpd", "sample_images")
        )
    assert LLFlowConfig().lr_multiple == 8 and LLFlowConfig.factor == 1


# ----------------------------------------------------------------------------- target="residual"


def hr_twin(model: SRFlow) -> SRFlow:
    """The "hr" flow with the weights of residual-mode `model`: the same layers without the first (`Offset`)."""
    twin = SRFlow(**(model.config | {"target": "hr"})).double().eval()
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("layers."):
            index, rest = key[len("layers.") :].split(".", 1)
            key = f"layers.{int(index) - 1}.{rest}"
        state[key] = value
    twin.load_state_dict(state)
    return twin


def test_residual_nll_of_x_is_the_flows_nll_of_the_residual():
    from minflow.data import bicubic_up
    from minflow.transforms import Offset

    model = tiny(target="residual")
    assert isinstance(model.layers[0], Offset) and model.target == "residual" and tiny().target == "hr"
    twin = hr_twin(model)
    hr, lr = pair(2, 6, 10)
    noise = torch.rand(hr.shape, generator=torch.Generator().manual_seed(4), dtype=hr.dtype) - 0.5
    r = model.dequantize(hr, noise=noise) - bicubic_up(lr, 4)  # by hand: the dequantised HR minus bicubic
    by_hand = twin.bits_per_dim(r, lr) + math.log2(model.quant)
    bpd = model.nll_bpd(hr, lr, noise=noise)
    assert torch.allclose(bpd, by_hand, rtol=0, atol=1e-12)
    assert (bpd - twin.nll_bpd(hr, lr, noise=noise)).abs().min() > 1e-3  # the image itself scores otherwise
    z, logdet = model(hr, lr)
    z_r, logdet_r = twin(hr - bicubic_up(lr, 4), lr)
    assert torch.allclose(z, z_r, rtol=0, atol=1e-12) and torch.allclose(logdet, logdet_r, rtol=0, atol=1e-10)


def test_residual_sample_then_nll_recovers_the_latent():
    from minflow.data import bicubic_up

    model = tiny(target="residual")
    _, lr = pair(2, 4, 6)
    feats = model.condition(lr)
    z = torch.randn(model.latent_shape(feats, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x, inv_logdet = model.inverse(z, lr, temperature=0.8, generator=torch.Generator().manual_seed(2))
    twin_x, _ = hr_twin(model).inverse(z, lr, temperature=0.8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(x, bicubic_up(lr, 4) + twin_x, rtol=0, atol=1e-12)  # x = up(y) + f^-1(z; y)
    z_back, logdet = model(x, lr)
    assert (z_back - z).abs().max() < 1e-9 and torch.isfinite(logdet).all()


def test_residual_at_temperature_zero_is_bicubic_when_the_flow_maps_zero_to_zero():
    """A fresh flow keeps its zero-initialised last layers (conditioner outputs, ActNorm and split-prior
    biases); every other weight is made random. Every layer's inverse then maps 0 to 0 (linear maps,
    couplings with zero parameters, split means conv(0) = 0), so at T = 0 the residual is 0 and the
    sample is exactly the bicubic upscale."""
    from minflow.apply import sampling_pass
    from minflow.data import bicubic_up

    torch.manual_seed(0)
    model = SRFlow(**TINY, target="residual").double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.abs().max() > 0 or name.endswith("logs") or name.endswith("prior.weight"):
                p.add_(0.05 * torch.randn_like(p))
    lr = torch.rand(2, 3, 4, 6, dtype=torch.float64)
    up = bicubic_up(lr, 4)
    assert hr_twin(model).sample(lr, temperature=0.0).abs().max() == 0  # the flow alone: 0 at z = 0
    assert torch.equal(model.sample(lr, temperature=0.0), up)
    assert torch.equal(super_resolve(model, lr, temperature=0.0)[:, 0], up)
    x, _, kept = sampling_pass(model, model.condition(lr[:1]), 3, 0.0, keep=True)
    assert torch.equal(x, up[:1].expand(3, -1, -1, -1)) and kept[-1][0] == 0 and kept[-2][1].abs().max() == 0
    out, rows = model.trace(lr, temperature=0.0)
    assert torch.equal(out, up) and rows[-1]["name"] == "Offset" and rows[-2]["max_abs"] == 0
    assert (model.sample(lr, temperature=0.7) - up).abs().max() > 1e-3  # T > 0 adds a residual


def test_target_is_checked_and_old_manifests_load_as_hr(tmp_path):
    from minflow import checkpoints
    from minflow.sr import TARGETS, SRFlowConfig

    assert TARGETS == ("hr", "residual") and SRFlowConfig().target == "hr"
    with pytest.raises(ValueError, match=r"target must be one of \('hr', 'residual'\), got 'bicubic'"):
        SRFlowConfig(target="bicubic")
    model = SRFlow(**TINY)
    checkpoints.save_checkpoint(model, "old", "srflow", model.config, {"command": "x"}, root=tmp_path)
    path = tmp_path / "checkpoints" / "old.json"
    manifest = json.loads(path.read_text())
    assert manifest["config"]["target"] == "hr"
    del manifest["config"]["target"]  # as manifests written before the option were
    manifest["config_sha256"] = checkpoints.config_digest("srflow", manifest["config"])
    path.write_text(json.dumps(manifest))
    loaded = load_pretrained("old", root=tmp_path)
    assert loaded.target == "hr" and loaded.config == model.config
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    for name in [n for n in available() if n.startswith("sr_")]:  # shipped: the target their manifest names
        assert load_pretrained(name).target == checkpoints.read_manifest(name)["config"].get("target", "hr")


def test_train_sr_takes_target(monkeypatch, tmp_path):
    from minflow import cli, train

    seen = {}
    monkeypatch.setattr(train, "train_images", lambda task, model, *rest, **kw: seen.update(model=model))
    cli.main(["train-sr", "--name", "x", "--runs", str(tmp_path), "--target", "residual"])
    assert seen["model"].target == "residual"
    cli.main(["train-sr", "--name", "x", "--runs", str(tmp_path)])
    assert seen["model"].target == "hr"
    with pytest.raises(SystemExit):
        cli.main(["train-sr", "--name", "x", "--runs", str(tmp_path), "--target", "image"])
