"""Run one unit of attack work on a model already in eval mode and return its examples-table rows."""
from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa
import torch

from advsweep.attacks import build_attack
from advsweep.evaluation.units import Unit
from advsweep.storage.parquet import examples_table


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def run_unit(model: torch.nn.Module, unit: Unit, x: torch.Tensor, y: torch.Tensor, index: np.ndarray,
             clean_pred: torch.Tensor, sweep_id: str, base_seed: int, batch_size: int,
             device: torch.device, source_model: torch.nn.Module | None = None) -> pa.Table:
    """x: float [0,1] CPU tensor of the shard; index: dataset indices of its rows; clean_pred: model(x).argmax."""
    seed = unit.seed(base_seed)
    options = dict(unit.attack.options)
    if source_model is not None:
        options["source_model"] = source_model
    attack = build_attack(unit.attack.name, model, unit.eps, seed, **options)
    start = time.perf_counter()
    adv, steps, grad, dist = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        res = attack(xb, yb)
        adv.append(res.x_adv.cpu())
        n = len(xb)
        steps.append(res.steps.cpu() if res.steps is not None else torch.zeros(n, dtype=torch.int32))
        grad.append(res.grad_norm.cpu().float() if res.grad_norm is not None else torch.full((n,), math.nan))
        d = getattr(res, "distance", None)
        dist.append(d.cpu().float() if d is not None else torch.full((n,), math.nan))
    x_adv = torch.cat(adv)
    adv_pred = predict(model, x_adv, batch_size, device)
    wall = time.perf_counter() - start
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)
    grad_t = torch.cat(grad)
    dist_t = torch.cat(dist)
    rows = {
        "sweep_id": [sweep_id] * len(x),
        "attack_name": [unit.attack.name] * len(x),
        "attack_params": [unit.attack.params_json()] * len(x),
        "norm": [unit.attack.norm] * len(x),
        "eps": np.full(len(x), unit.eps, dtype=np.float64),
        "shard": np.full(len(x), unit.shard, dtype=np.int32),
        "example_index": index.astype(np.int64),
        "label": y.numpy().astype(np.int32),
        "clean_pred": clean_pred.numpy().astype(np.int32),
        "adv_pred": adv_pred.numpy().astype(np.int32),
        "robust": ((clean_pred == y) & (adv_pred == y)).numpy(),
        "linf": delta.abs().amax(dim=1).numpy().astype(np.float32),
        "l2": l2.numpy().astype(np.float32),
        "rms": (l2 / math.sqrt(delta.shape[1])).numpy().astype(np.float32),
        "distance": pa.array(dist_t.numpy(), type=pa.float32(), from_pandas=True),
        "steps": torch.cat(steps).numpy().astype(np.int32),
        "grad_norm": pa.array(grad_t.numpy(), type=pa.float32(), from_pandas=True),
        "seed": np.full(len(x), seed, dtype=np.int64),
        "wall_time_s": np.full(len(x), wall, dtype=np.float64),
    }
    return examples_table(rows)
