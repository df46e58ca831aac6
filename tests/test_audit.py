"""`minflow.audit` on the toy, the small SRFlow and a flow built from minflow parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import randomize

import minflow as mf
from minflow import apply, metrics, toy
from minflow.audits import Calibration
from minflow.checkpoints import load_pretrained


def toy_outlier(x, cond):
    """Chapter 6's toy event: outside the true support blown up 2x (or non-finite)."""
    u = toy.to_u(x.double(), cond.double())
    return ~(torch.isfinite(u).all(1) & (u.abs().amax(1) <= 2))


def ring(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.logspace(-1, 3, n)
    a = torch.rand(n, generator=g) * 2 * math.pi
    return torch.stack([r * a.cos(), r * a.sin()], 1)


def test_toy_audit_slopes_rates_and_calibration():
    flow = load_pretrained("toy_affine_s0")
    reference = toy.sample_y(2000, torch.Generator().manual_seed(1))
    conds, calib = ring(12, 0), ring(12, 1)
    rep = mf.audit(flow, conds, temperature=1.0, samples=50, reference=reference, calibration_conds=calib,
                   artifact=toy_outlier, seed=3)  # fmt: skip
    # the smallest slope per coupling is what a recording of the same draws reports
    gen, direct = torch.Generator().manual_seed(3), {}
    index = {id(layer): i for i, layer in enumerate(flow.layers)}
    events = []
    with torch.no_grad():
        for k in range(len(conds)):
            rep_c = conds[k : k + 1].expand(50, 2).contiguous()
            with mf.recording() as rec:
                x = flow.sample(rep_c, temperature=1.0, generator=gen)
            events.append(toy_outlier(x, rep_c).double().mean().item())
            for layer, s in rec.scales:
                direct[index[id(layer)]] = min(direct.get(index[id(layer)], math.inf), s.min().item())
    got = {r["index"]: r["min_slope"] for r in rep.layers if r["min_slope"] is not None}
    assert got == pytest.approx(direct)
    assert rep.measured_rate == pytest.approx(np.mean(events))
    assert 0 < rep.predicted_rate < 1 and rep.calibration.b > 0  # farther out, more outliers
    assert rep.log10_bound == pytest.approx(sum(math.log10(r["factor"]) for r in rep.layers))
    assert all(name.endswith("Coupling") for name in rep.not_covered) and rep.not_covered  # cross-terms named
    # the calibration depends on the calibration inputs only, not on the audited ones
    other = mf.audit(flow, conds[:3], temperature=1.0, samples=50, reference=reference, calibration_conds=calib,
                     artifact=toy_outlier, seed=3)  # fmt: skip
    assert (other.calibration.a, other.calibration.b) == (rep.calibration.a, rep.calibration.b)
    json.dumps(rep.to_dict())
    assert len(rep.plot().axes) >= 4


def test_the_bound_bounds_the_jacobian_of_a_flow_without_cross_terms():
    """ActNorm, 1x1 conv and injectors only (their parameters read the condition, never x): then the
    product of the layers' factors bounds the sampling map's Jacobian at every audited draw."""
    torch.manual_seed(0)
    layers = []
    for _ in range(3):
        layers += [mf.ActNorm(3), mf.InvConv1x1(3), mf.Injector(3, 2, kind="mlp", hidden=16, depth=2)]
    flow = randomize(mf.ConditionalFlow(layers, event_shape=(3,)), std=0.5, generator=torch.Generator().manual_seed(1))
    flow.eval()
    conds = torch.randn(4, 2, generator=torch.Generator().manual_seed(2)) * 3
    rep = mf.audit(flow, conds, temperature=1.0, samples=6, reference=torch.randn(500, 2), seed=5)
    assert rep.not_covered == [] and rep.calibration is None and rep.predicted_rate is None
    gen, worst = torch.Generator().manual_seed(5), 0.0
    for k in range(len(conds)):
        z_all = torch.randn(6, 3, generator=gen)  # the draws audit made (temperature 1)
        for z in z_all.double():
            jac = torch.autograd.functional.jacobian(
                lambda v: flow.double().inverse(v[None], conds[k : k + 1].double())[0][0], z
            )
            worst = max(worst, torch.linalg.matrix_norm(jac, 2).item())
        flow.float()
    assert 1 < worst <= 10**rep.log10_bound * (1 + 1e-4)


def test_calibration_recovers_a_known_logistic_curve():
    g = np.random.default_rng(0)
    d = np.exp(g.uniform(0, 4, 40_000))
    p = 1 / (1 + np.exp(-(-8 + 3 * np.log(d))))
    cal = Calibration.fit(d, g.random(d.size) < p)
    assert cal.a == pytest.approx(-8, abs=0.3) and cal.b == pytest.approx(3, abs=0.1)
    assert np.all(np.diff(cal(np.sort(d))) >= 0)


def test_sr_audit_maps_and_measured_rate():
    flow = load_pretrained("sr_affine")
    sets = mf.data.ood_sets()
    lr = torch.stack([sets["reference"]["coffee"].lr, *[it.lr for it in list(sets["content"].values())[:1]]])
    calib = torch.stack([it.lr for it in list(sets["content"].values())[1:3]])
    rep = mf.audit(flow, lr, temperature=0.9, samples=2, calibration_conds=calib, seed=0)
    assert [r.shape for r in rep.risk] == [(64, 64), (64, 64)]
    stats = apply.load_ood_stats("sr_affine")
    np.testing.assert_allclose(rep.risk[0], stats.score_maps(apply.risk_features(flow, lr[:1]))[0].numpy(), rtol=1e-6)
    gen, rates = torch.Generator().manual_seed(0), []
    with torch.no_grad():
        for k in range(2):
            x, _, _ = apply.sampling_pass(flow, flow.condition(lr[k : k + 1]), 2, 0.9, gen)
            rates.append(F.max_pool2d(metrics.artifact_mask(x).float(), 4).mean().item())
    assert rep.measured_rate == pytest.approx(np.mean(rates))
    assert rep.smallest_slope is not None and rep.smallest_slope >= 1e-4 * (1 - 1e-6)  # the affine floor
    assert {n.split(":")[1] for n in rep.not_covered} == {"Coupling", "Split"}
    assert len(rep.layers) == len(flow.layers) and 0 <= rep.predicted_rate <= 1
    d = rep.to_dict()
    json.dumps(d)
    assert d["amplification_bound"] >= 1 and len(d["per_input"]) == 2


def test_a_flow_without_statistics_needs_a_reference():
    flow = mf.ConditionalFlow([mf.ActNorm(2)], event_shape=(2,))
    with pytest.raises(ValueError, match="reference"):
        mf.audit(flow, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="conds"):
        mf.audit(flow, torch.zeros(2), reference=torch.randn(10, 2))


def test_explorer_redraws_on_a_new_temperature_and_traces_the_picked_pixel():
    pytest.importorskip("ipywidgets")
    ex = mf.explorer.explore(models=["sr_affine"], samples=2)
    first, rows = bytes(ex.image.value), ex.rows
    assert first.startswith(b"\x89PNG") and len(rows) == len(ex._model("sr_affine")[0].layers) + 1
    assert rows[0]["name"] == "latent" and any(r["slope"] is not None for r in rows)
    x_before = ex.x.clone()
    ex.px.value = 3  # a new pixel: a new trace, the same samples
    assert torch.equal(ex.x, x_before) and bytes(ex.trace_image.value) and ex.rows != rows
    ex.temperature.value = 0.3
    assert bytes(ex.image.value) != first and not torch.equal(ex.x, x_before)
    # the picked pixel's magnitude at the output is the sample's own value there
    f = 4
    out = ex.x[0, :, 32 * f, 3 * f].abs().max().item()
    assert ex.rows[-1]["max_abs"] == pytest.approx(out)
