"""`odenet_mnist`: the torchdiffeq MNIST ODENet (examples/odenet_mnist.py, papers.md §3.2) with the paper defaults.

Thin wrapper over `odenet`: conv stem (3×3 no pad → GN/ReLU → 4×4 s2 → GN/ReLU → 4×4 s2, width 64), ONE ODE block
f(t, h) = GN(conv_t(ReLU(GN(conv_t(ReLU(GN(h))))))) (conv_t: 3×3 conv over [t ; h]) on t ∈ [0, T], head
GN → ReLU → AdaptiveAvgPool(1) → Linear(64 → classes). dopri5, rtol = atol = 1e-3, direct backprop. Same modules
and state-dict keys as `odenet`; 208,266 parameters on 1×28×28 / 10 classes. `model.first_layer` = the first
stem conv; `model[1]` is the ODEBlock, `model[1].dynamics.func` its f.
"""
from __future__ import annotations

from pydantic import PositiveFloat, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.layers import FirstLayerSequential
from advsweep.models.ode import DEFAULT_MAX_NUM_STEPS, MaxNumSteps, Solver, Tolerance
from advsweep.models.odenet import odenet


@register_model("odenet_mnist")
def odenet_mnist(
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
    net = odenet(in_channels, num_classes, image_size, width=width, solver=solver, rtol=rtol, atol=atol,
                 step_size=step_size, T=T, adjoint=adjoint, max_num_steps=max_num_steps)
    return FirstLayerSequential(*net)
