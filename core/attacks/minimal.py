"""Minimal-distortion attacks written here (norm "none": eps is ignored): box-constrained L-BFGS and DeepFool-ℓ2.

Each returns, per example, the smallest adversarial it found as x_adv (x where it found none, and x for an input
that is already misclassified) and its ℓ2 `distance` (inf where none was found, 0 for a misclassified input); the
engine derives ℓ2, ℓ∞ and RMS per pixel and accuracy-vs-ε curves from these. A point is returned as found only if it
is misclassified by more than `_util.margin_tolerance` (checked by `_util.confirm_adversarial`), so a reported
distance holds in any batch size and precision. (`fab` in torchattacks_based.py is the
third minimum-norm attack.)
"""
from __future__ import annotations

import contextlib
from typing import Annotated

import numpy as np
import scipy.optimize
import torch
import torch.nn.functional as F
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt

from advsweep.attacks import Attack, AttackResult, register_attack
from advsweep.attacks._util import GradLog, bview, confirm_adversarial, l2, margin, margin_tolerance


def _single_threaded_blas():
    """L-BFGS-B's vector updates are small and memory-bound; threaded BLAS only adds contention (10× slower on a busy
    2-core machine). threadpoolctl is optional: without it, BLAS keeps its own setting."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _finish(x, y, model, best, best_d, log, wrong):
    best_d = torch.where(wrong, torch.zeros_like(best_d), best_d)
    best = torch.where(bview(wrong, x), x, best)
    return AttackResult(x_adv=best, steps=log.steps(), grad_norm=log.mean(), distance=best_d.cpu())


@register_attack("deepfool")
class DeepFool(Attack):
    """DeepFool-ℓ2 (Moosavi-Dezfooli et al. 2016), batched, following the original algorithm (as foolbox 3's
    L2DeepFoolAttack): at each step linearise the logit differences f_k − f_y for the `candidates` most likely
    classes, step to the nearest linearised boundary (|f_l|+1e-4)/‖∇f_l‖²·∇f_l, accumulate r_tot, and set
    x_i = clip(x + (1+overshoot)·r_tot). torchattacks.DeepFool is not used: it loops over examples in Python and
    applies the overshoot to every step instead of to the total (its PyPI build also lags label-index fixes, #153).

    An example is done only once its wrong-class margin exceeds `margin_tolerance` (not when one argmax flips), and
    `confirm_adversarial` re-checks the final points, so every success holds wherever the model is evaluated; r_tot
    follows the clipped point (what the box clips off does not accumulate).

    `box_aware=True` also leaves pixels pinned at 0 or 1 whose gradient points out of [0,1] out of the linearisation,
    so each step is the full linearised step over the pixels that can move. Measured on Fashion-MNIST (200 test
    images): it needs 5× fewer Jacobians on an MLP (3.3 vs 17.5 per example) but finds larger perturbations (median ℓ2
    1.234 vs 1.214 on the MLP, 1.24 vs 1.05 on a GroupNorm ResNet: the full step lands further past the curved
    boundary than the many shorter clipped steps), so the default is off: a minimal-distortion attack is judged by
    the distance it finds. `steps` counts Jacobian evaluations (each costs `candidates`−1 backward passes); grad_norm
    is the mean ℓ1 norm of the followed ∇(f_l − f_y)."""

    norm = "none"

    def __init__(self, model, eps, seed, steps: PositiveInt = 50, overshoot: NonNegativeFloat = 0.02,
                 candidates: Annotated[int, Field(ge=2)] = 10, box_aware: bool = False):
        super().__init__(model, eps, seed)
        self.steps, self.overshoot, self.candidates, self.box_aware = steps, overshoot, candidates, box_aware

    def run(self, x, y):
        n = len(x)
        log = GradLog(n)
        with torch.no_grad():
            logits0 = self.model(x)
        tol = margin_tolerance(logits0)
        wrong = logits0.argmax(1) != y
        k = min(self.candidates, logits0.shape[1]) - 1  # wrong classes considered
        others = logits0.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)[:, :k]
        scale = 1 + self.overshoot
        r_tot = torch.zeros_like(x)
        x_i = x.clone()
        active = ~wrong
        for _ in range(self.steps):
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            xi = x_i[idx].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(xi)
                done = (margin(logits.detach(), y[idx]) > tol[idx])
                z_y = logits.gather(1, y[idx, None]).squeeze(1)
                fs, gs = [], []
                for j in range(k):
                    f_j = logits.gather(1, others[idx, j:j + 1]).squeeze(1) - z_y
                    (g_j,) = torch.autograd.grad(f_j.sum(), xi, retain_graph=j < k - 1)
                    fs.append(f_j.detach())
                    gs.append(g_j)
            active[idx[done]] = False
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            sel = idx[keep]
            f = torch.stack(fs, 1)[keep]  # (m, k), f < 0 while still correct
            g = torch.stack(gs, 1)[keep]  # (m, k, ...)
            if self.box_aware:  # pinned pixels cannot move
                xk = x_i[sel].unsqueeze(1)
                g = g.masked_fill(((xk <= 0) & (g < 0)) | ((xk >= 1) & (g > 0)), 0.0)
            gnorm = g.flatten(2).norm(dim=2)
            best = (f.abs() / (gnorm + 1e-8)).argmin(1)
            rows = torch.arange(len(keep), device=x.device)
            w, fb, wn = g[rows, best], f[rows, best], gnorm[rows, best]
            r = bview((fb.abs() + 1e-4) / (wn ** 2 + 1e-12), w) * w
            log.add(sel, w)
            x_i[sel] = torch.clamp(x[sel] + scale * (r_tot[sel] + r), 0, 1)
            r_tot[sel] = (x_i[sel] - x[sel]) / scale  # what was clipped off does not accumulate
        best, found, dist = confirm_adversarial(self.model, x, y, x_i, ~wrong, tol, "l2")
        return _finish(x, y, self.model, best, dist, log, wrong)


@register_attack("lbfgs_min")
class LBFGSMin(Attack):
    """Box-constrained L-BFGS minimal distortion (Szegedy et al. 2014, as used by Gu & Rigazio 2014).

    For a target class t, minimise c·‖x' − x‖₂² + CE(f(x'), t) over x' ∈ [0,1]^D with scipy's L-BFGS-B (at most
    `maxiter` iterations, started at x), and search c per example: ×10 while the minimiser stays adversarial (larger c
    ⇒ smaller perturbation), ÷10 while it does not, bisecting geometrically once bracketed (`search_steps` rounds,
    from `c_init`). The smallest adversarial over all rounds is kept.

    Untargeted variant: t is the most likely wrong class at x, or the minimum over the `n_target_classes` most likely
    wrong classes; a point counts as adversarial when argmax f(x') ≠ y (not only = t). The examples of a batch are
    optimised jointly as one L-BFGS-B problem over the concatenated variables: their objectives are separable, so the
    minimiser is the same, but the curvature memory and stopping rule are shared. `steps` counts function+gradient
    evaluations per example; grad_norm is the mean ℓ1 norm of ∇ₓ CE(f(x'), t).
    """

    norm = "none"

    def __init__(self, model, eps, seed, c_init: PositiveFloat = 1.0, search_steps: PositiveInt = 10,
                 maxiter: PositiveInt = 100, n_target_classes: PositiveInt = 1):
        super().__init__(model, eps, seed)
        self.c_init, self.search_steps, self.maxiter, self.n_target_classes = (
            c_init, search_steps, maxiter, n_target_classes)

    def _lbfgs(self, x, t, c, log, idx):
        """One joint L-BFGS-B solve for examples x (targets t, constants c); returns the minimisers."""
        shape, dev, dtype = x.shape, x.device, x.dtype
        x0 = x.detach().cpu().double().numpy().ravel()
        c_col = bview(c, x)

        def fun(v):
            xa = torch.from_numpy(v).to(dev, dtype).view(shape).requires_grad_(True)
            with torch.enable_grad():
                ce = F.cross_entropy(self.model(xa), t, reduction="none")
                (g_ce,) = torch.autograd.grad(ce.sum(), xa)
            log.add(idx, g_ce)
            d = xa.detach() - x
            total = (c * d.flatten(1).pow(2).sum(1)).sum() + ce.detach().sum()
            grad = 2 * c_col * d + g_ce
            return float(total), grad.detach().cpu().double().numpy().ravel()

        bounds = scipy.optimize.Bounds(np.zeros_like(x0), np.ones_like(x0))
        with _single_threaded_blas():
            res = scipy.optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                          options={"maxiter": self.maxiter})
        return torch.from_numpy(res.x).to(dev, dtype).view(shape).clamp(0, 1)

    def run(self, x, y):
        n = len(x)
        log = GradLog(n)
        with torch.no_grad():
            logits0 = self.model(x)
        tol = margin_tolerance(logits0)
        wrong = logits0.argmax(1) != y
        best = x.clone()
        best_d = torch.full((n,), float("inf"), device=x.device)
        idx = (~wrong).nonzero().flatten()
        k = min(self.n_target_classes, logits0.shape[1] - 1)
        ranked = logits0.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
        for j in range(k if idx.numel() else 0):
            xs, ys, ts = x[idx], y[idx], ranked[idx, j]
            c = torch.full((len(idx),), self.c_init, device=x.device)
            lower = torch.zeros_like(c)
            upper = torch.full_like(c, float("inf"))
            for _ in range(self.search_steps):
                xa = self._lbfgs(xs, ts, c, log, idx)
                with torch.no_grad():
                    succ = margin(self.model(xa), ys) > tol[idx]
                d = l2(xa - xs)
                better = succ & (d < best_d[idx])
                best[idx[better]] = xa[better]
                best_d[idx[better]] = d[better]
                lower = torch.where(succ, torch.max(lower, c), lower)
                upper = torch.where(succ, upper, torch.min(upper, c))
                bracketed = (lower > 0) & torch.isfinite(upper)
                c = torch.where(bracketed, (lower * upper).sqrt(), torch.where(succ, c * 10, c / 10))
        best, found, best_d = confirm_adversarial(self.model, x, y, best, torch.isfinite(best_d) & ~wrong, tol, "l2")
        return _finish(x, y, self.model, best, best_d, log, wrong)
