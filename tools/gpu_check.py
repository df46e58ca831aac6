"""The course on a GPU machine, in one command (``make gpu-check``), about 10 minutes on one GPU.

    python tools/gpu_check.py                 # everything below, one Markdown table at the end
    python tools/gpu_check.py --only ddp      # one part: chapters, ddp or benchmarks

1. every chapter (chapters/[0-9][0-9]_*.ipynb, whatever their numbers) under nbval in full mode
   (MINFLOW_QUICK=0), each with a time limit (a chapter that needs longer shows as timed out);
2. a short data-parallel SR training on every visible GPU: torchrun --standalone
   --nproc_per_node=<GPUs> -m minflow train-sr (NCCL), into a temporary run folder;
3. the benchmarks (benchmarks/bench_*.py) with short settings (bench_course is skipped: it runs
   the chapters again).

Everything shares one time budget (``--budget``, 600 s): what would start after it is spent is
listed as skipped. None of this has been timed on a GPU yet; the limits are guesses to revise.

Each line of the table gives the time and the result (passed, failed with its last line, or
timed out). The script exits with status 1 when anything failed, and at once with status 2 and
a message when torch sees no GPU (this check is for GPU machines; ``make test`` is the CPU one).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHORT = {  # benchmark script -> its short settings (others run with none)
    "bench_spline.py": ["--sizes", "1e5,1e6", "--rounds", "2"],
    "bench_coupling.py": ["--rounds", "2"],
    "bench_course.py": None,  # it runs the chapters, which part 1 already does
}
PARTS = ("chapters", "ddp", "benchmarks")


def chapters() -> list[Path]:
    """The course's notebooks, by glob (their numbers may change)."""
    return sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def run(name: str, command: list[str], limit: float, env: dict | None = None) -> dict:
    """Run `command` from the repository root within `limit` seconds; a row of the table."""
    if limit < 5:
        return {"check": name, "seconds": 0.0, "result": "skipped: the time budget is spent"}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return {"check": name, "seconds": time.perf_counter() - start, "result": f"timed out after {limit:.0f} s"}
    seconds = time.perf_counter() - start
    if done.returncode == 0:
        return {"check": name, "seconds": seconds, "result": "passed"}
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    last = lines[-1].replace("|", "/")[:120] if lines else ""
    return {"check": name, "seconds": seconds, "result": f"failed (status {done.returncode}): {last}"}


def table(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    out = ["| check | time (s) | result |", "| --- | ---: | --- |"]
    out += [f"| {r['check']} | {r['seconds']:.1f} | {r['result']} |" for r in rows]
    return "\n".join(out)


def gpus() -> int:
    """How many GPUs torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    p.add_argument("--budget", type=float, default=600, help="seconds for everything (what is left is skipped)")
    p.add_argument("--chapter-timeout", type=float, default=90, help="seconds per chapter")
    p.add_argument("--ddp-steps", type=int, default=200, help="steps of the DDP training")
    p.add_argument("--ddp-timeout", type=float, default=150, help="seconds for the DDP training")
    p.add_argument("--benchmark-timeout", type=float, default=90, help="seconds per benchmark")
    args = p.parse_args(argv)
    count = gpus()
    if count == 0:
        print(
            "gpu-check: torch sees no GPU on this machine (torch.cuda.is_available() is False), so there "
            "is nothing to check here. Run it on a machine with a CUDA GPU; on the CPU use `make test`.",
            file=sys.stderr,
        )
        return 2
    parts, python, rows = args.only or PARTS, sys.executable, []
    deadline = time.perf_counter() + args.budget

    def within(limit: float) -> float:
        return min(limit, deadline - time.perf_counter())

    env = {"PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    if "chapters" in parts:
        for nb in chapters():
            command = [python, "-m", "pytest", str(nb.relative_to(ROOT)), "--nbval-lax", "-q", "-p", "no:cacheprovider"]
            rows.append(
                run(f"chapter {nb.stem} (full)", command, within(args.chapter_timeout), env | {"MINFLOW_QUICK": "0"})
            )
    if "ddp" in parts:
        with tempfile.TemporaryDirectory() as runs:
            command = [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}"]
            command += ["-m", "minflow", "train-sr", "--name", "gpu_check", "--runs", runs, "--no-progress"]
            command += ["--steps", str(args.ddp_steps), "--batch", str(8 * count), "--val-size", "128"]
            name = f"DDP train-sr, {count} GPU(s), {args.ddp_steps} steps"
            rows.append(run(name, command, within(args.ddp_timeout), env))
    if "benchmarks" in parts:
        for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
            short = SHORT.get(script.name, [])
            if short is None:
                rows.append(
                    {"check": f"benchmark {script.stem}", "seconds": 0.0, "result": "skipped: runs the chapters"}
                )
                continue
            command = [python, str(script.relative_to(ROOT)), *short]
            rows.append(run(f"benchmark {script.stem}", command, within(args.benchmark_timeout), env))
    print(table(rows))
    return 0 if all(r["result"] == "passed" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
