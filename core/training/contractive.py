"""Deep Contractive Network penalty (Gu & Rigazio 2014, papers.md §5.2): penalty `contractive` and recipe `contractive`.

    penalty = Σ_j λ_j · mean_i ‖∂h_j/∂h_{j−1}‖²_F  (at example i)        (`squared: false`: ‖·‖_F, not squared)

over the pairs (h_{j−1}, h_j) of `model.forward_with_hiddens(x) -> (logits, [h_0 = x, h_1, ..., h_L])`. The zoo's
FeedForward models end that list with the logits; `output` says what the last pair is: "softmax" (default: the paper's
h_{H+1} is the network output, its probabilities — papers.md lists the softmax Jacobian (diag p − ppᵀ)·W_out; INFERRED),
"logits" (the layer as the model returns it), or "none" (no output-layer term). If a model's list does not end with
the logits, "softmax"/"logits" append the pair (h_L, softmax(logits) or logits).

How each layer's squared Frobenius norm is computed (per example, differentiable in the parameters):
- closed form, when the model has `hidden_layers()` (one stage per pair) and the stage is dense: `stage.linear` an
  nn.Linear, `stage.pre` identity/flatten, `stage.post` identity, `stage.act` ReLU/LeakyReLU/Sigmoid/Tanh/Identity:
  ‖diag(σ'(a)) W‖²_F = Σ_k σ'(a_k)² ‖W_k,:‖² with a = W·pre(h_{j−1}) + b. Cost: one extra matmul.
- exact by autograd, for any other pair whose output is a vector (h_j 2-D: dense layers with dropout in train mode,
  the softmax output, models without `hidden_layers()`): one vjp per output unit, batched
  (`autograd.grad(..., is_grads_batched=True)`), ‖J‖²_F = Σ_k ‖J_k,:‖². Memory ~ units × batch × inputs.
- conv-like pairs (h_j with spatial dims), by `conv_estimator`:
  "exact": the same batched vjp over every output unit — full Jacobian, small inputs only;
  "hutchinson": unbiased estimate with `samples` Gaussian probes, E_u ‖Jᵀu‖² = tr(JJᵀ) = ‖J‖²_F, u ~ N(0, I) over
  the layer's outputs (one vjp per probe, batched). This is the transposed form of E_v ‖Jv‖² (v over the inputs):
  same expectation and same variance, 2‖JᵀJ‖²_F per probe, and a vjp needs no forward-mode support from the layer.
  With `squared: false` the square root of the estimate is biased (Jensen); raise `samples` if that matters.
Notes: the penalty runs its own forward in train mode (batch norm counts it; dropout draws fresh masks, which are part
of the Jacobian). With batch norm in train mode the examples are coupled and the vjps differentiate the batch function.
`lam` is the shared λ; `lams`, if given, lists one λ per pair (its length is checked against the model's pairs at
every call; a mismatch raises naming the model) and overrides `lam`. Stats: `contractive` (the weighted total) and
`contractive_l{j}` (mean ‖J_j‖², unweighted).
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat, PositiveInt
from torch import nn

from advsweep.training import Recipe, register_penalty, register_recipe


def _model_name(model: nn.Module) -> str:
    return getattr(model, "registry_name", type(model).__name__)


def _act_derivative(act: nn.Module, a: torch.Tensor) -> torch.Tensor | None:
    """σ'(a) for the elementwise activations with a closed form; None for identity; raises KeyError otherwise."""
    kind = type(act)
    if kind is nn.Identity:
        return None
    if kind is nn.ReLU:
        return (a > 0).to(a.dtype)
    if kind is nn.LeakyReLU:
        return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, act.negative_slope))
    if kind is nn.Sigmoid:
        s = torch.sigmoid(a)
        return s * (1 - s)
    if kind is nn.Tanh:
        return 1 - torch.tanh(a) ** 2
    raise KeyError(kind.__name__)


def dense_closed_form(stage: nn.Module, h_prev: torch.Tensor) -> torch.Tensor | None:
    """Per-example ‖∂stage(h)/∂h‖²_F for a Linear + elementwise-activation stage, or None if the stage is not one."""
    lin, act = getattr(stage, "linear", None), getattr(stage, "act", None)
    pre, post = getattr(stage, "pre", nn.Identity()), getattr(stage, "post", nn.Identity())
    if not (isinstance(lin, nn.Linear) and isinstance(act, nn.Module) and type(pre) in (nn.Identity, nn.Flatten)
            and type(post) is nn.Identity):
        return None
    h = pre(h_prev)
    if h.dim() != 2:
        return None
    a = lin(h)
    try:
        s = _act_derivative(act, a)
    except KeyError:
        return None
    row_sq = lin.weight.pow(2).sum(1)  # ‖W_k,:‖²
    if s is None:
        return row_sq.sum().expand(len(h_prev))
    return (s * s) @ row_sq


def _batched_vjp(h: torch.Tensor, h_prev: torch.Tensor, vs: torch.Tensor, what: str) -> torch.Tensor:
    """(Σ_b vs[k, b]·∂h_b/∂h_prev) for each k, keeping the graph: shape (K, *h_prev.shape)."""
    try:
        (g,) = torch.autograd.grad(h, h_prev, vs, is_grads_batched=True, create_graph=True, allow_unused=True)
    except RuntimeError as exc:  # an op without a batching rule: one vjp at a time
        if "not used in the graph" in str(exc):
            raise
        gs = [torch.autograd.grad(h, h_prev, v, create_graph=True, allow_unused=True)[0] for v in vs]
        g = None if gs[0] is None else torch.stack(gs)
    if g is None:
        raise ValueError(f"contractive: {what} does not depend on the previous hidden layer in the autograd graph")
    return g


def fro2_exact(h_prev: torch.Tensor, h: torch.Tensor, what: str = "layer") -> torch.Tensor:
    """Per-example ‖∂h/∂h_prev‖²_F by one (batched) vjp per output unit."""
    m = h[0].numel()
    basis = torch.eye(m, dtype=h.dtype, device=h.device).reshape(m, 1, *h.shape[1:]).expand(m, *h.shape)
    g = _batched_vjp(h, h_prev, basis, what)
    return g.pow(2).reshape(m, len(h), -1).sum(dim=(0, 2))


def fro2_hutchinson(h_prev: torch.Tensor, h: torch.Tensor, samples: int, what: str = "layer") -> torch.Tensor:
    """Unbiased per-example estimate of ‖∂h/∂h_prev‖²_F: mean over `samples` probes u ~ N(0, I) of ‖Jᵀu‖²."""
    u = torch.randn(samples, *h.shape, dtype=h.dtype, device=h.device)
    g = _batched_vjp(h, h_prev, u, what)
    return g.pow(2).reshape(samples, len(h), -1).sum(2).mean(0)


@register_penalty("contractive")
class Contractive:
    def __init__(self, lam: NonNegativeFloat = 0.01, lams: list[NonNegativeFloat] | None = None,
                 conv_estimator: Literal["exact", "hutchinson"] = "hutchinson", samples: PositiveInt = 1,
                 output: Literal["softmax", "logits", "none"] = "softmax", squared: bool = True):
        self.lam, self.lams, self.conv_estimator, self.samples = lam, lams, conv_estimator, samples
        self.output, self.squared = output, squared

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def layer_norms(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
        """(logits, per-pair per-example ‖J‖²_F tensors of shape (B,), per-pair method names)."""
        name = _model_name(model)
        fwh = getattr(model, "forward_with_hiddens", None)
        if not callable(fwh):
            raise ValueError(f"contractive: model {name!r} has no forward_with_hiddens(x) -> "
                             "(logits, [x, h1, ..., hL]); the layer-wise Jacobian penalty needs its hidden layers")
        x = x.detach().requires_grad_(True)
        logits, hs = fwh(x)
        hs = list(hs)
        stages = list(model.hidden_layers()) if callable(getattr(model, "hidden_layers", None)) else None
        if stages is not None and len(stages) != len(hs) - 1:
            stages = None
        pairs: list[tuple[torch.Tensor, torch.Tensor, Any]] = [
            (hs[j - 1], hs[j], stages[j - 1] if stages else None) for j in range(1, len(hs))
        ]
        ends_with_logits = len(hs) > 1 and (hs[-1] is logits or (
            hs[-1].shape == logits.shape and hs[-1].data_ptr() == logits.data_ptr()))
        if ends_with_logits:
            if self.output == "none":
                pairs.pop()
            elif self.output == "softmax":
                pairs[-1] = (hs[-2], F.softmax(logits, dim=1), None)
        elif self.output != "none":
            pairs.append((hs[-1], F.softmax(logits, dim=1) if self.output == "softmax" else logits, None))
        if not pairs:
            raise ValueError(f"contractive: model {name!r} returned no layer pairs from forward_with_hiddens")

        norms, methods = [], []
        for j, (h_prev, h, stage) in enumerate(pairs, start=1):
            what = f"layer {j} of model {name!r}"
            fro2 = dense_closed_form(stage, h_prev) if stage is not None else None
            if fro2 is not None:
                methods.append("closed_form")
            elif h.dim() == 2 or self.conv_estimator == "exact":
                fro2 = fro2_exact(h_prev, h, what)
                methods.append("exact")
            else:
                fro2 = fro2_hutchinson(h_prev, h, self.samples, what)
                methods.append("hutchinson")
            norms.append(fro2)
        return logits, norms, methods

    def weights(self, n_pairs: int, model: nn.Module) -> list[float]:
        if self.lams is None:
            return [float(self.lam)] * n_pairs
        if len(self.lams) != n_pairs:
            raise ValueError(f"contractive: lams has {len(self.lams)} entries but model {_model_name(model)!r} has "
                             f"{n_pairs} layer pairs (output={self.output!r})")
        return [float(v) for v in self.lams]

    def penalty(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        logits, norms, _ = self.layer_norms(model, x)
        total = logits.new_zeros(())
        stats: dict[str, float] = {}
        for j, (lam, fro2) in enumerate(zip(self.weights(len(norms), model), norms), start=1):
            per_example = fro2 if self.squared else torch.sqrt(fro2 + 1e-12)
            term = per_example.mean()
            total = total + lam * term
            stats[f"contractive_l{j}"] = term.item()
        stats["contractive"] = total.item()
        return total, stats, logits

    def loss(self, model, x, y):
        total, stats, _ = self.penalty(model, x)
        return total, stats


@register_recipe("contractive")
class ContractiveRecipe(Recipe):
    """Natural cross-entropy + the `contractive` penalty, from one forward_with_hiddens pass (same options)."""

    def __init__(self, lam: NonNegativeFloat = 0.01, lams: list[NonNegativeFloat] | None = None,
                 conv_estimator: Literal["exact", "hutchinson"] = "hutchinson", samples: PositiveInt = 1,
                 output: Literal["softmax", "logits", "none"] = "softmax", squared: bool = True):
        self.lam, self.lams, self.conv_estimator, self.samples = lam, lams, conv_estimator, samples
        self.output, self.squared = output, squared

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def loss(self, model, x, y):
        pen, stats, logits = Contractive(**self.params()).penalty(model, x)
        ce = F.cross_entropy(logits, y)
        return ce + pen, {"train_acc": (logits.argmax(1) == y).float().mean().item(), "ce": ce.item(), **stats}
