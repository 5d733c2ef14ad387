"""`resnet6_mnist`: the torchdiffeq MNIST ResNet twin of `odenet_mnist` (papers.md §3.2): the same conv stem and
head with 6 pre-activation ResBlocks (GN → ReLU → conv3×3 → GN → ReLU → conv3×3, + identity) in place of the ODE
block. Thin wrapper over `resnet` (width 64, blocks 6 by default; 576,778 parameters on 1×28×28 / 10 classes).
`model.first_layer` = the first stem conv.
"""
from __future__ import annotations

from pydantic import NonNegativeInt, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.layers import FirstLayerSequential
from advsweep.models.resnet import resnet


@register_model("resnet6_mnist")
def resnet6_mnist(
    in_channels: int, num_classes: int, image_size: int, width: PositiveInt = 64, blocks: NonNegativeInt = 6
) -> nn.Module:
    return FirstLayerSequential(*resnet(in_channels, num_classes, image_size, width=width, blocks=blocks))
