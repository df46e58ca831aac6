"""What the spline costs against the affine coupling: one layer, and the whole SR flow.

    .venv/bin/python benchmarks/bench_coupling.py             # ~2 min on 1 thread
    .venv/bin/python benchmarks/bench_coupling.py --threads 2 --rounds 7

Spline = the paper's `BoundedSpline` (what ``SRFlow(coupling="spline")`` uses); affine = SRFlow's
``Affine("sigmoid", eps=1e-4)``. Everything else is identical (conditioner width, sizes, seeds).

- layer: a conditional `Coupling` and an `Injector` as in the first level of the SR flow
  (12 channels at 32 x 32, 32 condition channels, conv conditioner of width 32, batch 16);
  training step = forward + backward of ``z^2 / 2 - logdet`` + an Adam step; sampling = the
  inverse without autograd;
- flow: ``SRFlow(coupling="spline")`` against ``SRFlow(coupling="affine")`` at the training
  defaults (3 levels, 3 steps, width 32), batch 16 of 64 x 64 HR / 16 x 16 LR; training step =
  ``nll_bpd(hr, lr).mean()`` forward + backward + Adam step (what `python -m minflow.train` does);
  sampling = ``model.sample(lr, temperature=0.7)`` without autograd.

The conditioners' zero-initialised last layers get small random weights first, so both bijections
run on non-trivial parameters. The figures are time ratios spline / affine (target <= 1.2),
median over interleaved rounds with their min-max spread.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import fmt_ratio, machine, measure, ms, ratio

import minflow.splines as splines
from minflow.couplings import Affine, Coupling, Injector
from minflow.sr import SRFlow

TARGET = 1.2


def randomize_zero_layers(module: torch.nn.Module, std: float = 0.05, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def layer_fns(kind: str, layer_cls, batch: int, size: int) -> dict:
    torch.manual_seed(0)
    c, cc = 12, 32
    bij = splines.BoundedSpline() if kind == "spline" else Affine("sigmoid", eps=1e-4)
    layer = layer_cls(c, cc, bij, kind="conv", hidden=32)
    randomize_zero_layers(layer)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-4)
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
    model = SRFlow(coupling=kind)
    randomize_zero_layers(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(1)
    hr = F.interpolate(torch.rand(batch, 3, hr_size // 8, hr_size // 8, generator=g), size=(hr_size, hr_size),
                       mode="bilinear", align_corners=False)  # smooth, photo-like values in [0, 1]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per blocked_autorange")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hr", type=int, default=64, help="HR crop size")
    p.add_argument("--only", choices=["layer", "flow"], help="run one part only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    compiled = getattr(splines, "compile_enabled", lambda: False)()
    print(f"BoundedSpline vs Affine('sigmoid'), float32, CPU, batch {args.batch}; spline compile: {compiled}")
    results = []
    parts = []
    if args.only in (None, "layer"):
        s = args.hr // 2
        parts += [(f"Coupling layer (12 ch, {s}x{s})", lambda k: layer_fns(k, Coupling, args.batch, s)),
                  (f"Injector layer (12 ch, {s}x{s})", lambda k: layer_fns(k, Injector, args.batch, s))]
    if args.only in (None, "flow"):
        parts += [(f"SRFlow ({args.hr}x{args.hr} HR)", lambda k: flow_fns(k, args.batch, args.hr))]
    for name, make in parts:
        spline, affine = make("spline"), make("affine")
        fns = {f"{kind} {what}": fn for what in ("train", "sample") for kind, fn in
               (("spline", spline[what]), ("affine", affine[what]))}
        times = measure(fns, args.rounds, args.min_run_time, args.threads)
        print(f"\n{name}: median ms  " + "  ".join(f"{k} {ms(times, k):.1f}" for k in fns))
        for what in ("train", "sample"):
            r = ratio(times, f"spline {what}", f"affine {what}")
            results.append((name, what, r, ms(times, f"spline {what}"), ms(times, f"affine {what}")))
            print(f"  {what:6s} spline / affine {fmt_ratio(r)}  (target <= {TARGET})")
    print(f"\nsummary (time spline / affine, target <= {TARGET}x)")
    print(f"{'':32s} {'step':>6} {'ratio':>7} {'spline ms':>10} {'affine ms':>10}  target")
    for name, what, r, ts, ta in results:
        print(f"{name:32s} {what:>6} {r[0]:6.2f}x {ts:10.1f} {ta:10.1f}  {'met' if r[0] <= TARGET else 'NOT met'}")


if __name__ == "__main__":
    main()
