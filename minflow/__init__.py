"""minflow: conditional normalizing flows for imaging inverse problems, small enough to read.

Direction convention: ``forward`` is x -> z (density), ``inverse`` is z -> x (sampling); both
return ``(output, logdet)``.
"""

import importlib

from . import bijections, checkpoints, couplings, data, diagnostics, flow, ood, splines, transforms, utils
from .bijections import SCALES, Affine, Bijection, bijection_names, make_bijection, register_bijection
from .checkpoints import available, load_pretrained
from .couplings import Coupling, Injector, conditioner, conv_net, mlp
from .diagnostics import Recorder, recording
from .flow import ConditionalFlow, format_trace
from .splines import BoundedSpline, FullyBoundedSpline, RQSpline, rational_quadratic_spline
from .transforms import (
    ActNorm,
    Chain,
    Features,
    InvConv1x1,
    Offset,
    Split,
    Squeeze,
    StandardNormal,
    Transform,
    gaussian_log_prob,
)
from .utils import adam, get_device, pick, quick_mode, seed_everything

LAZY = (
    "apply",
    "audits",
    "cli",
    "explorer",
    "imageflow",
    "lowlight",
    "metrics",
    "plotting",
    "report",
    "sr",
    "toy",
    "train",
)
"""Submodules imported on first use (``mf.sr``), so that importing minflow runs none of them."""


def audit(flow, conds, **options):
    """Audit a conditional flow on conditions `conds`: `minflow.audits.audit` (an `audits.AuditReport`,
    with ``to_dict()`` and ``plot()``); imported on first call."""
    from .audits import audit as run

    return run(flow, conds, **options)


def __getattr__(name: str):
    if name in LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *LAZY])


__version__ = "0.1.0"

__all__ = [
    "SCALES",
    "ActNorm",
    "Affine",
    "Bijection",
    "Features",
    "Recorder",
    "bijection_names",
    "bijections",
    "diagnostics",
    "make_bijection",
    "recording",
    "register_bijection",
    "BoundedSpline",
    "FullyBoundedSpline",
    "RQSpline",
    "available",
    "load_pretrained",
    "rational_quadratic_spline",
    "checkpoints",
    "couplings",
    "flow",
    "transforms",
    "utils",
    "data",
    "ood",
    "splines",
    "sr",
    "toy",
    "lowlight",
    "cli",
    "imageflow",
    "metrics",
    "plotting",
    "report",
    "train",
    "apply",
    "audit",
    "audits",
    "explorer",
    "ConditionalFlow",
    "Coupling",
    "Injector",
    "InvConv1x1",
    "Chain",
    "Offset",
    "Split",
    "Squeeze",
    "StandardNormal",
    "Transform",
    "conditioner",
    "conv_net",
    "format_trace",
    "gaussian_log_prob",
    "adam",
    "get_device",
    "mlp",
    "pick",
    "quick_mode",
    "seed_everything",
]
