"""Shared helpers for the benchmark scripts: timing side by side, interleaved, with torch's own
timer, and `load_model`, the model a script's command line names.

Every script times its candidates in *rounds*: in each round every candidate is measured once
with `torch.utils.benchmark.Timer.blocked_autorange`, one after the other, so a change in machine
load during the run hits all of them alike. A ratio is computed within each round and the
median over rounds is reported, with the spread (min..max) so a noisy run shows as one.

Clock: by default the CPU time of this process (``--clock cpu``), not wall time: on a machine
shared with other jobs, wall time also counts the time spent waiting for a free core, which
says nothing about the code. With several threads, CPU time sums them (work, not latency); use
``--clock wall`` on an idle machine for latency.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from anywhere, without installing minflow
    sys.path.insert(0, str(ROOT))


def load_model(spec: str):
    """A shipped checkpoint by name, a run folder of ``python -m minflow train-...`` (its last path
    part is the checkpoint's name), or FOLDER:NAME for another checkpoint of that run folder (e.g.
    runs/w_affine:w_affine_early)."""
    from minflow.checkpoints import load_pretrained

    folder, _, name = spec.partition(":")
    path = Path(folder)
    if path.is_dir():
        return load_pretrained(name or path.name, root=path)
    return load_pretrained(spec)


def machine(clock: str = "cpu") -> str:
    """One line: CPU model, cores, torch version and threads, load average, clock."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load average ?"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {load}, clock: {clock}"
    )


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def add_timing_args(parser, rounds: int, min_run_time: float) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds")
    parser.add_argument("--min-run-time", type=float, default=min_run_time, help="seconds per blocked_autorange")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this process's CPU time (robust to other jobs); wall: elapsed time",
    )


def measure(
    fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float, threads: int, clock: str = "cpu"
) -> dict[str, list[float]]:
    """{name: [median seconds per call, one per round]}, candidates interleaved within each round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (allocator, lazy inits, compilation) outside the timing
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, timer=CLOCKS[clock])
            times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return times


def ratio(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float]:
    """(median, min, max) over rounds of times[num] / times[den], paired round by round."""
    r = [a / b for a, b in zip(times[num], times[den])]
    return statistics.median(r), min(r), max(r)


def ms(times: dict[str, list[float]], name: str) -> float:
    return statistics.median(times[name]) * 1e3


def fmt_ratio(r: tuple[float, float, float]) -> str:
    return f"{r[0]:6.2f}x ({r[1]:.2f}-{r[2]:.2f})"
