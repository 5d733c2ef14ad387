"""Small building blocks shared by the model files."""
from __future__ import annotations

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    # torchdiffeq's MNIST example: GroupNorm(min(32, C), C).
    return nn.GroupNorm(min(32, channels), channels)


def conv_stem(in_channels: int, width: int) -> nn.Sequential:
    """torchdiffeq odenet_mnist `conv` downsampling: 3x3 (no pad) → GN/ReLU → 4x4 s2 → GN/ReLU → 4x4 s2."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 1),
        group_norm(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 4, 2, 1),
        group_norm(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 4, 2, 1),
    )


def pool_head(width: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        group_norm(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)
    )


class ResBlock(nn.Module):
    """Pre-activation residual block: x + conv(relu(gn(conv(relu(gn(x))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.norm1(x)))
        out = self.conv2(torch.relu(self.norm2(out)))
        return x + out


# ---------------------------------------------------------------------------------------------------------------
# First-layer discovery (used by YOPO-style recipes). Every model of the zoo exposes `model.first_layer`; models that
# do not (e.g. the plain `resnet`/`odenet` nn.Sequential) are handled by `find_first_layer`.


def find_first_layer(model: nn.Module) -> nn.Module:
    """The module that first acts on the input: `model.first_layer` if the model defines it, else the first
    nn.Conv2d / nn.Linear in registration order (which is application order for nn.Sequential models)."""
    layer = getattr(model, "first_layer", None)
    if isinstance(layer, nn.Module):
        return layer
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d / nn.Linear layer")


class FirstLayerSequential(nn.Sequential):
    """nn.Sequential (same state-dict keys) with a `first_layer` property: the first Conv2d/Linear it applies."""

    @property
    def first_layer(self) -> nn.Module:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                return m
        raise ValueError("no nn.Conv2d / nn.Linear layer")
