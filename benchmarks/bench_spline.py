"""minflow's rational-quadratic spline against zuko's, and against the memory floor.

    .venv/bin/python benchmarks/bench_spline.py                  # 1e5 and 1e6: ~2-3 min, +1-2 to compile
    .venv/bin/python benchmarks/bench_spline.py --sizes 1e7 --layouts planes --rounds 2
    .venv/bin/python benchmarks/bench_spline.py --no-compile --clock wall --threads 2

Both libraries start from the same *unnormalised* parameters, (N, 3K - 1) values = K widths,
K heights, K - 1 interior derivatives per element (float32, CPU, K = 8 bins on [-3, 3]), and do
the same work: raw values -> knots -> bin search -> the rational quadratic and its log-slope.

- minflow, RQSpline: ``RQSpline(bins)(x, params)`` / ``.inverse`` (finds the bin among the
  unnormalised cumulative sizes, transforms only the two knots it needs), eagerly (the default,
  ``backend="fast"``) and compiled (``RQSpline(bins, backend="compiled")``, compilation excluded
  from the timing);
- minflow, raw + knots: ``rational_quadratic_spline(x, *rq_knots(w, h, d))`` (builds the
  (N, K+1) knot tensors, then the raw function), eagerly;
- zuko: ``MonotonicRQSTransform(w, h, d, bound)`` then ``.call_and_ladj(x)`` forward and
  ``.inv(y)`` inverse. zuko's inverse returns no log-determinant while minflow's does, so the
  inverse ratio is, if anything, in zuko's favour;
- floor: reading every input once (``params.sum() + x.sum()``): no spline can be faster.

Two memory layouts of the same parameter values: ``rows`` ((N, 3K - 1) contiguous) and ``planes``
(each parameter contiguous over the elements: how minflow's conv conditioners hand them to the
spline). zuko gets the very same tensors.

The two libraries map raw values to knots differently (zuko: soft-clamped softmax and exp;
minflow: floored softmax and softplus), so the script checks fairness at the knot level: zuko's
own knots fed to minflow's `rational_quadratic_spline` must give zuko's outputs, both ways, in
float64 (to 1e-9) and float32 (to 1e-3: bins as narrow as 1e-3 of the box amplify float32
rounding in the log-slope), `RQSpline` must equal the raw function on its `rq_knots`, and the
compiled RQSpline the eager one. The figures are throughput ratios (zuko time / minflow time,
> 1: minflow faster) and time / floor, medians over interleaved rounds with their min-max spread.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import add_timing_args, fmt_ratio, machine, measure, ms, ratio

from minflow.splines import RQSpline, rational_quadratic_spline, rq_knots

TARGET, STRETCH = 5.0, 5.0  # >= 5x zuko's throughput; stretch: within 5x of the memory floor


def inputs(n: int, bins: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=dtype) * 2.0  # ~87% inside [-3, 3], the rest outside
    params = torch.randn(n, 3 * bins - 1, generator=g, dtype=dtype)
    return x, params


def check_agreement(bins: int, bound: float, n: int = 100_000) -> None:
    """Same knots -> same numbers; raise if not. Prints the largest differences."""
    from zuko.transforms import MonotonicRQSTransform

    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-3)):
        x, params = inputs(n, bins, dtype, seed=1)
        w, h, d = params.split([bins, bins, bins - 1], -1)
        z = MonotonicRQSTransform(w, h, d, bound=bound)
        knots = (z.horizontal, z.vertical, z.derivatives)
        y_z, l_z = z.call_and_ladj(x)
        y_m, l_m = rational_quadratic_spline(x, *knots)
        xi_z = z.inv(x)
        xi_m, li_m = rational_quadratic_spline(x, *knots, inverse=True)
        _, l_back = z.call_and_ladj(xi_z)
        errs = {
            "forward y": (y_m - y_z).abs().max().item(),
            "forward logdet": (l_m - l_z).abs().max().item(),
            "inverse x": (xi_m - xi_z).abs().max().item(),
            "inverse logdet": (li_m + l_back).abs().max().item(),
        }
        bij = RQSpline(bins, bound, backend="fast")
        for inverse in (False, True):
            a = (bij.inverse if inverse else bij)(x, params)
            b = rational_quadratic_spline(x, *bij.knots(params), inverse=inverse)
            errs[f"RQSpline vs raw ({'inverse' if inverse else 'forward'})"] = max(
                (a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item()
            )
        worst = max(errs.values())
        print(
            f"  agreement {str(dtype)[6:]:8s} max |diff| {worst:.1e} (tolerance {tol:.0e}): "
            + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
        )
        if not worst <= tol:
            raise SystemExit(f"minflow and zuko disagree in {dtype}: {errs}")


LAYOUTS = {
    "rows": lambda p: p,  # (N, 3K - 1) contiguous: each element's parameters side by side
    "planes": lambda p: p.t().contiguous().t(),  # each parameter contiguous over the elements, as the
}  # conv conditioners of minflow's couplings lay them out ((B, C, n, H, W) viewed as x.shape + (n,))

PATHS = {"rq": "RQSpline", "rqc": "RQSpline compiled", "raw": "raw + rq_knots"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1e5,1e6", help="comma-separated element counts (1e7 takes minutes on zuko)")
    p.add_argument("--layouts", default="rows,planes", help=f"comma-separated, of {sorted(LAYOUTS)}")
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--bound", type=float, default=3.0)
    p.add_argument("--no-compile", action="store_true", help='skip RQSpline(backend="compiled")')
    add_timing_args(p, rounds=3, min_run_time=0.2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import zuko
        from zuko.transforms import MonotonicRQSTransform
    except ImportError as err:
        raise SystemExit(
            "this benchmark compares against zuko: .venv/bin/pip install zuko (the 'bench' extra)"
        ) from err

    print(f"machine: {machine(args.clock)}")
    print(f"zuko {zuko.__version__}, {args.bins} bins on [-{args.bound}, {args.bound}], float32, CPU")
    check_agreement(args.bins, args.bound)

    K, B = args.bins, args.bound
    bij, bij_c = RQSpline(K, B, backend="fast"), RQSpline(K, B, backend="compiled")
    paths = [k for k in PATHS if not (args.no_compile and k == "rqc")]

    rows = []
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        for layout in args.layouts.split(","):
            t0 = time.perf_counter()
            x, raw = inputs(size, K, torch.float32)
            params = LAYOUTS[layout](raw)
            w, h, d = params.split([K, K, K - 1], -1)
            fns = {
                "floor": lambda: params.sum() + x.sum(),
                "fwd rq": lambda: bij(x, params),
                "fwd rqc": lambda: bij_c(x, params),
                "fwd raw": lambda: rational_quadratic_spline(x, *rq_knots(w, h, d, B)),
                "fwd zuko": lambda: MonotonicRQSTransform(w, h, d, bound=B).call_and_ladj(x),
                "inv rq": lambda: bij.inverse(x, params),
                "inv rqc": lambda: bij_c.inverse(x, params),
                "inv raw": lambda: rational_quadratic_spline(x, *rq_knots(w, h, d, B), inverse=True),
                "inv zuko": lambda: MonotonicRQSTransform(w, h, d, bound=B).inv(x),
            }
            fns = {k: f for k, f in fns.items() if k.split()[-1] in paths + ["zuko", "floor"]}
            with torch.no_grad():
                if "fwd rqc" in fns:  # compile outside the timing; compiled as accurate as eager?
                    for direction in ("fwd", "inv"):
                        fn = bij.inverse if direction == "inv" else bij
                        exact = fn(x.double(), params.double())
                        eager, comp = fns[f"{direction} rq"](), fns[f"{direction} rqc"]()
                        err_e = max((a.double() - b).abs().max().item() for a, b in zip(eager, exact))
                        err_c = max((a.double() - b).abs().max().item() for a, b in zip(comp, exact))
                        print(f"  {direction} max |error| against float64: eager {err_e:.1e}, compiled {err_c:.1e}")
                        if not err_c <= 2 * err_e + 1e-6:
                            raise SystemExit("the compiled RQSpline is less accurate than the eager one")
                times = measure(fns, args.rounds, args.min_run_time, args.threads, args.clock)
            rows.append((size, layout, times))
            print(f"\n{size:.0e} elements, params in {layout} ({time.perf_counter() - t0:.0f} s): median ms per call")
            print("  " + "  ".join(f"{k} {ms(times, k):.2f}" for k in fns))
            for direction in ("fwd", "inv"):
                for impl in paths:
                    print(
                        f"  {direction} {PATHS[impl]:18s}: "
                        f"{fmt_ratio(ratio(times, f'{direction} zuko', f'{direction} {impl}'))} zuko's throughput, "
                        f"{fmt_ratio(ratio(times, f'{direction} {impl}', 'floor'))} the memory floor"
                    )

    print(f"\nsummary: throughput vs zuko (target >= {TARGET:g}x), time / memory floor (stretch <= {STRETCH:g}x)")
    print(
        f"{'elements':>9} {'params':>7} {'dir':>4} {'minflow path':>18} {'vs zuko':>8} {'/ floor':>8}  "
        f"{'minflow ms':>10} {'zuko ms':>8} {'floor ms':>8}"
    )
    for size, layout, times in rows:
        for direction in ("fwd", "inv"):
            for impl in paths:
                vz = ratio(times, f"{direction} zuko", f"{direction} {impl}")[0]
                vf = ratio(times, f"{direction} {impl}", "floor")[0]
                print(
                    f"{size:9.0e} {layout:>7} {direction:>4} {PATHS[impl]:>18} {vz:7.2f}x {vf:7.1f}x  "
                    f"{ms(times, f'{direction} {impl}'):10.2f} {ms(times, f'{direction} zuko'):8.2f} "
                    f"{ms(times, 'floor'):8.2f}"
                )


if __name__ == "__main__":
    main()
