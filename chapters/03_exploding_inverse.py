# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 3: The exploding inverse
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minflow-course/minflow/blob/main/chapters/03_exploding_inverse.ipynb)
#
# The flow of chapter 2 samples beautifully for every y it was trained on. Here we hand it
# conditions it has never seen, far out of distribution (OOD), and watch the sampling pass blow up:
# one coupling's scale s drops to its floor ε = 10⁻⁴, the inverse divides by it, and samples land
# thousands of units away from anything plausible. This is the mechanism Hong, Park and Chun
# (ICCV 2023) identified behind the saturated blobs and black holes of SRFlow-type models. We
# measure it on five independently trained models, because its size varies enormously between them,
# and we say exactly where we looked for it.

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
    from google.colab import output

    output.enable_custom_widget_manager()  # this chapter's sliders need it on Colab

# %%
import math
import statistics

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from tqdm.auto import tqdm

import minflow as mf
from minflow import report, toy
from minflow.checkpoints import load_pretrained
from minflow.plotting import COLORS, plot_finite, seed_style, style

style()
device = mf.get_device()  # cuda when available, else cpu
QUICK = mf.quick_mode()  # MINFLOW_QUICK=1 (set by `make test`) uses fewer samples and radii
mf.seed_everything(0)  # the one place this chapter seeds; every sample below uses fixed latents
if device.type == "cpu":
    torch.set_num_threads(1)  # these models are tiny: extra threads only wait on each other
print(f"device={device}, quick={QUICK}")

# %% [markdown]
# ## 1. Five models, and what "far out of distribution" means here
#
# Training one toy flow takes one to three minutes on a CPU (each model's wall time is in the table
# below), so we load five that ship with the course, made by
# `python -m minflow train-toy --coupling affine --seed S --steps 2000` for seeds S = 0 … 4 (recorded
# in the equivalent older form printed below; same architecture as chapter 2: four steps of ActNorm, invertible 2x2 map and an SRFlow affine
# coupling with s = sigmoid(h + 2) + 10⁻⁴). Each checkpoint carries the command, seed, wall time
# and metrics that produced it, and its file's checksum is verified on loading.
#
# **Where we look.** The training conditions are y ~ N(0, I), so |y| rarely exceeds 3. The claims
# of this chapter are checked at one setting, the same for every model:
#
# > **far OOD** = the worst of 360 directions, 1° apart, at |y| = 1000
# > (`toy.FAR_OOD_RADIUS`, `toy.RING_DIRECTIONS`), "worst" meaning largest sample spread.
#
# This is *not* what we planned. Before training, we fixed one point, y = 100 · (1, 1)/√2. Only
# one of the five models exploded there. Section 3 shows those numbers, and the other settings we
# tried on the way (a ring of 16 directions at |y| = 100; the full 360-direction scan at 100 and
# 200), and why a single OOD point says little. Of the settings tried, |y| = 1000 was the first at
# which every model exploded somewhere on the circle.
#
# **Spread** means what it meant in chapter 2: the square root of the mean per-coordinate variance
# of the samples (`toy.spread`); the true conditional's is about 0.53 for every y.

# %%
SEEDS = [0, 1, 2, 3, 4]
models = {s: load_pretrained(f"toy_affine_s{s}", device=device) for s in SEEDS}
rows = [{"seed": s, "steps": m.manifest["steps"], "wall": m.manifest["wall_time_s"], "nll": m.manifest["metrics"]["val_nll"]} for s, m in models.items()]
print(report.format_table(rows, [("seed", "seed", "d"), ("steps", "steps", "d"), ("wall time s", "wall", ".0f"), ("held-out NLL", "nll", ".3f")]))
print(f"(optimum NLL log 0.6 = {toy.TRUE_NLL:.3f}); command of seed 0: {models[0].manifest['command']}")
for s, m in models.items():  # what the text says about the five checkpoints
    assert m.manifest["steps"] == 2000 and m.manifest["seed"] == s and "--coupling affine" in m.manifest["command"]
    assert 60 < m.manifest["wall_time_s"] < 180, m.manifest["wall_time_s"]  # "one to three minutes"
    assert [type(layer).__name__ for layer in m.layers] == ["ActNorm", "InvConv1x1", "Coupling"] * 4
assert (toy.FAR_OOD_RADIUS, toy.RING_DIRECTIONS, toy.FIRST_OOD_RADIUS) == (1000.0, 360, 100.0)
assert toy.OOD_DIRECTION == (1 / math.sqrt(2), 1 / math.sqrt(2)) and len(toy.IN_DIST_Y) == 5
assert math.exp(-(3**2) / 2) < 0.02  # P(|y| > 3) for y ~ N(0, I) in 2D: "rarely"
assert abs(toy.true_spread() - 0.53) < 0.005

STYLE = {s: seed_style("affine", i) for i, s in enumerate(SEEDS)}  # one colour; line style and marker tell the seeds apart


# %% [markdown]
# ## 2. In distribution, every model is fine
#
# First the baseline each OOD number is compared with: for each model and each of five
# in-distribution conditions, the sample spread (against the true 0.53) and the fraction of samples
# in the true parallelogram, grown by half its size to allow for the flow's soft edges.

# %%
N_IN = mf.pick(2000, 1000)
in_dist = {}
for s, m in models.items():
    rows = []
    for y in toy.IN_DIST_Y:
        d = toy.diagnose(m, y, n=N_IN, n_jac=16)
        d["inside"] = toy.inside_fraction(d["samples"], torch.tensor(y), margin=0.5)
        rows.append(d)
    in_dist[s] = rows

true_s = toy.true_spread()
print(f"true spread {true_s:.3f}")
summary = [{"seed": s, "lo": min(r["spread"] for r in rows), "hi": max(r["spread"] for r in rows), "inside": min(r["inside"] for r in rows),
            "s": min(r["min_scale"] for r in rows), "sv": max(r["max_sv"] for r in rows)} for s, rows in in_dist.items()]  # fmt: skip
print(report.format_table(summary, [("seed", "seed", "d"), ("spread: min", "lo", ".3f"), ("max over y", "hi", ".3f"),
                                    ("inside+50% (min)", "inside", ".3f"), ("smallest s", "s", ".3f"), ("max sigma", "sv", ".2f")]))  # fmt: skip

# %%
for s, rows in in_dist.items():
    for r in rows:
        assert true_s / 2 < r["spread"] < 2 * true_s, f"seed {s}, y={r['y']}: spread {r['spread']:.3f} vs true {true_s:.3f}"
        assert r["inside"] > 0.9, f"seed {s}, y={r['y']}: only {r['inside']:.0%} of samples near the support"
        assert r["nonfinite"] == 0
in_spread = {s: statistics.mean(r["spread"] for r in rows) for s, rows in in_dist.items()}
in_min_s = min(r["min_scale"] for rows in in_dist.values() for r in rows)
in_max_sv = max(r["max_sv"] for rows in in_dist.values() for r in rows)
print(f"over all models and conditions: smallest s {in_min_s:.3f}, largest singular value {in_max_sv:.2f}")
assert 0.1 < in_min_s < 1, in_min_s  # "a few tenths"
assert in_max_sv < 10, in_max_sv  # "of order one"
print("in distribution, every model matches the data's spread (within 2x) and range")

# %% [markdown]
# In distribution the smallest scale any coupling uses is a few tenths, and the sampling map's
# Jacobian has singular values of order one (both printed above, over all models and conditions):
# a tame map.
#
# ## 3. Far out of distribution
#
# ### 3a. One point is not enough
#
# A ReLU network is piecewise linear, so far along any ray y = r·d the conditioner output h is
# eventually a linear function of r. Its slope may be negative (h → −∞, s → ε: explosion) or
# positive (h → +∞, s → 1: nothing happens) — and which one depends on the direction d and on the
# training run. So a single OOD point tests a single direction. Here is what the point we tried
# first, y = 100 · (1, 1)/√2, and a coarse ring of 16 directions at |y| = 100, gave:

# %%
N_OOD = mf.pick(400, 200)
pre = {s: toy.diagnose(m, tuple(toy.FIRST_OOD_RADIUS * v for v in toy.OOD_DIRECTION), n=N_OOD, n_jac=0) for s, m in models.items()}
ring16 = {s: toy.ring(m, radius=100.0, n_directions=16, n=N_OOD) for s, m in models.items()}
rows = [{"seed": s, "pre": pre[s]["spread"] / in_spread[s], "s": pre[s]["min_scale"], "r16": toy.worst(ring16[s])["spread"] / in_spread[s]} for s in SEEDS]
print(report.format_table(rows, [("seed", "seed", "d"), ("at 100(1,1)/sqrt2: spread ratio", "pre", ".3g"), ("min s", "s", ".2e"),
                                 ("16 directions at |y|=100: worst ratio", "r16", ".3g")]))  # fmt: skip
n_pre = sum(pre[s]["spread"] / in_spread[s] > 10 for s in SEEDS)
n_16 = sum(toy.worst(ring16[s])["spread"] / in_spread[s] > 10 for s in SEEDS)
print(f"models with a > 10x spread: {n_pre} of 5 at the fixed point, {n_16} of 5 on the 16-direction ring")
assert n_pre == 1 and n_16 < len(SEEDS)  # the reason the claims below use a wider search

# %% [markdown]
# ### 3b. Scanning the whole circle
#
# So we scan the circle: 360 directions, 1° apart, every model the same, with the same latents
# for every direction (`toy.ring`, a few large batches). Below, the sample spread relative to
# in-distribution, direction by direction, at |y| = 1000. Each model explodes, but over wedges of
# very different width (the table of 3c counts them).

# %%
scan = {s: toy.ring(m, radius=toy.FAR_OOD_RADIUS, n_directions=toy.RING_DIRECTIONS, n=N_OOD) for s, m in tqdm(models.items(), desc="360-direction scan")}
fig, ax = plt.subplots(figsize=(10, 4))
ax.set_yscale("log")
for s in SEEDS:  # a marker every 30 degrees: the line style and the marker tell the seeds apart
    plot_finite(ax, [r["angle"] for r in scan[s]], [r["spread"] / in_spread[s] for r in scan[s]], label=f"seed {s}", markevery=30, **STYLE[s])
ax.axhline(10, color="k", ls="--", lw=1, label="10x in-distribution")
ax.axhline(1, color=COLORS["data"], ls=":", lw=1)
ax.set(title=f"affine models at |y| = {toy.FAR_OOD_RADIUS:g}: which directions explode", xlabel="direction of y (degrees)", ylabel="spread / in-distribution spread", xlim=(0, 360))
ax.legend(ncol=3)
plt.show()

# %% [markdown]
# ### 3c. The per-seed table and the claims
#
# For each model we take its worst direction at |y| = 1000 and measure, with `toy.diagnose`: the
# spread, the smallest scale s used anywhere in the sampling pass, the largest singular value σ of
# the sampling map's Jacobian dx/dz (autograd, over 16 latents), and the layer at which the
# variance jumps most. The last columns also give the worst ratio at the smaller radii we scanned
# before settling on 1000.

# %%
far = {s: toy.diagnose(m, toy.worst(scan[s])["y"], n=N_OOD, n_jac=16) for s, m in models.items()}
scan_small = {R: {s: toy.worst(toy.ring(m, radius=R, n=N_OOD))["spread"] / in_spread[s] for s, m in models.items()} for R in (100.0, 200.0)}
table = []
for s in SEEDS:
    f, n_expl = far[s], sum(r["spread"] / in_spread[s] > 10 for r in scan[s])
    table.append({"seed": s, "in": in_spread[s], "dir": f"{toy.worst(scan[s])['angle']:.0f}°", "ratio": f["spread"] / in_spread[s],
                  "dirs": f"{n_expl}/{toy.RING_DIRECTIONS}", "s": f["min_scale"], "sv": f["max_sv"], "jump": f"{f['jump']['name']} {f['jump']['index']}",
                  "r100": scan_small[100.0][s], "r200": scan_small[200.0][s]})  # fmt: skip
print(report.format_table(table, [("seed", "seed", "d"), ("in-dist spread", "in", ".3f"), ("worst dir.", "dir", ""), ("spread ratio", "ratio", ".3g"),
                                  ("dirs > 10x", "dirs", ""), ("min s", "s", ".2e"), ("max σ", "sv", ".3g"), ("jump at", "jump", ""),
                                  ("ratio |y|=100", "r100", ".3g"), ("ratio |y|=200", "r200", ".3g")]))  # fmt: skip
ratios = [far[s]["spread"] / in_spread[s] for s in SEEDS]
min_s = [far[s]["min_scale"] for s in SEEDS]
print(f"median over seeds: spread ratio {statistics.median(ratios):.3g}, smallest s {statistics.median(min_s):.2e}; "
      f"ratios span {min(ratios):.3g} .. {max(ratios):.3g} ({max(ratios) / min(ratios):.0f}x between seeds)")

# %%
for s, r in zip(SEEDS, ratios):
    assert r > 10, f"seed {s}: far-OOD spread only {r:.3g}x its in-distribution spread"
assert statistics.median(ratios) > 100
assert statistics.median(min_s) < 0.01
assert sum(scan_small[100.0][s] > 10 for s in SEEDS) < len(SEEDS)  # why |y| = 100 was not enough
for s in SEEDS:
    assert far[s]["jump"]["name"] == "Coupling", f"seed {s}: the biggest jump is at {far[s]['jump']['name']}"
print("far OOD: every model > 10x, median > 100x, median smallest s < 0.01, jump at a coupling's inverse")
# what the text around this table says
n_dirs = {s: sum(r["spread"] / in_spread[s] > 10 for r in scan[s]) for s in SEEDS}
calm = {R: [s for s in SEEDS if scan_small[R][s] <= 10] for R in scan_small}
assert max(ratios) / min(ratios) > 100, "the size of the explosion differs between seeds by orders of magnitude"
assert max(n_dirs.values()) > 5 * min(n_dirs.values()), n_dirs  # so does how much of the circle explodes
assert len(calm[100.0]) >= 2 and len(calm[200.0]) >= 1, calm  # "some models" had no exploding direction at 100
widest, narrowest = max(n_dirs, key=n_dirs.get), min(n_dirs, key=n_dirs.get)
display(Markdown(
    f"At |y| = 1000 the exploding wedge covers {n_dirs[widest]} of {toy.RING_DIRECTIONS} directions for seed {widest} "
    f"and only {n_dirs[narrowest]} for seed {narrowest}; the far-OOD spread ratio ranges over a factor "
    f"{max(ratios) / min(ratios):.0f} between seeds. With no direction over 10x: seeds {calm[100.0]} at |y| = 100, "
    f"seeds {calm[200.0]} at |y| = 200."
))

# %% [markdown]
# The explosion is real in every model, and its size is not a property of the architecture: it
# depends on the training run, by orders of magnitude, and so does how much of the circle is
# dangerous (the counts above). At the smaller radii some models had no exploding direction at all
# (last two columns). Any single-model, single-condition demonstration of this effect is a lucky (or
# unlucky) draw.
#
# ### 3d. From in distribution to far OOD
#
# How does it set in? For each model and each radius we scan the circle again and take the worst
# direction: its spread, its smallest s, and its Jacobian's largest singular value.

# %%
RADII = mf.pick([0.5, 1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000], [1, 3, 10, 30, 100, 300, 1000])
N_SWEEP, DIRS_SWEEP = mf.pick((300, 180), (100, 90))
sweep = {s: [] for s in SEEDS}
for s, m in tqdm(models.items(), desc="sweep over |y|"):
    for R in RADII:
        w = toy.worst(toy.ring(m, radius=R, n_directions=DIRS_SWEEP, n=N_SWEEP))
        sweep[s].append(toy.diagnose(m, w["y"], n=N_SWEEP, n_jac=8))

fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
for ax in axes:
    ax.set(xscale="log", yscale="log")
for s in SEEDS:
    rs = [d["radius"] for d in sweep[s]]
    plot_finite(axes[0], rs, [d["spread"] / in_spread[s] for d in sweep[s]], label=f"seed {s}", **STYLE[s])
    plot_finite(axes[1], rs, [d["min_scale"] for d in sweep[s]], **STYLE[s])
    plot_finite(axes[2], rs, [d["max_sv"] for d in sweep[s]], **STYLE[s])
axes[0].axhline(10, color="k", ls="--", lw=1)
axes[1].axhline(1e-4, color="k", ls="--", lw=1)
axes[1].text(RADII[0], 1.4e-4, "floor ε = 1e-4", fontsize=10)
for ax in axes:
    ax.axvspan(RADII[0], 3, color=COLORS["data"], alpha=0.12, lw=0)
axes[0].set(title="sample spread (worst direction)", xlabel="|y|", ylabel="spread / in-distribution")
axes[1].set(title="smallest scale s in the inverse", xlabel="|y|", ylabel="min s")
axes[2].set(title="largest singular value of dx/dz", xlabel="|y|", ylabel="max σ")
axes[0].legend()
fig.suptitle("affine couplings from in distribution (grey band) to far OOD", y=1.02)
plt.tight_layout()
plt.show()
points = [(d["min_scale"], d["spread"] / in_spread[s], d["max_sv"]) for s in SEEDS for d in sweep[s]]
at_floor = [p for p in points if p[0] < 1e-3]
tame = [p for p in points if p[0] > 0.1]
print(f"{len(points)} (seed, radius) points: {len(at_floor)} with smallest s < 1e-3, spread ratio "
      f"{min(p[1] for p in at_floor):.3g} or more, max σ {min(p[2] for p in at_floor):.3g} or more; "
      f"{len(tame)} with s > 0.1, spread ratio at most {max(p[1] for p in tame):.3g}")
assert at_floor and all(p[1] > 100 and p[2] > 100 for p in at_floor)  # at the floor: orders of magnitude
assert tame and all(p[1] < 10 for p in tame)  # away from it: no explosion

# %% [markdown]
# The three curves move together: as |y| grows, the smallest s slides towards ε, and once it sits
# near there (below 10⁻³) the spread and the Jacobian's norm are up by orders of magnitude, while
# every point with s above 0.1 stays within 10x (the line above the figure's cell counts both).
#
# ## 4. Where in the sampling pass it happens
#
# `ConditionalFlow.trace` runs the sampling pass layer by layer and records, after each layer, the
# variance across samples (the paper's Fig. 3b). In distribution it stays within two orders of
# magnitude; far OOD, the inverse of an affine coupling multiplies it by many orders of magnitude.
# Dividing by s ≥ ε stretches the samples by at most 1/ε = 10⁴, i.e. 10⁸ in variance, but the
# shift t is not bounded and adds its own spread, so nothing caps one layer's factor at 10⁸; and
# nothing limits the floor to one coupling. The sentence under the figure says what this model does.

# %%
SHOW = 0  # the model we look at closely
m0 = models[SHOW]
y_in, y_far = (0.0, 0.0), far[SHOW]["y"]
d_in = toy.diagnose(m0, y_in, n=N_OOD, n_jac=0, keep=True)
d_far = toy.diagnose(m0, y_far, n=N_OOD, n_jac=0, keep=True)
print(f"in distribution, y = {y_in}:\n{mf.format_trace(d_in['rows'])}\n")
print(f"far OOD, y = ({y_far[0]:.0f}, {y_far[1]:.0f}):\n{mf.format_trace(d_far['rows'])}")


def layer_labels(rows):
    short = {"latent": "z", "Coupling": "C", "InvConv1x1": "W", "ActNorm": "A"}
    return [f"{short[r['name']]}{'' if r['name'] == 'latent' else r['index']}" for r in rows]


fig, ax = plt.subplots(figsize=(10, 4.2))
labels = layer_labels(d_in["rows"])
ax.set_yscale("log")
for s in SEEDS:
    if s != SHOW:
        rows = toy.diagnose(models[s], far[s]["y"], n=N_OOD, n_jac=0)["rows"]
        plot_finite(ax, range(len(rows)), [r["variance"] for r in rows], **{**STYLE[s], "lw": 1, "ms": 4, "alpha": 0.6}, label=f"seed {s}, far OOD")
plot_finite(ax, range(len(labels)), [r["variance"] for r in d_in["rows"]], color=COLORS["data"], marker="o", label=f"seed {SHOW}, in distribution y = {y_in}")
plot_finite(ax, range(len(labels)), [r["variance"] for r in d_far["rows"]], **{**STYLE[SHOW], "lw": 3}, label=f"seed {SHOW}, far OOD")
j = d_far["jump"]
k = next(i for i, r in enumerate(d_far["rows"]) if r["index"] == j["index"])
ax.annotate(f"x{j['factor']:.1e} at a coupling's inverse", (k, j["variance"]), xytext=(k + 0.5, j["variance"] * 1e-5), arrowprops={"arrowstyle": "->"})
ax.set_xticks(range(len(labels)), labels)
ax.set(title="per-layer variance of the sampling pass (z -> x, left to right)", xlabel="layer (C coupling, W 2x2 linear, A ActNorm; number = position)", ylabel="variance across samples")
ax.legend(loc="upper left", ncol=2)
plt.show()

# %%
assert d_far["jump"]["name"] == "Coupling" and d_far["jump"]["factor"] > 1e4
assert max(r["variance"] for r in d_in["rows"]) < 100 * min(r["variance"] for r in d_in["rows"])
print(f"the jump: layer {j['index']} ({j['name']}), variance x{j['factor']:.2e}")
floored = [r["index"] for r in d_far["rows"] if r["name"] == "Coupling" and r["min_scale"] < 1e-3]
print(f"couplings whose smallest s is below 1e-3 far OOD: {floored}")
assert j["index"] in floored
after = [r["variance"] for r in d_far["rows"] if r["index"] <= j["index"]]  # the jump's layer and every later one
assert min(after) > 1e4 * max(r["variance"] for r in d_in["rows"])  # the blown-up values are carried to the output
display(Markdown(
    f"For seed {SHOW} the largest jump is ×{j['factor']:.2g} in variance, at coupling {j['index']}: "
    + ("more than the 10⁸ that the scale alone can give, so the shift t added its own spread. " if j["factor"] > 1e8
       else "within the 10⁸ that the scale alone can give. ")
    + f"{len(floored)} of the {sum(r['name'] == 'Coupling' for r in d_far['rows'])} couplings used a scale below 10⁻³ "
    f"(layers {', '.join(map(str, floored))}), and every layer after the jump keeps a variance over 10⁴ times "
    "the largest in distribution."
))

# %% [markdown]
# ## 5. 1/s against the conditioner's output
#
# Why that layer? Its conditioner sees [x_a, y] with y far outside anything it was trained on and
# outputs a very negative h. The sampling pass divides by s = sigmoid(h + 2) + ε, i.e. multiplies
# by 1/s, which follows the curve below and saturates at 1/ε = 10⁴. Each dot is one sample going
# through one coupling: in distribution they sit between 1/s = 1 and a few; far OOD some sit on the
# ceiling (both ranges printed below).


# %%
def coupling_h(flow, d):
    """(h, 1/s) of every coupling the traced sampling pass `d` went through (d from keep=True)."""
    cond = toy.as_cond(d["y"], d["rows"][0]["output"].shape[0], flow)
    out = []
    for prev, row in zip(d["rows"][:-1], d["rows"][1:]):
        if row["name"] == "Coupling":
            layer = flow.layers[row["index"]]
            with torch.no_grad():  # the coupling's input in the sampling pass is the previous row's output
                h = layer.conditioner_output(prev["output"], cond)[..., 1].flatten()
            s, _ = layer.bijection.scale(h)
            out.append((row["index"], h.cpu(), (1 / s).cpu()))
    return out


hh = torch.linspace(-25, 10, 500)
s_curve, _ = mf.Affine("sigmoid").scale(hh)
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.semilogy(hh, 1 / s_curve, color="k", lw=1.5, label="1/s = 1/(sigmoid(h+2) + ε)")
ax.axhline(1e4, color="k", ls="--", lw=1)
ax.text(-24.5, 1.4e4, "ceiling 1/ε = 10⁴ (floor s = ε)", fontsize=10)
for label, d, colour in [("in distribution", d_in, COLORS["data"]), ("far OOD", d_far, COLORS["affine"])]:
    pairs = coupling_h(m0, d)
    h_all = torch.cat([p[1] for p in pairs]).clamp(-25, 10)
    ax.scatter(h_all[::4], torch.cat([p[2] for p in pairs])[::4], s=25, alpha=0.6, color=colour, edgecolors="k", linewidths=0.3, zorder=3, label=f"samples, {label}")
ax.set(title=f"sampling stretch 1/s against conditioner output h (seed {SHOW})", xlabel="conditioner output h (clipped to [-25, 10] for display)", ylabel="1/s (sampling slope)", ylim=(0.5, 5e4))
ax.legend(loc="center right")
plt.show()
h_far = torch.cat([p[1] for p in coupling_h(m0, d_far)])
h_in = torch.cat([p[1] for p in coupling_h(m0, d_in)])
print(f"h in distribution: {h_in.min().item():.1f} .. {h_in.max().item():.1f}; far OOD: down to {h_far.min().item():.3g}")
inv_in, inv_far = (torch.cat([p[2] for p in coupling_h(m0, d)]) for d in (d_in, d_far))
print(f"1/s in distribution: {inv_in.min().item():.2f} .. {inv_in.max().item():.2f}; far OOD: up to {inv_far.max().item():.4g}")
assert h_far.min() < -11 < h_in.min()  # sigmoid(h + 2) < 1e-4 below h ~ -11: the floor takes over
assert inv_in.max() < 10 and inv_far.max() > 0.9e4  # "between 1 and a few"; "on the ceiling"

# %% [markdown]
# ## 6. Try it: a slider over y
#
# Pick a model, a direction and a distance (log scale) and the samples and the per-layer trace are
# redrawn. Start at the model's worst direction and push |y| from 1 to 1000.

# %%
out = widgets.Output()
seed_w = widgets.Dropdown(options=SEEDS, value=SHOW, description="seed")
# the sliders start where the first drawing below is, and redraw when released (a redraw takes a moment)
angle_w = widgets.IntSlider(value=int(round(toy.worst(scan[SHOW])["angle"])), min=0, max=359, description="angle (°)", continuous_update=False)
logr_w = widgets.FloatSlider(value=3.0, min=-1.0, max=3.0, step=0.1, description="log10 |y|", continuous_update=False)


def redraw(seed, angle, logr):
    r, a = 10.0**logr, math.radians(angle)
    d = toy.diagnose(models[seed], (r * math.cos(a), r * math.sin(a)), n=500, n_jac=0)
    with out:
        out.clear_output(wait=True)
        fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
        xs = d["samples"]
        ax0.scatter(xs[:, 0], xs[:, 1], s=4, alpha=0.4, color=COLORS["affine"])
        c = toy.corners(d["y"])
        ax0.plot(*torch.cat([c, c[:1]]).T, color=COLORS["data"], lw=1.5, label="true support")
        ax0.set(title=f"samples at y = ({d['y'][0]:.3g}, {d['y'][1]:.3g})", xlabel="$x_1$", ylabel="$x_2$")
        ax0.plot([], [], " ", label=f"spread {d['spread']:.3g}, min s {d['min_scale']:.1e}")
        ax0.legend(loc="lower right")
        ax1.semilogy([r_["variance"] for r_ in d["rows"]], "o-", color=COLORS["affine"])
        ax1.set_xticks(range(len(d["rows"])), layer_labels(d["rows"]))
        ax1.set(title="per-layer variance of the sampling pass", xlabel="layer", ylabel="variance")
        plt.tight_layout()
        plt.show()


def on_change(_):
    redraw(seed_w.value, angle_w.value, logr_w.value)


for w_ in (seed_w, angle_w, logr_w):
    w_.observe(on_change, names="value")
display(widgets.HBox([seed_w, angle_w, logr_w]), out)
redraw(seed_w.value, angle_w.value, logr_w.value)  # draw once directly, so a headless run shows (and tests) it too

# %% [markdown]
# ## 7. Why: bounded one way, unbounded the other
#
# A map is *bi-Lipschitz* when it can neither stretch nor squash distances by more than fixed
# factors: L⁻¹ |a − b| ≤ |f(a) − f(b)| ≤ L |a − b|. A flow has two directions, and each needs its
# own bound.
#
# - **Density direction (training).** One coupling maps x_b to (x_b + t) s, slope s ≤ 1 + ε. It
#   can never stretch x_b by more than 1 + ε, whatever the conditioner does (the shift t is not
#   bounded: it moves values, it does not multiply them), and it cannot buy likelihood by
#   expanding. This is why SRFlow chose the sigmoid.
# - **Sampling direction (inference).** The inverse x_b = z_b / s − t has slope 1/s, bounded only
#   by 1/ε = 10⁴. Training never needs that bound: in distribution the learned s stays well away
#   from ε (section 2's table). Nothing in the objective controls s for conditions it never saw.
# - **Compounding.** In a stack of K couplings the sampling slopes multiply, up to 10⁴ per layer;
#   worse, a coupling's t and h depend on x_a, which the previous layers may already have blown up,
#   so one large stretch feeds the next conditioner an input as far out of distribution as y.
#   The trace of section 4 shows both: a jump at a coupling's inverse, then large values carried on.
#
# **Remark 2 of the paper**, in our words: to keep the inverse from exploding, the element-wise map
# needs a derivative whose lower and upper bounds are close wherever the input is large — ideally
# slope about 1 there, for every condition. Affine couplings with a learned, condition-dependent
# scale cannot offer that: their slope is s everywhere, and s is whatever an untrained region of
# the conditioner says. Chapter 7 builds couplings that are the identity (slope exactly 1) outside
# a box, and compares them on exactly the axes of this chapter.

# %% [markdown]
# ## Exercises
#
# The cell after each exercise holds a solution (a stub to fill in, in the student version) and the
# `check` cell after that tests the answer. Try it yourself first.
#
# **Exercise 1.** How dangerous is the circle at |y| = 1000 for each model? From `scan`, compute
# for each seed the fraction of the 360 directions whose spread exceeds 10x its in-distribution
# spread. Store a dict seed -> fraction in `frac`.

# %% tags=["solution"] hint="for each seed s, count the rows r of scan[s] with r['spread'] / in_spread[s] > 10 and divide by len(scan[s])"
frac = {s: sum(r["spread"] / in_spread[s] > 10 for r in scan[s]) / len(scan[s]) for s in SEEDS}
print({s: f"{f:.0%}" for s, f in frac.items()})

# %% tags=["check"]
assert all(f > 0 for f in frac.values())  # every model has an exploding direction...
assert max(frac.values()) > 5 * min(frac.values())  # ...but how many varies a lot between seeds

# %% [markdown]
# **Exercise 2.** In distribution, a lower temperature gives tidier samples (chapter 2). Does it
# rescue a far-OOD condition? For seed 0 at its worst direction (`y_far`), compute the spread at
# T = 0.2 with `toy.diagnose(..., temperature=0.2)` and compare with the in-distribution spread.

# %% tags=["solution"] hint="toy.diagnose(m0, y_far, n=N_OOD, n_jac=0, temperature=0.2) returns a dict with 'spread' and 'min_scale'; compare its spread with in_spread[SHOW]"
cold = toy.diagnose(m0, y_far, n=N_OOD, n_jac=0, temperature=0.2)
print(f"T = 0.2 far OOD: spread {cold['spread']:.3g} (in distribution at T = 1: {in_spread[SHOW]:.3g}); smallest s {cold['min_scale']:.1e}")
# No: the stretch 1/s ~ 1e4 does not depend on z's size, so shrinking z by 5 leaves a huge spread.

# %% tags=["check"]
assert cold["spread"] > 10 * in_spread[SHOW]

# %% [markdown]
# **Exercise 3.** Seed 3 explodes only in a narrow wedge (the narrowest of the five, counted in 3c). Follow its worst direction inward:
# compute the smallest scale s at |y| = 10, 100 and 1000 along it, and find the first of these
# distances at which s < 0.01. Store it in `onset`.

# %% tags=["solution"] hint="seed 3's worst direction is torch.tensor(far[3]['y']) / toy.FAR_OOD_RADIUS; call toy.diagnose(models[3], ...) at R times it for each R and keep 'min_scale' in a dict s_along"
y3 = torch.tensor(far[3]["y"]) / toy.FAR_OOD_RADIUS
s_along = {R: toy.diagnose(models[3], tuple((R * y3).tolist()), n=N_OOD, n_jac=0)["min_scale"] for R in (10.0, 100.0, 1000.0)}
onset = next(R for R, s in s_along.items() if s < 0.01)
print({R: f"{s:.2e}" for R, s in s_along.items()}, "onset:", onset)

# %% tags=["check"]
assert s_along[10.0] > 0.01 and onset == 1000.0
assert n_dirs[3] == min(n_dirs.values())  # the exercise's "narrow wedge"

# %% [markdown]
# **Exercise 4.** The Jacobian tells the same story as the spread. For seed 0, compare the largest
# singular value of dx/dz in distribution (`d_in`-style: `toy.diagnose(m0, y_in)['max_sv']`) with
# the one far OOD (`far[0]['max_sv']`). By roughly how many powers of ten do they differ? Store the
# answer (a float, log10 of the ratio) in `decades`.

# %% tags=["solution"] hint="math.log10 of far[SHOW]['max_sv'] divided by toy.diagnose(m0, y_in, n=200, n_jac=16)['max_sv']"
decades = math.log10(far[SHOW]["max_sv"] / toy.diagnose(m0, y_in, n=200, n_jac=16)["max_sv"])
print(f"far OOD the sampling map stretches about 10^{decades:.1f} times more")

# %% tags=["check"]
assert decades > 2
