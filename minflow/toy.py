"""The 2D toy of chapters 2, 3, 6 and 7: a conditional task, its flows, training, diagnostics.

The task. The condition is y ~ N(0, I2); given y, x is uniform on a thin slanted parallelogram
centred at y / 2:

    x = A u + y / 2,   u ~ U[-1, 1]^2,   A = [[1, 0], [0.8, 0.15]],

so E[x | y] = y / 2 and Cov[x | y] = A A^T / 3 (the same for every y). The flow learns p(x | y)
from pairs (x, y) drawn with y in distribution; chapter 3 then asks it for samples at y far away.

The models. `toy_flow` stacks ``flow_steps`` blocks of [ActNorm, 2x2 invertible linear map,
conditional coupling] whose element-wise bijection is picked by name (`minflow.bijections`:
"affine" is SRFlow's sigmoid(h + 2) + 1e-4 scale) or given as a factory. It is registered as the checkpoint
builder "toy", so shipped checkpoints load with ``load_pretrained("toy_affine_s0")``.

Diagnostics. One measure of spread is used everywhere: `spread` = the root of the mean
per-coordinate variance of a set of samples (for the true conditional, `true_spread()` ~ 0.53).
`diagnose` reports it for one y together with the smallest scale s any coupling used in the
sampling pass (recorded with `minflow.recording`) and the largest singular value of the sampling
map's Jacobian; `sweep` does that
along a ray y = r * direction, and `ring` scans a whole circle of conditions in a few batches
(`worst` picks its most exploded direction: chapter 3's "far OOD").

Train a checkpoint (into runs/NAME/checkpoints/; with ``--ship`` into the shipped folder
data/checkpoints/ or $MINFLOW_DATA/checkpoints/, where only ``--force`` replaces one):

    python -m minflow train-toy --coupling affine --seed 0 --steps 2000 --name toy_affine_s0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .bijections import Spec, make_bijection, spec_name
from .couplings import Coupling
from .diagnostics import recording
from .flow import ConditionalFlow
from .metrics import min_scale
from .transforms import ActNorm, InvConv1x1
from .utils import adam, check_temperature

__all__ = [
    "A",
    "CENTER_GAIN",
    "TRUE_NLL",
    "OOD_DIRECTION",
    "FIRST_OOD_RADIUS",
    "FAR_OOD_RADIUS",
    "RING_DIRECTIONS",
    "IN_DIST_Y",
    "ToyFlowConfig",
    "as_cond",
    "corners",
    "diagnose",
    "flow_device",
    "inside_fraction",
    "jacobian_sv",
    "jump",
    "latent",
    "ring",
    "ring_directions",
    "sample_at",
    "sample_toy",
    "sample_x",
    "sample_y",
    "spread",
    "sweep",
    "to_u",
    "toy_flow",
    "train_toy",
    "true_cov",
    "true_mean",
    "true_spread",
    "validation_nll",
    "worst",
]

# ----------------------------------------------------------------------------- the task

A = torch.tensor([[1.0, 0.0], [0.8, 0.15]])
"""The parallelogram's shape: x = A u + CENTER_GAIN * y with u uniform on [-1, 1]^2."""
CENTER_GAIN = 0.5
TRUE_NLL = math.log(4.0 * abs(float(torch.linalg.det(A))))
"""The best achievable NLL in nats: the entropy of the uniform law, log(area) = log(0.6)."""

OOD_DIRECTION = (1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0))
"""The direction of the first far-OOD point the course tries, y = FIRST_OOD_RADIUS * OOD_DIRECTION."""
FIRST_OOD_RADIUS = 100.0
"""The first far-OOD setting, chosen before any shipped seed was trained. It explodes only 1 of the
5 shipped seeds: chapter 3 shows those numbers and why (OOD is not one place)."""
FAR_OOD_RADIUS = 1000.0
RING_DIRECTIONS = 360
"""Far OOD as chapter 3 asserts it: the worst of RING_DIRECTIONS evenly spaced directions (1 degree
apart) at |y| = FAR_OOD_RADIUS, the same rule for every seed. Chosen after the first point and then
a ring of 16 directions at |y| = 100 missed the explosion for some seeds (a ReLU conditioner is
linear far along a ray, so h runs to +inf or -inf depending on the direction, and in some seeds
only a narrow wedge of directions explodes); of the radii tried with the full 360-direction scan
(100, 200, 1000) it is the first at which every shipped seed explodes. Chapter 3 reports them all."""
IN_DIST_Y = ((0.0, 0.0), (1.0, 0.0), (-1.0, 1.0), (0.5, -1.5), (-1.5, -0.5))
"""A few in-distribution conditions (within ~1.6 standard deviations of the training mean)."""


def sample_y(n: int, generator: torch.Generator | None = None) -> Tensor:
    """n conditions y ~ N(0, I2), shape (n, 2), drawn on the CPU."""
    return torch.randn(n, 2, generator=generator)


def sample_x(y: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One x ~ p(x | y) per row of y (any device), shape (n, 2); the noise is drawn on the CPU."""
    u = 2.0 * torch.rand(y.shape[0], 2, generator=generator) - 1.0
    return (u @ A.T).to(y) + CENTER_GAIN * y


def sample_toy(n: int, generator: torch.Generator | None = None, device=None) -> tuple[Tensor, Tensor]:
    """n training pairs (x, y), on `device`. The same generator seed gives the same pairs anywhere."""
    y = sample_y(n, generator)
    x = sample_x(y, generator)
    return x.to(device), y.to(device)


def true_mean(y: Tensor) -> Tensor:
    """E[x | y] = y / 2, row by row."""
    return CENTER_GAIN * y


def true_cov(dtype=torch.float32) -> Tensor:
    """Cov[x | y] = A A^T / 3 (the variance of U[-1, 1] is 1/3); it does not depend on y."""
    a = A.to(dtype)
    return a @ a.T / 3.0


def true_spread() -> float:
    """`spread` of the true conditional: sqrt(trace(Cov[x | y]) / 2) ~ 0.526."""
    return math.sqrt(float(torch.trace(true_cov(torch.float64))) / 2.0)


def corners(y: Sequence[float] | Tensor) -> Tensor:
    """The 4 corners of the support of p(x | y) for one y, in order round the edge, shape (4, 2)."""
    u = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    return u @ A.T + CENTER_GAIN * torch.as_tensor(y, dtype=torch.float32)


def to_u(x: Tensor, y: Tensor) -> Tensor:
    """The parallelogram coordinates u = A^{-1}(x - y/2): p(x | y) is uniform on |u|_inf <= 1."""
    a_inv = torch.linalg.inv(A.double()).to(device=x.device, dtype=x.dtype)
    return (x - CENTER_GAIN * y.to(x)) @ a_inv.T


def inside_fraction(x: Tensor, y: Tensor, margin: float = 0.0) -> float:
    """Fraction of the rows of x inside the support of p(x | y) grown by `margin` (|u|_inf <= 1 + margin).

    y is one condition (shape (2,)) or one per row. Non-finite rows count as outside.
    """
    y = y.expand_as(x) if y.dim() == 1 else y
    u = to_u(x, y)
    ok = torch.isfinite(u).all(1) & (u.abs().amax(1) <= 1.0 + margin)
    return ok.double().mean().item()


# ----------------------------------------------------------------------------- the models


@dataclass(frozen=True)
class ToyFlowConfig:
    """The architecture of a `toy_flow`: the `coupling` bijection's name, `flow_steps` coupling blocks,
    conditioner `hidden` width and `depth` (what toy checkpoint manifests store)."""

    coupling: Spec = "affine"
    flow_steps: int = 4
    hidden: int = 64
    depth: int = 4

    def __post_init__(self) -> None:
        # fail early on a bad name; a registered factory is recorded by its name
        object.__setattr__(self, "coupling", spec_name(self.coupling))


def toy_flow(coupling: Spec = "affine", flow_steps: int = 4, hidden: int = 64, depth: int = 4, **kw) -> ConditionalFlow:
    """The toy conditional flow: `flow_steps` x [ActNorm(2), InvConv1x1(2), Coupling(2, cond 2)].

    ``coupling`` names the element-wise bijection (`minflow.bijections`, e.g. "affine" or
    "bounded_spline") or is a factory of one (e.g. a class); extra keywords go to it (e.g. ``eps``
    or ``clamp`` for the affine ones). The conditioner of each coupling is an MLP
    ([x_a, y] -> `depth` ReLU layers of `hidden` -> zero-initialised output).
    """
    layers = []
    for _ in range(flow_steps):
        bijection = make_bijection(coupling, **kw)
        layers += [ActNorm(2), InvConv1x1(2), Coupling(2, 2, bijection, kind="mlp", hidden=hidden, depth=depth)]
    return ConditionalFlow(layers, event_shape=(2,))


def flow_device(flow: nn.Module) -> torch.device:
    return next(flow.parameters()).device


def train_toy(
    flow: ConditionalFlow,
    steps: int,
    batch: int = 512,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fit `flow` to the toy by maximum likelihood (Adam); returns the loss (NLL in nats) per step.

    Fresh pairs every step from a generator seeded with `seed`. Raises FloatingPointError at the
    first non-finite loss rather than training on. Leaves the flow in eval mode.
    """
    device = flow_device(flow)
    gen = torch.Generator().manual_seed(seed)
    opt = adam(flow.parameters(), lr=learning_rate)
    flow.train()
    bar = range(steps)
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(bar, desc="training", unit="step")
        except ImportError:  # tqdm is a course extra, not a core dependency
            pass
    history: list[float] = []
    for step in bar:
        x, y = sample_toy(batch, gen, device)
        loss = -flow.log_prob(x, y).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {step}; lower the learning rate or check the model"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if progress and hasattr(bar, "set_postfix") and (step % 50 == 0 or step == steps - 1):
            bar.set_postfix(nll=f"{sum(history[-50:]) / len(history[-50:]):.3f}")
    flow.eval()
    return history


@torch.no_grad()
def validation_nll(flow: ConditionalFlow, n: int = 8192, seed: int = 12345) -> float:
    """Mean NLL (nats) on n fresh in-distribution pairs; compare with TRUE_NLL = log(0.6) ~ -0.51."""
    x, y = sample_toy(n, torch.Generator().manual_seed(seed), flow_device(flow))
    return -flow.log_prob(x, y).mean().item()


# ----------------------------------------------------------------------------- diagnostics


def spread(x: Tensor) -> float:
    """The course's one measure of sample spread: sqrt(mean over coordinates of the variance).

    Computed in float64 over the finite rows only (count the others with `diagnose`'s
    ``nonfinite``); nan when fewer than two rows are finite.
    """
    x = x.detach().double()
    x = x[torch.isfinite(x).all(1)]
    if x.shape[0] < 2:
        return float("nan")
    return x.var(0, unbiased=True).mean().sqrt().item()


def as_cond(y, n: int, flow: nn.Module) -> Tensor:
    """One condition y (shape (2,), a tuple, or (1, 2)) repeated n times on the flow's device."""
    p = next(flow.parameters())
    y = torch.as_tensor(y, dtype=p.dtype).reshape(1, 2)
    return y.to(p.device).expand(n, 2).contiguous()


def latent(
    n: int, temperature: float = 1.0, generator: torch.Generator | None = None, flow: nn.Module | None = None
) -> Tensor:
    """n latents z ~ N(0, T^2 I2), drawn on the CPU (same numbers on every device), moved to the flow's."""
    check_temperature(temperature)
    z = temperature * torch.randn(n, 2, generator=generator)
    if flow is not None:
        p = next(flow.parameters())
        z = z.to(device=p.device, dtype=p.dtype)
    return z


def sample_at(flow: ConditionalFlow, y, n: int = 2000, temperature: float = 1.0, generator=None) -> Tensor:
    """n samples of x | y at a temperature (latents from `latent`, so reproducible across devices)."""
    with torch.no_grad():
        return flow.sample(as_cond(y, n, flow), z=latent(n, temperature, generator, flow))


def jacobian_sv(flow: ConditionalFlow, y, z: Tensor) -> Tensor:
    """Largest singular value of the sampling map's Jacobian dx/dz at each row of z, shape (n,).

    The flow treats rows independently (in eval mode), so one Jacobian of the batch-summed output
    gives every per-sample 2x2 Jacobian at once (two backward passes for any n).
    """
    cond = as_cond(y, z.shape[0], flow)

    def summed(v: Tensor) -> Tensor:
        return flow.sample(cond, z=v).sum(0)

    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(summed, z.detach())  # (2, n, 2)
    jac = jac.permute(1, 0, 2)  # (n, 2 out, 2 in)
    finite = torch.isfinite(jac).flatten(1).all(1)
    out = torch.full((z.shape[0],), float("inf"), dtype=torch.float64)
    if finite.any():
        out[finite.cpu()] = torch.linalg.matrix_norm(jac[finite].double(), ord=2).cpu()
    return out


def jump(rows: list[dict]) -> dict:
    """The layer of a traced sampling pass whose output variance grew most over its input's.

    Returns that trace row with ``factor`` (output / input variance) added. Rows are in sampling
    order, the first being the latent, so the input of row k is row k - 1.
    """
    best, best_factor = None, -math.inf
    for prev, row in zip(rows[:-1], rows[1:]):
        factor = row["variance"] / max(prev["variance"], 1e-300)
        if factor > best_factor:
            best, best_factor = row, factor
    return {**best, "factor": best_factor}


def diagnose(
    flow: ConditionalFlow,
    y,
    n: int = 2000,
    temperature: float = 1.0,
    n_jac: int = 16,
    seed: int = 0,
    keep: bool = False,
) -> dict:
    """Everything chapter 3 reports about sampling at one condition y.

    Keys: ``y`` (tuple), ``radius`` (|y|), ``spread`` (`spread` of n samples), ``nonfinite`` (rows
    with an inf/NaN), ``max_abs`` (largest finite |x|), ``min_scale`` (smallest s anywhere in the
    inverse), ``max_sv`` (largest singular value of dx/dz over the first `n_jac` latents),
    ``jump`` (see `jump`), ``rows`` (the trace) and ``samples`` (CPU tensor). The latents come
    from a generator seeded with `seed`, so every model and every y sees the same z.
    """
    gen = torch.Generator().manual_seed(seed)
    z = latent(n, temperature, gen, flow)
    cond = as_cond(y, n, flow)
    x, rows = flow.trace(cond, z=z, keep=keep)
    finite = torch.isfinite(x).all(1)
    yt = tuple(float(v) for v in torch.as_tensor(y, dtype=torch.float64).reshape(2))
    sv = jacobian_sv(flow, y, z[:n_jac]) if n_jac > 0 else torch.empty(0)
    return {
        "y": yt,
        "radius": math.hypot(*yt),
        "spread": spread(x),
        "nonfinite": int((~finite).sum().item()),
        "max_abs": x[finite].abs().max().item() if finite.any() else float("nan"),
        "min_scale": min_scale(rows),
        "max_sv": sv.max().item() if sv.numel() else float("nan"),
        "jump": jump(rows),
        "rows": rows,
        "samples": x.detach().cpu(),
    }


def sweep(
    flow: ConditionalFlow,
    radii: Sequence[float],
    direction: Sequence[float] = OOD_DIRECTION,
    progress: bool = False,
    **kw,
) -> list[dict]:
    """`diagnose` at y = r * direction for each r in radii (direction normalised to unit length)."""
    d = torch.as_tensor(direction, dtype=torch.float64)
    d = d / d.norm()
    it = radii
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(radii, desc="sweep", unit="y")
        except ImportError:
            pass
    return [diagnose(flow, tuple((r * d).tolist()), **kw) for r in it]


def ring_directions(n: int = RING_DIRECTIONS) -> Tensor:
    """n unit vectors at angles 0, 360/n, ... degrees (the first is (1, 0)), shape (n, 2), float64."""
    angle = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
    return torch.stack([angle.cos(), angle.sin()], 1)


@torch.no_grad()
def ring(
    flow: ConditionalFlow,
    radius: float = FAR_OOD_RADIUS,
    n_directions: int = RING_DIRECTIONS,
    n: int = 500,
    temperature: float = 1.0,
    seed: int = 0,
    chunk: int = 100_000,
) -> list[dict]:
    """Sample n points at each y = radius * d over the `ring_directions`, in a few big batches.

    Every direction gets the same n latents (a generator seeded with `seed`). One dict per
    direction, with ``y``, ``radius``, ``angle`` (degrees), ``spread``, ``nonfinite``, ``max_abs``
    and ``min_scale`` (smallest s any coupling used for that y, recorded with `minflow.recording`).
    Call `diagnose` on the `worst` one for its trace and Jacobian.
    """
    dirs = ring_directions(n_directions)
    ys = radius * dirs
    z1 = latent(n, temperature, torch.Generator().manual_seed(seed), flow)
    per_dir = max(1, chunk // n)
    out = []
    for start in range(0, n_directions, per_dir):
        yb = ys[start : start + per_dir]
        cond = yb.to(z1).repeat_interleave(n, 0)
        with recording() as rec:
            x = flow.sample(cond, z=z1.repeat(len(yb), 1)).view(len(yb), n, 2).cpu()
        smin = torch.stack([s.view(len(yb), n).amin(1) for _, s in rec.scales]).amin(0).cpu()
        for k in range(len(yb)):
            finite = torch.isfinite(x[k]).all(1)
            out.append(
                {
                    "y": tuple(yb[k].tolist()),
                    "radius": float(radius),
                    "angle": 360.0 * (start + k) / n_directions,
                    "spread": spread(x[k]),
                    "nonfinite": int((~finite).sum()),
                    "max_abs": x[k][finite].abs().max().item() if finite.any() else float("nan"),
                    "min_scale": smin[k].item(),
                }
            )
    return out


def worst(results: list[dict]) -> dict:
    """The entry of a `ring` (or `sweep`) with the largest sample spread: the far-OOD condition."""
    return max(results, key=lambda r: r["spread"] if math.isfinite(r["spread"]) else math.inf)


if __name__ == "__main__":  # the old form `python -m minflow.toy ...`: `python -m minflow train-toy ...`
    import sys

    from .cli import main

    main(["train-toy", *sys.argv[1:]])
