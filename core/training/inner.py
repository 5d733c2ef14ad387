"""Inner maximisation shared by the adversarial recipes (pgd_at, trades, ae_adv): an explicit ℓ∞ PGD loop.

The loop runs with the whole model in eval mode (`eval_mode`: batch-norm running statistics are not updated, dropout is
off) and restores every submodule's own mode afterwards. It differentiates the objective with respect to the input
only (`torch.autograd.grad`), so no parameter `.grad` is touched. Every iterate, the starting point included, is
projected onto the ε ball around the clean input and onto [0, 1].
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch
from torch import nn

Start = Literal["zero", "uniform", "normal"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; on exit restore each one's own `training` flag (not just the root's)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Nearest point of {‖x_adv − x‖∞ ≤ eps} ∩ [0, 1]^d (both are boxes, so clamping twice is exact)."""
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def random_start(x: torch.Tensor, eps: float, start: Start, normal_std: float = 0.001) -> torch.Tensor:
    """Starting point: x (zero), x + U(−ε, ε) (Madry), or x + normal_std·N(0, I) (TRADES: 0.001); projected."""
    if start == "zero":
        x0 = x.clone()
    elif start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "normal":
        x0 = x + normal_std * torch.randn_like(x)
    else:
        raise ValueError(f"unknown PGD start {start!r}")
    return project_linf(x0, x, eps)


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    eps: float,
    step: float,
    steps: int,
    start: Start = "uniform",
    normal_std: float = 0.001,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_step: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Sign-gradient ascent on `objective(forward(x_adv))` in the ℓ∞ ball of radius `eps` around `x`, within [0, 1].

    `forward` defaults to `model` (pass e.g. `model.classifier` to attack a part; `model` is what is put in eval mode).
    `objective` maps the forward's output to a scalar to maximise (a sum over the batch, so that the per-example
    gradients do not depend on the batch size; only their sign is used anyway). `on_step` sees every iterate
    (the start included), for tests and diagnostics. Returns the detached adversarial batch.
    """
    x = x.detach()
    forward = forward if forward is not None else model
    x_adv = random_start(x, eps, start, normal_std).detach()
    if on_step is not None:
        on_step(x_adv)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(forward(x_adv)), x_adv)
            x_adv = project_linf(x_adv.detach() + step * grad.sign(), x, eps).detach()
            if on_step is not None:
                on_step(x_adv)
    return x_adv
