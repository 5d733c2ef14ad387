"""`resnet10`: the kuangliu-style CIFAR ResNet of the SONet repo (`models/resnet.py`), BasicBlocks with BatchNorm.

stem = conv3×3(in_channels → C, no bias) → BN → ReLU; four stages of BasicBlocks at widths C, 2C, 4C, 8C with strides
[1, 2, 2, 2] (first block of a stage carries the stride; 1×1 conv + BN shortcut when the shape changes);
AdaptiveAvgPool(1) → Linear(8C → num_classes). Paper defaults (README): C = 64, blocks [1, 1, 1, 1] (the repo's
function default [2, 2, 2, 2] is really ResNet18). `model.first_layer` is the stem conv. The `ResNet10` class also
serves `soblock` (stem replaced by an ODE block).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.sonet import STRIDES, FourBlocks


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out)


class ResNet10(nn.Module):
    """`stem` maps the input to `width` channels at full resolution; `first_layer` is what acts on the input first
    (the stem conv, or the ODE block itself when the stem is one)."""

    def __init__(self, stem: nn.Module, num_classes: int, width: int, blocks: list[int]):
        super().__init__()
        self.stem = stem
        stages, planes_in = [], width
        for i, (n, stride) in enumerate(zip(blocks, STRIDES)):
            planes = width * 2**i
            layer = []
            for j in range(n):
                layer.append(BasicBlock(planes_in, planes, stride if j == 0 else 1))
                planes_in = planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(planes_in, num_classes)

    @property
    def first_layer(self) -> nn.Module:
        return self.stem[0] if isinstance(self.stem, nn.Sequential) else self.stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.linear(self.pool(out).flatten(1))


def plain_stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())


@register_model("resnet10")
def resnet10(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: PositiveInt = 64,
    blocks: FourBlocks = [1, 1, 1, 1],  # noqa: B006 (never mutated)
) -> nn.Module:
    """ResNet10 (SONet repo `resnet10`); `width` is C, `blocks` the BasicBlocks per stage."""
    return ResNet10(plain_stem(in_channels, width), num_classes, width, list(blocks))
