"""`mlp`: fully connected classifier on the flattened image (Gu & Rigazio's N100-100-10 / N200-200-10:
`hidden: [100, 100]` / `[200, 200]`; 89,610 / 199,210 parameters on MNIST). Activation relu | sigmoid | tanh on the
hidden layers, none on the logits. A `FeedForward` (see feedforward.py): `hidden_layers()`, `forward_with_hiddens(x)`,
`first_layer` (the first nn.Linear; the flatten sits in that stage's `pre`).
"""
from __future__ import annotations

from pydantic import PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.feedforward import Activation, FeedForward, dense_stages


@register_model("mlp")
def mlp(
    in_channels: int,
    num_classes: int,
    image_size: int,
    hidden: list[PositiveInt] = [100, 100],  # noqa: B006 (never mutated)
    activation: Activation = "relu",
) -> nn.Module:
    return FeedForward(dense_stages(in_channels * image_size * image_size, list(hidden), num_classes, activation))
