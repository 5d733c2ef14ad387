"""White-box gradient attacks written here (not torchattacks) so that restarts, the CW-margin loss, best-iterate
tracking and per-step gradient-norm logging are exact: FGSM, PGD-ℓ∞, PGD-ℓ2, MI-FGSM, DI²-FGSM and CW-ℓ2.

Compatibility: `pgd`/`pgd_l2` with restarts=1, loss="ce", random_start=True and keep_best=False perform exactly the
operations of torchattacks.PGD / PGDL2 (same random draws in the same order), so under the same seed they return the
same iterate (bit for bit when the batch size is a power of two, because torchattacks takes the gradient of the
batch-mean loss and we of the per-example sum). `difgsm` draws its input-diversity transform like
torchattacks.DIFGSM, and `mifgsm`/`difgsm` differ from torchattacks only where its gradient normalisation divides
by zero (torchattacks then returns NaN images; we leave such an example where it is).

Step sizes: `alpha` defaults to 2.5·eps/steps for every iterative attack (Madry's heuristic; it equals the
torchattacks defaults 2/255 at eps=8/255 and 10 steps).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt

from advsweep.attacks import Attack, AttackResult, Segment, example_generator, register_attack
from advsweep.attacks._util import (
    GradLog,
    Probability,
    ResizeRate,
    bview,
    confirm_adversarial,
    l1,
    l2,
    loss_per_example,
    margin_tolerance,
    margin,
    per_example,
    predict,
    project_l2,
    project_linf,
    unchanged,
)

Loss = Literal["ce", "cw"]


def _grad(model, x_adv: torch.Tensor, y: torch.Tensor, loss: str, transform=None):
    """Per-example loss and its input gradient (the per-example losses are summed, so each row is exact)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(transform(x_adv) if transform is not None else x_adv)
        losses = loss_per_example(logits, y, loss)
        (g,) = torch.autograd.grad(losses.sum(), x_adv)
    return logits.detach(), losses.detach(), g.detach()


class _Segments:
    """Per-example ε, step size and random streams of an ε-batched pass (see advsweep.attacks)."""

    def __init__(self, segments: list[Segment], x: torch.Tensor, alpha_for=None):
        if any(s.eps == 0 for s in segments) and any(s.eps != 0 for s in segments):
            raise ValueError("an ε-batched pass cannot mix ε = 0 (x returned unchanged) with other ε")
        self.members = [(s, s.offset + i) for s in segments for i in range(s.size)]
        self.eps = torch.tensor([s.eps for s, _ in self.members], dtype=x.dtype, device=x.device)
        self.alpha = (torch.tensor([alpha_for(s.eps) for s, _ in self.members], dtype=x.dtype, device=x.device)
                      if alpha_for else None)

    def generators(self, idx: torch.Tensor, restart: int) -> list[tuple[torch.Generator, float]]:
        """(generator, ε) of each example in `idx` for one restart: the same draws whatever shares the pass."""
        return [(example_generator(s.seed, restart, pos), s.eps) for s, pos in (self.members[j] for j in idx.tolist())]


def _fgsm(model, x, y, eps, loss):
    _, _, g = _grad(model, x, y, loss)
    x_adv = torch.clamp(x + per_example(eps, g) * g.sign(), min=0, max=1)
    return AttackResult(x_adv=x_adv, steps=torch.ones(len(x), dtype=torch.int32), grad_norm=l1(g).float().cpu())


@register_attack("fgsm")
class FGSM(Attack):
    """FGSM (Goodfellow et al.): one signed-gradient step of size eps."""

    batches_eps = True

    def __init__(self, model, eps, seed, loss: Loss = "ce"):
        super().__init__(model, eps, seed)
        self.loss = loss

    def run(self, x, y):
        if self.eps == 0:
            return unchanged(x)
        return _fgsm(self.model, x, y, self.eps, self.loss)

    def run_segments(self, x, y, segments):
        plan = _Segments(segments, x)
        if not plan.eps.any():
            return unchanged(x)
        return _fgsm(self.model, x, y, plan.eps, self.loss)


@register_attack("pgd")
class PGD(Attack):
    """PGD-ℓ∞ (Madry et al.) with restarts.

    Each restart runs `steps` steps from a uniform random point in the ε-ball (or from x when random_start=False).
    keep_best=True returns, per example, the last iterate if it is misclassified, else the first misclassified
    iterate seen (torchattacks returns only the last iterate, which can step back out of the adversarial region);
    keep_best=False returns the last iterate, as torchattacks does. Restart r > 1 runs only on examples that no
    earlier restart broke; among unbroken restarts the one with the highest final loss is kept.
    """

    batches_eps = True

    def __init__(self, model, eps, seed, steps: PositiveInt = 20, alpha: PositiveFloat | None = None,
                 restarts: PositiveInt = 1, random_start: bool = True, loss: Loss = "ce", keep_best: bool = True):
        super().__init__(model, eps, seed)
        self.steps, self.restarts, self.random_start, self.loss, self.keep_best = (
            steps, restarts, random_start, loss, keep_best)
        self.alpha_option = alpha
        self.alpha = self.alpha_for(self.eps)

    def alpha_for(self, eps: float) -> float:
        return self.alpha_option if self.alpha_option is not None else 2.5 * eps / self.steps

    def _noise(self, x, eps, gens):
        """The random start's offset: from torch's RNG (gens None) or one generator per example."""
        if gens is None:
            return torch.empty_like(x).uniform_(-eps, eps)
        return torch.stack([torch.empty(x.shape[1:], dtype=x.dtype).uniform_(-e, e, generator=g)
                            for g, e in gens]).to(x.device)

    def _start(self, x, eps, gens):
        return torch.clamp(x + self._noise(x, eps, gens), min=0, max=1)

    def _step(self, x_adv, x, g, eps, alpha):
        return project_linf(x_adv + per_example(alpha, g) * g.sign(), x, eps)

    def _single_run(self, x, y, log: GradLog, idx: torch.Tensor, eps, alpha, gens):
        x_adv = self._start(x, eps, gens) if self.random_start else x.clone()
        best = x_adv.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            logits, _, g = _grad(self.model, x_adv, y, self.loss)
            log.add(idx, g)
            if self.keep_best:
                succ = logits.argmax(1) != y
                new = succ & ~found
                best[new] = x_adv[new]
                found |= succ
            x_adv = self._step(x_adv, x, g, eps, alpha).detach()
        with torch.no_grad():
            logits = self.model(x_adv)
        succ = logits.argmax(1) != y
        final_loss = loss_per_example(logits, y, self.loss)
        if self.keep_best:
            x_adv = torch.where(bview(succ | ~found, x_adv), x_adv, best)
            succ = succ | found
        return x_adv, succ, final_loss

    def run(self, x, y):
        if self.eps == 0:
            return unchanged(x)
        return self._restarts(x, y, lambda idx, r: (self.eps, self.alpha, None))

    def run_segments(self, x, y, segments):
        plan = _Segments(segments, x, self.alpha_for)
        if not plan.eps.any():
            return unchanged(x)
        return self._restarts(x, y, lambda idx, r: (plan.eps[idx], plan.alpha[idx], plan.generators(idx, r)))

    def _restarts(self, x, y, settings):
        """`settings(idx, restart)` → (ε, step size, random streams) of the examples `idx` in that restart."""
        n = len(x)
        log = GradLog(n)
        x_adv = x.clone()
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_loss = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        for restart in range(self.restarts):
            idx = (~fooled).nonzero().flatten()
            if len(idx) == 0:
                break
            xa, succ, loss = self._single_run(x[idx], y[idx], log, idx, *settings(idx, restart))
            take = succ | (loss > best_loss[idx])
            x_adv[idx[take]] = xa[take]
            best_loss[idx[take]] = loss[take]
            fooled[idx[succ]] = True
        return AttackResult(x_adv=x_adv, steps=log.steps(), grad_norm=log.mean())


@register_attack("pgd_l2")
class PGDL2(PGD):
    """PGD-ℓ2: normalised-gradient steps, projection on the ℓ2 ball; random start as torchattacks.PGDL2 (a uniform
    radius in a Gaussian direction). Same options and restart/keep_best semantics as `pgd`."""

    norm = "l2"

    def _start(self, x, eps, gens):
        if gens is None:
            delta = torch.empty_like(x).normal_()
            r = torch.zeros(len(x), dtype=x.dtype, device=x.device).uniform_(0, 1)
        else:  # per example: its direction, then its radius, from its own generator
            draws = [(torch.empty(x.shape[1:], dtype=x.dtype).normal_(generator=g),
                      torch.empty((), dtype=x.dtype).uniform_(0, 1, generator=g)) for g, _ in gens]
            delta = torch.stack([d for d, _ in draws]).to(x.device)
            r = torch.stack([r for _, r in draws]).to(x.device)
        n = l2(delta)
        delta *= bview(r / n * per_example(eps, n), delta)
        return torch.clamp(x + delta, min=0, max=1)

    def _step(self, x_adv, x, g, eps, alpha):
        g = g / bview(l2(g) + 1e-10, g)
        return project_l2(x_adv + per_example(alpha, g) * g, x, eps)


class _MomentumFGSM(Attack):
    """Shared loop of MI-FGSM and DI²-FGSM: g ← ∇/mean|∇| + decay·g, sign step, ℓ∞ projection."""

    def __init__(self, model, eps, seed, steps, alpha, decay, loss):
        super().__init__(model, eps, seed)
        self.steps, self.decay, self.loss = steps, decay, loss
        self.alpha = alpha if alpha is not None else 2.5 * self.eps / steps

    def _transform(self, x):
        """The input transform the gradient is taken through (None: the identity)."""
        return None

    def _start(self, x):
        return x.clone()

    def run(self, x, y):
        if self.eps == 0:
            return unchanged(x)
        log = GradLog(len(x))
        x_adv = self._start(x)
        momentum = torch.zeros_like(x)
        transform = self._transform(x)
        for _ in range(self.steps):
            _, _, g = _grad(self.model, x_adv, y, self.loss, transform)
            log.add(None, g)
            scale = bview(g.abs().flatten(1).mean(1), g)
            g = torch.where(scale > 0, g / scale.clamp_min(1e-30), torch.zeros_like(g))  # torchattacks: NaN here
            g = g + momentum * self.decay
            momentum = g
            x_adv = project_linf(x_adv + self.alpha * g.sign(), x, self.eps).detach()
        return AttackResult(x_adv=x_adv, steps=log.steps(), grad_norm=log.mean())


@register_attack("mifgsm")
class MIFGSM(_MomentumFGSM):
    """MI-FGSM (Dong et al. 2018), decay 1.0 by default."""

    def __init__(self, model, eps, seed, steps: PositiveInt = 10, alpha: PositiveFloat | None = None,
                 decay: NonNegativeFloat = 1.0, loss: Loss = "ce"):
        super().__init__(model, eps, seed, steps, alpha, decay, loss)


@register_attack("difgsm")
class DIFGSM(_MomentumFGSM):
    """DI²-FGSM (Xie et al. 2019): each step's gradient is taken through a random resize-and-pad of the input,
    applied with probability `diversity_prob` per batch (as torchattacks 3.5.1). resize_rate < 1 shrinks to a random
    side in [rate·H, H) and zero-pads back to H; > 1 resizes into [H, rate·H) and pads to rate·H. Defaults pinned to
    diversity_prob 0.5 and resize_rate 0.9 (torchattacks 3.5.1; its first release used 0.7 and 1.1). decay=1 gives
    M-DI²-FGSM."""

    def __init__(self, model, eps, seed, steps: PositiveInt = 10, alpha: PositiveFloat | None = None,
                 decay: NonNegativeFloat = 0.0, resize_rate: ResizeRate = 0.9, diversity_prob: Probability = 0.5,
                 random_start: bool = False, loss: Loss = "ce"):
        super().__init__(model, eps, seed, steps, alpha, decay, loss)
        self.resize_rate, self.diversity_prob, self.random_start = resize_rate, diversity_prob, random_start

    def _start(self, x):
        if not self.random_start:
            return x.clone()
        return torch.clamp(x + torch.empty_like(x).uniform_(-self.eps, self.eps), min=0, max=1)

    def _transform(self, x):
        lo, hi = x.shape[-1], int(x.shape[-1] * self.resize_rate)
        if self.resize_rate < 1:
            lo, hi = hi, lo
        if hi <= lo:  # the image is too small for this rate to change its size: nothing to diversify
            return None

        def diversify(t):
            rnd = torch.randint(low=lo, high=hi, size=(1,), dtype=torch.int32)
            rescaled = F.interpolate(t, size=[int(rnd), int(rnd)], mode="bilinear", align_corners=False)
            rem = hi - int(rnd)
            pad_top = int(torch.randint(low=0, high=rem, size=(1,), dtype=torch.int32))
            pad_left = int(torch.randint(low=0, high=rem, size=(1,), dtype=torch.int32))
            padded = F.pad(rescaled, [pad_left, rem - pad_left, pad_top, rem - pad_top], value=0)
            return padded if torch.rand(1) < self.diversity_prob else t

        return diversify


@register_attack("cw_l2")
class CWL2(Attack):
    """Carlini-Wagner ℓ2 (own code, following the reference attack rather than torchattacks.CW, whose pitfalls —
    margin wrong for negative logits, atanh(±1) = ±inf for saturated pixels, no search over c, early stopping on the
    whole batch's cost — are avoided here).

    Minimises ‖δ‖² + c·max(z_y − max_{j≠y} z_j, −κ) in tanh space with Adam, the inputs scaled by 0.999999 before
    atanh as in the reference (finite, but saturated pixels still move slowly in tanh space, as there), for
    `binary_search_steps` rounds of a per-example search over c (×10 until a round succeeds, then bisection); a round
    stops early once no example's objective improved by 0.01 % over a tenth of its steps. Defaults are CPU-scale:
    100 steps at lr 0.05 per round (the reference uses lr 0.01 with up to 10,000 steps and 9 rounds). The smallest
    adversarial found is then renormed onto the ε-ball (as the SONet evaluation does); `distance` records its ℓ2
    norm before that (inf where none was found; x is returned for those)."""

    norm = "l2"

    def __init__(self, model, eps, seed, steps: PositiveInt = 100, lr: PositiveFloat = 0.05, c: PositiveFloat = 1.0,
                 kappa: NonNegativeFloat = 0.0, binary_search_steps: PositiveInt = 5, abort_early: bool = True):
        super().__init__(model, eps, seed)
        self.steps, self.lr, self.c, self.kappa = steps, lr, c, kappa
        self.binary_search_steps, self.abort_early = binary_search_steps, abort_early

    def run(self, x, y):
        if self.eps == 0:
            return unchanged(x, distance=True)
        n, dev = len(x), x.device
        log = GradLog(n)  # ‖∇ₓ margin‖₁ at the steps where the model term is active
        steps = torch.zeros(n, dtype=torch.int32)
        w0 = torch.atanh((x * 2 - 1) * 0.999999)
        c = torch.full((n,), self.c, device=dev)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), float("inf"), device=dev)
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best_adv = x.clone()
        check_every = max(self.steps // 10, 1)
        for _ in range(self.binary_search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = torch.full((n,), float("inf"), device=dev)
            for it in range(self.steps):
                xa = ((torch.tanh(w) + 1) / 2).detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = self.model(xa)
                    m = margin(logits, y)  # > 0 ⇔ misclassified
                    f = torch.clamp(-m, min=-self.kappa)
                    dist = ((xa - x) ** 2).flatten(1).sum(1)
                    cost = dist + c * f
                    (g_x,) = torch.autograd.grad(cost.sum(), xa)
                steps += 1
                active = (f > -self.kappa).detach()  # where the model term still has a gradient
                if active.any():
                    g_model = (g_x - 2 * (xa - x)).detach() / bview(c, g_x)
                    log.add(active.nonzero().flatten(), g_model[active])
                with torch.no_grad():
                    succ = (m > 0) & (m >= self.kappa)
                    better = succ & (dist < best_l2)
                    best_l2 = torch.where(better, dist, best_l2)
                    best_adv[better] = xa[better]
                    succeeded |= succ
                opt.zero_grad()
                w.grad = g_x * (1 - torch.tanh(w.detach()) ** 2) / 2
                opt.step()
                if self.abort_early and (it + 1) % check_every == 0:
                    now = cost.detach()
                    if bool((now > prev * 0.9999).all()):
                        break
                    prev = now
            # per-example search over c (reference CW): bisect once a round succeeded, else ×10
            upper = torch.where(succeeded, torch.min(upper, c), upper)
            lower = torch.where(succeeded, lower, torch.max(lower, c))
            c = torch.where(torch.isfinite(upper), (lower + upper) / 2, c * 10)
        with torch.no_grad():
            tol = margin_tolerance(self.model(x))
        best_adv, found, distance = confirm_adversarial(self.model, x, y, best_adv, torch.isfinite(best_l2), tol, "l2")
        delta = best_adv - x
        factor = torch.clamp(self.eps / distance.clamp_min(1e-12), max=1.0)
        x_adv = torch.clamp(x + delta * bview(factor, delta), 0, 1)
        x_adv = torch.where(bview(found, x), x_adv, x)
        clean_wrong = predict(self.model, x) != y  # already adversarial: distance 0, x itself
        distance = torch.where(clean_wrong, torch.zeros_like(distance), distance)
        x_adv = torch.where(bview(clean_wrong, x), x, x_adv)
        return AttackResult(x_adv=x_adv, steps=steps, grad_norm=log.mean(), distance=distance.cpu())
