"""Element-wise bijections: the contract they share, the affine family, and the one registry of names.

A bijection maps each element of x with its own parameters, ``params`` of shape
``x.shape + (n_params,)`` (a coupling's or injector's conditioner output):

    forward(x, params) -> (y, log|dy/dx|),   inverse(y, params) -> (x, log|dx/dy|),

both element-wise and shaped like x, the inverse's log-slope minus the forward's. `Bijection`
declares it; `Affine` here and the splines of `minflow.splines` fulfil it, and so does any class
of your own with the same three members.

Names. Every model builder (`toy.toy_flow`, `sr.SRFlow`, `lowlight.LLFlow`), command line and
checkpoint manifest picks its bijection from one registry, with one naming rule: the class name
in snake_case, followed by the scale when it is not the default one:

    affine (SRFlow's sigmoid scale), affine_exp, affine_softclamp, affine_tanh, affine_reparam,
    affine_additive, bounded_spline (the paper's), fully_bounded_spline, rq_spline.

Older names stay accepted (`ALIASES`, e.g. "spline" for bounded_spline). Wherever a name is
accepted, so is a factory: any callable returning a bijection, e.g. your own class. Register a
factory under a name with `register_bijection` to use it by name.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .splines import BoundedSpline, FullyBoundedSpline, RQSpline
from .utils import param_planes

__all__ = [
    "ALIASES",
    "BIJECTIONS",
    "SCALES",
    "Affine",
    "Bijection",
    "Factory",
    "Spec",
    "bijection_names",
    "canonical_name",
    "check_bijection",
    "make_bijection",
    "register_bijection",
]


@runtime_checkable
class Bijection(Protocol):
    """What a coupling or injector needs of its element-wise map (see the module docstring)."""

    n_params: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]: ...


def check_bijection(obj: object) -> Bijection:
    """`obj`, or a clear error unless it has ``n_params`` (an int >= 1), ``forward`` and ``inverse``."""
    missing = [m for m in ("n_params", "forward", "inverse") if not hasattr(obj, m)]
    if missing or not isinstance(obj, Bijection):
        raise TypeError(
            f"a bijection needs n_params, forward(x, params) and inverse(y, params); "
            f"{type(obj).__name__} lacks {', '.join(missing) or 'callable forward/inverse'}"
        )
    n = obj.n_params
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{type(obj).__name__}.n_params must be an int >= 1, got {n!r}")
    return obj


# ----------------------------------------------------------------------------- the affine family


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
            raise ValueError(
                f"Affine needs params of shape x.shape + (2,) = (t, h), got last dimension {params.shape[-1]}"
            )
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


# ----------------------------------------------------------------------------- the registry

Factory = Callable[..., Bijection]
Spec = str | Factory
"""How a model builder is told its bijection: a registered name, or a factory."""

_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
BIJECTIONS: dict[str, Factory] = {
    "affine": functools.partial(Affine, "sigmoid"),  # SRFlow: s = sigmoid(h + 2) + 1e-4
    **{f"affine_{scale}": functools.partial(Affine, scale) for scale in SCALES if scale != "sigmoid"},
    "bounded_spline": BoundedSpline,  # the paper's: RQ spline on a box, identity outside, + shift
    "fully_bounded_spline": FullyBoundedSpline,  # also bounds the derivative and the shift
    "rq_spline": RQSpline,  # Durkan et al.'s K-bin spline
}
"""name -> factory(**options) of every bijection a builder can pick by name."""
_BUILTIN = frozenset(BIJECTIONS)

ALIASES: dict[str, str] = {
    **{scale: f"affine_{scale}" for scale in SCALES if scale != "sigmoid"},  # toy and SR names of old
    "sigmoid": "affine",
    "affine_sigmoid": "affine",
    "spline": "bounded_spline",
    "spline_bounded": "fully_bounded_spline",  # the toy's old name
    "spline_full": "rq_spline",  # the toy's old name
}
"""Older names, still accepted (shipped checkpoints record some): alias -> registered name."""


def register_bijection(name: str, factory: Factory) -> Factory:
    """Make `factory` (a callable returning a bijection, e.g. a class) available under `name`;
    returns it, so it also works as a class decorator: ``@register_bijection("my_spline")``.

    Names follow the rule of the module docstring (snake_case). The built-in names and the aliases
    cannot be replaced (shipped checkpoints depend on them); a name of your own can be registered again.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a bijection name is snake_case (lower-case letters, digits, single '_'), got {name!r}")
    if name in _BUILTIN or name in ALIASES:
        raise ValueError(f"{name!r} is a built-in bijection name; choose another")
    if not callable(factory):
        raise TypeError(
            f"the factory for {name!r} must be callable (a class or function), got {type(factory).__name__}"
        )
    BIJECTIONS[name] = factory
    return factory


def bijection_names() -> list[str]:
    """The registered names (without the aliases), sorted."""
    return sorted(BIJECTIONS)


def canonical_name(name: str) -> str:
    """The registered name for `name` or its alias, or a clear error naming the choices."""
    name = ALIASES.get(name, name)
    if name not in BIJECTIONS:
        raise ValueError(
            f"unknown coupling {name!r}: choose a bijection name of {bijection_names()} "
            f"(older names {sorted(ALIASES)} still work), or pass a factory"
        )
    return name


def spec_name(spec: Spec) -> Spec:
    """What a model's config records for `spec`: a name as given (checked), the registered name of
    a registered factory, or an unregistered factory itself (such a model cannot be saved by name)."""
    if isinstance(spec, str):
        canonical_name(spec)
        return spec
    if not callable(spec):
        raise TypeError(f"a bijection is given by name or factory (a callable), got {type(spec).__name__}")
    return next((name for name, f in BIJECTIONS.items() if f is spec), spec)


def make_bijection(spec: Spec, **options) -> Bijection:
    """A new bijection from a name (or alias) or a factory, called with ``options`` (e.g. ``eps``)."""
    factory = BIJECTIONS[canonical_name(spec)] if isinstance(spec, str) else spec
    if not callable(factory):
        raise TypeError(f"a bijection is given by name or factory (a callable), got {type(spec).__name__}")
    return check_bijection(factory(**options))
