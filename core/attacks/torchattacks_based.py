"""FGSM and PGD-ℓ∞ through torchattacks (the reference implementations most papers report)."""
from __future__ import annotations

import torch
import torchattacks
from pydantic import PositiveFloat, PositiveInt

from advsweep.attacks import Attack, AttackResult, clean_input_grad_norm, register_attack


class _TorchattacksAttack(Attack):
    def _finish(self, x, y, x_adv, steps: int) -> AttackResult:
        return AttackResult(
            x_adv=x_adv,
            steps=torch.full((len(x),), steps, dtype=torch.int32),
            grad_norm=clean_input_grad_norm(self.model, x, y).cpu(),
        )


@register_attack("fgsm")
class FGSM(_TorchattacksAttack):
    def __init__(self, model, eps, seed):
        super().__init__(model, eps, seed)

    def run(self, x, y):
        x_adv = torchattacks.FGSM(self.model, eps=self.eps)(x, y) if self.eps > 0 else x
        return self._finish(x, y, x_adv, 1)


@register_attack("pgd")
class PGD(_TorchattacksAttack):
    """PGD-ℓ∞ (Madry et al.). Step size `alpha` defaults to 2.5·eps/steps; `random_start` as in Madry."""

    def __init__(self, model, eps, seed, steps: PositiveInt = 20, alpha: PositiveFloat | None = None,
                 random_start: bool = True):
        super().__init__(model, eps, seed)
        self.steps, self.random_start = steps, random_start
        self.alpha = alpha if alpha is not None else 2.5 * self.eps / steps

    def run(self, x, y):
        if self.eps == 0:
            return self._finish(x, y, x, 0)
        atk = torchattacks.PGD(self.model, eps=self.eps, alpha=self.alpha, steps=self.steps,
                               random_start=self.random_start)
        return self._finish(x, y, atk(x, y), self.steps)
