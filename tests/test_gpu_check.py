"""tools/gpu_check.py (make gpu-check): its table, its chapter list, and its refusal without a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_exits_nonzero():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2
    assert "sees no GPU" in done.stderr and "make test" in done.stderr and done.stdout == ""


def test_the_table_and_the_chapters_by_glob():
    check = load()
    names = [p.name for p in check.chapters()]
    assert names == sorted(p.name for p in (ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")) and names
    rows = [{"check": "a", "seconds": 1.25, "result": "passed"}, {"check": "b", "seconds": 0, "result": "x"}]
    assert check.table(rows).splitlines() == [
        "| check | time (s) | result |",
        "| --- | ---: | --- |",
        "| a | 1.2 | passed |",
        "| b | 0.0 | x |",
    ]
    assert check.run("nothing", [sys.executable, "-c", "pass"], 60)["result"] == "passed"
    failed = check.run("fails", [sys.executable, "-c", "raise SystemExit('bad | thing')"], 60)["result"]
    assert failed == "failed (status 1): bad / thing"
    assert check.run("slow", [sys.executable, "-c", "import time; time.sleep(60)"], 6)["result"].startswith("timed out")
    assert check.run("late", ["true"], 1)["result"] == "skipped: the time budget is spent"
    assert set(check.SHORT) <= {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
