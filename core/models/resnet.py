"""`resnet`: conv stem + N pre-activation residual blocks + GN/ReLU/pool/linear head (torchdiffeq odenet_mnist)."""
from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.layers import ResBlock, conv_stem, pool_head


@register_model("resnet")
def resnet(in_channels: int, num_classes: int, image_size: int, width: PositiveInt = 64, blocks: NonNegativeInt = 6) -> nn.Module:
    return nn.Sequential(
        conv_stem(in_channels, width), *[ResBlock(width) for _ in range(blocks)], pool_head(width, num_classes)
    )
