"""`pgd_at`: Madry et al. PGD adversarial training — cross-entropy on ℓ∞ PGD examples only (papers.md §2.4, §4.3).

Defaults are the CIFAR-10 settings of the SONet/TRADES repos (ε 0.031, step 0.007, 10 steps); Madry and YOPO start
from a uniform point in the ε ball (`random_start: true`), SONet's `madry_loss` from the clean input (`false`).
MNIST (YOPO pgd40): eps 0.3, step 0.01, steps 40. The attack runs in eval mode (training.inner), the update in
train mode.
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import NonNegativeInt, confloat

from advsweep.training import Recipe, inner, register_recipe


@register_recipe("pgd_at")
class PGDAT(Recipe):
    def __init__(self, eps: confloat(ge=0, le=1) = 0.031, step: confloat(ge=0) = 0.007, steps: NonNegativeInt = 10,
                 random_start: bool = True):
        self.eps, self.step, self.steps, self.random_start = eps, step, steps, random_start

    def craft(self, model, x, y):
        return inner.pgd_linf(
            model, x, lambda logits: F.cross_entropy(logits, y, reduction="sum"),
            eps=self.eps, step=self.step, steps=self.steps, start="uniform" if self.random_start else "zero",
        )

    def loss(self, model, x, y):
        x_adv = self.craft(model, x, y)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        return loss, {"train_adv_acc": (logits.argmax(1) == y).float().mean().item()}
