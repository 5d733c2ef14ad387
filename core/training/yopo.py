"""`yopo`: YOPO-m-n adversarial training ("You Only Propagate Once", Zhang et al. 2019; papers.md §4.2).

Per batch, with η⁰ ~ U(−ε, ε)^d (projected onto [0, 1] around x):

    for j in 0..K−1:                                          # K = m full forward/backward passes (train mode)
        L_j = CE(f(x + η_j), y);  g += ∇_θ L_j  (all parameters); p_j = −∂L_j/∂o_j, o_j = layer-one output
        for s in 1..inner:                                    # n cheap steps through layer one only, p_j frozen
            η ← Π_ε,[0,1]( η − σ · sign ∇_η ⟨layer_one(x + η), p_j⟩ )
        g_layer_one += ∇_θ₁ −⟨layer_one(x + η_{j+1}), p_j⟩        # Hamiltonian gradient at the new point
    one optimiser step on g / K

Each inner step re-evaluates layer one exactly (forward + backward through it alone); the rest of the network enters
only through the co-state p_j, frozen during the n inner steps — the YOPO approximation. The weight gradients follow
the official code (a1600012888/YOPO-You-Only-Propagate-Once, experiments/CIFAR10/pre-res18.yopo-5-3/
training_function.py; its "wgrad" reset is commented out there): every parameter, layer one included, accumulates the
K full-backprop gradients, and layer one additionally the K Hamiltonian gradients.

Simplifications, deliberate and recorded here:
- One optimiser, one learning rate. Upstream uses SGD at lr/K on the *sum* of the K gradients for the other layers
  and a second optimiser on layer one with that same lr; here the recipe returns a surrogate whose gradient is the
  *mean* over K (so spec lr = K × upstream lr, e.g. MNIST 0.1, CIFAR pre-res18 0.2), and layer one shares the
  schedule of the rest (upstream MNIST gives it its own milestones [15, 19]). Weight decay is the optimiser's.
- The trainer does zero_grad → backward → step after `loss()`, so the K backprops are done here with
  `torch.autograd.grad` and the accumulated gradient g is handed back as the surrogate
  loss = mean_j L_j (value) + Σ_θ ⟨θ, g_θ⟩ − stop_grad(same) (gradient). Penalties add to it normally.
- The η-steps run layer one in eval mode (batch norm inside it, if any, keeps its statistics); the K full passes are
  training passes in train mode (their gradients are the update), as upstream.
- Layer one (`layer_one`): "first_stage" (default) uses the model's first stage from `hidden_layers()` when it starts
  with `model.first_layer` — the linear map plus its activation, as upstream's `layer_one = conv1 + ReLU`; "first_layer"
  uses `model.first_layer` alone (then ⟨layer_one(x+η), p⟩ is linear in η and the n steps move η along one fixed sign
  direction). Without `hidden_layers()` both use `model.first_layer`, else the first nn.Conv2d/nn.Linear found in
  `model.modules()`. The chosen module must be applied (once) directly to the model input (a contiguous reshape of it
  is allowed, e.g. a flatten before the first Linear); otherwise the recipe raises.
Stats: `train_acc` at the first pass (x + η⁰, upstream's "clean" accuracy), `train_adv_acc` at the final x + η
(eval mode).
Defaults: CIFAR YOPO-5-3 (K 5, inner 3, σ 2/255, ε 8/255). MNIST YOPO-5-10: K 5, inner 10, step 0.01, eps 0.3.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeInt, PositiveInt, confloat
from torch import nn

from advsweep.training import Recipe, register_recipe
from advsweep.training import inner as adv_inner


def _model_name(model: nn.Module) -> str:
    return getattr(model, "registry_name", type(model).__name__)


def find_layer_one(model: nn.Module, layer_one: str = "first_stage") -> nn.Module:
    first = getattr(model, "first_layer", None)
    if not isinstance(first, nn.Module):
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ValueError(f"yopo: model {_model_name(model)!r} has no `first_layer` and no nn.Conv2d/nn.Linear")
    if layer_one == "first_stage" and callable(getattr(model, "hidden_layers", None)):
        stages = model.hidden_layers()
        if stages and getattr(stages[0], "linear", None) is first:
            return stages[0]
    return first


class _Capture:
    """Forward hook on layer one: records its input and output; hands a clone downstream so that in-place ops after
    it (e.g. ReLU(inplace=True)) cannot overwrite the recorded output we differentiate with respect to."""

    def __init__(self):
        self.active = False
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, module, args, output):
        if not self.active:
            return None
        self.calls.append((args[0], output))
        return output.clone()


@register_recipe("yopo")
class YOPO(Recipe):
    def __init__(self, K: PositiveInt = 5, inner: NonNegativeInt = 3, eps: confloat(ge=0, le=1) = 8 / 255,
                 step: confloat(ge=0) = 2 / 255, layer_one: Literal["first_stage", "first_layer"] = "first_stage"):
        self.K, self.inner, self.eps, self.step, self.layer_one = K, inner, eps, step, layer_one

    def loss(self, model, x, y):
        layer = find_layer_one(model, self.layer_one)
        params = [p for p in model.parameters() if p.requires_grad]
        layer_params = [p for p in layer.parameters() if p.requires_grad]
        grads = [torch.zeros_like(p) for p in params]
        index = {id(p): i for i, p in enumerate(params)}
        capture = _Capture()
        handle = layer.register_forward_hook(capture)
        x = x.detach()
        x_adv = adv_inner.random_start(x, self.eps, "uniform")  # x + η, η⁰ ~ U(−ε, ε), kept in the ε ball and [0, 1]
        losses, accs = [], []
        try:
            for _ in range(self.K):
                x_in = x_adv.detach().contiguous()
                capture.active, capture.calls = True, []
                logits = model(x_in)
                capture.active = False
                in_shape, out = self._layer_one_output(model, capture.calls, x_in)
                loss_j = F.cross_entropy(logits, y)
                *g, g_out = torch.autograd.grad(loss_j, params + [out], allow_unused=True)
                for acc, gi in zip(grads, g):
                    if gi is not None:
                        acc.add_(gi)
                if g_out is None:
                    raise ValueError(f"yopo: the loss of model {_model_name(model)!r} does not depend on layer one")
                p = -g_out.detach()  # co-state p = −∂L/∂(layer-one output), frozen for the inner steps
                losses.append(loss_j.detach())
                accs.append((logits.argmax(1) == y).float().mean())

                with adv_inner.eval_mode(layer), torch.enable_grad():
                    for _ in range(self.inner):
                        x_adv = x_adv.detach().requires_grad_(True)
                        ham = (layer(x_adv.reshape(in_shape)) * p).sum()  # H = ⟨layer_one(x + η), p⟩
                        (g_eta,) = torch.autograd.grad(ham, x_adv)
                        x_adv = adv_inner.project_linf(x_adv.detach() - self.step * g_eta.sign(), x, self.eps)
                x_adv = x_adv.detach()
                # Layer one's Hamiltonian gradient at the updated point: ∇θ₁ −⟨layer_one(x + η), p⟩.
                if layer_params:
                    ham = -(layer(x_adv.reshape(in_shape)) * p).sum()
                    for prm, gi in zip(layer_params, torch.autograd.grad(ham, layer_params, allow_unused=True)):
                        if gi is not None:
                            grads[index[id(prm)]].add_(gi)
        finally:
            handle.remove()

        with adv_inner.eval_mode(model), torch.no_grad():
            adv_acc = (model(x_adv).argmax(1) == y).float().mean().item()
        value = torch.stack(losses).mean()
        surrogate = value.new_zeros(())
        for prm, g in zip(params, grads):
            surrogate = surrogate + (prm * (g / self.K)).sum()
        loss = value + surrogate - surrogate.detach()
        return loss, {"train_acc": accs[0].item(), "train_adv_acc": adv_acc}

    @staticmethod
    def _layer_one_output(model, calls, x_in):
        name = _model_name(model)
        if len(calls) != 1:
            raise ValueError(f"yopo: layer one of model {name!r} ran {len(calls)} times in one forward (expected once)")
        inp, out = calls[0]
        if not (inp.data_ptr() == x_in.data_ptr() and inp.numel() == x_in.numel() and inp.is_contiguous()):
            raise ValueError(f"yopo: layer one of model {name!r} does not act directly on the model input; "
                             "give the model a `first_layer` that does")
        return inp.shape, out
