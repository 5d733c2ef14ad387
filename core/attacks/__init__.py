"""Attack registry.

An attack is a class registered with `@register_attack("name")`, built as `cls(model, eps, seed, **options)`; its
constructor's keyword options, with their pydantic-compatible annotations, are what a suite/spec may set
(`ATTACKS.validate` checks them). `attack(x, y)` takes [0,1] images and integer labels and returns an `AttackResult`.
The caller puts the model in eval mode; attacks never change its mode or weights.

`norm` is the threat model: "linf" / "l2" for ε-bounded attacks (x_adv lies in the ε-ball around x and in [0,1];
eps=0 returns x unchanged), "none" for minimal-distortion attacks whose eps is ignored (they return each example's
smallest adversarial found, or x where none was found, and its distance). In a sweep, a minimal-distortion attack
runs once per shard and its rows at each listed ε > 0 count an example as broken iff the distance found ≤ ε (in the
attack's own norm: ℓ2, or FAB's `p`); ε = 0 means unbounded (broken iff an adversarial was found at all).

Every adversarial a minimal-distortion attack reports is misclassified by more than `_util.margin_tolerance`, so it
stays adversarial in any batch size or precision; the engine decides every attack's robust flag by re-evaluating the
returned points in its own batch size and records the logit margin there.

Per-example bookkeeping in `AttackResult`:
- `steps`: gradient evaluations for white-box attacks, model queries (forward passes) for black-box ones; the total
  number of forward passes for `autoattack` (which mixes both; the split is in `info`).
- `grad_norm`: mean ℓ1 norm of the input gradient of the loss the attack followed, over the gradient evaluations it
  made for that example; NaN where it made none (e.g. an example already misclassified that the attack skipped);
  None for attacks that use no gradients.
- `distance`: for minimisation attacks (and `boundary`, `cw_l2`): the norm of the smallest adversarial perturbation
  found (0 for an example already misclassified, inf where none was found).
- `info`: attack-specific metadata (e.g. the effective AutoAttack settings and which stage broke each example).

`source_model` is reserved: the engine injects it (transfer attacks); a spec cannot set it.

ε-batched passes: an attack with `batches_eps = True` (fgsm, pgd, pgd_l2) also runs one batch made of `Segment`s,
consecutive examples each with its own ε and seed: `attack(x, y, segments=[...])`. The engine packs the shards of all
ε of such an attack into passes of `batch_size` examples this way. A segment's random draws depend only on its seed,
the restart and each example's position in its unit (`offset + i`), never on the pass it shares or the batch size, so
every ε's rows are the same however the passes are cut. A direct call without segments draws its random start from
torch's RNG seeded with the attack's seed, as torchattacks does.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from advsweep.registry import Registry, import_submodules

ATTACKS = Registry("attack", reserved=("model", "eps", "seed", "source_model"))
register_attack = ATTACKS.register


@dataclass(frozen=True)
class Segment:
    """`size` consecutive examples of a pass attacked at `eps`; `seed` roots their random draws, and `offset` is the
    position of the first of them in their unit (its shard)."""
    size: int
    eps: float
    seed: int
    offset: int = 0


def example_generator(seed: int, restart: int, position: int) -> torch.Generator:
    """The CPU generator of one example's random draws in one restart (see "ε-batched passes" above)."""
    key = f"{seed}|{restart}|{position}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1)


@dataclass
class AttackResult:
    x_adv: torch.Tensor
    steps: torch.Tensor | None = None  # per example: gradient evaluations or model queries spent
    grad_norm: torch.Tensor | None = None  # per example: mean ℓ1 norm of the input gradient the attack followed
    distance: torch.Tensor | None = None  # per example: norm of the smallest adversarial found (minimisation attacks)
    info: dict[str, Any] | None = None  # attack-specific metadata (settings, per-stage records)


class Attack:
    norm: ClassVar[str] = "linf"
    uses_gradients: ClassVar[bool] = True
    batches_eps: ClassVar[bool] = False  # `run_segments` takes a pass of several ε (see "ε-batched passes")

    @classmethod
    def derives_eps(cls, options: dict[str, Any]) -> bool:
        """True when one run at the largest ε gives the result at every ε by thresholding `distance` (the engine then
        runs it once per shard). Minimal-distortion attacks (norm "none"), and `boundary` without early stopping."""
        return cls.norm == "none"

    @classmethod
    def not_applicable(cls, model: nn.Module, options: dict[str, Any]) -> str | None:
        """Why this attack does not apply to `model` (e.g. solver settings on a model without ODE blocks), else None.
        The engine skips such (trial, attack) pairs and records the reason instead of failing the evaluation."""
        return None

    def __init__(self, model: nn.Module, eps: float, seed: int):
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model, self.eps, self.seed = model, float(eps), int(seed)

    def run(self, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        raise NotImplementedError

    def run_segments(self, x: torch.Tensor, y: torch.Tensor, segments: list[Segment]) -> AttackResult:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor, segments: list[Segment] | None = None) -> AttackResult:
        if x.min() < 0 or x.max() > 1:
            raise ValueError("attack inputs must lie in [0, 1]")
        if self.model.training:
            raise RuntimeError("attacks must run with the model in eval mode")
        if segments is not None:
            if not self.batches_eps:
                raise TypeError(f"{type(self).__name__} does not run ε-batched passes")
            if sum(s.size for s in segments) != len(x):
                raise ValueError(f"segments cover {sum(s.size for s in segments)} examples, the batch has {len(x)}")
        y = y.to(x.device).long()
        devices = [x.device] if x.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(self.seed)
            if segments is None:
                result = self.run(x.detach(), y)
            else:
                result = self.run_segments(x.detach(), y, segments)
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
