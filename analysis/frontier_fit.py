"""Fitted trade-off frontiers with bootstrap bands, per attack × ε, overall and per model family.

Points. One point per configuration: a trial, or the mean over its seed replicates when the sweep has `config_id`
(spread across seeds reported beside it). Natural and robust accuracy of a point are measured on the same test
examples that the attack ran on.

Uncertainty. Test examples are resampled with replacement (non-parametric bootstrap, `resamples` draws, 95 %
percentile intervals); every draw reweights the *same* examples for every trial and every attack, so the
correlation between trials evaluated on one test set is kept (independent per-trial intervals would overstate the
uncertainty of differences and of the front). With replicates, each draw also resamples seeds within a
configuration, so intervals carry both sources of uncertainty. Counts are exact integers (float32 sums of integer
weights below 2^24), so ties between trials are decided by arithmetic, not rounding.

Fitted curve. Through the Pareto set sorted by natural accuracy, robust accuracy is non-increasing by construction;
the fitted frontier is the piecewise-linear interpolation through those points (flat to the left of the most robust
point, undefined beyond the most accurate one). Reasons: (1) a segment between two measured configurations is
attainable in expectation by choosing between them at random per input, so the curve claims nothing the measured
models cannot deliver, unlike a smoothing spline or a parametric fit that can overshoot between sparse points;
(2) it is monotone without constraints or tuning; (3) it has no free parameter to choose on 3-20 points. The band is
the pointwise 2.5-97.5 % range of the same curve refitted on every bootstrap draw (points where fewer than half the
draws define the curve are left blank).

Front membership. `p_front` is the share of draws in which a configuration is on the Pareto set; hypervolume (area
dominated above (0, 0)) per scope comes with its bootstrap interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from advsweep.analysis.frontier import hypervolume_columns, pareto_mask_columns
from advsweep.analysis.tables import Cell, Sweep

GRID = 60
ALL = "all"


@dataclass
class Fronts:
    points: pd.DataFrame
    curves: pd.DataFrame
    hypervolumes: pd.DataFrame
    resamples: int


def bootstrap_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples + 1, n] example weights; row 0 is the observed sample (all ones)."""
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float32) if resamples else np.empty((0, n))
    return np.vstack([np.ones((1, n), np.float32), w.astype(np.float32)])


def frontier_curve(natural: np.ndarray, robust: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Piecewise-linear frontier through Pareto points (any order), evaluated on `grid`: flat left of the most
    robust point, NaN right of the most accurate one."""
    order = np.argsort(natural, kind="stable")
    x, y = natural[order], robust[order]
    x, first = np.unique(x, return_index=True)  # equal natural accuracy on a front means equal robust accuracy
    y = y[first]
    out = np.interp(grid, x, y)
    out[grid > x[-1]] = np.nan
    return out


def _trial_rates(cell: Cell, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[trials × draws] natural and robust accuracy under every weight row."""
    wt = weights.T
    present = cell.present.astype(np.float32)
    n = present @ wt
    with np.errstate(invalid="ignore", divide="ignore"):
        nat = ((cell.clean & cell.present).astype(np.float32) @ wt).astype(np.float64) / n
        rob = ((cell.robust & cell.present).astype(np.float32) @ wt).astype(np.float64) / n
    return nat, rob


def _config_rates(trials: pd.DataFrame, rows: np.ndarray, nat: np.ndarray, rob: np.ndarray, seed: int):
    """Average replicates per configuration; every draw also resamples the seeds within each configuration."""
    rng = np.random.default_rng(seed + 1)
    groups = trials.iloc[rows].groupby("config_key", sort=False).indices
    out_nat, out_rob, meta = [], [], []
    for key, idx in groups.items():
        reps = rows[idx]
        k = len(reps)
        draws = nat.shape[1] - 1
        pick = rng.integers(0, k, size=(k, draws)) if k > 1 else np.zeros((1, draws), int)
        rows_nat, rows_rob = [], []
        for m, target in ((nat, rows_nat), (rob, rows_rob)):
            sub = m[reps]
            target.append(np.concatenate([sub[:, :1].mean(0), np.take_along_axis(sub[:, 1:], pick, 0).mean(0)]))
        out_nat.append(rows_nat[0])
        out_rob.append(rows_rob[0])
        first = trials.iloc[reps[0]]
        meta.append({"config_key": key, "label": first["label"], "model_name": first["model_name"],
                     "trial_ids": ",".join(trials.iloc[reps]["trial_id"].astype(str)),
                     "trial_index": int(first["trial_index"]), "n_seeds": k,
                     "seed_sd_natural": float(nat[reps, 0].std(ddof=1)) if k > 1 else np.nan,
                     "seed_sd_robust": float(rob[reps, 0].std(ddof=1)) if k > 1 else np.nan})
    return np.array(out_nat), np.array(out_rob), pd.DataFrame(meta)


def analyse_fronts(sweep: Sweep, resamples: int = 1000, seed: int = 0, cells: list[Cell] | None = None) -> Fronts:
    weights = bootstrap_weights(len(sweep.examples), resamples, seed)
    pts, curves, hvs = [], [], []
    for cell in cells or [c for c in sweep.cells.values() if c.norm != "none"]:
        rows = np.flatnonzero(cell.has())
        if not len(rows):
            continue
        t_nat, t_rob = _trial_rates(cell, weights)
        success = cell.success_rate()
        nat, rob, meta = _config_rates(sweep.trials, rows, t_nat, t_rob, seed)
        meta["success_rate"] = [float(np.nanmean(success[sweep.trials.index[sweep.trials["config_key"] == k]]))
                                for k in meta["config_key"]]
        meta["n_examples"] = [int(cell.present[sweep.trials.index[sweep.trials["config_key"] == k]].sum(1).max())
                              for k in meta["config_key"]]
        ci = {}
        for name, m in (("natural", nat), ("robust", rob)):
            lo, hi = (np.percentile(m[:, 1:], [2.5, 97.5], axis=1) if resamples else (m[:, 0], m[:, 0]))
            ci[name] = (m[:, 0], lo, hi)
        scopes = [(ALL, np.arange(len(meta)))] + [
            (fam, np.flatnonzero(meta["model_name"] == fam)) for fam in sorted(meta["model_name"].unique())]
        if meta["model_name"].nunique() == 1:
            scopes = scopes[:1]
        lo_x, hi_x = float(np.nanmin(nat[:, 0])), float(np.nanmax(nat[:, 0]))
        grid = np.linspace(lo_x, hi_x, GRID) if hi_x > lo_x else np.array([lo_x])
        for scope, idx in scopes:
            mask = pareto_mask_columns(nat[idx], rob[idx])
            hv = hypervolume_columns(nat[idx], rob[idx])
            part = meta.iloc[idx].copy()
            part.insert(0, "scope", scope)
            part["natural_acc"], part["natural_ci_low"], part["natural_ci_high"] = (v[idx] for v in ci["natural"])
            part["robust_acc"], part["ci_low"], part["ci_high"] = (v[idx] for v in ci["robust"])
            part["on_front"] = mask[:, 0]
            part["p_front"] = mask[:, 1:].mean(1) if resamples else mask[:, 0].astype(float)
            pts.append(part)
            hv_lo, hv_hi = (np.percentile(hv[1:], [2.5, 97.5]) if resamples else (hv[0], hv[0]))
            hvs.append({"attack": cell.attack, "eps": cell.eps, "norm": cell.norm, "scope": scope,
                        "n_configs": len(idx), "hypervolume": hv[0], "ci_low": hv_lo, "ci_high": hv_hi})
            fits = np.array([frontier_curve(nat[idx][mask[:, b], b], rob[idx][mask[:, b], b], grid)
                             for b in range(mask.shape[1])])
            fit, boot = fits[0], fits[1:]
            coverage = np.isfinite(boot).mean(0) if resamples else np.isfinite(fit).astype(float)
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lo, hi = (np.nanpercentile(boot, [2.5, 97.5], axis=0) if resamples else (fit, fit))
            lo, hi = np.where(coverage >= 0.5, lo, np.nan), np.where(coverage >= 0.5, hi, np.nan)
            curves.append(pd.DataFrame({"attack": cell.attack, "eps": cell.eps, "norm": cell.norm, "scope": scope,
                                        "natural_acc": grid, "robust_fit": fit, "band_low": lo, "band_high": hi,
                                        "coverage": coverage}))
        for p in pts[-len(scopes):]:
            p.insert(0, "norm", cell.norm)
            p.insert(0, "eps", cell.eps)
            p.insert(0, "attack", cell.attack)
    return Fronts(pd.concat(pts, ignore_index=True) if pts else pd.DataFrame(),
                  pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(), pd.DataFrame(hvs), resamples)
