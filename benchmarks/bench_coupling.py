"""What the spline costs against the affine coupling: one layer, and the whole SR flow.

    .venv/bin/python benchmarks/bench_coupling.py             # ~2-3 min on 1 thread
    .venv/bin/python benchmarks/bench_coupling.py --threads 2 --rounds 7 --no-compile

Spline = the paper's `BoundedSpline` (what ``SRFlow(coupling="spline")`` uses); affine = SRFlow's
``Affine("sigmoid", eps=1e-4)``. Everything else is identical (conditioner width, sizes, seeds).
The spline runs eagerly (the default, ``backend="fast"``) and compiled (``backend="compiled"``;
compilation is excluded from the timing and its duration printed). A reference, "affine,
4-param cond.", is the affine bijection behind a conditioner with the spline's 4 outputs per
element (2 unused): it pays the spline's wider last conv and nothing else, the floor for any
4-parameter bijection.

- layer: a conditional `Coupling` and an `Injector` as in the first level of the SR flow
  (12 channels at 32 x 32, 32 condition channels, conv conditioner of width 32, batch 16);
  training step = forward + backward of ``z^2 / 2 - logdet`` + an Adam step; sampling = the
  inverse without autograd;
- flow: ``SRFlow(coupling="spline")`` against ``SRFlow(coupling="affine")`` at the training
  defaults (3 levels, 3 steps, width 32), batch 16 of 64 x 64 HR / 16 x 16 LR; training step =
  ``nll_bpd(hr, lr).mean()`` forward + backward + Adam step (what `python -m minflow train-sr` does);
  sampling = ``model.sample(lr, temperature=0.7)`` without autograd.

The conditioners' zero-initialised last layers get small random weights first, so both bijections
run on non-trivial parameters. The figures are time ratios against affine (target <= 1.2 for
the spline), medians over interleaved rounds with their min-max spread.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import add_timing_args, fmt_ratio, machine, measure, ms, ratio

import minflow.spline_kernels as spline_kernels
import minflow.splines as splines
from minflow.couplings import Affine, Coupling, ElementwiseLayer, Injector
from minflow.sr import SRFlow
from minflow.utils import adam, param_planes

TARGET = 1.2


class Affine4(Affine):
    """SRFlow's affine bijection behind a 4-parameter conditioner (2 outputs unused): the spline's
    conditioner cost with affine's element-wise cost, the floor for any 4-parameter bijection."""

    n_params = 4

    def forward(self, x, params):
        return super().forward(x, params[..., :2])

    def inverse(self, z, params):
        return super().inverse(z, params[..., :2])


class GenericBounded(splines.BoundedSpline):
    """`BoundedSpline` on the generic eager kernel (one bin's formulas through autograd, no closed
    form for the two bins): the eager default before the closed form, kept for comparison."""

    def forward(self, x, params):
        return spline_kernels._bounded(x, *param_planes(params), self.settings, False, spline_kernels.EAGER_OPS)

    def inverse(self, y, params):
        return spline_kernels._bounded(y, *param_planes(params), self.settings, True, spline_kernels.EAGER_OPS)


BACKENDS = {"spline": "fast", "compiled": "compiled"}  # the spline kinds and the backend each runs on


def bijection(kind: str) -> torch.nn.Module:
    if kind in BACKENDS:
        return splines.BoundedSpline(backend=BACKENDS[kind])
    if kind == "generic":
        return GenericBounded()
    return {"affine": lambda: Affine("sigmoid", eps=1e-4), "affine4": Affine4}[kind]()


def randomize_zero_layers(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def layer_fns(kind: str, layer_cls, batch: int, size: int) -> dict:
    torch.manual_seed(0)
    c, cc = 12, 32
    layer = layer_cls(c, cc, bijection(kind), kind="conv", hidden=32)
    randomize_zero_layers(layer)
    opt = adam(layer.parameters(), lr=1e-4)  # what training uses
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, c, size, size, generator=g)
    cond = torch.randn(batch, cc, size, size, generator=g)

    def train():
        z, logdet = layer(x, cond)
        loss = (0.5 * z.square().flatten(1).sum(1) - logdet).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample():
        with torch.no_grad():
            layer.inverse(x, cond)

    return {"train": train, "sample": sample}


def flow_fns(kind: str, batch: int, hr_size: int) -> dict:
    torch.manual_seed(0)
    model = SRFlow(coupling="affine" if kind == "affine" else "spline")
    for layer in model.modules():
        if isinstance(layer, ElementwiseLayer) and kind == "affine4":
            layer.bijection = Affine4()
        if isinstance(layer, ElementwiseLayer) and kind == "generic":
            layer.bijection = GenericBounded()
    if kind in BACKENDS:
        splines.set_backend(model, BACKENDS[kind])
    randomize_zero_layers(model)
    opt = adam(model.parameters(), lr=1e-5, betas=(0.9, 0.99))  # what train-sr uses
    g = torch.Generator().manual_seed(1)
    hr = F.interpolate(
        torch.rand(batch, 3, hr_size // 8, hr_size // 8, generator=g),
        size=(hr_size, hr_size),
        mode="bilinear",
        align_corners=False,
    )  # smooth, photo-like values in [0, 1]
    lr = F.avg_pool2d(hr, model.factor)
    with torch.no_grad():  # data-dependent ActNorm initialisation, outside the timing
        model.nll_bpd(hr, lr)

    def train():
        loss = model.nll_bpd(hr, lr, torch.Generator().manual_seed(2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample():
        with torch.no_grad():
            model.sample(lr, temperature=0.7, generator=torch.Generator().manual_seed(3))

    return {"train": train, "sample": sample}


LABELS = {
    "spline": "spline",
    "generic": "spline, generic eager",
    "compiled": "spline compiled",
    "affine4": "affine, 4-param cond.",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_timing_args(p, rounds=5, min_run_time=0.5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hr", type=int, default=64, help="HR crop size")
    p.add_argument("--only", choices=["layer", "flow"], help="run one part only")
    p.add_argument("--no-compile", action="store_true", help='skip the compiled spline (backend="compiled")')
    p.add_argument("--generic", action="store_true", help="also time the generic eager kernel (before the closed form)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine(args.clock)}")
    print(
        f"BoundedSpline vs Affine('sigmoid'), float32, CPU, batch {args.batch}; the spline eager (default) "
        f"{'only' if args.no_compile else 'and compiled (the compiled backend, compilation excluded)'}"
    )
    kinds = (
        ["spline", "affine", "affine4"]
        + (["generic"] if args.generic else [])
        + ([] if args.no_compile else ["compiled"])
    )
    results = []
    parts = []
    if args.only in (None, "layer"):
        s = args.hr // 2
        parts += [
            (f"Coupling layer (12 ch, {s}x{s})", lambda k: layer_fns(k, Coupling, args.batch, s)),
            (f"Injector layer (12 ch, {s}x{s})", lambda k: layer_fns(k, Injector, args.batch, s)),
        ]
    if args.only in (None, "flow"):
        parts += [(f"SRFlow ({args.hr}x{args.hr} HR)", lambda k: flow_fns(k, args.batch, args.hr))]
    for name, make in parts:
        made = {kind: make(kind) for kind in kinds}
        fns = {f"{kind} {what}": made[kind][what] for what in ("train", "sample") for kind in kinds}
        if not args.no_compile:
            t0 = time.perf_counter()
            for what in ("train", "sample"):
                fns[f"compiled {what}"]()
            print(f"\n{name}: compiling the spline took {time.perf_counter() - t0:.0f} s (excluded below)")
        times = measure(fns, args.rounds, args.min_run_time, args.threads, args.clock)
        print(f"{name}: median ms  " + "  ".join(f"{k} {ms(times, k):.1f}" for k in fns))
        for what in ("train", "sample"):
            for kind in [k for k in kinds if k != "affine"]:
                r = ratio(times, f"{kind} {what}", f"affine {what}")
                label = LABELS[kind]
                results.append((name, what, label, r, ms(times, f"{kind} {what}"), ms(times, f"affine {what}")))
                print(
                    f"  {what:6s} {label:22s} / affine {fmt_ratio(r)}"
                    + ("" if kind in ("affine4", "generic") else f"  (target <= {TARGET})")
                )
    print(f"\nsummary (time spline / affine, target <= {TARGET}x)")
    print(f"{'':32s} {'step':>6} {'against affine':>22} {'ratio':>7} {'its ms':>8} {'affine ms':>10}  target")
    for name, what, label, r, ts, ta in results:
        verdict = (
            "(reference)"
            if label in (LABELS["affine4"], LABELS["generic"])
            else ("met" if r[0] <= TARGET else "NOT met")
        )
        print(f"{name:32s} {what:>6} {label:>22} {r[0]:6.2f}x {ts:8.1f} {ta:10.1f}  {verdict}")


if __name__ == "__main__":
    main()
