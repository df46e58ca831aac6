"""A small SRFlow: a conditional flow p(HR | LR) with an RRDB-style encoder of the LR image.

    log p(x | y) = log N(f(x; g(y)); 0, I) + sum_layers log|det J_layer|,    x = HR, y = LR

g(y) is `Features` {(H, W): features} with one feature map per flow level, at that level's size.
The flow has L levels of

    Squeeze -> T transition steps [ActNorm, 1x1 conv]
            -> K conditional steps [ActNorm, 1x1 conv, Injector(g), Coupling(x_a, g)]
            -> Split (all levels but the last)

and a top prior N(0, I). As in SRFlow the split prior of the dropped half is a Gaussian whose
mean and log-std come from the kept half only; ``prior="conditional"`` lets it read g(y) too, so
its variance depends on the condition: a second exploding path (chapter 7).

What is modelled: the HR image itself, not its residual to bicubic. SRFlow does so, the pilot
showed the effect in this setting, and the artifact criterion (> 1.5, < -0.5, non-finite) reads
the flow's output directly, with nothing added after the flow that could mask or shift it.

Dequantisation: x = HR + u, u ~ U(-1/(2q), 1/(2q)) (one bin of q levels); the reported
bits per dim are -log2 p(x | y) / D + log2 q, an upper bound on the NLL of q-level images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bijections import Spec, make_bijection, spec_name
from .checkpoints import register_builder
from .couplings import Coupling, Injector
from .flow import ConditionalFlow
from .transforms import ActNorm, Cond, Features, InvConv1x1, Split, Squeeze
from .utils import check_image

def flow_level(c: int, transitions: int, steps: int, cond_channels: int, width: int, coupling: Spec, lu: bool) -> list:
    """One level on c = 4 * (incoming channels): Squeeze, `transitions` x [ActNorm, 1x1 conv], then
    `steps` x [ActNorm, 1x1 conv, Injector(features), Coupling(x_a, features)]; every injector and
    coupling gets a new bijection `make_bijection(coupling)` (a name or a factory)."""
    layers: list[nn.Module] = [Squeeze()]
    for _ in range(transitions):
        layers += [ActNorm(c), InvConv1x1(c, lu=lu)]
    for _ in range(steps):
        layers += [
            ActNorm(c),
            InvConv1x1(c, lu=lu),
            Injector(c, cond_channels, make_bijection(coupling), kind="conv", hidden=width),
            Coupling(c, cond_channels, make_bijection(coupling), kind="conv", hidden=width),
        ]
    return layers


class RDB(nn.Module):
    """Residual dense block (ESRGAN): two densely connected growth convs, a fusion conv, x + 0.2 r."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(nf, gc, 3, padding=1), nn.Conv2d(nf + gc, gc, 3, padding=1)])
        self.fuse = nn.Conv2d(nf + 2 * gc, nf, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.fuse(torch.cat(feats, 1))


class Encoder(nn.Module):
    """g(y): conv 3 -> nf, `blocks` RDBs; their outputs concatenated (nf * blocks channels at LR size),
    then per level a 1x1 adapter conv to `out_channels` resized to the level's size (HR / 2^(l+1)):
    nearest upsampling where it is larger than LR, average pooling where smaller."""

    def __init__(self, factor: int, levels: int, nf: int, blocks: int, gc: int, out_channels: int, in_channels: int = 3):
        super().__init__()
        self.in_channels = in_channels
        self.head = nn.Conv2d(in_channels, nf, 3, padding=1)
        self.blocks = nn.ModuleList(RDB(nf, gc) for _ in range(blocks))
        self.adapters = nn.ModuleList(nn.Conv2d(nf * blocks, out_channels, 1) for _ in range(levels))
        self.scales = [factor / 2 ** (level + 1) for level in range(levels)]  # level size / LR size

    def features(self, lr: Tensor) -> Tensor:
        """The concatenated block features at LR resolution, (B, nf * blocks, h, w)."""
        x, out = self.head(lr), []
        for block in self.blocks:
            x = block(x)
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


class SRFlow(ConditionalFlow):
    """SRFlow-like conditional flow on HR images given LR images (see the module docstring).

    ``coupling`` picks the bijection of every injector and coupling: a name of `minflow.bijections`
    (e.g. "affine", SRFlow's) or a factory of one.
    """

    def __init__(
        self,
        factor: int = 4,
        levels: int = 3,
        steps: int = 3,
        transitions: int = 1,
        width: int = 32,
        nf: int = 32,
        blocks: int = 4,
        gc: int = 16,
        cond_channels: int = 32,
        coupling: Spec = "affine",
        prior: str = "srflow",
        quant: int = 32,
        lu: bool = True,
        channels: int = 3,
    ):
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of 2, got {factor}")
        if prior not in ("srflow", "conditional"):
            raise ValueError(f"prior must be 'srflow' or 'conditional', got {prior!r}")
        coupling = spec_name(coupling)  # fail early on a bad name; a registered factory is recorded by name
        make_bijection(coupling)
        encoder = Encoder(factor, levels, nf, blocks, gc, cond_channels, channels)
        layers, c = [], channels
        for level in range(levels):
            c *= 4
            layers += flow_level(c, transitions, steps, cond_channels, width, coupling, lu)
            if level < levels - 1:
                layers.append(Split(c, cond_channels=cond_channels if prior == "conditional" else 0))
                c -= c // 2
        super().__init__(layers, encoder=encoder)
        self.factor, self.levels, self.quant, self.channels, self.top_channels = factor, levels, quant, channels, c
        self.config = dict(
            factor=factor, levels=levels, steps=steps, transitions=transitions, width=width, nf=nf, blocks=blocks,
            gc=gc, cond_channels=cond_channels, coupling=coupling, prior=prior, quant=quant, lu=lu, channels=channels,
        )  # fmt: skip

    @property
    def lr_multiple(self) -> int:
        """LR height and width must be multiples of this (HR of 2^levels)."""
        return max(1, 2**self.levels // self.factor)

    def latent_shape(self, feats: Cond, num_samples: int) -> tuple[int, ...]:
        h, w = min(feats, key=lambda k: k[0] * k[1])  # the last level's size
        return (num_samples, self.top_channels, h, w)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is None or x.dim() != 4 or cond.dim() != 4 or x.shape[:2] != cond.shape[:2]:
            raise ValueError(f"need HR (B, C, H, W) and LR (B, C, h, w) alike, got {tuple(x.shape)} and {None if cond is None else tuple(cond.shape)}")
        if x.shape[2:] != (cond.shape[2] * self.factor, cond.shape[3] * self.factor):
            raise ValueError(f"HR {tuple(x.shape[2:])} must be {self.factor}x the LR size {tuple(cond.shape[2:])}")
        return super().forward(x, cond)

    def dequantize(self, hr: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x = hr + u, u ~ U(-1/(2q), 1/(2q)): one quantisation bin of uniform noise."""
        u = torch.rand(hr.shape, generator=generator, dtype=hr.dtype, device=hr.device) - 0.5
        return hr + u / self.quant

    def nll_bpd(self, hr: Tensor, lr: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Bits per dim of dequantised HR given LR, -log2 p(hr + u | lr) / D + log2 q, shape (B,)."""
        return self.bits_per_dim(self.dequantize(hr, generator), lr) + math.log2(self.quant)


@register_builder("srflow")
def build_srflow(**config) -> SRFlow:
    """The registered builder: `SRFlow(**config)` (config as stored in a checkpoint manifest)."""
    return SRFlow(**config)


@torch.no_grad()
def super_resolve(
    model: SRFlow,
    lr: Tensor,
    temperature: float = 0.7,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
    chunk: int = 8,
) -> Tensor:
    """Samples of HR given full LR images of any size, *unclamped* (explosions are returned as is).

    lr: (C, h, w) -> (num_samples, C, f h, f w); (B, C, h, w) -> (B, num_samples, C, f h, f w).
    An LR whose size is not a multiple of `model.lr_multiple` is padded on the bottom/right by
    replicating its edge, and the output is cropped back to f h x f w. Samples are drawn `chunk`
    at a time. lr must be a float image in [0, 1] (`utils.check_image`), temperature >= 0.
    """
    check_image(lr, "LR", model.channels, "h, w")
    for arg, value in (("num_samples", num_samples), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
    param = next(model.parameters())
    single = lr.dim() == 3
    lr = (lr[None] if single else lr).to(param.device, param.dtype)
    h, w, m = lr.shape[2], lr.shape[3], model.lr_multiple
    if h % m or w % m:
        lr = F.pad(lr, (0, -w % m, 0, -h % m), mode="replicate")
    out = []
    for image in lr:
        parts = []
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            cond = image[None].expand(n, -1, -1, -1).contiguous()
            parts.append(model.sample(cond, temperature=temperature, generator=generator))
        out.append(torch.cat(parts))
    x = torch.stack(out)[..., : h * model.factor, : w * model.factor]
    return x[0] if single else x
