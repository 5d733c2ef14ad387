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


def _one_blas_thread():
    """The [trials × examples] @ [examples × draws] products are a few GFLOP; on a shared machine BLAS threads
    that spin for cores other processes hold cost more than they give (threadpoolctl is optional)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
    x, y = natural[order], robust[order]  # equal natural accuracy on a front means equal robust accuracy
    out = np.interp(grid, x, y)
    out[grid > x[-1]] = np.nan
    return out


def _trial_rates(cell: Cell, wt: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[trials × draws] natural and robust accuracy under every weight column of `wt` ([examples × draws])."""
    if cell.present.all():
        n = np.broadcast_to(total, (len(cell.present), len(total)))
    else:
        n = cell.present.astype(np.float32) @ wt
    with np.errstate(invalid="ignore", divide="ignore"):
        nat = ((cell.clean & cell.present).astype(np.float32) @ wt).astype(np.float64) / n
        rob = ((cell.robust & cell.present).astype(np.float32) @ wt).astype(np.float64) / n
    return nat, rob


def _percentiles(draws: np.ndarray, qs=(2.5, 97.5)) -> list[np.ndarray]:
    """Per column of [draws × points], linear-interpolated percentiles over the finite values (NaN where none);
    a vectorised np.nanpercentile."""
    s = np.sort(draws, axis=0)  # NaN sorts last
    k = np.isfinite(s).sum(0)
    cols = np.arange(s.shape[1])
    out = []
    for q in qs:
        pos = q / 100 * np.maximum(k - 1, 0)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
        v = s[lo, cols] + (s[hi, cols] - s[lo, cols]) * (pos - lo)
        out.append(np.where(k > 0, v, np.nan))
    return out


class _Trials:
    """Per-trial columns as numpy arrays (pandas row access is too slow for 200 trials × 16 cells)."""

    def __init__(self, trials: pd.DataFrame):
        self.key = trials["config_key"].astype(str).to_numpy()
        self.label = trials["label"].astype(str).to_numpy()
        self.model = trials["model_name"].astype(str).to_numpy()
        self.trial_id = trials["trial_id"].astype(str).to_numpy()
        self.index = trials["trial_index"].astype(int).to_numpy()


def _config_rates(tr: _Trials, rows: np.ndarray, nat: np.ndarray, rob: np.ndarray, seed: int, extra: dict):
    """Average replicates per configuration; every draw also resamples the seeds within each configuration.
    `extra`: per-trial arrays averaged (success_rate) or maximised (n_examples) per configuration."""
    rng = np.random.default_rng(seed + 1)
    keys, first, inverse = np.unique(tr.key[rows], return_index=True, return_inverse=True)
    order = np.argsort(first)  # configurations in trial order
    draws = nat.shape[1] - 1
    out_nat, out_rob, meta = [], [], []
    for g in order:
        reps = rows[inverse == g]
        k = len(reps)
        pick = rng.integers(0, k, size=(k, draws)) if k > 1 else np.zeros((1, draws), int)
        for m, target in ((nat, out_nat), (rob, out_rob)):
            sub = m[reps]
            target.append(np.concatenate([sub[:, :1].mean(0), np.take_along_axis(sub[:, 1:], pick, 0).mean(0)]))
        r0 = reps[0]
        meta.append({"config_key": keys[g], "label": tr.label[r0], "model_name": tr.model[r0],
                     "trial_ids": ",".join(tr.trial_id[reps]), "trial_index": int(tr.index[r0]), "n_seeds": k,
                     "seed_sd_natural": float(nat[reps, 0].std(ddof=1)) if k > 1 else np.nan,
                     "seed_sd_robust": float(rob[reps, 0].std(ddof=1)) if k > 1 else np.nan,
                     "success_rate": float(np.nanmean(extra["success_rate"][reps]))
                     if np.isfinite(extra["success_rate"][reps]).any() else np.nan,
                     "n_examples": int(extra["n_examples"][reps].max())})
    return np.array(out_nat), np.array(out_rob), pd.DataFrame(meta)


def analyse_fronts(sweep: Sweep, resamples: int = 1000, seed: int = 0, cells: list[Cell] | None = None) -> Fronts:
    wt = np.ascontiguousarray(bootstrap_weights(len(sweep.examples), resamples, seed).T)
    total = wt.sum(0)
    tr = _Trials(sweep.trials)
    pts, curves, hvs = [], [], []
    for cell in cells or [c for c in sweep.cells.values() if c.norm != "none" or c.derived_from]:
        rows = np.flatnonzero(cell.has())
        if not len(rows):
            continue
        with _one_blas_thread():
            t_nat, t_rob = _trial_rates(cell, wt, total)
        nat, rob, meta = _config_rates(tr, rows, t_nat, t_rob, seed, {
            "success_rate": cell.success_rate(), "n_examples": cell.present.sum(1)})
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
            nat_t, rob_t, mask_t = (np.ascontiguousarray(m.T) for m in (nat[idx], rob[idx], mask))
            fits = np.array([frontier_curve(nat_t[b][mask_t[b]], rob_t[b][mask_t[b]], grid)
                             for b in range(len(mask_t))])
            fit, boot = fits[0], fits[1:]
            coverage = np.isfinite(boot).mean(0) if resamples else np.isfinite(fit).astype(float)
            lo, hi = _percentiles(boot) if resamples else (fit, fit)
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
