"""`dae`: denoising autoencoder front-end — the `ae` architecture (see ae.py) with `noise_std` σ (default 0.1, Gu &
Rigazio's DAE) recorded on the module for the pre-training recipe, which should train it to map x + σ·N(0, I) back to
x (clamping the corrupted input to [0, 1] is the recipe's choice). forward never adds noise.
"""
from __future__ import annotations

from pydantic import NonNegativeFloat
from torch import nn

from advsweep.models import register_model
from advsweep.models.ae import AEKind, AutoEncoder, HiddenSizes, _as_list
from advsweep.models.feedforward import Activation


@register_model("dae")
def dae(
    in_channels: int,
    num_classes: int,
    image_size: int,
    hidden: HiddenSizes = [256, 128],  # noqa: B006 (never mutated)
    kind: AEKind = "dense",
    activation: Activation = "relu",
    noise_std: NonNegativeFloat = 0.1,
) -> nn.Module:
    """Denoising autoencoder front-end (`num_classes` unused)."""
    return AutoEncoder(in_channels, image_size, _as_list(hidden), kind,
                       activation, noise_std=noise_std)


dae.is_frontend = True  # type: ignore[attr-defined]
