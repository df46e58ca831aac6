# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 4: A small SRFlow on real photos
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minflow-course/minflow/blob/main/chapters/04_small_srflow.ipynb)
#
# Chapters 2 and 3 conditioned a flow on a 2D vector. Now the condition is a whole image: a
# low-resolution (LR) photo, and the flow models the distribution of high-resolution (HR) photos
# that could have produced it, 4x larger on each side. This is SRFlow (Lugmayr et al. 2020) at
# laptop scale: an encoder turns the LR image into feature maps, and a multi-level conditional flow
# made of the parts you already know (ActNorm, 1x1 convolutions, affine couplings) reads them. We
# build it piece by piece, train it for a few steps live, then load the checkpoint that ships with
# the course and measure what it does well (many different, detailed answers tied to the input) and
# what it does not (it does not beat bicubic interpolation in PSNR or in LR-consistency).

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
import os
import statistics

import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

import minflow as mf
from minflow import data, metrics, report, sr
from minflow.checkpoints import load_pretrained
from minflow.plotting import COLORS, style

style()
device = mf.get_device()  # cuda when available, else cpu
QUICK = mf.quick_mode()  # MINFLOW_QUICK=1 (set by `make test`) trains fewer live steps
gen = mf.seed_everything(0)  # the one place this chapter seeds; every sample below uses a fixed generator
if device.type == "cpu":  # small convolutions: on a few shared cores, extra threads mostly wait on each other
    torch.set_num_threads(max(1, min(4, (os.cpu_count() or 2) // 2)))
print(f"device={device}, quick={QUICK}")

# %% [markdown]
# ## 1. The data: photos, crops and the bicubic degradation
#
# Eleven photos that ship inside scikit-image and scikit-learn are the training set; two others,
# `coffee` and `china`, are held out for validation (`data.TRAIN_PHOTOS`, `data.VAL_PHOTOS`). A
# training pair is a random 64x64 HR crop and its LR: the crop shrunk 4x with antialiased bicubic
# interpolation (`data.bicubic_down`, Matlab's convention, the one SR benchmarks use). That is the
# only degradation the model ever sees; chapter 5 feeds it others.

# %%
FACTOR, CROP = 4, 64
train_photos = data.load_photos(data.TRAIN_PHOTOS)
print("training photos:", ", ".join(f"{n} {tuple(p.shape[1:])}" for n, p in zip(data.TRAIN_PHOTOS, train_photos)))
print("validation photos:", data.VAL_PHOTOS)
assert len(data.TRAIN_PHOTOS) == 11 and tuple(data.VAL_PHOTOS) == ("coffee", "china")  # as the text says

hr_batch = data.random_crops(train_photos, CROP, 16, generator=gen)
lr_batch = data.bicubic_down(hr_batch, FACTOR)
print(f"a batch: HR {tuple(hr_batch.shape)}, LR {tuple(lr_batch.shape)}")

fig, axes = plt.subplots(2, 6, figsize=(12, 4.4))
for k in range(6):
    axes[0, k].imshow(hr_batch[k].permute(1, 2, 0))
    axes[1, k].imshow(lr_batch[k].permute(1, 2, 0), interpolation="nearest")
    for ax in axes[:, k]:
        ax.set_xticks([]), ax.set_yticks([])
axes[0, 0].set_ylabel("HR 64x64")
axes[1, 0].set_ylabel("LR 16x16")
fig.suptitle("training pairs: random HR crops and their bicubic LR")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Building the model piece by piece
#
# **The encoder** g(y) reads the LR image with a 3x3 convolution and four residual dense blocks
# (the RRDB-style blocks of ESRGAN, much narrower). Their outputs are concatenated, and one 1x1
# "adapter" per flow level resizes them to that level's spatial size: the first level works at
# HR/2 (twice the LR size, nearest upsampling), the second at the LR size, the third at LR/2
# (average pooling). The result is a dict keyed by size; every conditional layer picks the map
# that matches its input.

# %%
LEVELS, K, HIDDEN, COND = 3, 3, 32, 32
torch.manual_seed(0)
encoder = sr.Encoder(FACTOR, LEVELS, nf=32, blocks=4, gc=16, out_channels=COND)
feats = encoder(lr_batch[:2])
for size, f in feats.items():
    print(f"level features at {size}: {tuple(f.shape)}")


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


print(f"encoder: {n_params(encoder):,} parameters")

# %% [markdown]
# **One level of the flow.** A squeeze trades space for channels (3x64x64 -> 12x32x32), so that
# couplings can mix neighbouring pixels. A transition step (ActNorm + invertible 1x1 convolution)
# follows, then K = 3 conditional steps, each:
#
# - ActNorm and a 1x1 convolution (as in Glow);
# - an **injector**: every channel is scaled and shifted, z = (x + t) · s, with (t, h) computed
#   from the condition features alone;
# - a **coupling**: half the channels pass through, the other half get (x_b + t) · s with (t, h)
#   computed from the first half *and* the condition features.
#
# Both use SRFlow's scale s = sigmoid(h + 2) + 10⁻⁴: never below 10⁻⁴, never above 1 + 10⁻⁴. Keep
# that floor in mind; chapter 5 is about what 1/s does when sampling.

# %%
def affine():
    return mf.make_bijection("affine")  # Affine('sigmoid', eps=1e-4): SRFlow's scale


def flow_level(c: int) -> tuple[list, int]:
    """Squeeze, one transition step and K conditional steps on c input channels; returns (layers, 4c)."""
    c = 4 * c
    layers = [mf.Squeeze(), mf.ActNorm(c), mf.InvConv1x1(c, lu=True)]
    for _ in range(K):
        layers += [
            mf.ActNorm(c),
            mf.InvConv1x1(c, lu=True),
            mf.Injector(c, COND, affine(), kind="conv", hidden=HIDDEN),
            mf.Coupling(c, COND, affine(), kind="conv", hidden=HIDDEN),
        ]
    return layers, c


level1, c = flow_level(3)
x, logdet = hr_batch[:2], torch.zeros(2)
print(f"{'layer':<12}{'output shape':>20}{'parameters':>12}")
for layer in level1:
    x, ld = layer(x, feats)
    logdet = logdet + ld
    print(f"{type(layer).__name__:<12}{str(tuple(x.shape)):>20}{n_params(layer):>12,}")
print(f"log|det| of level 1 so far: {logdet.tolist()}")

# %% [markdown]
# **The split.** After each level but the last, half of the channels leave the flow: they are
# scored under a Gaussian whose mean and log-std come from a zero-initialised convolution of the
# *kept* half (SRFlow's split prior; it does not read the LR features, so its variance cannot be
# driven by an odd condition: chapter 8 shows the variant that can). The kept half continues into
# the next level.

# %%
split1 = mf.Split(c)
kept, log_prior = split1(x, feats)
print(f"split: {tuple(x.shape)} -> kept {tuple(kept.shape)}; log-density of the dropped half {log_prior.tolist()}")

# %% [markdown]
# Three levels (with splits after the first two) and the top prior N(0, I) make the whole flow.
# `minflow.sr.SRFlow` builds exactly this list; to check, we assemble our pieces into a
# `ConditionalFlow` and load its weights into an `SRFlow`: the parameter names and shapes must match
# one for one, and the two must give the same likelihood.

# %%
torch.manual_seed(0)
layers, c = [], 3
for level in range(LEVELS):
    level_layers, c = flow_level(c)
    layers += level_layers
    if level < LEVELS - 1:
        layers.append(mf.Split(c))
        c -= c // 2
hand = mf.ConditionalFlow(layers, encoder=sr.Encoder(FACTOR, LEVELS, nf=32, blocks=4, gc=16, out_channels=COND))
hand(hr_batch, lr_batch)  # one forward pass in training mode initialises every ActNorm from data
packaged = sr.SRFlow(factor=FACTOR, levels=LEVELS, flow_steps=K, hidden=HIDDEN, cond_channels=COND)
packaged.load_state_dict(hand.state_dict())  # raises if any name or shape differed
hand.eval(), packaged.eval()
with torch.no_grad():
    same = torch.allclose(hand.log_prob(hr_batch, lr_batch), packaged.log_prob(hr_batch, lr_batch))
print(f"top latent for a 64x64 crop: {tuple(packaged(hr_batch[:1], lr_batch[:1])[0].shape)} ({c} channels at HR/8)")
print(f"same log-likelihood: {same}")
assert same

# %%
groups = {"encoder": n_params(packaged.encoder)}
for name in ("Injector", "Coupling", "Split", "ActNorm", "InvConv1x1"):
    groups[name] = sum(n_params(layer) for layer in packaged.layers if type(layer).__name__ == name)
total = n_params(packaged)
assert sum(groups.values()) == total
for name, n in groups.items():
    print(f"{name:<11}{n:>9,}  ({n / total:5.1%})")
print(f"{'total':<11}{total:>9,}")
assert 0.55e6 < total < 0.65e6  # "about 0.6 million"
assert (groups["Injector"] + groups["Coupling"]) / total > 0.5  # "most of them"

# %% [markdown]
# About 0.6 million parameters: tiny next to the SRFlow paper's model, whose encoder alone is
# ESRGAN's 23-block RRDB network. Most of them sit in the conditioners of the couplings and
# injectors, which is also where the condition enters.
#
# ## 3. Training for a few steps, live
#
# The loss is the negative log-likelihood of the HR crop given its LR, in bits per dimension. The
# pixels are continuous stand-ins for 32-level images: we add uniform noise of one quantisation bin
# (*dequantisation*) so that the density cannot collapse onto a grid (`SRFlow.nll_bpd`). The
# recipe is the one that made the shipped checkpoint: Adam at 5·10⁻⁴, batch 16, fresh random crops
# every step.

# %%
STEPS = mf.pick(60, 20)
model = sr.SRFlow(factor=FACTOR, levels=LEVELS, flow_steps=K, hidden=HIDDEN, cond_channels=COND).to(device)
optim = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.99))
stream = iter(data.CropDataset(train_photos, CROP, batch_size=16, factor=FACTOR, seed=0))
noise_gen = torch.Generator(device).manual_seed(0)  # dequantisation noise, drawn where the model lives
history = []
model.train()
for step in (bar := tqdm(range(STEPS), desc="training", unit="step")):
    hr, lr = (t.to(device) for t in next(stream))
    loss = model.nll_bpd(hr, lr, noise_gen).mean()
    optim.zero_grad()
    loss.backward()
    optim.step()
    history.append(loss.item())
    bar.set_postfix(bpd=f"{loss.item():.3f}")
model.eval()

fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(range(1, STEPS + 1), history, color=COLORS["affine"], marker="o", ms=3)
ax.set(title="live training: bits per dimension", xlabel="step", ylabel="bpd (dequantised HR | LR)")
plt.show()
first, last = statistics.mean(history[:5]), statistics.mean(history[-5:])
print(f"mean bpd of the first 5 steps {first:.3f}, of the last 5 {last:.3f}")
assert last < first - 0.2, "the loss should fall clearly within a few steps"

# %% [markdown]
# The loss falls quickly at first, then slowly: the shipped model trained for many more steps, on
# one CPU core. We load it instead of waiting. Its manifest records how it was made, and how long
# it took.

# %%
model = load_pretrained("sr_affine", device=device)
man = model.manifest
print(f"command: {man['command']}")
print(f"{man['steps']} steps, seed {man['seed']}, {man['wall_time_s'] / 60:.0f} min of training on {man['training']['threads']} thread(s); "
      f"validation bpd {man['metrics']['val_bpd']:.3f} (the {STEPS}-step model above: about {last:.1f})")
train = man["training"]  # the recipe the text describes, and the model's size
assert (train["lr"], train["batch"], train["crop"], train["threads"]) == (5e-4, 16, CROP, 1)
assert man["config"]["quant"] == 32 and (man["config"]["levels"], man["config"]["steps"]) == (LEVELS, K)
assert man["steps"] > 10 * STEPS and 20 < man["wall_time_s"] / 60 < 45  # many more steps; about half an hour

# %% [markdown]
# ## 4. Super-resolving held-out photos
#
# We take the central 256x256 crop of each validation photo as HR, its 64x64 bicubic LR as input,
# and draw 8 samples at temperature 0.7 (latents z ~ N(0, 0.7² I), a little cooler than the 0.9 SRFlow
# reports with; what a higher temperature does is chapter 5's story). The sampling pass is run with `model.trace`, which
# also reports the smallest scale s any layer used. Nothing is clamped yet: we first record the
# raw samples' range with the artifact report of `minflow.metrics` (chapter 5 explains it), then
# clamp copies to [0, 1] for viewing and for the image metrics.

# %%
HR_SIZE, TEMP, N_SAMPLES = 256, 0.7, 8
val = {}
for name, photo in zip(data.VAL_PHOTOS, data.load_photos(data.VAL_PHOTOS)):
    hr = data.center_crop(photo, HR_SIZE)
    lr = data.bicubic_down(hr, FACTOR)
    cond = lr[None].expand(N_SAMPLES, -1, -1, -1).contiguous().to(device)
    raw, rows = model.trace(cond, temperature=TEMP, generator=torch.Generator(device).manual_seed(0))
    artifacts = metrics.artifact_report(raw.cpu(), metrics.min_scale(rows))
    val[name] = dict(hr=hr, lr=lr, raw=raw.cpu(), samples=raw.cpu().clamp(0, 1), bicubic=data.bicubic_up(lr, FACTOR))
    s = artifacts["summary"]
    print(f"{name}: raw samples max|x| {s['max_abs']:.2f}, non-finite {s['nonfinite']}, smallest s {s['min_scale']:.3f}, "
          f"artifact pixels {s['artifact_fraction']:.1e}")
    assert s["nonfinite"] == 0 and s["max_abs"] < 1e3, "no explosion in distribution at T = 0.7"
    assert s["min_scale"] > 100 * 1e-4, "the text says: far above the floor"
    assert s["artifact_fraction"] < 1e-4, "the text says: a handful of pixels, a few in 10^5"

# %% [markdown]
# No explosion: nothing is non-finite and the smallest scale used stays more than a hundred times
# above its floor of 10⁻⁴. A handful of pixels may still leave [0, 1] (the "artifact pixels" above,
# a few in 10⁵): small specks
# from the tails of the sampling distribution, which chapter 5 examines closely. Now the pictures: LR
# (shown with nearest-neighbour blocks), bicubic, three samples, the mean of all 8 samples, and HR;
# below each, the 96x96 window framed in it, enlarged.

# %%
def show(ax, img, title):
    ax.imshow(img.permute(1, 2, 0).clamp(0, 1), interpolation="nearest")
    ax.set_title(title, fontsize=11)
    ax.set_xticks([]), ax.set_yticks([])


ZOOM = (slice(64, 160), slice(96, 192))  # a 96x96 window, to see texture
for name, v in val.items():
    panels = [(v["lr"], "LR 64x64"), (v["bicubic"], "bicubic")]
    panels += [(v["samples"][k], f"sample {k + 1}, T={TEMP}") for k in range(3)]
    panels += [(v["samples"].mean(0), f"mean of {N_SAMPLES}"), (v["hr"], "HR (truth)")]
    fig, axes = plt.subplots(2, len(panels), figsize=(2.3 * len(panels), 5))
    for (img, title), top, bottom in zip(panels, axes[0], axes[1]):
        f = FACTOR if img is v["lr"] else 1  # the LR image is 4x smaller: so is its window
        show(top, img, title)
        top.add_patch(plt.Rectangle((ZOOM[1].start / f - 0.5, ZOOM[0].start / f - 0.5), 96 / f, 96 / f, fill=False, color=COLORS["other"], lw=2))
        show(bottom, img[:, ZOOM[0].start // f : ZOOM[0].stop // f, ZOOM[1].start // f : ZOOM[1].stop // f], "")
        for side in bottom.spines.values():  # the zoom's frame has the rectangle's colour
            side.set(visible=True, color=COLORS["other"], lw=2)
    axes[1, 0].set_ylabel("zoom: the\nframed window")
    fig.suptitle(f"{name}: 4x super-resolution by the small SRFlow")
    plt.tight_layout()
    plt.show()

# %% [markdown]
# The samples invent texture where bicubic interpolation only blurs: each sample a slightly different
# plausible version, and their mean looks like a (sharper) bicubic. Whether the invented texture is
# *right* is another matter, and that is what the numbers below measure.
#
# ## 5. Metrics against bicubic
#
# From `minflow.metrics`, with a border of 4 pixels shaved for the HR comparisons:
#
# - **PSNR** and **SSIM** against HR (fidelity);
# - **LR-PSNR**: shrink the output with the training degradation and compare with the LR input
#   (consistency: does the answer explain the input?);
# - **diversity**: the per-pixel standard deviation across the 8 samples, averaged over pixels;
# - **detail**: the RMS of the part of an image that the LR cannot carry, x − up(down(x)). HR has
#   it; a good sampler should produce about as much; bicubic output has almost none.
#
# "Sample" rows average each metric over the 8 samples; "mean" rows score the average of the samples.

# %%
def detail(x: torch.Tensor) -> float:
    """RMS of the high-frequency residual x - bicubic_up(bicubic_down(x)), on clamped copies."""
    x = x.clamp(0, 1)
    return (x - data.bicubic_up(data.bicubic_down(x, FACTOR), FACTOR)).pow(2).mean().sqrt().item()


table = []
for name, v in val.items():
    hr, lr, samples = v["hr"], v["lr"], v["samples"]
    mean = samples.mean(0)
    per_sample = lambda fn: statistics.mean(fn(x) for x in samples)
    rows = {
        "bicubic": (metrics.psnr(v["bicubic"], hr, FACTOR), metrics.ssim(v["bicubic"], hr, FACTOR),
                    metrics.lr_psnr(v["bicubic"], lr, FACTOR), math.nan, detail(v["bicubic"])),
        "sample": (per_sample(lambda x: metrics.psnr(x, hr, FACTOR)), per_sample(lambda x: metrics.ssim(x, hr, FACTOR)),
                   per_sample(lambda x: metrics.lr_psnr(x, lr, FACTOR)), metrics.diversity(samples), per_sample(detail)),
        f"mean of {N_SAMPLES}": (metrics.psnr(mean, hr, FACTOR), metrics.ssim(mean, hr, FACTOR),
                                 metrics.lr_psnr(mean, lr, FACTOR), math.nan, detail(mean)),
        "HR (truth)": (math.inf, 1.0, metrics.lr_psnr(hr, lr, FACTOR), math.nan, detail(hr)),
    }  # fmt: skip
    table += [(name, method, *values) for method, values in rows.items()]

print(report.format_table(table, [("photo", 0, ""), ("method", 1, ""), ("PSNR dB", 2, ".2f"), ("SSIM", 3, ".3f"), ("LR-PSNR dB", 4, ".2f"),
                                  ("diversity", 5, ".4f"), ("detail", 6, ".4f")]))  # fmt: skip
res = {(name, method): values for name, method, *values in table}

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
methods = ["bicubic", "sample", f"mean of {N_SAMPLES}", "HR (truth)"]
looks = [(COLORS["bicubic"], "s"), (COLORS["affine"], "o"), (COLORS["other"], "D"), (COLORS["data"], "*")]
for ax, col, label in zip(axes, (0, 2, 4), ("PSNR vs HR (dB)", "LR-PSNR (dB)", "detail (RMS)")):
    for method, (color, marker) in zip(methods, looks):  # a dot plot: the axis starts where the values are, not at 0
        values = [res[(name, method)][col] for name in val]
        if all(math.isfinite(v) for v in values):  # HR's PSNR against itself is infinite: not drawn
            ax.plot(values, range(len(val)), ls="", marker=marker, ms=11, color=color, label=method)
    ax.set_yticks(range(len(val)), list(val))
    ax.set(title=label, xlabel=label, ylim=(-0.5, len(val) - 0.5))
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
axes[2].legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
fig.suptitle("the small SRFlow against bicubic on the validation crops")
plt.tight_layout()
plt.show()

# %% [markdown]
# What the numbers say, and what the next cell checks:
#
# - **PSNR / SSIM:** the mean of the samples comes close to bicubic but does not beat it, and a
#   single sample scores lower still. That is expected of a *sampler*: invented detail that is
#   plausible but not the true detail costs twice in squared error, and averaging samples removes
#   some of it again (Jensen's inequality makes the mean's MSE never worse than the samples'
#   average). SRFlow trained for days on DIV2K beats bicubic; this model, trained for half an hour
#   on eleven photos, does not, and we will not pretend otherwise.
# - **Consistency:** shrinking a sample gives back its input to about 30 dB (an RMS error near 3%
#   of the range). That is clearly tied to *this* input (the same samples score 10 dB and more
#   worse against the other photo's LR), but it is *less* consistent than bicubic upscaling
#   (about 36 dB), let alone the true HR (exact). A short-trained model leaves small errors all
#   over the image; the full-size SRFlow reaches LR-PSNR near 50 dB.
# - **Diversity and detail:** the samples differ from one another (a per-pixel spread of a few
#   percent of the range), and each carries more than twice the high-frequency detail of bicubic,
#   yet less than the true photo has: the model under-generates texture rather than over-generating it.

# %%
names = list(val)
for name, other in zip(names, names[::-1]):
    bic, smp, avg, truth = (res[(name, m)] for m in ("bicubic", "sample", f"mean of {N_SAMPLES}", "HR (truth)"))
    wrong = metrics.lr_psnr(val[name]["samples"], val[other]["lr"], FACTOR)  # the samples against another photo's LR
    print(f"{name}: samples' LR-PSNR {smp[2]:.1f} dB against their own LR, {wrong:.1f} dB against {other}'s")
    assert abs(avg[0] - bic[0]) < 2.0, f"{name}: mean-sample PSNR {avg[0]:.2f} not within 2 dB of bicubic {bic[0]:.2f}"
    assert smp[0] <= avg[0], f"{name}: single samples should not beat their mean in PSNR"
    assert avg[0] < bic[0] and avg[1] < bic[1], f"{name}: the text says the mean does not beat bicubic (PSNR, SSIM)"
    assert smp[1] < avg[1], f"{name}: the text says a single sample scores lower than the mean in SSIM too"
    assert 27 < smp[2] < 33 and 34 < bic[2] < 38, f"{name}: LR-PSNR samples {smp[2]:.1f}, bicubic {bic[2]:.1f} (text: about 30 and 36 dB)"
    assert smp[3] < 0.1, f"{name}: diversity {smp[3]:.4f} is more than a few percent of the range"
    assert smp[2] > 25 and smp[2] > wrong + 10, f"{name}: samples' LR-PSNR {smp[2]:.1f} dB: they do not explain their input"
    assert smp[2] < bic[2], f"{name}: the text says bicubic is more LR-consistent than this model"
    assert smp[3] > 0.01, f"{name}: samples hardly differ (diversity {smp[3]:.4f})"
    assert 2 * bic[4] < smp[4] < truth[4], f"{name}: detail bicubic {bic[4]:.4f}, samples {smp[4]:.4f}, HR {truth[4]:.4f}"
print("checked: PSNR within 2 dB of bicubic, input-specific consistency (below bicubic's), diverse, more detail than bicubic")

# %% [markdown]
# ## Summary
#
# - A conditional flow for super-resolution is an encoder of the LR image plus a multi-level flow
#   whose injectors and couplings read the encoder's features at each level's size.
# - Trained by maximum likelihood, it gives a *distribution* of answers: many HR images that fit
#   the input and carry invented detail, instead of the one blurred average that minimises squared error.
# - PSNR rewards the blurred average. This small model does not beat bicubic in PSNR, and its
#   single samples score lower than their mean (asserted above). For squared error that holds by
#   construction (the error of the mean is at most the mean error); for the mean of per-sample
#   PSNRs it is a measurement, since the logarithm could reverse it. Its samples are tied to their
#   input, but less tightly than bicubic's output: a short-trained model is not a converged one.
# - Every scale in this model is s = sigmoid(h + 2) + 10⁻⁴, and sampling divides by it. On these
#   photos at T = 0.7 nothing went wrong. Chapter 5 feeds the model inputs it has never seen.

# %% [markdown]
# ## Exercises
#
# The cell after each exercise holds a solution (a stub to fill in, in the student version) and the
# `check` cell after that tests the answer. Try it yourself first.
#
# **Exercise 1.** Temperature 0 sends z = 0 through the flow: one deterministic answer. Draw 2
# samples of `coffee` at T = 0 and compute their diversity (store it in `div0`), and the PSNR of
# that answer against HR (`psnr0`). Is it better or worse than the T = 0.7 mean?

# %% tags=["solution"] hint="sr.super_resolve(model, v['lr'], temperature=0.0, num_samples=2, generator=...) with v = val['coffee']; then metrics.diversity and metrics.psnr(x, v['hr'], FACTOR) on the samples clamped to [0, 1]"
v = val["coffee"]
x0 = sr.super_resolve(model, v["lr"], temperature=0.0, num_samples=2, generator=torch.Generator(device).manual_seed(1)).cpu()
div0 = metrics.diversity(x0.clamp(0, 1))
psnr0 = metrics.psnr(x0[0].clamp(0, 1), v["hr"], FACTOR)
print(f"T = 0: diversity {div0:.2g}, PSNR {psnr0:.2f} dB (mean of T = 0.7 samples: {res[('coffee', f'mean of {N_SAMPLES}')][0]:.2f} dB)")

# %% tags=["check"]
assert div0 < 1e-6
assert abs(psnr0 - res[("coffee", f"mean of {N_SAMPLES}")][0]) < 2.0

# %% [markdown]
# **Exercise 2.** How does the PSNR of the mean grow with the number of samples averaged? For
# `china`, compute the PSNR of the mean of the first n samples for n = 1, 2, 4, 8 (a list
# `psnr_n`), and plot it against n next to the bicubic PSNR.

# %% tags=["solution"] hint="metrics.psnr(v['samples'][:n].mean(0), v['hr'], FACTOR) with v = val['china'], for n in 1, 2, 4, 8; res[('china', 'bicubic')][0] is the bicubic PSNR"
v = val["china"]
ns = [1, 2, 4, 8]
psnr_n = [metrics.psnr(v["samples"][:n].mean(0), v["hr"], FACTOR) for n in ns]
fig, ax = plt.subplots(figsize=(5, 3.3))
ax.plot(ns, psnr_n, marker="o", color=COLORS["affine"], label="mean of n samples")
ax.axhline(res[("china", "bicubic")][0], color=COLORS["bicubic"], ls="--", label="bicubic")
ax.set(xscale="log", xticks=ns, xticklabels=ns, xlabel="samples averaged n", ylabel="PSNR (dB)", title="china: averaging samples")
ax.legend()
plt.show()

# %% tags=["check"]
assert psnr_n[-1] > psnr_n[0]  # averaging removes sample-specific detail, and with it error

# %% [markdown]
# **Exercise 3.** Is the samples' LR error (about 30 dB, see the table) just a global colour
# shift that a constant correction would remove? For the T = 0 answer `x0` of Exercise 1, compute
# the per-channel mean of `bicubic_down(x0) - lr` (`bias`, 3 numbers) and the RMS of that difference
# (`rms`). Compare.

# %% tags=["solution"] hint="data.bicubic_down(x0[0].clamp(0, 1), FACTOR) - val['coffee']['lr'] is the LR error; its mean over dims (1, 2) is the bias per channel, the square root of its mean square the RMS"
err = data.bicubic_down(x0[0].clamp(0, 1), FACTOR) - val["coffee"]["lr"]
bias = err.mean(dim=(1, 2))
rms = err.pow(2).mean().sqrt().item()
print(f"per-channel bias {[round(b, 4) for b in bias.tolist()]}, RMS error {rms:.4f}")
# The bias is a fraction of the RMS error: the error is spread over the image, not a colour cast.

# %% tags=["check"]
assert bias.abs().max() < 0.5 * rms

# %% [markdown]
# **Exercise 4.** Where do the 0.6 M parameters act? Compute the fraction of all parameters that
# sit in networks reading the condition (the encoder, the injectors, the couplings), `cond_frac`.

# %% tags=["solution"] hint="add groups['encoder'], groups['Injector'] and groups['Coupling'], and divide by total"
cond_frac = (groups["encoder"] + groups["Injector"] + groups["Coupling"]) / total
print(f"{cond_frac:.0%} of the parameters read the LR image")

# %% tags=["check"]
assert 0.8 < cond_frac < 1.0
