"""Shared pieces of the attack implementations: per-example norms, losses, projections, bookkeeping, option types."""
from __future__ import annotations

import math
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import AfterValidator, Field

from advsweep.attacks import AttackResult

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NAN = math.nan


def l1(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).abs().sum(1)


def l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def linf(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).abs().amax(1)


def lp(t: torch.Tensor, p: str) -> torch.Tensor:
    return {"l1": l1, "l2": l2, "linf": linf}[p](t)


def bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector reshaped to broadcast against a batch shaped like `like`."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j≠y} z_j − z_y per example (> 0 ⇔ misclassified). Masks with −inf, so it is right for negative logits too
    (torchattacks' CW masks by multiplying with the one-hot vector, which is wrong there: its issue #184)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return others.amax(1) - z_y


def loss_per_example(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss an untargeted attack ascends: cross-entropy or the CW margin (unclamped)."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "cw":
        return margin(logits, y)
    raise ValueError(f"unknown loss {kind!r}")


def per_example(v: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A scalar as is, a per-example vector (ε-batched passes) reshaped to broadcast against `like`: the same
    float32/float64 values either way, so both give identical iterates."""
    return bview(v, like) if isinstance(v, torch.Tensor) else v


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    eps = per_example(eps, x)
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    # The same operations as torchattacks PGDL2 (`eps / norms` on a tensor is `norms.reciprocal() * eps`), so that
    # the iterates agree bit for bit.
    delta = x_adv - x
    norms = l2(delta)
    factor = torch.min(norms.reciprocal() * eps, torch.ones_like(norms))
    return torch.clamp(x + delta * bview(factor, delta), min=0, max=1)


@torch.no_grad()
def predict(model, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(1)


# A point counts as adversarial only if its wrong-class logit beats the true one by more than this share of the
# example's logit range at the clean input (max − min logit), and by at least MARGIN_ATOL. Float32 rounding moves
# logits by ~1e-6 of their scale when the batch size, thread count or precision changes; a margin a thousand times
# larger keeps a point adversarial however the model is evaluated (tests re-check in batch sizes 1, 7, 32, all and
# float64), while it moves a minimal distance by well under 1 %.
MARGIN_RTOL = 1e-3
MARGIN_ATOL = 1e-5
# Overshoot factors tried, in order, on δ = x_adv − x for a point that crossed the boundary without that margin.
PUSH_FACTORS = (1.0, 1.01, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0)


def margin_tolerance(clean_logits: torch.Tensor) -> torch.Tensor:
    """Per-example logit gap a point needs to count as adversarial (see MARGIN_RTOL)."""
    scale = clean_logits.amax(1) - clean_logits.amin(1)
    return torch.clamp(MARGIN_RTOL * scale, min=MARGIN_ATOL)


@torch.no_grad()
def confirm_adversarial(model, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, candidates: torch.Tensor,
                        tol: torch.Tensor, p: str = "l2") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The final check of a minimal-distortion attack: each candidate must be misclassified by a margin > `tol`.
    A candidate that crossed the boundary with less margin is pushed further along its own perturbation
    (x + f·δ for f in PUSH_FACTORS, clipped to [0,1]) until the margin holds; one that never crossed, or that no
    factor fixes, is reported as not found. Returns (x_adv, found, distance in norm p; x and inf where not found)."""
    delta = x_adv - x
    out = x.clone()
    found = torch.zeros_like(candidates)
    todo = candidates.clone()
    for k, f in enumerate(PUSH_FACTORS):
        idx = todo.nonzero().flatten()
        if idx.numel() == 0:
            break
        cand = torch.clamp(x[idx] + f * delta[idx], 0, 1) if f != 1.0 else x_adv[idx]
        m = margin(model(cand), y[idx])
        good = m > tol[idx]
        out[idx[good]] = cand[good]
        found[idx[good]] = True
        todo[idx[good]] = False
        if k == 0:  # only points that crossed the boundary are pushed
            todo[idx[m <= 0]] = False
    dist = torch.where(found, lp(out - x, p), torch.full((len(x),), float("inf"), device=x.device))
    return out, found, dist


def unchanged(x: torch.Tensor, gradients: bool = True, distance: bool = False) -> AttackResult:
    """The result of an ε-bounded attack at eps=0 (or on an empty batch): x itself, no work done."""
    n = len(x)
    return AttackResult(
        x_adv=x.clone(),
        steps=torch.zeros(n, dtype=torch.int32),
        grad_norm=torch.full((n,), NAN) if gradients else None,
        distance=torch.full((n,), NAN) if distance else None,
    )


class GradLog:
    """Per-example sums of input-gradient ℓ1 norms and counts of gradient evaluations (and forward queries)."""

    def __init__(self, n: int):
        self.grad_sum = torch.zeros(n, dtype=torch.float64)
        self.grad_count = torch.zeros(n, dtype=torch.int64)
        self.queries = torch.zeros(n, dtype=torch.int64)

    def add(self, idx: torch.Tensor | None, grad: torch.Tensor) -> None:
        norms = l1(grad.detach()).double().cpu()
        if idx is None:
            self.grad_sum += norms
            self.grad_count += 1
        else:
            idx = idx.cpu()  # index_add_: an example may appear more than once (one row per target class)
            self.grad_sum.index_add_(0, idx, norms)
            self.grad_count.index_add_(0, idx, torch.ones_like(idx))

    def query(self, idx: torch.Tensor | None, k: int = 1) -> None:
        if idx is None:
            self.queries += k
        else:
            idx = idx.cpu()
            self.queries.index_add_(0, idx, torch.full_like(idx, k))

    def mean(self) -> torch.Tensor:
        out = torch.full(self.grad_sum.shape, NAN, dtype=torch.float64)
        seen = self.grad_count > 0
        out[seen] = self.grad_sum[seen] / self.grad_count[seen]
        return out.float()

    def steps(self) -> torch.Tensor:
        return self.grad_count.to(torch.int32)


def _not_one(v: float) -> float:
    if v == 1.0:
        raise ValueError("resize_rate 1.0 makes the input-diversity transform the identity; use mifgsm/pgd instead")
    return v


ResizeRate = Annotated[float, Field(gt=0.0), AfterValidator(_not_one)]


def base_attack_validator(norm: str):
    """Validator for a `base` option naming an ε-bounded attack of threat model `norm` (transfer, surrogate)."""

    def check(name: str) -> str:
        from advsweep.attacks import ATTACKS

        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; known: {', '.join(ATTACKS.names())}")
        cls = ATTACKS.get(name)
        if getattr(cls, "wrapper", False):
            raise ValueError(f"{name!r} is itself a wrapper attack and cannot be a base")
        if cls.norm != norm:
            raise ValueError(f"base attack {name!r} has threat model {cls.norm!r}; this wrapper needs {norm!r}")
        return name

    return AfterValidator(check)


def _check_base_options(options: dict[str, Any], info) -> dict[str, Any]:
    from advsweep.attacks import ATTACKS

    base = (info.data or {}).get("base")
    if base is None:  # `base` itself failed validation; that error is reported
        return options
    return ATTACKS.validate(base, dict(options), field="base_options")


BaseOptions = Annotated[dict[str, Any], AfterValidator(_check_base_options)]
