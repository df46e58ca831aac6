"""A small SRFlow: a conditional flow p(HR | LR) with an RDB or RRDB encoder of the LR image.

    log p(x | y) = log N(f(x; g(y)); 0, I) + sum_layers log|det J_layer|,    x = HR, y = LR

g(y) is `Features` {(H, W): features} with one feature map per flow level, at that level's size.
The flow has L levels of

    Squeeze -> T transition steps [ActNorm, 1x1 conv]
            -> K conditional steps [ActNorm, 1x1 conv, Injector(g), Coupling(x_a, g)]
            -> Split (all levels but the last)

and a top prior N(0, I). As in SRFlow the split prior of the dropped half is a Gaussian whose
mean and log-std come from the kept half only; ``prior="conditional"`` lets it read g(y) too, so
its variance depends on the condition: a second exploding path (chapter 8).

`SRFlowConfig` holds the architecture; ``SRFlow(config)`` or ``SRFlow(**fields)`` builds it, and
``model.config`` is the same as a dict (what checkpoint manifests store).

What is modelled (``target``): by default ("hr") the HR image x itself, as in SRFlow; the
artifact criterion (> 1.5, < -0.5, non-finite) then reads the flow's output directly. With
``target="residual"`` (as NCSR and FS-NCSR do) the flow's variable is the residual
r = x - up(y) to the bicubic upscale up(y) = `data.bicubic_up` of the LR image: an `Offset` layer
first in the chain, so that

    log p(x | y) = log p_r(x - up(y) | y)      (a shift by a function of y has Jacobian 1),

the same bits per dim, and a sample is x = up(y) + f^-1(z; y). Every caller that runs the layers
(training, `sample`, `trace`, `apply`, `audits`, the explorer) goes through that one layer; the
artifact criterion still reads the image x, now up(y) + r with up(y) in [0, 1].

Dequantisation, bits per dim and sampling whole images come from `imageflow.ImageFlow`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijections import Spec, make_bijection, spec_name
from .couplings import Coupling, Injector
from .data.images import bicubic_up
from .imageflow import ImageFlow, ImageFlowConfig
from .transforms import ActNorm, Cond, Features, InvConv1x1, Offset, Split, Squeeze

__all__ = [
    "ENCODERS",
    "RDB",
    "RRDB",
    "Encoder",
    "SRFlow",
    "SRFlowConfig",
    "TARGETS",
    "build_srflow",
    "encoder_taps",
    "flow_level",
    "super_resolve",
]


def flow_level(
    c: int, transitions: int, flow_steps: int, cond_channels: int, hidden: int, coupling: Spec, lu: bool
) -> list:
    """One level on c = 4 * (incoming channels): Squeeze, `transitions` x [ActNorm, 1x1 conv], then
    `flow_steps` x [ActNorm, 1x1 conv, Injector(features), Coupling(x_a, features)]; every injector and
    coupling gets a new bijection `make_bijection(coupling)` (a name or a factory)."""
    layers: list[nn.Module] = [Squeeze()]
    for _ in range(transitions):
        layers += [ActNorm(c), InvConv1x1(c, lu=lu)]
    for _ in range(flow_steps):
        layers += [
            ActNorm(c),
            InvConv1x1(c, lu=lu),
            Injector(c, cond_channels, make_bijection(coupling), kind="conv", hidden=hidden),
            Coupling(c, cond_channels, make_bijection(coupling), kind="conv", hidden=hidden),
        ]
    return layers


class RDB(nn.Module):
    """Residual dense block (ESRGAN): `growth` densely connected growth convs (each sees the input
    and every earlier growth), a fusion conv back to `nf` channels r, and out = x + 0.2 r."""

    def __init__(self, nf: int, gc: int, growth: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc, 3, padding=1) for i in range(growth))
        self.fuse = nn.Conv2d(nf + growth * gc, nf, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.fuse(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block (ESRGAN, SRFlow's encoder block): three `RDB`s of four
    growth convs each, out = x + 0.2 RDB3(RDB2(RDB1(x)))."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.body = nn.Sequential(*(RDB(nf, gc, growth=4) for _ in range(3)))

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.body(x)


TARGETS = ("hr", "residual")
"""What `SRFlowConfig.target` models: "hr" the HR image x (SRFlow), "residual" x - bicubic_up(LR) (NCSR)."""

ENCODERS = ("rdb", "rrdb")
"""Encoder kinds of `SRFlowConfig.encoder`: "rdb" (the course's small one), "rrdb" (SRFlow's)."""


def encoder_taps(kind: str, blocks: int) -> list[int]:
    """The blocks whose outputs the encoder concatenates: every one for "rdb"; for "rrdb" four,
    seven apart in SRFlow's 23 (blocks 1, 8, 15, 22), in general ``blocks - 1 - k * (blocks // 3)``."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
    if kind == "rdb":
        return list(range(blocks))
    step = max(1, blocks // 3)
    return sorted({blocks - 1 - k * step for k in range(4)} & set(range(blocks)))


class Encoder(nn.Module):
    """g(y): conv 3 -> nf, `blocks` RDBs (`kind` "rdb") or RRDBs ("rrdb"); the outputs of the blocks
    `encoder_taps` names concatenated (nf per tap at LR size), then per level a 1x1 adapter conv to
    `out_channels` resized to the level's size (HR / 2^(l+1)): nearest upsampling where it is
    larger than LR, average pooling where smaller."""

    def __init__(
        self,
        factor: int,
        levels: int,
        nf: int,
        blocks: int,
        gc: int,
        out_channels: int,
        in_channels: int = 3,
        kind: str = "rdb",
    ):
        super().__init__()
        self.in_channels, self.taps = in_channels, encoder_taps(kind, blocks)
        self.head = nn.Conv2d(in_channels, nf, 3, padding=1)
        block = RDB if kind == "rdb" else RRDB
        self.blocks = nn.ModuleList(block(nf, gc) for _ in range(blocks))
        self.adapters = nn.ModuleList(nn.Conv2d(nf * len(self.taps), out_channels, 1) for _ in range(levels))
        self.scales = [factor / 2 ** (level + 1) for level in range(levels)]  # level size / LR size

    def features(self, lr: Tensor) -> Tensor:
        """The concatenated features of the tapped blocks at LR resolution, (B, nf * taps, h, w)."""
        x, out = self.head(lr), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return torch.cat(out, 1)

    def forward(self, lr: Tensor) -> Features:
        if lr.dim() != 4 or lr.shape[1] != self.in_channels:
            raise ValueError(f"LR must have shape (B, {self.in_channels}, h, w), got {tuple(lr.shape)}")
        h, w = lr.shape[2:]
        smallest = min(self.scales)
        if smallest < 1 and (h * smallest % 1 or w * smallest % 1):
            m = round(1 / smallest)
            raise ValueError(f"LR size {h}x{w} must be divisible by {m} for this flow; super_resolve() pads for you")
        feats, out = self.features(lr), {}
        for adapter, scale in zip(self.adapters, self.scales):
            f = adapter(feats)
            if scale > 1:
                f = F.interpolate(f, scale_factor=int(scale), mode="nearest")
            elif scale < 1:
                f = F.avg_pool2d(f, round(1 / scale))
            out[tuple(f.shape[2:])] = f
        return Features(out)


@dataclass(frozen=True)
class SRFlowConfig(ImageFlowConfig):
    """The architecture of an `SRFlow` (checked when made): upscaling `factor` (a power of 2), L =
    `levels`, T = `transitions` and K = `flow_steps` per level, conditioner width `hidden`, encoder `nf`,
    `blocks` and growth `gc`, `cond_channels` per level, the `coupling` bijection's name, the split
    `prior` ("srflow" or "conditional"), `quant` levels, LU-parametrised 1x1 convs, `channels`, and
    the `encoder` kind ("rdb": RDBs, every block's output used; "rrdb": SRFlow's RRDBs, four tapped),
    and the `target` the flow models (`TARGETS`: "hr" the image, "residual" its residual to bicubic)."""

    factor: int = 4
    levels: int = 3
    flow_steps: int = 3
    transitions: int = 1
    hidden: int = 32
    nf: int = 32
    blocks: int = 4
    gc: int = 16
    cond_channels: int = 32
    coupling: Spec = "affine"
    prior: str = "srflow"
    quant: int = 32
    lu: bool = True
    channels: int = 3
    encoder: str = "rdb"
    target: str = "hr"

    def __post_init__(self) -> None:
        encoder_taps(self.encoder, 1)  # a clear error for an unknown kind
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.factor < 1 or self.factor & (self.factor - 1):
            raise ValueError(f"factor must be a power of 2, got {self.factor}")
        if self.prior not in ("srflow", "conditional"):
            raise ValueError(f"prior must be 'srflow' or 'conditional', got {self.prior!r}")
        # fail early on a bad name; a registered factory is recorded by its name
        object.__setattr__(self, "coupling", spec_name(self.coupling))
        make_bijection(self.coupling)


class SRFlow(ImageFlow):
    """SRFlow-like conditional flow on HR images given LR images (see the module docstring).

    ``coupling`` picks the bijection of every injector and coupling: a name of `minflow.bijections`
    (e.g. "affine", SRFlow's) or a factory of one.
    """

    cond_name, cond_size = "LR", "h, w"

    def __init__(self, config: SRFlowConfig | None = None, **fields):
        cfg = replace(config or SRFlowConfig(), **fields)
        encoder = Encoder(
            cfg.factor, cfg.levels, cfg.nf, cfg.blocks, cfg.gc, cfg.cond_channels, cfg.channels, cfg.encoder
        )
        layers, c = [Offset()] if cfg.target == "residual" else [], cfg.channels
        for level in range(cfg.levels):
            c *= 4
            layers += flow_level(
                c, cfg.transitions, cfg.flow_steps, cfg.cond_channels, cfg.hidden, cfg.coupling, cfg.lu
            )
            if level < cfg.levels - 1:
                layers.append(Split(c, cond_channels=cfg.cond_channels if cfg.prior == "conditional" else 0))
                c -= c // 2
        super().__init__(layers, encoder=encoder)
        self.settings, self.top_channels = cfg, c
        self.config = asdict(cfg)

    @property
    def target(self) -> str:
        """What the flow models: "hr" (the image) or "residual" (its residual to bicubic), `TARGETS`."""
        return self.settings.target

    def condition(self, cond: Tensor | None) -> Cond:
        """The encoder's features of the LR image; for ``target="residual"`` with the bicubic
        upscale up(y) as their ``offset`` (what the first layer, `Offset`, subtracts)."""
        feats = super().condition(cond)
        if self.target == "hr" or cond is None:
            return feats
        return Features(feats, prior_mean=feats.prior_mean, offset=bicubic_up(cond, self.factor))

    def latent_shape(self, feats: Cond, num_samples: int) -> tuple[int, ...]:
        h, w = min(feats, key=lambda k: k[0] * k[1])  # the last level's size
        return (num_samples, self.top_channels, h, w)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is None or x.dim() != 4 or cond.dim() != 4 or x.shape[:2] != cond.shape[:2]:
            raise ValueError(
                f"need HR (B, C, H, W) and LR (B, C, h, w) alike, got {tuple(x.shape)} and "
                f"{None if cond is None else tuple(cond.shape)}"
            )
        if x.shape[2:] != (cond.shape[2] * self.factor, cond.shape[3] * self.factor):
            raise ValueError(f"HR {tuple(x.shape[2:])} must be {self.factor}x the LR size {tuple(cond.shape[2:])}")
        return super().forward(x, cond)


def build_srflow(**config) -> SRFlow:
    """The checkpoint builder "srflow": `SRFlow(**config)` (config as stored in a checkpoint manifest)."""
    return SRFlow(**config)


def super_resolve(
    model: SRFlow,
    lr: Tensor,
    temperature: float = 0.7,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    chunk: int = 8,
) -> Tensor:
    """Samples of HR given full LR images of any size, *unclamped*: `ImageFlow.sample_images`.

    lr: (C, h, w) -> (num_samples, C, f h, f w); (B, C, h, w) -> (B, num_samples, C, f h, f w),
    edge-padded to a size the flow accepts and cropped back.
    """
    return model.sample_images(lr, temperature, num_samples, generator, chunk)
