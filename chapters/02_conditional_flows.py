# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 2: Conditional flows
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minflow-course/minflow/blob/main/chapters/02_conditional_flows.ipynb)
#
# An inverse problem asks for *many* plausible answers x to one measurement y: a distribution
# p(x | y). A conditional normalizing flow learns it by letting every coupling read y. Here we build
# one on a 2D toy whose answer we know exactly, train it, draw samples for several y, and see what
# the sampling temperature does. The couplings use SRFlow's scale `sigmoid(h + 2) + 1e-4`; we end
# by asking why that choice makes training so well behaved, which is the door to chapter 3.

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

import matplotlib.pyplot as plt
import torch

import minflow as mf
from minflow import report, toy
from minflow.plotting import COLORS, style

style()
device = mf.get_device()  # cuda when available, else cpu
QUICK = mf.quick_mode()  # MINFLOW_QUICK=1 (set by `make test`) shortens training
gen = mf.seed_everything(0)  # the one place this chapter seeds
if device.type == "cpu":
    torch.set_num_threads(1)  # this model is tiny: extra threads only wait on each other
print(f"device={device}, quick={QUICK}")

# %% [markdown]
# ## 1. A toy inverse problem with a known answer
#
# The condition is a 2D vector y ~ N(0, I). Given y, the answer x is spread *uniformly* over a thin
# slanted parallelogram whose centre moves with y:
#
# $$x = A u + \tfrac12 y, \qquad u \sim \mathcal U[-1, 1]^2, \qquad A = \begin{pmatrix}1 & 0\\ 0.8 & 0.15\end{pmatrix}.$$
#
# So $E[x \mid y] = y/2$ and $\mathrm{Cov}[x \mid y] = A A^\top / 3$ for every y. The shape is
# hard for a flow on purpose: flat inside, sharp edges, long and thin. `minflow.toy` holds the
# sampler and the exact formulas; we check the one against the other before trusting either.

# %%
x, y = toy.sample_toy(100_000, gen)
resid = (x - toy.true_mean(y)).double()
print("true Cov[x | y]:\n", toy.true_cov().numpy().round(4))
print("sample covariance of x - y/2:\n", torch.cov(resid.T).numpy().round(4))
print(f"spread (root mean per-coordinate variance): sample {toy.spread(resid):.4f}, exact {toy.true_spread():.4f}")
assert torch.allclose(torch.cov(resid.T), toy.true_cov(torch.float64), atol=0.01)
assert toy.inside_fraction(x, y) == 1.0  # every sample lies in its own parallelogram
assert abs(toy.true_spread() - 0.53) < 0.005  # the text's "about 0.53"

# %% [markdown]
# Throughout the course, **spread** means one number: the square root of the mean per-coordinate
# variance of a set of samples (`toy.spread`). For the true conditional it is about 0.53, whatever y.
#
# Below, left: the conditions the model will be trained on. Right: x for three fixed y, with the
# true support drawn round each cloud.

# %%
Y_SHOW = [(-1.5, 1.5), (0.0, 0.0), (1.5, -1.5)]  # centres spaced across the slant
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
ax0.scatter(y[:2000, 0], y[:2000, 1], s=3, color=COLORS["data"], alpha=0.4)
ax0.set(title="conditions y ~ N(0, I)", xlabel="$y_1$", ylabel="$y_2$", aspect="equal")
for k, yy in enumerate(Y_SHOW):
    colour = f"C{k}"
    ax0.plot(*yy, "o", ms=9, mec="k", color=colour)
    yt = torch.tensor(yy).expand(1500, 2)
    xs = toy.sample_x(yt, gen)
    ax1.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.4, color=colour)
    c = toy.corners(yy)
    ax1.plot(*torch.cat([c, c[:1]]).T, color="k", lw=1)
    ax1.annotate(f"y = {yy}", c[2].tolist(), xytext=(5, 0), textcoords="offset points", color=colour)
ax1.set(title="x | y: uniform on a thin parallelogram centred at y/2", xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. A conditional flow
#
# The model is four steps of three layers each (the sampling direction runs them backwards):
#
# - **ActNorm**: a per-coordinate shift and scale, initialised from the first batch so that its
#   output is standardised;
# - **InvConv1x1**: an invertible 2x2 linear map (on images it is Glow's 1x1 convolution), so that
#   the coordinate a coupling leaves alone changes from step to step;
# - **Coupling**: keeps x_a = x[:, :1] and transforms the other coordinate element-wise,
#   z_b = (x_b + t) s, with (t, h) = NN([x_a, y]) and the scale s = sigmoid(h + 2) + 1e-4.
#
# The condition y enters *only* through the conditioners: that is all it takes to make a flow
# conditional. Each conditioner is an MLP (3 inputs, 4 hidden layers of 64, ReLU) whose last layer
# starts at zero, so at initialisation every coupling is the fixed contraction z_b = 0.88 x_b.

# %%
flow = toy.toy_flow("affine", flow_steps=4, hidden=64, depth=4).to(device)
print([type(layer).__name__ for layer in flow.layers])
print(flow.layers[2])
print(f"{sum(p.numel() for p in flow.parameters()):,} parameters")
assert [type(layer).__name__ for layer in flow.layers] == ["ActNorm", "InvConv1x1", "Coupling"] * 4  # four steps of three
linears = [m for m in flow.layers[2].net if isinstance(m, torch.nn.Linear)]
assert linears[0].in_features == 3 and len(linears) == 4 + 1 and all(m.out_features == 64 for m in linears[:-1])
assert all((m.weight == 0).all() and (m.bias == 0).all() for m in (layer.net[-1] for layer in flow.layers[2::3]))

# %% [markdown]
# ## 3. Training
#
# Maximum likelihood, exactly as for an unconditional flow, except that every batch brings its
# conditions along: minimise $-\log p(x \mid y)$ over fresh pairs (x, y). The best possible value
# is the entropy of the uniform law, $\log(\text{area}) = \log 0.6 \approx -0.51$ nats.

# %%
STEPS = mf.pick(2000, 500)
history = toy.train_toy(flow, STEPS, batch=512, learning_rate=1e-3, seed=0)
val = toy.validation_nll(flow)
print(f"{STEPS} steps; held-out NLL {val:.3f} nats (optimum {toy.TRUE_NLL:.3f}), gap {val - toy.TRUE_NLL:.3f} nats")
assert abs(toy.TRUE_NLL - math.log(0.6)) < 1e-6  # the area of the parallelogram is 0.6
assert 0 < val - toy.TRUE_NLL < 0.5, "the text says: above the optimum, but within half a nat of it"

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
window = 25
smooth = torch.tensor(history).unfold(0, window, 1).mean(1)
ax.plot(history, color=COLORS["affine"], alpha=0.25, lw=1, label="per step")
ax.plot(range(window - 1, len(history)), smooth, color=COLORS["affine"], label=f"mean of {window}")
ax.axhline(toy.TRUE_NLL, color=COLORS["data"], ls="--", label="optimum log 0.6")
ax.set(title="training the conditional flow", xlabel="step", ylabel="NLL (nats)", ylim=(toy.TRUE_NLL - 0.2, 2.0))
ax.legend()
plt.show()

# %% [markdown]
# The flow gets within half a nat of the optimum (the gap is printed above, and it shrinks with
# more steps). It cannot reach it: a flow built from smooth maps of a Gaussian has no perfectly
# sharp edges, so some mass always leaks past them.
#
# ## 4. Samples for several conditions
#
# One trained network now answers every y: we fix y, repeat it for each latent z ~ N(0, I) and run
# the flow backwards. The claim we check: for in-distribution y the samples have the true spread
# (within a factor of 2), sit around the true centre y/2, and nearly all lie in the true
# parallelogram (we allow a margin of half its size, since the learned edges are soft).

# %%
Y_IN = toy.IN_DIST_Y
N = 2000
fig, axes = plt.subplots(1, len(Y_IN), figsize=(3.2 * len(Y_IN), 3.6), sharex=True, sharey=True)
stats, rows = [], []
for ax, yy in zip(axes, Y_IN):
    xs = toy.sample_at(flow, yy, N, generator=gen).cpu()
    yt = torch.tensor(yy)
    s = toy.spread(xs)
    off = (xs.mean(0) - toy.true_mean(yt)).norm().item()
    inside, loose = toy.inside_fraction(xs, yt), toy.inside_fraction(xs, yt, margin=0.5)
    stats.append((s, off, loose))
    rows.append({"y": str(yy), "spread": s, "true": toy.true_spread(), "off": off, "inside": inside, "loose": loose})
    ax.scatter(xs[:, 0], xs[:, 1], s=2, alpha=0.3, color=COLORS["affine"], label="flow samples")
    c = toy.corners(yy)
    ax.plot(*torch.cat([c, c[:1]]).T, color=COLORS["data"], lw=1.5, label="true support")
    ax.set(title=f"y = {yy}", xlabel="$x_1$", xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
axes[0].set_ylabel("$x_2$")
axes[0].legend(loc="upper left", markerscale=4)
fig.suptitle("samples of the trained flow against the true support", y=1.02)
plt.tight_layout()
plt.show()
columns = [("y", "y", ""), ("spread", "spread", ".3f"), ("true", "true", ".3f"), ("|mean - y/2|", "off", ".3f"),
           ("inside", "inside", ".2f"), ("inside+50%", "loose", ".2f")]  # fmt: skip
print(report.format_table(rows, columns))

# %%
true_s = toy.true_spread()
for (s, off, loose), yy in zip(stats, Y_IN):
    assert true_s / 2 < s < 2 * true_s, f"y={yy}: spread {s:.3f} not within a factor 2 of {true_s:.3f}"
    assert off < 0.25, f"y={yy}: sample mean is {off:.3f} away from y/2"
    assert loose > 0.9, f"y={yy}: only {loose:.0%} of the samples near the true parallelogram"
print("in distribution: spread within a factor 2, centred at y/2, samples in the right place")

# %% [markdown]
# The learned density itself can be evaluated anywhere, which is the other half of what a flow
# offers. For one y, here is p(x | y) on a grid: high and roughly flat inside, falling off across
# the edges.

# %%
y_grid = (0.5, -0.5)
g = torch.linspace(-2.0, 2.0, 200)
gx, gy = torch.meshgrid(g, g, indexing="xy")
pts = torch.stack([gx.flatten(), gy.flatten()], 1)
with torch.no_grad():
    dens = flow.log_prob(pts.to(device), toy.as_cond(y_grid, len(pts), flow)).exp().cpu().view(200, 200)
fig, ax = plt.subplots(figsize=(5.5, 4.5))
im = ax.pcolormesh(gx, gy, dens, shading="auto")
c = toy.corners(y_grid)
ax.plot(*torch.cat([c, c[:1]]).T, color="w", lw=1, ls="--", label="true support")
fig.colorbar(im, ax=ax, label="p(x | y)")
ax.set(title=f"learned density for y = {y_grid}", xlabel="$x_1$", ylabel="$x_2$", aspect="equal")
ax.legend(loc="upper left")
plt.show()
cell = (g[1] - g[0]).item() ** 2
print(f"integral over the grid: {dens.sum().item() * cell:.3f} (1 if no mass escapes the grid)")

# %% [markdown]
# ## 5. Temperature
#
# Sampling at temperature T draws the latent from N(0, T² I) instead of N(0, I). SRFlow samples at
# T ≈ 0.9; LLFlow at T = 0, a single deterministic answer. Lower T pulls samples towards the
# image of z = 0, a "typical" point near the middle of the distribution; T = 0 gives exactly that
# point. The claims: T = 0 lands inside the parallelogram near its centre, and the spread grows
# with T.

# %%
y_t = (0.5, -0.5)
TEMPS = [0.0, 0.5, 0.8, 1.0]
fig, axes = plt.subplots(1, len(TEMPS), figsize=(3.2 * len(TEMPS), 3.6), sharex=True, sharey=True)
spreads, samples_t = [], {}
for ax, T in zip(axes, TEMPS):
    xs = toy.sample_at(flow, y_t, N, temperature=T, generator=gen).cpu()
    samples_t[T] = xs
    spreads.append(toy.spread(xs))
    c = toy.corners(y_t)
    ax.plot(*torch.cat([c, c[:1]]).T, color=COLORS["data"], lw=1.5)
    ax.scatter(xs[:, 0], xs[:, 1], s=3 if T else 60, alpha=0.3 if T else 1.0, color=COLORS["affine"])
    ax.set(title=f"T = {T}: spread {spreads[-1]:.2f}", xlabel="$x_1$", xlim=(-1.8, 2.2), ylim=(-2, 2), aspect="equal")
axes[0].set_ylabel("$x_2$")
fig.suptitle(f"sampling temperature, y = {y_t}", y=1.02)
plt.tight_layout()
plt.show()

# %%
x0 = samples_t[0.0][0]
centre = toy.true_mean(torch.tensor(y_t))
u0 = toy.to_u(x0[None], torch.tensor(y_t)[None])[0]
print(f"T = 0 sample {x0.numpy().round(3)}, centre {centre.numpy()}, parallelogram coordinates u = {u0.numpy().round(2)}")
print("spread by temperature:", dict(zip(TEMPS, [round(s, 3) for s in spreads])))
assert spreads[0] < 1e-6  # one point, repeated
assert u0.abs().max() < 1.0, "the T = 0 point should lie inside the support"
assert (x0 - centre).norm() < toy.true_spread(), "the T = 0 point should sit near the centre"
assert all(a < b for a, b in zip(spreads, spreads[1:])), "spread should grow with T"

# %% [markdown]
# ## 6. The SRFlow scale, and why training is so calm
#
# Each affine coupling multiplies x_b by s = sigmoid(h + 2) + ε with ε = 10⁻⁴. Three properties:
#
# 1. **s never exceeds 1 + ε.** In the density direction (x → z, the one training uses) every
#    coupling can shrink a coordinate but never stretch it by more than 1 + ε: whatever the
#    conditioner outputs, the slope of x_b ↦ (x_b + t) s is at most 1 + ε. The activations are
#    not bounded by what came in, though: the shift t is unbounded and can move them far. What
#    the scale cannot do is multiply them.
# 2. **The gradient is tame.** log s is smooth in h with slope at most 1, and the log-determinant
#    each coupling adds is at most log(1 + ε) ≈ 0: a coupling cannot buy likelihood by expanding.
# 3. **At initialisation s = sigmoid(2) ≈ 0.88**, a mild contraction, so the untrained flow is
#    already a sensible, well conditioned map.
#
# Compare the unclamped `exp(h)` scale (RealNVP, Glow): nothing stops s from becoming huge in the
# density direction, which is why those flows need clamps or careful initialisation.
#
# The catch is in the other direction. Sampling *divides* by s, and s can go down to ε: a single
# coupling may stretch its input by up to 1/ε = 10⁴. In distribution the learned s stays near its
# upper end, far from ε, as the histogram below shows. Chapter 3 asks what happens when y is not.

# %%
h = torch.linspace(-16, 8, 400)
affine = mf.Affine("sigmoid")
s_h, _ = affine.scale(h)
s_exp, _ = mf.Affine("exp").scale(h)
# the scales our trained flow actually uses, in distribution (sampling pass at many y)
_, yin = toy.sample_toy(N, gen, device)
with torch.no_grad(), mf.recording() as rec:  # records, per sample, the smallest s each coupling used
    flow.sample(yin, z=toy.latent(N, 1.0, gen, flow))
used = torch.cat([s.cpu() for _, s in rec.scales])

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
ax0.semilogy(h, s_h, color=COLORS["affine"], label="sigmoid(h + 2) + 1e-4 (SRFlow)")
ax0.semilogy(h, s_exp, color=COLORS["other"], ls="--", label="exp(h) (unclamped)")
ax0.axhline(1 + 1e-4, color="k", lw=0.8, ls=":")
ax0.axhline(1e-4, color="k", lw=0.8, ls=":")
ax0.text(-15.5, 1.4, "upper bound 1 + ε", fontsize=10)
ax0.text(-15.5, 1.4e-4, "floor ε = 1e-4", fontsize=10)
ax0.set(title="coupling scale s(h)", xlabel="conditioner output h", ylabel="s (log scale)", ylim=(5e-5, 1e3))
ax0.legend(loc="lower right")
ax1.hist(used.numpy(), bins=40, color=COLORS["affine"])
ax1.locator_params(axis="x", nbins=5)
ax1.set(title="s used while sampling, y in distribution", xlabel="s", ylabel="count (samples x couplings)")
plt.tight_layout()
plt.show()
print(f"in distribution the smallest s used is {used.min().item():.3f}; the median is {used.median().item():.3f}")
assert used.max() <= 1 + 1e-4 + 1e-6  # the bound holds by construction
assert used.min() > 0.01  # in distribution, two orders of magnitude or more above the floor
assert used.median() > 0.5  # "near its upper end"

# %% [markdown]
# ## Exercises
#
# The cell after each exercise holds a solution (a stub to fill in, in the student version) and the
# `check` cell after that tests the answer. Try it yourself first.
#
# **Exercise 1.** How much can one SRFlow coupling stretch its input in the *sampling* direction
# when h = -20? Compute `max_stretch = 1 / s(-20)` with `mf.Affine("sigmoid").scale`, and compare
# with the ceiling 1/ε.

# %% tags=["solution"] hint="mf.Affine('sigmoid').scale(torch.tensor(-20.0)) returns (s, log s); the sampling stretch is 1 / s"
s_m20, _ = mf.Affine("sigmoid").scale(torch.tensor(-20.0))
max_stretch = (1 / s_m20).item()
print(f"1 / s(-20) = {max_stretch:.1f}  (ceiling 1/eps = {1 / 1e-4:.0f})")

# %% tags=["check"]
assert 9000 < max_stretch <= 1e4

# %% [markdown]
# **Exercise 2.** The learned density of section 4 should integrate to one. Estimate
# $\int p(x \mid y)\,dx$ for y = (1, 1) by a Riemann sum on a grid over [-2.5, 3.5]² (the support
# is centred at (0.5, 0.5)). Store it in `total`.

# %% tags=["solution"] hint="a 300 x 300 torch.meshgrid over [-2.5, 3.5]², flow.log_prob(points, toy.as_cond((1.0, 1.0), len(points), flow)).exp(), summed and multiplied by the area of one grid cell"
g2 = torch.linspace(-2.5, 3.5, 300)
gx2, gy2 = torch.meshgrid(g2, g2, indexing="xy")
pts2 = torch.stack([gx2.flatten(), gy2.flatten()], 1).to(device)
with torch.no_grad():
    total = (flow.log_prob(pts2, toy.as_cond((1.0, 1.0), len(pts2), flow)).exp().sum() * (g2[1] - g2[0]) ** 2).item()
print(f"integral of p(x | y=(1, 1)) over the grid: {total:.3f}")

# %% tags=["check"]
assert abs(total - 1.0) < 0.05

# %% [markdown]
# **Exercise 3.** Lower temperatures give "cleaner" samples. Measure the fraction of samples
# strictly inside the true support (`toy.inside_fraction`, no margin) at T = 0.8 and T = 1.0 for
# y = (0.5, -0.5), using the samples of section 5. Why is the first larger, and what does it cost?

# %% tags=["solution"] hint="toy.inside_fraction(samples_t[T], torch.tensor(y_t)) for T = 0.8 and T = 1.0; compare the spreads of section 5 too"
yt5 = torch.tensor(y_t)
inside_08 = toy.inside_fraction(samples_t[0.8], yt5)
inside_10 = toy.inside_fraction(samples_t[1.0], yt5)
print(f"inside at T=0.8: {inside_08:.3f}, at T=1.0: {inside_10:.3f}")
# Cooler latents stay away from the Gaussian's tails, which the flow maps onto the soft edges and
# beyond; the price is a narrower distribution: the spread at T=0.8 is below the true spread.

# %% tags=["check"]
assert inside_08 >= inside_10
assert spreads[TEMPS.index(0.8)] < spreads[TEMPS.index(1.0)]
assert spreads[TEMPS.index(0.8)] < toy.true_spread()  # the comment's "below the true spread"

# %% [markdown]
# **Exercise 4.** The true conditional mean is y/2, a straight line in y. Estimate the model's
# mean of x | y for y = (r, 0) at r = -2, -1, 0, 1, 2 from 2000 samples each, and fit the slope of
# its first coordinate against r (it should be near 0.5). Store it in `slope`.

# %% tags=["solution"] hint="the mean of toy.sample_at(flow, (r, 0.0), 2000, generator=gen) for each r; the least-squares slope is Σ(r - r̄)(m - m̄) / Σ(r - r̄)² on the first coordinate m"
rs = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
means = torch.stack([toy.sample_at(flow, (r.item(), 0.0), 2000, generator=gen).cpu().mean(0) for r in rs])
slope = (((rs - rs.mean()) * (means[:, 0] - means[:, 0].mean())).sum() / ((rs - rs.mean()) ** 2).sum()).item()
print(f"fitted slope of E[x_1 | y = (r, 0)] against r: {slope:.3f} (true 0.5)")

# %% tags=["check"]
assert abs(slope - 0.5) < 0.1
