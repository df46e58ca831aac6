"""Shared test utilities: per-sample Jacobian log-determinants and non-trivial random weights."""

from __future__ import annotations

import torch
from torch import nn


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
