"""The conditional flow object, the base, checkpoints, and the small helpers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import jacobian_logdet, randomize_zero_layers

import minflow as mf
from minflow import checkpoints


def toy(steps=3, cond_c=2, scale="sigmoid"):
    layers = []
    for _ in range(steps):
        layers += [
            mf.ActNorm(2),
            mf.InvConv1x1(2),
            mf.Coupling(2, cond_c, mf.Affine(scale), kind="mlp", hidden=16, depth=2),
        ]
    return mf.ConditionalFlow(layers, event_shape=(2,))


def image_flow(prior_cond=0):
    """Two levels: squeeze, a conditional step, split; features looked up by resolution."""
    layers = []
    c = 3
    for _ in range(2):
        c *= 4
        layers += [
            mf.Squeeze(),
            mf.ActNorm(c),
            mf.InvConv1x1(c, lu=True),
            mf.Injector(c, 2, kind="conv", hidden=4),
            mf.Coupling(c, 2, kind="conv", hidden=4),
            mf.Split(c, cond_channels=prior_cond),
        ]
        c = c - c // 2
    return mf.ConditionalFlow(layers)


def feats(b, size=8, dtype=torch.float64):
    return mf.Features(
        {
            (size // 2, size // 2): torch.randn(b, 2, size // 2, size // 2, dtype=dtype),
            (size // 4, size // 4): torch.randn(b, 2, size // 4, size // 4, dtype=dtype),
        }
    )


def test_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    flow = randomize_zero_layers(toy()).double()
    flow(torch.randn(64, 2, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64))  # ActNorm init
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    z, _ = flow(x, y)
    logdet = jacobian_logdet(lambda v, c: flow(v, c)[0], x, y)
    expected = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet
    assert torch.allclose(flow.log_prob(x, y), expected, atol=1e-10)
    assert torch.allclose(flow.bits_per_dim(x, y), -expected / (2 * math.log(2)), atol=1e-10)


def test_density_integrates_to_one():
    torch.manual_seed(1)
    flow = randomize_zero_layers(toy(cond_c=0), 0.2).double().eval()
    g = torch.linspace(-8, 8, 401, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = flow.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert p.item() == pytest.approx(1.0, abs=2e-3)


def test_sample_inverts_forward_and_temperature():
    torch.manual_seed(0)
    flow = randomize_zero_layers(toy()).double().eval()  # eval: no ActNorm initialisation mid-test
    y = torch.randn(5, 2, dtype=torch.float64)
    z = torch.randn(5, 2, dtype=torch.float64)
    x = flow.sample(y, z=z)
    assert torch.allclose(flow(x, y)[0], z, atol=1e-10)
    x_t0 = flow.sample(y, temperature=0.0)
    assert torch.allclose(x_t0, flow.sample(y, z=torch.zeros_like(z)))
    with pytest.raises(ValueError, match="num_samples"):
        flow.sample(y, num_samples=3)
    unconditional = toy(cond_c=0)
    assert unconditional.sample(num_samples=7).shape == (7, 2)
    with pytest.raises(ValueError, match="num_samples"):
        unconditional.sample()


def test_image_flow_round_trip_with_splits():
    torch.manual_seed(0)
    flow = randomize_zero_layers(image_flow(), 0.1).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    f = feats(2)
    z, logdet = flow(x, f)
    assert z.shape == (2, 12, 2, 2)  # 3 -> squeeze 12 -> keep 6 -> squeeze 24 -> keep 12
    # inverse with the split halves taken from the forward pass is exact: recompute them
    zs, h = [], x
    for layer in flow.layers:
        if isinstance(layer, mf.Split):
            zs.append(h[:, layer.keep :])
        h, _ = layer(h, f)
    h = z
    for layer in reversed(flow.layers):
        h, _ = layer.inverse(h, f, z2=zs.pop()) if isinstance(layer, mf.Split) else layer.inverse(h, f)
    assert torch.allclose(h, x, atol=1e-10)
    assert torch.isfinite(flow.log_prob(x, f)).all()
    xs = flow.sample(f, z=torch.randn(2, 12, 2, 2, dtype=torch.float64), temperature=0.5)
    assert xs.shape == x.shape


def test_trace_reports_every_layer_and_the_smallest_scale():
    torch.manual_seed(0)
    flow = toy()
    last = flow.layers[-1]
    with torch.no_grad():
        last.net[-1].bias.copy_(torch.tensor([0.0, -40.0]))  # h = -40 in the last coupling: s = eps
    y = torch.randn(50, 2)
    x, rows = flow.trace(y, temperature=1.0)
    assert [r["index"] for r in rows] == list(range(len(flow.layers), -1, -1))
    assert rows[0]["name"] == "latent" and rows[1]["name"] == "Coupling"
    assert rows[1]["min_scale"] == pytest.approx(1e-4, rel=1e-3)
    # dividing by s = 1e-4 multiplies the variance by ~1e8 exactly at that coupling
    assert rows[1]["variance"] > 1e6 * rows[0]["variance"]
    assert all(r["min_scale"] is None for r in rows if r["name"] != "Coupling")
    assert "Coupling" in mf.format_trace(rows)


def test_recording_a_sample_gives_the_trace_rows():
    torch.manual_seed(0)
    flow = randomize_zero_layers(toy())
    y, z = torch.randn(20, 2), torch.randn(20, 2)
    flow.log_prob(torch.randn(20, 2), y)  # ActNorm's initialisation
    flow.eval()
    _, rows = flow.trace(y, z=z)
    with mf.recording(rows=True) as rec, mf.recording() as scales_only:
        flow.log_prob(torch.randn(20, 2), y)  # density-direction scales are not a sampling row's
        flow.sample(y, z=z)
    assert rec.rows == rows and scales_only.rows == []
    assert rec.min_scale().shape == (20,) and len(scales_only.scales) == 2 * 3  # 3 couplings, both passes


def test_the_flow_passes_the_sampling_keywords_to_every_layer():
    class Noisy(mf.Transform):
        """Adds T * noise when sampling: a layer of one's own that draws noise."""

        def forward(self, x, cond=None):
            return x, x.new_zeros(x.shape[0])

        def inverse(self, z, cond=None, *, temperature=1.0, generator=None):
            return z + temperature * torch.randn(z.shape, generator=generator), z.new_zeros(z.shape[0])

    flow = mf.ConditionalFlow([Noisy()], event_shape=(2,))
    z = torch.zeros(3, 2)
    at = lambda t: flow.inverse(z, temperature=t, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(at(0.0), z) and torch.allclose(at(0.5), 0.5 * at(1.0))


def test_trace_counts_nonfinite_values():
    flow = toy(steps=1)
    x, rows = flow.trace(torch.zeros(3, 2), z=torch.tensor([[1.0, float("inf")], [0.0, 0.0], [0.0, float("nan")]]))
    assert rows[0]["nonfinite"] == 2
    assert rows[-1]["nonfinite"] >= 2


def test_flow_rejects_nonfinite_condition():
    with pytest.raises(ValueError, match="non-finite"):
        toy().log_prob(torch.zeros(2, 2), torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


def test_standard_normal():
    base = mf.StandardNormal()
    z = base.sample((20000, 3), temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert abs(z.std().item() - 0.7) < 0.01
    assert torch.allclose(base.log_prob(torch.zeros(2, 3)), torch.full((2,), -1.5 * math.log(2 * math.pi)))


# ----------------------------------------------------------------------------- utils


def test_quick_mode(monkeypatch):
    monkeypatch.setenv("MINFLOW_QUICK", "1")
    assert mf.quick_mode() and mf.pick(100, 5) == 5
    monkeypatch.setenv("MINFLOW_QUICK", "0")
    assert not mf.quick_mode() and mf.pick(100, 5) == 100
    monkeypatch.setenv("MINFLOW_QUICK", "maybe")
    with pytest.raises(ValueError, match="MINFLOW_QUICK"):
        mf.quick_mode()


def test_device_and_seed():
    assert mf.get_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    mf.seed_everything(3)
    a = torch.randn(3)
    mf.seed_everything(3)
    assert torch.equal(a, torch.randn(3))


# ----------------------------------------------------------------------------- checkpoints


@checkpoints.register_builder("test-toy")
def _build_test_toy(steps: int = 2):
    return toy(steps)


def test_checkpoint_round_trip_and_checksum(tmp_path):
    torch.manual_seed(0)
    model = randomize_zero_layers(_build_test_toy(steps=2))
    record = {"command": "pytest", "seed": 0, "wall_time_s": 0.0, "metrics": {"x": 1.0}}
    checkpoints.save_checkpoint(model, "t", "test-toy", {"steps": 2}, record, root=tmp_path)
    assert checkpoints.available(tmp_path) == ["t"]
    loaded = checkpoints.load_pretrained("t", root=tmp_path)
    y, z = torch.randn(3, 2), torch.randn(3, 2)
    assert torch.equal(loaded.sample(y, z=z), model.eval().sample(y, z=z))
    assert loaded.manifest["metrics"] == {"x": 1.0}
    pt = tmp_path / "checkpoints" / "t.pt"
    data = bytearray(pt.read_bytes())
    data[-10] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="corrupt.*pytest"):
        checkpoints.load_pretrained("t", root=tmp_path)
    pt.unlink()
    with pytest.raises(FileNotFoundError, match="missing.*pytest"):
        checkpoints.load_pretrained("t", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint named 'u'"):
        checkpoints.load_pretrained("u", root=tmp_path)


def test_smallest_scale_ignores_nan_elements():
    """A NaN reaching some elements of a layer must not hide the small scale the others used."""
    layer = mf.Injector(1, 1, kind="conv", hidden=2)
    with torch.no_grad():
        layer.net[-1].bias.copy_(torch.tensor([0.0, -30.0]))  # t = 0, h = -30: s = eps wherever finite
    cond = torch.zeros(2, 1, 8, 8)
    cond[0, 0, 0, 0] = float("nan")  # spoils a corner of sample 0 only
    cond[1] = float("nan")  # spoils all of sample 1
    with mf.recording() as rec:
        layer.inverse(torch.ones(2, 1, 8, 8), cond)
    scale = rec.min_scale()
    assert scale[0].item() == pytest.approx(1e-4, rel=1e-3)
    assert math.isnan(scale[1].item())
    from minflow.utils import nanmin  # how recordings, trace rows and artifact reports take it

    assert nanmin(torch.tensor([float("nan"), 0.1, 0.3])).item() == pytest.approx(0.1)
    assert math.isnan(nanmin(torch.tensor([float("nan")])).item())
    v = torch.tensor([[math.nan, 0.3, 2.0], [math.nan, math.nan, math.nan], [math.inf, math.inf, math.inf]])
    got = nanmin(v, 1)
    assert got[0] == 0.3 and math.isnan(got[1]) and got[2] == math.inf
    assert math.isnan(nanmin(torch.tensor([])).item())
    assert nanmin(torch.tensor([math.nan, -math.inf])).item() == -math.inf
    assert nanmin(torch.tensor([[math.inf, math.nan], [-math.inf, -math.inf]]), 1).tolist() == [math.inf, -math.inf]


def test_noise_comes_from_the_generators_device(monkeypatch):
    """A CPU generator drives sampling wherever the model lives (no device clash on a GPU)."""
    from minflow import transforms

    drawn = []
    real = torch.randn

    def spy(*args, **kwargs):
        drawn.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transforms.torch, "randn", spy)
    g = torch.Generator().manual_seed(0)
    a = transforms.randn((3, 2), device="cpu", generator=g)
    assert drawn[-1] == g.device and a.device.type == "cpu"
    assert torch.equal(transforms.randn((3, 2), generator=torch.Generator().manual_seed(0)), a)


@pytest.mark.parametrize("task", ["sr", "lowlight"])
def test_sampling_encodes_each_distinct_condition_once(task):
    """Rows of cond that repeat (several samples of one input) go through the encoder once, and
    through each injector's network once; the samples equal those drawn with every row encoded."""
    from minflow.lowlight import LLFlow
    from minflow.sr import SRFlow

    torch.manual_seed(0)
    small = dict(levels=2, flow_steps=1, hidden=8, nf=8, blocks=1, gc=4, cond_channels=8)
    model, size = (SRFlow(**small), 4) if task == "sr" else (LLFlow(**small), 8)
    model = model.double().eval()
    randomize_zero_layers(model, 0.05)
    a, b = torch.rand(2, 1, 3, size, size, dtype=torch.float64)
    cond = torch.cat([a, b, a, a, b])
    seen, injected = [], []
    model.encoder.register_forward_hook(lambda mod, inp, out: seen.append(len(inp[0])))
    injectors = [layer for layer in model.layers if isinstance(layer, mf.Injector)]
    for layer in injectors:
        layer.net.register_forward_hook(lambda mod, inp, out: injected.append(len(inp[0])))
    with torch.no_grad():
        x = model.sample(cond, temperature=0.8, generator=torch.Generator().manual_seed(1))
        model._condition_once = model.condition  # every row encoded
        x_all = model.sample(cond, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert seen == [2, 5]  # two distinct rows, then all five
    assert injectors and injected == [2] * len(injectors) + [5] * len(injectors)  # the injectors' networks too
    assert torch.allclose(x, x_all, rtol=0, atol=1e-10)
    assert not torch.allclose(x[0], x[2])  # the same condition, other latents
