"""Invertible transforms and the contract they share.

Direction: ``forward`` is the density direction (data x -> latent z, used for training) and
``inverse`` the sampling direction (z -> x). Both return ``(output, logdet)`` with ``logdet`` of
shape ``(batch,)``, and the inverse's logdet is minus the forward's:

    log p(x | c) = log p_Z(f(x; c)) + log |det df/dx|.

Inputs are ``(B, C)`` vectors or ``(B, C, H, W)`` images; conditions are passed explicitly.
A condition (`Cond`) is a tensor, or `Features`: feature maps keyed by spatial size ``(H, W)``
(one per level of a multi-scale flow) and optionally the mean of the top latent's prior; each
layer picks the map that matches its input (`cond_for`).

Every ``inverse`` takes the same sampling keywords, ``temperature`` (T >= 0) and ``generator``:
layers that draw noise (`Split`) use them, the others ignore them, and `Chain` passes them on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .utils import check_cond, check_temperature, check_tensor

__all__ = [
    "Cond",
    "ActNorm",
    "Chain",
    "Features",
    "InvConv1x1",
    "Offset",
    "Split",
    "Squeeze",
    "StandardNormal",
    "Transform",
    "cond_for",
    "gaussian_log_prob",
]

Size = tuple[int, int]


class Features(Mapping[Size, Tensor]):
    """The condition of a multi-scale flow: one feature map per spatial size (H, W), read-only.

    ``features[(h, w)]`` is the (B, C, h, w) map for inputs of that size. ``prior_mean`` is an
    optional tensor shaped like the top latent: the mean mu(y) of its prior (LLFlow's colour map).
    ``offset`` is an optional tensor shaped like the modelled image: b(y) in x = b(y) + v, when the
    flow models the residual v (`Offset`; SRFlow's ``target="residual"``: b(y) the bicubic upscale).
    ``distinct`` is None, or ``(features, index)`` when these rows repeat a few distinct ones (from
    `gather`): row i is row ``index[i]`` of ``features``. A layer whose output depends on the
    condition alone (an `Injector`) can then compute it once per distinct row.
    """

    def __init__(self, maps: Mapping[Size, Tensor], prior_mean: Tensor | None = None, offset: Tensor | None = None):
        for key, value in maps.items():
            if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, int) for k in key)):
                raise TypeError(f"Features are keyed by spatial size (H, W), a tuple of two ints; got key {key!r}")
            if not isinstance(value, Tensor) or value.dim() != 4 or tuple(value.shape[2:]) != key:
                raise ValueError(
                    f"the feature map for size {key} must be a (B, C, {key[0]}, {key[1]}) tensor, "
                    f"got {getattr(value, 'shape', type(value).__name__)}"
                )
        for name, value in (("prior_mean", prior_mean), ("offset", offset)):
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a tensor or None, got {type(value).__name__}")
        self._maps, self.prior_mean, self.offset = dict(maps), prior_mean, offset
        self.distinct: tuple[Features, Tensor] | None = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> Features:
        """These features with `fn` applied to every tensor they hold (maps, prior mean, offset),
        e.g. ``lambda t: t[:1]`` to keep the first row."""
        mean, offset = (None if t is None else fn(t) for t in (self.prior_mean, self.offset))
        return Features({k: fn(v) for k, v in self._maps.items()}, prior_mean=mean, offset=offset)

    def gather(self, index: Tensor) -> Features:
        """Features whose row i is row ``index[i]`` of these, which they keep as `distinct`."""
        out = self.map(lambda t: t[index])
        out.distinct = (self, index)
        return out

    def __getitem__(self, size: Size) -> Tensor:
        size = tuple(size)
        if size not in self._maps:
            raise KeyError(f"no condition features for spatial size {size}; have sizes {sorted(self._maps)}")
        return self._maps[size]

    def __iter__(self) -> Iterator[Size]:
        return iter(self._maps)

    def __len__(self) -> int:
        return len(self._maps)

    def __repr__(self) -> str:
        mean = "" if self.prior_mean is None else f", prior_mean {tuple(self.prior_mean.shape)}"
        mean += "" if self.offset is None else f", offset {tuple(self.offset.shape)}"
        return f"Features({', '.join(f'{k}: {tuple(v.shape)}' for k, v in self._maps.items())}{mean})"


Cond = Tensor | Features | None


def cond_for(cond: Cond, x: Tensor) -> Tensor | None:
    """The condition for input `x`: `cond` itself, or the map of `Features` at x's spatial size."""
    if cond is None or isinstance(cond, Tensor):
        return cond
    if isinstance(cond, Features):
        return cond[tuple(x.shape[2:])]
    raise TypeError(f"a condition must be a tensor, minflow.Features or None, got {type(cond).__name__}")


def spatial_size(x: Tensor) -> int:
    """Number of positions sharing one per-channel parameter: H*W for images, 1 for vectors."""
    return math.prod(x.shape[2:])


Generator = torch.Generator | None


class Transform(nn.Module):
    """An invertible map x -> z with a tractable log-determinant. Subclasses implement both ways.

    ``forward(x, cond) -> (z, logdet)``; ``inverse(z, cond, *, temperature=1.0, generator=None)
    -> (x, logdet)``: every inverse accepts the sampling keywords, whether it draws noise or not.
    """

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Chain(Transform):
    """Composition: forward applies the layers in order, inverse in reverse; logdets add up."""

    def __init__(self, *layers: Transform):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z, cond, temperature=temperature, generator=generator)
            logdet = logdet + ld
        return z, logdet


def leaves(layers) -> list[Transform]:
    """Flatten nested `Chain`s into the list of leaf transforms, in forward order."""
    out: list[Transform] = []
    for layer in layers:
        out.extend(leaves(layer.layers) if isinstance(layer, Chain) else [layer])
    return out


class ActNorm(Transform):
    """Per-channel affine normalisation y = (x + b) * exp(logs), logdet = HW * sum(logs).

    Data-dependent initialisation (Glow): the first forward pass in training mode sets b and logs
    so that the outputs of that batch have zero mean and unit variance per channel.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.bias = nn.Parameter(torch.zeros(channels))
        self.logs = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and log-scale from a batch so its outputs are standardised per channel.

        An empty or non-finite batch is refused and the layer stays uninitialised: its statistics
        would set the parameters to NaN for good.
        """
        what = "ActNorm initialises from the first batch it sees in training mode, which"
        if x.numel() == 0:
            raise ValueError(f"{what} is empty: shape {tuple(x.shape)}. The layer stays uninitialised")
        if not torch.isfinite(x).all():
            raise ValueError(
                f"{what} holds non-finite values (shape {tuple(x.shape)}): the data or an earlier layer "
                "produced inf/NaN. The layer stays uninitialised"
            )
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims)
        std = x.std(dim=dims, unbiased=False) if x.numel() > x.shape[1] else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(std + 1e-6))
        self.initialized.fill_(True)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "x", (2, 4), self.channels)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self._view(self.bias, x)) * self._view(self.logs, x).exp()
        return y, (self.logs.sum() * spatial_size(x)).expand(x.shape[0])

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        check_tensor(z, "z", (2, 4), self.channels)
        x = z * (-self._view(self.logs, z)).exp() - self._view(self.bias, z)
        return x, (-self.logs.sum() * spatial_size(z)).expand(z.shape[0])


class InvConv1x1(Transform):
    """Invertible channel mixing y = W x at every position (Glow's 1x1 convolution).

    On vectors it is an invertible linear map. logdet = HW * log|det W|. Initialised to a random
    rotation. With ``lu=True``, W = P L (U + diag(sign * exp(log_s))) is stored in LU form so its
    log-determinant is ``sum(log_s)`` and W stays invertible by construction.
    """

    def __init__(self, channels: int, lu: bool = False):
        super().__init__()
        self.channels, self.lu = channels, lu
        w = torch.linalg.qr(torch.randn(channels, channels))[0]
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diag.abs().log())

    def weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        """The matrix W and log|det W|."""
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        lower = torch.tril(self.lower, -1) + self.eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ lower @ upper, self.log_s.sum()

    @staticmethod
    def _mix(w: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", w, x)

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "x", (2, 4), self.channels)
        w, logdet = self.weight_and_logdet()
        return self._mix(w, x), (logdet * spatial_size(x)).expand(x.shape[0])

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        check_tensor(z, "z", (2, 4), self.channels)
        w_inv, logdet = self.inverse_weight_and_logdet()
        return self._mix(w_inv, z), (-logdet * spatial_size(z)).expand(z.shape[0])

    def inverse_weight_and_logdet(self) -> tuple[Tensor, Tensor]:
        """W^-1 and log|det W|. Without autograd (sampling), W^-1 is kept and reused while W is
        unchanged (compared value for value: W is small, inverting it is the cost)."""
        w, logdet = self.weight_and_logdet()
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.linalg.inv(w), logdet
        kept = getattr(self, "_inverse", None)
        if kept is None or kept[0].dtype != w.dtype or kept[0].device != w.device or not torch.equal(kept[0], w):
            kept = self._inverse = (w.detach().clone(), torch.linalg.inv(w.detach()))
        return kept[1], logdet


class Offset(Transform):
    """x -> v = x - b(y), logdet 0 (a shift by a function of the condition has Jacobian 1); the
    inverse is x = b(y) + v. b(y) is the `Features` field named by ``field`` ("offset" here),
    shaped like x or like one sample of it. As a flow's first layer it makes the flow model the
    residual v, with the density of x unchanged: log p(x | y) = log p_v(x - b(y) | y)."""

    field: str = "offset"

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        return x - self._shift(x, cond), x.new_zeros(x.shape[0])

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        return z + self._shift(z, cond), z.new_zeros(z.shape[0])

    def _shift(self, x: Tensor, cond: Cond) -> Tensor:
        b = getattr(cond, self.field, None) if isinstance(cond, Features) else None
        if b is None or b.shape[1:] != x.shape[1:] or b.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"{type(self).__name__} needs Features whose {self.field} is shaped like its input "
                f"{tuple(x.shape)}, got {None if b is None else tuple(b.shape)}"
            )
        return b


class Squeeze(Transform):
    """Space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2). A permutation, so logdet = 0."""

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "x", (4,))
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got {h}x{w}")
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(b)

    def inverse(
        self, z: Tensor, cond: Cond = None, *, temperature: float = 1.0, generator: Generator = None
    ) -> tuple[Tensor, Tensor]:
        check_tensor(z, "z", (4,))
        b, c, h, w = z.shape
        if c % 4:
            raise ValueError(f"Squeeze.inverse needs channels divisible by 4, got {c}")
        x = z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
        return x, z.new_zeros(b)


def randn(shape, device=None, dtype=None, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise on `device`, drawn on the generator's own device when one is given
    (so a CPU generator gives the same numbers for a CPU or a GPU model)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, dtype=dtype, generator=generator, device=generator.device).to(device)


def gaussian_log_prob(z: Tensor, mean: Tensor | None = None, log_std: Tensor | None = None) -> Tensor:
    """log N(z; mean, exp(log_std)^2), summed over all but the batch dimension."""
    if mean is not None:
        z = (z - mean) * torch.exp(-log_std)
    lp = -0.5 * (z**2 + math.log(2 * math.pi))
    if log_std is not None:
        lp = lp - log_std
    return lp.flatten(1).sum(1)


class StandardNormal(nn.Module):
    """The Gaussian base N(0, I); sampling at temperature T draws from N(0, T^2 I)."""

    def log_prob(self, z: Tensor) -> Tensor:
        return gaussian_log_prob(z)

    def sample(self, shape, temperature: float = 1.0, device=None, dtype=None, generator=None) -> Tensor:
        return check_temperature(temperature) * randn(shape, device=device, dtype=dtype, generator=generator)


def zero_layer(layer: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias, so its output starts at exactly 0."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Split(Transform):
    """Split off half the channels and score them under a learned Gaussian prior.

    x = [z1, z2] along channels: forward returns z1 and, as its "logdet", log N(z2; mu, sigma^2)
    with (mu, log sigma) from a zero-initialised layer of the kept half z1 (SRFlow's split prior).
    With ``cond_channels > 0`` the prior also reads the condition: then its variance depends on the
    condition, a second possible exploding path (chapters 7 and 8). Inverse draws z2 = mu + T sigma eps at
    the temperature T (with ``generator``), or takes a given ``z2``, and returns -log N(z2; ...),
    so the inverse's logdet is minus the forward's.
    """

    def __init__(self, channels: int, cond_channels: int = 0, image: bool = True):
        super().__init__()
        if channels < 2:
            raise ValueError("Split needs at least 2 channels")
        self.channels, self.cond_channels, self.image = channels, cond_channels, image
        self.keep = channels - channels // 2
        self.drop = channels // 2
        n_in, n_out = self.keep + cond_channels, 2 * self.drop
        self.prior = zero_layer(nn.Conv2d(n_in, n_out, 3, padding=1) if image else nn.Linear(n_in, n_out))

    def _prior(self, z1: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
        c = cond_for(cond, z1) if self.cond_channels else None
        check_cond(z1, c, self.cond_channels)
        h = self.prior(z1 if c is None else torch.cat([z1, c], 1))
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: Tensor, cond: Cond = None) -> tuple[Tensor, Tensor]:
        check_tensor(x, "x", (4,) if self.image else (2,), self.channels)
        z1, z2 = x[:, : self.keep], x[:, self.keep :]
        mean, log_std = self._prior(z1, cond)
        return z1, gaussian_log_prob(z2, mean, log_std)

    def inverse(
        self,
        z1: Tensor,
        cond: Cond = None,
        *,
        temperature: float = 1.0,
        generator: Generator = None,
        z2: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        check_tensor(z1, "z1", (4,) if self.image else (2,), self.keep)
        check_temperature(temperature)
        mean, log_std = self._prior(z1, cond)
        if z2 is None:
            noise = randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
            z2 = mean + log_std.exp() * temperature * noise
        return torch.cat([z1, z2], 1), -gaussian_log_prob(z2, mean, log_std)
