"""Fast kernels for the spline maps of `minflow.splines`: the same numbers, tuned for speed.

`minflow.splines` states each map plainly (the reference). This module computes the same maps
behind the same signatures (`FAST` eagerly, `COMPILED` through `torch.compile`), keeping every
numerical safeguard of the reference: inputs enter the box by selection (`_into_box`), roots and
outputs are kept in range by a straight-through clamp (`_keep_in`), the inverse's root is solved
in the frame where its discriminant cannot cancel, and the final select is a `torch.where`.
tests/test_splines.py checks that both kernels give the reference's numbers and gradients.

Eager (`FAST`), none of the ops that are slow on CPU (`torch.where` inside a bin, bool -> float,
expm1, cumsum over a short dimension) and few temporaries: comparisons are written straight into
float masks (`_mask`), selects are `addcmul`s (`_select`), `RQSpline` finds its bin with the K bins
as the outer dimension and runs large inputs in cache-sized slices. `BoundedSpline` (two bins) is
written in closed form (`_bounded_in_place`): one comparison with the interior knot picks the bin,
every op works in place in one set of buffers, and a `torch.autograd.Function` with an analytic
backward saves 8 coefficient tensors instead of autograd's graph of the generic kernel. Compiled (`COMPILED`), each
map becomes one fused loop over the elements, several times faster (benchmarks/README.md), with
the parts that fuse swapped in (`Ops`): the bin found by K comparisons, tanh through exp. If
compiling fails it warns once and runs the eager kernels from then on; so does each setting past
torch's limit of 8 compilations per map. No host-device
synchronisation and no branching on tensor values either way.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from .splines import BoundedSettings, Kernels, RQSettings, _bin_floor, _into_box, _keep_in, softplus_derivatives
from .utils import param_planes

__all__ = ["COMPILED", "FAST"]


# ----------------------------------------------------------------------------- cheap element-wise ops


def _mask(op, a: Tensor, b, dtype: torch.dtype | None = None) -> Tensor:
    """The comparison op(a, b) as 0./1. of a's dtype (or ``dtype``): on CPU, bool -> float is a slow pass."""
    return op(a, b, out=torch.empty(a.shape, dtype=dtype or a.dtype, device=a.device))


def _select(m: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """a where the 0/1 float mask m is 1, b where it is 0, exactly (a * 1 + b * 0), as long as a is
    finite where m = 0 and b where m = 1. Several times cheaper than `torch.where` on CPU."""
    return torch.addcmul(a * m, b, 1 - m)


def _tanh_by_exp(z: Tensor) -> Tensor:
    """tanh(z) as sign(z) (1 - e) / (1 + e), e = exp(-2|z|): compiled, inductor's vectorised tanh
    costs about 3x that exp, division and sign on CPU (absolute error < 1e-7 in float32)."""
    e = torch.exp(-2 * z.abs())
    return torch.copysign((1 - e) / (1 + e), z)


def _bin_by_search(edges: Tensor, v: Tensor) -> Tensor:
    """#{k: edges_k <= v} over the last dimension of the sorted ``edges``, at most its length - 1."""
    j = torch.searchsorted(edges.contiguous(), v.unsqueeze(-1), right=True).squeeze(-1)
    return j.clamp_(max=edges.shape[-1] - 1)


def _bin_by_count(edges: Tensor, v: Tensor) -> Tensor:
    """`_bin_by_search` as K comparisons: searchsorted has no fused CPU lowering, comparisons do."""
    return (edges <= v.unsqueeze(-1)).sum(-1).clamp_(max=edges.shape[-1] - 1)


# ----------------------------------------------------------------------------- one bin


def _rq_bin(v: Tensor, w: Tensor, h: Tensor, d0, d1: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    """`minflow.splines._rq_bin` (the bin [0, w] -> [0, h] in its own coordinates), with fewer passes.

    Forward: xi = v / w, c = (h - w) xi + h xi (1 - xi) C / den with C = (d0 - s) - (d0 + d1 - 2s) xi.
    Inverse: the root of the quadratic in the frame where a >= 0 (mirrored in 1 - xi where a < 0),
    as -2c / (b + sqrt(D)) for b >= 0 and (sqrt(D) - b) / 2a for b < 0; c = w (xi - r) + r (w - h).
    ``d0`` may be the float 1.0 (`BoundedSpline`'s end derivative), which saves a product.
    """
    s = h / w
    ds0 = d0 - s
    q = (d1 - s).add_(ds0)  # d0 + d1 - 2s
    if inverse:
        r = _keep_in(v / h, 0.0, 1.0)  # v may leave [0, h] by a rounding error in the bin's ends
        rq = r * q
        a, b = rq - ds0, d0 - rq
        # solve for 1 - xi where a < 0: -a xi'^2 + (2a + b) xi' - s (1 - r) = 0; r = 0 unmirrored, r = 1 mirrored
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


# ----------------------------------------------------------------------------- the parts eager and compiled swap


class _RQBin(NamedTuple):
    """`RQSpline`'s bin of each element among the unnormalised cumulative sizes G (G_0 = 0): its
    lower end G_j and its distance to the top, G_K - G_{j+1} (exactly 0 in the last bin), on the
    input and output axes; the scales 2B / G_K of both axes; the raw derivatives at its two knots,
    (..., 2) (0 at the end knots: derivative exactly 1)."""

    lo_in: Tensor
    up_in: Tensor
    lo_out: Tensor
    up_out: Tensor
    scale_in: Tensor
    scale_out: Tensor
    raw_d: Tensor


def _find_bin_tensors(u: Tensor, planes: Tensor, pdim: int, s: RQSettings, inverse: bool) -> _RQBin:
    """The bin of u, as tensor ops over the K bins (eager).

    The parameters are viewed bins-first, (3K - 1, ...): a view of planar parameters (a conv
    conditioner's layout), one transposing copy of row-packed ones. Every op then runs along
    contiguous memory: the max over K planes, the cumulative sums as one matmul with a triangular
    matrix (cumsum over a non-last dimension is slow on CPU), the bin index as a count of K - 1
    comparisons, each gather picking one of K planes per element.
    """
    k = s.bins
    p = planes.movedim(pdim, 0)
    if p.stride(-1) != 1:
        p = p.contiguous()
    w, h, d = p.split([k, k, k - 1], 0)
    tri = torch.ones(k, k, dtype=p.dtype, device=p.device).tril_()
    steps = torch.arange(1, k + 1, dtype=p.dtype, device=p.device).unsqueeze(1) * _bin_floor(k, s.min_bin)

    def cumulative(raw: Tensor) -> Tensor:  # G_j = sum_{i <= j} (e_i + mu), as `cumulative_sizes`
        e = (raw - raw.amax(0)).exp_()
        return torch.addmm(steps, tri, e.flatten(1)).view(e.shape)

    g_in, g_out = cumulative(w), cumulative(h)
    if inverse:
        g_in, g_out = g_out, g_in
    scale_in, scale_out = (2 * s.bound) / g_in[-1], (2 * s.bound) / g_out[-1]
    j = _mask(torch.le, g_in[:-1], (u + s.bound) / scale_in).sum(0).long()  # bin j: G_j <= v < G_{j+1}
    i = torch.stack([j - 1, j])  # where G_j, G_{j+1} sit in g (G_0 is not stored), and raw d_j, d_{j+1}
    gi, di = i.clamp(min=0), i.clamp(0, k - 2)
    inner_knot = _mask(torch.eq, i, di, u.dtype)  # 0 at the end knots
    lo_in, hi_in = g_in.gather(0, gi).unbind(0)
    lo_out, hi_out = g_out.gather(0, gi).unbind(0)
    first = inner_knot[0]
    raw_d = (d.gather(0, di) * inner_knot).movedim(0, -1)
    return _RQBin(lo_in * first, g_in[-1] - hi_in, lo_out * first, g_out[-1] - hi_out, scale_in, scale_out, raw_d)


def _find_bin_columns(u: Tensor, planes: Tensor, pdim: int, s: RQSettings, inverse: bool) -> _RQBin:
    """`_find_bin_tensors` written column by column (a Python loop over the K bins, never over elements).

    Only element-wise ops: inductor fuses them into one loop over the elements, vectorised when
    each parameter is contiguous over the elements (as a conv conditioner lays them out), while
    the tensor form's max over the bins, triangular matmul, comparison count and gathers would
    each stay a separate kernel. Same numbers up to rounding.
    """
    k = s.bins
    cols = planes.unbind(pdim)
    mu = _bin_floor(k, s.min_bin)

    def cumulative(raw):  # G_1, ..., G_K as `cumulative_sizes` computes them
        top = functools.reduce(torch.maximum, raw)
        return list(itertools.accumulate(torch.exp(r - top) + mu for r in raw))

    g_in, g_out = cumulative(cols[:k]), cumulative(cols[k : 2 * k])
    d = cols[2 * k :] + (torch.zeros_like(u),)  # raw derivatives at knots 1..K-1, then 0 for knot K
    if inverse:
        g_in, g_out = g_out, g_in
    scale_in, scale_out = (2 * s.bound) / g_in[-1], (2 * s.bound) / g_out[-1]
    v = (u + s.bound) / scale_in
    zero = torch.zeros_like(u)
    lo_in, hi_in, lo_out, hi_out, d0, d1 = zero, g_in[0], zero, g_out[0], zero, d[0]  # bin 0
    for j in range(1, k):  # move to bin j where G_j <= v
        m = g_in[j - 1] <= v
        lo_in, hi_in = torch.where(m, g_in[j - 1], lo_in), torch.where(m, g_in[j], hi_in)
        lo_out, hi_out = torch.where(m, g_out[j - 1], lo_out), torch.where(m, g_out[j], hi_out)
        d0, d1 = torch.where(m, d[j - 1], d0), torch.where(m, d[j], d1)
    return _RQBin(lo_in, g_in[-1] - hi_in, lo_out, g_out[-1] - hi_out, scale_in, scale_out, torch.stack([d0, d1], -1))


@dataclass(frozen=True)
class Ops:
    """The parts that differ between the eager kernels and the compiled ones (same numbers up to rounding)."""

    tanh: Callable[[Tensor], Tensor]
    bin_index: Callable[[Tensor, Tensor], Tensor]  # (sorted edges, v) -> #{edges <= v}, at most K
    find_bin: Callable[..., _RQBin]  # `RQSpline`'s bin among the cumulative sizes
    slices: bool  # run large CPU inputs of `RQSpline` in cache-sized slices


EAGER_OPS = Ops(tanh=torch.tanh, bin_index=_bin_by_search, find_bin=_find_bin_tensors, slices=True)
FUSED_OPS = Ops(tanh=_tanh_by_exp, bin_index=_bin_by_count, find_bin=_find_bin_columns, slices=False)


# ----------------------------------------------------------------------------- the three maps


def _spline(x: Tensor, a: Tensor, b: Tensor, d: Tensor, inverse: bool, ops: Ops) -> tuple[Tensor, Tensor]:
    """`minflow.splines._spline`: a, the knots on the input axis; b, on the output axis."""
    u, inside = _into_box(x, a[..., 0], a[..., -1])  # a safe in-interval value *before* any arithmetic
    k = ops.bin_index(a, u).sub_(1).clamp_(min=0)
    idx = torch.stack([k, k + 1], -1)  # (..., 2): the bin's two knots
    a0, a1 = a.gather(-1, idx).unbind(-1)
    b0, b1 = b.gather(-1, idx).unbind(-1)
    d0, d1 = d.gather(-1, idx).unbind(-1)
    wa, wb = a1 - a0, b1 - b0  # the bin's size on the input and output axes
    corr, ladj = _rq_bin(u - a0, wb if inverse else wa, wa if inverse else wb, d0, d1, inverse)
    y = _keep_in((b0 - a0).add_(u).add_(corr), b[..., 0], b[..., -1])  # the box's end maps to its end exactly
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)  # never 0 * (a discarded inf or NaN)


def _bounded_knot(planes: Tensor, pdim: int, s: BoundedSettings, ops: Ops) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`minflow.splines._bounded_knots` as (x_1, y_1, interior derivative, shift), from the planes."""
    a, h, d, t = planes.unbind(pdim)
    if s.max_log_derivative is not None:
        d = s.max_log_derivative * ops.tanh(d / s.max_log_derivative)
    if s.max_shift is not None:
        t = s.max_shift * ops.tanh(t / s.max_shift)
    c = s.bound * (1 - 2 * s.min_bin)
    deriv = (torch.exp(d) - 1).mul_(1 - s.min_derivative).add_(1)  # 1 + (1 - m) expm1(d); expm1 is slow on CPU
    return c * ops.tanh(0.5 * a), c * ops.tanh(0.5 * h), deriv, t


def _bounded(
    x: Tensor, planes: Tensor, pdim: int, s: BoundedSettings, inverse: bool, ops: Ops
) -> tuple[Tensor, Tensor]:
    """`BoundedSpline` forward, y = RQS(x) + t, or inverse, x = RQS^{-1}(y - t).

    The right bin is the left one mirrored through the origin, so with sigma = +-1 the bin is always
    [-B, sigma k_in] -> [-B, sigma k_out] with derivatives (1, deriv), and the output is
    x + sigma c with the bin's correction c, exactly 0 at -B: the identity outside the box needs
    no mask (u = x clamped to the box gives c = 0 and logdet 0 there, exactly).
    """
    kx, ky, deriv, t = _bounded_knot(planes, pdim, s, ops)
    k_in, k_out = (ky, kx) if inverse else (kx, ky)
    if inverse:
        x = x - t
    B = x.new_full((), s.bound)
    u, _ = _into_box(x, -s.bound, s.bound)  # a safe in-box value before any arithmetic
    # +1 left bin, -1 right bin (the knot starts the right bin, as in the reference); constant, no gradient
    sigma = torch.copysign(x.new_ones(()), (u - k_in).detach()).neg_()
    w_in, w_out = torch.addcmul(B, sigma, k_in), torch.addcmul(B, sigma, k_out)  # bin sizes on each axis
    w, h = (w_out, w_in) if inverse else (w_in, w_out)  # the bin of the forward map: [0, w] -> [0, h]
    corr, ladj = _rq_bin(torch.addcmul(B, sigma, u), w, h, 1.0, deriv, inverse)
    y = torch.addcmul(x, sigma, corr)
    return (y if inverse else y + t), ladj


def _rq(x: Tensor, planes: Tensor, pdim: int, s: RQSettings, inverse: bool, ops: Ops) -> tuple[Tensor, Tensor]:
    """`RQSpline` forward or inverse: the bin among the unnormalised cumulative sizes, then its two knots."""
    B = s.bound
    u, inside = _into_box(x, -B, B)  # a safe in-box value before any arithmetic
    bin_ = ops.find_bin(u, planes, pdim, s, inverse)
    d0, d1 = softplus_derivatives(bin_.raw_d, s.min_derivative).unbind(-1)
    # the bin on the input axis and on the output axis, each end measured from its own end of the
    # box: the first bin starts at -B and the last ends at B exactly, so xi is exactly 0 or 1 there
    a0, b0 = bin_.lo_in * bin_.scale_in - B, bin_.lo_out * bin_.scale_out - B
    wa, wb = (B - bin_.up_in * bin_.scale_in) - a0, (B - bin_.up_out * bin_.scale_out) - b0
    corr, ladj = _rq_bin(u - a0, wb if inverse else wa, wa if inverse else wb, d0, d1, inverse)
    y = _keep_in((b0 - a0).add_(u).add_(corr), -B, B)  # the box's end maps to its end exactly
    return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)


# ----------------------------------------------------------------------------- BoundedSpline eagerly, in closed form


class _Slots:
    """Named buffers of one shape, each an attribute, carved out of one allocation (``store``, one
    buffer along its dim 0 per name not in ``shared``): the closed form below reuses them in place
    instead of allocating a fresh tensor per op.

    ``shared`` maps a name to another name (or to an output tensor) whose buffer it uses: names
    that are never live at the same time share memory. That matters on a CPU: at the SR flow's
    sizes one buffer is 0.8 MB, and once the buffers a call touches no longer fit in the cache
    (about 10 of them here), every op that writes a buffer for the first time waits for memory,
    about 3x the cost of an op on a buffer still in the cache (benchmarks/README.md).
    """

    NAMES = "w h sa sh e D u sg S q xi ox tt den xi2 nn sl ins t1 t2 t3 t4 t5 t6 t7".split()

    def __init__(self, store: Tensor, shared: dict[str, str | Tensor]):
        for name, buf in zip([n for n in self.NAMES if n not in shared], store):
            setattr(self, name, buf)
        for name, other in shared.items():
            while isinstance(other, str) and other in shared:  # a chain: e -> D -> ladj
                other = shared[other]
            setattr(self, name, other if isinstance(other, Tensor) else getattr(self, other))

    @classmethod
    def count(cls, shared: dict[str, str | Tensor]) -> int:
        """How many buffers ``store`` needs."""
        return len(cls.NAMES) - len(shared)


def _shared_buffers(inverse: bool, ladj: Tensor, coef: Tensor | None) -> dict[str, str | Tensor]:
    """Which names of `_bounded_in_place` share a buffer on each path (see `_Slots`).

    Without gradient the sigmoids, exp(d) and tanhs are used only once, so they are written where
    their result goes, D lives in the log-slope's output until the log overwrites it, and the
    buffers of the map's output stage are reused for the log-slope's. With gradient the slope is
    written straight into coef[0], its first saved coefficient, and the forward's 1 - 2 xi into u
    (free between xi and f).
    """
    if coef is not None:
        return {"sl": coef[0]} | ({} if inverse else {"t3": "u"})
    shared: dict[str, str | Tensor] = {"sa": "w", "sh": "h", "e": "D", "D": ladj, "t5": "D"}
    if inverse:  # the shift is dead once z = y - t is formed; w, h, u once the output is written
        return shared | {"t4": "sg", "t6": "sg", "ox": "w", "tt": "h", "den": "u"}
    # forward: u is free once xi is formed, h once s is; w, sg and t2 once the output is written
    return shared | {"t6": "t4", "ox": "u", "tt": "h", "xi2": "w", "nn": "sg", "sl": "t2"}


def _bounded_in_place(
    x: Tensor,
    a: Tensor,
    hr: Tensor,
    d: Tensor,
    t: Tensor,
    s: BoundedSettings,
    inverse: bool,
    b: _Slots,
    y: Tensor,
    ladj: Tensor,
    coef: Tensor | None,
) -> None:
    """`BoundedSpline` with its two bins in closed form, every op in place in the buffers ``b``:
    writes the output and the log-slope into ``y`` and ``ladj``, and with ``coef`` the partial
    derivatives into it.

    As in `_bounded`, the bin is picked by one comparison with the interior knot and the right one
    mirrored through the origin (sgn = +1 there, -1 left): [0, w] -> [0, h] with w = B - sgn x_1,
    h = B - sgn y_1, derivative 1 at the box's end (xi = 0) and D at the knot (xi = 1), the input
    entering as v = B - sgn u, u = its input clamped into the box. With s = h / w, q = 1 + D - 2s,
    t = xi (1 - xi), den = s + q t: forward, xi = v / w and y = x + sgn w xi (q t + s xi (1 - s)) / den
    + shift, exactly x (+ shift) at the identity and outside the box (where xi = 0); inverse,
    r = v / h and xi the root in [0, 1] of a xi^2 + b xi - s r = 0 with a = s - 1 + r q, b = 1 - r q:
    xi = 2 s r / (|b| + sqrt(disc)) for b >= 0 and (|b| + sqrt(disc)) / 2a for b < 0 (no
    cancellation in either), the discriminant disc = b^2 + 4 a s r written, where a < 0, as
    (b + 2a)^2 + 4 |a| s (1 - r) (equal since a + b = s), a sum of positive terms either way; then
    x = z - sgn (w xi - r h). The log-slope is log(s^2 N / den^2) with N = D xi^2 + 2 s t + (1 - xi)^2,
    a sum of positive terms (the inverse's: log(den^2 / (s^2 N))).

    ``coef`` (8 or 9, ...) receives what the backward needs: the partial derivatives
    of the output w.r.t. the input and the raw a, h, d, then those of the log-slope (chain rule
    through xi forward, through the implicit root f(xi) = r inverse), then the bounded shift's
    derivative (`FullyBoundedSpline`). The log-slope's derivative w.r.t. the input is 0 outside the
    box, the output's is 1 there (the slope formula gives exactly 1 at xi = 0), and the clamps of
    xi and r pass the formula's derivative at the clamped value, as the reference's straight-through clamps.
    """
    B, m, c = s.bound, s.min_derivative, s.bound * (1 - 2 * s.min_bin)
    # the knots: x_1 = c tanh(a / 2) = 2c sigmoid(a) - c (eagerly, sigmoid costs a third of tanh)
    torch.mul(torch.sigmoid(a, out=b.sa), 2 * c, out=b.w).sub_(c)
    torch.mul(torch.sigmoid(hr, out=b.sh), 2 * c, out=b.h).sub_(c)
    th_d = th_t = None
    if s.max_log_derivative is not None:  # d -> d_max tanh(d / d_max)
        th_d = torch.div(d, s.max_log_derivative, out=b.t5).tanh_()
        d = torch.mul(th_d, s.max_log_derivative, out=b.D)
    if s.max_shift is not None:  # t -> t_max tanh(t / t_max)
        th_t = torch.div(t, s.max_shift, out=b.t6).tanh_()
        t = torch.mul(th_t, s.max_shift, out=b.t4)
    torch.exp(d, out=b.e)
    D = torch.sub(b.e, 1, out=b.D).mul_(1 - m).add_(1)  # 1 + (1 - m) expm1(d), exactly 1 at d = 0
    z = torch.sub(x, t, out=y) if inverse else x
    u = torch.clip(z, -B, B, out=b.u)  # a safe in-box value before any arithmetic; its value only (gradient: coef)
    inside = torch.eq(u, z, out=b.ins) if coef is not None else None  # 1 in the closed box, 0 outside (and for NaN)
    sg = torch.copysign(u.new_ones(()), torch.sub(u, b.h if inverse else b.w, out=b.sg), out=b.sg)
    B_ = u.new_full((), B)  # +1: the right bin (the knot starts it, as in the reference); -1: the left
    w = torch.addcmul(B_, sg, b.w, value=-1, out=b.w)  # the bin's size on the x axis
    h = torch.addcmul(B_, sg, b.h, value=-1, out=b.h)  # and on the y axis
    v = torch.addcmul(B_, sg, u, value=-1, out=b.u)  # the input's offset into its bin, from the box's end
    S = torch.div(h, w, out=b.S)
    q = torch.add(D, S, alpha=-2, out=b.q).add_(1)  # d0 + d1 - 2s with d0 = 1
    xi, ox, tt, den = b.xi, b.ox, b.tt, b.den
    r = None
    if inverse:
        r = torch.div(v, h, out=v).clamp_(0, 1)  # v may leave [0, h] by a rounding error at the bin's ends
        rq = torch.mul(r, q, out=b.t1)
        a_ = torch.add(rq, S, out=b.t2).sub_(1)  # a = s - 1 + r q
        b_ = rq.neg_().add_(1)  # b = 1 - r q; a + b = s
        # the discriminant b^2 + 4 a s r without cancellation: where a < 0, as (b + 2a)^2 + 4 |a| s (1 - r),
        # the same number (that of the quadratic in 1 - xi, as `_rq_bin` solves it); a sum of positive terms
        a_neg = torch.lt(a_, 0, out=b.xi2)
        b_m = torch.addcmul(b_, a_neg, a_, value=2, out=b.nn)  # b + 2a where a < 0
        r_m = torch.sub(a_neg, r, out=a_neg).abs_()  # 1 - r where a < 0, else r (exactly)
        a_m = a_.abs_()  # |a|, = a wherever b < 0 (then a = s - b > 0)
        p = b_m.square_().addcmul_(a_m, r_m.mul_(S), value=4).sqrt_()
        p.add_(torch.abs(b_, out=b.sl))  # |b| + sqrt(disc) > 0 (b = 0 forces a = s > 0)
        # the root without cancellation, 2 s r / p for b >= 0 and p / 2a for b < 0 (a > 0 there),
        # selected by 0/1 masks before dividing (both branches are finite)
        neg = torch.lt(b_, 0, out=b.sl)
        pos = torch.ge(b_, 0, out=b_)
        num = torch.mul(p, neg, out=xi).addcmul_(torch.mul(r, S, out=b.xi2), pos, value=2)
        num.div_(p.mul_(pos).addcmul_(a_m, neg, value=2)).clamp_(0, 1)  # xi, kept in [0, 1]
        # the correction w xi - r h: exactly 0 at the identity (xi = r, w = h) and outside the box (r = 0)
        corr = torch.mul(w, xi, out=b.t2).addcmul_(r, h, value=-1)
        torch.addcmul(z, sg, corr, value=-1, out=y)
    else:
        torch.div(v, w, out=xi).clamp_(0, 1)
    torch.neg(xi, out=ox).add_(1)
    torch.mul(xi, ox, out=tt)
    torch.mul(q, tt, out=den)
    if not inverse:  # y = x + sgn w xi (q t + s xi (1 - s)) / den (+ shift)
        corr = torch.neg(S, out=b.t2).add_(1).mul_(S).mul_(xi).add_(den).mul_(w).mul_(xi)
        den.add_(S)
        torch.addcmul(x, sg, corr.div_(den), out=y).add_(t)
    else:
        den.add_(S)
    xi2 = torch.mul(xi, xi, out=b.xi2)
    nn = torch.mul(xi2, D, out=b.nn).addcmul_(ox, ox).addcmul_(S, tt, value=2)  # N
    if inverse:  # den^2 / (s^2 N): dx/dy of the inverse map
        slope = torch.div(den, S, out=b.sl).square_().div_(nn)
    else:  # s^2 N / den^2: dy/dx of the forward map
        slope = torch.div(S, den, out=b.sl).square_().mul_(nn)
    torch.log(slope, out=ladj)
    if coef is None:
        return
    # ---- the partial derivatives for the backward (L: the forward map's log-slope)
    ka = torch.neg(b.sa, out=b.t1).add_(1).mul_(b.sa).mul_(2 * c)  # d x_1 / d a = 2c sigmoid (1 - sigmoid)
    kh = torch.neg(b.sh, out=b.t2).add_(1).mul_(b.sh).mul_(2 * c)
    dp = b.e.mul_(1 - m)  # dD / dd = (1 - m) e^d
    if th_d is not None:
        dp.mul_(th_d.mul_(th_d).neg_().add_(1))  # (d_max tanh(d / d_max))' = 1 - tanh^2
    idn = torch.reciprocal(den, out=den)
    inn = torch.reciprocal(nn, out=nn)
    g = torch.mul(tt, idn, out=b.sa)  # t / den
    omt = torch.mul(tt, -2, out=b.sh).add_(1)  # 1 - 2t
    omx = torch.mul(xi, -2, out=b.t3).add_(1)  # 1 - 2 xi
    lx = torch.mul(D, xi, out=b.t4).addcmul_(S, omx).sub_(ox).mul_(inn)
    lx.addcmul_(omx.mul_(q), idn, value=-1).mul_(2)  # L_xi = N_xi / N - 2 q (1 - 2 xi) / den
    ls = torch.reciprocal(S, out=b.q).addcmul_(tt, inn).addcmul_(omt, idn, value=-1).mul_(2)  # L_s
    ld = torch.mul(xi2, inn, out=b.D).add_(g, alpha=-2)  # L_D = xi^2 / N - 2t / den
    siw = torch.div(sg, w, out=ox)  # sgn / w
    if not inverse:
        # coef[0] holds the slope already (its buffer, `_shared_buffers`): dy/dx, exactly 1 outside the box
        f = torch.mul(S, xi2, out=b.u).add_(tt).mul_(idn)  # f = (s xi^2 + t) / den, y's offset over h
        sfs = torch.mul(f, omt, out=b.tt).neg_().add_(xi2).mul_(idn).mul_(S)  # s df/ds
        torch.mul(xi, slope, out=coef[1]).addcmul_(S, sfs).mul_(ka).neg_()  # dy/da
        torch.add(f, sfs, out=coef[2]).mul_(kh)  # dy/dh
        torch.mul(sg, h, out=coef[3]).mul_(f).mul_(g).mul_(dp)  # dy/dd
        torch.mul(lx, siw, out=coef[4]).mul_(inside).neg_()  # dL/dx
        torch.mul(xi, lx, out=coef[5]).addcmul_(S, ls).mul_(siw).mul_(ka)  # dL/da
        torch.mul(ls, siw, out=coef[6]).mul_(kh).neg_()  # dL/dh
        torch.mul(ld, dp, out=coef[7])  # dL/dd
    else:
        # coef[0] holds the inverse's slope already (its buffer, `_shared_buffers`): dx/dy, exactly 1 outside the box
        ifx = torch.mul(S, coef[0], out=b.t5)  # 1 / f'(xi), f(xi) = r the root's equation
        fs = torch.mul(r, omt, out=b.tt).neg_().add_(xi2).mul_(idn)  # df/ds at the root
        torch.mul(S, fs, out=coef[1]).mul_(ifx).add_(xi).mul_(ka)  # dx/da
        torch.div(r, S, out=coef[2]).add_(fs).mul_(ifx).mul_(kh).neg_()  # dx/dh
        torch.mul(sg, w, out=coef[3]).mul_(r).mul_(g).mul_(ifx).mul_(dp).neg_()  # dx/dd
        torch.mul(lx, ifx, out=coef[4]).mul_(sg).div_(h).mul_(inside)  # d(-L)/dy
        torch.mul(lx, fs, out=coef[5]).mul_(ifx).neg_().add_(ls).mul_(S).mul_(siw).mul_(ka).neg_()  # d(-L)/da
        tmp = torch.div(r, h, out=b.t7).addcdiv_(fs, w).mul_(lx).mul_(ifx)  # L_xi (r / h + f_s / w) / f'
        torch.addcdiv(tmp, ls, w, value=-1, out=coef[6]).mul_(sg).mul_(kh).neg_()  # d(-L)/dh
        torch.mul(lx, r, out=coef[7]).mul_(g).mul_(ifx).add_(ld).mul_(dp).neg_()  # d(-L)/dd
    if th_t is not None:
        torch.mul(th_t, th_t, out=coef[8]).neg_().add_(1)  # (t_max tanh(t / t_max))' = 1 - tanh^2


def _bounded_closed(
    x: Tensor, planes: Tensor, pdim: int, s: BoundedSettings, inverse: bool, grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(y, logabsdet, coef or None) by `_bounded_in_place`, x and the parameters of the same dtype and
    element shape. (Running it in cache-sized slices, as `RQSpline` does, was no faster.)"""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    ladj = torch.empty_like(y)
    coef = torch.empty((8 if s.max_shift is None else 9, *x.shape), dtype=x.dtype, device=x.device) if grad else None
    shared = _shared_buffers(inverse, ladj, coef)
    store = torch.empty((_Slots.count(shared), *x.shape), dtype=x.dtype, device=x.device)
    _bounded_in_place(x, *planes.unbind(pdim), s, inverse, _Slots(store, shared), y, ladj, coef)
    return y, ladj, coef


class _BoundedFunction(torch.autograd.Function):
    """`_bounded_closed` with its analytic backward: saves the coefficients, nothing else.
    Its backward is not differentiable itself: asking for a second derivative (``create_graph=True``)
    raises an error rather than treating the gradient as a constant."""

    @staticmethod
    def forward(ctx, x: Tensor, planes: Tensor, pdim: int, s: BoundedSettings, inverse: bool):
        y, ladj, coef = _bounded_closed(x, planes, pdim, s, inverse, grad=True)
        ctx.save_for_backward(coef)
        ctx.pdim, ctx.inverse, ctx.planes_shape = pdim, inverse, planes.shape
        ctx.set_materialize_grads(False)
        return y, ladj

    @staticmethod
    def backward(ctx, gy: Tensor | None, gl: Tensor | None):
        if torch.is_grad_enabled():  # create_graph=True: the gradient would silently be a constant
            raise RuntimeError(
                "the eager BoundedSpline kernel has no second derivative (its backward is analytic); "
                'for higher derivatives use backend="reference" (minflow.splines.set_backend(model, "reference"))'
            )
        (coef,) = ctx.saved_tensors
        if gy is None and gl is None:
            return None, None, None, None, None

        def grad(j: int) -> Tensor:  # gy * (d y / d input j) + gl * (d logabsdet / d input j)
            if gy is None:
                return gl * coef[j + 4]
            g = gy * coef[j]
            return g if gl is None else g.addcmul_(gl, coef[j + 4])

        gx = grad(0)
        gt = gx.neg() if ctx.inverse else (torch.zeros_like(gx) if gy is None else gy)
        if coef.shape[0] == 9:
            gt = gt * coef[8]
        # (out-of-place ops: torch.func's vmap, e.g. a vectorised Jacobian, runs this backward too)
        gp = torch.stack([grad(1), grad(2), grad(3), gt], ctx.pdim)
        return gx, gp, None, None, None


def _bounded_eager(
    x: Tensor, planes: Tensor, pdim: int, s: BoundedSettings, inverse: bool, ops: Ops
) -> tuple[Tensor, Tensor]:
    """`BoundedSpline` eagerly: the closed form with its analytic backward where x and the params
    have the same dtype and element shape, else `_bounded`."""
    p_shape = planes.shape[:pdim] + planes.shape[pdim + 1 :]
    if p_shape != x.shape or planes.dtype != x.dtype or not x.is_floating_point():
        return _bounded(x, planes, pdim, s, inverse, ops)
    if torch.is_grad_enabled() and (x.requires_grad or planes.requires_grad):
        return _BoundedFunction.apply(x, planes, pdim, s, inverse)
    return _bounded_closed(x, planes, pdim, s, inverse, grad=False)[:2]


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


def _rq_sliced(x: Tensor, planes: Tensor, pdim: int, s: RQSettings, inverse: bool, ops: Ops) -> tuple[Tensor, Tensor]:
    """`_rq`, in cache-sized slices where ``ops`` asks for them."""
    if ops.slices:
        return _in_chunks(_rq, x, planes, pdim, s, inverse, ops)
    return _rq(x, planes, pdim, s, inverse, ops)


# ----------------------------------------------------------------------------- eager and compiled


def _traced_ops() -> Ops:
    """`FUSED_OPS` while torch.compile traces a map, `EAGER_OPS` when torch runs it eagerly instead
    (past its limit of 8 compilations per function, each new setting runs uncompiled)."""
    return FUSED_OPS if torch.compiler.is_compiling() else EAGER_OPS


def _spline_traced(x: Tensor, a: Tensor, b: Tensor, d: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
    return _spline(x, a, b, d, inverse, _traced_ops())


def _bounded_traced(x: Tensor, planes: Tensor, pdim: int, s: BoundedSettings, inverse: bool) -> tuple[Tensor, Tensor]:
    return _bounded(x, planes, pdim, s, inverse, _traced_ops())


def _rq_traced(x: Tensor, planes: Tensor, pdim: int, s: RQSettings, inverse: bool) -> tuple[Tensor, Tensor]:
    return _rq_sliced(x, planes, pdim, s, inverse, _traced_ops())


class _Compiled:
    """fn(x, ...) through torch.compile, made on first call; if compiling fails, one warning (for
    every map) and fn eagerly from then on: the same numbers.

    x is passed contiguous: it is a channel slice in a coupling and a whole tensor in an injector,
    and each memory layout would otherwise cost a compilation (torch allows 8 per function).
    """

    failure: ClassVar[str | None] = None  # why torch.compile failed here, once it has
    cache: ClassVar[dict[str, Callable]] = {}  # function name -> its compiled version, made on first use

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, x: Tensor, *args) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling() or _Compiled.failure is not None:  # (in a caller's torch.compile: traced)
            return self.fn(x, *args)
        try:
            name = self.fn.__name__
            if name not in _Compiled.cache:
                _Compiled.cache[name] = torch.compile(self.fn, dynamic=True)
            return _Compiled.cache[name](x.contiguous(), *args)
        except Exception as err:  # noqa: BLE001 - whatever failed, the eager map gives the same numbers
            _Compiled.failure = f"{type(err).__name__}: {err}"
            warnings.warn(
                f"minflow.spline_kernels: torch.compile failed ({_Compiled.failure[:300]}); "
                "running eagerly from now on",
                RuntimeWarning,
                stacklevel=4,
            )
            return self.fn(x, *args)


def _kernels(spline: Callable, bounded: Callable, rq: Callable) -> Kernels:
    """The public signatures of `minflow.splines.Kernels` around the three maps run by ``spline``,
    ``bounded`` and ``rq``."""

    def spline_map(x: Tensor, knots_in: Tensor, knots_out: Tensor, derivatives: Tensor, inverse: bool):
        return spline(x, knots_in, knots_out, derivatives, inverse)

    def bounded_map(x: Tensor, params: Tensor, settings: BoundedSettings, inverse: bool):
        return bounded(x, *param_planes(params), settings, inverse)

    def rq_map(x: Tensor, params: Tensor, settings: RQSettings, inverse: bool):
        return rq(x, *param_planes(params), settings, inverse)

    return Kernels(spline=spline_map, bounded=bounded_map, rq=rq_map)


FAST = _kernels(*(functools.partial(fn, ops=EAGER_OPS) for fn in (_spline, _bounded_eager, _rq_sliced)))
"""The eager kernels, the bijections' default (``backend="fast"``)."""

COMPILED = _kernels(_Compiled(_spline_traced), _Compiled(_bounded_traced), _Compiled(_rq_traced))
"""The kernels through `torch.compile` (``backend="compiled"``): one fused loop per map and direction."""
