"""In-process evaluation: every unit of one model, one after another (what a trial does after training)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advsweep.evaluation.shard import predict, run_unit
from advsweep.evaluation.units import AttackConfig, make_units, shard_bounds
from advsweep.storage.parquet import example_file, write_atomic


def evaluate_model(model: torch.nn.Module, attacks: list[AttackConfig], x: torch.Tensor, y: torch.Tensor,
                   index: np.ndarray, *, trial_id: str, sweep_id: str, out_dir: str | Path, base_seed: int,
                   batch_size: int, shard_size: int, device: torch.device, progress=None) -> list[Path]:
    """Run all (attack, ε, shard) units whose file does not exist yet; return every unit's file."""
    model.eval()
    bounds = shard_bounds(len(x), shard_size)
    clean = {}
    files = []
    for unit in make_units(trial_id, attacks, len(x), shard_size):
        path = example_file(out_dir, trial_id, unit.attack.label, unit.eps, unit.shard)
        files.append(path)
        if path.exists():
            continue
        lo, hi = bounds[unit.shard]
        if unit.shard not in clean:
            clean[unit.shard] = predict(model, x[lo:hi], batch_size, device)
        table = run_unit(model, unit, x[lo:hi], y[lo:hi], index[lo:hi], clean[unit.shard], sweep_id, base_seed,
                         batch_size, device)
        write_atomic(table, path, sweep_id)
        if progress:
            progress(unit, table)
    return files
