"""Run one unit of attack work on a model already in eval mode and return its examples-table rows, one table per ε."""
from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa
import torch

from advsweep.attacks import build_attack
from advsweep.attacks._util import bview, margin
from advsweep.evaluation.units import Unit
from advsweep.storage.parquet import examples_table


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 0)


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    logits = predict_logits(model, x, batch_size, device)
    return logits.argmax(1) if len(logits) else torch.empty(0, dtype=torch.long)


def run_unit(model: torch.nn.Module, unit: Unit, x: torch.Tensor, y: torch.Tensor, index: np.ndarray,
             clean_logits: torch.Tensor, sweep_id: str, base_seed: int, batch_size: int,
             device: torch.device, source_model: torch.nn.Module | None = None) -> list[tuple[float, pa.Table]]:
    """x: float [0,1] CPU tensor of the shard; index: dataset indices of its rows; clean_logits: model(x) in the
    engine's batch size. Returns one examples table per ε of the unit.

    The robust flag and the `margin` column are decided on the returned points, re-evaluated here in the engine's
    batch size, never on what the attack saw while crafting. A derived unit (see units.py) runs the attack once at
    the largest ε and keeps, per ε, the adversarial only where its distance ≤ ε (any distance for a
    minimal-distortion attack at ε = 0)."""
    seed = unit.seed(base_seed)
    options = dict(unit.attack.options)
    if source_model is not None:
        options["source_model"] = source_model
    attack = build_attack(unit.attack.name, model, max(unit.eps), seed, **options)
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
    adv_logits = predict_logits(model, x_adv, batch_size, device)
    wall = time.perf_counter() - start
    dist_t = torch.cat(dist)
    common = {
        "steps": torch.cat(steps).numpy().astype(np.int32), "grad_norm": torch.cat(grad),
        "distance": dist_t, "seed": seed, "wall": wall / len(unit.eps),  # a derived unit's time split over its ε
    }
    out = []
    for eps in unit.eps:
        if unit.derived and not (unit.attack.norm == "none" and eps == 0):
            within = dist_t <= eps  # NaN/inf (none found) compare False
            x_e = torch.where(bview(within, x_adv), x_adv, x)
            logits_e = torch.where(within[:, None], adv_logits, clean_logits)
        else:
            x_e, logits_e = x_adv, adv_logits
        out.append((eps, _table(unit, eps, x, y, index, clean_logits, x_e, logits_e, sweep_id, common)))
    return out


def _table(unit, eps, x, y, index, clean_logits, x_adv, adv_logits, sweep_id, common) -> pa.Table:
    n = len(x)
    clean_pred, adv_pred = clean_logits.argmax(1), adv_logits.argmax(1)
    delta = (x_adv - x).flatten(1)
    l2 = delta.norm(dim=1)
    rows = {
        "sweep_id": [sweep_id] * n,
        "attack_name": [unit.attack.name] * n,
        "attack_params": [unit.attack.params_json()] * n,
        "norm": [unit.attack.norm] * n,
        "shard": np.full(n, unit.shard, dtype=np.int32),
        "example_index": index.astype(np.int64),
        "label": y.numpy().astype(np.int32),
        "clean_pred": clean_pred.numpy().astype(np.int32),
        "adv_pred": adv_pred.numpy().astype(np.int32),
        "robust": ((clean_pred == y) & (adv_pred == y)).numpy(),
        "margin": margin(adv_logits, y).numpy().astype(np.float32),
        "linf": delta.abs().amax(dim=1).numpy().astype(np.float32),
        "l2": l2.numpy().astype(np.float32),
        "rms": (l2 / math.sqrt(delta.shape[1])).numpy().astype(np.float32),
        "distance": pa.array(common["distance"].numpy(), type=pa.float32(), from_pandas=True),
        "steps": common["steps"],
        "grad_norm": pa.array(common["grad_norm"].numpy(), type=pa.float32(), from_pandas=True),
        "seed": np.full(n, common["seed"], dtype=np.int64),
        "wall_time_s": np.full(n, common["wall"], dtype=np.float64),
    }
    return examples_table(rows)
