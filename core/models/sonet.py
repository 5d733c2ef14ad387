"""`sonet`: SONet (Huang et al., MSML 2021; yao-lab/SONet `sonet_s`) — stabilised ODE blocks everywhere, ODE head.

Architecture (papers.md §2.2–2.3):
  stem  = SOBlock(in_channels → C, stride 1)
  stage i (i = 1..4, width C·2^(i−1), stride [1, 2, 2, 2][i−1]) = `blocks[i−1]` SOBlocks, the first one strided
  AdaptiveAvgPool(1) → flatten → ODEHead(8C → num_classes)
No BatchNorm anywhere. Defaults are the paper's: C = 64, blocks [2, 2, 2, 2], dopri5, rtol = atol = 0.1, t ∈ [0, 1],
direct backprop, γ = 0, no block biases.

The stabilised block (`SOFunc`, one shared kernel K, state (y, z)):
  ŷ = GN_a(y), ẑ = GN_b(z)                                (GN = GroupNorm(min(8, C), C), separate instances)
  dy/dt = GN_c(φ( K ⊛ ẑ + b1 − γ ŷ))                      (φ = LeakyReLU(0.01); K ⊛ = strided conv)
  dz/dt = GN_d(φ(−(Kᵀ ⊛ ŷ + b2) − γ ẑ))                   (Kᵀ ⊛ = conv_transpose with the same K = adjoint of K ⊛)
so the linear part acting on (ŷ, ẑ) is [[−γI, K], [−Kᵀ, −γI]]: skew-symmetric minus γI.
y(0) = `extend(x)` (nearest-neighbour downsampling when strided, then channel tiling), z(0) = x; output y(T).
Stride 1 uses a 3×3 kernel (pad 1), stride 2 a 4×4 kernel (pad 1). For odd spatial sizes (e.g. 7×7 in the last
stage of a 28×28 input) the transposed conv gets the `output_padding` that makes it map back to z's exact size;
it is then still the exact adjoint of the strided conv (this is how conv2d's input gradient is computed). SONet's own
code has no such case (CIFAR sizes stay even) and would fail on it.

Head (`ODEHeadFunc`, SONet `ODEBlock_fc`): state (y ∈ R^d, z ∈ R^classes), z(0) = 0.1·1, W ∈ R^{d×classes},
  dy/dt = W φ(z) + b_y − γ y,  dz/dt = −Wᵀ φ(y) + b_z − γ z;  logits = z(T).

Parameter-name note: the dynamics keep SONet's names (kernel, bias_1, bias_2, norm1_1, norm1_2, norm2_1, norm2_2;
weight, bias for the head). `model.first_layer` is the stem SOBlock (an ODE block: there is no plain conv on the
input). NFE is counted by the ODEBlocks (`advsweep.models.nfe`).
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Len
from pydantic import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.ode import DEFAULT_MAX_NUM_STEPS, MaxNumSteps, ODEBlock, Solver, Tolerance

FourBlocks = Annotated[list[NonNegativeInt], Len(4, 4)]
STRIDES = (1, 2, 2, 2)


def so_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class SOFunc(nn.Module):
    """Dynamics of the stabilised block on the state (y, z); see the module docstring."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, gamma: float = 0.0, bias: bool = False):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride, self.padding, self.gamma = stride, 1, gamma
        k = 4 if stride == 2 else 3
        self.kernel = nn.Parameter(torch.empty(planes, in_planes, k, k))
        nn.init.kaiming_uniform_(self.kernel, a=math.sqrt(5))  # bound 1/sqrt(in·k²)
        if bias:
            bound = 1 / math.sqrt(in_planes * k * k)
            self.bias_1 = nn.Parameter(torch.empty(planes).uniform_(-bound, bound))
            self.bias_2 = nn.Parameter(torch.empty(in_planes).uniform_(-bound, bound))
        else:
            self.register_parameter("bias_1", None)
            self.register_parameter("bias_2", None)
        self.norm1_1 = so_norm(planes)  # GN_a on y
        self.norm1_2 = so_norm(in_planes)  # GN_b on z
        self.norm2_1 = so_norm(planes)  # GN_c on dy/dt
        self.norm2_2 = so_norm(in_planes)  # GN_d on dz/dt
        self.act = nn.LeakyReLU(0.01)

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        k = self.kernel.shape[-1]
        return (h + 2 * self.padding - k) // self.stride + 1, (w + 2 * self.padding - k) // self.stride + 1

    def conv(self, z: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """K ⊛ z."""
        return F.conv2d(z, self.kernel, bias, stride=self.stride, padding=self.padding)

    def conv_transpose(self, y: torch.Tensor, size: tuple[int, int], bias: torch.Tensor | None = None) -> torch.Tensor:
        """Kᵀ ⊛ y, mapping onto z's spatial `size`: the adjoint of `conv` for inputs of that size."""
        k = self.kernel.shape[-1]
        base = [(n - 1) * self.stride - 2 * self.padding + k for n in y.shape[-2:]]
        out_pad = tuple(s - b for s, b in zip(size, base))
        return F.conv_transpose2d(y, self.kernel, bias, stride=self.stride, padding=self.padding, output_padding=out_pad)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        y, z = state
        yh, zh = self.norm1_1(y), self.norm1_2(z)
        dy = self.conv(zh, self.bias_1)
        dz = -self.conv_transpose(yh, tuple(z.shape[-2:]), self.bias_2)
        if self.gamma:
            dy = dy - self.gamma * yh
            dz = dz - self.gamma * zh
        return self.norm2_1(self.act(dy)), self.norm2_2(self.act(dz))


class SOBlock(nn.Module):
    """One stabilised ODE block: x (in_planes, H, W) → y(T) (planes, H', W'), y(0) = extend(x), z(0) = x."""

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        solver: str = "dopri5",
        rtol: float = 0.1,
        atol: float = 0.1,
        step_size: float | None = None,
        T: float = 1.0,
        adjoint: bool = False,
        gamma: float = 0.0,
        bias: bool = False,
        max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    ):
        super().__init__()
        self.in_planes, self.planes, self.stride = in_planes, planes, stride
        self.ode = ODEBlock(SOFunc(in_planes, planes, stride, gamma, bias), solver=solver, rtol=rtol, atol=atol,
                            step_size=step_size, T=T, adjoint=adjoint, max_num_steps=max_num_steps)

    @property
    def func(self) -> SOFunc:
        return self.ode.dynamics.func

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """SONet's initial y: nearest-neighbour downsampling to the conv's output size (stride 2), then the
        channels tiled to `planes` (integer repeats, then the first planes mod in_planes channels)."""
        if self.stride != 1:
            x = F.interpolate(x, size=self.func.out_size(*x.shape[-2:]), mode="nearest")
        reps = -(-self.planes // x.shape[1])
        return x.repeat(1, reps, 1, 1)[:, : self.planes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.ode((self.extend(x), x))
        return y


class ODEHeadFunc(nn.Module):
    """dy/dt = W φ(z) + b_y − γ y, dz/dt = −Wᵀ φ(y) + b_z − γ z (SONet `ODEfunc_fc`, bias on)."""

    def __init__(self, dim: int, num_classes: int, gamma: float = 0.0):
        super().__init__()
        self.dim, self.gamma = dim, gamma
        self.weight = nn.Parameter(torch.empty(dim, num_classes))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # fan_in = num_classes: bound 1/sqrt(num_classes)
        bound = 1 / math.sqrt(num_classes)
        self.bias = nn.Parameter(torch.empty(dim + num_classes).uniform_(-bound, bound))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # State order (z, y): the logits first, so ODEBlock's backward-NFE hook (on the first output) always fires.
        z, y = state
        dy = F.linear(self.act(z), self.weight, self.bias[: self.dim])
        dz = F.linear(self.act(y), -self.weight.t(), self.bias[self.dim:])
        if self.gamma:
            dy = dy - self.gamma * y
            dz = dz - self.gamma * z
        return dz, dy


class ODEHead(nn.Module):
    """Pooled features y (N, d) → logits z(T) (N, num_classes), z(0) = 0.1·1."""

    def __init__(self, dim: int, num_classes: int, gamma: float = 0.0, **ode_options):
        super().__init__()
        self.num_classes = num_classes
        self.ode = ODEBlock(ODEHeadFunc(dim, num_classes, gamma), **ode_options)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        z0 = torch.full((y.shape[0], self.num_classes), 0.1, dtype=y.dtype, device=y.device)
        z, _ = self.ode((z0, y))
        return z


class SONet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: list[int], gamma: float, bias: bool,
                 **ode_options):
        super().__init__()
        self.stem = SOBlock(in_channels, width, 1, gamma=gamma, bias=bias, **ode_options)
        stages, planes_in = [], width
        for i, (n, stride) in enumerate(zip(blocks, STRIDES)):
            planes = width * 2**i
            layer = []
            for j in range(n):
                layer.append(SOBlock(planes_in, planes, stride if j == 0 else 1, gamma=gamma, bias=bias, **ode_options))
                planes_in = planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = ODEHead(planes_in, num_classes, gamma=gamma, **ode_options)

    @property
    def first_layer(self) -> nn.Module:
        return self.stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.head(self.pool(out).flatten(1))


@register_model("sonet")
def sonet(
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: PositiveInt = 64,
    blocks: FourBlocks = [2, 2, 2, 2],  # noqa: B006 (never mutated)
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
    """SONet; `width` is C (stages C, 2C, 4C, 8C); `blocks` the ODE blocks per stage (the stem is extra);
    `gamma` the damping γ of every block and of the head; `bias` the block biases b1, b2 (the head always has its)."""
    return SONet(in_channels, num_classes, width, list(blocks), gamma, bias, solver=solver, rtol=rtol, atol=atol,
                 step_size=step_size, T=T, adjoint=adjoint, max_num_steps=max_num_steps)
