"""`dae_stack`: Gu & Rigazio's DAE + DNN stack, trained as the paper does — separately — inside one trial.

The front-end of a `stacked` model learns to denoise (MSE(frontend(clamp(x + σ·N)), x), as in `dae`) while the
classifier learns on CLEAN inputs (cross-entropy of classifier(x)); the two losses touch disjoint parameters, so one
sum trains both exactly as two separate runs would. At test time (and under attack) the model is the stack
classifier(frontend(x)): the paper's finding to check is that this stack LOWERS the minimal adversarial distortion.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat

from advsweep.training import Recipe, register_recipe
from advsweep.training.dae import DAE, reconstruction_stats, require_frontend


@register_recipe("dae_stack")
class DAEStack(Recipe):
    def __init__(self, sigma: NonNegativeFloat | None = None, clamp: bool = True, recon_weight: PositiveFloat = 1.0):
        self.sigma, self.clamp, self.recon_weight = sigma, clamp, recon_weight

    def loss(self, model, x, y):
        frontend, classifier = require_frontend(model, "dae_stack")
        sigma = DAE(self.sigma, self.clamp).noise_sigma(frontend)
        x_noisy = x + sigma * torch.randn_like(x)
        if self.clamp:
            x_noisy = x_noisy.clamp(0.0, 1.0)
        x_rec = frontend(x_noisy)
        recon = F.mse_loss(x_rec, x)
        logits = classifier(x)
        ce = F.cross_entropy(logits, y)
        return self.recon_weight * recon + ce, {
            "recon": recon.item(), "clean_ce": ce.item(), "noise_sigma": sigma,
            "classifier_acc": (logits.argmax(1) == y).float().mean().item(),
            "train_acc": reconstruction_stats(model, classifier, x_rec, y),  # the stack on denoised inputs
        }
