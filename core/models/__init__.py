"""Model registry. A model is a function `(in_channels, num_classes, image_size, **options) -> nn.Module` decorated
with `@register_model("name")` in any module of this package; it takes [0,1] images (N, C, H, W) and returns logits.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advsweep.registry import Registry, import_submodules

MODELS = Registry("model", reserved=("in_channels", "num_classes", "image_size"))
register_model = MODELS.register


def build_model(name: str, in_channels: int, num_classes: int, image_size: int, **options: Any) -> nn.Module:
    model = MODELS.build(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size, **options)
    model.registry_name = name
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def nfe(model: nn.Module) -> dict[str, int]:
    """Forward/backward function evaluations summed over the model's ODE blocks since their last reset."""
    fwd = bwd = 0
    for m in model.modules():
        if hasattr(m, "nfe_forward"):
            fwd += m.nfe_forward
            bwd += m.nfe_backward
    return {"forward": fwd, "backward": bwd}


def reset_nfe(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "nfe_forward"):
            m.nfe_forward = 0
            m.nfe_backward = 0


def has_ode(model: nn.Module) -> bool:
    return any(hasattr(m, "nfe_forward") for m in model.modules())


import_submodules(__name__)
