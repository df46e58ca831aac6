"""The bijection contract and the one registry of names every builder, command line and manifest uses."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import minflow as mf
from minflow import bijections, checkpoints, lowlight, sr, toy


def test_every_registered_name_makes_a_bijection_that_fulfils_the_contract():
    for name in mf.bijection_names():
        b = mf.make_bijection(name)
        assert isinstance(b, mf.Bijection) and b.n_params >= 1
        x = torch.randn(3, 2, dtype=torch.float64)
        y, ld = b.forward(x, torch.zeros(3, 2, b.n_params, dtype=torch.float64))
        assert y.shape == ld.shape == x.shape


def test_one_name_means_one_class_everywhere():
    kinds = {name: type(mf.make_bijection(name)) for name in mf.bijection_names()}
    assert kinds["bounded_spline"] is mf.BoundedSpline and kinds["fully_bounded_spline"] is mf.FullyBoundedSpline
    assert kinds["rq_spline"] is mf.RQSpline and mf.make_bijection("affine").scale_name == "sigmoid"
    assert {n: mf.make_bijection(n).scale_name for n in mf.bijection_names() if n.startswith("affine_")} == {
        f"affine_{s}": s for s in mf.SCALES if s != "sigmoid"
    }
    # the old toy and SR names are aliases of those
    assert type(mf.make_bijection("spline")) is mf.BoundedSpline
    assert type(mf.make_bijection("spline_bounded")) is mf.FullyBoundedSpline
    assert type(mf.make_bijection("spline_full")) is mf.RQSpline
    assert mf.make_bijection("softclamp").scale_name == "softclamp"
    flows = [
        toy.toy_flow("fully_bounded_spline", flow_steps=1),
        sr.SRFlow(levels=1, flow_steps=1, coupling="spline_bounded", nf=4, blocks=1, gc=2, cond_channels=2, hidden=4),
    ]
    for flow in flows:
        assert {type(m.bijection) for m in flow.modules() if isinstance(m, mf.Coupling)} == {mf.FullyBoundedSpline}


def test_every_shipped_manifest_names_a_registered_bijection():
    for name in checkpoints.available():
        manifest = checkpoints.read_manifest(name)
        assert bijections.canonical_name(manifest["config"]["coupling"]) in mf.bijection_names(), name
    # the SR checkpoint called "spline_full" holds fully bounded splines (its manifest says so)
    assert checkpoints.read_manifest("sr_spline_full")["config"]["coupling"] == "fully_bounded_spline"


class Doubling(nn.Module):
    """A student's bijection: y = 2 x + t, params (t,)."""

    n_params = 1

    def forward(self, x, params):
        return 2 * x + params[..., 0], torch.full_like(x, 0.6931471805599453)

    def inverse(self, y, params):
        return (y - params[..., 0]) / 2, torch.full_like(y, -0.6931471805599453)


def test_a_factory_is_accepted_wherever_a_name_is():
    flow = toy.toy_flow(Doubling, flow_steps=2, hidden=4, depth=1)
    assert all(isinstance(m.bijection, Doubling) for m in flow.modules() if isinstance(m, mf.Coupling))
    x, y = torch.randn(4, 2), torch.randn(4, 2)
    z, _ = flow(x, y)
    assert torch.allclose(flow.inverse(z, y)[0], x, atol=1e-5)
    small = dict(nf=4, blocks=1, gc=2, cond_channels=2, hidden=4)
    model = sr.SRFlow(levels=1, flow_steps=1, coupling=Doubling, **small)
    assert {type(m.bijection) for m in model.modules() if isinstance(m, (mf.Coupling, mf.Injector))} == {Doubling}
    assert model.config["coupling"] is Doubling  # not registered: such a model is not saved by name
    ll = lowlight.LLFlow(levels=1, coupling=Doubling, **small)
    assert {type(m.bijection) for m in ll.modules() if isinstance(m, mf.Injector)} == {Doubling}


def test_registering_a_name_is_one_call(monkeypatch):
    monkeypatch.setattr(bijections, "BIJECTIONS", dict(bijections.BIJECTIONS))
    assert mf.register_bijection("doubling", Doubling) is Doubling
    assert "doubling" in mf.bijection_names() and isinstance(mf.make_bijection("doubling"), Doubling)
    model = sr.SRFlow(levels=1, flow_steps=1, coupling=Doubling, nf=4, blocks=1, gc=2, cond_channels=2, hidden=4)
    assert model.config["coupling"] == "doubling" and json.dumps(model.config)  # a registered factory is saved by name
    assert isinstance(toy.toy_flow("doubling", flow_steps=1).layers[2].bijection, Doubling)
    mf.register_bijection("doubling", Doubling)  # a name of one's own can be registered again (a re-run cell)
    for bad in ("affine", "spline", "Doubling", "two__parts", ""):
        with pytest.raises(ValueError, match="name"):
            mf.register_bijection(bad, Doubling)
    with pytest.raises(TypeError, match="callable"):
        mf.register_bijection("not_callable", 3)


def test_bad_bijections_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown coupling 'nope'.*affine.*rq_spline"):
        mf.make_bijection("nope")
    with pytest.raises(TypeError, match="lacks n_params, inverse"):
        mf.Coupling(2, 0, bijection=nn.Linear(2, 2))
    with pytest.raises(TypeError, match="name or factory"):
        toy.toy_flow(3)

    class Zero(Doubling):
        n_params = 0

    with pytest.raises(ValueError, match="n_params must be an int >= 1"):
        toy.toy_flow(Zero)
