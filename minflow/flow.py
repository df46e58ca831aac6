"""The conditional flow: density, sampling, and a layer-by-layer trace of the sampling pass.

    log p(x | y) = log N(f(x; g(y)); 0, I) + sum_layers log|det J_layer|

where g is an optional encoder of the condition y (identity when absent) and f the chain of
transforms. Sampling encodes each distinct condition once (n samples of one input: one pass of
g), then runs the chain backwards from z ~ N(0, T^2 I) (T finite and >= 0), passing the same
sampling keywords (temperature, generator) to every layer's inverse: `Split` layers draw their
half at the same temperature T.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import diagnostics
from .transforms import Cond, Features, Generator, StandardNormal, Transform, leaves
from .utils import check_temperature

__all__ = ["ConditionalFlow", "format_trace"]


class ConditionalFlow(nn.Module):
    """A chain of transforms with a Gaussian base, an optional condition encoder, and diagnostics.

    ``event_shape`` is the shape of one *top latent* (after any splits and squeezes), e.g. ``(2,)``
    for a 2D toy. Flows whose latent shape depends on the condition (images of any size) override
    `latent_shape`.
    """

    def __init__(
        self, layers: Sequence[Transform], event_shape: tuple[int, ...] | None = None, encoder: nn.Module | None = None
    ):
        super().__init__()
        self.layers = nn.ModuleList(leaves(layers))
        self.event_shape = tuple(event_shape) if event_shape is not None else None
        self.encoder = encoder
        self.base = StandardNormal()

    # ------------------------------------------------------------------ density direction
    def condition(self, cond: Tensor | None) -> Cond:
        """What the layers see: encoder(cond), or cond itself when there is no encoder."""
        if isinstance(cond, Tensor) and not torch.isfinite(cond).all():
            raise ValueError("cond contains non-finite values")
        return self.encoder(cond) if (self.encoder is not None and cond is not None) else cond

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x -> (top latent z, sum of logdets, split priors included)."""
        feats = self.condition(cond)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, feats)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """log p(x | cond) in nats, shape (batch,)."""
        z, logdet = self(x, cond)
        return self.base.log_prob(z) + logdet

    def bits_per_dim(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """-log p(x | cond) / (ln 2 * number of dimensions of one x), shape (batch,)."""
        return -self.log_prob(x, cond) / (math.log(2) * x[0].numel())

    # ------------------------------------------------------------------ sampling direction
    def latent_shape(self, feats: Cond, num_samples: int) -> tuple[int, ...]:
        """Shape of the top latent for `num_samples` samples (override for condition-sized latents)."""
        if self.event_shape is None:
            raise ValueError("this flow has no event_shape: pass z explicitly or override latent_shape")
        return (num_samples, *self.event_shape)

    def _batch(self, cond: Tensor | None, num_samples: int | None) -> int:
        if cond is not None:
            if num_samples is not None and num_samples != cond.shape[0]:
                raise ValueError(f"num_samples={num_samples} but cond has batch {cond.shape[0]}; repeat cond instead")
            return cond.shape[0]
        if num_samples is None:
            raise ValueError("an unconditional sample needs num_samples")
        return num_samples

    def _run_inverse(self, z: Tensor, feats: Cond, temperature: float, generator: Generator) -> tuple[Tensor, Tensor]:
        check_temperature(temperature)  # every sampling path comes here, with or without a Split
        recorders = diagnostics.active()
        logdet = z.new_zeros(z.shape[0])
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            z, ld = layer.inverse(z, feats, temperature=temperature, generator=generator)
            logdet = logdet + ld
            for rec in recorders:  # per-layer magnitudes, only inside `minflow.recording(rows=True)`
                rec.output(index, layer, z)
        return z, logdet

    def _condition_once(self, cond: Tensor | None) -> Cond:
        """`condition(cond)` with each distinct row of cond encoded once: several samples of one
        input (its rows repeated) pay for one encoder pass, and the features are gathered back
        (`Features.gather`, which lets each injector's conditioner run once per distinct row too)."""
        if not isinstance(cond, Tensor) or self.encoder is None or len(cond) < 2 or cond.device.type == "mps":
            return self.condition(cond)  # (MPS: no torch.unique over a dimension in some versions)
        rows, index = torch.unique(cond, dim=0, return_inverse=True)
        if len(rows) == len(cond):
            return self.condition(cond)
        feats = self.condition(rows)
        return feats.gather(index) if isinstance(feats, Features) else feats[index]

    def _start(self, cond, num_samples, temperature, z, generator):
        feats = self._condition_once(cond)
        if z is None:
            n = self._batch(cond, num_samples)
            device = next(self.parameters()).device if cond is None else cond.device
            dtype = next(self.parameters()).dtype
            z = self.base.sample(
                self.latent_shape(feats, n), temperature, device=device, dtype=dtype, generator=generator
            )
        return z, feats

    def sample(
        self,
        cond: Tensor | None = None,
        temperature: float = 1.0,
        num_samples: int | None = None,
        z: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """One sample per row of `cond` (or `num_samples` unconditional ones) at a temperature.

        Nothing is clamped: explosions and non-finite values are returned as they are.
        """
        z, feats = self._start(cond, num_samples, temperature, z, generator)
        for rec in diagnostics.active():
            rec.output(len(self.layers), None, z)
        return self._run_inverse(z, feats, temperature, generator)[0]

    def inverse(
        self, z: Tensor, cond: Tensor | None = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        """The sampling map z -> x with its logdet (splits draw their half at `temperature`)."""
        return self._run_inverse(z, self.condition(cond), temperature, generator)

    @torch.no_grad()
    def trace(
        self,
        cond: Tensor | None = None,
        temperature: float = 1.0,
        num_samples: int | None = None,
        z: Tensor | None = None,
        generator: torch.Generator | None = None,
        keep: bool = False,
    ) -> tuple[Tensor, list[dict]]:
        """Run the sampling pass inside `minflow.recording()` and report every layer's output, in sampling order.

        Each row: ``index`` (position in forward order), ``name``, ``max_abs`` (largest finite |value|),
        ``variance`` (mean over dimensions of the across-batch variance of the finite values),
        ``nonfinite`` (count of inf/NaN), ``min_scale`` (smallest forward slope s a coupling or
        injector used, None for other layers), and with ``keep=True`` the ``output`` tensor.
        The first row (index = len(layers)) is the latent itself.
        """
        with diagnostics.recording(rows=True, keep=keep) as rec:
            x = self.sample(cond, temperature, num_samples, z, generator)
        return x, rec.rows


def format_trace(rows: list[dict]) -> str:
    """A plain-text table of `ConditionalFlow.trace` rows, in sampling order."""
    lines = [f"{'layer':>5}  {'name':<14}{'max|x|':>12}{'variance':>12}{'non-finite':>11}{'min s':>11}"]
    for r in rows:
        s = "" if r["min_scale"] is None else f"{r['min_scale']:.2e}"
        lines.append(
            f"{r['index']:>5}  {r['name']:<14}{r['max_abs']:>12.3g}{r['variance']:>12.3g}{r['nonfinite']:>11d}{s:>11}"
        )
    return "\n".join(lines)
