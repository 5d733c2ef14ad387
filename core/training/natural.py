"""`natural`: plain cross-entropy (optionally label-smoothed) on clean inputs."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import confloat

from advsweep.training import Recipe, register_recipe


@register_recipe("natural")
class Natural(Recipe):
    def __init__(self, label_smoothing: confloat(ge=0, lt=1) = 0.0):
        self.label_smoothing = label_smoothing

    def loss(self, model, x, y):
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().item()}
