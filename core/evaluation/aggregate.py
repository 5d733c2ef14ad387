"""Per (trial, attack, ε) aggregates from the examples table, plus the per-example worst case over attacks."""
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
    success = g[(g["clean_pred"] == g["label"]) & (g["adv_pred"] != g["label"])]
    return {
        "n": n, "n_robust": k, "robust_acc": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
        "clean_acc": float((g["clean_pred"] == g["label"]).mean()) if n else float("nan"),
        "median_l2_success": float(success["l2"].median()) if len(success) else None,
        "median_linf_success": float(success["linf"].median()) if len(success) else None,
        "mean_grad_norm": float(g["grad_norm"].mean()) if g["grad_norm"].notna().any() else None,
    }


def robustness_table(examples: pa.Table) -> pa.Table:
    """Aggregate rows, then one `ensemble` row per (trial, norm, ε) shared by ≥ 2 attack configurations: an example
    counts as robust only if it survived every attack (the worst case per example)."""
    if examples.num_rows == 0:
        return S.ROBUSTNESS.empty_table()
    df = examples.to_pandas()
    for col in ("trial_id", "attack"):
        df[col] = df[col].astype(str)
    out = []
    keys = ["sweep_id", "trial_id", "attack", "attack_name", "norm", "eps"]
    for key, g in df.groupby(keys, sort=True, observed=True):
        out.append({**dict(zip(keys, key)), **_summarise(g)})
    eps_attacks = df[df["norm"] != "none"].groupby(["sweep_id", "trial_id", "norm", "eps"], observed=True)
    for (sweep_id, trial_id, norm, eps), g in eps_attacks:
        if g["attack"].nunique() < 2:
            continue
        worst = g.sort_values("robust").groupby("example_index", observed=True).first().reset_index()
        worst["robust"] = g.groupby("example_index", observed=True)["robust"].all().reindex(worst["example_index"]).values
        out.append({"sweep_id": sweep_id, "trial_id": trial_id, "attack": S.ENSEMBLE, "attack_name": S.ENSEMBLE,
                    "norm": norm, "eps": eps, **_summarise(worst)})
    return pa.Table.from_pylist(out, schema=S.ROBUSTNESS)
