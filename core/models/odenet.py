"""`odenet`: the same stem as `resnet`, then one ODE block whose dynamics are a residual branch with time channels."""
from __future__ import annotations

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.layers import conv_stem, group_norm, pool_head
from advsweep.models.ode import DEFAULT_MAX_NUM_STEPS, MaxNumSteps, ODEBlock, Solver, Tolerance


class ConcatConv2d(nn.Module):
    """3x3 conv over [t ; h]: time appended as a constant channel (torchdiffeq's ConcatConv2d)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, 3, 1, 1)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(h[:, :1]) * t
        return self.conv(torch.cat([tt, h], dim=1))


class ODEFunc(nn.Module):
    """f(t, h) = GN(conv_t(ReLU(GN(conv_t(ReLU(GN(h)))))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = ConcatConv2d(channels)
        self.norm2 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels)
        self.norm3 = group_norm(channels)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, torch.relu(self.norm1(h)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


@register_model("odenet")
def odenet(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: PositiveInt = 64,
    solver: Solver = "dopri5",
    rtol: Tolerance = 1e-3,
    atol: Tolerance = 1e-3,
    step_size: PositiveFloat | None = None,
    T: PositiveFloat = 1.0,
    adjoint: bool = False,
    max_num_steps: MaxNumSteps = DEFAULT_MAX_NUM_STEPS,
) -> nn.Module:
    block = ODEBlock(ODEFunc(width), solver=solver, rtol=rtol, atol=atol, step_size=step_size, T=T, adjoint=adjoint,
                     max_num_steps=max_num_steps)
    return nn.Sequential(conv_stem(in_channels, width), block, pool_head(width, num_classes))
