"""`trades`: TRADES (Zhang et al. 2019), as in the official yaodongyu/TRADES `trades_loss` (papers.md §2.4, §4.1).

Inner maximisation: start at x + 0.001·N(0, I), then `steps` sign-ascent steps of size `step` on
KL(p(x) ‖ p(x_adv)) = Σ_k p_k(x) log(p_k(x)/p_k(x_adv)) (torch `KLDivLoss(log_softmax(f(x_adv)), softmax(f(x)))`), each
projected onto the ε ball and [0, 1]; model in eval mode. Outer loss, model in train mode:

    CE(f(x), y) + β · (1/B) · Σ_i KL(p(x_i) ‖ p(x_adv_i))      (gradient through both f(x) and f(x_adv), as upstream)

Defaults: CIFAR-10 (ε 0.031, step 0.007, 10 steps, β 6). MNIST: eps 0.3, step 0.01, steps 40, beta 1.
Deviation from upstream: the start x + 0.001·N is projected onto [0, 1] too (upstream clamps from the first step on).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import NonNegativeInt, confloat

from advsweep.training import Recipe, inner, register_recipe


def kl_clean_adv(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of KL(softmax(clean) ‖ softmax(adv)) (upstream: KLDivLoss(size_average=False))."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="sum")


@register_recipe("trades")
class TRADES(Recipe):
    def __init__(self, beta: confloat(ge=0) = 6.0, eps: confloat(ge=0, le=1) = 0.031, step: confloat(ge=0) = 0.007,
                 steps: NonNegativeInt = 10):
        self.beta, self.eps, self.step, self.steps = beta, eps, step, steps

    def craft(self, model, x, y):
        with inner.eval_mode(model), torch.no_grad():
            logits_clean = model(x).detach()
        return inner.pgd_linf(
            model, x, lambda logits_adv: kl_clean_adv(logits_clean, logits_adv),
            eps=self.eps, step=self.step, steps=self.steps, start="normal", normal_std=0.001,
        )

    def loss(self, model, x, y):
        x_adv = self.craft(model, x, y)
        logits = model(x)
        logits_adv = model(x_adv)
        loss_natural = F.cross_entropy(logits, y)
        loss_robust = kl_clean_adv(logits, logits_adv) / len(x)
        loss = loss_natural + self.beta * loss_robust
        return loss, {
            "train_acc": (logits.argmax(1) == y).float().mean().item(),
            "train_adv_acc": (logits_adv.argmax(1) == y).float().mean().item(),
            "loss_natural": loss_natural.item(),
            "loss_robust": loss_robust.item(),
        }
