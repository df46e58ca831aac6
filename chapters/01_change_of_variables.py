# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 1: Change of variables; a coupling from scratch
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minflow-course/minflow/blob/main/chapters/01_change_of_variables.ipynb)
#
# A normalizing flow is an invertible map `f` from data `x` to a latent `z` that we choose to be
# a standard Gaussian. Everything rests on one formula, the change of variables, and on one trick
# that makes it cheap, the coupling layer. In this chapter you will see the formula at work in one
# dimension, then in many; build an affine coupling by hand in plain PyTorch and check it, number
# for number, against `minflow`'s and against autograd's Jacobian; and finally train a small 2D
# flow on the two-moons data set.

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
import numpy as np
import torch
from sklearn.datasets import make_moons
from torch import nn
from tqdm.auto import tqdm

import minflow as mf
from minflow.plotting import COLORS, style

style()
device = mf.get_device()  # cuda when available, else cpu
QUICK = mf.quick_mode()  # MINFLOW_QUICK=1 (set by `make test`) shortens training
mf.seed_everything(0)  # the one place this chapter seeds
if device.type == "cpu":
    torch.set_num_threads(1)  # this chapter's tensors are tiny: a second thread only adds overhead
print(f"device={device}, quick={QUICK}")

# %% [markdown]
# ## 1. One dimension: a map moves probability mass
#
# Let `z = f(x)` with `f` increasing, and let `Z` have density `p_Z`. The probability that `X`
# lands in a small interval `[x, x + dx]` is the probability that `Z` lands in its image
# `[f(x), f(x) + f'(x) dx]`. Equating the two masses gives the change of variables formula
#
# $$p_X(x) = p_Z\big(f(x)\big)\,\lvert f'(x)\rvert .$$
#
# The factor `|f'(x)|` is the whole point: where `f` stretches space (large `f'`), a small
# interval of `x` collects a large share of the Gaussian's mass, so `x` is *more* likely there.
#
# Our example is `f(x) = sinh(2x) / 2`, with inverse `x = asinh(2z) / 2`. We draw `z` from
# N(0, 1), push it through the inverse to get samples of `X`, and compare their histogram with the
# formula. We also plot the "forgetful" guess `p_Z(f(x))` without the factor, to see that it is
# not even a density. The derivative comes from autograd, as it will in higher dimensions.

# %%
def f1(x):
    return torch.sinh(2 * x) / 2


def f1_inverse(z):
    return torch.asinh(2 * z) / 2


std_normal = torch.distributions.Normal(0.0, 1.0)

grid = torch.linspace(-2.5, 2.5, 2001, dtype=torch.float64, device=device).requires_grad_(True)
z_grid = f1(grid)
(slope,) = torch.autograd.grad(z_grid.sum(), grid)  # f'(x) at every grid point (f acts elementwise)
grid, z_grid = grid.detach(), z_grid.detach()
assert torch.allclose(slope, torch.cosh(2 * grid))  # autograd agrees with the calculus

p_x = std_normal.log_prob(z_grid).exp() * slope.abs()  # the change of variables formula
p_naive = std_normal.log_prob(z_grid).exp()  # ... forgetting |f'(x)|

samples_x = f1_inverse(torch.randn(200_000, device=device, dtype=torch.float64))

integral = torch.trapezoid(p_x, grid).item()
integral_naive = torch.trapezoid(p_naive, grid).item()
print(f"integral of p_Z(f(x)) |f'(x)| = {integral:.5f}")
print(f"integral of p_Z(f(x))         = {integral_naive:.5f}  (not a density)")

edges = torch.linspace(-2.0, 2.0, 61, dtype=torch.float64)
hist = torch.histogram(samples_x.cpu(), bins=edges).hist / (len(samples_x) * (edges[1] - edges[0]))
centres = (edges[:-1] + edges[1:]) / 2
p_centres = std_normal.log_prob(f1(centres)).exp() * torch.cosh(2 * centres)
hist_error = (hist - p_centres).abs().max().item()
print(f"largest gap between histogram and formula: {hist_error:.4f}")
x_peak = grid[p_x.argmax()].abs().item()  # where p_X is largest (the two modes are mirror images)
print(f"p_X peaks at x = ±{x_peak:.3f}, where f'(x) = {math.cosh(2 * x_peak):.3f}")

assert abs(integral - 1) < 1e-3, integral
assert abs(integral_naive - 0.614) < 0.005, integral_naive  # about 0.6: not a density
assert hist_error < 0.03, hist_error
assert abs(x_peak - math.acosh(2) / 2) < 0.005, x_peak  # the peaks: cosh(2x) = 2, x = ±0.66

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
g, zg = grid.cpu(), z_grid.cpu()
axes[0].plot(g, zg, color=COLORS["affine"])
axes[0].set(xlabel="x (data)", ylabel="z = f(x) (latent)", title="The map f(x) = sinh(2x) / 2", ylim=(-4, 4))
axes[0].axhline(0, color=COLORS["data"], lw=0.8)
axes[0].axvline(0, color=COLORS["data"], lw=0.8)
axes[1].stairs(hist, edges, fill=True, color=COLORS["data"], alpha=0.35, label="histogram of x = f⁻¹(z), z ~ N(0, 1)")
axes[1].plot(g, p_x.cpu(), color=COLORS["affine"], label="p_Z(f(x)) |f'(x)|")
axes[1].plot(g, p_naive.cpu(), color=COLORS["other"], ls="--", label="p_Z(f(x)) (no Jacobian)")
axes[1].set(xlabel="x", ylabel="density", title="Change of variables in 1D", xlim=(-2, 2), ylim=(0, 0.8))
axes[1].legend(loc="upper right")
plt.tight_layout()
plt.show()

# %% [markdown]
# The Gaussian has one bump, yet `X` has two: `f` is flattest at 0 (`f'(0) = 1`), so little mass
# lands near `x = 0`, while around `x = ±0.66` (the peaks printed above, where `f'(x) = cosh(2x) = 2`)
# `f` is steep enough to catch a lot of it. The dashed curve misses this entirely and integrates to
# about 0.61, not 1.

# %% [markdown]
# ## 2. Many dimensions: the Jacobian determinant
#
# In `D` dimensions the derivative becomes the `D x D` Jacobian matrix `J_f(x) = ∂f/∂x`, and the
# length stretch `|f'(x)|` becomes the volume stretch `|det J_f(x)|`. In logs:
#
# $$\log p_X(x) = \log p_Z\big(f(x)\big) + \log\lvert\det J_f(x)\rvert .$$
#
# A first check with a map we can solve by hand: for a linear `f(x) = A (x - m)` and
# `Z ~ N(0, I)`, the data are Gaussian, `X ~ N(m, (AᵀA)⁻¹)`, so the formula must agree with
# PyTorch's own multivariate normal.

# %%
D = 3
A = torch.randn(D, D, dtype=torch.float64, device=device) + 2 * torch.eye(D, dtype=torch.float64, device=device)
m = torch.randn(D, dtype=torch.float64, device=device)
x3 = torch.randn(500, D, dtype=torch.float64, device=device)

z3 = (x3 - m) @ A.T
log_p_formula = mf.gaussian_log_prob(z3) + torch.linalg.slogdet(A)[1]
log_p_exact = torch.distributions.MultivariateNormal(m, precision_matrix=A.T @ A).log_prob(x3)
print(f"largest difference: {(log_p_formula - log_p_exact).abs().max().item():.2e}")
assert torch.allclose(log_p_formula, log_p_exact, atol=1e-10)

# %% [markdown]
# For non-linear maps the Jacobian changes from point to point. `torch.autograd.functional.jacobian`
# computes it for us, one backward pass per output coordinate. Here are two invertible maps of
# `D = 6` coordinates:
#
# - a **dense** one, `f(x) = x + ½ tanh(W x)` with `‖W‖ < 1` (invertible because the tanh part is
#   a contraction): every output depends on every input;
# - an **autoregressive** one, `z_i = x_i exp(a_i) + b_i` where `a_i, b_i` depend only on
#   `x_1 … x_{i-1}`: output `i` never looks at later inputs.

# %%
D = 6
W = torch.randn(D, D, dtype=torch.float64, device=device)
W = 0.9 * W / torch.linalg.matrix_norm(W, ord=2)  # spectral norm 0.9
strictly_lower = torch.tril(torch.randn(2, D, D, dtype=torch.float64, device=device), diagonal=-1)


def dense_map(x):
    return x + 0.5 * torch.tanh(x @ W.T)


def autoregressive_map(x):
    a = torch.tanh(x @ strictly_lower[0].T)  # a_i uses x_1 .. x_{i-1} only
    b = x @ strictly_lower[1].T
    return x * torch.exp(a) + b


x6 = torch.randn(D, dtype=torch.float64, device=device)
J_dense = torch.autograd.functional.jacobian(dense_map, x6)
J_ar = torch.autograd.functional.jacobian(autoregressive_map, x6)

# A triangular matrix's determinant is the product of its diagonal: D numbers instead of an O(D^3) LU.
assert torch.count_nonzero(torch.triu(J_ar, diagonal=1)) == 0  # exactly zero above the diagonal
assert torch.count_nonzero(torch.triu(J_dense, diagonal=1)) > 0
logdet_lu = torch.linalg.slogdet(J_ar)[1]
logdet_diag = torch.log(torch.diagonal(J_ar).abs()).sum()
a_diag = torch.tanh(x6 @ strictly_lower[0].T).sum()  # the diagonal is exp(a_i): no autograd needed
print(f"log|det J| by LU: {logdet_lu.item():.12f}, by the diagonal: {logdet_diag.item():.12f}, sum a_i: {a_diag.item():.12f}")
assert torch.allclose(logdet_lu, logdet_diag, atol=1e-12) and torch.allclose(logdet_lu, a_diag, atol=1e-12)

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
lim = max(J_dense.abs().max(), J_ar.abs().max()).item()
for ax, J, title in [(axes[0], J_dense, "Dense map: full Jacobian"), (axes[1], J_ar, "Autoregressive map: triangular")]:
    im = ax.imshow(J.cpu(), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set(xlabel="input coordinate j", ylabel="output coordinate i", title=title)
fig.colorbar(im, ax=axes, label="∂z_i / ∂x_j", shrink=0.8)
plt.show()

D_image = 3 * 64 * 64
print(f"a 64x64 RGB image has D = {D_image}: a dense Jacobian has {D_image**2:.1e} entries and an LU")
print(f"costs ~{2 * D_image**3 / 3:.1e} flops per image; a triangular one needs only its {D_image} diagonal entries.")

# %% [markdown]
# That is the design rule for flows: build `f` from layers whose Jacobians are triangular (or
# otherwise cheap), so that `log|det J|` is a sum of `D` numbers the layer computes anyway, and
# whose inverse is explicit. The coupling layer is the simplest such layer.

# %% [markdown]
# ## 3. An affine coupling, by hand
#
# Split `x` into two halves, `x = [x_a, x_b]`. Leave `x_a` alone and transform `x_b` with a
# shift and a scale that a neural network computes *from `x_a`*:
#
# $$z_a = x_a,\qquad (t, h) = \mathrm{NN}(x_a),\qquad z_b = (x_b + t)\, s,\qquad s = \sigma(h + 2) + \epsilon .$$
#
# This is SRFlow's parameterisation, with `eps = 1e-4`: the scale lives in `(eps, 1 + eps]`. Three
# facts make it a good flow layer:
#
# 1. The Jacobian is block lower-triangular, `[[I, 0], [∂z_b/∂x_a, diag(s)]]`, so
#    `log|det J| = Σ log s`, however complicated the network is.
# 2. The inverse is explicit: `z_a = x_a` gives back the network's input, hence `(t, h)`, and then
#    `x_b = z_b / s - t`. We never need to invert the network.
# 3. Sampling runs this inverse, which *divides* by `s`. Since `s` can get as small as `eps`, one
#    coupling can multiply by up to `1 / eps = 10^4`. Keep that in mind: it is the "exploding
#    inverse" of chapter 3.
#
# We write the layer in plain PyTorch. The network's last layer returns `2 n_b` numbers per sample;
# we read them as `n_b` pairs `(t, h)`, one pair per transformed coordinate. This interleaved layout
# is the one `minflow` uses (`ElementwiseLayer._params` reshapes to `(B, n_b, 2)`), so weights can
# be copied across unchanged.

# %%
EPS = 1e-4
D, HIDDEN, DEPTH = 4, 32, 2
n_a = D // 2
n_b = D - n_a
dtype = torch.float64  # float64 so that "equal" can mean equal to 1e-12

net = nn.Sequential(
    nn.Linear(n_a, HIDDEN),
    nn.ReLU(),
    nn.Linear(HIDDEN, HIDDEN),
    nn.ReLU(),
    nn.Linear(HIDDEN, 2 * n_b),
).to(device, dtype)


def shift_and_scale(net, x_a):
    out = net(x_a).view(-1, n_b, 2)  # (B, n_b, 2): [..., 0] = t, [..., 1] = h
    t, h = out[..., 0], out[..., 1]
    s = torch.sigmoid(h + 2) + EPS
    return t, s


def coupling_forward(net, x):
    x_a, x_b = x[:, :n_a], x[:, n_a:]
    t, s = shift_and_scale(net, x_a)
    z_b = (x_b + t) * s
    return torch.cat([x_a, z_b], dim=1), torch.log(s).sum(dim=1)


def coupling_inverse(net, z):
    z_a, z_b = z[:, :n_a], z[:, n_a:]
    t, s = shift_and_scale(net, z_a)  # z_a == x_a: same network input, same (t, s)
    x_b = z_b / s - t
    return torch.cat([z_a, x_b], dim=1), -torch.log(s).sum(dim=1)


# %% [markdown]
# Now `minflow`'s layer with the same sizes. Its conditioner is the same stack of layers, but the
# last one starts at exactly zero. Then `t = 0` and `h = 0`, so every coupling starts as the
# identity times the constant `s = sigmoid(2) + eps ≈ 0.881`: an untrained deep flow is a
# harmless, well-conditioned map, and training moves away from it gradually. Let us check that.

# %%
coupling = mf.Coupling(D, 0, mf.Affine("sigmoid"), kind="mlp", hidden=HIDDEN, depth=DEPTH).to(device, dtype)
print(coupling.net)

x = torch.randn(16, D, device=device, dtype=dtype)
z0, logdet0 = coupling(x)
s0 = torch.sigmoid(torch.tensor(2.0, dtype=dtype)).item() + EPS
ratio = z0[:, n_a:] / x[:, n_a:]
print(f"untrained: z_b / x_b in [{ratio.min().item():.6f}, {ratio.max().item():.6f}], sigmoid(2) + eps = {s0:.6f}")
assert torch.equal(z0[:, :n_a], x[:, :n_a])
assert abs(s0 - 0.881) < 5e-4  # the text's sigmoid(2) + eps ≈ 0.881
assert torch.allclose(z0[:, n_a:], s0 * x[:, n_a:], atol=1e-12)
assert torch.allclose(logdet0, torch.full_like(logdet0, n_b * math.log(s0)), atol=1e-12)

# %% [markdown]
# A zero last layer would make our comparison trivial (every network would agree), so we give the
# hand-made network's last layer small random values, then copy *all* its weights into
# `coupling.net`. The layer names match (`0`, `2`, `4` are the three `Linear`s), so
# `load_state_dict` does it in one line.

# %%
with torch.no_grad():
    nn.init.normal_(net[-1].weight, std=0.3)
    nn.init.normal_(net[-1].bias, std=0.3)
coupling.net.load_state_dict(net.state_dict())

z_hand, logdet_hand = coupling_forward(net, x)
z_mf, logdet_mf = coupling(x)
x_back_hand, inv_logdet_hand = coupling_inverse(net, z_hand)
x_back_mf, inv_logdet_mf = coupling.inverse(z_mf)

_, s_used = shift_and_scale(net, x[:, :n_a])
print(f"scales used: min {s_used.min().item():.3f}, max {s_used.max().item():.3f} (not constant any more)")
print(f"forward:  max |z_hand - z_mf| = {(z_hand - z_mf).abs().max().item():.1e}, "
      f"max |logdet difference| = {(logdet_hand - logdet_mf).abs().max().item():.1e}")
print(f"inverse:  max |x - x_back| = {(x - x_back_mf).abs().max().item():.1e}")

assert s_used.std() > 0.01  # the check below is not against a constant scale
assert torch.allclose(z_hand, z_mf, rtol=0, atol=1e-12)
assert torch.allclose(logdet_hand, logdet_mf, rtol=0, atol=1e-12)
assert torch.allclose(x_back_hand, x_back_mf, rtol=0, atol=1e-12)
assert torch.allclose(inv_logdet_mf, -logdet_mf, rtol=0, atol=1e-12)  # inverse's logdet = -forward's
assert torch.allclose(x_back_hand, x, rtol=0, atol=1e-12) and torch.allclose(x_back_mf, x, rtol=0, atol=1e-12)

# %% [markdown]
# Both agree with each other. Do they agree with the definition? We ask autograd for the full
# Jacobian of the batch map, `(B, D) -> (B, D)`, and keep each sample's own `D x D` block.

# %%
J_batch = torch.autograd.functional.jacobian(lambda v: coupling(v)[0], x)  # (B, D, B, D)
idx = torch.arange(x.shape[0], device=device)
J = J_batch[idx, :, idx, :]  # (B, D, D): d z[b] / d x[b]
logdet_autograd = torch.linalg.slogdet(J)[1]
print(f"max |sum log s - log|det J|| = {(logdet_mf - logdet_autograd).abs().max().item():.1e}")

assert torch.allclose(logdet_mf, logdet_autograd, rtol=0, atol=1e-12)
assert torch.allclose(logdet_hand, logdet_autograd, rtol=0, atol=1e-12)
eye_a = torch.eye(n_a, dtype=dtype, device=device).expand(len(x), n_a, n_a)
assert torch.equal(J[:, :n_a, :n_a], eye_a)  # z_a = x_a
assert torch.count_nonzero(J[:, :n_a, n_a:]) == 0  # z_a ignores x_b
assert torch.allclose(J[:, n_a:, n_a:], torch.diag_embed(s_used), rtol=0, atol=1e-12)  # diag(s)

# %%
fig, ax = plt.subplots(figsize=(5, 4.3))
lim = J[0].abs().max().item()
im = ax.imshow(J[0].cpu(), cmap="RdBu_r", vmin=-lim, vmax=lim)
ax.axhline(n_a - 0.5, color=COLORS["data"], lw=1)
ax.axvline(n_a - 0.5, color=COLORS["data"], lw=1)
for (i, j), label in {(0, 0): "I", (0, 1): "0", (1, 1): "diag(s)", (1, 0): "∂z_b/∂x_a"}.items():
    ax.text(j * n_a + (n_a - 1) / 2, i * n_a + (n_a - 1) / 2, label, ha="center", va="center", fontsize=11,
            bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
ax.set(xticks=range(D), yticks=range(D), xlabel="input coordinate j", ylabel="output coordinate i",
       title="Jacobian of one affine coupling")
fig.colorbar(im, ax=ax, label="∂z_i / ∂x_j")
plt.show()

# %% [markdown]
# ## 4. A 2D flow on two moons
#
# One coupling only changes half the coordinates, and only as an affine function of them. Stacking
# many, with something that mixes the coordinates in between, gives a flexible map. Each step of
# our flow is
#
# - `ActNorm(2)`: a per-coordinate shift and scale, initialised from the first batch so its output
#   has zero mean and unit variance (Glow's data-dependent init);
# - `InvConv1x1(2)`: an invertible 2x2 matrix that mixes the two coordinates, so the next coupling
#   sees a different "half";
# - `Coupling(2, 0, Affine("sigmoid"))`: the layer we just built (`0` condition channels: this flow
#   is unconditional).
#
# Training maximises the average log-likelihood `flow.log_prob(x)`, which is exactly the formula of
# section 2 summed over the layers.

# %%
x_all, _ = make_moons(6000, noise=0.08, random_state=0)
x_all = torch.tensor(x_all, dtype=torch.float32)
x_train, x_test = x_all[:4000], x_all[4000:]
mean, std = x_train.mean(0), x_train.std(0)
x_train, x_test = ((x_train - mean) / std).to(device), ((x_test - mean) / std).to(device)

N_STEPS_FLOW, HIDDEN_2D = 6, 64


def make_flow(scale="sigmoid"):
    layers = []
    for _ in range(N_STEPS_FLOW):
        layers += [
            mf.ActNorm(2),
            mf.InvConv1x1(2),
            mf.Coupling(2, 0, mf.Affine(scale), kind="mlp", hidden=HIDDEN_2D, depth=2),
        ]
    return mf.ConditionalFlow(layers, event_shape=(2,)).to(device)


def train(flow, data, steps, batch_size=512, lr=2e-3, desc="training"):
    """Maximise the mean log-likelihood with Adam; returns the loss (mean -log p) per step."""
    optimizer = mf.adam(flow.parameters(), lr=lr)  # torch.optim.Adam, with its fused kernel on a CPU or CUDA GPU
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    flow.train()
    losses = []
    for _ in (bar := tqdm(range(steps), desc=desc)):
        batch = data[torch.randint(len(data), (batch_size,), device=data.device)]
        loss = -flow.log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(nll=f"{loss.item():.3f}", refresh=False)
    flow.eval()
    return losses


steps = mf.pick(1500, 500)
flow = make_flow("sigmoid")
losses = train(flow, x_train, steps)

# %% [markdown]
# How good is that? A natural baseline is the best single Gaussian (the sample mean and covariance
# of the training data). We compare average log-likelihoods on held-out points the flow never saw.

# %%
gaussian = torch.distributions.MultivariateNormal(x_train.mean(0), torch.cov(x_train.T))
with torch.no_grad():
    ll_flow = flow.log_prob(x_test).mean().item()
    ll_gauss = gaussian.log_prob(x_test).mean().item()
print(f"held-out log-likelihood per point: flow {ll_flow:.3f} nats, single Gaussian {ll_gauss:.3f} nats")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(losses, color=COLORS["affine"], lw=1, label="flow, training batches")
ax.axhline(-ll_gauss, color=COLORS["data"], ls="--", label="single Gaussian, held out")
ax.axhline(-ll_flow, color=COLORS["affine"], ls=":", label="flow, held out")
ax.set(xlabel="training step", ylabel="-log p (nats per point)", title="Training the 2D flow", ylim=(1.2, 3.2))
ax.legend()
plt.show()

assert math.isfinite(ll_flow)
assert ll_flow > ll_gauss + 0.5, (ll_flow, ll_gauss)  # a clear margin: ~1 nat in practice

# %% [markdown]
# A density must integrate to one. We evaluate `exp(log_prob)` on a fine grid over a box that holds
# the data, and sum. We also draw samples by running the flow backwards from `z ~ N(0, I)` and
# compare their mean and spread with the held-out data.

# %%
L, n_grid = 4.0, 200
axis = torch.linspace(-L, L, n_grid, device=device)
gx, gy = torch.meshgrid(axis, axis, indexing="xy")
points = torch.stack([gx.flatten(), gy.flatten()], dim=1)
with torch.no_grad():
    density = flow.log_prob(points).exp().view(n_grid, n_grid)
    samples = flow.sample(num_samples=5000)
    z_test, _ = flow(x_test)  # the data pushed to the latent space
mass = (density.sum() * (axis[1] - axis[0]) ** 2).item()
inside = (samples.abs() <= L).all(dim=1).float().mean().item()
print(f"integral of the learned density over the box: {mass:.4f}; samples inside the box: {inside:.4f}")
print(f"mean: samples {samples.mean(0).tolist()}, data {x_test.mean(0).tolist()}")
print(f"std:  samples {samples.std(0).tolist()}, data {x_test.std(0).tolist()}")

assert abs(mass - 1) < 0.05, mass
assert torch.isfinite(samples).all()
assert (samples.mean(0) - x_test.mean(0)).abs().max() < 0.15
assert ((samples.std(0) / x_test.std(0)) - 1).abs().max() < 0.15

# %%
fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
lims = dict(xlim=(-2.5, 2.5), ylim=(-2.5, 2.5))
xt, smp, zt = x_test.cpu(), samples.cpu(), z_test.cpu()
axes[0].scatter(xt[:, 0], xt[:, 1], s=3, color=COLORS["data"])
axes[0].set(title="Held-out data", **lims)
im = axes[1].imshow(density.cpu(), extent=(-L, L, -L, L), origin="lower")
axes[1].set(title="Learned density exp(log p)", **lims)
fig.colorbar(im, ax=axes[1], shrink=0.8)
axes[2].scatter(smp[:, 0], smp[:, 1], s=3, color=COLORS["affine"])
axes[2].set(title="Flow samples", **lims)
axes[3].scatter(zt[:, 0], zt[:, 1], s=3, color=COLORS["data"], alpha=0.5)
circle = torch.linspace(0, 2 * math.pi, 200)
for r in (1, 2, 3):
    axes[3].plot(r * torch.cos(circle), r * torch.sin(circle), color=COLORS["affine"], lw=1)
axes[3].set(title="Data pushed forward, z = f(x)", xlim=(-4, 4), ylim=(-4, 4))
for ax in axes[:3]:
    ax.set(xlabel="x₁ (standardised)", ylabel="x₂ (standardised)")
axes[3].set(xlabel="z₁", ylabel="z₂")
for ax in axes:
    ax.set_aspect("equal")
plt.tight_layout()
plt.show()

# %% [markdown]
# Left to right: the data, the density the flow assigns, samples drawn by the inverse map, and the
# data mapped forward into the latent space, where they should look like a standard Gaussian (the
# circles are radii 1, 2, 3). A few steps of "shift and squash half the coordinates" bend the two
# moons into a blob. Look for a thin bridge of density (and of samples) joining the two moons: the
# flow is a continuous bijection of a single Gaussian blob, so it can make the gap very unlikely but
# never cut the blob in two.

# %% [markdown]
# ## What's next
#
# Every piece of a *conditional* flow is already here. To model `p(x | y)`, let the coupling's
# network read the condition as well: `(t, h) = NN([x_a, y])`. In `minflow` that is the second
# argument of `mf.Coupling(channels, cond_channels, ...)`, and `flow.log_prob(x, y)` /
# `flow.sample(y)` pass `y` to every layer. Chapter 2 trains such a flow on a toy 2D task and adds
# SRFlow's other ingredients (sampling temperature, the condition injector).
#
# Keep point 3 of section 3 in mind: sampling divides by `s`, and nothing stops an unusual
# condition from pushing `s` toward `eps = 1e-4`. Chapter 3 makes that happen.

# %% [markdown]
# ## Exercises
#
# The cell after each exercise holds a solution (a stub to fill in, in the student version) and the
# `check` cell after that tests the answer. Try it yourself first.
#
# ### Exercise 1: the additive coupling
#
# NICE's coupling has no scale: `z_b = x_b + t`. Write `additive_forward(net, x)` and
# `additive_inverse(net, z)` returning `(output, logdet)` like ours above (use `t` from
# `shift_and_scale`, ignore `s`). What is its log-determinant? Check it against autograd, and against
# `mf.Coupling(D, 0, mf.Affine("additive"), ...)` with the weights of `net`.

# %% tags=["solution"] hint="split x into x[:, :n_a] and x[:, n_a:], take t from shift_and_scale(net, x_a) and add it to the second half (the inverse subtracts it); a shift changes no volume, so what is the logdet of every row?"
def additive_forward(net, x):
    x_a, x_b = x[:, :n_a], x[:, n_a:]
    t, _ = shift_and_scale(net, x_a)
    return torch.cat([x_a, x_b + t], dim=1), x.new_zeros(x.shape[0])  # volume preserving: logdet 0


def additive_inverse(net, z):
    z_a, z_b = z[:, :n_a], z[:, n_a:]
    t, _ = shift_and_scale(net, z_a)
    return torch.cat([z_a, z_b - t], dim=1), z.new_zeros(z.shape[0])


# %% tags=["check"]
additive = mf.Coupling(D, 0, mf.Affine("additive"), kind="mlp", hidden=HIDDEN, depth=DEPTH).to(device, dtype)
additive.net.load_state_dict(net.state_dict())
z_add, ld_add = additive_forward(net, x)
J_add = torch.autograd.functional.jacobian(lambda v: additive_forward(net, v)[0], x)[idx, :, idx, :]
assert torch.allclose(z_add, additive(x)[0], rtol=0, atol=1e-12)
assert torch.allclose(ld_add, additive(x)[1], rtol=0, atol=1e-12)
assert torch.allclose(torch.linalg.slogdet(J_add)[1], ld_add, rtol=0, atol=1e-12)
assert torch.allclose(additive_inverse(net, z_add)[0], x, rtol=0, atol=1e-12)
print("additive coupling: correct")

# %% [markdown]
# ### Exercise 2: the inverse's log-determinant
#
# Prove that if `f` is invertible with forward log-determinant `log|det J_f(x)|`, then the inverse
# map at `z = f(x)` has log-determinant `-log|det J_f(x)|`. Then check it numerically on the trained
# two-moons flow: `flow(x)` returns `(z, logdet)` and `flow.inverse(z)` returns `(x, logdet)`. Push
# `x_test` forward, then back, and keep the results as `logdet_fwd`, `x_rec` and `logdet_inv`.

# %% [markdown] tags=["solution"] hint="write the chain rule for f⁻¹(f(x)) = x as a product of two Jacobians, then take determinants of both sides"
# *Solution.* Differentiate `f⁻¹(f(x)) = x` with the chain rule: `J_{f⁻¹}(f(x)) J_f(x) = I`.
# Determinants multiply, so `det J_{f⁻¹}(z) · det J_f(x) = 1`; take `log|·|` of both sides. For a
# flow made of layers the same holds layer by layer, which is why every `minflow` transform returns
# minus its forward logdet from `inverse`. For the coupling you can also read it off directly: the
# inverse's Jacobian block is `diag(1/s)`, whose log-determinant is `-Σ log s`.

# %% tags=["solution"] hint="flow(x_test) returns (z, logdet); pass that z to flow.inverse, all under torch.no_grad()"
with torch.no_grad():
    z_fwd, logdet_fwd = flow(x_test)
    x_rec, logdet_inv = flow.inverse(z_fwd)

# %% tags=["check"]
print(f"max |logdet_fwd + logdet_inv| = {(logdet_fwd + logdet_inv).abs().max().item():.1e}")
assert torch.allclose(logdet_fwd + logdet_inv, torch.zeros_like(logdet_fwd), atol=1e-4)
assert torch.allclose(x_rec, x_test, atol=1e-4)

# %% [markdown]
# ### Exercise 3: an unbounded scale
#
# RealNVP and Glow (without a clamp) use `s = exp(h)` instead of SRFlow's `sigmoid(h + 2) + eps`.
# Train the same flow with `mf.Affine("exp")` for the same number of steps (`make_flow` and `train`
# are above) and compare the held-out log-likelihood (call it `ll_exp`) and the training curves. Then evaluate its density on the grid of section 4: is it
# finite everywhere? Why can `exp` misbehave far from the data, where `sigmoid` cannot?

# %% tags=["solution"] hint="make_flow('exp') builds the flow and train(flow_exp, x_train, steps, desc=...) trains it; ll_exp is the mean of log_prob on x_test, and log_prob(points) is its density on the grid"
flow_exp = make_flow("exp")
losses_exp = train(flow_exp, x_train, steps, desc="exp scale")
with torch.no_grad():
    ll_exp = flow_exp.log_prob(x_test).mean().item()
    log_density_exp = flow_exp.log_prob(points)
nonfinite = (~torch.isfinite(log_density_exp)).sum().item()
print(f"held-out log-likelihood: sigmoid {ll_flow:.3f}, exp {ll_exp:.3f}, single Gaussian {ll_gauss:.3f}")
print(f"grid points where the exp flow's log-density is not finite: {nonfinite} of {len(points)}")

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(losses, color=COLORS["affine"], lw=1, label='Affine("sigmoid")')
ax.plot(losses_exp, color=COLORS["other"], lw=1, label='Affine("exp")')
ax.set(xlabel="training step", ylabel="-log p (nats per point)", title="Two scale parameterisations", ylim=(1.2, 3.2))
ax.legend()
plt.show()

# %% [markdown] tags=["solution"] hint="far from the data a ReLU network's h grows linearly with the distance: what does exp make of that over N_STEPS_FLOW couplings, and what bound does sigmoid put on s?"
# On the data both train to a similar likelihood. Away from the data they differ: the ReLU
# network's `h` grows linearly with the distance from the data, and `exp(h)` then grows
# exponentially, compounding over the `N_STEPS_FLOW` couplings, so the forward map can overflow to
# `inf` and `log_prob` becomes `inf - inf = nan` (the count of such grid points is printed above). The sigmoid scale is bounded, `s ≤ 1 + eps`: no coupling
# can stretch the *forward* map, which grows at most linearly with the distance from the data, and
# its density stays finite (the integral of section 4 checked it on the whole box). Its weak side is
# the other direction, `1 / s ≤ 10^4`: sampling.

# %% tags=["check"]
assert math.isfinite(ll_exp) and ll_exp > ll_gauss + 0.5
# "a similar likelihood": the two differ by less than half of what either gains over the Gaussian
assert abs(ll_exp - ll_flow) < 0.5 * (min(ll_exp, ll_flow) - ll_gauss), (ll_exp, ll_flow, ll_gauss)

# %% [markdown]
# ### Exercise 4: counting parameters
#
# Write down, without running code, how many trainable parameters the two-moons flow has: an
# `ActNorm(2)`, an `InvConv1x1(2)` and a `Coupling` whose conditioner maps 1 number through two
# hidden layers of width 64 to `2 × 1` numbers, repeated `N_STEPS_FLOW` times. Write it as
# `count_by_hand`, then check it against PyTorch's count.

# %% tags=["solution"] hint="ActNorm(2) has a bias and a log-scale per coordinate, InvConv1x1(2) its 2 x 2 matrix, and a Linear(a, b) has a * b + b parameters (widths 1, HIDDEN_2D, HIDDEN_2D, 2)"
actnorm_params = 2 + 2  # bias and log-scale per coordinate
invconv_params = 2 * 2  # the full matrix W (lu=False)
width = HIDDEN_2D
coupling_params = (1 * width + width) + (width * width + width) + (width * 2 + 2)  # Linear(1, h), Linear(h, h), Linear(h, 2)
count_by_hand = N_STEPS_FLOW * (actnorm_params + invconv_params + coupling_params)
print(f"by hand: {count_by_hand}")

# %% tags=["check"]
count_torch = sum(p.numel() for p in flow.parameters() if p.requires_grad)
print(f"PyTorch: {count_torch}")
assert count_by_hand == count_torch
