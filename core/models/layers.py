"""Small building blocks shared by the model files."""
from __future__ import annotations

import functools

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    # torchdiffeq's MNIST example: GroupNorm(min(32, C), C).
    return nn.GroupNorm(min(32, channels), channels)


# Below this many input elements the strided maximum's extra ops cost more than they save (crossover measured at
# ≈ 8k elements on a 2-core AMD EPYC, one thread: 1×16×28×28 48 vs 53 µs, 1×64×8×8 30 vs 21 µs).
_FAST_POOL_MIN_ELEMENTS = 8192


class MaxPool2d(nn.MaxPool2d):
    """`nn.MaxPool2d` with a faster forward on a CPU where no gradient is recorded (queries of black-box attacks,
    predictions, evaluation): for non-overlapping windows (stride = kernel, no padding, dilation 1, floor mode) the
    output is the elementwise maximum of the k² strided views of the input. A maximum involves no rounding, so the
    output equals `nn.MaxPool2d`'s whatever the batch, thread count or path (NaN propagates in both). PyTorch's NCHW
    CPU kernel also computes the argmax indices, needed only for a backward pass: on a 64×16×28×28 input it took
    4.6 ms against 0.8 ms here (one thread), about half of a whole forward of the `convnet`. With gradients
    recorded (training, white-box attacks) and on other devices the standard kernel runs: custom backwards were
    not faster (per-offset masks 9.3 vs 5.2 ms forward + backward on that input; first-max indices from the
    strided views fed to aten's backward ≈ 1.0×)."""

    def _fast(self, x: torch.Tensor) -> bool:
        k, s = self.kernel_size, self.stride
        return (x.device.type == "cpu" and x.is_floating_point() and x.dim() in (3, 4)
                and not (torch.is_grad_enabled() and x.requires_grad)
                and isinstance(k, int) and s in (k, (k, k), None) and self.padding in (0, (0, 0))
                and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices
                and x.numel() >= _FAST_POOL_MIN_ELEMENTS and x.shape[-2] >= k and x.shape[-1] >= k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast(x):
            return super().forward(x)
        k = self.kernel_size
        h, w = x.shape[-2] // k * k, x.shape[-1] // k * k
        return functools.reduce(torch.maximum, [x[..., i:h:k, j:w:k] for i in range(k) for j in range(k)])


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
