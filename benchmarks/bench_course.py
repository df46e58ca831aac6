"""How long the course takes: every chapter (chapters/NN_*.ipynb) run in quick and in full mode.

    .venv/bin/python benchmarks/bench_course.py                    # every chapter, quick then full
    .venv/bin/python benchmarks/bench_course.py --modes quick      # quick mode only (minutes)
    .venv/bin/python benchmarks/bench_course.py --chapters 01,07 --threads 2
    .venv/bin/python benchmarks/bench_course.py --modes full --chapters 05 --slowest 5   # where the time goes

Each notebook is executed top to bottom with nbclient in a fresh kernel, with MINFLOW_QUICK=1
(quick: what the test run does) or MINFLOW_QUICK=0 (full: what a learner runs), MPLBACKEND=Agg,
and the torch thread count pinned through OMP_NUM_THREADS. Nothing is written back to chapters/
(`--save DIR` writes the executed copies to DIR). A chapter that fails is reported as such (with
its error) and the run goes on. Beside the wall time, each chapter's kernel CPU seconds are
printed: with `--threads 1` they are close to the wall time on an idle machine, so a run
that shares the CPU with other work still measures the chapter. Full mode trains or sweeps for
real: expect tens of minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

from _common import ROOT, machine


def cell_seconds(nb) -> list[tuple[float, int, str]]:
    """(seconds, index, first source line) of each executed code cell, from nbclient's timing metadata."""
    from datetime import datetime

    out = []
    keys = ("iopub.execute_input", "shell.execute_reply")
    for i, cell in enumerate(nb.cells):
        t = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and all(k in t for k in keys):
            start, end = (datetime.fromisoformat(t[k].replace("Z", "+00:00")) for k in keys)
            first = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
            out.append(((end - start).total_seconds(), i, first))
    return out


CPU_PROBE = "import time as _t; print('kernel CPU seconds', _t.process_time())"


def run_notebook(
    path: Path, quick: bool, timeout: int, kernel: str, slowest: int = 0, save: Path | None = None
) -> tuple[float, float, str]:
    """Wall seconds to execute the notebook, the kernel's CPU seconds (nan if it failed), and '' or
    the error's first line; prints the slowest cells and, with `save`, writes the executed notebook
    there (to read its outputs). With one thread, CPU seconds are what the
    wall time would be on an idle machine, so they stay comparable when other work shares the CPU."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CPU_PROBE))
    os.environ["MINFLOW_QUICK"] = "1" if quick else "0"  # the kernel inherits this environment
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    cpu = math.nan
    try:
        client.execute()
        error = ""
        cpu = float(nb.cells[-1].outputs[0]["text"].split()[-1])
    except Exception as err:  # noqa: BLE001 - report and go on with the next chapter
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"[:160]
    seconds = time.perf_counter() - t0
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / f"{path.stem}.{'quick' if quick else 'full'}.ipynb")
    for s, i, line in sorted(cell_seconds(nb), reverse=True)[:slowest]:
        print(f"    cell {i:3d} {s:7.1f} s  {line}", flush=True)
    return seconds, cpu, error


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="quick,full", help="comma-separated: quick, full")
    p.add_argument("--chapters", default="", help="comma-separated chapter numbers (default: all)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the kernels (0: leave as is)")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (python3: this interpreter)")
    p.add_argument("--slowest", type=int, default=0, help="also print each chapter's N slowest cells")
    p.add_argument("--save", type=Path, default=None, help="write the executed notebooks to this folder")
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
    results: dict[tuple[str, str], tuple[float, float, str]] = {}
    for mode in modes:
        for path in notebooks:
            wall, cpu, error = run_notebook(path, mode == "quick", args.timeout, args.kernel, args.slowest, args.save)
            results[(path.stem, mode)] = (wall, cpu, error)
            status = "ok" if not error else "FAILED " + error
            print(f"{path.stem:28s} {mode:5s} {wall:8.1f} s wall {cpu:8.1f} s kernel CPU  {status}", flush=True)

    print(f"\n| chapter | {' | '.join(f'{m}: wall s | {m}: kernel CPU s' for m in modes)} |")
    print(f"|---|{'---:|---:|' * len(modes)}")
    for path in notebooks:
        cells = []
        for mode in modes:
            wall, cpu, error = results[(path.stem, mode)]
            cells += [f"{wall:.0f}" + (" (failed)" if error else ""), f"{cpu:.0f}"]
        print(f"| {path.stem} | {' | '.join(cells)} |")
    totals = [f"**{sum(results[(q.stem, m)][j] for q in notebooks):.0f}**" for m in modes for j in (0, 1)]
    print(f"| **total** | {' | '.join(totals)} |")


if __name__ == "__main__":
    main()
