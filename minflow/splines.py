"""Rational-quadratic (RQ) spline bijections (Durkan et al., 2019), the identity outside a box.

A monotone RQ spline has K bins between knots (x_k, y_k) with positive derivatives d_k at the
knots. In bin k, with width w, height h, slope s = h / w and xi = (x - x_k) / w in [0, 1]:

    y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_k + d_{k+1} - 2 s) xi (1 - xi))
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (...) xi (1 - xi))^2

Outside the knots' interval the map is the identity. Inverting solves a quadratic in xi.

Numerics, the point of this module: elements outside the interval are replaced by a safe value
(clamped into it) *before* any arithmetic and put back at the end by selection, so no inf or NaN
from a discarded branch ever reaches a value. Gradients never rest on a tie-breaking rule of
torch (clamp's gradient at a bound changed between versions): inputs enter the box by
selection, with slope 1 up to and including its ends. The quadratic uses the root form without
cancellation, solved from whichever end keeps its discriminant a sum of non-negative terms;
roots and outputs are kept in their intervals against rounding, so the box's ends map onto each
other exactly in both directions. Both directions are written as "input + correction" with
a correction that is exactly 0 when the spline is the identity (equal knots on both axes, all
derivatives 1), so the bijections below are *exactly* the identity when their parameters are 0.

Speed: eagerly (the default), none of the ops that are slow on CPU (`torch.where`, bool -> float,
expm1, softplus on strided views, cumsum over a short dimension) and few temporaries; `RQSpline`
finds its bin with the K bins as the outer dimension and runs large inputs in cache-sized
slices. Parameters are taken apart along the conditioner's own layout (`param_planes`).
`set_compile(True)` runs each map through `torch.compile` instead: one fused loop over the
elements, several times faster (benchmarks/README.md), falling back to eager if compiling
fails. No host-device synchronisation and no branching on tensor values either way.

Bijections (``n_params`` raw values per element, for `minflow.Coupling` / `minflow.Injector`):
`BoundedSpline` (the paper's), `FullyBoundedSpline` (also bounds d and t), `RQSpline` (K bins).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .utils import param_planes

__all__ = ["BoundedSpline", "FullyBoundedSpline", "RQSpline", "compile_enabled", "cumulative_sizes",
           "rational_quadratic_spline", "rq_knots", "set_compile", "softplus_derivatives"]

# ----------------------------------------------------------------------------- speed: eager or compiled

_COMPILE = {"enabled": os.environ.get("MINFLOW_COMPILE", "").lower() in ("1", "true", "yes"), "failed": None}
_COMPILED: dict[str, Callable] = {}  # function name -> its torch.compile'd version, made on first use


def set_compile(enabled: bool = True) -> None:
    """Run the spline maps through `torch.compile` (inductor: fused C++ on CPU, Triton on GPU), or eagerly.

    Off by default; MINFLOW_COMPILE=1 in the environment turns it on at import. Compiled, a
    whole element-wise map (raw params -> knots -> spline) and its backward each become one fused
    loop over the elements: several times faster for training and sampling, after a compilation
    of 10-60 s for each new setting (direction, grad mode, dtype, memory layout). Same numbers up
    to rounding. If compiling fails (no C++ compiler, an unsupported platform) it warns and runs
    eagerly from then on; past torch's limit of 8 compilations per map, new settings run eagerly.
    Double backward and functorch transforms (vmap, jacrev) need eager.
    """
    _COMPILE["enabled"] = bool(enabled)


def compile_enabled() -> bool:
    """Whether the spline maps run through `torch.compile` now (see `set_compile`)."""
    return _COMPILE["enabled"]


def _compiling() -> bool:
    """True while torch.compile traces (its branches below pick ops that fuse)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling is not None and is_compiling())


def _compilable(fn: Callable) -> Callable:
    """fn(x, ...), run through torch.compile while `compile_enabled()`, and eagerly if compiling fails.

    x is passed contiguous: it is a channel slice in a coupling and a whole tensor in an injector,
    and each memory layout would otherwise cost a compilation (torch allows 8 per function).
    """

    @functools.wraps(fn)
    def run(x, *args):
        if not _COMPILE["enabled"] or _compiling():
            return fn(x, *args)
        try:
            if fn.__name__ not in _COMPILED:
                _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
            return _COMPILED[fn.__name__](x.contiguous(), *args)
        except Exception as err:  # noqa: BLE001 - whatever failed, the eager map gives the same numbers
            _COMPILE["enabled"], _COMPILE["failed"] = False, f"{type(err).__name__}: {err}"
            warnings.warn(f"minflow.splines: torch.compile failed ({_COMPILE['failed'][:300]}); "
                          "running eagerly from now on", RuntimeWarning, stacklevel=3)
            return fn(x, *args)

    return run


def _mask(op, a: Tensor, b, dtype: torch.dtype | None = None) -> Tensor:
    """The comparison op(a, b) as 0./1. of a's dtype (or ``dtype``): on CPU, bool -> float is a slow pass."""
    return op(a, b, out=torch.empty(a.shape, dtype=dtype or a.dtype, device=a.device))


def _bin_index(edges: Tensor, v: Tensor) -> Tensor:
    """#{k: edges_k <= v} over the last dimension of the sorted ``edges``, at most its length - 1."""
    if _compiling():  # searchsorted has no fused CPU lowering; K comparisons do
        j = (edges <= v.unsqueeze(-1)).sum(-1)
    else:
        j = torch.searchsorted(edges.contiguous(), v.unsqueeze(-1), right=True).squeeze(-1)
    return j.clamp_(max=edges.shape[-1] - 1)


# ----------------------------------------------------------------------------- one bin


def _tanh(z: Tensor) -> Tensor:
    """tanh(z). Compiled as sign(z) (1 - e) / (1 + e), e = exp(-2|z|): inductor's vectorised tanh
    costs about 3x that exp, division and sign on CPU (absolute error < 1e-7 in float32)."""
    if _compiling():
        e = torch.exp(-2 * z.abs())
        return torch.copysign((1 - e) / (1 + e), z)
    return torch.tanh(z)


def _into_box(x: Tensor, lo, hi) -> tuple[Tensor, Tensor]:
    """(u, inside): x clamped into [lo, hi], and whether x lies in that closed interval (False for NaN).

    du/dx is 1 on the closed interval, bounds included, and 0 outside, by selection: clamp's own
    gradient at a bound is a tie-breaking rule that differs between torch versions, so the value
    comes from a detached clamp and the gradient from picking x itself wherever it is inside.
    """
    c = x.detach().clamp(lo.detach() if isinstance(lo, Tensor) else lo, hi.detach() if isinstance(hi, Tensor) else hi)
    inside = c == x
    return torch.where(inside, x, c), inside


def _keep_in(v: Tensor, lo, hi) -> Tensor:
    """v with its *value* clamped into [lo, hi] and its gradient left as v's own.

    For quantities that lie in [lo, hi] exactly but may leave it by a rounding error (the root
    xi of a bin, a spline's output at the end of its box): the derivative is the formula's, even
    where rounding touched the bound.
    """
    vd = v.detach()
    return v + (vd.clamp(lo.detach() if isinstance(lo, Tensor) else lo, hi.detach() if isinstance(hi, Tensor) else hi) - vd)


def _select(m: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """a where the 0/1 float mask m is 1, b where it is 0, exactly (a * 1 + b * 0), as long as a is
    finite where m = 0 and b where m = 1. Several times cheaper than `torch.where` on CPU."""
    return torch.addcmul(a * m, b, 1 - m)


def _rq_bin(v: Tensor, w: Tensor, h: Tensor, d0, d1: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """The spline on one bin in its own coordinates, [0, w] -> [0, h], derivatives d0 and d1 at its ends.

    ``v`` is the input's offset into its interval (u - x0 forward, u - y0 inverse), in [0, w]
    (forward) or [0, h] (inverse). Returns (c, log|d out / d v|) with out = v + c the offset
    into the other interval: the correction c is exactly 0 at v = 0 and wherever the spline is
    the identity (h = w, d0 = d1 = 1), so callers add it to the input and identities stay exact.
    Forward: xi = v / w, c = (h - w) xi + h xi (1 - xi) C / den with C = (d0 - s) - (d0 + d1 - 2s) xi,
    s = h / w. Inverse: with r = v / h, xi is the root in [0, 1] of a xi^2 + b xi + c = 0,
    a = s - d0 + r q, b = d0 - r q, c = -s r, q = d0 + d1 - 2s (for a < 0, of its mirror image in
    1 - xi), taken as -2c / (b + sqrt(D)) when b >= 0 and (sqrt(D) - b) / 2a when b < 0 (no
    cancellation either way); c = w (xi - r) + r (w - h). xi is kept in [0, 1] against rounding.
    """
    s = h / w
    ds0 = d0 - s
    q = (d1 - s).add_(ds0)  # d0 + d1 - 2s
    if inverse:
        r = _keep_in(v / h, 0.0, 1.0)  # v may leave [0, h] by a rounding error in the bin's ends
        rq = r * q
        a, b = rq - ds0, d0 - rq
        # a xi^2 + b xi - s r = 0. Where a < 0, solve for 1 - xi instead: the mirrored equation
        # -a xi'^2 + (2a + b) xi' - s (1 - r) = 0 has the same discriminant, and in the chosen
        # frame both of its terms are >= 0 (no cancellation, no negative D from rounding). The
        # ends stay exact: r = 0 is solved unmirrored (xi = 0) and r = 1 mirrored (xi = 1), where
        # the constant term vanishes and D = b^2 either way.
        mirror = torch.maximum(_mask(torch.lt, a, 0) * _mask(torch.gt, r, 0), _mask(torch.eq, r, 1))
        a_m, b_m, r_m = a.abs(), _select(mirror, b + 2 * a, b), _select(mirror, 1 - r, r)
        disc = torch.addcmul(b_m * b_m, a_m, r_m * s, value=4)
        p = b_m.abs().add_(disc.sqrt())  # > 0 (a_m = 0 forces b_m = s > 0)
        pos = _mask(torch.ge, b_m, 0)
        root = _select(pos, 2 * s * r_m, p) / _select(pos, p, 2 * a_m)
        xi = _keep_in(_select(mirror, 1 - root, root), 0.0, 1.0)
        corr = torch.addcmul(w * (xi - r), r, w - h)
    else:
        xi = _keep_in(v / w, 0.0, 1.0)
    one_xi = 1 - xi
    t = xi * one_xi
    s_den = s / torch.addcmul(s, q, t)  # s / den, den = s + (d0 + d1 - 2s) xi (1 - xi) >= s / 2
    if not inverse:  # (one division by den for both uses; C = 0 at the identity, so c stays exactly 0)
        corr = torch.addcmul((h - w) * xi, w * t * torch.addcmul(ds0, q, xi, value=-1), s_den)
    end = one_xi * one_xi if isinstance(d0, float) and d0 == 1 else d0 * one_xi * one_xi
    inner = torch.addcmul(d1 * xi * xi, s, t, value=2).add_(end)  # a sum of positive terms
    ladj = torch.log(s_den.square() * inner)
    return corr, (ladj.neg_() if inverse else ladj)


# ----------------------------------------------------------------------------- the function


def _check_knots(x: Tensor, *tensors: Tensor) -> None:
    for name, v in zip(("knots_x", "knots_y", "derivatives"), tensors):
        if v.dim() != x.dim() + 1 or v.shape[:-1] != x.shape or v.shape[-1] < 2:
            raise ValueError(
                f"{name} must have shape x.shape + (K+1,) = {tuple(x.shape)} + (K+1,) with K >= 1, got "
                f"{tuple(v.shape)}; for knots shared by every element use .expand(*x.shape, K+1)"
            )
    if len({v.shape[-1] for v in tensors}) > 1:
        raise ValueError(
            "knots_x, knots_y and derivatives need the same number of knots K+1 on their last dimension, "
            f"got {[v.shape[-1] for v in tensors]}"
        )


def _validate_knots(knots_x: Tensor, knots_y: Tensor, derivatives: Tensor) -> None:
    """Raise a ValueError unless the knots are finite and strictly increasing and the derivatives finite and > 0."""
    for name, v in (("knots_x", knots_x), ("knots_y", knots_y), ("derivatives", derivatives)):
        if not torch.isfinite(v).all():
            raise ValueError(f"{name} has non-finite values, first at index {_first(~torch.isfinite(v))}")
    for name, v in (("knots_x", knots_x), ("knots_y", knots_y)):
        step = v.diff(dim=-1)
        if not (step > 0).all():
            raise ValueError(f"{name} must be strictly increasing along its last dimension; knots {_first(step <= 0)} "
                             "and the next one are not (in this dtype)")
    if not (derivatives > 0).all():
        raise ValueError(f"derivatives must be positive; not at index {_first(derivatives <= 0)}")


def _first(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


@_compilable
def _spline(x: Tensor, a: Tensor, b: Tensor, d: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """`rational_quadratic_spline` without checks; a: knots on the input axis, b: on the output axis."""
    u, inside = _into_box(x, a[..., 0], a[..., -1])  # a safe in-interval value *before* any arithmetic
    k = _bin_index(a, u).sub_(1).clamp_(min=0)
    idx = torch.stack([k, k + 1], -1)  # (..., 2): the bin's two knots
    a0, a1 = a.gather(-1, idx).unbind(-1)
    b0, b1 = b.gather(-1, idx).unbind(-1)
    d0, d1 = d.gather(-1, idx).unbind(-1)
    wa, wb = a1 - a0, b1 - b0  # the bin's size on the input and output axes
    corr, ladj = _rq_bin(u - a0, wb if inverse else wa, wa if inverse else wb, d0, d1, inverse)
    y = _keep_in((b0 - a0).add_(u).add_(corr), b[..., 0], b[..., -1])  # the box's end maps to its end exactly
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)  # never 0 * (a discarded inf or NaN)


def rational_quadratic_spline(
    x: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor, inverse: bool = False, validate: bool = False
) -> tuple[Tensor, Tensor]:
    """The monotone RQ spline through (knots_x, knots_y) with ``derivatives``, identity outside.

    ``knots_x``, ``knots_y``, ``derivatives`` have shape ``x.shape + (K+1,)``. Preconditions:
    knots strictly increasing (in x's dtype: knots closer than its resolution count as equal)
    and derivatives positive and finite. They are checked only with ``validate=True`` (a
    ValueError naming the first offending element), since that costs a pass over the knots;
    unchecked, a violated precondition gives a meaningless map inside the box (never outside).
    Inside [knots_x[..., 0], knots_x[..., -1]], ends included, it is the spline; outside, the
    identity with log|dy/dx| = 0. ``inverse=True`` inverts, using the knots_y interval. Returns
    ``(y, logabsdet)``, both shaped like x; the inverse's logabsdet is minus the forward's.
    """
    _check_knots(x, knots_x, knots_y, derivatives)
    if validate:
        _validate_knots(knots_x, knots_y, derivatives)
    a, b = (knots_y, knots_x) if inverse else (knots_x, knots_y)  # a: the input's axis
    return _spline(x, a, b, derivatives, inverse)


# ----------------------------------------------------------------------------- knots from raw values


def cumulative_sizes(raw: Tensor, min_bin: float = 1e-3) -> Tensor:
    """(..., K) raw bin sizes -> (..., K) unnormalised cumulative sizes G_1 < ... < G_K.

    Bin j gets e_j + mu with e = exp(raw - max raw) and mu = K m / (1 - K m); its share of the box,
    (e_j + mu) / G_K, is then at least m = ``min_bin`` (a softmax with a floor). Knot j sits at
    -B + 2B G_j / G_K (G_0 = 0). Only elementwise ops and one cumsum: no per-row rescaling.
    """
    k = raw.shape[-1]
    if not 0 < min_bin * k < 1:
        raise ValueError(f"min_bin * K must lie in (0, 1), got min_bin={min_bin}, K={k}")
    return ((raw - raw.amax(-1, keepdim=True)).exp_() + k * min_bin / (1 - k * min_bin)).cumsum(-1)


def softplus_derivatives(raw: Tensor, min_derivative: float = 1e-3) -> Tensor:
    """d = min(1 + (1 - m)(softplus(raw) / log 2 - 1), 1 / m): in (m, 1/m], exactly 1 at raw = 0.

    The cap 1/m (reached at raw ~ 0.69 / m) keeps every raw value finite in float32, values
    and gradients alike: without it, raw ~ 1e38 overflows and huge derivatives underflow the slope.
    """
    if not 0 < min_derivative < 1:
        raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}")
    sp0 = F.softplus(raw.new_zeros(()))  # log 2 as torch rounds it, so softplus(0) - sp0 == 0
    d = (F.softplus(raw) - sp0).mul_((1 - min_derivative) / math.log(2)).add_(1)
    return torch.where(d < 1 / min_derivative, d, 1 / min_derivative)


def rq_knots(
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    bound: float = 3.0,
    min_bin: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Raw values -> (knots_x, knots_y, derivatives) for `rational_quadratic_spline` on [-bound, bound].

    ``widths``, ``heights``: (..., K), through `cumulative_sizes`. ``derivatives``: (..., K-1)
    interior raw values through `softplus_derivatives`, the two boundary derivatives 1 (the slope
    is then continuous with the identity outside), or (..., K+1) raw values for all knots.
    `RQSpline` computes the same spline without building these (K+1)-long tensors.
    """
    k = widths.shape[-1]
    if heights.shape[-1] != k or derivatives.shape[-1] not in (k - 1, k + 1):
        raise ValueError(
            f"widths and heights need K values and derivatives K-1 (interior) or K+1, got "
            f"{widths.shape[-1]}, {heights.shape[-1]} and {derivatives.shape[-1]}"
        )

    def knots(raw: Tensor) -> Tensor:  # -B + G_j (2B / G_K), as `RQSpline` computes them
        g = cumulative_sizes(raw, min_bin)
        out = F.pad((g * ((2 * bound) / g[..., -1:])).sub_(bound), (1, 0), value=-bound)
        out[..., -1] = bound  # exact, whatever the rounding
        return out

    if derivatives.shape[-1] == k - 1:
        derivatives = F.pad(derivatives, (1, 1))  # raw 0 -> derivative exactly 1
    # contiguous: softplus on a strided view (a slice of the params) is many times slower on CPU
    return knots(widths), knots(heights), softplus_derivatives(derivatives.contiguous(), min_derivative)


# ----------------------------------------------------------------------------- bijections


def _bounded_knot(planes: Tensor, pdim: int, bound: float, min_bin: float, min_derivative: float,
                  max_log_derivative: float | None, max_shift: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_1, y_1, interior derivative, shift) of `BoundedSpline` (and `FullyBoundedSpline`) from raw params
    (as `minflow.utils.param_planes` gives them)."""
    a, h, d, t = planes.unbind(pdim)
    if max_log_derivative is not None:
        d = max_log_derivative * _tanh(d / max_log_derivative)
    if max_shift is not None:
        t = max_shift * _tanh(t / max_shift)
    c = bound * (1 - 2 * min_bin)
    deriv = (torch.exp(d) - 1).mul_(1 - min_derivative).add_(1)  # 1 + (1 - m) expm1(d); expm1 is slow on CPU
    return c * _tanh(0.5 * a), c * _tanh(0.5 * h), deriv, t


@_compilable
def _bounded_spline(x: Tensor, planes: Tensor, pdim: int, bound: float, min_bin: float, min_derivative: float,
                    max_log_derivative: float | None, max_shift: float | None, inverse: bool) -> tuple[Tensor, Tensor]:
    """`BoundedSpline` forward, y = RQS(x) + t, or inverse, x = RQS^{-1}(y - t).

    The right bin is the left one mirrored through the origin, so with sigma = +-1 the bin is always
    [-B, sigma k_in] -> [-B, sigma k_out] with derivatives (1, deriv), and the output is
    x + sigma c with the bin's correction c, exactly 0 at -B: the identity outside the box needs
    no mask (u = x clamped to the box gives c = 0 and logdet 0 there, exactly).
    """
    kx, ky, deriv, t = _bounded_knot(planes, pdim, bound, min_bin, min_derivative, max_log_derivative, max_shift)
    k_in, k_out = (ky, kx) if inverse else (kx, ky)
    if inverse:
        x = x - t
    B = x.new_full((), bound)
    u, _ = _into_box(x, -bound, bound)  # a safe in-box value before any arithmetic
    sigma = torch.copysign(x.new_ones(()), k_in - u)  # +1 left bin, -1 right bin (at the knot: left)
    w_in, w_out = torch.addcmul(B, sigma, k_in), torch.addcmul(B, sigma, k_out)  # bin sizes on each axis
    w, h = (w_out, w_in) if inverse else (w_in, w_out)  # the bin of the forward map: [0, w] -> [0, h]
    corr, ladj = _rq_bin(torch.addcmul(B, sigma, u), w, h, 1.0, deriv, inverse)
    y = torch.addcmul(x, sigma, corr)
    return (y if inverse else y + t), ladj


class BoundedSpline(nn.Module):
    """The paper's spline (Hong et al., 2023): c(x) = RQS(x) + t, params (a, h, d, t) per element.

    RQS maps the box [-B, B] onto itself with 2 bins: one free interior knot at width and height
    fractions sigmoid(.) (1 - 2 m) + m of the box, i.e. (x_1, y_1) = B (1 - 2m) (tanh(a/2), tanh(h/2)),
    interior derivative exp(d) (1 - m_d) + m_d = 1 + (1 - m_d) expm1(d), end derivatives 1.
    Outside the box it is the identity (slope exactly 1). Forward y = RQS(x) + t, inverse
    x = RQS^{-1}(y - t): sampling shifts by t and moves an element by at most 2B more, never
    multiplies it. Params 0 give x_1 = y_1 = 0, derivative 1, t = 0: exactly the identity.
    exp(d) and t are unbounded, as in the paper (see `FullyBoundedSpline`).
    """

    n_params = 4
    max_log_derivative: float | None = None  # no bound on d and t: the paper's
    max_shift: float | None = None

    def __init__(self, bound: float = 0.5, min_bin: float = 1e-3, min_derivative: float = 1e-3):
        super().__init__()
        if bound <= 0 or not 0 < min_bin < 0.5 or not 0 < min_derivative < 1:
            raise ValueError(f"need bound > 0, 0 < min_bin < 0.5, 0 < min_derivative < 1; got "
                             f"{bound}, {min_bin}, {min_derivative}")
        self.bound, self.min_bin, self.min_derivative = bound, min_bin, min_derivative

    def _config(self, params: Tensor) -> tuple:
        if params.shape[-1] != self.n_params:
            raise ValueError(f"{type(self).__name__} needs params of shape x.shape + (4,) = (a, h, d, t), "
                             f"got last dimension {params.shape[-1]}")
        return self.bound, self.min_bin, self.min_derivative, self.max_log_derivative, self.max_shift

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(knots_x, knots_y, derivatives) of shape x.shape + (3,), for plots and checks:
        forward(x) = rational_quadratic_spline(x, *knots) + shift."""
        kx, ky, deriv, _ = _bounded_knot(*param_planes(params), *self._config(params))
        B, one = torch.full_like(kx, self.bound), torch.ones_like(kx)
        return torch.stack([-B, kx, B], -1), torch.stack([-B, ky, B], -1), torch.stack([one, deriv, one], -1)

    def shift(self, params: Tensor) -> Tensor:
        """The shift t actually applied (the raw t here; bounded in `FullyBoundedSpline`)."""
        return _bounded_knot(*param_planes(params), *self._config(params))[3]

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return _bounded_spline(x, *param_planes(params), *self._config(params), False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return _bounded_spline(y, *param_planes(params), *self._config(params), True)

    def extra_repr(self) -> str:
        return f"bound={self.bound}, min_bin={self.min_bin}, min_derivative={self.min_derivative}"


class FullyBoundedSpline(BoundedSpline):
    """`BoundedSpline` with the interior log-derivative and the shift bounded as well (beyond the paper).

    d -> d_max tanh(d / d_max), so the interior derivative lies in (e^-d_max, e^d_max) and exp never
    overflows; t -> t_max tanh(t / t_max), so one layer shifts by less than t_max. Both maps are
    the identity near 0, so params 0 still give exactly the identity. The sampling direction
    moves an element by at most t_max + 2B per layer, whatever the condition.
    """

    def __init__(self, bound: float = 0.5, min_bin: float = 1e-3, min_derivative: float = 1e-3,
                 max_log_derivative: float = 3.0, max_shift: float = 3.0):
        super().__init__(bound, min_bin, min_derivative)
        if max_log_derivative <= 0 or max_shift <= 0:
            raise ValueError("max_log_derivative and max_shift must be positive")
        self.max_log_derivative, self.max_shift = max_log_derivative, max_shift

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_log_derivative={self.max_log_derivative}, max_shift={self.max_shift}"


def _find_bin_tensors(u: Tensor, planes: Tensor, pdim: int, k: int, bound: float, min_bin: float, inverse: bool):
    """The bin of u among the unnormalised cumulative sizes, as tensor ops over the K bins (eager):
    its ends on the input and output axes (G_j, and G_K - G_{j+1}, exactly 0 in the last bin; G_0 = 0), the scales 2B / G_K of both
    axes, and the raw derivatives at its two knots, (..., 2) (0 at the end knots: derivative exactly 1).

    The parameters are viewed bins-first, (3K - 1, ...): a view of planar parameters (a conv
    conditioner's layout), one transposing copy of row-packed ones. Every op then runs along
    contiguous memory: the max over K planes, the cumulative sums as one matmul with a triangular
    matrix (cumsum over a non-last dimension is slow on CPU), the bin index as a count of K - 1
    comparisons, each gather picking one of K planes per element.
    """
    p = planes.movedim(pdim, 0)
    if p.stride(-1) != 1:
        p = p.contiguous()
    w, h, d = p.split([k, k, k - 1], 0)
    tri = torch.ones(k, k, dtype=p.dtype, device=p.device).tril_()
    steps = torch.arange(1, k + 1, dtype=p.dtype, device=p.device).unsqueeze(1) * (k * min_bin / (1 - k * min_bin))

    def cumulative(raw: Tensor) -> Tensor:  # G_j = sum_{i <= j} (e_i + mu), as `cumulative_sizes`
        e = (raw - raw.amax(0)).exp_()
        return torch.addmm(steps, tri, e.flatten(1)).view(e.shape)

    g_in, g_out = cumulative(w), cumulative(h)
    if inverse:
        g_in, g_out = g_out, g_in
    scale_in, scale_out = (2 * bound) / g_in[-1], (2 * bound) / g_out[-1]
    j = _mask(torch.le, g_in[:-1], (u + bound) / scale_in).sum(0).long()  # bin j: G_j <= v < G_{j+1}
    i = torch.stack([j - 1, j])  # where G_j, G_{j+1} sit in g (G_0 is not stored), and raw d_j, d_{j+1}
    gi, di = i.clamp(min=0), i.clamp(0, k - 2)
    inner_knot = _mask(torch.eq, i, di, u.dtype)  # 0 at the end knots
    lo_in, hi_in = g_in.gather(0, gi).unbind(0)
    lo_out, hi_out = g_out.gather(0, gi).unbind(0)
    first = inner_knot[0]
    raw_d = (d.gather(0, di) * inner_knot).movedim(0, -1)
    return lo_in * first, g_in[-1] - hi_in, lo_out * first, g_out[-1] - hi_out, scale_in, scale_out, raw_d


def _find_bin_columns(u: Tensor, planes: Tensor, pdim: int, k: int, bound: float, min_bin: float, inverse: bool):
    """`_find_bin_tensors` written column by column (a Python loop over the K bins, never over elements).

    Only element-wise ops: inductor fuses them into one loop over the elements, vectorised when
    each parameter is contiguous over the elements (as a conv conditioner lays them out), while
    the tensor form's max over the bins, triangular matmul, comparison count and gathers would
    each stay a separate kernel. Same numbers up to rounding.
    """
    cols = planes.unbind(pdim)
    mu = k * min_bin / (1 - k * min_bin)

    def cumulative(raw):  # G_1, ..., G_K as `cumulative_sizes` computes them
        top = functools.reduce(torch.maximum, raw)
        return list(itertools.accumulate(torch.exp(r - top) + mu for r in raw))

    g_in, g_out = cumulative(cols[:k]), cumulative(cols[k : 2 * k])
    d = cols[2 * k :] + (torch.zeros_like(u),)  # raw derivatives at knots 1..K-1, then 0 for knot K
    if inverse:
        g_in, g_out = g_out, g_in
    scale_in, scale_out = (2 * bound) / g_in[-1], (2 * bound) / g_out[-1]
    v = (u + bound) / scale_in
    zero = torch.zeros_like(u)
    lo_in, hi_in, lo_out, hi_out, d0, d1 = zero, g_in[0], zero, g_out[0], zero, d[0]  # bin 0
    for j in range(1, k):  # move to bin j where G_j <= v
        m = g_in[j - 1] <= v
        lo_in, hi_in = torch.where(m, g_in[j - 1], lo_in), torch.where(m, g_in[j], hi_in)
        lo_out, hi_out = torch.where(m, g_out[j - 1], lo_out), torch.where(m, g_out[j], hi_out)
        d0, d1 = torch.where(m, d[j - 1], d0), torch.where(m, d[j], d1)
    return lo_in, g_in[-1] - hi_in, lo_out, g_out[-1] - hi_out, scale_in, scale_out, torch.stack([d0, d1], -1)


_CHUNK = 3 << 14  # elements per eager slice on CPU: (K, slice) float32 temporaries of 1.5 MiB stay in a 2 MiB L2


def _in_chunks(fn: Callable, x: Tensor, planes: Tensor, pdim: int, *args) -> tuple[Tensor, Tensor]:
    """fn(x, planes, pdim, *args) -> (y, ladj), applied to slices of x's dim 0 of about `_CHUNK` elements
    (eager, CPU).

    An element-wise map gives the same numbers either way, up to rounding (a matmul may sum in
    another order on a slice, 1 ulp in float32). Eagerly, each op is a pass over its
    whole input: in slices, a map's temporaries stay in the CPU cache from one op to the next
    and are recycled by the allocator instead of being fresh pages (about 1.5x faster for
    `RQSpline` at 1e6 elements, benchmarks/README.md). On a GPU one call is faster.
    """
    n = round(x.numel() / _CHUNK)  # n slices of about equal size, 2/3 to 3/2 of _CHUNK elements each
    if x.device.type != "cpu" or x.dim() == 0 or n <= 1:
        return fn(x, planes, pdim, *args)
    rows = -(-x.shape[0] // n)
    slices = planes.split(rows, 1 if pdim == 0 else 0)  # x's dim 0 is the planes' dim 1 when pdim = 0
    ys, ladjs = zip(*(fn(xs, ps, pdim, *args) for xs, ps in zip(x.split(rows), slices)))
    return torch.cat(ys), torch.cat(ladjs)


@_compilable
def _rq_spline(x: Tensor, planes: Tensor, pdim: int, bins: int, bound: float, min_bin: float, min_derivative: float,
               inverse: bool) -> tuple[Tensor, Tensor]:
    """`RQSpline` forward or inverse: compiled in one piece, eagerly in cache-sized slices."""
    args = (pdim, bins, bound, min_bin, min_derivative, inverse)
    return _rq_spline_map(x, planes, *args) if _compiling() else _in_chunks(_rq_spline_map, x, planes, *args)


def _rq_spline_map(x: Tensor, planes: Tensor, pdim: int, bins: int, bound: float, min_bin: float,
                   min_derivative: float, inverse: bool) -> tuple[Tensor, Tensor]:
    """`RQSpline` forward or inverse: the bin among the unnormalised cumulative sizes, then its two knots."""
    B = bound
    u, inside = _into_box(x, -B, B)  # a safe in-box value before any arithmetic
    find = _find_bin_columns if _compiling() else _find_bin_tensors
    lo_in, up_in, lo_out, up_out, scale_in, scale_out, raw_d = find(u, planes, pdim, bins, bound, min_bin, inverse)
    d0, d1 = softplus_derivatives(raw_d, min_derivative).unbind(-1)
    # the bin on the input axis and on the output axis, each end measured from its own end of the
    # box: the first bin starts at -B and the last ends at B exactly, so xi is exactly 0 or 1 there
    a0, b0 = lo_in * scale_in - B, lo_out * scale_out - B
    wa, wb = (B - up_in * scale_in) - a0, (B - up_out * scale_out) - b0
    corr, ladj = _rq_bin(u - a0, wb if inverse else wa, wa if inverse else wb, d0, d1, inverse)
    y = _keep_in((b0 - a0).add_(u).add_(corr), -B, B)  # the box's end maps to its end exactly
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)


class RQSpline(nn.Module):
    """Durkan et al.'s RQ spline: K bins on [-B, B], identity outside; 3K - 1 params per element.

    params = (K widths, K heights, K - 1 interior derivatives), all raw: bin shares of the box
    (e_j + mu) / sum(e + mu), e = exp(raw - max), at least ``min_bin`` (`cumulative_sizes`);
    derivatives 1 + (1 - m)(softplus(raw) / log 2 - 1) in (m, 1/m] (`softplus_derivatives`); boundary
    derivatives 1 so the slope is continuous with the identity outside. Params 0 give uniform
    bins on both axes and derivatives 1: exactly the identity. Same map as
    ``rational_quadratic_spline(x, *rq_knots(...))``, but it finds the bin among the unnormalised
    cumulative sizes and transforms only the two knots it needs: no (K+1)-long tensor per element.
    """

    def __init__(self, bins: int = 8, bound: float = 3.0, min_bin: float = 1e-3, min_derivative: float = 1e-3):
        super().__init__()
        if bins < 2 or bound <= 0 or not 0 < min_bin * bins < 1 or not 0 < min_derivative < 1:
            raise ValueError(f"need bins >= 2, bound > 0, 0 < min_bin * bins < 1, 0 < min_derivative < 1; "
                             f"got {bins}, {bound}, {min_bin}, {min_derivative}")
        self.bins, self.bound, self.min_bin, self.min_derivative = bins, bound, min_bin, min_derivative
        self.n_params = 3 * bins - 1

    def _split(self, params: Tensor) -> list[Tensor]:
        if params.shape[-1] != self.n_params:
            raise ValueError(f"RQSpline(bins={self.bins}) needs params of shape x.shape + ({self.n_params},) "
                             f"(K widths, K heights, K-1 derivatives), got last dimension {params.shape[-1]}")
        return params.split([self.bins, self.bins, self.bins - 1], -1)

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(knots_x, knots_y, derivatives), each of shape x.shape + (K + 1,), for plots and checks."""
        return rq_knots(*self._split(params), self.bound, self.min_bin, self.min_derivative)

    def _call(self, x: Tensor, params: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        self._split(params)  # checks the shape
        return _rq_spline(x, *param_planes(params), self.bins, self.bound, self.min_bin, self.min_derivative, inverse)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(y, params, inverse=True)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}, min_bin={self.min_bin}, min_derivative={self.min_derivative}"
