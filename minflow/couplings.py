"""Conditional couplings and injectors with pluggable element-wise bijections.

One mechanism, two layers:

- `Coupling`:  x = [x_a, x_b];  z_a = x_a,  z_b = f(x_b; theta),  theta = NN([x_a, cond]).
- `Injector`:  z = f(x; theta),  theta = NN(cond)  (SRFlow's conditional affine injector).

``f`` is an element-wise `Bijection` with ``n_params`` parameters per element (`Affine`, the
splines in `minflow.splines`, or your own): theta has shape ``x_b.shape + (n_params,)``, and
`conditioner_output` returns it. Conditioners end in a zero-initialised layer, so every coupling
starts as its bijection at params = 0 (for SRFlow's affine: the identity times sigmoid(2) + eps).
Inside `minflow.recording()` each call records its smallest forward slope per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import diagnostics
from .bijections import SCALES, Affine, Bijection, check_bijection
from .transforms import Cond, Features, Generator, Transform, cond_for, zero_layer
from .utils import check_cond, check_tensor

__all__ = ["SCALES", "Affine", "Coupling", "ElementwiseLayer", "Injector", "conditioner", "conv_net", "mlp"]

# ----------------------------------------------------------------------------- conditioners


def mlp(n_in: int, n_out: int, hidden: int = 64, depth: int = 4) -> nn.Sequential:
    """MLP with `depth` hidden ReLU layers of width `hidden`; the last layer is zero-initialised."""
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, zero_layer(nn.Linear(width, n_out)))


def conv_net(n_in: int, n_out: int, hidden: int = 32) -> nn.Sequential:
    """SRFlow's conditioner: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-initialised conv3x3."""
    return nn.Sequential(
        nn.Conv2d(n_in, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        zero_layer(nn.Conv2d(hidden, n_out, 3, padding=1)),
    )


def conditioner(kind: str, n_in: int, n_out: int, hidden: int, depth: int = 4) -> nn.Sequential:
    """`mlp` for vectors (kind="mlp") or `conv_net` for images (kind="conv")."""
    if kind == "mlp":
        return mlp(n_in, n_out, hidden, depth)
    if kind == "conv":
        return conv_net(n_in, n_out, hidden)
    raise ValueError(f"conditioner kind must be 'mlp' or 'conv', got {kind!r}")


# ----------------------------------------------------------------------------- layers


class ElementwiseLayer(Transform):
    """Shared machinery: z_b = f(x_b; params), params from a network of (x_a, cond); x_a passes through.

    Subclasses say how x splits into the part the network reads (x_a) and the part f maps (x_b)
    (`halves`, `join`) and what the network sees (`_net_input`).
    """

    def __init__(self, bijection: Bijection | None, kind: str):
        super().__init__()
        self.bijection = check_bijection(bijection) if bijection is not None else Affine()
        self.kind = kind

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x_a, x_b): what the conditioner reads and what the bijection maps."""
        raise NotImplementedError

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        """The inverse of `halves`."""
        raise NotImplementedError

    def _net_input(self, a: Tensor, c: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _params(self, a: Tensor, b: Tensor, cond: Cond) -> Tensor:
        """(B, channels_b * n_params, ...) from the network -> (B, channels_b, ..., n_params)."""
        c = cond_for(cond, a) if self.cond_channels else None
        check_cond(a, c, self.cond_channels)
        return self._per_element(self.net(self._net_input(a, c)), b)

    def _per_element(self, raw: Tensor, b: Tensor) -> Tensor:
        n = self.bijection.n_params
        return raw.reshape(raw.shape[0], b.shape[1], n, *raw.shape[2:]).movedim(2, -1)

    def conditioner_output(self, x: Tensor, cond: Cond = None) -> Tensor:
        """The bijection's parameters for input x (the raw conditioner output), x_b.shape + (n_params,):
        for `Affine` (t, h), so ``layer.bijection.scale(p[..., 1])`` is the scale s applied to x_b."""
        self._check(x, "x")
        a, b = self.halves(x)
        return self._params(a, b, cond)

    def _map(self, x: Tensor, cond: Cond, inverse: bool) -> tuple[Tensor, Tensor]:
        a, b = self.halves(x)
        params = self._params(a, b, cond)
        y, ladj = (self.bijection.inverse if inverse else self.bijection.forward)(b, params)
        for rec in diagnostics.active():  # only inside `minflow.recording()`: training pays nothing
            rec.scale(self, -ladj if inverse else ladj)
        return self.join(a, y), ladj.flatten(1).sum(1)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        self._check(x, "x")
        return self._map(x, cond, inverse=False)

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        self._check(z, "z")
        return self._map(z, cond, inverse=True)

    def _check(self, x: Tensor, name: str) -> None:
        check_tensor(x, name, (2,) if self.kind == "mlp" else (4,), self.channels)


class Coupling(ElementwiseLayer):
    """Conditional coupling: z_b = f(x_b; NN([x_a, cond])), z_a = x_a.

    x_a is the first ``channels // 2`` channels (the last ones with ``swap=True``); x_b the rest.
    ``cond_channels=0`` gives an unconditional coupling.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int = 0,
        bijection: Bijection | None = None,
        kind: str = "mlp",
        hidden: int = 64,
        depth: int = 4,
        swap: bool = False,
    ):
        super().__init__(bijection, kind)
        if channels < 2:
            raise ValueError("a coupling needs at least 2 channels")
        self.channels, self.cond_channels, self.swap = channels, cond_channels, swap
        self.n_a = channels // 2
        self.n_b = channels - self.n_a
        self.net = conditioner(kind, self.n_a + cond_channels, self.n_b * self.bijection.n_params, hidden, depth)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.swap:
            return x[:, self.n_b :], x[:, : self.n_b]
        return x[:, : self.n_a], x[:, self.n_a :]

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([b, a] if self.swap else [a, b], 1)

    def _net_input(self, a: Tensor, c: Tensor | None) -> Tensor:
        return a if c is None else torch.cat([a, c], 1)


class Injector(ElementwiseLayer):
    """Conditional injector: z = f(x; NN(cond)) on every channel; the parameters see only cond.

    Here x_a and x_b are both x: the network reads the condition at x's size, f maps all of x.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        bijection: Bijection | None = None,
        kind: str = "mlp",
        hidden: int = 64,
        depth: int = 4,
    ):
        super().__init__(bijection, kind)
        if cond_channels < 1:
            raise ValueError("an injector needs a condition (cond_channels >= 1)")
        self.channels, self.cond_channels = channels, cond_channels
        self.net = conditioner(kind, cond_channels, channels * self.bijection.n_params, hidden, depth)

    def halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x

    def join(self, a: Tensor, b: Tensor) -> Tensor:
        return b

    def _net_input(self, a: Tensor, c: Tensor | None) -> Tensor:
        return c

    def _params(self, a: Tensor, b: Tensor, cond: Cond) -> Tensor:
        """As for any layer; but when the rows of `Features` repeat a few distinct ones (n samples
        of one input), the network runs once per distinct row and its output is gathered."""
        shared = cond.distinct if isinstance(cond, Features) else None
        if shared is None:
            return super()._params(a, b, cond)
        check_cond(a, cond_for(cond, a), self.cond_channels)
        feats, index = shared
        return self._per_element(self.net(cond_for(feats, a))[index], b)
