"""minflow: conditional normalizing flows for imaging inverse problems, small enough to read.

Direction convention: ``forward`` is x -> z (density), ``inverse`` is z -> x (sampling); both
return ``(output, logdet)``.
"""

import warnings

# `python -m minflow.lowlight` imports this package, which imports lowlight, before running it as
# __main__; runpy then warns about it. Harmless here (the module has no import-time side effects).
warnings.filterwarnings("ignore", message=r"'minflow\.\w+' found in sys\.modules", category=RuntimeWarning)

from .bijections import SCALES, Affine, Bijection, bijection_names, make_bijection, register_bijection
from .couplings import Coupling, Injector, conditioner, conv_net, mlp
from .flow import ConditionalFlow, format_trace
from .diagnostics import Recorder, recording
from .transforms import (
    ActNorm,
    Features,
    InvConv1x1,
    Sequential,
    Split,
    Squeeze,
    StandardNormal,
    Transform,
    cond_for,
    gaussian_log_prob,
    leaves,
)
from .utils import get_device, pick, quick_mode, seed_everything
from .splines import BoundedSpline, FullyBoundedSpline, RQSpline, rational_quadratic_spline
from .checkpoints import available, load_pretrained
from . import bijections, checkpoints, data, diagnostics, lowlight, ood, splines, sr, toy  # noqa: E402  (sr, toy, lowlight register builders)

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
    "data",
    "ood",
    "splines",
    "sr",
    "toy",
    "lowlight",
    "ConditionalFlow",
    "Coupling",
    "Injector",
    "InvConv1x1",
    "Sequential",
    "Split",
    "Squeeze",
    "StandardNormal",
    "Transform",
    "cond_for",
    "conditioner",
    "conv_net",
    "format_trace",
    "gaussian_log_prob",
    "get_device",
    "leaves",
    "mlp",
    "pick",
    "quick_mode",
    "seed_everything",
]
