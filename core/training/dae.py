"""`dae`: pre-train the front-end of a `stacked` model as a denoising autoencoder (Gu & Rigazio 2014, papers.md §5.2).

loss = MSE(frontend(clamp(x + σ·N(0, I), 0, 1)), x). Only `model.frontend` runs, so no gradient reaches
`model.classifier` (its parameters keep `.grad = None` and the optimiser skips them). `sigma` defaults (None) to the
front-end's `noise_std` when it sets one (the `dae` model does), else 0.1 (the DAE σ papers.md cites); the value used is
reported as the stat `noise_sigma`. The stat `train_acc` is the classifier's accuracy on the reconstructions (no grad,
eval mode, so it costs one classifier forward and changes nothing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import nn

from advsweep.training import Recipe, inner, register_recipe


def require_frontend(model: nn.Module, recipe: str) -> tuple[nn.Module, nn.Module]:
    frontend, classifier = getattr(model, "frontend", None), getattr(model, "classifier", None)
    if not isinstance(frontend, nn.Module) or not isinstance(classifier, nn.Module):
        name = getattr(model, "registry_name", type(model).__name__)
        raise ValueError(f"{recipe}: model {name!r} has no .frontend/.classifier; this recipe pre-trains the front-end "
                         "of a `stacked` model (model: {name: stacked, frontend: {...}, classifier: {...}})")
    return frontend, classifier


def reconstruction_stats(model: nn.Module, classifier: nn.Module, x_rec: torch.Tensor, y: torch.Tensor) -> float:
    with inner.eval_mode(model), torch.no_grad():
        return (classifier(x_rec.detach()).argmax(1) == y).float().mean().item()


@register_recipe("dae")
class DAE(Recipe):
    def __init__(self, sigma: NonNegativeFloat | None = None, clamp: bool = True):
        self.sigma, self.clamp = sigma, clamp

    def noise_sigma(self, frontend: nn.Module) -> float:
        if self.sigma is not None:
            return float(self.sigma)
        own = float(getattr(frontend, "noise_std", 0.0) or 0.0)
        return own if own > 0 else 0.1

    def loss(self, model, x, y):
        frontend, classifier = require_frontend(model, "dae")
        sigma = self.noise_sigma(frontend)
        x_noisy = x + sigma * torch.randn_like(x)
        if self.clamp:
            x_noisy = x_noisy.clamp(0.0, 1.0)
        x_rec = frontend(x_noisy)
        loss = F.mse_loss(x_rec, x)
        return loss, {"train_acc": reconstruction_stats(model, classifier, x_rec, y), "noise_sigma": sigma}
