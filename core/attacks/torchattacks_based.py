"""Attacks built from torchattacks 3.5.1 components: APGD-CE/DLR, Square, FAB (minimum norm).

torchattacks supplies the per-run algorithms (`attack_single_run` of APGD, FAB and Square); the outer loops
(restarts, target classes) are re-written here so that each run's examples are known, which
lets us count model calls and log input-gradient norms per example. The loops follow torchattacks' (= the reference
AutoAttack's) `perturb`, including re-seeding torch's RNG with the attack seed at the start of each component (inside
the fork_rng of `Attack.__call__`, so the caller's RNG is untouched).

AutoAttack (`autoattack`, `autoattack_l2`) lives in autoattack.py; it uses `_Square` and `_reseed` from here.

`torchattacks.AutoAttack` is deliberately not used: it runs APGD/APGD-T/FAB with their 10-step defaults and Square with
`resc_schedule=True` (evaluation.md §4f items 19–20). `autoattack` is Croce & Hein's "standard" version.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import torchattacks
from pydantic import Field, NonNegativeInt, PositiveInt

from advsweep.attacks import Attack, AttackResult, register_attack
from advsweep.attacks._util import GradLog, confirm_adversarial, lp, margin_tolerance, predict, unchanged

_TA_NORM = {"linf": "Linf", "l2": "L2"}


def _reseed(seed: int, x: torch.Tensor) -> None:
    """What torchattacks' perturb does at its start (its random draws are CPU draws moved to the device); the CUDA
    generator is only touched for CUDA inputs, so a CPU job never initialises CUDA state."""
    torch.random.manual_seed(seed)
    if x.is_cuda:
        torch.cuda.random.manual_seed(seed)


class _Tracked:
    """Mixin for a torchattacks attack: every `get_logits` call on the batch of the current run (whose global example
    indices are `_idx`) counts one query per example, and the input gradient, when one is taken, is logged per
    example through a tensor hook."""

    _log: GradLog | None = None
    _idx: torch.Tensor | None = None
    _hook_grads: bool = True

    def get_logits(self, inputs, labels=None, *args, **kwargs):
        logits = super().get_logits(inputs, labels, *args, **kwargs)
        log, idx = self._log, self._idx
        if log is not None and idx is not None and len(inputs) == len(idx):
            log.query(idx)
            if self._hook_grads and inputs.requires_grad and torch.is_grad_enabled():
                inputs.register_hook(lambda g, idx=idx: log.add(idx, g))
        return logits


class _APGD(_Tracked, torchattacks.APGD):
    def perturb_tracked(self, x, y, idx):
        """torchattacks APGD.perturb (cheap=True): restarts on the still-robust points."""
        return _runs_on_robust(self, x, y, idx, [None] * self.n_restarts)


def _runs_on_robust(attack, x, y, idx, runs):
    """The reference `perturb` loop: one `attack_single_run` per entry of `runs` (a setup callable or None), each on
    the examples still classified correctly. Returns (still-robust mask, adversarials)."""
    attack._idx = idx
    acc = attack.get_logits(x).max(1)[1] == y
    adv = x.clone()
    _reseed(attack.seed, x)
    for setup in runs:
        ind = acc.nonzero().flatten()
        if ind.numel() == 0:
            break
        if setup is not None:
            setup()
        attack._idx = idx[ind]
        _, acc_curr, _, adv_curr = attack.attack_single_run(x[ind], y[ind])
        succ = (acc_curr == 0).nonzero().flatten()
        acc[ind[succ]] = False
        adv[ind[succ]] = adv_curr[succ].clone()
    attack._idx = None
    return acc, adv


class _FAB(_Tracked, torchattacks.FAB):
    def get_diff_logits_grads_batch(self, imgs, la):
        # Untargeted FAB backpropagates every logit (the hook would log each Jacobian row); log instead the gradient
        # of the logit difference FAB actually linearises (the class it picks, as in attack_single_run).
        self._hook_grads = False
        try:
            df, dg = super().get_diff_logits_grads_batch(imgs, la)
        finally:
            self._hook_grads = True
        if self._log is not None and self._idx is not None and len(imgs) == len(self._idx):
            flat = dg.flatten(2)
            denom = {"Linf": flat.abs().sum(-1), "L2": flat.norm(dim=-1), "L1": flat.abs().amax(-1)}[self.norm]
            ind = (df.abs() / (1e-12 + denom)).min(dim=1)[1]
            self._log.add(self._idx, dg[torch.arange(len(imgs)), ind])
        return df, dg

    def perturb_tracked(self, x, y, idx):
        """torchattacks FAB.perturb (multi-targeted or untargeted): a point counts as broken only if misclassified
        within eps."""
        self._idx = idx
        with torch.no_grad():
            acc = self.get_logits(x).max(1)[1] == y
        adv = x.clone()
        _reseed(self.seed, x)
        targets = range(2, self.n_target_classes + 2) if self.multi_targeted else [None]
        for target_class in targets:
            self.target_class = target_class
            for counter in range(self.n_restarts):
                ind = acc.nonzero().flatten()
                if ind.numel() == 0:
                    break
                self._idx = idx[ind]
                x_f, y_f = x[ind], y[ind]
                if target_class is None:
                    adv_curr = self.attack_single_run(x_f, y_f, use_rand_start=(counter > 0))
                else:
                    adv_curr = self.attack_single_run_targeted(x_f, y_f, use_rand_start=(counter > 0))
                with torch.no_grad():
                    acc_curr = self.get_logits(adv_curr).max(1)[1] == y_f
                res = lp(x_f - adv_curr, "linf" if self.norm == "Linf" else "l2")
                acc_curr = acc_curr | (res > self.eps)
                succ = (~acc_curr).nonzero().flatten()
                acc[ind[succ]] = False
                adv[ind[succ]] = adv_curr[succ].clone()
        self._idx = None
        return acc, adv


class _Square(torchattacks.Square):
    """torchattacks' Square, run differently with every result bit-identical (tested against torchattacks): the
    model runs under inference mode; in the ℓ∞ run a candidate equal to its point's current best (the window's new
    sign is the one every pixel of the window already has, or the clamp to [0, 1] undoes it) is not sent through
    the model. Its score is the best's, so torchattacks' update leaves that point as it is; measured on an
    adversarially trained Fashion-MNIST ConvNet, 23 % of standard AutoAttack's Square candidates are such no-ops.
    They still count as queries (the reference's count). The ℓ∞ run also keeps the points still to fool in compact
    tensors and works inside the window only (see `attack_single_run`)."""

    def margin_and_loss(self, x, y):
        with torch.inference_mode():
            logits = self.get_logits(x)
            xent = F.cross_entropy(logits, y, reduction="none") if self.loss == "ce" else None
            u = torch.arange(x.shape[0], device=x.device)
            y_corr = logits[u, y].clone()
            logits[u, y] = -float("inf")
            y_others = logits.max(dim=-1)[0]
            if xent is not None:
                out = (y_others - y_corr, xent) if self.targeted else (y_corr - y_others, -1.0 * xent)
            else:
                out = (y_others - y_corr,) * 2 if self.targeted else (y_corr - y_others,) * 2
        return out[0].clone(), out[1].clone()  # normal tensors again: the run updates them in place

    def attack_single_run(self, x, y):
        if self.norm != "Linf":
            return super().attack_single_run(x, y)
        # torchattacks 3.5.1 Square.attack_single_run (Linf): the same random draws in the same order and the same
        # arithmetic on every value that can change. How it is scheduled differs, not what it computes: the points
        # still to fool keep their state in compact tensors, gathered again only when one of them is fooled
        # (torchattacks gathers and scatters five tensors per query); the candidate, its bounds and the update are
        # computed inside the window only (outside it a candidate equals its point's best exactly: a best is
        # always within the ε-ball and [0, 1], and torchattacks' blend 1·a + 0·a returns a); a candidate equal to
        # its best is not sent through the model (its score is the best's, so the update leaves that point as it is).
        with torch.no_grad():
            n, (c, h, w) = len(x), x.shape[1:]
            n_features = c * h * w
            x_best = torch.clamp(x + self.eps * self.random_choice([n, c, 1, w]), 0.0, 1.0)
            margin_min, loss_min = self.margin_and_loss(x_best, y)
            n_queries = torch.ones(n).to(self.device)
            idx = (margin_min > 0.0).nonzero().flatten()  # the points still to fool, in index order
            yc, lo, hi = y[idx], x[idx] - self.eps, x[idx] + self.eps
            best, m_best, l_best = x_best[idx], margin_min[idx], loss_min[idx]
            done = 0  # queries made so far (after the first) by every point still to fool
            for i_iter in range(self.n_queries):
                if len(idx) == 0:
                    break
                p = self.p_selection(i_iter)
                s = max(int(round(math.sqrt(p * n_features / c))), 1)
                vh = int(self.random_int(0, h - s))
                vw = int(self.random_int(0, w - s))
                delta = 2.0 * self.eps * self.random_choice([c, 1, 1])
                win = (..., slice(vh, vh + s), slice(vw, vw + s))
                b_win = best[win]
                new_win = torch.clamp(torch.min(torch.max(b_win + delta, lo[win]), hi[win]), 0.0, 1.0)
                changed = (new_win != b_win).flatten(1).any(1)
                margin, loss = m_best.clone(), l_best.clone()  # a no-op candidate scores its best
                if changed.any():
                    x_new = best.clone()
                    x_new[win] = new_win
                    if changed.all():
                        margin, loss = self.margin_and_loss(x_new, yc)
                    else:
                        margin[changed], loss[changed] = self.margin_and_loss(x_new[changed], yc[changed])
                improved = (loss < l_best).float()
                l_best = improved * loss + (1.0 - improved) * l_best
                improved = torch.max(improved, (margin <= 0.0).float())
                m_best = improved * margin + (1.0 - improved) * m_best
                improved = improved.reshape([-1, *[1] * (x.dim() - 1)])
                best[win] = improved * new_win + (1.0 - improved) * b_win
                done += 1
                still = m_best > 0.0
                if not bool(still.all()):
                    gone = idx[~still]
                    x_best[gone] = best[~still]
                    n_queries[gone] += done
                    idx, yc, lo, hi = idx[still], yc[still], lo[still], hi[still]
                    best, m_best, l_best = best[still], m_best[still], l_best[still]
            x_best[idx] = best
            n_queries[idx] += done
        return n_queries, x_best

    def perturb_counted(self, x, y):
        """torchattacks Square.perturb (untargeted), also returning the queries spent per example."""
        self.init_hyperparam(x)
        queries = torch.zeros(len(x), dtype=torch.int64)
        with torch.no_grad():
            acc = self.get_logits(x).max(1)[1] == y
        queries += 1
        adv = x.clone()
        _reseed(self.seed, x)
        for _ in range(self.n_restarts):
            ind = acc.nonzero().flatten()
            if ind.numel() == 0:
                break
            n_q, adv_curr = self.attack_single_run(x[ind], y[ind])
            with torch.no_grad():
                acc_curr = self.get_logits(adv_curr).max(1)[1] == y[ind]
            queries[ind.cpu()] += n_q.long().cpu() + 1
            succ = (~acc_curr).nonzero().flatten()
            acc[ind[succ]] = False
            adv[ind[succ]] = adv_curr[succ].clone()
        return acc, adv, queries


def _num_classes(model, x) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


class _APGDAttack(Attack):
    loss: str = "ce"

    def __init__(self, model, eps, seed, n_iter: PositiveInt = 100, restarts: PositiveInt = 1):
        super().__init__(model, eps, seed)
        self.n_iter, self.restarts = n_iter, restarts

    def run(self, x, y):
        if self.eps == 0:
            return unchanged(x)
        log = GradLog(len(x))
        atk = _APGD(self.model, norm=_TA_NORM[self.norm], eps=self.eps, steps=self.n_iter, n_restarts=self.restarts,
                    seed=self.seed, loss=self.loss, eot_iter=1, rho=0.75)
        atk._log = log
        _, adv = atk.perturb_tracked(x.clone(), y.clone(), torch.arange(len(x), device=x.device))
        return AttackResult(x_adv=adv, steps=log.steps(), grad_norm=log.mean())


@register_attack("apgd_ce")
class APGDCE(_APGDAttack):
    """APGD with cross-entropy (Croce & Hein 2020) via torchattacks.APGD; n_iter=100, 1 restart by default. As in
    AutoAttack, a point is only changed if the attack misclassifies it."""

    loss = "ce"


@register_attack("apgd_dlr")
class APGDDLR(_APGDAttack):
    """APGD with the (untargeted) DLR loss via torchattacks.APGD; needs ≥ 3 classes."""

    loss = "dlr"


@register_attack("square")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), score-based, via torchattacks.Square with the reference
    AutoAttack settings (p_init 0.8, margin loss, resc_schedule=False). `steps` = queries per example."""

    uses_gradients = False

    def __init__(self, model, eps, seed, n_queries: PositiveInt = 5000,
                 p_init: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8, restarts: PositiveInt = 1,
                 loss: Literal["margin", "ce"] = "margin", resc_schedule: bool = False):
        super().__init__(model, eps, seed)
        self.n_queries, self.p_init, self.restarts, self.loss, self.resc_schedule = (
            n_queries, p_init, restarts, loss, resc_schedule)

    def run(self, x, y):
        if self.eps == 0:
            return unchanged(x, gradients=False)
        atk = _Square(self.model, norm=_TA_NORM[self.norm], eps=self.eps, n_queries=self.n_queries,
                      n_restarts=self.restarts, p_init=self.p_init, loss=self.loss,
                      resc_schedule=self.resc_schedule, seed=self.seed)
        _, adv, queries = atk.perturb_counted(x.clone(), y.clone())
        return AttackResult(x_adv=adv, steps=queries.to(torch.int32))


@register_attack("square_l2")
class SquareL2(Square):
    """Square attack, ℓ2 threat model."""

    norm = "l2"


@register_attack("fab")
class FAB(Attack):
    """FAB minimum-norm attack (Croce & Hein 2019) via torchattacks.FAB's single run (eps is ignored).

    `p` is the norm FAB minimises; untargeted by default, or the minimum over the `n_target_classes` most likely wrong
    classes (FAB-T). Returns, per example, the smallest adversarial found (x where none; x for points already
    misclassified, distance 0) and its `distance` in norm p. Not done: FAB's random restarts (they need a radius)."""

    norm = "none"

    def __init__(self, model, eps, seed, steps: PositiveInt = 100, p: Literal["l2", "linf"] = "l2",
                 n_target_classes: NonNegativeInt = 0):
        super().__init__(model, eps, seed)
        self.steps, self.p, self.n_target_classes = steps, p, n_target_classes

    def run(self, x, y):
        n = len(x)
        log = GradLog(n)
        n_classes = _num_classes(self.model, x)
        targets = min(self.n_target_classes, n_classes - 1)
        best = x.clone()
        best_d = torch.full((n,), float("inf"), device=x.device)
        with torch.no_grad():
            logits0 = self.model(x)
        tol = margin_tolerance(logits0)
        wrong = logits0.argmax(1) != y
        idx = (~wrong).nonzero().flatten()  # FAB attacks only correctly classified points
        if idx.numel() > 0:
            atk = _FAB(self.model, norm=_TA_NORM[self.p], eps=None, steps=self.steps, n_restarts=1, seed=self.seed,
                       multi_targeted=targets > 0, n_classes=max(targets, 1) + 1)
            atk._log = log
            xs, ys = x[idx].clone(), y[idx].clone()
            for target_class in (range(2, targets + 2) if targets > 0 else [None]):
                atk.target_class = target_class
                atk._idx = idx
                if target_class is None:
                    adv = atk.attack_single_run(xs, ys, use_rand_start=False)
                else:
                    adv = atk.attack_single_run_targeted(xs, ys, use_rand_start=False)
                atk._idx = None
                fooled = predict(self.model, adv) != ys
                d = lp(adv - xs, self.p)
                better = fooled & (d < best_d[idx])
                best[idx[better]] = adv[better]
                best_d[idx[better]] = d[better]
        # FAB lands on the boundary: push its points until the margin holds (or report them as not found).
        best, _, best_d = confirm_adversarial(self.model, x, y, best, torch.isfinite(best_d) & ~wrong, tol, self.p)
        best_d[wrong] = 0.0
        return AttackResult(x_adv=best, steps=log.steps(), grad_norm=log.mean(), distance=best_d.cpu())
