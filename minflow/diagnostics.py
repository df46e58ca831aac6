"""Diagnostics on request: what a pass through a flow did, recorded only inside `recording()`.

Outside a recording nothing is measured (training pays nothing). Inside one, every coupling and
injector call records, per sample, the smallest slope of its *forward* element-wise map

    s_min = min over elements of |d z_b / d x_b|   (for affine: the smallest scale s),

ignoring elements already NaN (`utils.nanmin`): the sampling direction multiplies by up to
1 / s_min there. With ``rows=True`` a flow's sampling pass also records every layer's output
magnitudes (the rows of `ConditionalFlow.trace`, which is `sample` inside such a recording).

    with minflow.recording() as rec:
        x = flow.sample(cond)
    rec.min_scale()        # (batch,): the smallest s any layer used for each sample
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .utils import nanmin

__all__ = ["Recorder", "recording"]

_ACTIVE: contextvars.ContextVar[tuple[Recorder, ...]] = contextvars.ContextVar("minflow_recorders", default=())


class Recorder:
    """What the passes run inside one `recording()` did, in call order.

    ``scales``: (layer, per-sample smallest forward slope) for every coupling or injector call.
    ``rows`` (with ``rows=True``): one dict per layer of a flow's sampling pass (see
    `ConditionalFlow.trace`): ``index``, ``name``, ``max_abs``, ``variance``, ``nonfinite``,
    ``min_scale`` and, with ``keep=True``, ``output``.
    """

    def __init__(self, rows: bool = False, keep: bool = False):
        self.with_rows, self.keep = rows or keep, keep
        self.scales: list[tuple[nn.Module, Tensor]] = []
        self.rows: list[dict] = []
        self._row_start = 0  # scales recorded since the last row belong to the next row's layer

    def scale(self, layer: nn.Module, log_slope: Tensor) -> None:
        """Record a layer's forward log-slopes (B, ...) as the per-sample smallest slope, (B,)."""
        with torch.no_grad():
            self.scales.append((layer, nanmin(log_slope.detach().flatten(1), 1).exp()))

    def output(self, index: int, layer: nn.Module | None, out: Tensor) -> None:
        """Record a row for the output of `layer` (None: the latent) in a sampling pass: its magnitudes
        and the smallest slope that layer (or a part of it) used since the previous row, None if none."""
        start, self._row_start = self._row_start, len(self.scales)
        if not self.with_rows:
            return
        parts = set(layer.modules()) if layer is not None else set()
        new = [s for m, s in self.scales[start:] if m in parts]
        scale = nanmin(torch.cat(new)).item() if new else None
        name = "latent" if layer is None else type(layer).__name__
        with torch.no_grad():
            finite = torch.isfinite(out)
            clean = torch.where(finite, out, torch.zeros_like(out)).flatten(1).double()
            row = {
                "index": index,
                "name": name,
                "max_abs": clean.abs().max().item() if clean.numel() else 0.0,
                "variance": clean.var(0, unbiased=False).mean().item() if clean.shape[0] > 1 else 0.0,
                "nonfinite": int((~finite).sum().item()),
                "min_scale": scale,
            }
            if self.keep:
                row["output"] = out.detach().clone()
        self.rows.append(row)

    def min_scale(self) -> Tensor:
        """Per sample, the smallest slope any layer used, shape (batch,): NaN values are ignored (the
        layer that broke a sample reported its scale), a sample with nothing but NaN gets NaN."""
        if not self.scales:
            raise ValueError("nothing was recorded: run a pass through a flow with couplings inside `recording()`")
        return nanmin(torch.stack([s for _, s in self.scales]), 0)


@contextlib.contextmanager
def recording(rows: bool = False, keep: bool = False) -> Iterator[Recorder]:
    """Record diagnostics of every pass run inside the ``with`` block (see the module docstring).

    Always the smallest slopes; with ``rows=True`` also every layer's output magnitudes in a
    sampling pass, and with ``keep=True`` (implies rows) every layer's output tensor too.
    Recordings nest: each active recorder receives everything.
    """
    rec = Recorder(rows, keep)
    token = _ACTIVE.set(_ACTIVE.get() + (rec,))
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)


def active() -> tuple[Recorder, ...]:
    """The recorders of the enclosing `recording()` blocks; empty outside any (nothing to measure)."""
    return _ACTIVE.get()
