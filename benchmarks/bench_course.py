"""How long the course takes: every chapter (chapters/NN_*.ipynb) run in quick and in full mode.

    .venv/bin/python benchmarks/bench_course.py                    # every chapter, quick then full
    .venv/bin/python benchmarks/bench_course.py --modes quick      # quick mode only (minutes)
    .venv/bin/python benchmarks/bench_course.py --chapters 01,07 --threads 2

Each notebook is executed top to bottom with nbclient in a fresh kernel, with MINFLOW_QUICK=1
(quick: what the test run does) or MINFLOW_QUICK=0 (full: what a learner runs), MPLBACKEND=Agg,
and the torch thread count pinned through OMP_NUM_THREADS. Nothing is written back: outputs
stay in memory. A chapter that fails is reported as such (with its error) and the run goes on.
Full mode trains or sweeps for real: expect tens of minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import ROOT, machine


def run_notebook(path: Path, quick: bool, timeout: int, kernel: str) -> tuple[float, str]:
    """Wall seconds to execute the notebook, and '' or the error's first line."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["MINFLOW_QUICK"] = "1" if quick else "0"  # the kernel inherits this environment
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    try:
        client.execute()
        error = ""
    except Exception as err:  # noqa: BLE001 - report and go on with the next chapter
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"[:160]
    return time.perf_counter() - t0, error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="quick,full", help="comma-separated: quick, full")
    p.add_argument("--chapters", default="", help="comma-separated chapter numbers (default: all)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the kernels (0: leave as is)")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (python3: this interpreter)")
    args = p.parse_args()
    os.environ["MPLBACKEND"] = "Agg"
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    wanted = {c.zfill(2) for c in args.chapters.split(",") if c}
    notebooks = sorted(q for q in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb") if not wanted or q.name[:2] in wanted)
    modes = [m for m in args.modes.split(",") if m]
    if not notebooks or any(m not in ("quick", "full") for m in modes):
        raise SystemExit(f"nothing to run: chapters {sorted(wanted) or 'all'}, modes {modes}")
    print(f"machine: {machine('wall')}; kernels: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    results: dict[tuple[str, str], tuple[float, str]] = {}
    for mode in modes:
        for path in notebooks:
            seconds, error = run_notebook(path, mode == "quick", args.timeout, args.kernel)
            results[(path.stem, mode)] = (seconds, error)
            print(f"{path.stem:28s} {mode:5s} {seconds:8.1f} s  {'ok' if not error else 'FAILED ' + error}", flush=True)

    print(f"\n| chapter | {' | '.join(f'{m} (s)' for m in modes)} |")
    print(f"|---|{'---:|' * len(modes)}")
    for path in notebooks:
        cells = []
        for mode in modes:
            seconds, error = results[(path.stem, mode)]
            cells.append(f"{seconds:.0f}" + (" (failed)" if error else ""))
        print(f"| {path.stem} | {' | '.join(cells)} |")
    totals = [sum(results[(q.stem, m)][0] for q in notebooks) for m in modes]
    print(f"| **total** | {' | '.join(f'**{t:.0f}**' for t in totals)} |")


if __name__ == "__main__":
    main()
