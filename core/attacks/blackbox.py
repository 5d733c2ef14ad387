"""Black-box attacks written here: SPSA (score-based) and the Boundary attack (decision-based).

`steps` is the number of model queries (forward passes) spent per example; only still-unbroken examples are queried.
"""
from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, PositiveFloat, PositiveInt

from advsweep.attacks import Attack, AttackResult, register_attack
from advsweep.attacks._util import bview, confirm_adversarial, l2, margin, margin_tolerance, predict, project_linf, unchanged

# Inputs per forward pass when SPSA evaluates its perturbed copies (memory, not semantics: the directions are drawn
# in the same order whatever the chunk). 8192 held ~7 GB per worker on a 28×28 ODE block under dopri5.
_SPSA_CHUNK = 2048


@register_attack("spsa")
class SPSA(Attack):
    """SPSA (Uesato et al. 2018) as in cleverhans' SPSAAdam, untargeted, ℓ∞.

    Each iteration estimates the gradient of the margin z_y − max_{j≠y} z_j with `samples` antithetic Rademacher
    directions v (2·samples queries: (L(x+δv) − L(x−δv)) / 2δ · v, averaged), takes an Adam step (lr, β=(0.9, 0.999))
    on the perturbation, projects onto the ε-ball ∩ [0,1] and checks the new point (1 query). An example stops as
    soon as it is misclassified and keeps that point (cleverhans' early stop at loss < 0); others keep the last
    iterate. Directions are drawn independently per example (torchattacks shares them across the batch).

    Written here rather than using torchattacks.SPSA, which defaults to a single iteration, has no early stop or
    per-example query count, and ignores the targeted mode it claims (evaluation.md §4f item 18).
    """

    uses_gradients = False

    def __init__(self, model, eps, seed, iterations: PositiveInt = 100, samples: PositiveInt = 128,
                 lr: PositiveFloat = 0.01, delta: PositiveFloat = 0.01, random_start: bool = False):
        super().__init__(model, eps, seed)
        self.iterations, self.samples, self.lr, self.delta, self.random_start = (
            iterations, samples, lr, delta, random_start)

    @torch.no_grad()
    def _grad(self, x, y):
        n, shape = len(x), x.shape[1:]
        grad = torch.zeros_like(x)
        per_chunk = max(1, _SPSA_CHUNK // (2 * n))
        done = 0
        while done < self.samples:
            k = min(per_chunk, self.samples - done)
            v = torch.empty((k, n, *shape), device=x.device).bernoulli_(0.5).mul_(2).sub_(1)
            pts = torch.cat([x[None] + self.delta * v, x[None] - self.delta * v])  # probes unclipped, as cleverhans
            logits = self.model(pts.reshape(-1, *shape))
            losses = -margin(logits, y.repeat(2 * k)).view(2, k, n)  # z_y − max_{j≠y} z_j, minimised
            df = (losses[0] - losses[1]) / (2 * self.delta)
            grad += (df.view(k, n, *([1] * len(shape))) * v).sum(0)
            done += k
        return grad / self.samples

    @torch.no_grad()
    def run(self, x, y):
        n = len(x)
        if self.eps == 0:
            return unchanged(x, gradients=False)
        queries = torch.zeros(n, dtype=torch.int64)
        x_adv = x.clone()
        if self.random_start:
            x_adv = project_linf(x + torch.empty_like(x).uniform_(-self.eps, self.eps), x, self.eps)
        fooled = predict(self.model, x_adv) != y
        queries += 1
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        for t in range(1, self.iterations + 1):
            idx = (~fooled).nonzero().flatten()
            if idx.numel() == 0:
                break
            xa, xs, ys = x_adv[idx], x[idx], y[idx]
            g = self._grad(xa, ys)
            m[idx] = b1 * m[idx] + (1 - b1) * g
            v[idx] = b2 * v[idx] + (1 - b2) * g * g
            step = self.lr * (m[idx] / (1 - b1 ** t)) / ((v[idx] / (1 - b2 ** t)).sqrt() + adam_eps)
            xa = project_linf(xa - step, xs, self.eps)
            x_adv[idx] = xa
            fooled[idx] = predict(self.model, xa) != ys
            queries[idx.cpu()] += 2 * self.samples + 1
        return AttackResult(x_adv=x_adv, steps=queries.to(torch.int32))


class _Window:
    """Per-example ring buffers of the last `maxlen` success flags (NaN = empty), as foolbox's ArrayQueue but with a
    write position per example, since only the active examples append."""

    def __init__(self, maxlen: int, n: int, device):
        self.data = torch.full((maxlen, n), float("nan"), device=device)
        self.pos = torch.zeros(n, dtype=torch.long, device=device)
        self.maxlen = maxlen

    def append(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        self.data[self.pos[idx], idx] = values.float()
        self.pos[idx] = (self.pos[idx] + 1) % self.maxlen

    def full(self, idx: torch.Tensor) -> torch.Tensor:
        return ~torch.isnan(self.data[:, idx]).any(0)

    def mean(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.nanmean(self.data[:, idx], dim=0)

    def clear(self, idx: torch.Tensor) -> None:
        self.data[:, idx] = float("nan")


@register_attack("boundary")
class Boundary(Attack):
    """Boundary attack (Brendel, Rauber & Bethge 2018), decision-based, following foolbox 3's BoundaryAttack.

    Initialisation as foolbox's LinearSearchBlendedUniformNoiseAttack: up to `init_directions` uniform-noise images
    until one is misclassified, then the smallest blend (1−ε)x + ε·noise on a grid of `init_steps`+1 values that is
    misclassified. Where no noise image is misclassified (uniform noise can fall into a single class, the input's
    own), `init_from_batch=True` blends towards the nearest input of the same batch that the model assigns to another
    class instead (foolbox would raise; this makes such examples depend on the batch). Then, per step: an orthogonal (spherical) step of relative size `spherical_step` on the sphere
    around x through the current adversarial, followed by a step of relative size `source_step` towards x; the
    candidate replaces the adversarial if misclassified and closer. Every `update_stats_every_k` steps the spherical
    candidate is queried too, and the step sizes adapt from the success rates of the last 100 spherical / 30 full
    candidates (foolbox 3's thresholds 0.5/0.2 and 0.25/0.1, factor `step_adaptation`). An example stops when its
    source step falls below `source_step_convergence`. Differences from foolbox 3: Gaussian directions are drawn
    per example (foolbox shares one across the batch), and converged/failed examples are no longer queried.

    A minimisation attack under the ℓ2 threat model: `distance` is the ℓ2 norm of the adversarial found (0 for a
    misclassified input, inf where initialisation failed); x_adv is that adversarial only if its distance ≤ eps, else
    x (the example then counts as robust at this eps). `early_stop=True` stops refining an example once its distance
    is ≤ eps (then `distance` is only an upper bound). `steps` = queries per example. Defaults are foolbox 3's
    (25,000 steps is the reference budget; lower it for CPU-scale runs).
    """

    norm = "l2"
    uses_gradients = False

    def __init__(self, model, eps, seed, steps: PositiveInt = 25000, spherical_step: PositiveFloat = 1e-2,
                 source_step: PositiveFloat = 1e-2, source_step_convergence: PositiveFloat = 1e-7,
                 step_adaptation: Annotated[float, Field(gt=1.0)] = 1.5, update_stats_every_k: PositiveInt = 10,
                 init_directions: PositiveInt = 1000, init_steps: PositiveInt = 50, init_from_batch: bool = True,
                 early_stop: bool = False):
        super().__init__(model, eps, seed)
        self.steps, self.spherical_step, self.source_step = steps, spherical_step, source_step
        self.source_step_convergence, self.step_adaptation = source_step_convergence, step_adaptation
        self.update_stats_every_k, self.init_directions, self.init_steps = (
            update_stats_every_k, init_directions, init_steps)
        self.init_from_batch, self.early_stop = init_from_batch, early_stop

    def _is_adv(self, z, y):
        return predict(self.model, z) != y

    def _init(self, x, y, preds, idx, queries):
        """LinearSearchBlendedUniformNoise for the examples `idx`: returns (starting points, found mask)."""
        xs, ys = x[idx], y[idx]
        k = len(idx)
        noise = torch.empty_like(xs)
        has = torch.zeros(k, dtype=torch.bool, device=x.device)
        for _ in range(self.init_directions):
            todo = (~has).nonzero().flatten()
            if todo.numel() == 0:
                break
            r = torch.empty_like(xs[todo]).uniform_(0, 1)
            ok = self._is_adv(r, ys[todo])
            queries[idx[todo].cpu()] += 1
            noise[todo[ok]] = r[ok]
            has[todo[ok]] = True
        if self.init_from_batch and not has.all():
            # Uniform noise can land in one class for every draw (then foolbox's init fails): blend instead towards
            # the nearest input of the batch that the model assigns to another class (already queried).
            todo = (~has).nonzero().flatten()
            dists = torch.cdist(xs[todo].flatten(1), x.flatten(1))
            dists[preds[None, :] == ys[todo, None]] = float("inf")
            nearest = dists.argmin(1)
            ok = torch.isfinite(dists.gather(1, nearest[:, None]).squeeze(1))
            noise[todo[ok]] = x[nearest[ok]]
            has[todo[ok]] = True
        best = torch.ones(k, device=x.device)
        blends = torch.linspace(0, 1, self.init_steps + 1)
        unresolved = has.clone()
        for e in blends.tolist():
            todo = unresolved.nonzero().flatten()
            if todo.numel() == 0:
                break
            z = (1 - e) * xs[todo] + e * noise[todo]
            ok = self._is_adv(z, ys[todo])
            queries[idx[todo].cpu()] += 1
            best[todo[ok]] = e
            unresolved[todo[ok]] = False
        b = bview(best, xs)
        start = (1 - b) * xs + b * noise
        # the blend at `best` is the point found adversarial, but recompute-and-check it (1 query)
        ok = torch.zeros(k, dtype=torch.bool, device=x.device)
        if has.any():
            hi = has.nonzero().flatten()
            ok[hi] = self._is_adv(start[hi], ys[hi])
            queries[idx[hi].cpu()] += 1
        return start, ok

    def _proposals(self, x, adv, spherical_steps, source_steps):
        n = len(x)
        xf, af = x.flatten(1), adv.flatten(1)
        unnormalised = xf - af
        source_norms = unnormalised.norm(dim=1)
        source_dirs = unnormalised / source_norms[:, None]
        eta = torch.randn_like(xf)
        eta = eta - (eta * source_dirs).sum(1, keepdim=True) * source_dirs  # orthogonal to the source direction
        eta = eta * (spherical_steps * source_norms / eta.norm(dim=1))[:, None]
        distances = (spherical_steps ** 2 + 1).sqrt()[:, None]
        spherical = (xf + (eta - unnormalised) / distances).clamp(0, 1)  # on the sphere, by Pythagoras
        new_dirs = xf - spherical
        new_norms = new_dirs.norm(dim=1)
        lengths = source_steps * source_norms + new_norms - source_norms  # corrected for leaving the sphere
        lengths = lengths.clamp_min(0) / new_norms
        candidates = (spherical + lengths[:, None] * new_dirs).clamp(0, 1)
        shape = (n, *x.shape[1:])
        return candidates.view(shape), spherical.view(shape), source_norms

    @classmethod
    def derives_eps(cls, options):
        return not options.get("early_stop", False)  # the walk then does not depend on ε

    @torch.no_grad()
    def run(self, x, y):
        n, dev = len(x), x.device
        queries = torch.zeros(n, dtype=torch.int64)
        if self.eps == 0:  # nothing within the ball but x itself; the attack is not run
            res = unchanged(x, gradients=False, distance=True)
            return res
        adv = x.clone()
        preds = predict(self.model, x)
        wrong = preds != y
        queries += 1
        found = wrong.clone()
        attack_idx = (~wrong).nonzero().flatten()
        if attack_idx.numel() > 0:
            start, ok = self._init(x, y, preds, attack_idx, queries)
            adv[attack_idx[ok]] = start[ok]
            found[attack_idx[ok]] = True
        active = found & ~wrong
        spherical_steps = torch.full((n,), self.spherical_step, device=dev)
        source_steps = torch.full((n,), self.source_step, device=dev)
        sph_stats = _Window(100, n, dev)
        step_stats = _Window(30, n, dev)
        a = self.step_adaptation
        for step in range(1, self.steps + 1):
            active &= source_steps >= self.source_step_convergence
            if self.early_stop:
                active &= l2(adv - x) > self.eps
            idx = active.nonzero().flatten()
            if idx.numel() == 0:
                break
            xs, ys = x[idx], y[idx]
            cand, sph, source_norms = self._proposals(xs, adv[idx], spherical_steps[idx], source_steps[idx])
            is_adv = self._is_adv(cand, ys)
            queries[idx.cpu()] += 1
            check = step % self.update_stats_every_k == 0
            if check:
                sph_adv = self._is_adv(sph, ys)
                queries[idx.cpu()] += 1
                sph_stats.append(idx, sph_adv)
                step_stats.append(idx, is_adv)
            closer = l2(cand - xs) < source_norms
            better = is_adv & closer
            adv[idx[better]] = cand[better]
            if check:
                full = sph_stats.full(idx)
                if full.any():
                    probs = sph_stats.mean(idx)
                    up, down = (probs > 0.5) & full, (probs < 0.2) & full
                    spherical_steps[idx[up]] *= a
                    source_steps[idx[up]] *= a
                    spherical_steps[idx[down]] /= a
                    source_steps[idx[down]] /= a
                    sph_stats.clear(idx[up | down])
                full = step_stats.full(idx)
                if full.any():
                    probs = step_stats.mean(idx)
                    up, down = (probs > 0.25) & full, (probs < 0.1) & full
                    source_steps[idx[up]] *= a
                    source_steps[idx[down]] /= a
                    step_stats.clear(idx[up | down])
        # The walk hugs the boundary: push its points until the margin holds (or report them as not found).
        tol = margin_tolerance(self.model(x))
        pushed, ok, dist = confirm_adversarial(self.model, x, y, adv, found & ~wrong, tol, "l2")
        adv = torch.where(bview(wrong, x), adv, pushed)
        found = wrong | ok
        dist = torch.where(wrong, l2(adv - x), dist)
        within = found & (dist <= self.eps)
        x_adv = torch.where(bview(within, x), adv, x)
        return AttackResult(x_adv=x_adv, steps=queries.to(torch.int32), distance=dist.cpu())
