"""Gradient-masking diagnostics that are not attacks (nothing here is registered)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from advsweep.attacks.adaptive import ode_blocks, with_solver


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇ₓ CE(model(x), y) per example (the per-example losses are summed, so each row is that example's gradient)."""
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    return g.detach()


def gradient_agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cosine similarity between the input gradients of the cross-entropy computed through the adjoint
    method (odeint_adjoint, adjoint=True) and by direct backpropagation through the solver (adjoint=False), with the
    model's own solver and tolerances otherwise. Both are computed on deep copies: `model` is not modified. Values
    well below 1 mean the gradient depends on how it is computed (a gradient-masking signal for adaptive solvers).
    Raises ValueError for a model without ODE blocks."""
    if not ode_blocks(model):
        raise ValueError("gradient_agreement needs a model with ODE blocks")
    g_adj = input_gradient(with_solver(model, adjoint=True), x, y)
    g_direct = input_gradient(with_solver(model, adjoint=False), x, y)
    return F.cosine_similarity(g_adj.flatten(1), g_direct.flatten(1), dim=1, eps=1e-30).cpu()
