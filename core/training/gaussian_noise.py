"""`gaussian_noise`: cross-entropy under Gaussian noise injection (Gu & Rigazio 2014, papers.md §5.1–5.2).

variant "L1": x + σ·N(0, I) at the input only. variant "L*": the same at the input, and fresh σ_h·N(0, I) added to every
hidden layer's output (activations, not weights — the re-implementation papers.md cites does the same; the paper is
silent). Hidden layers are the model's `hidden_layers()` stages except the last (which outputs the logits) when it has
them, else every activation module (nn.ReLU, nn.Sigmoid, nn.Tanh, ...) in `model.modules()` — functional activations
(torch.relu inside a forward) are invisible to the latter and get no noise. The noise comes from forward hooks that act
only while the hooked module is in train mode and are removed when `loss` returns, so evaluation never sees noise.
`hidden_sigma` defaults to `sigma`. `clamp` clamps the noisy input to [0, 1] (off by default, like SONet's `--noise`).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import nn

from advsweep.training import Recipe, register_recipe

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
               nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish)


def hidden_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are the model's hidden layers (see the module docstring)."""
    if callable(getattr(model, "hidden_layers", None)):
        stages = list(model.hidden_layers())
        if len(stages) > 1:
            return stages[:-1]
    mods = [m for m in model.modules() if isinstance(m, ACTIVATIONS)]
    if not mods:
        name = getattr(model, "registry_name", type(model).__name__)
        raise ValueError(f"gaussian_noise L*: model {name!r} has neither hidden_layers() nor activation modules "
                         "to add hidden-layer noise to")
    return mods


@register_recipe("gaussian_noise")
class GaussianNoise(Recipe):
    def __init__(self, sigma: NonNegativeFloat = 0.1, variant: Literal["L1", "L*"] = "L1",
                 hidden_sigma: NonNegativeFloat | None = None, clamp: bool = False):
        self.sigma, self.variant, self.hidden_sigma, self.clamp = sigma, variant, hidden_sigma, clamp

    def loss(self, model, x, y):
        x_noisy = x + self.sigma * torch.randn_like(x)
        if self.clamp:
            x_noisy = x_noisy.clamp(0.0, 1.0)
        handles = []
        if self.variant == "L*":
            sigma_h = self.sigma if self.hidden_sigma is None else self.hidden_sigma

            def add_noise(module, args, output):
                if module.training and sigma_h > 0:
                    return output + sigma_h * torch.randn_like(output)
                return None

            # A module applied several times (a shared nn.ReLU) gets fresh noise at each call: hook it once.
            unique = list({id(m): m for m in hidden_modules(model)}.values())
            handles = [m.register_forward_hook(add_noise) for m in unique]
        try:
            logits = model(x_noisy)
        finally:
            for h in handles:
                h.remove()
        loss = F.cross_entropy(logits, y)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().item()}
