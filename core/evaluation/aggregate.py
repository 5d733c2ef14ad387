"""Per (trial, attack, ε) aggregates from the examples table, plus the per-example worst case over attacks and one
`not_applicable` row per ε for each (trial, attack) the engine skipped."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from advsweep.evaluation.stats import wilson_interval
from advsweep.storage import schema as S


def _summarise(g: pd.DataFrame) -> dict:
    n = len(g)
    k = int(g["robust"].sum())
    lo, hi = wilson_interval(k, n)
    correct = g["clean_pred"] == g["label"]
    success = g[correct & (g["adv_pred"] != g["label"])]
    n_correct = int(correct.sum())
    has_distance = g["distance"].notna().any()
    return {
        "n": n, "n_robust": k, "robust_acc": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
        "clean_acc": float(correct.mean()) if n else float("nan"),
        "median_l2_success": float(success["l2"].median()) if len(success) else None,
        "median_linf_success": float(success["linf"].median()) if len(success) else None,
        "mean_grad_norm": float(g["grad_norm"].mean()) if g["grad_norm"].notna().any() else None,
        "success_rate": len(success) / n_correct if n_correct else None,
        "found_rate": (float(np.isfinite(g.loc[correct, "distance"].to_numpy(dtype=float)).mean())
                       if has_distance and n_correct else None),
        "mean_steps": float(g["steps"].mean()) if n else None,
        "status": "ok", "reason": None,
    }


def robustness_table(examples: pa.Table, skipped: pa.Table | None = None,
                     trials: list[dict] | None = None) -> pa.Table:
    """Aggregate rows, then one `ensemble` row per (trial, norm, ε) shared by ≥ 2 attack configurations: an example
    counts as robust only if it survived every attack (the worst case per example). `trials` (rows in the form
    parquet.trial_rows returns) fill each row's copy of its trial's name, model, recipe and natural accuracy."""
    out = []
    if examples.num_rows:
        df = examples.to_pandas()
        for col in ("trial_id", "attack"):
            df[col] = df[col].astype(str)
        keys = ["sweep_id", "trial_id", "attack", "attack_name", "norm", "eps"]
        for key, g in df.groupby(keys, sort=True, observed=True):
            out.append({**dict(zip(keys, key)), **_summarise(g)})
        eps_attacks = df[df["norm"] != "none"].groupby(["sweep_id", "trial_id", "norm", "eps"], observed=True)
        for (sweep_id, trial_id, norm, eps), g in eps_attacks:
            if g["attack"].nunique() < 2:
                continue
            worst = g.sort_values("robust").groupby("example_index", observed=True).first().reset_index()
            worst["robust"] = (g.groupby("example_index", observed=True)["robust"].all()
                               .reindex(worst["example_index"]).values)
            row = _summarise(worst)
            row.update(success_rate=None, found_rate=None, mean_steps=None)  # mixed attacks: not meaningful
            out.append({"sweep_id": sweep_id, "trial_id": trial_id, "attack": S.ENSEMBLE, "attack_name": S.ENSEMBLE,
                        "norm": norm, "eps": eps, **row})
    for r in (skipped.to_pylist() if skipped is not None else []):
        for eps in r["eps"]:
            out.append({"sweep_id": r["sweep_id"], "trial_id": r["trial_id"], "attack": r["attack"],
                        "attack_name": r["attack_name"], "norm": r["norm"], "eps": eps, "n": 0, "n_robust": 0,
                        "status": "not_applicable", "reason": r["reason"]})
    if not out:
        return S.ROBUSTNESS.empty_table()
    by_id = {t["trial_id"]: S.robustness_trial_columns(t) for t in trials or []}
    out = [{**r, **by_id.get(r["trial_id"], {})} for r in out]
    return pa.Table.from_pylist(out, schema=S.ROBUSTNESS)
