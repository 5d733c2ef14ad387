"""Feed-forward classifiers as an explicit list of layers, for layer-wise penalties (Deep Contractive Network).

A `FeedForward` net is an ordered list of `Stage`s, h_j = stage_j(h_{j−1}) with h_0 = x and h_L = logits, where

    stage(h) = post(act(linear(pre(h))))

  pre     reshaping before the affine map (nn.Flatten on the first dense layer, else identity)
  linear  the nn.Conv2d / nn.Linear
  act     the activation (identity on the output layer); `stage.act_name` ∈ {relu, sigmoid, tanh, identity}
  post    what follows the activation inside the same layer (max-pool, dropout), else identity

API used by the training recipes:
  model.hidden_layers()          → list of the L stages, in order (each an nn.Module mapping h_{j−1} to h_j)
  model.forward_with_hiddens(x)  → (logits, [h_0 = x, h_1, ..., h_L = logits]); the list has L + 1 entries, so the
                                   j-th layer's input/output pair is (hs[j−1], hs[j]) and `hidden_layers()[j−1]` maps
                                   one to the other (autograd Jacobians / JVPs of a single layer work on that).
  model.first_layer              → hidden_layers()[0].linear (the nn.Conv2d / nn.Linear applied to the input; YOPO).
Analytic Jacobian norms can use stage.linear.weight, stage.act_name and the pre-activation linear(pre(h)).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Activation = Literal["relu", "sigmoid", "tanh"]
_ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}


class Stage(nn.Module):
    def __init__(self, linear: nn.Module, act: str = "identity", pre: nn.Module | None = None,
                 post: nn.Module | None = None):
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.linear = linear
        self.act_name = act
        self.act = _ACTS[act]()
        self.post = post if post is not None else nn.Identity()

    def preactivation(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pre(h))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.post(self.act(self.linear(self.pre(h))))


class FeedForward(nn.Module):
    def __init__(self, stages: list[Stage]):
        super().__init__()
        self.stages = nn.ModuleList(stages)

    def hidden_layers(self) -> list[Stage]:
        return list(self.stages)

    @property
    def first_layer(self) -> nn.Module:
        return self.stages[0].linear

    def forward_with_hiddens(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hs = [x]
        for stage in self.stages:
            hs.append(stage(hs[-1]))
        return hs[-1], hs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def dense_stages(in_features: int, hidden: list[int], out_features: int, act: str, flatten: bool = True) -> list[Stage]:
    """Linear(+act) stages in_features → hidden... → out_features (no activation on the last)."""
    sizes = [in_features, *hidden, out_features]
    stages = []
    for j, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = j == len(sizes) - 2
        stages.append(Stage(nn.Linear(a, b), "identity" if last else act, pre=nn.Flatten() if j == 0 and flatten else None))
    return stages
