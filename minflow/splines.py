"""Rational-quadratic (RQ) spline bijections (Durkan et al., 2019), the identity outside a box.

A monotone RQ spline has K bins between knots (x_k, y_k) with positive derivatives d_k at the
knots. In bin k, with width w, height h, slope s = h / w and xi = (x - x_k) / w in [0, 1]:

    y = y_k + h (s xi^2 + d_k xi (1 - xi)) / (s + (d_k + d_{k+1} - 2 s) xi (1 - xi))
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) / (s + (...) xi (1 - xi))^2

Outside the knots' interval the map is the identity. Inverting solves a quadratic in xi.

Numerics, the point of this module: elements outside the interval are replaced by a safe value
(clamped into it) *before* any arithmetic and put back at the end, so no inf or NaN ever
appears, not even in a discarded branch whose gradient would be 0 * inf. The quadratic uses
the root form without cancellation. Both directions are written as "input + correction" with
a correction that is exactly 0 when the spline is the identity (equal knots on both axes, all
derivatives 1), so the bijections below are *exactly* the identity when their parameters are 0.
Speed: one bin search and one gather per knot tensor; no `torch.where` (slow on CPU).

Bijections (``n_params`` raw values per element, for `minflow.Coupling` / `minflow.Injector`):
`BoundedSpline` (the paper's), `FullyBoundedSpline` (also bounds d and t), `RQSpline` (K bins).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BoundedSpline", "FullyBoundedSpline", "RQSpline", "cumulative_sizes", "rational_quadratic_spline",
           "rq_knots", "softplus_derivatives"]

# ----------------------------------------------------------------------------- one bin


def _select(m: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """a where the 0/1 float mask m is 1, b where it is 0, exactly (a * 1 + b * 0), as long as a is
    finite where m = 0 and b where m = 1. Several times cheaper than `torch.where` on CPU."""
    return a * m + b * (1 - m)


def _rq_bin(u: Tensor, x0, w: Tensor, y0, h: Tensor, d0, d1: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """The spline on the bin [x0, x0 + w] -> [y0, y0 + h]; ``u`` must lie in the input interval.

    Forward: y = u + (y0 - x0) + (h - w) xi + h xi (1 - xi) C / den, with
    C = (d0 - s)(1 - xi) - (d1 - s) xi, the formula above rearranged so that C = 0 and h = w
    give y = u bit for bit. Inverse: with r = (y - y0) / h, xi is the root in [0, 1] of
    a xi^2 + b xi + c = 0, a = s - d0 + r q, b = d0 - r q, c = -s r, q = d0 + d1 - 2s, taken as
    -2c / (b + sqrt(D)) when b >= 0 and (sqrt(D) - b) / 2a when b < 0 (no cancellation either
    way), and x = y + (x0 - y0) + w (xi - r) + r (w - h): again exactly y for the identity.
    Returns (output, log|d output / d u|).
    """
    s = h / w
    ds0, ds1 = d0 - s, d1 - s
    if inverse:
        r = (u - y0) / h
        rq = r * (ds0 + ds1)
        a, b = rq - ds0, d0 - rq
        sqrt_disc = torch.addcmul(b * b, a, r * s, value=4).clamp_min(torch.finfo(u.dtype).tiny).sqrt()
        p = b.abs() + sqrt_disc  # > 0; D = b^2 - 4ac with c = -s r
        pos = (b >= 0).to(u.dtype)
        xi = _select(pos, 2 * s * r, p) / _select(pos, p, 2 * a)
        out = u + (x0 - y0) + w * (xi - r) + r * (w - h)
    else:
        xi = (u - x0) / w
    one_xi = 1 - xi
    t = xi * one_xi
    den = torch.addcmul(s, ds0 + ds1, t)  # s + (d0 + d1 - 2s) xi (1 - xi) >= s / 2
    if not inverse:
        corr = ds0 * one_xi - ds1 * xi
        out = u + (y0 - x0) + (h - w) * xi + h * t * corr / den
    inner = torch.addcmul(2 * s * t, d1, xi * xi).add_(d0 * one_xi * one_xi)  # a sum of positive terms
    ladj = torch.log((s / den).square() * inner)
    return out, (ladj.neg_() if inverse else ladj)


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


def _spline(x: Tensor, a: Tensor, b: Tensor, d: Tensor, lo, hi, inverse: bool) -> tuple[Tensor, Tensor]:
    """`rational_quadratic_spline` without checks; a: knots on the input axis, [lo, hi] their ends."""
    u = x.clamp(lo, hi)  # a safe in-interval value *before* any arithmetic
    inside = (u == x).to(x.dtype)  # 0 outside and for NaN
    k = torch.searchsorted(a.contiguous(), u.unsqueeze(-1), right=True).sub_(1).clamp_(max=a.shape[-1] - 2)
    idx = k + torch.arange(2, device=k.device)  # (..., 2): the bin's two knots
    a0, a1 = a.gather(-1, idx).unbind(-1)
    b0, b1 = b.gather(-1, idx).unbind(-1)
    d0, d1 = d.gather(-1, idx).unbind(-1)
    if inverse:
        y, ladj = _rq_bin(u, b0, b1 - b0, a0, a1 - a0, d0, d1, inverse=True)
    else:
        y, ladj = _rq_bin(u, a0, a1 - a0, b0, b1 - b0, d0, d1, inverse=False)
    return _select(inside, y, x), ladj * inside


def rational_quadratic_spline(
    x: Tensor, knots_x: Tensor, knots_y: Tensor, derivatives: Tensor, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """The monotone RQ spline through (knots_x, knots_y) with ``derivatives``, identity outside.

    ``knots_x``, ``knots_y``, ``derivatives`` have shape ``x.shape + (K+1,)``; knots strictly
    increasing, derivatives positive (not checked: that would cost a pass over the knots).
    Inside [knots_x[..., 0], knots_x[..., -1]] it is the spline, outside the identity with
    log|dy/dx| = 0. ``inverse=True`` inverts, using the knots_y interval. Returns
    ``(y, logabsdet)``, both shaped like x; the inverse's logabsdet is minus the forward's.
    """
    _check_knots(x, knots_x, knots_y, derivatives)
    a, b = (knots_y, knots_x) if inverse else (knots_x, knots_y)  # a: the input's axis
    return _spline(x, a, b, derivatives, a[..., 0], a[..., -1], inverse)


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
    """d = 1 + (1 - m)(softplus(raw) / log 2 - 1): in (m, inf), exactly 1 at raw = 0."""
    if not 0 < min_derivative < 1:
        raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}")
    sp0 = F.softplus(raw.new_zeros(()))  # log 2 as torch rounds it, so softplus(0) - sp0 == 0
    return (F.softplus(raw) - sp0).mul_((1 - min_derivative) / math.log(2)).add_(1)


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

    def knots(raw: Tensor) -> Tensor:
        g = F.pad(cumulative_sizes(raw, min_bin), (1, 0))
        out = g.div(g[..., -1:]).mul_(2 * bound).sub_(bound)
        out[..., -1] = bound  # exact, whatever the rounding
        return out

    if derivatives.shape[-1] == k - 1:
        derivatives = F.pad(derivatives, (1, 1))  # raw 0 -> derivative exactly 1
    return knots(widths), knots(heights), softplus_derivatives(derivatives, min_derivative)


# ----------------------------------------------------------------------------- bijections


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

    def __init__(self, bound: float = 0.5, min_bin: float = 1e-3, min_derivative: float = 1e-3):
        super().__init__()
        if bound <= 0 or not 0 < min_bin < 0.5 or not 0 < min_derivative < 1:
            raise ValueError(f"need bound > 0, 0 < min_bin < 0.5, 0 < min_derivative < 1; got "
                             f"{bound}, {min_bin}, {min_derivative}")
        self.bound, self.min_bin, self.min_derivative = bound, min_bin, min_derivative

    def _shape(self, d: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The interior log-derivative and the shift actually used."""
        return d, t

    def _knot(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if params.shape[-1] != self.n_params:
            raise ValueError(f"{type(self).__name__} needs params of shape x.shape + (4,) = (a, h, d, t), "
                             f"got last dimension {params.shape[-1]}")
        a, h, d, t = params.unbind(-1)
        d, t = self._shape(d, t)
        c = self.bound * (1 - 2 * self.min_bin)
        deriv = torch.expm1(d).mul(1 - self.min_derivative).add(1)
        return c * torch.tanh(0.5 * a), c * torch.tanh(0.5 * h), deriv, t

    def knots(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(knots_x, knots_y, derivatives) of shape x.shape + (3,), for plots and checks:
        forward(x) = rational_quadratic_spline(x, *knots) + shift."""
        kx, ky, deriv, _ = self._knot(params)
        B, one = torch.full_like(kx, self.bound), torch.ones_like(kx)
        return torch.stack([-B, kx, B], -1), torch.stack([-B, ky, B], -1), torch.stack([one, deriv, one], -1)

    def shift(self, params: Tensor) -> Tensor:
        """The shift t actually applied (the raw t here; bounded in `FullyBoundedSpline`)."""
        return self._knot(params)[3]

    def _spline(self, x: Tensor, k_in: Tensor, k_out: Tensor, deriv: Tensor, inverse: bool):
        """Two-bin RQS on the box. The right bin is the left one mirrored through the origin,
        so with sigma = +-1 the bin is always [-B, sigma k_in] -> [-B, sigma k_out], derivatives (1, deriv)."""
        B = self.bound
        u = x.clamp(-B, B)  # safe value; at +-B the spline returns exactly +-B with logdet exactly 0
        sigma = 1 - 2 * (u >= k_in).to(x.dtype)
        w_in, w_out = sigma * k_in + B, sigma * k_out + B  # bin sizes on the input and output axes
        w, h = (w_out, w_in) if inverse else (w_in, w_out)
        y, ladj = _rq_bin(sigma * u, -B, w, -B, h, 1.0, deriv, inverse=inverse)
        return _select((u == x).to(x.dtype), sigma * y, x), ladj

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        kx, ky, deriv, t = self._knot(params)
        y, ladj = self._spline(x, kx, ky, deriv, inverse=False)
        return y + t, ladj

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        kx, ky, deriv, t = self._knot(params)
        return self._spline(y - t, ky, kx, deriv, inverse=True)

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

    def _shape(self, d: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        md, mt = self.max_log_derivative, self.max_shift
        return md * torch.tanh(d / md), mt * torch.tanh(t / mt)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_log_derivative={self.max_log_derivative}, max_shift={self.max_shift}"


class RQSpline(nn.Module):
    """Durkan et al.'s RQ spline: K bins on [-B, B], identity outside; 3K - 1 params per element.

    params = (K widths, K heights, K - 1 interior derivatives), all raw: bin shares of the box
    (e_j + mu) / sum(e + mu), e = exp(raw - max), at least ``min_bin`` (`cumulative_sizes`);
    derivatives 1 + (1 - m)(softplus(raw) / log 2 - 1) > m (`softplus_derivatives`); boundary
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
        k, B = self.bins, self.bound
        w, h, d = self._split(params)
        g_in, g_out = cumulative_sizes(w, self.min_bin), cumulative_sizes(h, self.min_bin)
        if inverse:
            g_in, g_out = g_out, g_in
        u = x.clamp(-B, B)  # a safe in-box value before any arithmetic
        inside = (u == x).to(x.dtype)
        scale_in, scale_out = (2 * B) / g_in[..., -1], (2 * B) / g_out[..., -1]
        # bin j: G_j <= (u + B) / scale_in < G_{j+1}, searched among the unnormalised G_1..G_K
        j = torch.searchsorted(g_in, ((u + B) / scale_in).unsqueeze(-1), right=True).clamp_(max=k - 1)
        idx = torch.cat([j - 1, j], -1).clamp_(min=0)  # G_j, G_{j+1} (G_0 = 0) and raw d_j, d_{j+1}
        not_first, not_last = (j > 0).to(x.dtype).squeeze(-1), (j < k - 1).to(x.dtype).squeeze(-1)
        lo_in, hi_in = g_in.gather(-1, idx).unbind(-1)
        lo_out, hi_out = g_out.gather(-1, idx).unbind(-1)
        lo_in, lo_out = lo_in * not_first, lo_out * not_first
        d0, d1 = d.gather(-1, idx.clamp(max=k - 2)).unbind(-1)
        m = self.min_derivative
        d0, d1 = softplus_derivatives(d0 * not_first, m), softplus_derivatives(d1 * not_last, m)  # ends: 1
        a0, wa = lo_in * scale_in - B, (hi_in - lo_in) * scale_in
        b0, wb = lo_out * scale_out - B, (hi_out - lo_out) * scale_out
        if inverse:
            y, ladj = _rq_bin(u, b0, wb, a0, wa, d0, d1, inverse=True)
        else:
            y, ladj = _rq_bin(u, a0, wa, b0, wb, d0, d1, inverse=False)
        return _select(inside, y, x), ladj * inside

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(x, params, inverse=False)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self._call(y, params, inverse=True)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}, min_bin={self.min_bin}, min_derivative={self.min_derivative}"
