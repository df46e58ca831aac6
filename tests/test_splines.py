"""RQ splines: the raw function, the three bijections, and the splines inside couplings/injectors.

Round trips and logdets against autograd's Jacobian (float64 to 1e-10 / 1e-8, float32 looser),
the identity outside the box, continuity and monotonicity, exact identity at params 0, no NaN
for extreme inputs (values or gradients), the bounded displacement of sampling, and errors.
Each property holds on the reference maps of `minflow.splines` and on the fast kernels of
`minflow.spline_kernels` (``PATHS``), and the kernels, eager and compiled, give the reference's
numbers and gradients.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers import jacobian_logdet, randomize_zero_layers
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

import minflow as mf
import minflow.spline_kernels as spline_kernels
import minflow.splines as splines
from minflow.splines import (
    BoundedSpline,
    FullyBoundedSpline,
    RQSpline,
    cumulative_sizes,
    rational_quadratic_spline,
    rq_knots,
    softplus_derivatives,
)

TOL = {torch.float64: (1e-10, 1e-8), torch.float32: (1e-4, 1e-4)}
TINY = {torch.float64: 1e-310, torch.float32: 1e-40}  # subnormal in each dtype

BIJECTIONS = {  # name -> constructor(**kw), kw: backend
    "bounded": BoundedSpline,
    "bounded-wide": lambda **kw: BoundedSpline(bound=2.0, min_bin=1e-2, min_derivative=1e-2, **kw),
    "fully-bounded": FullyBoundedSpline,
    "rq": RQSpline,
    "rq-3": lambda **kw: RQSpline(bins=3, bound=1.0, **kw),
}
PATHS = ["reference", "fast"]  # the eager backends; "compiled" is checked against them below


def raw(path: str):
    """`rational_quadratic_spline` on the backend ``path``."""
    return functools.partial(rational_quadratic_spline, backend=path)


def random_knots(shape, k, dtype, generator=None, x_box=(-1.0, 2.0), y_box=(-1.0, 2.0)):
    """Random increasing knots on the given boxes and arbitrary positive derivatives (ends too).
    The map is a bijection of the real line when both boxes are the same."""

    def axis(lo, hi):
        inc = torch.rand(*shape, k, generator=generator, dtype=dtype) + 0.05
        c = torch.nn.functional.pad(inc.cumsum(-1), (1, 0))
        return lo + (hi - lo) * c / c[..., -1:]

    d = torch.rand(*shape, k + 1, generator=generator, dtype=dtype) * 3 + 0.05
    return axis(*x_box), axis(*y_box), d


def params_for(bij, shape, dtype, std=1.0, generator=None):
    return torch.randn(*shape, bij.n_params, generator=generator, dtype=dtype) * std


def elementwise_check(fn, x, ladj, ld_tol):
    """fn is elementwise: its Jacobian is diagonal, with log|diag| = ladj and log|det| = sum(ladj)."""
    jac = torch.autograd.functional.jacobian(fn, x)
    diag = torch.diagonal(jac)
    assert torch.equal(jac - torch.diag(diag), torch.zeros_like(jac))
    assert torch.allclose(diag.abs().log(), ladj, atol=ld_tol, rtol=0)
    assert torch.allclose(torch.linalg.slogdet(jac)[1], ladj.sum(), atol=ld_tol * x.numel() ** 0.5, rtol=0)


# ----------------------------------------------------------------------------- the raw function


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", PATHS)
def test_raw_round_trip_and_logdet(path, dtype):
    rqs = raw(path)
    g = torch.Generator().manual_seed(0)
    rt_tol, ld_tol = TOL[dtype]
    kx, ky, d = random_knots((60,), 5, dtype, g)
    x = torch.rand(60, generator=g, dtype=dtype) * 5 - 2  # [-2, 3]: inside [-1, 2] and outside
    y, ladj = rqs(x, kx, ky, d)
    xb, inv_ladj = rqs(y, kx, ky, d, inverse=True)
    inside = (x >= -1) & (x <= 2)
    assert inside.any() and (~inside).any()
    assert torch.allclose(xb, x, atol=rt_tol, rtol=0)
    assert torch.allclose(inv_ladj, -ladj, atol=ld_tol, rtol=0)
    elementwise_check(lambda v: rqs(v, kx, ky, d)[0], x, ladj, ld_tol)
    elementwise_check(lambda v: rqs(v, kx, ky, d, inverse=True)[0], y, inv_ladj, ld_tol)


@pytest.mark.parametrize("path", PATHS)
def test_raw_identity_outside_and_continuity_at_knots(path):
    rqs = raw(path)
    g = torch.Generator().manual_seed(1)
    kx, ky, d = random_knots((1,), 6, torch.float64, g, x_box=(-1.0, 1.0), y_box=(-1.0, 1.0))
    d[..., 0] = d[..., -1] = 1.0  # boundary slopes 1: continuous with the identity outside
    out = torch.tensor([-1e30, -5.0, -1 - 1e-9, 1 + 1e-9, 7.0, 1e30], dtype=torch.float64)
    for inverse in (False, True):
        y, ladj = rqs(out, *(t.expand(6, 7) for t in (kx, ky, d)), inverse=inverse)
        assert torch.equal(y, out) and torch.equal(ladj, torch.zeros_like(ladj))
    # every knot and both box edges, approached from both sides
    eps = 1e-11
    at = kx[0]
    left, right = at - eps, at + eps
    knots = [t.expand(7, 7) for t in (kx, ky, d)]
    yl, _ = rqs(left, *knots)
    yr, _ = rqs(right, *knots)
    y0, _ = rqs(at, *knots)
    assert torch.allclose(yl, y0, atol=1e-9, rtol=0) and torch.allclose(yr, y0, atol=1e-9, rtol=0)
    assert torch.allclose(y0, ky[0], atol=1e-14, rtol=0)  # knots map onto knots


@pytest.mark.parametrize("path", PATHS)
def test_raw_uses_each_axis_box(path):
    """Forward: spline on the knots_x interval; inverse: spline on the knots_y interval."""
    rqs = raw(path)
    g = torch.Generator().manual_seed(11)
    kx, ky, d = random_knots((200,), 4, torch.float64, g, x_box=(-1.0, 2.0), y_box=(-3.0, 0.5))
    v = torch.linspace(-4, 3, 200, dtype=torch.float64)
    y, ladj = rqs(v, kx, ky, d)
    assert torch.equal(y == v, (v < -1) | (v > 2)) and torch.equal(ladj == 0, y == v)
    x, ladj = rqs(v, kx, ky, d, inverse=True)
    assert torch.equal(x == v, (v < -3) | (v > 0.5))
    inside = (v >= -3) & (v <= 0.5)
    assert ((x[inside] >= -1) & (x[inside] <= 2)).all()


@pytest.mark.parametrize("path", PATHS)
def test_raw_monotone(path):
    rqs = raw(path)
    g = torch.Generator().manual_seed(2)
    kx, ky, d = random_knots((1,), 8, torch.float64, g, y_box=(-3.0, 0.5))
    x = torch.linspace(-3, 4, 4001, dtype=torch.float64)
    y, _ = rqs(x, *(t.expand(4001, 9) for t in (kx, ky, d)))
    inside = (x >= -1) & (x <= 2)
    assert (y[inside].diff() > 0).all() and (y[~inside] == x[~inside]).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", PATHS)
def test_raw_extreme_inputs(path, dtype):
    rqs = raw(path)
    g = torch.Generator().manual_seed(3)
    kx, ky, d = random_knots((1,), 4, dtype, g, x_box=(-1.0, 1.0), y_box=(-1.0, 1.0))
    big = 3e38 if dtype == torch.float32 else 1e300
    special = [0.0, -0.0, TINY[dtype], -TINY[dtype], 1e30, -1e30, big, -big, 1e-30]
    x = torch.cat([torch.tensor(special, dtype=dtype), kx[0]])  # knots exactly, ends included
    n = x.numel()
    for inverse in (False, True):
        knots = [t.expand(n, 5).clone().requires_grad_() for t in (kx, ky, d)]
        xg = x.clone().requires_grad_()
        y, ladj = rqs(xg, *knots, inverse=inverse)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        grads = torch.autograd.grad(y.sum() + ladj.sum(), [xg, *knots])
        assert all(torch.isfinite(gr).all() for gr in grads)
        assert torch.equal(y[4:8], x[4:8]) and (ladj[4:8] == 0).all()  # far outside: the identity


@pytest.mark.parametrize("path", PATHS)
def test_raw_steep_derivatives_invert_accurately(path):
    """Derivative ratios up to 1e6 within a bin (b < 0 in the quadratic for many points): the
    inverse still recovers x to float64 precision times its slope."""
    rqs = raw(path)
    d = torch.tensor([[1e-3, 1e3], [1e3, 1e-3], [1e-3, 1e-3], [1e3, 1e3], [1.0, 1e3]], dtype=torch.float64)
    n = 201
    kx = torch.tensor([0.0, 1.0], dtype=torch.float64).expand(5 * n, 2)
    ky = torch.tensor([0.0, 2.0], dtype=torch.float64).expand(5 * n, 2)
    x = torch.linspace(0, 1, n, dtype=torch.float64).repeat(5)
    dd = d.repeat_interleave(n, 0)
    y, ladj = rqs(x, kx, ky, dd)
    xb, inv = rqs(y, kx, ky, dd, inverse=True)
    assert torch.allclose(xb, x, atol=1e-12, rtol=0)  # the inverse's slope reaches 1e3 here
    assert torch.allclose(inv, -ladj, atol=1e-9, rtol=0)


@pytest.mark.parametrize("path", PATHS)
def test_raw_gradcheck(path):
    """Gradients w.r.t. x, knots and derivatives (both directions) against finite differences."""
    rqs = raw(path)
    g = torch.Generator().manual_seed(12)
    kx, ky, d = random_knots((7,), 3, torch.float64, g)
    x = torch.tensor([-1.5, -0.9, -0.2, 0.4, 1.1, 1.7, 2.5], dtype=torch.float64)
    for inverse in (False, True):
        args = [v.clone().requires_grad_() for v in (x, kx, ky, d)]
        assert torch.autograd.gradcheck(lambda *a: rqs(*a, inverse=inverse), args)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    k=st.integers(1, 10),
    spread=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**16),
    path=st.sampled_from(PATHS),
)
def test_property_raw(shape, k, spread, seed, path):
    """Random shapes, bin counts and knots: the spline inverts, its logdets negate, it is monotone."""
    g = torch.Generator().manual_seed(seed)
    kx, ky, d = random_knots(tuple(shape), k, torch.float64, g)
    x = (torch.rand(tuple(shape), generator=g, dtype=torch.float64) - 0.3) * spread
    y, ladj = raw(path)(x, kx, ky, d)
    xb, inv = raw(path)(y, kx, ky, d, inverse=True)
    assert y.shape == x.shape == ladj.shape
    assert torch.allclose(xb, x, atol=1e-10, rtol=0)
    assert torch.allclose(inv, -ladj, atol=1e-9, rtol=0)
    assert torch.isfinite(ladj).all()


def test_raw_shape_errors():
    x = torch.zeros(3, 4)
    kx, ky, d = random_knots((3, 4), 5, torch.float32)
    with pytest.raises(ValueError, match=r"knots_x must have shape x.shape \+ \(K\+1,\)"):
        rational_quadratic_spline(x, kx[0], ky, d)
    with pytest.raises(ValueError, match="derivatives must have shape"):
        rational_quadratic_spline(x, kx, ky, d[..., None])
    with pytest.raises(ValueError, match="same number of knots"):
        rational_quadratic_spline(x, kx, ky, d[..., :-1])
    with pytest.raises(ValueError, match="K >= 1"):
        rational_quadratic_spline(x, kx[..., :1], ky[..., :1], d[..., :1])
    with pytest.raises(ValueError, match="K values and derivatives K-1"):
        rq_knots(torch.zeros(3, 4), torch.zeros(3, 5), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="min_bin"):
        cumulative_sizes(torch.zeros(3, 4), min_bin=0.3)
    with pytest.raises(ValueError, match="min_derivative"):
        softplus_derivatives(torch.zeros(3), min_derivative=0.0)


# ----------------------------------------------------------------------------- the bijections


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@pytest.mark.parametrize("path", PATHS)
def test_bijection_round_trip_and_logdet(path, name, dtype):
    g = torch.Generator().manual_seed(4)
    bij = BIJECTIONS[name](backend=path)
    rt_tol, ld_tol = TOL[dtype]
    std = 1.0 if dtype == torch.float64 else 0.5  # float32: keep slopes moderate (conditioning)
    x = torch.randn(50, generator=g, dtype=dtype) * bij.bound * 1.5
    p = params_for(bij, (50,), dtype, std, g)
    y, ladj = bij(x, p)
    xb, inv = bij.inverse(y, p)
    assert torch.allclose(xb, x, atol=rt_tol, rtol=0), (xb - x).abs().max()
    assert torch.allclose(inv, -ladj, atol=ld_tol, rtol=0)
    elementwise_check(lambda v: bij(v, p)[0], x, ladj, ld_tol)
    elementwise_check(lambda v: bij.inverse(v, p)[0], y, inv, ld_tol)


def test_rq_spline_matches_raw_function_on_its_knots():
    g = torch.Generator().manual_seed(5)
    for bij in (RQSpline(), RQSpline(bins=2, bound=0.5), RQSpline(bins=5, min_bin=1e-2)):
        x = torch.randn(4, 30, generator=g, dtype=torch.float64) * bij.bound
        p = params_for(bij, (4, 30), torch.float64, 1.5, g)
        y, ladj = bij(x, p)
        y2, ladj2 = rational_quadratic_spline(x, *bij.knots(p))
        assert torch.allclose(y, y2, atol=1e-12, rtol=0) and torch.allclose(ladj, ladj2, atol=1e-10, rtol=0)
        xb, inv = bij.inverse(y, p)
        xb2, inv2 = rational_quadratic_spline(y, *bij.knots(p), inverse=True)
        assert torch.allclose(xb, xb2, atol=1e-10, rtol=0) and torch.allclose(inv, inv2, atol=1e-9, rtol=0)
        kx, ky, d = bij.knots(p)
        assert (kx[..., 0] == -bij.bound).all() and (kx[..., -1] == bij.bound).all()
        assert (kx.diff() >= 2 * bij.bound * bij.min_bin * (1 - 1e-9)).all()  # the floor on bin sizes
        assert (d[..., [0, -1]] == 1).all() and (d > bij.min_derivative).all()


def test_bounded_spline_is_the_papers_parameterisation():
    """Interior knot at sigmoid(a)(1 - 2m) + m of the box, derivative exp(d)(1 - m) + m."""
    bij = BoundedSpline()
    a, h, d = 0.7, -1.3, 0.4
    m, B = 1e-3, 0.5
    fx, fy = torch.sigmoid(torch.tensor(a)) * (1 - 2 * m) + m, torch.sigmoid(torch.tensor(h)) * (1 - 2 * m) + m
    kx, ky = (-B + 2 * B * fx).double(), (-B + 2 * B * fy).double()
    deriv = math.exp(d) * (1 - m) + m
    knots = (
        torch.tensor([[-B, kx, B]], dtype=torch.float64),
        torch.tensor([[-B, ky, B]], dtype=torch.float64),
        torch.tensor([[1.0, deriv, 1.0]], dtype=torch.float64),
    )
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)
    p = torch.tensor([a, h, d, 0.25], dtype=torch.float64).expand(41, 4)
    y, ladj = bij(x, p)
    y2, ladj2 = rational_quadratic_spline(x, *(k.expand(41, 3) for k in knots))
    assert torch.allclose(y, y2 + 0.25, atol=1e-6) and torch.allclose(ladj, ladj2, atol=1e-5)
    for b in (bij, FullyBoundedSpline()):  # knots() and shift() describe the same map
        y, ladj = b(x, p)
        y3, ladj3 = rational_quadratic_spline(x, *b.knots(p))
        assert torch.allclose(y, y3 + b.shift(p), atol=1e-15) and torch.allclose(ladj, ladj3, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@pytest.mark.parametrize("path", PATHS)
def test_bijection_exact_identity_at_zero_params(path, name, dtype):
    bij = BIJECTIONS[name](backend=path)
    B = bij.bound
    x = torch.cat([torch.linspace(-2 * B, 2 * B, 401, dtype=dtype), torch.tensor([1e30, -1e30, TINY[dtype], 0.0])])
    p = torch.zeros(x.numel(), bij.n_params, dtype=dtype)
    for fn in (bij, bij.inverse):
        y, ladj = fn(x, p)
        assert torch.equal(y, x)
        assert ladj.abs().max() <= 4 * torch.finfo(dtype).eps  # log of 1 up to rounding in the slope


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@pytest.mark.parametrize("path", PATHS)
def test_bijection_identity_outside_slope_one_and_continuity(path, name):
    g = torch.Generator().manual_seed(6)
    bij = BIJECTIONS[name](backend=path)
    B = bij.bound
    n = 64
    p = params_for(bij, (n,), torch.float64, 1.0, g)
    shift = p[:, 3] if isinstance(bij, BoundedSpline) else torch.zeros(n, dtype=torch.float64)
    if isinstance(bij, FullyBoundedSpline):
        shift = bij.max_shift * torch.tanh(shift / bij.max_shift)
    far = torch.rand(n, generator=g, dtype=torch.float64) * 10 + B
    x = torch.cat([far, -far, torch.full((n,), B), torch.full((n,), -B)]).requires_grad_()
    pp = p.repeat(4, 1)
    y, ladj = bij(x, pp)
    (slope,) = torch.autograd.grad(y.sum(), x)
    outside = slice(0, 2 * n)
    assert torch.equal(y[outside], x[outside] + shift.repeat(2)) and (ladj[outside] == 0).all()
    assert (slope[outside] == 1).all()
    assert torch.allclose(slope[2 * n :], torch.ones(2 * n, dtype=torch.float64), atol=1e-12)  # at the edges
    assert torch.allclose(y[2 * n :], x[2 * n :] + shift.repeat(2), atol=1e-14, rtol=0)
    # continuity across the edges, and across the (unknown) interior knots via a fine grid
    eps = 1e-10
    for edge in (B, -B):
        e = torch.full((n,), edge, dtype=torch.float64)
        yin, _ = bij(e - eps * math.copysign(1, edge), p)
        yout, _ = bij(e + eps * math.copysign(1, edge), p)
        assert torch.allclose(yin, yout, atol=1e-9, rtol=0)
    grid = torch.linspace(-1.5 * B, 1.5 * B, 3001, dtype=torch.float64)
    yg, _ = bij(grid, p[:1].expand(3001, -1))
    assert (yg.diff() > 0).all()  # monotone, and no jumps larger than the largest slope allows
    assert yg.diff().max() < 3 * B / 3000 * 2000


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@pytest.mark.parametrize("path", PATHS)
def test_bijection_extreme_inputs(path, name, dtype):
    g = torch.Generator().manual_seed(7)
    bij = BIJECTIONS[name](backend=path)
    B = bij.bound
    special = torch.tensor([0.0, -0.0, TINY[dtype], -TINY[dtype], 1e30, -1e30, B, -B, 1e-30], dtype=dtype)
    n = special.numel()
    p = params_for(bij, (n,), dtype, 1.0, g)
    if isinstance(bij, BoundedSpline):  # also exactly on the interior knots (x and y axes)
        c = bij.bound * (1 - 2 * bij.min_bin)
        special = torch.cat([special, c * torch.tanh(0.5 * p[:, 0]), c * torch.tanh(0.5 * p[:, 1]) + p[:, 3]])
        p = p.repeat(3, 1)
    else:
        kx, ky, _ = bij.knots(p[:1])
        special = torch.cat([special, kx[0], ky[0]])
        p = torch.cat([p, p[:1].expand(2 * kx.shape[-1], -1)])
    for fn in (bij, bij.inverse):
        x = special.clone().requires_grad_()
        pg = p.clone().requires_grad_()
        y, ladj = fn(x, pg)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        gx, gp = torch.autograd.grad(y.sum() + ladj.sum(), [x, pg])
        assert torch.isfinite(gx).all() and torch.isfinite(gp).all()


@pytest.mark.parametrize("cls", [BoundedSpline, FullyBoundedSpline])
@pytest.mark.parametrize("path", PATHS)
def test_sampling_displacement_is_bounded(path, cls):
    """x = RQS^{-1}(z - t) stays within the box width of z - t, whatever z and the params."""
    g = torch.Generator().manual_seed(8)
    bij = cls(backend=path)
    B = bij.bound
    z = torch.cat([torch.randn(500, generator=g, dtype=torch.float64) * 3, torch.tensor([1e30, -1e30, 0.5, -0.5])])
    p = params_for(bij, (z.numel(),), torch.float64, 3.0, g)
    x, _ = bij.inverse(z, p)
    t = p[:, 3] if cls is BoundedSpline else bij.max_shift * torch.tanh(p[:, 3] / bij.max_shift)
    assert ((x - (z - t)).abs() <= 2 * B).all()


@pytest.mark.parametrize("path", PATHS)
def test_fully_bounded_spline_survives_huge_params(path):
    """Bounded d and t: finite outputs, gradients and displacement for any raw params (the paper's
    version overflows exp(d) here, the failure the pilot saw on inputs far outside [0, 1])."""
    bij = FullyBoundedSpline(backend=path)
    z = torch.tensor([0.0, 0.3, -0.4, 1e30, 5.0], dtype=torch.float32).repeat(4)
    p = (
        torch.tensor(
            [
                [1e30, -1e30, 1e30, 1e30],
                [-1e30, 1e30, -1e30, -1e30],
                [50.0, -50.0, 200.0, 1e6],
                [0.0, 0.0, -200.0, -1e6],
            ],
            dtype=torch.float32,
        )
        .repeat_interleave(5, 0)
        .requires_grad_()
    )
    for fn in (bij, bij.inverse):
        out, ladj = fn(z, p)
        assert torch.isfinite(out).all() and torch.isfinite(ladj).all()
        assert ((out - z).abs() <= bij.max_shift + 2 * bij.bound + 1e-5).all()
        (gp,) = torch.autograd.grad(out.sum() + ladj.sum(), p)
        assert torch.isfinite(gp).all()
    paper, _ = BoundedSpline(backend=path)(z, p.detach())
    assert not torch.isfinite(paper).all()  # exp(d) overflows: why the fully bounded variant exists


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@pytest.mark.parametrize("path", PATHS)
def test_bijection_gradcheck(path, name):
    """Gradients of outputs and logdets w.r.t. x and the raw params against finite differences."""
    g = torch.Generator().manual_seed(13)
    bij = BIJECTIONS[name](backend=path)
    x = torch.linspace(-1.5, 1.5, 9, dtype=torch.float64) * bij.bound + 0.0123
    p = params_for(bij, (9,), torch.float64, 1.0, g)
    for fn in (bij, bij.inverse):
        assert torch.autograd.gradcheck(fn, [x.clone().requires_grad_(), p.clone().requires_grad_()])


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(BIJECTIONS)),
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    std=st.floats(0.0, 4.0),
    spread=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**16),
    path=st.sampled_from(PATHS),
)
def test_property_bijections(name, shape, std, spread, seed, path):
    """Random shapes and raw parameters: round trip, logdet negation, monotone in x."""
    g = torch.Generator().manual_seed(seed)
    bij = BIJECTIONS[name](backend=path)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * spread
    p = params_for(bij, shape, torch.float64, std, g)
    y, ladj = bij(x, p)
    xb, inv = bij.inverse(y, p)
    assert y.shape == ladj.shape == x.shape and torch.isfinite(ladj).all()
    # y carries a rounding error of ~1e-16 |y|; where the forward map is flat (slope e^ladj down to
    # ~1e-9 at std 4), undoing it multiplies that error by 1 / slope: the conditioning, not the solver
    tol = 1e-9 * max(1.0, spread) + 1e-14 * torch.exp(-ladj)
    assert ((xb - x).abs() <= tol).all(), ((xb - x).abs() / tol).max()
    # the inverse's logdet is minus the forward's at the point it returns (where the map is that
    # flat, xb and x differ by ~1e-8 and the log-slope by as much again)
    _, ladj_b = bij(xb, p)
    assert torch.allclose(inv, -ladj_b, atol=1e-8, rtol=0)
    y2, _ = bij(x + 1e-3, p)
    assert (y2 > y).all()


def test_bijection_errors():
    with pytest.raises(ValueError, match=r"x.shape \+ \(4,\)"):
        BoundedSpline()(torch.zeros(3), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"x.shape \+ \(23,\)"):
        RQSpline()(torch.zeros(3), torch.zeros(3, 24))
    with pytest.raises(ValueError, match="min_bin"):
        RQSpline(bins=8, min_bin=0.2)
    with pytest.raises(ValueError, match="bins >= 2"):
        RQSpline(bins=1)
    with pytest.raises(ValueError, match="bound > 0"):
        BoundedSpline(bound=0.0)
    with pytest.raises(ValueError, match="positive"):
        FullyBoundedSpline(max_shift=0.0)


# ----------------------------------------------------------------------------- inside couplings and injectors


def layer_cases():
    out = {}
    for name in ("bounded", "fully-bounded", "rq-3"):
        mlp = {"kind": "mlp", "hidden": 16, "depth": 2}
        out[f"coupling-mlp-{name}"] = ("vec", lambda n=name: mf.Coupling(4, 3, BIJECTIONS[n](), **mlp))
        out[f"injector-mlp-{name}"] = ("vec", lambda n=name: mf.Injector(4, 3, BIJECTIONS[n](), **mlp))
        out[f"coupling-conv-{name}"] = ("img", lambda n=name: mf.Coupling(4, 3, BIJECTIONS[n](), kind="conv", hidden=8))
        out[f"injector-conv-{name}"] = ("img", lambda n=name: mf.Injector(4, 3, BIJECTIONS[n](), kind="conv", hidden=8))
    return out


LAYERS = layer_cases()


@pytest.mark.filterwarnings("error")  # e.g. a searchsorted warning about non-contiguous inputs
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_spline_layers_round_trip_and_logdet(name, dtype):
    torch.manual_seed(9)
    kind, build = LAYERS[name]
    layer = randomize_zero_layers(build(), std=0.3).to(dtype)
    shape = (3, 4) if kind == "vec" else (2, 4, 3, 3)
    x = torch.randn(*shape, dtype=dtype)
    cond = torch.randn(shape[0], 3, *shape[2:], dtype=dtype)
    rt_tol, ld_tol = TOL[dtype]
    z, logdet = layer(x, cond)
    assert not torch.equal(z, x)  # the random conditioner does something
    xb, inv = layer.inverse(z, cond)
    assert torch.allclose(xb, x, atol=rt_tol, rtol=0) and torch.allclose(inv, -logdet, atol=ld_tol * 10, rtol=0)
    layer64 = layer.to(torch.float64)
    expected = jacobian_logdet(lambda v, c: layer64(v, c)[0], x.double(), cond.double())
    assert torch.allclose(logdet.double(), expected, atol=ld_tol * 10, rtol=0), (logdet, expected)
    inv_expected = jacobian_logdet(lambda v, c: layer64.inverse(v, c)[0], z.double(), cond.double())
    assert torch.allclose(inv.double(), inv_expected, atol=ld_tol * 10, rtol=0)


@pytest.mark.parametrize("name", ["bounded", "fully-bounded", "rq"])
def test_spline_layers_start_as_exact_identity(name):
    torch.manual_seed(10)
    layer = mf.Coupling(4, 3, BIJECTIONS[name](), kind="conv", hidden=8)
    x, cond = torch.randn(2, 4, 5, 5) * 3, torch.randn(2, 3, 5, 5)
    z, logdet = layer(x, cond)
    assert torch.equal(z, x) and logdet.abs().max() < 1e-5
    xb, _ = layer.inverse(x, cond)
    assert torch.equal(xb, x)


# ----------------------------------------------------------------------------- the kernels against the reference


AGREEMENT_CASES = {  # name -> (constructor, params layout)
    "bounded": (BoundedSpline, "rows"),
    "bounded-planes": (BoundedSpline, "planes"),
    "fully-bounded": (FullyBoundedSpline, "conv"),
    "rq": (RQSpline, "rows"),
    "rq-3-planes": (lambda **kw: RQSpline(bins=3, bound=1.0, **kw), "planes"),
    "rq-conv": (RQSpline, "conv"),
}
LAYOUTS = {  # the same values in three memory layouts, each viewed as x.shape + (n,)
    "rows": lambda p: p,  # each element's parameters side by side
    "planes": lambda p: p.movedim(-1, 0).contiguous().movedim(0, -1),  # each parameter contiguous over the elements
    "conv": lambda p: p.movedim(-1, 1).contiguous().movedim(1, -1),  # (B, n, ...) as a conv conditioner writes them
}


def _values_and_grads(fn, *inputs):
    """fn's outputs (y, logabsdet), the gradients of y.sum() w.r.t. every input, then those of logabsdet.sum()."""
    out = []
    for which in (0, 1):  # two passes: a compiled backward cannot retain its graph
        leaves = [v.detach().clone().requires_grad_() for v in inputs]
        values = fn(*leaves)
        out += [v.detach() for v in values] if which == 0 else []
        out += torch.autograd.grad(values[which].sum(), leaves)
    return out[:2] + out[2:]


def _skip_unless_compiled(backend: str) -> None:
    if backend == "compiled" and spline_kernels._Compiled.failure is not None:
        pytest.skip(f"torch.compile is not available here: {spline_kernels._Compiled.failure}")


def _agreement_inputs(name: str, inverse: bool, g: torch.Generator):
    """(x, params or knots, on_knot) in float64: random points inside and outside the box, its two
    ends and the knots on the axis the map takes as input, and which elements sit on a knot."""
    if name == "raw":
        kx, ky, d = random_knots((6, 11), 4, torch.float64, g)
        x = torch.rand(6, 11, generator=g, dtype=torch.float64) * 5 - 2  # [-2, 3]: the box is [-1, 2]
        for v in (kx, ky, d):  # elements (i, 0..4) share the knots of element (i, 0) ...
            v[:, :5] = v[:, :1]
        x[:, :5] = (ky if inverse else kx)[:, 0]  # ... and sit on them, the box's ends included
        return x, (kx, ky, d), torch.arange(11) < 5
    build, layout = AGREEMENT_CASES[name]
    bij = build()
    p = params_for(bij, (6, 11), torch.float64, 1.0, g)
    x = torch.randn(6, 11, generator=g, dtype=torch.float64) * bij.bound * 1.5
    knots = bij.knots(p)[1 if inverse else 0]
    if inverse and isinstance(bij, BoundedSpline):
        knots = knots + bij.shift(p)[..., None]
    m = knots.shape[-1]
    p[:, :m] = p[:, :1]  # elements (i, 0..m-1) share the params of element (i, 0) ...
    x[:, :m] = knots[:, 0]  # ... and sit on its knots, the box's ends included
    return x, (LAYOUTS[layout](p),), torch.arange(11) < m


@pytest.mark.parametrize("backend", ["fast", "compiled"])
@pytest.mark.parametrize("name", sorted(AGREEMENT_CASES) + ["raw"])
def test_kernels_match_the_reference_float64(name, backend):
    """The fast and the compiled kernels give the reference's numbers and gradients: float64, both
    directions, inside and outside the box, at its ends and on the knots, params in rows, planes
    and a conv conditioner's layout; and params 0 still give exactly the identity. On a knot, the
    box's ends included, the log-slope has a kink: its gradient is one side's, and a knot computed
    an ulp apart (the compiled tanh) may pick the other side, so it is compared off the knots."""
    g = torch.Generator().manual_seed(14)
    for inverse in (False, True):
        x, args, on_knot = _agreement_inputs(name, inverse, g)
        out = {}
        for path in ("reference", backend):
            if name == "raw":

                def fn(x, kx, ky, d, path=path, inverse=inverse):
                    return rational_quadratic_spline(x, kx, ky, d, inverse=inverse, backend=path)
            else:
                bij = AGREEMENT_CASES[name][0](backend=path)
                fn = bij.inverse if inverse else bij
            out[path] = _values_and_grads(fn, x, *args)
            _skip_unless_compiled(path)
        n = 2 + len(args) + 1  # values, then the gradients of y, then that of the log-slope w.r.t. x
        for i, (a, b) in enumerate(zip(out["reference"], out[backend])):
            if i >= n:  # log-slope gradients: off the knots
                a, b = a[:, ~on_knot], b[:, ~on_knot]
            assert torch.allclose(a, b, atol=1e-11, rtol=1e-11), (name, inverse, i, (a - b).abs().max())
        if name != "raw":  # exactly the identity at params 0
            y, ladj = fn(x, torch.zeros_like(args[0]))
            assert torch.equal(y, x) and ladj.abs().max() <= 4 * torch.finfo(torch.float64).eps


def test_backend_is_explicit_and_set_backend_changes_it(monkeypatch):
    """The backend is a constructor argument (MINFLOW_COMPILE=1 at construction picks "compiled");
    `set_backend` switches every spline inside a model; unknown names are refused."""
    monkeypatch.delenv("MINFLOW_COMPILE", raising=False)
    assert RQSpline().backend == "fast" and BoundedSpline(backend="reference").backend == "reference"
    monkeypatch.setenv("MINFLOW_COMPILE", "1")
    assert FullyBoundedSpline().backend == "compiled" and RQSpline(backend="fast").backend == "fast"
    layer = mf.Coupling(4, 3, BoundedSpline(), kind="conv", hidden=8)
    assert splines.set_backend(layer, "reference") is layer
    assert [m.backend for m in layer.modules() if isinstance(m, BoundedSpline)] == ["reference"]
    with pytest.raises(ValueError, match="backend must be one of"):
        RQSpline(backend="gpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        splines.set_backend(layer, "eager")
    kx, ky, d = random_knots((3,), 2, torch.float64)
    with pytest.raises(ValueError, match="backend must be one of"):
        rational_quadratic_spline(torch.zeros(3, dtype=torch.float64), kx, ky, d, backend="slow")


def test_compile_failure_falls_back_to_eager(monkeypatch):
    """Where torch.compile fails (no C++ compiler, say), the maps warn once and run eagerly: same numbers."""

    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("simulated: no working C++ compiler")

        return run

    g = torch.Generator().manual_seed(15)
    fast, compiled = RQSpline(bins=4), RQSpline(bins=4, backend="compiled")
    x, p = torch.randn(20, generator=g, dtype=torch.float64), params_for(fast, (20,), torch.float64, 1.0, g)
    expected = fast(x, p)
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(spline_kernels._Compiled, "cache", {})
    monkeypatch.setattr(spline_kernels._Compiled, "failure", None)
    with pytest.warns(RuntimeWarning, match="running eagerly"):
        got = compiled(x, p)
    assert "simulated" in spline_kernels._Compiled.failure
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert torch.equal(compiled.inverse(got[0], p)[0], fast.inverse(expected[0], p)[0])  # no second warning


# ----------------------------------------------------------------------------- eager slices and layouts


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rq_spline_slices_and_layouts_give_the_same_numbers(monkeypatch, dtype):
    """Eagerly on CPU, `RQSpline` runs large inputs in cache-sized slices of dim 0 and reads row-packed
    parameters through a transposing copy: neither may change a value or a gradient beyond rounding."""
    bij = RQSpline(bins=5, bound=2.0)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    g = torch.Generator().manual_seed(16)
    x = torch.randn(9, 4, 6, generator=g, dtype=dtype) * 2.5  # some elements outside the box
    rows = params_for(bij, (9, 4, 6), dtype, 1.5, g)
    planes = rows.movedim(-1, 0).contiguous().movedim(0, -1)  # each parameter contiguous over the elements
    conv = rows.movedim(-1, 1).contiguous().movedim(1, -1)  # (B, n, ...) viewed as (B, ..., n), a conditioner's
    assert rows.stride(-1) == 1 and planes.stride(-1) != 1 and conv.stride(-1) != 1

    def run(fn, p):
        xl, pl = x.clone().requires_grad_(), p.detach().clone().requires_grad_()
        y, ladj = fn(xl, pl)
        grads = torch.autograd.grad((y * 1.3 + ladj).sum(), (xl, pl))
        return (y, ladj) + grads

    for fn in (bij, bij.inverse):
        whole = run(fn, rows)
        monkeypatch.setattr(spline_kernels, "_CHUNK", 5)  # slices of 1 row (24 elements) and more
        assert spline_kernels._CHUNK * 2 < x.numel()
        for p in (rows, planes, conv):
            for a, b in zip(whole, run(fn, p)):  # a matmul may round differently on a slice: 1 ulp
                assert torch.allclose(a, b, rtol=tol, atol=tol), (fn, (a - b).abs().max())
        monkeypatch.setattr(spline_kernels, "_CHUNK", 3 << 14)
        assert torch.allclose(run(fn, planes)[0], whole[0], rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- ties, box ends, degenerate bins


def _clamp_with_tie_gradient(tie: float):
    """torch.clamp whose gradient at a bound is ``tie``: 0 as on torch >= 2.14, 1 as before. The
    splines must give the same slopes under either rule."""
    original = torch.clamp

    def clamp(x, min=None, max=None):
        y = original(x, min, max)
        if not (isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()):
            return y
        keep = torch.ones_like(x, dtype=torch.bool)
        for bound, above in ((min, True), (max, False)):
            if bound is not None:
                strict = x > bound if above else x < bound
                keep &= (strict | (x == bound)) if tie else strict
        return y.detach() + (x - x.detach()) * keep

    return clamp


def _slope(fn, x, *params):
    x = x.detach().clone().requires_grad_()
    y, ladj = fn(x, *params)
    (slope,) = torch.autograd.grad(y.sum(), x)
    return slope, ladj.detach(), y.detach()


def _edge_points(bij, p: Tensor, inverse: bool) -> Tensor:
    """For each row of params: the box's two ends, the interior knots, and points just outside the
    ends (the next float outside; a few more where the inverse first subtracts a shift), on the
    axis the map takes as input."""
    kx, ky, _ = bij.knots(p)
    k = ky if inverse else kx
    gap = 0.0
    if inverse and isinstance(bij, BoundedSpline):
        k = k + bij.shift(p)[..., None]
        gap = 8 * torch.finfo(k.dtype).eps * (1 + k.abs().amax())  # y - t may round back into the box
    ends = k[..., [0, -1]]
    out = torch.stack(
        [
            torch.nextafter(ends[..., 0] - gap, torch.tensor(-math.inf, dtype=k.dtype)),
            torch.nextafter(ends[..., 1] + gap, torch.tensor(math.inf, dtype=k.dtype)),
        ],
        -1,
    )
    return torch.cat([k, out], -1)  # (n, K + 1 + 2): knots (ends included), then just outside


@pytest.mark.parametrize("tie", [0.0, 1.0])
@pytest.mark.parametrize("name", sorted(BIJECTIONS))
@pytest.mark.parametrize("path", PATHS)
def test_slope_at_box_ends_knots_and_just_outside_whatever_clamps_tie_rule(path, name, tie, monkeypatch):
    """autograd's slope equals exp(logabsdet) on the box's ends and knots, and is 1 just outside,
    both ways, under either rule for clamp's gradient at its bounds (torch changed it in 2.14)."""
    monkeypatch.setattr(torch, "clamp", _clamp_with_tie_gradient(tie))
    monkeypatch.setattr(torch.Tensor, "clamp", _clamp_with_tie_gradient(tie))
    g = torch.Generator().manual_seed(21)
    bij = BIJECTIONS[name](backend=path)
    p = params_for(bij, (8,), torch.float64, 1.0, g)
    for inverse in (False, True):
        pts = _edge_points(bij, p, inverse)  # (8, m)
        m = pts.shape[-1]
        slope, ladj, y = _slope(bij.inverse if inverse else bij, pts.flatten(), p.repeat_interleave(m, 0))
        slope, ladj, y = slope.view(8, m), ladj.view(8, m), y.view(8, m)
        assert torch.allclose(slope[:, :-2], ladj[:, :-2].exp(), rtol=1e-9, atol=0), (name, inverse)
        assert (slope[:, -2:] == 1).all() and (ladj[:, -2:] == 0).all(), (name, inverse)
        t = bij.shift(p)[:, None] if isinstance(bij, BoundedSpline) else torch.zeros(8, 1, dtype=p.dtype)
        assert torch.equal(y[:, -2:], pts[:, -2:] - t if inverse else pts[:, -2:] + t), (name, inverse)  # exactly


@pytest.mark.parametrize("tie", [0.0, 1.0])
@pytest.mark.parametrize("path", PATHS)
def test_raw_slope_at_box_ends_whatever_clamps_tie_rule(path, tie, monkeypatch):
    """The raw function with end derivatives far from 1: the slope at each end is that derivative."""
    rqs = raw(path)
    monkeypatch.setattr(torch, "clamp", _clamp_with_tie_gradient(tie))
    monkeypatch.setattr(torch.Tensor, "clamp", _clamp_with_tie_gradient(tie))
    g = torch.Generator().manual_seed(22)
    kx, ky, d = random_knots((16,), 4, torch.float64, g)
    for inverse, axis, want in ((False, kx, d), (True, ky, 1 / d)):
        for j in range(5):  # every knot, both ends included
            slope, ladj, _ = _slope(lambda v, inverse=inverse: rqs(v, kx, ky, d, inverse=inverse), axis[:, j])
            assert torch.allclose(slope, want[:, j], rtol=1e-9, atol=0), (inverse, j)
            assert torch.allclose(ladj, want[:, j].log(), rtol=0, atol=1e-9), (inverse, j)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", PATHS)
def test_box_ends_agree_both_ways(path, dtype):
    """Forward at x = B and inverse at y = B are both inside: each end maps to the other end's box
    (never a rounding step outside it), and the logdets of both, and of a round trip from either
    end, sum to 0, for any end derivatives."""
    rqs = raw(path)
    g = torch.Generator().manual_seed(23)
    kx, ky, d = random_knots((400,), 4, dtype, g, y_box=(-1.0, 2.0))
    d[:5, 0], d[:5, -1] = 0.26, 0.26  # the case a user met: logdet -1.35 forward, 0 back
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    for j in (0, -1):
        y, ld = rqs(kx[:, j], kx, ky, d)
        assert ((y >= ky[:, 0]) & (y <= ky[:, -1])).all() and torch.allclose(y, ky[:, j], atol=tol, rtol=0)
        x, ld_inv = rqs(ky[:, j], kx, ky, d, inverse=True)
        assert ((x >= kx[:, 0]) & (x <= kx[:, -1])).all() and torch.allclose(x, kx[:, j], atol=tol, rtol=0)
        assert (ld + ld_inv).abs().max() <= tol
        assert (ld - d[:, j].log()).abs().max() <= tol
        _, ld_back = rqs(y, kx, ky, d, inverse=True)
        assert (ld + ld_back).abs().max() <= tol
    # float32: the bin's ends are recomputed from cumulative sizes, so xi = 1 holds to ~1e-5 there
    tol = 1e-10 if dtype == torch.float64 else 1e-3
    for bij in (RQSpline(backend=path), RQSpline(bins=3, bound=1.0, backend=path)):
        p = params_for(bij, (400,), dtype, 1.5, g)
        for B in (bij.bound, -bij.bound):
            x = torch.full((400,), B, dtype=dtype)
            y, ld = bij(x, p)
            xb, ld_inv = bij.inverse(y, p)
            assert (y.abs() <= bij.bound).all() and torch.allclose(y, x, atol=tol, rtol=0)
            assert (xb.abs() <= bij.bound).all() and torch.allclose(xb, x, atol=tol, rtol=0)
            assert (ld + ld_inv).abs().max() <= tol and ld.abs().max() <= tol  # end derivatives are 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", PATHS)
def test_inverse_is_the_identity_outside_even_with_a_steep_end_bin(path, dtype):
    """An end bin 1e-7 wide (in float32 it rounds to zero width): outside the box the inverse is
    exactly the identity with logdet 0, as in zuko and nflows; in float64 the gradients are finite too."""
    rqs = raw(path)
    kx = torch.tensor([-3, 3 - 1e-7, 3], dtype=dtype).expand(3, 3)
    ky = torch.tensor([-3.0, 2, 3], dtype=dtype).expand(3, 3)
    d = torch.tensor([1, 0.5, 1], dtype=dtype).expand(3, 3)
    y = torch.tensor([3.5, 10, 1e30], dtype=dtype)
    x, ladj = rqs(y, kx, ky, d, inverse=True)
    assert torch.equal(x, y) and torch.equal(ladj, torch.zeros_like(y))
    if dtype == torch.float64:
        leaves = [v.clone().requires_grad_() for v in (y, kx, ky, d)]
        x, ladj = rqs(*leaves, inverse=True)
        grads = torch.autograd.grad(x.sum() + ladj.sum(), leaves)
        assert all(torch.isfinite(gr).all() for gr in grads)
        assert torch.equal(grads[0], torch.ones_like(y))
        inside = torch.tensor([3.0, 2.9999999, 2.5, 2.0], dtype=dtype)  # the steep bin's ends and interior
        xi, li = rqs(inside, kx[:1].expand(4, 3), ky[:1].expand(4, 3), d[:1].expand(4, 3), inverse=True)
        assert ((xi >= 3 - 1e-7) & (xi <= 3)).all() and torch.isfinite(li).all()
        yb, lb = rqs(xi, kx[:1].expand(4, 3), ky[:1].expand(4, 3), d[:1].expand(4, 3))
        # x is known to ulp(3) ~ 4e-16 on a bin 1e-7 wide: xi to ~4e-9, the log-slope (up to 17) to ~1e-5
        assert torch.allclose(yb, inside, atol=1e-9, rtol=0) and torch.allclose(lb, -li, atol=1e-4, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    # (no subnormals: some torch builds set flush-to-zero, and hypothesis refuses to draw them then)
    st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False), min_size=11, max_size=11
    ),
    st.floats(-5, 5, width=32, allow_subnormal=False),
)
@pytest.mark.parametrize("path", PATHS)
def test_rq_spline_finite_for_every_finite_float32_param(path, raw, x0):
    """Any finite float32 raw parameters (up to +-3.4e38) give finite values, logdets and gradients."""
    bij = RQSpline(bins=4, backend=path)
    p = torch.tensor(raw, dtype=torch.float32).expand(5, 11)
    x = torch.tensor([x0, 0.0, bij.bound, -bij.bound, 2.9], dtype=torch.float32)
    for fn in (bij, bij.inverse):
        xs, ps = x.clone().requires_grad_(), p.clone().requires_grad_()
        y, ladj = fn(xs, ps)
        assert torch.isfinite(y).all() and torch.isfinite(ladj).all()
        gx, gp = torch.autograd.grad(y.sum() + ladj.sum(), [xs, ps])
        assert torch.isfinite(gx).all() and torch.isfinite(gp).all()


@pytest.mark.parametrize("path", PATHS)
def test_rq_spline_finite_at_float32_extremes(path):
    big = torch.finfo(torch.float32).max
    for fill in ([big] * 11, [-big] * 11, [big, -big] * 5 + [big], [0.0] * 8 + [big, -big, 1e21]):
        test_rq_spline_finite_for_every_finite_float32_param.hypothesis.inner_test(path, fill, 1.0)


def test_softplus_derivatives_floor_and_cap():
    m = 1e-3
    raw = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    d = softplus_derivatives(raw, m)
    assert (d > m).all() and (d <= 1 / m).all() and (d.diff() >= 0).all()
    assert softplus_derivatives(torch.zeros(()), m) == 1
    extreme = softplus_derivatives(torch.tensor([-3.4e38, -1e4, 1e4, 3.4e38]), m)  # float32: m to 1e-5
    assert (extreme > 0.99 * m).all() and (extreme <= 1 / m).all() and torch.isfinite(extreme).all()
    assert softplus_derivatives(torch.tensor([1e4]), m) == 1 / m


def test_raw_validate_names_the_broken_precondition():
    kx, ky, d = random_knots((4,), 3, torch.float64)
    x = torch.zeros(4, dtype=torch.float64)
    rational_quadratic_spline(x, kx, ky, d, validate=True)  # valid knots pass
    bad = kx.clone()
    bad[2, 1] = bad[2, 2]
    with pytest.raises(ValueError, match=r"knots_x must be strictly increasing.*\(2, 1\)"):
        rational_quadratic_spline(x, bad, ky, d, validate=True)
    with pytest.raises(ValueError, match="knots_y must be strictly increasing"):
        rational_quadratic_spline(x, kx, ky.flip(-1), d, validate=True)
    bad_d = d.clone()
    bad_d[1, 3] = 0
    with pytest.raises(ValueError, match=r"derivatives must be positive.*\(1, 3\)"):
        rational_quadratic_spline(x, kx, ky, bad_d, validate=True)
    bad_d[1, 3] = math.nan
    with pytest.raises(ValueError, match="derivatives has non-finite"):
        rational_quadratic_spline(x, kx, ky, bad_d, validate=True)


# ----------------------------------------------------------------------------- BoundedSpline's closed form (eager)


def _closed_form_cases():
    return {
        "bounded-rows": (BoundedSpline, "rows"),
        "bounded-conv": (BoundedSpline, "conv"),
        "bounded-wide-planes": (BIJECTIONS["bounded-wide"], "planes"),
        "fully-bounded-conv": (FullyBoundedSpline, "conv"),
    }


@pytest.mark.parametrize("name", sorted(_closed_form_cases()))
def test_bounded_closed_form_matches_the_generic_kernel_and_the_reference(name):
    """The eager `BoundedSpline` (two bins in closed form, analytic backward) against the generic
    eager kernel (one bin through autograd) and the reference, float64, both directions: values and
    gradients of both outputs w.r.t. x and every raw parameter, on the box's ends, on the interior
    knot and just outside the box (the next float), besides random points."""
    build, layout = _closed_form_cases()[name]
    bij = build(backend="fast")
    g = torch.Generator().manual_seed(31)
    p = params_for(bij, (4, 12), torch.float64, 1.0, g)
    for inverse in (False, True):
        x = torch.randn(4, 12, generator=g, dtype=torch.float64) * bij.bound * 1.5
        pts = _edge_points(bij, p[:, 0], inverse)  # (4, 5): both ends, the knot, just outside both ends
        x[:, :5] = pts
        p[:, :5] = p[:, :1]
        params = LAYOUTS[layout](p)

        def generic(v, q, inverse=inverse):
            planes, pdim = mf.utils.param_planes(q)
            return spline_kernels._bounded(v, planes, pdim, bij.settings, inverse, spline_kernels.EAGER_OPS)

        ref = build(backend="reference")
        fast = _values_and_grads(bij.inverse if inverse else bij, x, params)
        for other in (generic, ref.inverse if inverse else ref):
            want = _values_and_grads(other, x, params)
            for i, (a, b) in enumerate(zip(want, fast)):
                if i >= 4:  # the log-slope's gradients: off the knot and the box's ends (a kink there)
                    a, b = a[:, 5:], b[:, 5:]
                assert torch.allclose(a, b, atol=1e-11, rtol=1e-11), (name, inverse, i, (a - b).abs().max())
        y, ladj = (bij.inverse if inverse else bij)(x, params)
        outside = x[:, 3:5] - (bij.shift(p[:, :1]) if inverse else -bij.shift(p[:, :1]))
        assert torch.equal(y[:, 3:5], outside) and torch.equal(ladj[:, 3:5], torch.zeros_like(ladj[:, 3:5]))


@pytest.mark.parametrize("cls", [BoundedSpline, FullyBoundedSpline])
def test_bounded_closed_form_autograd_function(cls):
    """The analytic backward: gradcheck in float64 both ways (x and the params in a conv layout, outputs
    used alone and together), the same values with and without autograd, and a clear error on a
    second derivative."""
    bij = cls(backend="fast")
    g = torch.Generator().manual_seed(32)
    x = torch.linspace(-1.5, 1.5, 10, dtype=torch.float64).view(2, 5) * bij.bound + 0.0123
    p = LAYOUTS["conv"](params_for(bij, (2, 5), torch.float64, 1.0, g))
    for fn in (bij, bij.inverse):
        xs, ps = x.clone().requires_grad_(), p.detach().clone().requires_grad_()
        y, ladj = fn(xs, ps)
        assert type(y.grad_fn).__name__ == "_BoundedFunctionBackward"
        with torch.no_grad():
            y0, l0 = fn(x, p)
        assert torch.equal(y.detach(), y0) and torch.equal(ladj.detach(), l0)
        for pick in (lambda o: o[0], lambda o: o[1], lambda o: o):
            assert torch.autograd.gradcheck(lambda v, q, fn=fn, pick=pick: pick(fn(v, q)), [xs, ps])
        with pytest.raises(RuntimeError, match="no second derivative"):
            torch.autograd.grad(ladj.sum() + y.sum(), xs, create_graph=True)
