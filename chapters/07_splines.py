# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 7: Spline couplings, and the other remedies
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minflow-course/minflow/blob/main/chapters/07_splines.ipynb)
#
# Chapters 3 and 5 traced the artifacts of SRFlow-type models to one number: the affine scale s,
# which an out-of-distribution condition can push to its floor ε, so that sampling multiplies by
# 1/ε = 10⁴. Hong, Park and Chun's remedy replaces each affine coupling by a monotone
# rational-quadratic (RQ) spline that is the identity outside a small box. Here we build that spline
# from its formula, see why its inverse cannot multiply, swap it into the toy flow and the SR flow,
# and put it on the same axes as the other remedies people use. We also find where it still breaks:
# numerically, when its unbounded parameters overflow, and through a door the couplings do not
# guard, a prior whose variance depends on the condition.

# %% tags=["colab"]
# On Colab: fetch the course and install only what Colab lacks (Colab's torch, numpy and
# ipywidgets stay). Locally `make lab` has done this already, and this cell does nothing.
REPO = "https://github.com/minflow-course/minflow"  # the course's GitHub repository; a fork's URL goes here
import sys

if "google.colab" in sys.modules:
    import subprocess
    from pathlib import Path

    course = Path("minflow").resolve()  # /content/minflow on Colab
    if not course.exists():
        clone = subprocess.run(
            ["git", "clone", "-q", "--depth", "1", REPO, str(course)], capture_output=True, text=True
        )
        if clone.returncode != 0:
            raise RuntimeError(
                f"Could not clone {REPO}: {clone.stderr.strip()}\n"
                "Put the course in a GitHub repository you can read (a fork, or an upload of the course "
                "folder), set REPO at the top of this cell to its URL, and run the cell again; or upload "
                f"the course folder to {course} and run the cell again (it then skips the clone)."
            )
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{course}[colab]"], check=True)
    sys.path.insert(0, str(course))

# %%
import math
import statistics
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.colors import to_rgb
from tqdm.auto import tqdm

import minflow as mf
from minflow import toy
from minflow.checkpoints import load_pretrained
from minflow.plotting import COLORS, shade, style

style()
device = mf.get_device()  # cuda when available, else cpu
QUICK = mf.quick_mode()  # MINFLOW_QUICK=1 (set by `make test`) uses fewer samples, radii and inputs
gen = mf.seed_everything(0)  # the one place this chapter seeds; the samples below use fixed latents
if device.type == "cpu":
    torch.set_num_threads(1)  # the toy models are tiny: extra threads only wait on each other
print(f"device={device}, quick={QUICK}")

# %% [markdown]
# ## 1. The rational-quadratic spline, from its formula
#
# Split an interval [x₀, x_K] into K bins with knots (x_k, y_k), increasing on both axes, and
# give each knot a positive derivative d_k. On bin k, with width w = x_{k+1} − x_k, height
# h = y_{k+1} − y_k, mean slope s = h / w and position ξ = (x − x_k) / w ∈ [0, 1], Durkan et al.
# (2019) use the ratio of two quadratics
#
# $$y = y_k + \frac{h\,\big(s\,\xi^2 + d_k\,\xi(1-\xi)\big)}{s + (d_{k+1} + d_k - 2s)\,\xi(1-\xi)},
# \qquad
# \frac{dy}{dx} = \frac{s^2\,\big(d_{k+1}\xi^2 + 2s\,\xi(1-\xi) + d_k(1-\xi)^2\big)}{\big(s + (d_{k+1} + d_k - 2s)\,\xi(1-\xi)\big)^2}.$$
#
# It passes through both knots of the bin with the prescribed derivatives there, and the derivative
# is a sum of positive terms over a square, so the map is strictly increasing: invertible, with an
# inverse found by solving a quadratic in ξ. Outside [x₀, x_K] we use the identity. Below we write
# the formula directly, for knots shared by every element, and compare it with
# `minflow.splines.rational_quadratic_spline`, which does the same thing with per-element knots and
# with care for extreme inputs.


# %%
def rq_by_hand(x, kx, ky, d):
    """The RQ spline through knots (kx, ky) with derivatives d (1D tensors of length K + 1) and its
    derivative dy/dx, from the formula above; the identity (slope 1) outside [kx[0], kx[-1]]."""
    inside = (x >= kx[0]) & (x <= kx[-1])
    # into the box by selection: x itself where it is inside (so du/dx = 1 up to the ends), a clamped
    # value elsewhere. Not clamp's own gradient, which at a bound is 1 or 0 depending on torch's version
    u = torch.where(inside, x, x.detach().clamp(kx[0], kx[-1]))
    k = (torch.searchsorted(kx, u, right=True) - 1).clamp(0, len(kx) - 2)  # the bin of each element
    w, h = kx[k + 1] - kx[k], ky[k + 1] - ky[k]
    s, d0, d1 = h / w, d[k], d[k + 1]
    xi = (u - kx[k]) / w
    den = s + (d1 + d0 - 2 * s) * xi * (1 - xi)
    y = ky[k] + h * (s * xi**2 + d0 * xi * (1 - xi)) / den
    dydx = s**2 * (d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2) / den**2
    return torch.where(inside, y, x), torch.where(inside, dydx, torch.ones_like(x))


K, B = 5, 3.0  # 5 bins on the box [-3, 3]
raw = 0.7 * torch.randn(3, K, generator=gen)
kx = torch.cat([torch.zeros(1), torch.softmax(raw[0], 0).cumsum(0)]) * 2 * B - B
ky = torch.cat([torch.zeros(1), torch.softmax(raw[1], 0).cumsum(0)]) * 2 * B - B
kx[-1], ky[-1] = B, B  # exact ends
d = torch.cat([torch.ones(1), F.softplus(raw[2, :-1]) + 0.1, torch.ones(1)])  # slope 1 at both ends
print("knots x:", kx.numpy().round(2), "\nknots y:", ky.numpy().round(2), "\nderivatives:", d.numpy().round(2))

xs = torch.linspace(-5, 5, 2001, dtype=torch.float64)
y_hand, dydx_hand = rq_by_hand(xs, kx.double(), ky.double(), d.double())
expand = lambda v: v.double().expand(*xs.shape, K + 1)
y_mf, logdet_mf = mf.rational_quadratic_spline(xs, expand(kx), expand(ky), expand(d))
x_back, logdet_inv = mf.rational_quadratic_spline(y_mf, expand(kx), expand(ky), expand(d), inverse=True)
xs_g = xs.clone().requires_grad_(True)
dydx_autograd = torch.autograd.grad(rq_by_hand(xs_g, kx.double(), ky.double(), d.double())[0].sum(), xs_g)[0]
print(f"max |hand - minflow|: {(y_hand - y_mf).abs().max():.1e} (values), {(dydx_hand.log() - logdet_mf).abs().max():.1e} (log-slopes)")
print(f"max |x - inverse(forward(x))|: {(x_back - xs).abs().max():.1e}; formula slope vs autograd: {(dydx_hand - dydx_autograd).abs().max():.1e}")

# %%
assert torch.allclose(y_hand, y_mf, atol=1e-12)
assert torch.allclose(dydx_hand.log(), logdet_mf, atol=1e-10)
assert torch.allclose(dydx_hand, dydx_autograd, atol=1e-9)
assert torch.allclose(x_back, xs, atol=1e-10) and torch.allclose(logdet_inv, -logdet_mf, atol=1e-10)
assert (dydx_hand > 0).all() and (dydx_hand[(xs.abs() > B)] == 1).all()
print("the formula, minflow's spline and autograd agree; monotone; slope exactly 1 outside the box")

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
ax0.plot(xs, xs, color=COLORS["data"], ls=":", lw=1, label="identity")
ax0.plot(xs, y_hand, color=COLORS["spline"], label="RQ spline")
ax0.scatter(kx, ky, color="k", zorder=3, s=30, label="knots (x_k, y_k)")
for xk, yk, dk in zip(kx, ky, d):  # the prescribed derivative at each knot, as a short tangent
    ax0.plot([xk - 0.35, xk + 0.35], [yk - 0.35 * dk, yk + 0.35 * dk], color="k", lw=1)
ax0.axvspan(-B, B, color=COLORS["spline"], alpha=0.07, lw=0, label="box [-B, B]")
ax0.set(title=f"a {K}-bin RQ spline (knot tangents in black)", xlabel="x", ylabel="y", aspect="equal")
ax0.legend(fontsize=9, loc="upper left")
ax1.plot(xs, dydx_hand, color=COLORS["spline"], label="dy/dx (formula)")
ax1.scatter(kx, d, color="k", zorder=3, s=30, label="d_k at the knots")
ax1.axhline(1, color=COLORS["data"], ls=":", lw=1)
ax1.axvspan(-B, B, color=COLORS["spline"], alpha=0.07, lw=0)
ax1.set(title="its derivative: positive, and exactly 1 outside the box", xlabel="x", ylabel="dy/dx")
ax1.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### The paper's bounded spline
#
# Hong et al. use a very small version inside every coupling and injector: the box [−0.5, 0.5]
# mapped onto itself with **two bins**, i.e. one free interior knot (x₁, y₁) and one free interior
# derivative, end derivatives fixed to 1, then a learned shift: c(x) = RQS(x) + t. The conditioner
# outputs four numbers per element, (a, h, d, t): x₁ and y₁ from a and h through a squashed
# sigmoid (never closer than 0.1 % of the box to its edges), the interior derivative
# exp(d)(1 − 10⁻³) + 10⁻³. At zero output it is exactly the identity, which is how every coupling
# starts training. `mf.BoundedSpline` implements it; `knots` and `shift` expose what it uses, so we
# can check it against the general function and draw a few random members of the family.

# %%
bounded = mf.BoundedSpline()  # bound 0.5, two bins
x = torch.linspace(-1.2, 1.2, 1201, dtype=torch.float64)
fig, ax = plt.subplots(figsize=(6.5, 5))
for i in range(6):
    params = (1.5 * torch.randn(4, generator=gen, dtype=torch.float64)).expand(*x.shape, 4)
    y, ld = bounded(x, params)
    knots = bounded.knots(params)
    ref, ref_ld = mf.rational_quadratic_spline(x, *knots)
    assert torch.allclose(y, ref + bounded.shift(params), atol=1e-12) and torch.allclose(ld, ref_ld, atol=1e-10)
    shown = y - bounded.shift(params)  # drawn without its shift, so the box stays in view
    ax.plot(x, shown, color=COLORS["spline"], alpha=0.4 + 0.1 * i, lw=1.5)
    ax.scatter(knots[0][0, 1], knots[1][0, 1], color="k", s=18, zorder=3)
ax.plot(x, x, color=COLORS["data"], ls=":", lw=1, label="identity")
ax.add_patch(plt.Rectangle((-0.5, -0.5), 1, 1, fill=False, ls="--", color="k", lw=1))
ax.set(title="BoundedSpline for random parameters (shift removed)", xlabel="x", ylabel="RQS(x)", aspect="equal")
ax.legend(loc="upper left", fontsize=9)
plt.show()
zero = bounded(x, torch.zeros(*x.shape, 4, dtype=torch.float64))
assert torch.equal(zero[0], x) and zero[1].abs().max() < 1e-12  # log-slope 0 up to rounding
print("BoundedSpline = rational_quadratic_spline(knots) + shift; zero parameters give exactly the identity")

# %% [markdown]
# ## 2. Why its inverse cannot explode
#
# Sampling runs each coupling backwards. For SRFlow's affine coupling that is x = z / s − t, a
# straight line of slope 1/s through the whole real line; s is whatever the conditioner says, and
# chapter 3 showed that an out-of-distribution condition says ε, a slope of 10⁴. For the bounded
# spline the backward map is x = RQS⁻¹(z − t):
#
# - outside the box, |z − t| > 0.5, RQS⁻¹ is the identity, so **x = z − t exactly, with slope 1**,
#   for every condition;
# - inside, RQS⁻¹ maps the box onto itself, so it moves z − t by at most the box width, 1.
#
# Either way |x − (z − t)| ≤ 2B = 1. The condition can still choose the shift t, and it can make
# the map steep inside the box, but only over a window of width 1: it can *move* a sample, or
# fold a unit-sized window, never *multiply* a large value. This is the paper's Remark 2 in our
# words: to keep the inverse from exploding, the element-wise map's slope must have matching lower
# and upper bounds where |x| is large, whatever the condition; the spline pins it to exactly 1
# there, while the affine map's slope is the learned s everywhere.
#
# We test the claim with deliberately wild parameters (each of a, h, d, t ~ N(0, 10²), far beyond
# anything seen in training) on inputs up to 10⁶, next to an affine coupling at its floor.

# %%
n = 200_000
z = torch.cat([torch.linspace(-3, 3, n // 2), 10 ** (6 * torch.rand(n // 2, generator=gen)) * torch.sign(torch.randn(n // 2, generator=gen))])
wild = 10 * torch.randn(n, 4, generator=gen)
wild[:, 2] = wild[:, 2].clamp(-60, 60)  # keep exp(d) finite in float32 here; section 5 removes this clamp
x_spline, _ = bounded.inverse(z, wild)
t = bounded.shift(wild)
displacement = (x_spline - (z - t)).abs()
far_out = (z - t).abs() > bounded.bound
print(f"spline: max |x - (z - t)| = {displacement.max():.3f} (bound 2B = {2 * bounded.bound}); "
      f"exactly 0 outside the box: {bool((displacement[far_out] == 0).all())}")
affine = mf.Affine("sigmoid")
floor = torch.stack([torch.zeros(n), torch.full((n,), -30.0)], -1)  # t = 0, h = -30: s = eps
x_affine, _ = affine.inverse(z, floor)
print(f"affine at its floor: max |x| / |z| = {(x_affine.abs() / z.abs().clamp_min(1e-12)).max():.4g} (1/eps = {1 / affine.eps:.4g})")

# %%
assert displacement.max() <= 2 * bounded.bound + 1e-5 and (displacement[far_out] == 0).all()
assert torch.isfinite(x_spline).all()
assert (x_affine.abs() / z.abs().clamp_min(1e-12)).max() > 0.99e4

# %%
zz = torch.linspace(-3, 3, 1201)
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 4.5))
for h_raw, a in [(0.0, 1.0), (-4.0, 0.7), (-8.0, 0.5), (-30.0, 0.3)]:
    p = torch.tensor([0.0, h_raw]).expand(len(zz), 2)
    s = affine.scale(torch.tensor(h_raw))[0].item()
    ax0.plot(zz, affine.inverse(zz, p)[0], color=COLORS["affine"], alpha=a, label=f"h = {h_raw:g}: slope 1/s = {1 / s:.3g}")
ax0.set(title="affine inverse x = z / s - t (t = 0)", xlabel="z", ylabel="x", ylim=(-4, 4))
ax0.legend(fontsize=9)
for i in range(8):
    p = (5 * torch.randn(4, generator=gen)).expand(len(zz), 4).clone()
    p[:, 3] = 0  # no shift, to see the shape
    ax1.plot(zz, bounded.inverse(zz, p)[0], color=COLORS["spline"], alpha=0.4 + 0.07 * i, lw=1.5)
ax1.plot(zz, zz, color=COLORS["data"], ls=":", lw=1, label="identity")
ax1.axvspan(-0.5, 0.5, color=COLORS["spline"], alpha=0.07, lw=0, label="the box")
ax1.set(title="spline inverse, 8 random wild parameter draws (t = 0)", xlabel="z", ylabel="x", ylim=(-4, 4))
ax1.legend(fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Two caveats, both important later. First, "bounded displacement" is per layer and *relative to
# z − t*: the shift t is an unbounded output of the conditioner, so far out of distribution a
# sample can be moved far away, just not stretched. Second, the paper's interior derivative is
# exp(d): for d above about 88 that number is infinite in float32, and the spline arithmetic turns
# it into NaN. We clamped d above to keep the demonstration about the shape; sections 3c and 4d show
# what happens when nothing clamps it.

# %% [markdown]
# ## 3. Swapped into the toy flow
#
# Same task, architecture, optimiser, steps and seeds as chapter 3's five affine models; only the
# element-wise map of each coupling differs. The spline checkpoints ship with the course, made by
# `python -m minflow train-toy --coupling spline --seed S --steps 2000` for S = 0 … 4. We repeat
# chapter 3's measurements on both families: in-distribution spread, the 360-direction scan at
# |y| = 1000 (chapter 3's "far OOD": the worst direction, same rule for every model), and the sweep
# from in distribution outwards. Chapter 3's claims are about the affine models; what we expect
# here is about the spline:
#
# > in every seed, the spline flow's far-OOD sample spread stays within 10x its in-distribution spread.
#
# `evaluate_toy` gathers, for any toy model, every number this chapter's tables use.

# %%
SEEDS = [0, 1, 2, 3, 4]
N_IN, N_OOD, N_JAC = mf.pick((1000, 500, 16), (400, 100, 8))
RING_RADII = (10.0, 100.0, toy.FAR_OOD_RADIUS)  # the toy's "OOD sets": rings of 360 directions


def sampling_time(flow, n=100_000, repeats=3):
    """Seconds per 100 000 samples at y = 0 (best of a few runs of n samples)."""
    z, cond = toy.latent(n, flow=flow), toy.as_cond((0.0, 0.0), n, flow)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            flow.sample(cond, z=z)
        best = min(best, time.perf_counter() - t0)
    return best * 100_000 / n


def ratio(r, base):
    """A ring entry's spread over the in-distribution spread; inf when its samples are not finite."""
    return r["spread"] / base if r["nonfinite"] == 0 else math.inf


def evaluate_toy(flow):
    """In-distribution quality, the three rings, the far-OOD diagnosis and the sampling time of one model."""
    ind = [toy.diagnose(flow, y, n=N_IN, n_jac=N_JAC) for y in toy.IN_DIST_Y]
    base = statistics.mean(d["spread"] for d in ind)
    rings = {R: toy.ring(flow, radius=R, n=N_OOD) for R in RING_RADII}
    far = rings[toy.FAR_OOD_RADIUS]
    worst = max(far, key=lambda r: ratio(r, base))
    return {
        "val_nll": toy.validation_nll(flow, n=mf.pick(8192, 2048)),
        "in_spread": base,
        "in_inside": min(toy.inside_fraction(d["samples"], torch.tensor(d["y"]), margin=0.5) for d in ind),
        "in_nonfinite": sum(d["nonfinite"] for d in ind),
        "in_sv": max(d["max_sv"] for d in ind),
        "rings": rings,
        "ratios": {R: [ratio(r, base) for r in rings[R]] for R in RING_RADII},
        "far": toy.diagnose(flow, worst["y"], n=N_OOD, n_jac=N_JAC),
        "far_ratio": ratio(worst, base),
        "time": sampling_time(flow, n=mf.pick(100_000, 20_000)),
    }


def load_family(kind, seeds=SEEDS):
    return {s: load_pretrained(f"toy_{kind}_s{s}", device=device) for s in seeds}


models = {"affine": load_family("affine"), "spline": load_family("spline")}
print(f"{'model':>7} {'seed':>4} {'train wall':>11} {'held-out NLL':>13}")
for kind, fam in models.items():
    for s, m in fam.items():
        man = m.manifest
        print(f"{kind:>7} {s:>4} {man['wall_time_s']:>9.0f} s {man['metrics']['val_nll']:>13.3f}")
print(f"(optimum log 0.6 = {toy.TRUE_NLL:.3f}); spline command: {models['spline'][0].manifest['command']}")
results = {kind: {s: evaluate_toy(m) for s, m in tqdm(fam.items(), desc=kind)} for kind, fam in models.items()}

# %% [markdown]
# ### 3a. In distribution: both families fit the data
#
# The same check as chapter 3: spread within 2x of the truth, 90 % of the samples near the true
# parallelogram, nothing non-finite, at five in-distribution conditions.

# %%
true_s = toy.true_spread()
for kind in models:
    for s, r in results[kind].items():
        assert true_s / 2 < r["in_spread"] < 2 * true_s and r["in_inside"] > 0.9 and r["in_nonfinite"] == 0, (kind, s)
    print(f"{kind:>7}: held-out NLL {statistics.mean(r['val_nll'] for r in results[kind].values()):.3f} (mean of {len(SEEDS)} seeds), "
          f"spread {min(r['in_spread'] for r in results[kind].values()):.3f} .. {max(r['in_spread'] for r in results[kind].values()):.3f} "
          f"(true {true_s:.3f})")

# %% [markdown]
# ### 3b. Far out of distribution, direction by direction
#
# The scan of chapter 3 at |y| = 1000, both families on one plot: spread relative to the model's
# own in-distribution spread, for each of the 360 directions. A direction whose samples are not all
# finite is drawn as a cross on the top edge.


# %%
def ring_plot(ax, kinds, R=toy.FAR_OOD_RADIUS, top=1e8):
    angles = [r["angle"] for r in results[kinds[0]][SEEDS[0]]["rings"][R]]
    for kind in kinds:
        colour = "spline" if "spline" in kind else kind if kind in COLORS else "other"
        for i, (s, res) in enumerate(results[kind].items()):
            rat = torch.tensor(res["ratios"][R])
            ok = torch.isfinite(rat)
            ax.semilogy(torch.tensor(angles)[ok], rat[ok], ".", ms=2.5, color=shade(colour, i, len(SEEDS)), label=f"{kind}, seed {s}")
            ax.plot(torch.tensor(angles)[~ok], torch.full((int((~ok).sum()),), top), "x", ms=4, color=shade(colour, i, len(SEEDS)))
    ax.axhline(10, color="k", ls="--", lw=1)
    ax.set(xlabel="direction of y (degrees)", ylabel="spread / in-distribution spread", xlim=(0, 360), ylim=(1e-3, 3 * top))


fig, ax = plt.subplots(figsize=(11, 4.5))
ring_plot(ax, ["affine", "spline"])
ax.set_title(f"|y| = {toy.FAR_OOD_RADIUS:g}: affine (red) vs the paper's spline (teal); x = non-finite samples")
ax.legend(ncol=5, fontsize=7, loc="lower left", markerscale=3)
plt.show()


# %%
def toy_table(kinds, seeds=SEEDS):
    head = ["model", "seed", "NLL", "in spread", "far ratio", "dirs > 10x", "non-finite dirs", "min ratio", "far min s", "far max σ", "ms / 1e5 samples"]
    rows = []
    for kind in kinds:
        for s in seeds:
            r = results[kind][s]
            rat = r["ratios"][toy.FAR_OOD_RADIUS]
            finite = [v for v in rat if math.isfinite(v)]
            rows.append([kind, str(s), f"{r['val_nll']:.3f}", f"{r['in_spread']:.3f}", f"{r['far_ratio']:.3g}",
                         str(sum(v > 10 for v in rat)), str(sum(not math.isfinite(v) for v in rat)),
                         f"{min(finite):.3g}" if finite else "-",
                         *((f"{r['far']['min_scale']:.2e}", f"{r['far']['max_sv']:.3g}") if r["far"]["nonfinite"] == 0 else ("NaN", "NaN")),
                         f"{1000 * r['time']:.0f}"])  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


toy_table(["affine", "spline"])

# %% [markdown]
# Reading the table: **far ratio** is the worst direction's spread over the in-distribution spread
# (inf when some of its samples are not finite); **dirs > 10x** and **non-finite dirs** count
# directions out of 360; **min ratio** is the smallest ratio over the circle (far below 1 means the
# samples collapse); **far min s** and **far max σ** are the smallest forward slope any coupling
# used and the largest singular value of the sampling Jacobian dx/dz, at the worst direction.
#
# Now the expectation, checked exactly as stated, on chapter 3's far-OOD setting.

# %%
claim = {s: results["spline"][s]["far_ratio"] <= 10 for s in SEEDS}
print("far-OOD spread within 10x in-distribution, paper's spline, per seed:", {s: "within" if ok else "not within" for s, ok in claim.items()})
for s in SEEDS:
    rat = results["spline"][s]["ratios"][toy.FAR_OOD_RADIUS]
    finite = [v for v in rat if math.isfinite(v)]
    print(f"  seed {s}: {sum(not math.isfinite(v) for v in rat):3d} of 360 directions non-finite; "
          f"largest ratio among the finite ones {max(finite):.3g}, smallest {min(finite):.3g}")
failed = [s for s, ok in claim.items() if not ok]
affine_far = [results["affine"][s]["far_ratio"] for s in SEEDS]

# %% [markdown]
# **The lesson: the paper's spline misses the 10x bound in some seeds**, and the way it misses
# matters. We expected a bounded map to keep the far-OOD spread within 10x. No direction shows an
# *amplified* spread: wherever the samples are finite they stay within 10x (they are in fact at or
# below the in-distribution spread). Instead, whole directions return **NaN**. That is not the
# exploding inverse of chapter 3; it is a numerical weakness of the spline's arithmetic, which
# section 4d meets again on super-resolution inputs far outside [0, 1]. Here it shows because
# |y| = 1000 is a thousand standard deviations from the training data. The next cell checks the
# facts the prose states, and section 3c finds the cause.

# %%
assert len(failed) > 0  # the claim, as stated, does not hold for BoundedSpline at |y| = 1000
for s in SEEDS:
    rat = results["spline"][s]["ratios"][toy.FAR_OOD_RADIUS]
    assert all(v <= 10 for v in rat if math.isfinite(v)), f"seed {s}: a finite direction is amplified"
    assert all(not math.isfinite(v) for v in rat if not v <= 10)  # every violation is a NaN, none an amplification
assert all(r > 10 for r in affine_far)  # chapter 3's claim, on the same setting
print(f"not within 10x in seeds {failed}, always by non-finite samples; affine far ratios for comparison: {[f'{r:.3g}' for r in affine_far]}")

# %% [markdown]
# ### 3c. Why NaN, and the fully bounded spline
#
# Follow one failing direction of seed 0 through the sampling pass, and look at the raw
# conditioner outputs (a, h, d, t) of each coupling on the way. The interior derivative of the
# paper's spline is exp(d); float32 overflows above d ≈ 88.7.

# %%
SHOW = 0
m0 = models["spline"][SHOW]
bad = next(r for r in results["spline"][SHOW]["rings"][toy.FAR_OOD_RADIUS] if r["nonfinite"] > 0)
d_bad = toy.diagnose(m0, bad["y"], n=200, n_jac=0, keep=True)
print(f"seed {SHOW}, y = ({bad['y'][0]:.0f}, {bad['y'][1]:.0f}):\n{mf.format_trace(d_bad['rows'])}\n")
cond = toy.as_cond(bad["y"], 200, m0)
first_nan = None
for prev, row in zip(d_bad["rows"][:-1], d_bad["rows"][1:]):
    if row["name"] == "Coupling" and prev["nonfinite"] == 0:
        raw_p = m0.layers[row["index"]].conditioner_output(prev["output"], cond)
        print(f"coupling {row['index']:>2}: " + ", ".join(f"{n} in [{raw_p[..., k].min():.3g}, {raw_p[..., k].max():.3g}]" for k, n in enumerate("ahdt")))
        if row["nonfinite"] > 0 and first_nan is None:
            first_nan = (row["index"], raw_p[..., 2].max().item())
print(f"\nfirst non-finite output at coupling {first_nan[0]}, where d reaches {first_nan[1]:.1f}; "
      f"log(float32 max) = {math.log(torch.finfo(torch.float32).max):.1f}")
assert first_nan is not None and first_nan[1] > math.log(torch.finfo(torch.float32).max)

# %% [markdown]
# A ReLU conditioner is linear far along a ray, so d grows in proportion to |y|; at |y| = 1000 it
# passes 88.7, exp(d) becomes inf, and inside the spline formula inf · 0 and inf / inf make NaN.
# The shift t grows the same way (hundreds here), but a large shift is harmless by itself: it moves
# the samples, which is even roughly right on this task, since E[x | y] = y / 2.
#
# To prove that the overflow is the *only* problem, keep every weight of the five models and cap the
# exponent: `FullyBoundedSpline(max_log_derivative=80, max_shift=1e30)` passes d through
# 80·tanh(d / 80) (nearly the identity for the values seen in training) and leaves t alone.

# %%
def with_bijection(flow, make):
    """A copy of a toy flow whose couplings use the element-wise map make() instead (same weights)."""
    twin = mf.checkpoints.build("toy", flow.manifest["config"]).to(device)
    twin.load_state_dict(flow.state_dict())
    for layer in twin.layers:
        if isinstance(layer, mf.Coupling):
            layer.bijection = make()
    return twin.eval()


capped = {s: with_bijection(m, lambda: mf.FullyBoundedSpline(max_log_derivative=80.0, max_shift=1e30)) for s, m in models["spline"].items()}
capped_ratio = {}
for s, m in capped.items():
    base = results["spline"][s]["in_spread"]
    capped_ratio[s] = max(ratio(r, base) for r in toy.ring(m, radius=toy.FAR_OOD_RADIUS, n=N_OOD))
print("same weights, exponent capped at 80: far ratio per seed", {s: f"{v:.3g}" for s, v in capped_ratio.items()})
assert all(v <= 10 for v in capped_ratio.values())

# %% [markdown]
# With only the exponent capped, every direction of every seed is finite and within 10x. So the
# paper's spline does what Remark 2 promises, *as mathematics*; its float32 implementation does not
# survive conditions this far out, because two of its four parameters are unbounded.
#
# A variant that bounds both: `FullyBoundedSpline` maps d to 3·tanh(d / 3) (so the
# interior derivative stays in (e⁻³, e³)) and t to 3·tanh(t / 3) (so a layer shifts by less than 3).
# A sampling pass then moves an element by at most 3 + 1 per coupling, whatever the condition. Five
# toy models trained with it (`python -m minflow train-toy --coupling spline_bounded --seed S --steps 2000`,
# same seeds) on the same test:

# %%
models["spline_bounded"] = load_family("spline_bounded")
results["spline_bounded"] = {s: evaluate_toy(m) for s, m in tqdm(models["spline_bounded"].items(), desc="spline_bounded")}
toy_table(["spline_bounded"])
claim_fb = {s: results["spline_bounded"][s]["far_ratio"] <= 10 for s in SEEDS}
print("far-OOD spread within 10x, FullyBoundedSpline, per seed:", {s: "within" if ok else "not within" for s, ok in claim_fb.items()})

# %%
for s in SEEDS:
    r = results["spline_bounded"][s]
    assert true_s / 2 < r["in_spread"] < 2 * true_s and r["in_inside"] > 0.9 and r["in_nonfinite"] == 0, s
    assert r["far_ratio"] <= 10, f"seed {s}: far-OOD spread {r['far_ratio']:.3g}x in-distribution"
print("fully bounded spline: fits in distribution, and far OOD stays within 10x in every seed")

# %% [markdown]
# ### 3d. From in distribution to far OOD
#
# Chapter 3's sweep, now for the three families: for each radius, the worst of the scanned
# directions (non-finite counts as worst), its spread ratio, the smallest forward slope used in
# the sampling pass, and the largest singular value of dx/dz. Non-finite points are drawn as
# crosses on the top edge of the panel.

# %%
RADII = mf.pick([1, 3, 10, 30, 100, 300, 1000], [1, 10, 100, 1000])
DIRS_SWEEP, N_SWEEP = mf.pick((360, 300), (90, 100))
sweep = {k: {s: [] for s in SEEDS} for k in ("affine", "spline", "spline_bounded")}
for kind in tqdm(sweep, desc="sweep over |y|"):
    for s, m in models[kind].items():
        base = results[kind][s]["in_spread"]
        for R in RADII:
            ring_R = toy.ring(m, radius=R, n_directions=DIRS_SWEEP, n=N_SWEEP)
            w = max(ring_R, key=lambda r: ratio(r, base))
            d = toy.diagnose(m, w["y"], n=N_SWEEP, n_jac=4) if w["nonfinite"] == 0 else None
            sweep[kind][s].append(
                {"R": R, "ratio": ratio(w, base), "min_s": d["min_scale"] if d else math.nan, "sv": d["max_sv"] if d else math.nan}
            )

fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
styles = {"affine": ("affine", "-"), "spline": ("spline", "-"), "spline_bounded": ("spline", "--")}
tops = (1e9, 1e1, 1e9)
for kind, (colour, ls) in styles.items():
    for i, s in enumerate(SEEDS):
        pts = sweep[kind][s]
        for ax, key, top in zip(axes, ("ratio", "min_s", "sv"), tops):
            xs_ = [p["R"] for p in pts if math.isfinite(p[key])]
            ax.loglog(xs_, [p[key] for p in pts if math.isfinite(p[key])], marker="o", ms=3, ls=ls, color=shade(colour, i, len(SEEDS)),
                      label=f"{kind}" if i == len(SEEDS) - 1 else None)
            nan_r = [p["R"] for p in pts if not math.isfinite(p[key])]
            ax.plot(nan_r, [top] * len(nan_r), "x", color=shade(colour, i, len(SEEDS)), ms=7)
axes[0].axhline(10, color="k", ls="--", lw=1)
axes[1].axhline(1e-4, color="k", ls="--", lw=1)
for ax in axes:
    ax.axvspan(RADII[0], 3, color=COLORS["data"], alpha=0.12, lw=0)
axes[0].set(title="spread ratio, worst direction", xlabel="|y|", ylabel="spread / in-distribution")
axes[1].set(title="smallest forward slope in the inverse", xlabel="|y|", ylabel="min slope (affine: s)")
axes[2].set(title="largest singular value of dx/dz", xlabel="|y|", ylabel="max σ")
axes[0].legend(fontsize=9)
fig.suptitle("affine (red), the paper's spline (teal), fully bounded spline (teal, dashed); x = non-finite", y=1.02)
plt.tight_layout()
plt.show()

# %% [markdown]
# The affine curves climb by orders of magnitude once the smallest s heads for its floor. The
# spline curves stay at or below 1 (the spread never grows) until, for the paper's variant, the
# samples turn NaN, at |y| = 100 in some seeds and at 1000 in all: bounded right up to the point
# where the arithmetic breaks. The fully bounded spline stays flat all the way.
#
# The middle panel is a warning about a popular diagnostic: a spline's smallest forward slope can
# be small too, since the map may be steep or flat *inside* its box, so "1/(smallest slope)"
# overstates what a spline can do to a sample. The spread and the Jacobian tell the truth.
#
# ### 3e. Bounded is not the same as right
#
# A bounded map can fail in another way: its far-OOD samples may *collapse*, bounded yet wrong. In our seeds
# the spread never collapses outright (the smallest ratio on the circle, the "min ratio" column,
# is about 0.3–0.7), but *where* the samples land tells the story. The task itself extrapolates:
# E[x | y] = y / 2 for every y. For 8 directions at |y| = 1000 we measure the distance of the sample
# mean from y / 2, in units of |y / 2|: 0 means the model followed the condition, 1 means its
# samples stayed near the origin, where the training data live.

# %%
def landing(flow, n_dirs=8, n=300):
    """Per direction at |y| = FAR_OOD_RADIUS: |mean of samples - y/2| / |y/2| (nan if samples are not finite)."""
    out = []
    for d in toy.ring_directions(n_dirs):
        y = tuple((toy.FAR_OOD_RADIUS * d).tolist())
        x = toy.sample_at(flow, y, n, generator=torch.Generator().manual_seed(0)).cpu().double()
        target = toy.true_mean(torch.tensor(y, dtype=torch.float64))
        out.append((x.mean(0) - target).norm().item() / target.norm().item() if torch.isfinite(x).all() else math.nan)
    return out


land = {k: [v for s in SEEDS for v in landing(models[k][s])] for k in ("affine", "spline", "spline_bounded")}
for k, v in land.items():
    finite = [u for u in v if math.isfinite(u)]
    print(f"{k:>15}: median relative distance {statistics.median(finite):.3g} over {len(finite)} finite of {len(v)} (direction, seed) pairs")

# %%
assert statistics.median(u for u in land["spline"] if math.isfinite(u)) < 0.3  # follows y/2 where finite
assert min(land["spline_bounded"]) > 0.9  # never leaves the training region
print("the paper's spline follows the condition (where finite); the fully bounded one stays put")

# %% [markdown]
# Here is the price of bounding the shift: with |t| < 3 per coupling, four couplings cannot carry
# a sample 500 units away, so the fully bounded spline answers every far condition with something
# near the training data: bounded, and wrong by the full distance. The paper's spline, whose shift
# grows linearly with |y| like the truth, follows E[x | y] to within about 10 % wherever its
# arithmetic survives. Neither is "right" in any deep sense: nothing in the training data says
# what should happen at |y| = 1000. What the bounds buy is a guarantee that the answer, right or
# wrong, stays finite and no wider than a fixed margin, which is what an imaging model needs
# before it can be trusted to fail gracefully.

# %% [markdown]
# ## 4. Swapped into the SR flow
#
# The small SRFlow of chapters 4 and 5, trained twice with the same command, seed and number of
# steps, once with SRFlow's affine injectors and couplings and once with the paper's bounded
# spline in both places (`--coupling spline`). Everything else is identical: encoder, priors
# (SRFlow's: split prior from the kept half only, top prior N(0, I)), data stream, optimiser.
# Two more models trained the same way join later: the fully bounded spline (section 4c) and the
# same with a conditional prior (section 5b).

# %%
from minflow import data, metrics

SR_NAMES = {"affine": "sr_affine", "spline": "sr_spline"}
sr = {k: load_pretrained(n, device=device) for k, n in SR_NAMES.items()}
print(f"{'model':>7} {'steps':>6} {'seed':>5} {'train wall':>11} {'s / step':>9} {'parameters':>11}  command")
for k, m in sr.items():
    man = m.manifest
    n_par = sum(p.numel() for p in m.parameters())
    print(f"{k:>7} {man['steps']:>6} {man['seed']:>5} {man['wall_time_s']:>9.0f} s {man['wall_time_s'] / man['steps']:>9.2f} {n_par:>11,}  {man['command']}")
assert sr["affine"].manifest["steps"] == sr["spline"].manifest["steps"] and sr["affine"].manifest["seed"] == sr["spline"].manifest["seed"]

# %% [markdown]
# Same steps, same seed; the spline model has about a third more parameters (four conditioner
# outputs per transformed channel instead of two) and a costlier step. The two wall times above
# were measured on one shared 2-core machine at different moments, so their ratio mixes the cost of
# the step with the machine's load; the sampling times measured below, back to back, compare the
# two maps more fairly.

# %% [markdown]
# ### 4a. In distribution: is the spline model as good?
#
# Chapter 4's protocol on the two validation photos (central 256x256 crop, bicubic 64x64 LR):
# samples at temperature 0.7, metrics on clamped copies, border of 4 px shaved. PSNR, SSIM and
# LR-PSNR are averaged over samples; "PSNR of mean" scores the average of the samples (the number
# the training command records); bits per dim use fixed dequantisation noise. What we expect: the
# spline model's in-distribution PSNR is within 0.5 dB of the affine model's. We check it on the
# PSNR of the mean, and print the per-sample PSNR beside it.

# %%
FACTOR = 4
N_REF = mf.pick(8, 2)
sets = data.ood_sets(FACTOR)
reference = sets["reference"]


def sample_sr(model, lr, n, temperature, seed=0):
    """n raw samples (n, 3, H, W) for one LR, the smallest scale (forward slope) each sample met in
    any injector or coupling (recorded with `mf.recording`), and seconds per sample."""
    cond = lr[None].expand(n, -1, -1, -1).contiguous().to(device)
    t0 = time.perf_counter()
    with torch.no_grad(), mf.recording() as rec:
        raw = model.sample(cond, temperature=temperature, generator=torch.Generator(device).manual_seed(seed))
    sec = (time.perf_counter() - t0) / n
    return raw.cpu(), rec.min_scale().cpu(), sec


def sr_quality(m):
    """Chapter 4's in-distribution metrics of one SR model, averaged over the reference photos."""
    per = []
    for name, inp in reference.items():
        raw, smin, sec = sample_sr(m, inp.lr, N_REF, 0.7)
        x = raw.clamp(0, 1)
        with torch.no_grad():
            bpd = m.nll_bpd(inp.hr[None].to(device), inp.lr[None].to(device), torch.Generator(device).manual_seed(0)).item()
        per.append({
            "bpd": bpd,
            "psnr_mean": metrics.psnr(x.mean(0), inp.hr, FACTOR),
            "psnr": statistics.mean(metrics.psnr(s, inp.hr, FACTOR) for s in x),
            "ssim": statistics.mean(metrics.ssim(s, inp.hr, FACTOR) for s in x),
            "lr_psnr": statistics.mean(metrics.lr_psnr(s, inp.lr, FACTOR) for s in x),
            "diversity": metrics.diversity(x),
            "sec": sec, "max_abs": metrics.artifact_report(raw)["summary"]["max_abs"],
        })  # fmt: skip
    return {key: statistics.mean(p[key] for p in per) for key in per[0]} | {"per_photo": per}


quality = {k: sr_quality(m) for k, m in sr.items()}
bic = statistics.mean(metrics.psnr(data.bicubic_up(inp.lr, FACTOR), inp.hr, FACTOR) for inp in reference.values())
print(f"{'model':>7} {'bpd':>6} {'PSNR of mean':>13} {'PSNR':>6} {'SSIM':>6} {'LR-PSNR':>8} {'diversity':>10} {'s / sample':>11} {'max|x|':>7}")
for k, q in quality.items():
    print(f"{k:>7} {q['bpd']:>6.3f} {q['psnr_mean']:>13.2f} {q['psnr']:>6.2f} {q['ssim']:>6.3f} {q['lr_psnr']:>8.2f} {q['diversity']:>10.4f} {q['sec']:>11.2f} {q['max_abs']:>7.2f}")
print(f"bicubic PSNR {bic:.2f} dB; (T = 0.7, {N_REF} samples per photo, mean of {len(reference)} photos)")
gap = quality["spline"]["psnr_mean"] - quality["affine"]["psnr_mean"]
print(f"PSNR of mean, spline - affine: {gap:+.2f} dB (per-sample PSNR: {quality['spline']['psnr'] - quality['affine']['psnr']:+.2f} dB)")
man_gap = sr["spline"].manifest["metrics"]["psnr"] - sr["affine"].manifest["metrics"]["psnr"]
print(f"the training command's own validation (whole photos, mean of 3 samples at T = 0.7): {man_gap:+.3f} dB")
print(f"within 0.5 dB either way: {'yes' if abs(gap) <= 0.5 else 'no'}; "
      f"not worse by more than 0.5 dB: {'yes' if gap >= -0.5 else 'no'}")

# %% [markdown]
# The spline model is not worse: it is *better*, here by more than half a decibel on the crops
# (and it is the only one of the two that matches bicubic PSNR, with a much higher LR-PSNR: its
# samples explain their input better). We expected the two to be within 0.5 dB; read literally,
# that is two-sided, and then it fails, in the spline's favour, on these crops, while it just holds
# on the training command's whole-photo validation (the line above). What the expectation guards
# against is the spline costing quality, and that does not happen; that one-sided check is the one
# we assert.
# Both models are tiny and trained for 1800 steps: neither beats bicubic, as chapter 4 said.

# %%
assert gap >= -0.5, f"the spline model is {-gap:.2f} dB worse in distribution"
assert quality["spline"]["lr_psnr"] > quality["affine"]["lr_psnr"]
print("in distribution the spline model costs no PSNR (it gains some) and is more consistent with its input")

# %% [markdown]
# ### 4b. Out of distribution: chapter 5's test inputs
#
# Chapter 5's protocol, for both models: every input of `data.ood_sets()` in its four groups (the
# in-distribution reference, unusual content, unusual degradations, and odd inputs an earlier
# exploratory model found harmless), all valid images in [0, 1]; 8 samples per input (4 in quick mode) at temperature 0.9,
# from a generator seeded with 0 for every input and both models, so they see the same latent
# numbers; raw samples. Per input we record the paper's per-pixel artifact rate (outside
# [−0.5, 1.5] or non-finite), the share of *exploding* samples (non-finite, or max |x| > 10³),
# max |x|, the non-finite count and the smallest scale used.

# %%
N_SR = mf.pick(8, 4)
inputs = sets


def sr_ood(m, label):
    """Artifact summary of one SR model at T = 0.9 on every input of every group: {(group, name): summary}."""
    out = {}
    for (g, name), inp in tqdm([((g, n), i) for g, group in inputs.items() for n, i in group.items()], desc=label):
        assert 0 <= inp.lr.min() and inp.lr.max() <= 1  # valid images only, here
        raw, smin, sec = sample_sr(m, inp.lr, N_SR, 0.9)
        rep = metrics.artifact_report(raw, smin)
        out[(g, name)] = rep["summary"] | {"sec": sec, "rate": rep["fraction"].mean().item()}
    return out


ood = {k: sr_ood(m, k) for k, m in sr.items()}

print(f"{'group':<12}{'input':<24}" + "".join(f"{k + ' rate':>13}{'expl.':>7}{'max|x|':>10}{'non-fin':>9}{'min s':>9}" for k in sr))
for key in ood["affine"]:
    line = f"{key[0]:<12}{key[1]:<24}"
    for k in sr:
        r = ood[k][key]
        line += f"{r['rate']:>13.2e}{r['explosions']:>7.0%}{r['max_abs']:>10.3g}{r['nonfinite']:>9d}{r['min_scale']:>9.1e}"
    print(line)

# %%
OOD_GROUPS = ("content", "degradation", "benign")
def per_group(res, key):
    """Mean of one summary entry per input group."""
    return {g: statistics.mean(r[key] for (gg, _), r in res.items() if gg == g) for g in inputs}


group_rate = {k: per_group(ood[k], "rate") for k in sr}
group_expl = {k: per_group(ood[k], "explosions") for k in sr}
for g in inputs:
    print(f"{g:<12} artifact rate: affine {group_rate['affine'][g]:.2e}, spline {group_rate['spline'][g]:.2e};  "
          f"exploding samples: affine {group_expl['affine'][g]:.0%}, spline {group_expl['spline'][g]:.0%}")
spline_max = max(r["max_abs"] for r in ood["spline"].values())
spline_nonfinite = sum(r["nonfinite"] for r in ood["spline"].values())
print(f"spline, all inputs: max|x| {spline_max:.3g}, non-finite values {spline_nonfinite}")

# %% [markdown]
# What we expect on these inputs: (1) on every input, the spline model produces no non-finite
# value and its max |x| stays below 10; (2) the affine model explodes on the degradation set;
# (3) the spline's per-pixel artifact rate is at most a tenth of the affine model's, which we check
# per out-of-distribution group.

# %%
for key, r in ood["spline"].items():
    assert r["nonfinite"] == 0 and r["max_abs"] < 10, f"spline on {key}: max|x| {r['max_abs']:.3g}, non-finite {r['nonfinite']}"
assert group_expl["affine"]["degradation"] > 0, "the affine model was expected to explode on the degradation set"
tenth = {g: group_rate["spline"][g] <= group_rate["affine"][g] / 10 for g in OOD_GROUPS}
print("(1) spline finite and below 10 on every input: holds;  (2) affine explodes on the degradation set: holds")
print("(3) spline rate <= affine rate / 10:", {g: "yes" if ok else "no" for g, ok in tenth.items()})
pooled = {k: statistics.mean(r["rate"] for key, r in ood[k].items() if key[0] in OOD_GROUPS) for k in sr}
print(f"    (pooled over all out-of-distribution inputs, for information: affine {pooled['affine']:.3g}, spline {pooled['spline']:.3g})")
worst_input = max((key for key in ood["spline"] if key[0] == "content"), key=lambda key: ood["spline"][key]["rate"])
print(f"    the spline's worst input: {worst_input[1]}, rate {ood['spline'][worst_input]['rate']:.3g}, max|x| {ood['spline'][worst_input]['max_abs']:.3g}")

# %% [markdown]
# Expectations (1) and (2) hold, and (3) holds for the degradation and benign groups by orders of
# magnitude, but **not for the content group**, and one input is responsible: the 1-pixel LR
# checkerboard. There the spline model never explodes (max |x| about 2.2, nothing non-finite), yet
# about 30 % of its pixels lie outside [−0.5, 1.5], so the paper's per-pixel criterion counts them
# all. The cell below shows that this is not sampling noise: at temperature 0, i.e. the image of
# z = 0, one deterministic answer, the overshoot is the same. Faced with an input that carries all its
# energy at the Nyquist frequency, the spline model rings: a deterministic, bounded error. It is
# the "bounded, yet wrong" failure of the toy, seen through a criterion that cannot tell an
# overshoot to 2 from an explosion to 10³⁷. That is why the course reports max |x| and the
# explosion flag beside the per-pixel rate.

# %%
assert not tenth["content"] and tenth["degradation"] and tenth["benign"]
assert worst_input[1] == "checker_1px"
chk = inputs["content"]["checker_1px"]
cold_chk = {T: sample_sr(sr["spline"], chk.lr, 2, T)[0] for T in (0.0, 0.9)}
for T, x in cold_chk.items():
    print(f"spline on checker_1px at T = {T}: values in [{x.min():.2f}, {x.max():.2f}], artifact pixels {metrics.artifact_mask(x).float().mean():.1%}")
assert metrics.artifact_mask(cold_chk[0.0]).float().mean() > 0.1 and cold_chk[0.0].abs().max() < 10
fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14, 4))
ax0.imshow(chk.lr.permute(1, 2, 0)[:16, :16], interpolation="nearest")
ax0.set(title="LR input (16x16 corner)", xticks=[], yticks=[])
ax1.imshow(cold_chk[0.0][0].clamp(0, 1).permute(1, 2, 0)[:64, :64], interpolation="nearest")
ax1.set(title="spline output at T = 0 (64x64 corner, clamped)", xticks=[], yticks=[])
ax2.hist(cold_chk[0.0][0].flatten().numpy(), bins=100, color=COLORS["spline"])
for v in (metrics.ARTIFACT_LOW, metrics.ARTIFACT_HIGH):
    ax2.axvline(v, color="k", ls="--", lw=1)
ax2.set(title="its raw values; dashed: the artifact bounds", xlabel="pixel value", ylabel="count")
plt.tight_layout()
plt.show()

# %%
fig, ax = plt.subplots(figsize=(9, 4))
xs_g = torch.arange(len(inputs), dtype=torch.float32)
floor_rate = 1e-7  # zero rates drawn at this floor
for off, k in ((-0.2, "affine"), (0.2, "spline")):
    ax.bar(xs_g + off, [max(group_rate[k][g], floor_rate) for g in inputs], width=0.4, color=COLORS[k], label=k)
ax.set_yscale("log")
ax.set_xticks(xs_g, list(inputs))
ax.set(title=f"per-pixel artifact rate at T = 0.9 ({N_SR} samples per input)", xlabel="input group (data.ood_sets)", ylabel="artifact rate (zero drawn at 1e-7)")
ax.legend()
plt.show()

# %% [markdown]
# One input the affine model cannot handle, side by side (values clamped for display only; red
# marks pixels that break the artifact criterion in the raw sample).

# %%
SHOW_INPUT = ("degradation", "coffee/nearest")
inp = inputs[SHOW_INPUT[0]][SHOW_INPUT[1]]
fig, axes = plt.subplots(1, 4, figsize=(16, 4.3))
axes[0].imshow(inp.lr.permute(1, 2, 0), interpolation="nearest")
axes[0].set_title(f"LR input: {SHOW_INPUT[1]}")
for ax, k in zip(axes[1:3], sr):
    raw, _, _ = sample_sr(sr[k], inp.lr, 1, 0.9)
    img = raw[0].nan_to_num(0.0).clamp(0, 1).permute(1, 2, 0).clone()
    mask = metrics.artifact_mask(raw[0])
    img[mask] = torch.tensor(to_rgb("red"))
    ax.imshow(img)
    ax.set_title(f"{k}, T = 0.9: {mask.float().mean():.1%} artifact pixels", color=COLORS[k])
axes[3].imshow(inp.hr.permute(1, 2, 0))
axes[3].set_title("HR (truth)")
for ax in axes:
    ax.set(xticks=[], yticks=[], xlabel="")
fig.suptitle("the same input, the same latent seed, two couplings")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 4c. The fully bounded spline, trained
#
# Section 3c bounded the spline's two unbounded outputs, d and t, on the toy. On SR we trained a
# third model with `FullyBoundedSpline` in every injector and coupling (`--coupling
# fully_bounded_spline`), with the same command, seed and number of steps as the other two. First
# the same questions as in 4a and 4b: quality in distribution, and artifacts on every valid input.

# %%
sr["spline_full"] = load_pretrained("sr_spline_full", device=device)
man = sr["spline_full"].manifest
print(f"spline_full: {man['steps']} steps, seed {man['seed']}, train wall {man['wall_time_s']:.0f} s; {man['command']}")
assert man["steps"] == sr["spline"].manifest["steps"] and man["seed"] == sr["spline"].manifest["seed"]
quality["spline_full"] = sr_quality(sr["spline_full"])
ood["spline_full"] = sr_ood(sr["spline_full"], "spline_full")
group_rate["spline_full"], group_expl["spline_full"] = per_group(ood["spline_full"], "rate"), per_group(ood["spline_full"], "explosions")
print(f"{'model':>12} {'bpd':>6} {'PSNR of mean':>13} {'LR-PSNR':>8}" + "".join(f"{'art. ' + g:>18}" for g in inputs) + f"{'max|x|, all':>12}")
for k in sr:
    q = quality[k]
    print(f"{k:>12} {q['bpd']:>6.3f} {q['psnr_mean']:>13.2f} {q['lr_psnr']:>8.2f}" + "".join(f"{group_rate[k][g]:>18.2e}" for g in inputs)
          + f"{max(r['max_abs'] if r['nonfinite'] == 0 else math.inf for r in ood[k].values()):>12.3g}")  # fmt: skip
gap_full = quality["spline_full"]["psnr_mean"] - quality["affine"]["psnr_mean"]
tenth_full = {g: group_rate["spline_full"][g] <= group_rate["affine"][g] / 10 for g in OOD_GROUPS}
print(f"fully bounded - affine: {gap_full:+.2f} dB (PSNR of mean); rate <= affine / 10:", {g: "yes" if ok else "no" for g, ok in tenth_full.items()})

# %%
for key, r in ood["spline_full"].items():
    assert r["nonfinite"] == 0 and r["max_abs"] < 10, f"spline_full on {key}: max|x| {r['max_abs']:.3g}"
assert gap_full >= -0.5, f"the fully bounded spline model is {-gap_full:.2f} dB worse in distribution"
assert all(tenth_full.values())

# %% [markdown]
# Bounding d and t costs nothing here. The fully bounded model matches the paper's spline in
# distribution (bits per dim, PSNR and LR-PSNR within a few hundredths), so it too is *better* than
# the affine model, and the two-sided "within 0.5 dB" misses in its favour as it does for the
# paper's spline. Out of distribution it is, if anything, a little tamer: its largest value over
# all valid inputs is about 2, nothing is non-finite, and its artifact rate is at most a tenth of
# the affine model's in *every* group, the content group included, where the paper's spline missed
# the bound because of the 1-pixel checkerboard (the ringing is still there, a bit weaker). The two
# spline models' training wall times in the manifests were measured on a shared machine under
# different loads; `benchmarks/bench_coupling.py` compares the step costs fairly.

# %% [markdown]
# ### 4d. Beyond valid images: the paper's spline, and the fully bounded one
#
# The expectations above are about valid images. The paper's spline model can still be broken by
# inputs outside [0, 1]: contrast stretched x8 and x16 about 0.5 *without clamping*
# (`data.contrast(..., clamp=False)`), LR values from −3.5 to 4.5 and −7.5 to 8.5. First at the
# layer level, feeding the *same* extreme inputs' conditioner outputs to both bijections; then on
# the whole models.

# %%
EXTREME = {f"contrast x{c}": data.contrast(reference["coffee"].lr, float(c), clamp=False) for c in (8, 16)}
EXTREME = {"coffee as is": reference["coffee"].lr, **{f"coffee {k} unclamped": v for k, v in EXTREME.items()}}
m_sp = sr["spline"]
paper, full = mf.BoundedSpline(), mf.FullyBoundedSpline()
LOG_MAX = math.log(torch.finfo(torch.float32).max)


def injector_params(model, lr):
    """Raw conditioner outputs (..., 4) = (a, h, d, t) of every injector of `model` for one LR image."""
    feats = model.condition(lr[None].to(device))
    sizes = sorted(feats, key=lambda hw: -hw[0] * hw[1])  # level 0 first
    level, out = -1, []
    for layer in model.layers:
        level += isinstance(layer, mf.Squeeze)
        if isinstance(layer, mf.Injector):
            x0 = torch.zeros(1, layer.channels, *sizes[level], device=device)
            out.append(layer.conditioner_output(x0, feats))
    return out


print(f"{'input':<30}{'LR range':>16}{'max d':>8}{'max |t|':>9}{'d > 88.7':>10}   inverse of z ~ N(0, 0.81): max|x - z|  paper / fully bounded")
layer_level = {}
for name, lr_x in EXTREME.items():
    with torch.no_grad():
        ps = injector_params(m_sp, lr_x)
        z_gen = torch.Generator(device).manual_seed(0)
        worst = {"paper": 0.0, "full": 0.0}
        for p in ps:
            z = 0.9 * torch.randn(p.shape[:-1], generator=z_gen, device=device)
            for key, bij in (("paper", paper), ("full", full)):
                dx = (bij.inverse(z, p)[0] - z).abs()
                worst[key] = max(worst[key], math.inf if not torch.isfinite(dx).all() else dx.max().item())
    d_all, t_all = torch.cat([p[..., 2].flatten() for p in ps]), torch.cat([p[..., 3].flatten() for p in ps])
    layer_level[name] = {"d": d_all.max().item(), "t": t_all.abs().max().item(), "overflow": int((d_all > LOG_MAX).sum()), **worst}
    r = layer_level[name]
    print(f"{name:<30}{f'[{lr_x.min():.1f}, {lr_x.max():.1f}]':>16}{r['d']:>8.3g}{r['t']:>9.3g}{r['overflow']:>10d}   {r['paper']:>12.3g} / {r['full']:.3g}")

# %%
assert layer_level["coffee as is"]["overflow"] == 0
assert all(r["full"] <= full.max_shift + 2 * full.bound + 1e-4 for r in layer_level.values())
print(f"fully bounded: every injector moves every element by at most t_max + 2B = {full.max_shift + 2 * full.bound:g}, on every input")

# %% [markdown]
# At the layer level the difference is what the construction promises. On the stretched inputs
# the injectors' raw outputs grow roughly in proportion to the stretch (d up to about 40 and t up
# to about 40 at x16, against 1.6 and 3 on the photo as is); the paper's spline passes the shift
# straight through and moves elements by up to |t|, while the fully bounded spline, given the very
# same raw outputs, moves no element by more than 4. No injector reaches the overflow point
# d = 88.7 here: whether the whole model survives depends on what happens downstream.
#
# Now the whole models, the trained fully bounded one included.

# %%
candidates = {"affine": sr["affine"], "spline (paper)": m_sp, "spline, fully bounded": sr["spline_full"]}
N_EXT = mf.pick(4, 2)
extreme = {}
for name, lr_x in tqdm(EXTREME.items(), desc="extreme inputs"):
    for k, m in candidates.items():
        raw, smin, _ = sample_sr(m, lr_x, N_EXT, 0.9)
        rep = metrics.artifact_report(raw, smin)["summary"]
        extreme[(name, k)] = rep
print(f"{'input':<30}{'model':<24}{'max|x|':>10}{'non-finite':>12}{'exploding':>10}{'artifact rate':>14}")
for (name, k), rep in extreme.items():
    print(f"{name:<30}{k:<24}{rep['max_abs']:>10.3g}{rep['nonfinite']:>12d}{rep['explosions']:>10.0%}{rep['artifact_fraction']:>14.2e}")

# %%
x16 = "coffee contrast x16 unclamped"
for name in EXTREME:
    r = extreme[(name, "spline, fully bounded")]
    assert r["nonfinite"] == 0 and r["max_abs"] < 10, name
assert extreme[(x16, "spline (paper)")]["explosions"] > 0
cond16 = EXTREME[x16][None].expand(N_EXT, -1, -1, -1).contiguous().to(device)
_, rows16 = sr["spline"].trace(cond16, temperature=0.9, generator=torch.Generator(device).manual_seed(0))
first_bad = next(r for r in rows16 if r["nonfinite"] > 0)  # rows are in sampling order
print("the paper's spline on x16, sampling pass (split priors and the first non-finite layer):")
print(mf.format_trace([rows16[0]] + [r for r in rows16 if r["name"] == "Split" or r is first_bad]))

# %% [markdown]
# The paper's spline model survives x8 but explodes at x16, and the trace shows the chain of
# events. The injectors' shifts t (up to about 40 here) carry the activations far out; SRFlow's
# *split prior*, which reads only the kept half of the latent, then turns those large values into a
# large log-standard-deviation and multiplies by its exponential (max |x| jumps from tens to
# hundreds at the first split and to millions or more at the second); finally a coupling sees
# inputs that large, its d passes 88.7 and exp(d) overflows. With shifts bounded by 3 per layer,
# nothing in that chain starts, and every sample of the fully bounded model stays below 10. Note
# what this says about priors: even SRFlow's unconditional split prior is a learned scale on the
# sampling path; it is safe only as long as what it reads stays in range.

# %% [markdown]
# ## 5. The other remedies, on the same axes
#
# Splines are not the only proposed fix. On the toy (same task, seeds 0–2, 2000 steps each,
# `python -m minflow train-toy --coupling NAME`), four affine variants that change only the scale s(h):
#
# - **softclamp**: log s = c·(2/π)·atan(h / c), c = 2 (HCFlow, FrEIA): s ∈ (e⁻², e²), so one
#   coupling's sampling slope is at most e² ≈ 7.4, and four of them at most e⁸ ≈ 3000;
# - **tanh**: log s = c·tanh(h / c), the same bounds with another squashing curve;
# - **reparam**: the coupling multiplies by 1 / (sigmoid(h + 2) + ε) in the density direction, so
#   *sampling* multiplies by sigmoid(h + 2) + ε ≤ 1 + ε: the sampling slope is bounded by ~1, and
#   it is the density direction that may stretch;
# - **additive**: s = 1 (NICE), slope 1 both ways; only the shift depends on the condition.

# %%
REMEDIES = ["softclamp", "tanh", "reparam", "additive"]
REMEDY_SEEDS = [0, 1, 2]
for kind in REMEDIES:
    models[kind] = load_family(kind, REMEDY_SEEDS)
    results[kind] = {s: evaluate_toy(m) for s, m in tqdm(models[kind].items(), desc=kind)}
toy_table(REMEDIES, REMEDY_SEEDS)
for kind in REMEDIES:
    for s in REMEDY_SEEDS:
        r = results[kind][s]
        assert true_s / 2 < r["in_spread"] < 2 * true_s and r["in_nonfinite"] == 0, (kind, s)

# %%
fig, axes = plt.subplots(2, 2, figsize=(13, 7), sharex=True, sharey=True)
for ax, kind in zip(axes.flat, REMEDIES):
    angles = [r["angle"] for r in results[kind][0]["rings"][toy.FAR_OOD_RADIUS]]
    for i, s in enumerate(SEEDS[:3]):
        ax.semilogy(angles, results["affine"][s]["ratios"][toy.FAR_OOD_RADIUS], ".", ms=1.5, color=shade("affine", i, len(SEEDS)), alpha=0.35)
    for i, s in enumerate(REMEDY_SEEDS):
        rat = results[kind][s]["ratios"][toy.FAR_OOD_RADIUS]
        ax.semilogy(angles, [v if math.isfinite(v) else 1e8 for v in rat], ".", ms=2.5, color=shade("other", i, 3), label=f"{kind}, seed {s}")
    ax.axhline(10, color="k", ls="--", lw=1)
    ax.set(title=f"{kind} (yellow) vs affine (faint red)", ylim=(1e-3, 3e8))
    ax.legend(fontsize=8, loc="upper right", markerscale=3)
for ax in axes[1]:
    ax.set_xlabel("direction of y (degrees)")
for ax in axes[:, 0]:
    ax.set_ylabel("spread / in-distribution")
fig.suptitle(f"the other remedies at |y| = {toy.FAR_OOD_RADIUS:g}, seeds 0-2")
plt.tight_layout()
plt.show()
remedy_far = {kind: {s: results[kind][s]["far_ratio"] for s in REMEDY_SEEDS} for kind in REMEDIES}
print("far ratio per seed:", {k: {s: f"{v:.3g}" for s, v in d.items()} for k, d in remedy_far.items()})

# %% [markdown]
# What the numbers say:
#
# - **softclamp / tanh** do what their bound promises and no more. Far out, their smallest s sits
#   at the clamp, e⁻² ≈ 0.14, and several models still spread 20–40x wider than in distribution:
#   a ceiling of 7.4 per coupling, compounded over four couplings and the conditioner's dependence
#   on x_a, is far below 10⁴ but not small. A tighter clamp would cost expressiveness (in
#   distribution they fit best of all the variants: see the NLL column).
# - **reparam** bounds the sampling slope itself (≤ 1 + ε per coupling) and stays within a few
#   times the in-distribution spread. Its price sits in the other direction: the density pass may
#   now stretch by up to 10⁴, and one of its three training runs fitted clearly worse (NLL +0.39
#   against about −0.3).
# - **additive** has slope 1 both ways; far out it behaves like the spline (ratio ≤ 1), and like
#   the spline it fits the thin parallelogram less well than the affine variants (NLL ≈ −0.19).

# %%
assert all(v <= 10 for k in ("reparam", "additive") for v in remedy_far[k].values())
assert any(v > 10 for k in ("softclamp", "tanh") for v in remedy_far[k].values())
assert all(results[k][s]["far"]["min_scale"] > math.exp(-2) * 0.99 for k in ("softclamp", "tanh") for s in REMEDY_SEEDS)
print("bounded sampling slopes (reparam, additive) stay within 10x; soft clamps cap s at e^-2 but can still spread > 10x")

# %% [markdown]
# ### 5b. The second exploding path: a prior whose variance depends on the condition
#
# Every coupling above could be made safe, and the model can still explode: through its *prior*.
# SRFlow's split prior reads only the kept half of the latent, and its top prior is N(0, I). A
# natural "improvement" lets the prior read the condition too, N(μ(y), σ(y)²) with log σ(y) from a
# network — and that puts a condition-dependent scale back into the sampling path, multiplying by
# σ(y), with no bound at all.
#
# We build that model from course parts, on top of the fully bounded spline flows of section 3c
# (the safest couplings we have): a conditional Gaussian prior is exactly one more layer in the
# density direction, z' = (z + t(y)) · exp(h(y)), i.e. an `Injector` with an unbounded ("exp")
# affine scale, whose MLP reads y only; then z ~ N(−t(y), exp(−2h(y))). We keep the trained flow
# frozen and fit just the prior, by maximum likelihood on the flow's latents of fresh training pairs
# (a second training stage, so that nothing else changes; a few seconds).

# %%
PRIOR_STEPS = mf.pick(500, 200)


def with_conditional_prior(flow, seed):
    """flow (frozen) + a Gaussian prior N(mu(y), sigma(y)^2) fitted on its latents: a new ConditionalFlow."""
    prior = mf.Injector(2, 2, mf.Affine("exp"), kind="mlp", hidden=64, depth=4).to(device)
    g = torch.Generator().manual_seed(seed)
    x, y = toy.sample_toy(20_000, g, device)
    with torch.no_grad():
        z_flow, _ = flow(x, y)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-3)
    for _ in range(PRIOR_STEPS):
        idx = torch.randint(len(z_flow), (512,), generator=g).to(device)
        z, logdet = prior(z_flow[idx], y[idx])
        loss = -(mf.gaussian_log_prob(z) + logdet).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mf.ConditionalFlow([*flow.layers, prior], event_shape=(2,)).eval()


models["spline_bounded+cond. prior"] = {s: with_conditional_prior(m, s) for s, m in tqdm(models["spline_bounded"].items(), desc="fitting priors")}
results["spline_bounded+cond. prior"] = {s: evaluate_toy(m) for s, m in models["spline_bounded+cond. prior"].items()}
toy_table(["spline_bounded", "spline_bounded+cond. prior"])

# %%
cp = results["spline_bounded+cond. prior"]
for s in SEEDS:
    assert true_s / 2 < cp[s]["in_spread"] < 2 * true_s and cp[s]["in_nonfinite"] == 0  # fine in distribution...
    assert cp[s]["far_ratio"] > 10, f"seed {s}: {cp[s]['far_ratio']:.3g}"  # ...and it explodes far out, in every seed
print("a condition-dependent prior variance explodes even with fully bounded spline couplings:",
      {s: f"{cp[s]['far_ratio']:.3g}" for s in SEEDS})

# %% [markdown]
# In distribution the prior learned what it should (σ ≈ 1, and the NLL is that of the flow alone),
# and far out of distribution it explodes in every seed: no coupling is involved, the stretch is
# exp(−h(y)) applied to the latent before the first coupling even runs.
#
# #### On SR
#
# The same door exists in SRFlow. Its split priors read only the kept half of the latent; with
# `--prior conditional` they also read the LR features at their level, so log σ is a learned
# function of the condition. We trained this variant on top of the safest couplings we have: the
# fully bounded spline model of section 4c, changed in the prior only (same command otherwise, same
# seed and steps). Every input of sections 4b and 4d, both models, the same latent seed; a hook on
# each split prior records the largest σ it used.

# %%
sr_cp = load_pretrained("sr_spline_full_cprior", device=device)
assert sr_cp.manifest["config"] == sr["spline_full"].manifest["config"] | {"prior": "conditional"}
assert sr_cp.manifest["steps"] == sr["spline_full"].manifest["steps"] and sr_cp.manifest["seed"] == sr["spline_full"].manifest["seed"]
prior_log_std = []
hooks = [layer.prior.register_forward_hook(lambda mod, inp, out: prior_log_std.append(out[:, 1::2].max().item()))
         for layer in sr_cp.layers if isinstance(layer, mf.Split)]  # fmt: skip
all_inputs = {**{(g, n): inp.lr for g, group in inputs.items() for n, inp in group.items()}, **{("extreme", n): v for n, v in EXTREME.items()}}
prior_path = {}
for key, lr_x in tqdm(all_inputs.items(), desc="conditional prior"):
    prior_log_std.clear()
    raw, smin, sec = sample_sr(sr_cp, lr_x, N_SR, 0.9)
    log10_sigma = max(prior_log_std) / math.log(10)  # as a power of ten: exp would overflow
    base = ood["spline_full"].get(key) or extreme[(key[1], "spline, fully bounded")]
    rep = metrics.artifact_report(raw, smin)
    prior_path[key] = {"cprior": rep["summary"] | {"sec": sec, "rate": rep["fraction"].mean().item()}, "log10_sigma": log10_sigma, "base": base}
for h in hooks:
    h.remove()
print(f"{'group':<12}{'input':<32}{'max σ of the prior':>20}{'max|x| cond. prior':>20}{'exploding':>10}{'max|x| SRFlow prior':>21}")
for (g, n), r in prior_path.items():
    c, b = r["cprior"], r["base"]
    print(f"{g:<12}{n:<32}{'10^' + format(r['log10_sigma'], '.1f'):>20}{c['max_abs'] if c['nonfinite'] == 0 else math.inf:>20.3g}{c['explosions']:>10.0%}{b['max_abs']:>21.3g}")
q_cp = sr_quality(sr_cp)
print(f"in distribution: bpd {q_cp['bpd']:.3f}, PSNR of mean {q_cp['psnr_mean']:.2f} dB (SRFlow prior: {quality['spline_full']['bpd']:.3f}, {quality['spline_full']['psnr_mean']:.2f} dB)")
CP = "spline_full+cond. prior"  # a row of its own in the table of section 6
sr[CP], quality[CP] = sr_cp, q_cp
ood[CP] = {key: r["cprior"] for key, r in prior_path.items() if key[0] != "extreme"}
group_rate[CP], group_expl[CP] = per_group(ood[CP], "rate"), per_group(ood[CP], "explosions")

# %%
valid = {key: r for key, r in prior_path.items() if key[0] != "extreme"}
worst_valid = max(valid, key=lambda key: valid[key]["cprior"]["max_abs"])
for key in reference:
    assert prior_path[("reference", key)]["cprior"]["max_abs"] < 10  # fine in distribution
assert all(r["base"]["max_abs"] < 10 for r in valid.values())  # the same couplings with SRFlow's prior: bounded everywhere
assert valid[worst_valid]["cprior"]["max_abs"] > 10 and valid[worst_valid]["log10_sigma"] > 1
assert all(r["cprior"]["nonfinite"] > 0 and r["base"]["nonfinite"] == 0 for key, r in prior_path.items() if key[0] == "extreme" and key[1] != "coffee as is")
print(f"worst valid input with the conditional prior: {'/'.join(worst_valid)}, prior σ up to 10^{valid[worst_valid]['log10_sigma']:.1f}, "
      f"max|x| {valid[worst_valid]['cprior']['max_abs']:.3g} (SRFlow prior: {valid[worst_valid]['base']['max_abs']:.3g})")

# %% [markdown]
# In distribution the conditional prior changes nothing that matters: σ ≈ 1, the same quality.
# Out of distribution it reopens the door the couplings had closed. On valid images it is not an
# explosion yet, but the bound of section 4c breaks: on the contrast-stretched photos and the
# uniform noise the prior's σ climbs to 10¹–10³, and the samples follow it (max |x| up to about
# 80, where the same couplings with SRFlow's prior stay below 2). On the unclamped inputs of
# section 4d, which the fully bounded spline survived with values below 6, the prior's log σ is a
# linear function of huge features: σ overflows, and every sample is NaN. Every
# condition-dependent scale on the sampling path needs a bound,
# the prior's included; a σ(y) read through a bounded function (like the couplings' 3·tanh) would
# close this door too.

# %% [markdown]
# ## 6. The tables
#
# ### Toy
#
# One row per family (median over its seeds; worst seed in brackets where it matters). The toy's
# "OOD sets" are the rings of 360 directions at |y| = 10, 100 and 1000; a direction counts as an
# artifact when its spread exceeds 10x the in-distribution spread or a sample is not finite.
# "Max σ" is the largest singular value of the sampling Jacobian at the worst far-OOD direction:
# the maximum inverse amplification (NaN when that direction's samples are not finite).

# %%
def median(v):
    return statistics.median(v)


head = ["family", "seeds", "NLL", "in spread", *[f"art. |y|={R:g}" for R in RING_RADII], "far ratio (worst)", "max σ", "ms/1e5"]
rows = []
for kind, res in results.items():
    sd = list(res)
    art = {R: median([sum(not v <= 10 for v in res[s]["ratios"][R]) / len(res[s]["ratios"][R]) for s in sd]) for R in RING_RADII}
    far = [res[s]["far_ratio"] for s in sd]
    sv = [res[s]["far"]["max_sv"] if res[s]["far"]["nonfinite"] == 0 else math.nan for s in sd]
    rows.append([kind, f"{sd[0]}-{sd[-1]}", f"{median([res[s]['val_nll'] for s in sd]):.3f}", f"{median([res[s]['in_spread'] for s in sd]):.3f}",
                 *[f"{art[R]:.0%}" for R in RING_RADII], f"{median(far):.3g} ({max(far):.3g})",
                 f"{median(sv):.3g}" if all(math.isfinite(v) for v in sv) else "NaN", f"{1000 * median([res[s]['time'] for s in sd]):.0f}"])  # fmt: skip
widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
for r in rows:
    print("  ".join(c.rjust(w) for c, w in zip(r, widths)))

# %% [markdown]
# ### Super-resolution
#
# In-distribution quality at T = 0.7 (section 4a), per-pixel artifact rate per input group at
# T = 0.9 (section 4b; "reference" is in distribution, shown for comparison), the share of
# exploding samples over the out-of-distribution groups, the largest 1/(smallest slope) over all
# inputs (the maximum inverse amplification for affine layers; an overstatement for splines, see
# section 3d), and the sampling time per 256x256 sample on this machine. The last row is the
# fully bounded spline model with the conditional split prior of section 5b.

# %%
head = ["model", "bpd", "PSNR mean", "PSNR", "SSIM", "LR-PSNR", "diversity", *[f"art. {g}" for g in inputs], "exploding (OOD)", "max 1/slope", "s/sample"]
rows = []
for k in sr:
    q = quality[k]
    ood_keys = [key for key in ood[k] if key[0] in OOD_GROUPS]
    rows.append([k, f"{q['bpd']:.3f}", f"{q['psnr_mean']:.2f}", f"{q['psnr']:.2f}", f"{q['ssim']:.3f}", f"{q['lr_psnr']:.2f}", f"{q['diversity']:.4f}",
                 *[f"{group_rate[k][g]:.1e}" for g in inputs], f"{statistics.mean(ood[k][key]['explosions'] for key in ood_keys):.0%}",
                 f"{max(1 / r['min_scale'] for r in ood[k].values() if math.isfinite(r['min_scale'])):.3g}", f"{statistics.mean(r['sec'] for r in ood[k].values()):.2f}"])  # fmt: skip
widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
for r in rows:
    print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
print(f"bicubic PSNR {bic:.2f} dB; training wall time: " + ", ".join(f"{k} {m.manifest['wall_time_s']:.0f} s" for k, m in sr.items()))

# %% [markdown]
# ## Summary
#
# - The RQ spline is a few lines of algebra; outside its box it is the identity, so its inverse
#   moves a value by a bounded amount and never multiplies it (Remark 2).
# - On the toy, no spline model ever *amplifies* the spread far out of distribution. But the paper's
#   parameterisation has two unbounded outputs, exp(d) and t: at |y| = 1000 exp(d) overflows and
#   the samples become NaN in every seed, so it misses the 10x bound we expected on the toy.
#   Bounding both (`FullyBoundedSpline`) keeps every seed within it at the same fit, at a price:
#   with a bounded shift the far-OOD samples stay near the training data (bounded, and wrong).
# - On SR, on every valid input, the paper's spline model stays finite and below 2.3 where the
#   affine model explodes to 10³⁷ and NaN, with no loss of in-distribution quality (a gain, in fact,
#   which makes the literal two-sided "within 0.5 dB" miss in its favour). Its artifact rate is
#   below a tenth of the affine model's on the degradation and benign groups, not on the content
#   group, where a 1-pixel checkerboard makes it ring (bounded overshoot to about 2). On unclamped
#   extreme inputs it explodes through its shifts and the split prior. The SR model trained with
#   the fully bounded spline has the same quality, meets the tenth-of-the-rate bound in every group
#   and stays below 6 even on those extreme inputs.
# - Bounded affine scales help in proportion to their bound; the reparameterised and additive
#   couplings bound the sampling slope directly. None of this protects a prior whose variance is
#   read from the condition: on the toy it explodes in every seed, and on SR it takes the fully
#   bounded spline model from below 6 to NaN. Every condition-dependent scale on the sampling path
#   must be bounded.

# %% [markdown]
# ## Exercises
#
# The cell after each exercise holds a solution (a stub to fill in, in the student version) and the
# `check` cell after that tests the answer. Try it yourself first.
#
# **Exercise 1.** The displacement bound of section 2 for `FullyBoundedSpline`: draw 100 000 inputs
# z up to 10⁶ in size and truly wild raw parameters (a, h, d, t each ~ N(0, 1000²), no clamping
# this time) and compute `moved`, the largest |x − z| of its inverse. What bound do you expect?

# %% tags=["solution"] hint="build z_ex and p_ex with torch.randn/torch.rand and the generator gen, call mf.FullyBoundedSpline().inverse(z_ex, p_ex), then take the largest |x - z_ex|; the bound is max_shift + 2 * bound"
fb_layer = mf.FullyBoundedSpline()
z_ex = 10 ** (6 * torch.rand(100_000, generator=gen)) * torch.sign(torch.randn(100_000, generator=gen))
p_ex = 1000 * torch.randn(100_000, 4, generator=gen)
x_ex, _ = fb_layer.inverse(z_ex, p_ex)
moved = (x_ex - z_ex).abs().max().item()
print(f"largest move {moved:.3f}; bound max_shift + 2B = {fb_layer.max_shift + 2 * fb_layer.bound}")

# %% tags=["check"]
assert math.isfinite(moved) and moved <= fb_layer.max_shift + 2 * fb_layer.bound + 1e-3

# %% [markdown]
# **Exercise 2.** How small a cap on the paper's exponent d is enough? Repeat section 3c's test
# with `max_log_derivative=40` instead of 80 (shift still unbounded) and store the per-seed worst
# far-OOD ratio in `capped40`. Then explain why even 80 was enough although exp(80) ≈ 5·10³⁴.

# %% tags=["solution"] hint="reuse with_bijection(m, lambda: mf.FullyBoundedSpline(max_log_derivative=40.0, max_shift=1e30)) and the worst ratio(r, base) over toy.ring(..., radius=toy.FAR_OOD_RADIUS), as in section 3c"
capped40 = {}
for s, m in models["spline"].items():
    twin = with_bijection(m, lambda: mf.FullyBoundedSpline(max_log_derivative=40.0, max_shift=1e30))
    base = results["spline"][s]["in_spread"]
    capped40[s] = max(ratio(r, base) for r in toy.ring(twin, radius=toy.FAR_OOD_RADIUS, n=N_OOD))
print({s: f"{w:.3g}" for s, w in capped40.items()})
# exp(80) is finite in float32 (max ~3.4e38); the spline only needs its derivative to be finite:
# a huge interior derivative just makes the map a steep step inside the box, still bounded.

# %% tags=["check"]
assert all(v <= 10 for v in capped40.values())

# %% [markdown]
# **Exercise 3.** In the conditional-prior model of section 5b, the prior's standard deviation is
# σ(y) = exp(−h(y)). For seed 0, compute the largest σ over the 360 ring directions at |y| = 10,
# 100 and 1000 (hint: `prior.conditioner_output(x, cond)[..., 1]` gives h; the prior is the
# last layer of the flow and reads only y, so x can be zeros). Store the three values in `sigma_max`.

# %% tags=["solution"] hint="for each R in RING_RADII, ys = R * toy.ring_directions(); h = prior_layer.conditioner_output(torch.zeros_like(ys), ys)[..., 1]; sigma = exp(-h); keep its max"
prior_layer = models["spline_bounded+cond. prior"][0].layers[-1]
sigma_max = []
for R in RING_RADII:
    ys = (R * toy.ring_directions()).float().to(device)
    with torch.no_grad():
        h_ex = prior_layer.conditioner_output(torch.zeros_like(ys), ys)[..., 1]
    sigma_max.append(torch.exp(-h_ex).max().item())
print({R: f"{v:.3g}" for R, v in zip(RING_RADII, sigma_max)})

# %% tags=["check"]
assert sigma_max[0] < sigma_max[1] < sigma_max[2] and sigma_max[2] > 10

# %% [markdown]
# **Exercise 4.** Chapter 5 showed that lowering the temperature makes SR artifacts rarer. Does it
# rescue the affine model on `coffee/nearest`? Draw 2 samples at T = 0.5 from each SR model and
# store their max |x| in `cold` (a dict model -> value).

# %% tags=["solution"] hint="sample_sr(model, lr, 2, 0.5) returns the raw samples first; metrics.artifact_report(x)[\"summary\"][\"max_abs\"] gives max |x|"
lr_near = sets["degradation"]["coffee/nearest"].lr
cold = {k: metrics.artifact_report(sample_sr(m, lr_near, 2, 0.5)[0])["summary"]["max_abs"] for k, m in sr.items()}
print({k: f"{v:.3g}" for k, v in cold.items()})
# The spline model stays small; the affine one may still blow up: a smaller z does not undo a 1/s of 10^4.

# %% tags=["check"]
assert cold["spline"] < 10
