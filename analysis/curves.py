"""Accuracy-vs-ε curves and minimal-distortion statistics from minimal-perturbation attacks (norm "none").

A minimal-distortion attack returns, per example, the smallest adversarial it found; the example is robust at budget ε
when it is classified correctly and no adversarial within ε was found. Every point carries a Wilson 95 % interval.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from advsweep.evaluation.stats import wilson_interval
from advsweep.registry import SpecError
from advsweep.storage.parquet import read_examples, read_trials, write_atomic

MEASURES = {"l2": "ℓ2", "linf": "ℓ∞", "rms": "RMS per pixel"}


def minimal_examples(sweep_dir: str | Path) -> pd.DataFrame:
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "trials").exists():
        raise SpecError(str(sweep_dir), "not a sweep directory (no trials/ table)")
    # ε = 0 rows of a minimal-distortion attack hold the adversarial as found (ε > 0 rows are thresholds of it).
    df = read_examples(sweep_dir, filter=(ds.field("norm") == "none") & (ds.field("eps") == 0.0)).to_pandas()
    if df.empty:
        return df
    for col in ("trial_id", "attack"):
        df[col] = df[col].astype(str)
    trials = read_trials(sweep_dir).to_pandas()[["trial_id", "trial_name", "model_name", "trial_index"]]
    df = df.merge(trials, on="trial_id", how="left")
    clean_ok = df["clean_pred"] == df["label"]
    found = clean_ok & (df["adv_pred"] != df["label"])
    for m in MEASURES:  # distance to the nearest adversarial found: 0 if misclassified already, inf if none found
        df[f"min_{m}"] = np.where(~clean_ok, 0.0, np.where(found, df[m], np.inf))
    return df


def accuracy_curves(df: pd.DataFrame, grid_points: int = 40) -> pd.DataFrame:
    rows = []
    for (trial_id, attack), g in df.groupby(["trial_id", "attack"], sort=True):
        for m in MEASURES:
            finite = g[f"min_{m}"][np.isfinite(g[f"min_{m}"])]
            top = float(finite.max()) if len(finite) else 1.0
            for eps in np.linspace(0.0, top * 1.05 if top > 0 else 1.0, grid_points):
                k = int((g[f"min_{m}"] > eps).sum())
                lo, hi = wilson_interval(k, len(g))
                rows.append({"trial_id": trial_id, "trial_name": g["trial_name"].iloc[0],
                             "model_name": g["model_name"].iloc[0],
                             "trial_index": int(g["trial_index"].iloc[0]), "attack": attack, "measure": m,
                             "eps": float(eps), "n": len(g), "robust_acc": k / len(g), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def distortion_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per trial × attack: how often an adversarial was found, and the median/mean minimal distortion over the
    correctly classified examples where one was found (Gu & Rigazio report the mean)."""
    rows = []
    for (trial_id, attack), g in df.groupby(["trial_id", "attack"], sort=True):
        ok = g[g["clean_pred"] == g["label"]]
        found = ok[np.isfinite(ok["min_l2"])]
        row = {"trial_id": trial_id, "trial_name": g["trial_name"].iloc[0], "model_name": g["model_name"].iloc[0],
               "attack": attack, "n": len(g),
               "n_correct": len(ok), "found_rate": len(found) / len(ok) if len(ok) else float("nan")}
        for m in MEASURES:
            row[f"median_{m}"] = float(found[f"min_{m}"].median()) if len(found) else float("nan")
            row[f"mean_{m}"] = float(found[f"min_{m}"].mean()) if len(found) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def write_curves(sweep_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    from advsweep.analysis.plots import plot_curves

    sweep_dir = Path(sweep_dir)
    df = minimal_examples(sweep_dir)
    if df.empty:
        raise SpecError(str(sweep_dir), "no minimal-distortion attack results (run one, e.g. deepfool, via eval)")
    out = Path(out_dir) if out_dir else sweep_dir / "curves"
    out.mkdir(parents=True, exist_ok=True)
    curves, summary = accuracy_curves(df), distortion_summary(df)
    sweep_id = str(df["sweep_id"].iloc[0])
    written = [plot_curves(curves[(curves["attack"] == a) & (curves["measure"] == m)], a, MEASURES[m],
                           out / f"{a}_{m}.png") for a in sorted(curves["attack"].unique()) for m in MEASURES]
    write_atomic(pa.Table.from_pandas(curves, preserve_index=False), out / "curves.parquet", sweep_id)
    summary.to_csv(out / "min_distortion.csv", index=False)
    return [*written, out / "curves.parquet", out / "min_distortion.csv"]
