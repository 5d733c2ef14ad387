"""Natural-vs-robust accuracy trade-off frontiers per attack × ε, from the Parquet tables of a sweep directory.

Only trials that completed their full budget enter a frontier: early-stopped (ASHA) or failed trials would otherwise
appear with truncated, flattering or meaningless numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from advsweep.registry import SpecError
from advsweep.storage.parquet import read_robustness, read_trials, write_atomic

POINT_COLUMNS = ["attack", "eps", "trial_id", "trial_index", "trial_name", "config_name", "model_name", "recipe",
                 "natural_acc", "natural_ci_low", "natural_ci_high", "robust_acc", "ci_low", "ci_high"]
FRONT_COLUMNS = [*POINT_COLUMNS, "on_front", "hypervolume"]


def pareto_mask(natural: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """True where no other point is ≥ in both objectives and > in one (both maximised). Sort-based, O(n log n)."""
    return pareto_mask_columns(np.asarray(natural, float)[:, None], np.asarray(robust, float)[:, None])[:, 0]


def pareto_mask_columns(natural: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """Pareto membership for every column of [points × resamples] at once. Points are sorted by (natural, robust)
    descending; a point is dominated exactly when some point before its group of identical points has robust ≥ its
    own (identical points do not dominate each other)."""
    t, b = natural.shape
    order = np.lexsort((-robust, -natural), axis=0)
    nat, rob = np.take_along_axis(natural, order, 0), np.take_along_axis(robust, order, 0)
    prefix = np.vstack([np.full((1, b), -np.inf), np.maximum.accumulate(rob, axis=0)[:-1]])
    new_group = np.ones((t, b), bool)
    new_group[1:] = (nat[1:] != nat[:-1]) | (rob[1:] != rob[:-1])
    start = np.maximum.accumulate(np.where(new_group, np.arange(t)[:, None], 0), axis=0)
    dominated = np.take_along_axis(prefix, start, 0) >= rob
    mask = np.empty((t, b), bool)
    np.put_along_axis(mask, order, ~dominated, 0)
    return mask


def hypervolume(natural: np.ndarray, robust: np.ndarray) -> float:
    """Area dominated by the points above the reference (0, 0)."""
    return float(hypervolume_columns(np.asarray(natural, float)[:, None], np.asarray(robust, float)[:, None])[0])


def hypervolume_columns(natural: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """Hypervolume of each column of [points × resamples]: sort by natural accuracy descending, then every point adds
    natural × (its rise of the running maximum of robust accuracy); order among equal natural values is irrelevant."""
    order = np.argsort(-natural, axis=0, kind="stable")
    nat, rob = np.take_along_axis(natural, order, 0), np.take_along_axis(robust, order, 0)
    best = np.maximum.accumulate(np.maximum(rob, 0), axis=0)
    rise = np.diff(np.vstack([np.zeros((1, natural.shape[1])), best]), axis=0)
    return (nat * rise).sum(0)


def load_points(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per completed trial × attack × ε (ε > 0) with both accuracies and their intervals."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "trials").exists():
        raise SpecError(str(sweep_dir), "not a sweep directory (no trials/ table); run `advsweep run` first")
    trials = read_trials(sweep_dir).to_pandas()
    rob = read_robustness(sweep_dir).to_pandas()  # carries each trial's name, model, recipe, natural accuracy
    done = trials.loc[trials["status"] == "completed", ["trial_id", "trial_index"]]
    pts = rob[(rob["eps"] > 0) & (rob["status"].fillna("ok") == "ok")].merge(done, on="trial_id", how="inner")
    return pts[POINT_COLUMNS].reset_index(drop=True)


def compute_fronts(points: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for (_, _), g in points.groupby(["attack", "eps"], sort=True):
        g = g.copy()
        g["on_front"] = pareto_mask(g["natural_acc"].to_numpy(), g["robust_acc"].to_numpy())
        g["hypervolume"] = hypervolume(g["natural_acc"].to_numpy(), g["robust_acc"].to_numpy())
        parts.append(g)
    if not parts:
        return pd.DataFrame(columns=FRONT_COLUMNS)
    return pd.concat(parts, ignore_index=True)[FRONT_COLUMNS]


def write_frontiers(sweep_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write frontier/<attack>_eps<ε>.png per attack × ε, plus frontier/front.csv and front.parquet (all points,
    `on_front` marking the Pareto set). Returns the written files."""
    from advsweep.analysis.plots import plot_front

    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir else sweep_dir / "frontier"
    table = compute_fronts(load_points(sweep_dir))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (attack, eps), g in table.groupby(["attack", "eps"], sort=True):
        written.append(plot_front(g, attack, eps, out / f"{attack}_eps{eps:g}.png"))
    sweep_id = read_trials(sweep_dir).column("sweep_id")[0].as_py() if table.size else ""
    write_atomic(pa.Table.from_pandas(table, preserve_index=False), out / "front.parquet", sweep_id)
    table.to_csv(out / "front.csv", index=False)
    return [*written, out / "front.parquet", out / "front.csv"]
