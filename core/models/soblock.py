"""`soblock`: SOBlock (SONet repo `resXsonet10`) — `resnet10` whose stem conv3×3 + BN + ReLU is replaced by ONE
stabilised ODE block (in_channels → C, stride 1; see `sonet`), with nothing between its output y(T) and layer1.

The paper's best model (CIFAR-10, C = 64: 91.57% natural / 62.35% PGD-20). In the SONet repo the stem's solver is
hard-coded to dopri5, rtol = atol = 0.1, direct backprop, whatever the CLI says; those are the defaults here, and the
options below change only the stem (the rest of the network has no ODE). `model.first_layer` is the ODE stem.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.ode import DEFAULT_MAX_NUM_STEPS, MaxNumSteps, Solver, Tolerance
from advsweep.models.resnet10 import ResNet10
from advsweep.models.sonet import FourBlocks, SOBlock


@register_model("soblock")
def soblock(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: PositiveInt = 64,
    blocks: FourBlocks = [1, 1, 1, 1],  # noqa: B006 (never mutated)
    gamma: NonNegativeFloat = 0.0,
    bias: bool = False,
    solver: Solver = "dopri5",
    rtol: Tolerance = 0.1,
    atol: Tolerance = 0.1,
    step_size: PositiveFloat | None = None,
    T: PositiveFloat = 1.0,
    adjoint: bool = False,
    max_num_steps: MaxNumSteps = DEFAULT_MAX_NUM_STEPS,
) -> nn.Module:
    stem = SOBlock(in_channels, width, 1, solver=solver, rtol=rtol, atol=atol, step_size=step_size, T=T,
                   adjoint=adjoint, max_num_steps=max_num_steps, gamma=gamma, bias=bias)
    return ResNet10(stem, num_classes, width, list(blocks))
