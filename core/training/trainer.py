"""The generic training loop: optimizer, learning-rate schedule, augmentation, recipe + penalties, per-epoch stats.

Plain PyTorch (no Ray, no MLflow): the sweep trainable drives it epoch by epoch and checkpoints its state.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from advsweep.training import Recipe


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    milestones: list[int] = field(default_factory=list)  # epochs, for "step"
    gamma: float = 0.1
    warmup_epochs: int = 0


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: OptimConfig, epoch_progress: float, epochs: int) -> float:
    """Multiplier of the base lr at a fractional epoch (updated per step, so short CPU runs still anneal)."""
    if cfg.warmup_epochs and epoch_progress < cfg.warmup_epochs:
        return (epoch_progress + 1e-9) / cfg.warmup_epochs
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(epoch_progress / max(epochs, 1), 1.0)))
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch_progress >= m for m in cfg.milestones)
    return 1.0


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding image_size/8) and, for `crop_flip`, horizontal flips; on the batch, on its device."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if kind == "crop_flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


class Trainer:
    def __init__(self, model: nn.Module, recipe: Recipe, penalties: list[Any], optim: OptimConfig, epochs: int,
                 batch_size: int, augment: str = "none", seed: int = 0, device: str | torch.device = "cpu"):
        self.model, self.recipe, self.penalties = model, recipe, penalties
        self.optim_cfg, self.epochs, self.batch_size, self.augment = optim, epochs, batch_size, augment
        self.device = torch.device(device)
        self.optimizer = make_optimizer(model, optim)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0  # epochs completed
        self.train_time = 0.0  # seconds spent in train_epoch, over restarts from checkpoints too
        self.loss_history: list[float] = []  # mean training loss per completed epoch (divergence checks)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                "generator": self.generator.get_state(), "train_time": self.train_time,
                "loss_history": torch.tensor(self.loss_history, dtype=torch.float64)}

    def load(self, path: str | Path) -> None:
        """Continue from a `state_dict` saved at `path` on any device: loaded on the CPU, then `load_state_dict`
        moves model and optimizer state to the parameters' device (the data-order generator stays a CPU one)."""
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"].cpu())
        self.train_time = float(state.get("train_time", 0.0))
        self.loss_history = [float(v) for v in state.get("loss_history", torch.empty(0))]

    def train_epoch(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One pass over (x, y) (uint8 or float CPU tensors); returns mean loss, stats and wall time."""
        self.model.train()
        n = len(x)
        order = torch.randperm(n, generator=self.generator)
        steps = math.ceil(n / self.batch_size)
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for step in range(steps):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            xb = as_float_images(x[idx]).to(self.device)
            yb = y[idx].to(self.device)
            xb = augment_batch(xb, self.augment, self.generator)
            factor = lr_factor(self.optim_cfg, self.epoch + step / steps, self.epochs)
            for g in self.optimizer.param_groups:
                g["lr"] = self.optim_cfg.lr * factor
            loss, stats = self.recipe.loss(self.model, xb, yb)
            for pen in self.penalties:
                p_loss, p_stats = pen.loss(self.model, xb, yb)
                loss = loss + p_loss
                stats = {**stats, **p_stats}
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {self.epoch}, step {step}")
            for k, v in {"loss": loss.item(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        self.epoch += 1
        out = {k: v / steps for k, v in sums.items()}
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        out["epoch_time_s"] = time.perf_counter() - start
        self.train_time += out["epoch_time_s"]
        return out


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]; float images pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
