"""Conditional couplings and injectors with pluggable element-wise bijections.

One mechanism, two layers:

- `Coupling`:  x = [x_a, x_b];  z_a = x_a,  z_b = f(x_b; theta),  theta = NN([x_a, cond]).
- `Injector`:  z = f(x; theta),  theta = NN(cond)  (SRFlow's conditional affine injector).

``f`` is an element-wise bijection with ``n_params`` parameters per element: `Affine` here
(with a selectable scale), the splines in `minflow.splines`. A bijection maps
``(x, params) -> (y, logabsdet)`` element-wise, with ``params`` of shape ``x.shape + (n_params,)``.
Conditioners end in a zero-initialised layer, so every coupling starts as its bijection at
params = 0 (for SRFlow's affine: the identity times sigmoid(2) + eps).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .transforms import Cond, Transform, cond_for, zero_layer
from .utils import check_cond, check_tensor, nanmin, param_planes

# ----------------------------------------------------------------------------- scales


def _sigmoid_scale(h: Tensor, eps: float, clamp: float) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(h + 2.0) + eps  # SRFlow: s in (eps, 1 + eps]
    return s, torch.log(s)


def _exp_scale(h: Tensor, eps: float, clamp: float) -> tuple[Tensor, Tensor]:
    return torch.exp(h), h


def _softclamp_scale(h: Tensor, eps: float, clamp: float) -> tuple[Tensor, Tensor]:
    log_s = clamp * (2.0 / math.pi) * torch.atan(h / clamp)  # log s in (-clamp, clamp)
    return torch.exp(log_s), log_s


def _tanh_scale(h: Tensor, eps: float, clamp: float) -> tuple[Tensor, Tensor]:
    log_s = clamp * torch.tanh(h / clamp)
    return torch.exp(log_s), log_s


def _reparam_scale(h: Tensor, eps: float, clamp: float) -> tuple[Tensor, Tensor]:
    inv = torch.sigmoid(h + 2.0) + eps  # sampling multiplies by this: slope <= 1 + eps
    return 1.0 / inv, -torch.log(inv)


def _additive_scale(h: Tensor, eps: float, clamp: float) -> tuple[Tensor, Tensor]:
    return torch.ones_like(h), torch.zeros_like(h)


SCALES: dict[str, Callable[[Tensor, float, float], tuple[Tensor, Tensor]]] = {
    "sigmoid": _sigmoid_scale,  # SRFlow / LLFlow: sigmoid(h + 2) + eps
    "exp": _exp_scale,  # RealNVP / Glow without a clamp
    "softclamp": _softclamp_scale,  # exp(c * 2/pi * atan(h / c)), HCFlow / FrEIA style
    "tanh": _tanh_scale,  # exp(c * tanh(h / c))
    "reparam": _reparam_scale,  # 1 / (sigmoid(h + 2) + eps): bounded *sampling* slope
    "additive": _additive_scale,  # s = 1 (NICE)
}


class Affine(nn.Module):
    """Element-wise affine bijection z = (x + t) * s(h), params = (t, h); log|dz/dx| = log s.

    ``scale`` picks s(h) from `SCALES`; ``eps`` is SRFlow's floor (default 1e-4) and ``clamp``
    the bound on |log s| of the soft clamps. The inverse x = z / s - t multiplies by 1/s, which for
    "sigmoid" can reach 1/eps = 10^4: the exploding inverse.
    """

    n_params = 2

    def __init__(self, scale: str = "sigmoid", eps: float = 1e-4, clamp: float = 2.0):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(SCALES)}")
        self.scale_name, self.eps, self.clamp = scale, eps, clamp

    def _unbind(self, params: Tensor) -> tuple[Tensor, Tensor]:
        if params.shape[-1] != 2:
            raise ValueError(f"Affine needs params of shape x.shape + (2,) = (t, h), "
                             f"got last dimension {params.shape[-1]}")
        planes, dim = param_planes(params)
        return planes.unbind(dim)

    def scale(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(s, log s) for the raw conditioner output h."""
        return SCALES[self.scale_name](h, self.eps, self.clamp)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, h = self._unbind(params)
        s, log_s = self.scale(h)
        return (x + t) * s, log_s

    def inverse(self, z: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        t, h = self._unbind(params)
        s, log_s = self.scale(h)
        return z / s - t, -log_s

    def extra_repr(self) -> str:
        return f"scale={self.scale_name!r}, eps={self.eps}, clamp={self.clamp}"


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
    """Shared machinery: apply a bijection to part of x with parameters from a network.

    After each call, ``last_min_scale`` holds, per sample, the smallest slope of the *forward*
    element-wise map that was used (for affine: the smallest s), ignoring elements already NaN. The sampling direction
    multiplies by up to 1 / last_min_scale; `ConditionalFlow.trace` reports it.
    """

    def __init__(self, bijection: nn.Module | None, kind: str):
        super().__init__()
        self.bijection = bijection if bijection is not None else Affine()
        self.kind = kind
        self.last_min_scale: Tensor | None = None

    def _params(self, raw: Tensor, channels: int) -> Tensor:
        """(B, channels * n_params, ...) -> (B, channels, ..., n_params)."""
        b, n = raw.shape[0], self.bijection.n_params
        return raw.reshape(b, channels, n, *raw.shape[2:]).movedim(2, -1)

    def _elementwise(self, x: Tensor, raw: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        params = self._params(raw, x.shape[1])
        y, ladj = (self.bijection.inverse if inverse else self.bijection.forward)(x, params)
        with torch.no_grad():  # smallest slope over the elements that are not NaN (all NaN -> NaN)
            self.last_min_scale = nanmin((ladj if not inverse else -ladj).flatten(1), 1).exp()
        return y, ladj.flatten(1).sum(1)

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
        bijection: nn.Module | None = None,
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

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.swap:
            return x[:, self.n_b :], x[:, : self.n_b]
        return x[:, : self.n_a], x[:, self.n_a :]

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([b, a] if self.swap else [a, b], 1)

    def _raw(self, a: Tensor, cond: Cond) -> Tensor:
        c = cond_for(cond, a) if self.cond_channels else None
        check_cond(a, c, self.cond_channels)
        return self.net(a if c is None else torch.cat([a, c], 1))

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        self._check(x, "x")
        a, b = self._halves(x)
        zb, logdet = self._elementwise(b, self._raw(a, cond), inverse=False)
        return self._join(a, zb), logdet

    def inverse(self, z: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        self._check(z, "z")
        a, b = self._halves(z)
        xb, logdet = self._elementwise(b, self._raw(a, cond), inverse=True)
        return self._join(a, xb), logdet


class Injector(ElementwiseLayer):
    """Conditional injector: z = f(x; NN(cond)) on every channel; the parameters see only cond."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        bijection: nn.Module | None = None,
        kind: str = "mlp",
        hidden: int = 64,
        depth: int = 4,
    ):
        super().__init__(bijection, kind)
        if cond_channels < 1:
            raise ValueError("an injector needs a condition (cond_channels >= 1)")
        self.channels, self.cond_channels = channels, cond_channels
        self.net = conditioner(kind, cond_channels, channels * self.bijection.n_params, hidden, depth)

    def _raw(self, x: Tensor, cond: Cond) -> Tensor:
        c = cond_for(cond, x)
        check_cond(x, c, self.cond_channels)
        return self.net(c)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        self._check(x, "x")
        return self._elementwise(x, self._raw(x, cond), inverse=False)

    def inverse(self, z: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        self._check(z, "z")
        return self._elementwise(z, self._raw(z, cond), inverse=True)


def conditioner_output(layer: ElementwiseLayer, x: Tensor, cond: Cond = None) -> Tensor:
    """The raw conditioner output of a coupling or injector for input x, shaped x_b.shape + (n_params,)."""
    if isinstance(layer, Coupling):
        a, b = layer._halves(x)
        return layer._params(layer._raw(a, cond), b.shape[1])
    return layer._params(layer._raw(x, cond), x.shape[1])

