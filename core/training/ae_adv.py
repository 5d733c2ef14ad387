"""`ae_adv`: pre-train the front-end of a `stacked` model to map adversarial examples back to clean ones
(Gu & Rigazio 2014 §3, papers.md §5.1–5.2).

Adversarial inputs: FGSM (one step of size ε, from x) or ℓ∞ PGD (`steps` steps of `step`, uniform random start) on the
cross-entropy, crafted with the whole stacked model in eval mode (training.inner) against `target`: "classifier"
(default: the paper's AE removes adversarial noise crafted against the original network) or "stacked"
(classifier∘frontend, the current front-end included). loss = MSE(frontend(x_adv), x). No gradient reaches the
classifier: crafting differentiates with respect to the input only, and the loss involves the front-end only.
Stats: `train_acc` = classifier accuracy on the reconstructions, `train_adv_acc` = on the raw adversarial inputs
(both no-grad, eval mode).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import NonNegativeInt, confloat

from advsweep.training import Recipe, inner, register_recipe
from advsweep.training.dae import reconstruction_stats, require_frontend


@register_recipe("ae_adv")
class AEAdv(Recipe):
    def __init__(self, attack: Literal["fgsm", "pgd"] = "pgd", target: Literal["classifier", "stacked"] = "classifier",
                 eps: confloat(ge=0, le=1) = 0.1, step: confloat(ge=0) = 0.01, steps: NonNegativeInt = 20):
        self.attack, self.target, self.eps, self.step, self.steps = attack, target, eps, step, steps

    def craft(self, model, x, y):
        frontend, classifier = require_frontend(model, "ae_adv")
        forward = classifier if self.target == "classifier" else model
        objective = lambda logits: F.cross_entropy(logits, y, reduction="sum")  # noqa: E731
        if self.attack == "fgsm":
            return inner.pgd_linf(model, x, objective, eps=self.eps, step=self.eps, steps=1, start="zero",
                                  forward=forward)
        return inner.pgd_linf(model, x, objective, eps=self.eps, step=self.step, steps=self.steps, start="uniform",
                              forward=forward)

    def loss(self, model, x, y):
        frontend, classifier = require_frontend(model, "ae_adv")
        x_adv = self.craft(model, x, y)
        x_rec = frontend(x_adv)
        loss = F.mse_loss(x_rec, x)
        return loss, {"train_acc": reconstruction_stats(model, classifier, x_rec, y),
                      "train_adv_acc": reconstruction_stats(model, classifier, x_adv, y)}
