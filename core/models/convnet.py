"""`convnet`: small conv-pool-conv-pool-FC classifier (Gu & Rigazio's "ConvNet"; exact layers unknown, papers.md §5.2).

For each entry c of `channels` (default [32, 64]): conv k×k (padding k//2, so size kept) → activation → max-pool 2
(floor). Then flatten → dense layers `hidden` (default none) with the activation → Linear(→ num_classes).
On MNIST with the defaults: 832 + 51,264 + 31,370 = 83,466 parameters. A `FeedForward` (see feedforward.py):
`hidden_layers()`, `forward_with_hiddens(x)`, `first_layer` (the first conv); the pools are in their stage's `post`.
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Len
from pydantic import PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.feedforward import Activation, FeedForward, Stage, dense_stages
from advsweep.models.layers import MaxPool2d


@register_model("convnet")
def convnet(
    in_channels: int,
    num_classes: int,
    image_size: int,
    channels: Annotated[list[PositiveInt], Len(1)] = [32, 64],  # noqa: B006 (never mutated)
    kernel_size: PositiveInt = 5,
    hidden: list[PositiveInt] = [],  # noqa: B006 (never mutated)
    activation: Activation = "relu",
) -> nn.Module:
    stages, c_in, size = [], in_channels, image_size
    for c in channels:
        conv_out = size + 2 * (kernel_size // 2) - kernel_size + 1
        if conv_out < 2:
            raise ValueError(f"convnet: image_size {image_size} is too small for {len(channels)} conv-pool layers")
        stages.append(Stage(nn.Conv2d(c_in, c, kernel_size, padding=kernel_size // 2), activation,
                            post=MaxPool2d(2)))
        c_in, size = c, conv_out // 2
    return FeedForward(stages + dense_stages(c_in * size * size, list(hidden), num_classes, activation))
