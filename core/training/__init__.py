"""Training recipes and penalties.

A recipe is a class registered with `@register_recipe("name")`; its constructor's keyword options are what a sweep spec
may set. `recipe.loss(model, x, y)` returns (scalar loss, {stat: float}). The trainer calls it with the model in train
mode; a recipe that crafts adversarial inputs switches the model to eval mode for the inner attack and back.
A penalty (`@register_penalty`) adds `penalty.loss(model, x, y)` to the recipe's loss, so recipes and penalties combine
(e.g. TRADES + contractive).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from advsweep.registry import Registry, import_submodules

RECIPES = Registry("training recipe")
PENALTIES = Registry("penalty")
register_recipe = RECIPES.register
register_penalty = PENALTIES.register


class Recipe:
    """Base class: subclasses implement `loss`. `needs` lists model capabilities the recipe requires."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return dict(vars(self))


def build_recipe(name: str, **options: Any) -> Recipe:
    return RECIPES.build(name, **options)


def build_penalty(name: str, **options: Any) -> Any:
    return PENALTIES.build(name, **options)


import_submodules(__name__)
