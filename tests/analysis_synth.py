"""Hand-made sweep directories in the real schema (written by advsweep.storage.parquet) for analysis tests whose
answers are known exactly: every per-example outcome is chosen by the test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from advsweep.evaluation.aggregate import robustness_table
from advsweep.storage.parquet import (example_file, examples_table, read_examples, trial_rows, trials_table,
                                      write_atomic)

SWEEP = "synth"


def write_trials(out: Path, trials: list[dict], extra: dict[str, list] | None = None) -> None:
    """trials: dicts with trial_id, model_name, status and config; extra: additional columns (e.g. config_id)."""
    rows = []
    for i, t in enumerate(trials):
        rows.append({"schema_version": "1", "sweep_id": SWEEP, "trial_index": i, "family": 0, "n_test": 0,
                     "status": "completed", "natural_acc": 0.5, "natural_ci_low": 0.4, "natural_ci_high": 0.6,
                     **t})
    for name, values in (extra or {}).items():  # schema columns (seed, config_id) go through the writer
        for r, v in zip(rows, values):
            r[name] = v
    table = trials_table(rows)
    for name, values in (extra or {}).items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array(values))
    write_atomic(table, out / "trials" / "part-0.parquet", SWEEP)


def write_cell(out: Path, trial_id: str, attack: str, eps: float, label, clean_pred, adv_pred, *, name="pgd",
               norm="linf", params="{}", distance=None, grad=None, steps=10, index=None) -> None:
    label, clean_pred, adv_pred = (np.asarray(v, np.int32) for v in (label, clean_pred, adv_pred))
    n = len(label)
    index = np.arange(n) if index is None else np.asarray(index)
    rows = {"sweep_id": [SWEEP] * n, "attack_name": [name] * n, "attack_params": [params] * n, "norm": [norm] * n,
            "eps": [eps] * n, "shard": [0] * n, "example_index": index, "label": label, "clean_pred": clean_pred,
            "adv_pred": adv_pred, "robust": (clean_pred == label) & (adv_pred == label),
            "linf": [0.1] * n, "l2": [1.0] * n, "rms": [0.03] * n,
            "distance": [None] * n if distance is None else distance, "steps": [steps] * n,
            "grad_norm": [1.0] * n if grad is None else grad, "seed": [0] * n, "wall_time_s": [0.1] * n}
    write_atomic(examples_table(rows), example_file(out, trial_id, attack, eps, 0), SWEEP)


def finish(out: Path) -> Path:
    write_atomic(robustness_table(read_examples(out), None, trial_rows(out)), out / "robustness" / "part-0.parquet",
                 SWEEP)
    return out


def outcomes(n: int, clean_ok: int, robust: int):
    """label, clean_pred, adv_pred for n examples: the first `clean_ok` classified correctly, the first `robust`
    of those not broken."""
    label = np.zeros(n, np.int32)
    clean = np.where(np.arange(n) < clean_ok, 0, 1)
    adv = np.where(np.arange(n) < robust, 0, 1)
    return label, clean, adv
