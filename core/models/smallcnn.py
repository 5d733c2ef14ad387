"""`smallcnn`: TRADES' MNIST SmallCNN (yaodongyu/TRADES models/small_cnn.py).

conv3×3(→32) ReLU, conv3×3(32→32) ReLU, maxpool 2, conv3×3(32→64) ReLU, conv3×3(64→64) ReLU, maxpool 2 (no padding),
flatten → FC 200 ReLU → dropout(0.5) → FC 200 ReLU → FC classes. Init as TRADES: Kaiming-normal convs with zero
bias, default dense layers, last layer zero. 312,202 parameters on 1×28×28 (flatten 64·4·4); on 3×32×32 the flatten
is 64·5·5. A `FeedForward` (see feedforward.py): 7 stages, pools and dropout in their stage's `post`;
`hidden_layers()`, `forward_with_hiddens(x)`, `first_layer` (conv1).
"""
from __future__ import annotations

from pydantic import confloat
from torch import nn

from advsweep.models import register_model
from advsweep.models.feedforward import FeedForward, Stage
from advsweep.models.layers import MaxPool2d

Probability = confloat(ge=0.0, lt=1.0)


@register_model("smallcnn")
def smallcnn(in_channels: int, num_classes: int, image_size: int, dropout: Probability = 0.5) -> nn.Module:
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"smallcnn needs image_size >= 14, got {image_size}")
    convs = [nn.Conv2d(in_channels, 32, 3), nn.Conv2d(32, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 64, 3)]
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight)
        nn.init.zeros_(conv.bias)
    fc1, fc2, fc3 = nn.Linear(64 * side * side, 200), nn.Linear(200, 200), nn.Linear(200, num_classes)
    nn.init.zeros_(fc3.weight)
    nn.init.zeros_(fc3.bias)
    return FeedForward([
        Stage(convs[0], "relu"),
        Stage(convs[1], "relu", post=MaxPool2d(2, 2)),
        Stage(convs[2], "relu"),
        Stage(convs[3], "relu", post=MaxPool2d(2, 2)),
        Stage(fc1, "relu", pre=nn.Flatten(), post=nn.Dropout(dropout)),
        Stage(fc2, "relu"),
        Stage(fc3),
    ])
