"""Rational-quadratic (RQ) spline bijections (Durkan et al., 2019), the identity outside a box.

A monotone RQ spline has K bins between knots (x_k, y_k) with positive derivatives d_k at the
knots. In bin k, with width w, height h, slope s = h / w and xi = (x - x_k) / w in [0, 1]:

    y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_k + d_{k+1} - 2 s) xi (1 - xi))
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (...) xi (1 - xi))^2

Outside the knots' interval the map is the identity. Inverting solves a quadratic in xi.

Numerics: elements outside the interval are replaced by a safe value (clamped into it) *before*
any arithmetic and put back at the end by selection, so no inf or NaN from a discarded branch
ever reaches a value. Gradients never rest on a tie-breaking rule of torch (clamp's gradient at
a bound changed between versions): inputs enter the box by selection, with slope 1 up to and
including its ends. The quadratic uses the root form without cancellation, solved from whichever
end keeps its discriminant a sum of non-negative terms; roots and outputs are kept in their
intervals against rounding, so the box's ends map onto each other exactly in both directions.
Both directions are written as "input + correction" with a correction that is exactly 0 when the
spline is the identity (equal knots on both axes, all derivatives 1), so the bijections below are
*exactly* the identity when their parameters are 0.

This module is the reference: every map written plainly from these formulas. The bijections
(``n_params`` raw values per element, for `minflow.Coupling` / `minflow.Injector`) are
`BoundedSpline` (the paper's), `FullyBoundedSpline` (also bounds d and t) and `RQSpline` (K bins).
Each runs one of three ``backend``s, all giving the same numbers up to rounding:

- ``"fast"`` (the default): `minflow.spline_kernels.FAST`, the same maps tuned for eager CPU speed;
- ``"compiled"``: `minflow.spline_kernels.COMPILED`, each map one fused loop through `torch.compile`
  (several times faster after a compilation of 10-60 s per new setting; it warns and runs eagerly
  if compiling fails);
- ``"reference"``: the functions of this module.

A bijection constructed without ``backend`` takes ``"compiled"`` when the environment variable
MINFLOW_COMPILE is 1 (or true, yes) at that moment, else ``"fast"``; `set_backend` changes it on
every spline of a model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "BoundedSettings",
    "BoundedSpline",
    "FullyBoundedSpline",
    "Kernels",
    "RQSettings",
    "RQSpline",
    "cumulative_sizes",
    "default_backend",
    "kernels",
    "rational_quadratic_spline",
    "rq_knots",
    "set_backend",
    "softplus_derivatives",
]

# ----------------------------------------------------------------------------- into the box, and kept there


def _clamped_value(v: Tensor, lo, hi) -> Tensor:
    """v's value clamped into [lo, hi] (bounds: numbers or tensors), detached: carries no gradient."""

    def value(b):
        return b.detach() if isinstance(b, Tensor) else b

    return v.detach().clamp(value(lo), value(hi))


def _into_box(x: Tensor, lo, hi) -> tuple[Tensor, Tensor]:
    """(u, inside): x clamped into [lo, hi], and whether x lies in that closed interval (False for NaN).

    du/dx is 1 on the closed interval, bounds included, and 0 outside, by selection: clamp's own
    gradient at a bound is a tie-breaking rule that differs between torch versions, so the value
    comes from a detached clamp and the gradient from picking x itself wherever it is inside.
    """
    c = _clamped_value(x, lo, hi)
    inside = c == x
    return torch.where(inside, x, c), inside


def _keep_in(v: Tensor, lo, hi) -> Tensor:
    """v with its *value* clamped into [lo, hi] and its gradient left as v's own (straight through).

    For quantities that lie in [lo, hi] exactly but may leave it by a rounding error (the root
    xi of a bin, a spline's output at the end of its box): the derivative is the formula's, even
    where rounding touched the bound.
    """
    return v + (_clamped_value(v, lo, hi) - v.detach())


# ----------------------------------------------------------------------------- one bin


def _rq_bin(v: Tensor, w: Tensor, h: Tensor, d0, d1: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """The spline on one bin in its own coordinates, [0, w] -> [0, h], derivatives d0 and d1 at its ends.

    ``v`` is the input's offset into its interval (u - x0 forward, u - y0 inverse), in [0, w]
    (forward) or [0, h] (inverse). Returns (c, log|d out / d v|) with out = v + c the offset
    into the other interval: the correction c is exactly 0 at v = 0 and wherever the spline is
    the identity (h = w, d0 = d1 = 1), so callers add it to the input and identities stay exact.
    """
    s = h / w
    q = d0 + d1 - 2 * s
    if inverse:
        # xi is the root in [0, 1] of a xi^2 + b xi - s r = 0, r = v / h
        r = _keep_in(v / h, 0.0, 1.0)  # v may leave [0, h] by a rounding error in the bin's ends
        a = s - d0 + r * q
        b = d0 - r * q
        # Where a < 0, solve for xi' = 1 - xi instead: -a xi'^2 + (2a + b) xi' - s (1 - r) = 0 has
        # the same discriminant, and in the frame with a >= 0 both of its terms are >= 0. The ends
        # stay exact: r = 0 is solved unmirrored (xi = 0) and r = 1 mirrored (xi = 1), where the
        # constant term vanishes and D = b^2 either way.
        mirror = ((a < 0) & (r > 0)) | (r == 1)
        a_m = a.abs()
        b_m = torch.where(mirror, b + 2 * a, b)
        r_m = torch.where(mirror, 1 - r, r)
        p = b_m.abs() + torch.sqrt(b_m**2 + 4 * a_m * s * r_m)  # > 0 (a_m = 0 forces b_m = s > 0)
        # the root without cancellation: 2 s r / (b + sqrt D) for b >= 0, (sqrt D - b) / 2a for b < 0
        # (numerator and denominator are selected before dividing: no inf in a discarded branch)
        pos = b_m >= 0
        root = torch.where(pos, 2 * s * r_m, p) / torch.where(pos, p, 2 * a_m)
        xi = _keep_in(torch.where(mirror, 1 - root, root), 0.0, 1.0)
        corr = w * (xi - r) + r * (w - h)  # out = w xi, as v + c with v = h r
    else:
        xi = _keep_in(v / w, 0.0, 1.0)
    t = xi * (1 - xi)
    den = s + q * t  # >= s / 2
    if not inverse:
        # out = h (s xi^2 + d0 t) / den = v + c, with c exactly 0 at the identity (d0 - s - q xi = 0)
        corr = (h - w) * xi + h * t * (d0 - s - q * xi) / den
    slope = s**2 * (d1 * xi**2 + 2 * s * t + d0 * (1 - xi) ** 2) / den**2
    ladj = torch.log(slope)
    return corr, (-ladj if inverse else ladj)


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
            raise ValueError(
                f"{name} must be strictly increasing along its last dimension; knots {_first(step <= 0)} "
                "and the next one are not (in this dtype)"
            )
    if not (derivatives > 0).all():
        raise ValueError(f"derivatives must be positive; not at index {_first(derivatives <= 0)}")


def _first(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def _spline(
    x: Tensor, knots_in: Tensor, knots_out: Tensor, derivatives: Tensor, inverse: bool
) -> tuple[Tensor, Tensor]:
    """`rational_quadratic_spline` without checks, from the knots on the input and on the output axis."""
    u, inside = _into_box(x, knots_in[..., 0], knots_in[..., -1])  # a safe in-interval value *before* any arithmetic
    # the bin k with knots_in[k] <= u < knots_in[k + 1] (the last bin includes the box's end)
    k = torch.searchsorted(knots_in.contiguous(), u.unsqueeze(-1), right=True).squeeze(-1)
    k = (k - 1).clamp(0, knots_in.shape[-1] - 2)
    idx = torch.stack([k, k + 1], -1)  # (..., 2): the bin's two knots
    x0, x1 = knots_in.gather(-1, idx).unbind(-1)
    y0, y1 = knots_out.gather(-1, idx).unbind(-1)
    d0, d1 = derivatives.gather(-1, idx).unbind(-1)
    w_in, w_out = x1 - x0, y1 - y0  # the bin's size on the input and output axes
    w, h = (w_out, w_in) if inverse else (w_in, w_out)  # the bin of the forward map: [0, w] -> [0, h]
    corr, ladj = _rq_bin(u - x0, w, h, d0, d1, inverse)
    y = _keep_in((y0 - x0) + u + corr, knots_out[..., 0], knots_out[..., -1])  # the box's end maps to its end
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)  # never 0 * (a discarded inf or NaN)


def rational_quadratic_spline(
    x: Tensor,
    knots_x: Tensor,
    knots_y: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    validate: bool = False,
    *,
    backend: str = "fast",
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
    ``backend``: one of `BACKENDS` (see the module docstring).
    """
    _check_knots(x, knots_x, knots_y, derivatives)
    if validate:
        _validate_knots(knots_x, knots_y, derivatives)
    knots_in, knots_out = (knots_y, knots_x) if inverse else (knots_x, knots_y)
    return kernels(backend).spline(x, knots_in, knots_out, derivatives, inverse)


# ----------------------------------------------------------------------------- knots from raw values


def _bin_floor(k: int, min_bin: float) -> float:
    """mu = K m / (1 - K m): added to each of K exponentials, it gives every bin a share >= m of the box."""
    return k * min_bin / (1 - k * min_bin)


def cumulative_sizes(raw: Tensor, min_bin: float = 1e-3) -> Tensor:
    """(..., K) raw bin sizes -> (..., K) unnormalised cumulative sizes G_1 < ... < G_K.

    Bin j gets e_j + mu with e = exp(raw - max raw) and mu = K m / (1 - K m); its share of the box,
    (e_j + mu) / G_K, is then at least m = ``min_bin`` (a softmax with a floor). Knot j sits at
    -B + 2B G_j / G_K (G_0 = 0). Only elementwise ops and one cumsum: no per-row rescaling.
    """
    k = raw.shape[-1]
    if not 0 < min_bin * k < 1:
        raise ValueError(f"min_bin * K must lie in (0, 1), got min_bin={min_bin}, K={k}")
    return ((raw - raw.amax(-1, keepdim=True)).exp_() + _bin_floor(k, min_bin)).cumsum(-1)


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
    `RQSpline`'s fast kernels compute the same spline without building these (K+1)-long tensors.
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


# ----------------------------------------------------------------------------- the bijections' maps


@dataclass(frozen=True)
class BoundedSettings:
    """What a `BoundedSpline` is made of: the box [-bound, bound], the floors on the bins' shares and on
    the interior derivative, and the bounds on d and t (None: unbounded, the paper's)."""

    bound: float = 0.5
    min_bin: float = 1e-3
    min_derivative: float = 1e-3
    max_log_derivative: float | None = None
    max_shift: float | None = None


@dataclass(frozen=True)
class RQSettings:
    """What an `RQSpline` is made of: K bins on [-bound, bound], the floors on bin shares and derivatives."""

    bins: int = 8
    bound: float = 3.0
    min_bin: float = 1e-3
    min_derivative: float = 1e-3


def _bounded_knots(params: Tensor, s: BoundedSettings) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`BoundedSpline`'s knots from raw (a, h, d, t): (knots_x, knots_y, derivatives), each
    x.shape + (3,), and the shift.

    Interior knot (x_1, y_1) = B (1 - 2m) (tanh(a/2), tanh(h/2)), derivative 1 + (1 - m_d) expm1(d),
    with d -> d_max tanh(d / d_max) and t -> t_max tanh(t / t_max) where those bounds are set.
    """
    a, h, d, t = params.unbind(-1)
    if s.max_log_derivative is not None:
        d = s.max_log_derivative * torch.tanh(d / s.max_log_derivative)
    if s.max_shift is not None:
        t = s.max_shift * torch.tanh(t / s.max_shift)
    c = s.bound * (1 - 2 * s.min_bin)
    B, one = torch.full_like(a, s.bound), torch.ones_like(a)
    knots_x = torch.stack([-B, c * torch.tanh(a / 2), B], -1)
    knots_y = torch.stack([-B, c * torch.tanh(h / 2), B], -1)
    derivatives = torch.stack([one, 1 + (1 - s.min_derivative) * torch.expm1(d), one], -1)
    return knots_x, knots_y, derivatives, t


def _bounded(x: Tensor, params: Tensor, settings: BoundedSettings, inverse: bool) -> tuple[Tensor, Tensor]:
    """`BoundedSpline` forward, y = RQS(x) + t, or inverse, x = RQS^{-1}(y - t)."""
    knots_x, knots_y, derivatives, t = _bounded_knots(params, settings)
    if inverse:
        return _spline(x - t, knots_y, knots_x, derivatives, True)
    y, ladj = _spline(x, knots_x, knots_y, derivatives, False)
    return y + t, ladj


def _rq_split(params: Tensor, bins: int) -> list[Tensor]:
    """`RQSpline`'s raw params -> (K widths, K heights, K - 1 interior derivatives)."""
    return params.split([bins, bins, bins - 1], -1)


def _rq(x: Tensor, params: Tensor, settings: RQSettings, inverse: bool) -> tuple[Tensor, Tensor]:
    """`RQSpline` forward or inverse: the spline through its `rq_knots`."""
    s = settings
    knots_x, knots_y, derivatives = rq_knots(*_rq_split(params, s.bins), s.bound, s.min_bin, s.min_derivative)
    if inverse:
        return _spline(x, knots_y, knots_x, derivatives, True)
    return _spline(x, knots_x, knots_y, derivatives, False)


class Kernels(NamedTuple):
    """One implementation of the three maps, each returning (output, log|d output / d input|)."""

    spline: Callable[..., tuple[Tensor, Tensor]]  # (x, knots_in, knots_out, derivatives, inverse)
    bounded: Callable[..., tuple[Tensor, Tensor]]  # (x, params, BoundedSettings, inverse)
    rq: Callable[..., tuple[Tensor, Tensor]]  # (x, params, RQSettings, inverse)


REFERENCE = Kernels(spline=_spline, bounded=_bounded, rq=_rq)
BACKENDS = ("fast", "compiled", "reference")


def kernels(backend: str) -> Kernels:
    """The maps of ``backend``: `REFERENCE` (this module) or `minflow.spline_kernels`' FAST / COMPILED."""
    if backend == "reference":
        return REFERENCE
    from . import spline_kernels  # it builds on this module's functions

    if backend == "fast":
        return spline_kernels.FAST
    if backend == "compiled":
        return spline_kernels.COMPILED
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def default_backend() -> str:
    """The bijections' backend when none is given: "compiled" if the environment variable
    MINFLOW_COMPILE is 1, true or yes (read at construction), else "fast"."""
    return "compiled" if os.environ.get("MINFLOW_COMPILE", "").strip().lower() in ("1", "true", "yes") else "fast"


# ----------------------------------------------------------------------------- bijections


class _Spline(nn.Module):
    """What the spline bijections share: a ``backend`` (one of `BACKENDS`) whose map ``_map``
    (a field of `Kernels`) computes them from (x, params, self.settings, inverse)."""

    _map: str

    def __init__(self, backend: str | None):
        super().__init__()
        self.backend = default_backend() if backend is None else backend
        kernels(self.backend)  # a clear error for an unknown name

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check(params)
        return getattr(kernels(self.backend), self._map)(x, params, self.settings, False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        self._check(params)
        return getattr(kernels(self.backend), self._map)(y, params, self.settings, True)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


class BoundedSpline(_Spline):
    """The paper's spline (Hong et al., 2023): c(x) = RQS(x) + t, params (a, h, d, t) per element.

    RQS maps the box [-B, B] onto itself with 2 bins: one free interior knot at width and height
    fractions sigmoid(.) (1 - 2 m) + m of the box, i.e. (x_1, y_1) = B (1 - 2m) (tanh(a/2), tanh(h/2)),
    interior derivative exp(d) (1 - m_d) + m_d = 1 + (1 - m_d) expm1(d), end derivatives 1.
    Outside the box it is the identity (slope exactly 1). Forward y = RQS(x) + t, inverse
    x = RQS^{-1}(y - t): sampling shifts by t and moves an element by at most 2B more, never
    multiplies it. Params 0 give x_1 = y_1 = 0, derivative 1, t = 0: exactly the identity.
    exp(d) and t are unbounded, as in the paper (see `FullyBoundedSpline`). ``backend``: see the
    module docstring (default: `default_backend()` at construction).
    """

    n_params = 4
    _map = "bounded"
    max_log_derivative: float | None = None  # no bound on d and t: the paper's
    max_shift: float | None = None

    def __init__(
        self, bound: float = 0.5, min_bin: float = 1e-3, min_derivative: float = 1e-3, *, backend: str | None = None
    ):
        super().__init__(backend)
        if bound <= 0 or not 0 < min_bin < 0.5 or not 0 < min_derivative < 1:
            raise ValueError(
                f"need bound > 0, 0 < min_bin < 0.5, 0 < min_derivative < 1; got {bound}, {min_bin}, {min_derivative}"
            )
        self.bound, self.min_bin, self.min_derivative = bound, min_bin, min_derivative

    @property
    def settings(self) -> BoundedSettings:
        return BoundedSettings(self.bound, self.min_bin, self.min_derivative, self.max_log_derivative, self.max_shift)

    def _check(self, params: Tensor) -> None:
        if params.shape[-1] != self.n_params:
            raise ValueError(
                f"{type(self).__name__} needs params of shape x.shape + (4,) = (a, h, d, t), "
                f"got last dimension {params.shape[-1]}"
            )

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(knots_x, knots_y, derivatives) of shape x.shape + (3,), for plots and checks:
        forward(x) = rational_quadratic_spline(x, *knots) + shift."""
        self._check(params)
        return _bounded_knots(params, self.settings)[:3]

    def shift(self, params: Tensor) -> Tensor:
        """The shift t actually applied (the raw t here; bounded in `FullyBoundedSpline`)."""
        self._check(params)
        return _bounded_knots(params, self.settings)[3]

    def extra_repr(self) -> str:
        bounds = (
            ""
            if self.max_shift is None
            else f"max_log_derivative={self.max_log_derivative}, max_shift={self.max_shift}, "
        )
        return (
            f"bound={self.bound}, min_bin={self.min_bin}, min_derivative={self.min_derivative}, {bounds}"
            + super().extra_repr()
        )


class FullyBoundedSpline(BoundedSpline):
    """`BoundedSpline` with the interior log-derivative and the shift bounded as well (beyond the paper).

    d -> d_max tanh(d / d_max), so the interior derivative lies in (e^-d_max, e^d_max) and exp never
    overflows; t -> t_max tanh(t / t_max), so one layer shifts by less than t_max. Both maps are
    the identity near 0, so params 0 still give exactly the identity. The sampling direction
    moves an element by at most t_max + 2B per layer, whatever the condition.
    """

    def __init__(
        self,
        bound: float = 0.5,
        min_bin: float = 1e-3,
        min_derivative: float = 1e-3,
        max_log_derivative: float = 3.0,
        max_shift: float = 3.0,
        *,
        backend: str | None = None,
    ):
        super().__init__(bound, min_bin, min_derivative, backend=backend)
        if max_log_derivative <= 0 or max_shift <= 0:
            raise ValueError("max_log_derivative and max_shift must be positive")
        self.max_log_derivative, self.max_shift = max_log_derivative, max_shift


class RQSpline(_Spline):
    """Durkan et al.'s RQ spline: K bins on [-B, B], identity outside; 3K - 1 params per element.

    params = (K widths, K heights, K - 1 interior derivatives), all raw: bin shares of the box
    (e_j + mu) / sum(e + mu), e = exp(raw - max), at least ``min_bin`` (`cumulative_sizes`);
    derivatives 1 + (1 - m)(softplus(raw) / log 2 - 1) in (m, 1/m] (`softplus_derivatives`); boundary
    derivatives 1 so the slope is continuous with the identity outside. Params 0 give uniform
    bins on both axes and derivatives 1: exactly the identity. The same map as
    ``rational_quadratic_spline(x, *rq_knots(...))``; the fast backends find the bin among the
    unnormalised cumulative sizes and transform only the two knots they need, without building
    (K+1)-long tensors per element. ``backend``: see the module docstring.
    """

    _map = "rq"

    def __init__(
        self,
        bins: int = 8,
        bound: float = 3.0,
        min_bin: float = 1e-3,
        min_derivative: float = 1e-3,
        *,
        backend: str | None = None,
    ):
        super().__init__(backend)
        if bins < 2 or bound <= 0 or not 0 < min_bin * bins < 1 or not 0 < min_derivative < 1:
            raise ValueError(
                f"need bins >= 2, bound > 0, 0 < min_bin * bins < 1, 0 < min_derivative < 1; "
                f"got {bins}, {bound}, {min_bin}, {min_derivative}"
            )
        self.bins, self.bound, self.min_bin, self.min_derivative = bins, bound, min_bin, min_derivative
        self.n_params = 3 * bins - 1

    @property
    def settings(self) -> RQSettings:
        return RQSettings(self.bins, self.bound, self.min_bin, self.min_derivative)

    def _check(self, params: Tensor) -> None:
        if params.shape[-1] != self.n_params:
            raise ValueError(
                f"RQSpline(bins={self.bins}) needs params of shape x.shape + ({self.n_params},) "
                f"(K widths, K heights, K-1 derivatives), got last dimension {params.shape[-1]}"
            )

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(knots_x, knots_y, derivatives), each of shape x.shape + (K + 1,), for plots and checks."""
        self._check(params)
        return rq_knots(*_rq_split(params, self.bins), self.bound, self.min_bin, self.min_derivative)

    def extra_repr(self) -> str:
        return (
            f"bins={self.bins}, bound={self.bound}, min_bin={self.min_bin}, min_derivative={self.min_derivative}, "
            + super().extra_repr()
        )


def set_backend(module: nn.Module, backend: str) -> nn.Module:
    """Run every spline bijection inside ``module`` (itself included) on ``backend``; returns ``module``.

    E.g. ``set_backend(model, "compiled")`` to sample a trained model through torch.compile.
    """
    kernels(backend)  # a clear error for an unknown name
    for m in module.modules():
        if isinstance(m, _Spline):
            m.backend = backend
    return module
