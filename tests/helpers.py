"""Shared test utilities: per-sample Jacobian log-determinants and non-trivial random weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from minflow.checkpoints import available, load_pretrained

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str, folder: Path = BENCHMARKS):
    """folder/NAME.py (default benchmarks/) as a module, as it runs from the command line (its
    folder on sys.path, for the benchmark scripts' shared `_common`)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jacobian_logdet(fn, x: torch.Tensor, cond=None) -> torch.Tensor:
    """log|det J| of `fn(x, cond)` (same shape in and out) at every sample of x, via autograd.

    Each sample is pushed through alone, with its own row of `cond` (a tensor or None).
    """
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        ci = None if cond is None else cond[i : i + 1]

        def flat(v, xi=xi, ci=ci):
            return fn(v.view_as(xi), ci).flatten()

        jac = torch.autograd.functional.jacobian(flat, xi.flatten(), vectorize=True)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def randomize(module: nn.Module, std: float = 0.3, generator: torch.Generator | None = None) -> nn.Module:
    """Give every parameter (zero-initialised last layers included) small random values."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
    return module


def randomize_zero_layers(module: nn.Module, std: float = 0.3) -> nn.Module:
    """Re-initialise only the all-zero parameters (the zero-initialised output layers)."""
    with torch.no_grad():
        for p in module.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(0.0, std)
    return module


def check_shipped_checkpoint(name: str, builder: str, command: str, validation_pairs) -> None:
    """A shipped checkpoint loads, its manifest says how it was made, and it reproduces the
    validation bpd recorded for its first validation photo (one photo keeps the test short).

    ``validation_pairs(model, metrics)`` gives the (photo, x, condition) triples it was validated on.
    """
    if name not in available():
        pytest.skip(f"{name} checkpoint not shipped yet")
    model = load_pretrained(name)
    manifest, metrics = model.manifest, model.manifest["metrics"]
    assert manifest["bytes"] <= 10 * 2**20 and manifest["builder"] == builder and manifest["seed"] == 0
    assert manifest["command"].startswith(command) and manifest["wall_time_s"] > 0
    assert metrics["val_bpd"] == pytest.approx(
        sum(r["bpd"] for r in metrics["per_image"].values()) / len(metrics["per_image"])
    )
    photo, x, cond = validation_pairs(model, metrics)[0]
    with torch.no_grad():
        got = model.nll_bpd(x[None], cond[None], torch.Generator().manual_seed(metrics["eval_seed"])).item()
    assert got == pytest.approx(metrics["per_image"][photo]["bpd"], abs=2e-3)
