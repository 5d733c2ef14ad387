"""`ae`: autoencoder front-end, [0,1] images → [0,1] images (sigmoid output), same shape as its input.

`kind: dense` (default): flatten → Linear/act for each entry of `hidden` → mirrored Linear/act layers → Linear →
sigmoid → reshape; `hidden: [256, 128]` is Gu & Rigazio's 784-256-128-256-784 (468,368 parameters on MNIST),
`hidden: 256` a single hidden layer. `kind: conv`: `hidden` lists channels; each encoder layer is conv3×3 stride 2
(pad 1) → act, each decoder layer upsamples (nearest) back to the matching encoder size → conv3×3 (pad 1) → act,
the last one to `in_channels` with a sigmoid. Any image size.

A front-end (`is_frontend = True`): use it alone for pre-training (reconstruction loss) or in front of a classifier
via `stacked`. `noise_std` is the Gaussian corruption σ a denoising pre-training recipe should apply to the inputs
(0 for `ae`; see `dae`); forward never adds noise. `model.first_layer` is the encoder's first Linear/Conv2d.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from annotated_types import Len
from pydantic import BeforeValidator, PositiveInt
from torch import nn

from advsweep.models import register_model
from advsweep.models.feedforward import Activation, _ACTS

AEKind = Literal["dense", "conv"]


def _as_list(v: Any) -> Any:
    return [v] if isinstance(v, int) and not isinstance(v, bool) else v


# `hidden: 256` is accepted as [256]; validated (and dumped) as a non-empty list of positive ints.
HiddenSizes = Annotated[list[PositiveInt], Len(1), BeforeValidator(_as_list)]


class AutoEncoder(nn.Module):
    is_frontend = True

    def __init__(self, in_channels: int, image_size: int, hidden: list[int], kind: str = "dense",
                 activation: str = "relu", noise_std: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("autoencoder needs at least one hidden layer")
        self.kind, self.noise_std = kind, noise_std
        self.shape = (in_channels, image_size, image_size)
        act = _ACTS[activation]
        if kind == "dense":
            sizes = [in_channels * image_size * image_size, *hidden]
            mk = lambda a, b: nn.Linear(a, b)  # noqa: E731
        else:
            sizes = [in_channels, *hidden]
            mk = None
        enc, dec = [], []
        for a, b in zip(sizes[:-1], sizes[1:]):
            enc.append(nn.Sequential(mk(a, b) if mk else nn.Conv2d(a, b, 3, 2, 1), act()))
        rev = sizes[::-1]
        for j, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            last = j == len(rev) - 2
            dec.append(nn.Sequential(mk(a, b) if mk else nn.Conv2d(a, b, 3, 1, 1), nn.Sigmoid() if last else act()))
        self.encoder, self.decoder = nn.ModuleList(enc), nn.ModuleList(dec)

    @property
    def first_layer(self) -> nn.Module:
        return self.encoder[0][0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dense":
            h = x.flatten(1)
            for layer in [*self.encoder, *self.decoder]:
                h = layer(h)
            return h.view(x.shape)
        sizes, h = [], x
        for layer in self.encoder:
            sizes.append(h.shape[-2:])
            h = layer(h)
        for layer, size in zip(self.decoder, reversed(sizes)):
            h = layer(F.interpolate(h, size=tuple(size), mode="nearest"))
        return h


@register_model("ae")
def ae(
    in_channels: int,
    num_classes: int,
    image_size: int,
    hidden: HiddenSizes = [256, 128],  # noqa: B006 (never mutated)
    kind: AEKind = "dense",
    activation: Activation = "relu",
) -> nn.Module:
    """Autoencoder front-end (`num_classes` unused)."""
    return AutoEncoder(in_channels, image_size, _as_list(hidden), kind,
                       activation, noise_std=0.0)


ae.is_frontend = True  # type: ignore[attr-defined]
