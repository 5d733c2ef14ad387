"""Attack registry.

An attack is a class registered with `@register_attack("name")`, built as `cls(model, eps, seed, **options)`; its
constructor's keyword options are what a suite/spec may set. `attack.run(x, y)` takes [0,1] images and integer labels
and returns an `AttackResult`. The caller puts the model in eval mode; attacks never change its mode or weights.
`norm` is the threat model ("linf", "l2", or "none" for minimal-distortion attacks whose eps is ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from advsweep.registry import Registry, import_submodules

ATTACKS = Registry("attack", reserved=("model", "eps", "seed"))
register_attack = ATTACKS.register


@dataclass
class AttackResult:
    x_adv: torch.Tensor
    steps: torch.Tensor | None = None  # per example: gradient steps or model queries spent
    grad_norm: torch.Tensor | None = None  # per example: mean ℓ1 norm of the input gradient the attack followed


class Attack:
    norm: ClassVar[str] = "linf"
    uses_gradients: ClassVar[bool] = True

    def __init__(self, model: nn.Module, eps: float, seed: int):
        self.model, self.eps, self.seed = model, float(eps), int(seed)

    def run(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        if x.min() < 0 or x.max() > 1:
            raise ValueError("attack inputs must lie in [0, 1]")
        if self.model.training:
            raise RuntimeError("attacks must run with the model in eval mode")
        devices = [x.device] if x.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            result = self.run(x, y)
        result.x_adv = result.x_adv.detach()
        return result


def build_attack(name: str, model: nn.Module, eps: float, seed: int, **options: Any) -> Attack:
    return ATTACKS.build(name, model, eps, seed, **options)


def clean_input_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ℓ1 norm of ∇ₓ CE(model(x), y) at the clean input: near-zero values flag gradient masking."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.flatten(1).abs().sum(1).detach()


import_submodules(__name__)
