"""`blur`: Gaussian-blur front-end (Gu & Rigazio's blurring pre-processing), [0,1] images → [0,1] images.

A fixed depthwise conv with a normalised k×k Gaussian (σ = `sigma`) per channel, `kernel_size` odd, padding k//2 in
`padding_mode` (reflect by default, so borders are not darkened; output stays in [0, 1] as a convex combination).
The kernel is a buffer: no trainable parameters. A front-end (`is_frontend = True`), stackable via `stacked`;
`model.first_layer` is the module itself (a parameter-free fixed linear layer).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, PositiveFloat, PositiveInt
from torch import nn

from advsweep.models import register_model


def _odd(k: int) -> int:
    if k % 2 != 1:
        raise ValueError("kernel_size must be odd")
    return k


OddInt = Annotated[PositiveInt, AfterValidator(_odd)]


def gaussian_kernel(kernel_size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    k2 = torch.outer(g, g)
    return (k2 / k2.sum()).float()


class GaussianBlur(nn.Module):
    is_frontend = True

    def __init__(self, channels: int, kernel_size: int = 5, sigma: float = 1.0, padding_mode: str = "reflect"):
        super().__init__()
        _odd(kernel_size)
        self.channels, self.kernel_size, self.sigma, self.padding_mode = channels, kernel_size, sigma, padding_mode
        self.register_buffer("weight", gaussian_kernel(kernel_size, sigma).expand(channels, 1, -1, -1).clone())

    @property
    def first_layer(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, sigma={self.sigma}, padding_mode={self.padding_mode}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size // 2
        if self.padding_mode == "zeros":
            return F.conv2d(x, self.weight.to(x.dtype), padding=p, groups=self.channels)
        x = F.pad(x, (p, p, p, p), mode=self.padding_mode)
        return F.conv2d(x, self.weight.to(x.dtype), groups=self.channels)


@register_model("blur")
def blur(
    in_channels: int,
    num_classes: int,
    image_size: int,
    kernel_size: OddInt = 5,
    sigma: PositiveFloat = 1.0,
    padding_mode: Literal["reflect", "replicate", "zeros"] = "reflect",
) -> nn.Module:
    """Gaussian blur front-end (`num_classes` unused)."""
    return GaussianBlur(in_channels, kernel_size, sigma, padding_mode)


blur.is_frontend = True  # type: ignore[attr-defined]
