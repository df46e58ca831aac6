"""The image flows' common base: dequantisation, bits per dimension, sampling whole images.

An `ImageFlow` models an image x of `channels` colours given a condition image y that is
`factor` times smaller (SRFlow: the LR image; LLFlow: the dark image, factor 1). Its flow
squeezes `levels` times, so the condition's height and width must be multiples of
``lr_multiple = max(1, 2^levels / factor)``.

Dequantisation: x = image + u, u ~ U(-1/(2q), 1/(2q)) (one bin of q levels); the reported bits
per dim are -log2 p(x | y) / D + log2 q, an upper bound on the NLL of q-level images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .flow import ConditionalFlow
from .utils import check_image

__all__ = ["ImageFlow", "ImageFlowConfig"]


class ImageFlowConfig:
    """What every image-flow config (a dataclass with ``levels``, ``factor``, ``quant`` and
    ``channels``) derives."""

    levels: int
    factor: int
    quant: int
    channels: int

    @property
    def lr_multiple(self) -> int:
        """Condition height and width must be multiples of this: max(1, 2^levels / factor)."""
        return max(1, 2**self.levels // self.factor)


class ImageFlow(ConditionalFlow):
    """A conditional flow on images; subclasses set `settings` (their config), `channels` and the
    name of their condition in error messages (`cond_name`, `cond_size`)."""

    settings: ImageFlowConfig
    cond_name, cond_size = "the condition", "H, W"

    @property
    def channels(self) -> int:
        """Colour channels of the image and of the condition."""
        return self.settings.channels

    @property
    def factor(self) -> int:
        """Output size / condition size."""
        return self.settings.factor

    @property
    def levels(self) -> int:
        return self.settings.levels

    @property
    def quant(self) -> int:
        """Quantisation levels q of the modelled images."""
        return self.settings.quant

    @property
    def lr_multiple(self) -> int:
        """Condition height and width must be multiples of this (`ImageFlowConfig.lr_multiple`)."""
        return self.settings.lr_multiple

    def dequantize(
        self, image: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """x = image + u / q, u ~ U(-1/2, 1/2): one quantisation bin of uniform noise (drawn from
        `generator`, or given as `noise`, u itself, e.g. drawn elsewhere for a whole global batch)."""
        if noise is None:
            noise = torch.rand(image.shape, generator=generator, dtype=image.dtype, device=image.device) - 0.5
        return image + noise / self.quant

    def nll_bpd(
        self, image: Tensor, cond: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """Bits per dim of the dequantised image given the condition, -log2 p(x + u | y) / D + log2 q, shape (B,)."""
        return self.bits_per_dim(self.dequantize(image, generator, noise), cond) + math.log2(self.quant)

    @torch.no_grad()
    def sample_images(
        self,
        cond: Tensor,
        temperature: float = 0.7,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        chunk: int = 8,
    ) -> Tensor:
        """Samples given whole condition images of any size, *unclamped* (explosions are returned as is).

        (C, h, w) -> (num_samples, C, f h, f w); (B, C, h, w) -> (B, num_samples, C, f h, f w). A
        condition whose size is not a multiple of `lr_multiple` is padded on the bottom/right by
        replicating its edge, and the output is cropped back to f h x f w. Samples are drawn `chunk`
        at a time. cond must be a float image in [0, 1] (`utils.check_image`), temperature >= 0.
        """
        check_image(cond, self.cond_name, self.channels, self.cond_size)
        for arg, value in (("num_samples", num_samples), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be an int >= 1, got {value!r}")
        param = next(self.parameters())
        single = cond.dim() == 3
        cond = (cond[None] if single else cond).to(param.device, param.dtype)
        h, w, m = cond.shape[2], cond.shape[3], self.lr_multiple
        if h % m or w % m:
            cond = F.pad(cond, (0, -w % m, 0, -h % m), mode="replicate")
        out = []
        for image in cond:
            parts = []
            for start in range(0, num_samples, chunk):
                n = min(chunk, num_samples - start)
                batch = image[None].expand(n, -1, -1, -1).contiguous()
                parts.append(self.sample(batch, temperature=temperature, generator=generator))
            out.append(torch.cat(parts))
        x = torch.stack(out)[..., : h * self.factor, : w * self.factor]
        return x[0] if single else x
