"""AutoAttack "standard" (Croce & Hein 2020): APGD-CE → APGD-T (9 targets) → FAB-T (9 targets) → Square, each stage on
the points still robust after the previous ones.

APGD and FAB follow fra31/auto-attack (commit a392200, MIT licence) operation for operation, including its random
draws: torch's RNG is re-seeded with the attack seed at the start of each stage, and every run draws its random start
for exactly the points the reference would run it on, in the same order. Square is torchattacks' (= the reference's)
implementation. What differs is only how the work is scheduled, never which points a run sees:

- **Early stop per example.** Inside one APGD or FAB run a point leaves the batch as soon as it is misclassified
  (within ε, for FAB): its flag is final, and every other point's trajectory is per-example (APGD's step sizes and
  checkpoints, FAB's steps), so it does not change. The reference keeps every point for all n_iter iterations.
- **Batched targets.** FAB-T's first restart has no random start, so its 9 target runs go through the model as one
  batch; a pair (target, point) is dropped once the point is broken by a lower target, which is exactly the set of
  runs the reference would skip. APGD-T's runs do draw random starts, whose layout depends on how many points the
  previous target left; its targets are therefore batched *speculatively*: all remaining targets run together,
  assuming no point breaks, with the RNG draws the reference would make in that case; when a point breaks under
  target t, the runs of targets after t are dropped at once and redone from the RNG state after target t's draw.
- **No repeated forwards.** Clean logits are computed once (APGD-T's and FAB-T's target classes come from them);
  a stage's result is what its runs observed (no re-evaluation afterwards: the engine re-evaluates every returned
  point anyway); FAB's prediction at a new iterate reuses the forward of the next gradient step, except for a pair
  whose previous iterate was adversarial (usually pulled back again: a gradient-free prediction, then one gradient at
  the final iterate); Square's ℓ∞ run does not query candidates equal to their point's best (`_Square`).

`plain=True` runs the same algorithms the straightforward way (no early stop, one target after another, the
reference's re-evaluation after each run and each stage); the tests check that both give identical per-example flags.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchattacks
from pydantic import PositiveInt
from torchattacks.attacks.fab import projection_l2, projection_linf

from advsweep.attacks import Attack, AttackResult, register_attack
from advsweep.attacks._util import GradLog, bview, unchanged
from advsweep.attacks.torchattacks_based import _TA_NORM, _reseed, _Square

# Upper bound on (target, point) pairs in one batched APGD-T / FAB-T run. On a CPU, batches beyond a few dozen
# images fall out of cache and cost more per image (measured on a small ConvNet, 1 thread: 64 pairs ran APGD-T 1.15×
# and FAB-T 1.1× faster than all 9 targets at once); a GPU gains from large batches (not measured: no GPU was lent).
MAX_PAIRS = {"cpu": 64, "cuda": 4096}


def _max_pairs(x: torch.Tensor) -> int:
    return MAX_PAIRS.get(x.device.type, MAX_PAIRS["cpu"])


# ------------------------------------------------------------------------------------------------------------ APGD

def _normalize(t: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        n = t.abs().flatten(1).amax(1)
    else:
        n = (t ** 2).flatten(1).sum(-1).sqrt()
    return t / (bview(n, t) + 1e-12)


def _apgd_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The reference's random start (its draws are CPU float32 draws of x's shape)."""
    t = 2 * torch.rand(x.shape) - 1 if norm == "linf" else torch.randn(x.shape)
    t = t.to(device=x.device, dtype=x.dtype)
    return (x + eps * torch.ones_like(x) * _normalize(t, norm)).clamp(0.0, 1.0)


def _dlr_targeted(logits: torch.Tensor, y: torch.Tensor, y_target: torch.Tensor) -> torch.Tensor:
    srt = logits.sort(dim=1)[0]
    u = torch.arange(len(logits), device=logits.device)
    return -(logits[u, y] - logits[u, y_target]) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


class _APGDRun:
    """One APGD run (reference `attack_single_run`, ℓ∞/ℓ2) on a batch of independent pairs (point, target)."""

    def __init__(self, model, eps: float, norm: str, n_iter: int, rho: float = 0.75):
        self.model, self.eps, self.norm, self.n_iter, self.rho = model, eps, norm, n_iter, rho
        self.n_iter_2 = max(int(0.22 * n_iter), 1)
        self.n_iter_min = max(int(0.06 * n_iter), 1)
        self.size_decr = max(int(0.03 * n_iter), 1)

    def _grad(self, x_adv, y, y_target, log: GradLog, ex: torch.Tensor):
        x_adv = x_adv.detach().requires_grad_()
        with torch.enable_grad():
            logits = self.model(x_adv)
            if y_target is None:
                loss_indiv = F.cross_entropy(logits, y, reduction="none")
            else:
                loss_indiv = _dlr_targeted(logits, y, y_target)
            grad = torch.autograd.grad(loss_indiv.sum(), [x_adv])[0].detach()
        log.query(ex)
        log.add(ex, grad)
        return logits.detach(), loss_indiv.detach(), grad

    def _step(self, x_adv, x_adv_old, x, grad, step_size, a):
        eps = self.eps
        if self.norm == "linf":
            x1 = x_adv + step_size * torch.sign(grad)
            x1 = torch.clamp(torch.min(torch.max(x1, x - eps), x + eps), 0.0, 1.0)
            return torch.clamp(torch.min(torch.max(x_adv + (x1 - x_adv) * a + (x_adv - x_adv_old) * (1 - a),
                                                   x - eps), x + eps), 0.0, 1.0)

        def proj(z):
            d = z - x
            return torch.clamp(x + _normalize(d, "l2") * torch.min(
                eps * torch.ones_like(x), bview((d ** 2).flatten(1).sum(-1).sqrt(), d)), 0.0, 1.0)

        x1 = proj(x_adv + step_size * _normalize(grad, "l2"))
        return proj(x_adv + (x1 - x_adv) * a + (x_adv - x_adv_old) * (1 - a))

    def __call__(self, x, y, x_init, y_target, ex, log: GradLog, early_stop: bool = True,
                 on_fooled: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Run on pairs (x[i], y[i], y_target[i] or CE) from x_init[i]; `ex` maps a pair to its example (for the
        logs). Returns (fooled, adversarial) per pair; a fooled pair's adversarial is the first misclassified iterate
        (the reference's, the last one: either is misclassified, and only the flag matters for the cascade).
        With early_stop, a fooled pair leaves the batch at once, and `on_fooled(ids)` (ids of the pairs just fooled)
        may return further pair ids to drop (runs that have become useless)."""
        P = len(x)
        fooled = torch.zeros(P, dtype=torch.bool, device=x.device)
        adv = x.clone()
        ids = torch.arange(P, device=x.device)  # the pairs still in the batch
        x_adv = x_init.clone()
        logits, loss_indiv, grad = self._grad(x_adv, y, y_target, log, ex)
        pred_ok = logits.argmax(1) == y
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_indiv.clone()
        step_size = 2.0 * self.eps * torch.ones(bview(loss_best, x).shape, dtype=x.dtype, device=x.device)
        x_adv_old = x_adv.clone()
        loss_steps = torch.zeros(self.n_iter, P, dtype=loss_best.dtype, device=x.device)
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones_like(loss_best)
        xs, ys, yts = x, y, y_target
        k, counter3 = self.n_iter_2, 0

        def record(ok):
            """Note the pairs misclassified now; with early_stop, return the keep mask of the current batch."""
            bad = ~ok
            if bad.any():
                hit = ids[bad]
                newly = hit[~fooled[hit]]
                fooled[newly] = True
                adv[hit] = x_adv[bad]
            if not early_stop:
                return None
            drop = bad
            if on_fooled is not None and bad.any():
                extra = on_fooled(ids[bad])
                if extra is not None and extra.numel():
                    drop = drop | torch.isin(ids, extra)
            return ~drop if drop.any() else None

        for i in range(self.n_iter + 1):
            keep = record(pred_ok)
            if keep is not None:
                if not keep.any():
                    break
                ids, xs, ys = ids[keep], xs[keep], ys[keep]
                yts = None if yts is None else yts[keep]
                x_adv, x_adv_old, grad, step_size = x_adv[keep], x_adv_old[keep], grad[keep], step_size[keep]
                x_best, grad_best, loss_best = x_best[keep], grad_best[keep], loss_best[keep]
                loss_steps, loss_best_last, reduced_last = loss_steps[:, keep], loss_best_last[keep], reduced_last[keep]
            if i == self.n_iter:
                break
            with torch.no_grad():
                a = 0.75 if i > 0 else 1.0
                x_new = self._step(x_adv, x_adv_old, xs, grad, step_size, a)
                x_adv_old, x_adv = x_adv, x_new
            logits, loss_indiv, grad = self._grad(x_adv, ys, yts, log, ex[ids])
            pred_ok = logits.argmax(1) == ys
            with torch.no_grad():
                loss_steps[i] = loss_indiv
                better = loss_indiv > loss_best
                x_best[better] = x_adv[better]
                grad_best[better] = grad[better]
                loss_best[better] = loss_indiv[better]
                counter3 += 1
                if counter3 == k:
                    t = torch.zeros_like(loss_best)
                    for c5 in range(k):
                        t += (loss_steps[i - c5] > loss_steps[i - c5 - 1]).to(t.dtype)
                    osc = (t <= k * self.rho * torch.ones_like(t)).to(t.dtype)
                    osc = torch.max(osc, (1.0 - reduced_last) * (loss_best_last >= loss_best).to(t.dtype))
                    reduced_last, loss_best_last = osc.clone(), loss_best.clone()
                    fl = osc > 0
                    if fl.any():
                        step_size[fl] /= 2.0
                        x_adv[fl] = x_best[fl]
                        grad[fl] = grad_best[fl]
                    k = max(k - self.size_decr, self.n_iter_min)
                    counter3 = 0
        return fooled, adv


# ------------------------------------------------------------------------------------------------------------- FAB

class _FABTargetedRun:
    """FAB-T's first restart (reference `attack_single_run(..., is_targeted=True, use_rand_start=False)`, ℓ∞/ℓ2) on
    a batch of pairs (point, target class). A pair is fooled iff an iterate is misclassified within ε."""

    def __init__(self, model, eps: float, norm: str, n_iter: int, alpha_max=0.1, eta=1.05, beta=0.9):
        self.model, self.eps, self.norm, self.n_iter = model, eps, norm, n_iter
        self.alpha_max, self.eta, self.beta = alpha_max, eta, beta

    def _dist(self, d: torch.Tensor) -> torch.Tensor:
        f = d.flatten(1)
        return f.abs().amax(1) if self.norm == "linf" else (f ** 2).sum(-1).sqrt()

    def _forward(self, x1, la, la_t, need_grad: bool, log: GradLog, ex):
        """Logits at x1 and, if asked, the gradient of the targeted logit difference (the reference's df, dg)."""
        log.query(ex)
        if not need_grad:
            with torch.no_grad():
                return self.model(x1), None, None
        im = x1.detach().requires_grad_()
        with torch.enable_grad():
            logits = self.model(im)
            u = torch.arange(len(im), device=im.device)
            diffy = -(logits[u, la] - logits[u, la_t])
            (g,) = torch.autograd.grad(diffy.sum(), [im])
        log.add(ex, g)
        return logits.detach(), diffy.detach(), g.detach()

    def _split_forward(self, x1, la, la_t, pull, log: GradLog, ex):
        """Logits at x1: without a gradient for the `pull` pairs, with one (df, dg; zero elsewhere) for the rest."""
        rest = (~pull).nonzero().flatten()
        sub = pull.nonzero().flatten()
        logits_p, _, _ = self._forward(x1[sub], la[sub], la_t[sub], False, log, ex[sub])
        logits = logits_p.new_empty((len(x1), logits_p.shape[1]))
        logits[sub] = logits_p
        df = torch.zeros(len(x1), dtype=x1.dtype, device=x1.device)
        dg = torch.zeros_like(x1)
        if rest.numel():
            logits[rest], df[rest], dg[rest] = self._forward(x1[rest], la[rest], la_t[rest], True, log, ex[rest])
        return logits, df, dg

    def _step(self, x1, im2, df, dg):
        bs = len(x1)
        w = dg.reshape(bs, -1)
        b = -df + (dg * x1).reshape(bs, -1).sum(dim=-1)
        proj = projection_linf if self.norm == "linf" else projection_l2
        d3 = proj(torch.cat((x1.reshape(bs, -1), im2.reshape(bs, -1)), 0), torch.cat((w, w), 0),
                  torch.cat((b, b), 0))
        d1, d2 = d3[:bs].reshape(x1.shape), d3[-bs:].reshape(x1.shape)
        if self.norm == "linf":
            a0 = d3.abs().max(dim=1, keepdim=True)[0]
        else:
            a0 = (d3 ** 2).sum(dim=1, keepdim=True).sqrt()
        a0 = bview(torch.max(a0.flatten(), 1e-8 * torch.ones(a0.shape[0], dtype=a0.dtype, device=a0.device)), x1)
        a1, a2 = a0[:bs], a0[-bs:]
        alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros_like(a1)), self.alpha_max * torch.ones_like(a1))
        return ((x1 + self.eta * d1) * (1 - alpha) + (im2 + d2 * self.eta) * alpha).clamp(0.0, 1.0)

    def __call__(self, x, y, y_target, ex, log: GradLog, early_stop: bool = True,
                 on_fooled: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Returns (fooled, adversarial) per pair (the smallest adversarial found within ε; x where none)."""
        P = len(x)
        fooled = torch.zeros(P, dtype=torch.bool, device=x.device)
        adv = x.clone()
        res2 = torch.full((P,), 1e10, dtype=x.dtype, device=x.device)  # smallest adversarial norm so far
        ids = torch.arange(P, device=x.device)
        im2, la, la_t, r2 = x, y, y_target, res2
        x1 = x.clone()
        # The gradient at x1 for the first step; later ones come with the prediction forward at the new iterate,
        # except for pairs whose last iterate was adversarial (`pull`): those are likely to be pulled back again,
        # so they get a gradient-free prediction first and their gradient at the final iterate afterwards.
        _, df, dg = self._forward(x1, la, la_t, True, log, ex)
        pull = torch.zeros(P, dtype=torch.bool, device=x.device)
        for it in range(self.n_iter):
            x1 = self._step(x1, im2, df, dg)
            last = it == self.n_iter - 1
            if last or not early_stop or not pull.any():
                logits, df, dg = self._forward(x1, la, la_t, not last and early_stop, log, ex[ids])
                pull = torch.zeros_like(pull)
            else:
                logits, df, dg = self._split_forward(x1, la, la_t, pull, log, ex[ids])
            is_adv = logits.argmax(1) != la
            drop = torch.zeros_like(is_adv)
            if is_adv.any():
                t = self._dist(x1 - im2)
                closer = is_adv & (t < r2)
                r2 = torch.where(closer, t, r2)
                hit = ids[closer]
                adv[hit] = x1[closer]
                res2[hit] = t[closer]
                won = closer & (t <= self.eps)
                if won.any():
                    fooled[ids[won]] = True
                    if early_stop:
                        drop |= won
                        if on_fooled is not None:
                            extra = on_fooled(ids[won])
                            if extra is not None and extra.numel():
                                drop |= torch.isin(ids, extra)
                x1 = torch.where(bview(is_adv, x1), im2 + (x1 - im2) * self.beta, x1)
            if last:
                break
            if drop.any():
                keep = ~drop
                if not keep.any():
                    break
                ids, im2, la, la_t, r2, x1, is_adv, pull = ids[keep], im2[keep], la[keep], la_t[keep], r2[keep], \
                    x1[keep], is_adv[keep], pull[keep]
                if df is not None:
                    df, dg = df[keep], dg[keep]
            if not early_stop:
                _, df, dg = self._forward(x1, la, la_t, True, log, ex[ids])
            elif (is_adv | pull).any():  # the gradient at the final x1 (moved back, or predicted without one)
                sub = (is_adv | pull).nonzero().flatten()
                _, df_s, dg_s = self._forward(x1[sub], la[sub], la_t[sub], True, log, ex[ids[sub]])
                df, dg = df.clone(), dg.clone()
                df[sub], dg[sub] = df_s, dg_s
            pull = is_adv
        if not early_stop:  # a pair counts as fooled only within eps (as the reference checks after the run)
            fooled = res2 <= self.eps
        return fooled, adv


# --------------------------------------------------------------------------------------------------------- cascade

class _Cascade:
    """The four stages on one batch; returns per-example (broken_by stage, x_adv) for the still-robust points."""

    def __init__(self, model, eps, norm, seed, n_iter, n_queries, n_targets, plain: bool):
        self.model, self.eps, self.norm, self.seed = model, eps, norm, seed
        self.n_iter, self.n_queries, self.n_targets, self.plain = n_iter, n_queries, n_targets, plain
        self.apgd = _APGDRun(model, eps, norm, n_iter)
        self.apgd_t_batches = 0  # APGD-T batches run (more than one: a speculative batch was cut short)
        self.fab = _FABTargetedRun(model, eps, norm, n_iter)

    def apgd_ce(self, x, y, idx, log):
        _reseed(self.seed, x)
        xs = x[idx]
        fooled, adv = self.apgd(xs, y[idx], _apgd_start(xs, self.eps, self.norm), None, idx, log,
                                early_stop=not self.plain)
        return fooled, adv

    def apgd_t(self, x, y, idx, ranks, log):
        """9 targets (the 2nd..10th largest clean logit), each on the points the previous targets left robust."""
        _reseed(self.seed, x)
        robust = torch.ones(len(idx), dtype=torch.bool, device=x.device)
        adv = x[idx].clone()
        t = 0
        while t < self.n_targets:
            live = robust.nonzero().flatten()
            if live.numel() == 0:
                break
            n = live.numel()
            K = 1 if self.plain else max(1, min(self.n_targets - t, _max_pairs(x) // n))
            states, inits = [], []
            for _ in range(K):  # the draws the reference makes if no point breaks before target t + K - 1
                inits.append(_apgd_start(x[idx[live]], self.eps, self.norm))
                states.append(torch.get_rng_state())
            pts = live.repeat(K)
            group = torch.arange(K, device=x.device).repeat_interleave(n)
            y_t = ranks[idx[pts], -(t + 2 + group)]
            horizon = [K - 1]
            self.apgd_t_batches += 1

            def on_fooled(pair_ids, group=group, horizon=horizon):
                g = int(group[pair_ids].min())
                if g < horizon[0]:
                    horizon[0] = g
                    return (group > g).nonzero().flatten()
                return None

            fooled, a = self.apgd(x[idx[pts]], y[idx[pts]], torch.cat(inits), y_t, idx[pts], log,
                                  early_stop=not self.plain, on_fooled=None if self.plain else on_fooled)
            if self.plain:  # the reference re-evaluates the run's adversarials
                with torch.no_grad():
                    fooled = fooled & (self.model(a).argmax(1) != y[idx[pts]])
                log.query(idx[pts])
            h = horizon[0]
            hit = fooled & (group == h)
            robust[pts[hit]] = False
            adv[pts[hit]] = a[hit]
            torch.set_rng_state(states[h])
            t += h + 1
        return ~robust, adv

    def fab_t(self, x, y, idx, ranks, log):
        """9 targets in one batch (no random start: counter 0); a pair stops once a lower target broke its point."""
        n = len(idx)
        K = self.n_targets
        group = torch.arange(K, device=x.device).repeat_interleave(n)
        pts = torch.arange(n, device=x.device).repeat(K)
        y_t = ranks[idx[pts], -(2 + group)]
        broken = torch.zeros(n, dtype=torch.bool, device=x.device)
        adv = x[idx].clone()
        if self.plain:
            for g in range(K):
                live = (~broken).nonzero().flatten()
                if live.numel() == 0:
                    break
                sel = live + g * n
                fooled, a = self.fab(x[idx[live]], y[idx[live]], y_t[sel], idx[live], log, early_stop=False)
                with torch.no_grad():
                    fooled = fooled & (self.model(a).argmax(1) != y[idx[live]])
                log.query(idx[live])
                broken[live[fooled]] = True
                adv[live[fooled]] = a[fooled]
            return broken, adv
        best = torch.full((n,), K, dtype=torch.int64, device=x.device)  # lowest target that broke each point

        def on_fooled(pair_ids):
            for p, g in zip(pts[pair_ids].tolist(), group[pair_ids].tolist()):
                best[p] = min(int(best[p]), g)
            return (group > best[pts]).nonzero().flatten()

        step = max(_max_pairs(x), n)
        for lo in range(0, K * n, step):
            sel = torch.arange(lo, min(lo + step, K * n), device=x.device)
            sel = sel[group[sel] < best[pts[sel]]]
            if sel.numel() == 0:
                continue
            fooled, a = self.fab(x[idx[pts[sel]]], y[idx[pts[sel]]], y_t[sel], idx[pts[sel]], log,
                                 on_fooled=lambda ids, sel=sel: _sub(on_fooled(sel[ids]), sel))
            for j in fooled.nonzero().flatten().tolist():
                p, g = int(pts[sel[j]]), int(group[sel[j]])
                if g == best[p]:
                    broken[p] = True
                    adv[p] = a[j]
        return broken, adv

    def square(self, x, y, idx, log):
        atk = _Square(self.model, norm=_TA_NORM[self.norm], eps=self.eps, n_queries=self.n_queries, n_restarts=1,
                      p_init=0.8, loss="margin", resc_schedule=False, seed=self.seed)
        acc, a, q = atk.perturb_counted(x[idx].clone(), y[idx].clone())  # acc: its re-evaluation after the run
        log.queries[idx.cpu()] += q
        return ~acc, a


def _sub(global_ids: torch.Tensor | None, sel: torch.Tensor) -> torch.Tensor | None:
    """Positions within `sel` of the global pair ids."""
    if global_ids is None:
        return None
    return torch.isin(sel, global_ids).nonzero().flatten()


@register_attack("autoattack")
class AutoAttack(Attack):
    """AutoAttack "standard" (Croce & Hein 2020; fra31/auto-attack `version='standard'`): APGD-CE (n_iter, 1
    restart) → APGD-T (DLR-targeted, 9 target classes × n_iter, 1 restart) → FAB-T (9 target classes × n_iter, 1
    restart, alpha_max 0.1, eta 1.05, beta 0.9) → Square (n_queries, p_init 0.8, 1 restart, resc_schedule=False).
    Each stage runs only on the points still robust after the previous ones; a point's x_adv is the first stage's
    adversarial that breaks it. Same random draws and per-example flags as the reference, scheduled faster (module
    docstring). The defaults n_iter=100, n_queries=5000 are the standard ones; overriding them (for CPU-scale runs)
    is recorded: `settings["standard"]` is False then.

    Result: `steps` = forward passes per example (all stages); `info` = {"settings", "broken_by" (stage index per
    example, -1 = robust or not attacked, clean-misclassified points are -2), "stages", "grad_evals", "queries"}.
    """

    STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
    STANDARD = {"n_iter": 100, "n_queries": 5000, "n_target_classes": 9}
    plain = False  # the straightforward schedule (tests)

    def __init__(self, model, eps, seed, n_iter: PositiveInt = 100, n_queries: PositiveInt = 5000):
        super().__init__(model, eps, seed)
        self.n_iter, self.n_queries = n_iter, n_queries
        self.settings = self._settings(n_target_classes=self.STANDARD["n_target_classes"])

    def _settings(self, n_target_classes: int) -> dict[str, Any]:
        s = {
            "version": "standard",
            "norm": self.norm,
            "eps": self.eps,
            "seed": self.seed,
            "stages": list(self.STAGES),
            "apgd_ce": {"n_iter": self.n_iter, "n_restarts": 1, "loss": "ce", "rho": 0.75, "eot_iter": 1},
            "apgd_t": {"n_iter": self.n_iter, "n_restarts": 1, "n_target_classes": n_target_classes,
                       "loss": "dlr-targeted", "rho": 0.75, "eot_iter": 1},
            "fab_t": {"n_iter": self.n_iter, "n_restarts": 1, "n_target_classes": n_target_classes,
                      "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
            "square": {"n_queries": self.n_queries, "n_restarts": 1, "p_init": 0.8, "loss": "margin",
                       "resc_schedule": False},
            "implementation": ("advsweep APGD/FAB after fra31/auto-attack a392200 (early stop per example, batched "
                               f"targets), Square from torchattacks {torchattacks.__version__}"),
        }
        s["standard"] = (self.n_iter == self.STANDARD["n_iter"] and self.n_queries == self.STANDARD["n_queries"]
                         and n_target_classes == self.STANDARD["n_target_classes"])
        return s

    def run(self, x, y):
        n = len(x)
        if self.eps == 0:
            res = unchanged(x)
            res.info = {"settings": self.settings}
            return res
        with torch.no_grad():
            clean = self.model(x)
        n_classes = clean.shape[1]
        if n_classes < 4:
            raise ValueError(f"autoattack needs at least 4 classes (APGD-T's targeted DLR loss), got {n_classes}")
        n_targets = min(self.STANDARD["n_target_classes"], n_classes - 1)
        self.settings = self._settings(n_targets)
        log = GradLog(n)
        log.query(None)
        ranks = clean.sort(dim=1)[1]
        robust = clean.argmax(1) == y
        x_adv = x.clone()
        broken_by = torch.full((n,), -1, dtype=torch.int64)
        broken_by[~robust.cpu()] = -2
        cascade = _Cascade(self.model, self.eps, self.norm, self.seed, self.n_iter, self.n_queries, n_targets,
                           self.plain)
        for stage, name in enumerate(self.STAGES):
            idx = robust.nonzero().flatten()
            if idx.numel() == 0:
                break
            if name == "apgd-ce":
                fooled, adv = cascade.apgd_ce(x, y, idx, log)
            elif name == "apgd-t":
                fooled, adv = cascade.apgd_t(x, y, idx, ranks, log)
            elif name == "fab-t":
                fooled, adv = cascade.fab_t(x, y, idx, ranks, log)
            else:
                fooled, adv = cascade.square(x, y, idx, log)
            if self.plain and name != "square":  # the reference's re-evaluation after each stage
                with torch.no_grad():
                    fooled = fooled & (self.model(adv).argmax(1) != y[idx])
                log.query(idx)
            hit = idx[fooled]
            x_adv[hit] = adv[fooled]
            robust[hit] = False
            broken_by[hit.cpu()] = stage
        info = {"settings": self.settings, "broken_by": broken_by, "stages": list(self.STAGES),
                "grad_evals": log.steps(), "queries": log.queries.to(torch.int32)}
        return AttackResult(x_adv=x_adv, steps=log.queries.to(torch.int32), grad_norm=log.mean(), info=info)


@register_attack("autoattack_l2")
class AutoAttackL2(AutoAttack):
    """AutoAttack standard for the ℓ2 threat model (same stages and settings)."""

    norm = "l2"


class PlainAutoAttack(AutoAttack):
    """The same cascade without early stop or batched targets, re-evaluating after every run (tests, benchmark)."""

    plain = True


class PlainAutoAttackL2(PlainAutoAttack):
    norm = "l2"
