"""The sweep run's summary in MLflow, built from the Parquet tables: completed trials, the best robust accuracy per
attack × ε (with its interval and the trial that reached it), the front's hypervolume, and the trials table as
`results/trials.csv` (one row per trial, named) beside the raw `results/trials.parquet`."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advsweep.storage.mlflow_records import attack_metrics


@dataclass
class Summary:
    metrics: dict[str, float]
    note: str  # markdown: the spec's description, then the summary
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # artifact name → rows


def trial_names(spec, rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """trial_id → (trial name, config name): the rows' own `trial_name`/`config_name` (written by the driver, added
    to version 2 tables on read); the spec names a row only where they are missing."""
    from advsweep.spec import TrialConfig

    out = {}
    for r in rows:
        if r.get("trial_name"):
            out[r["trial_id"]] = (r["trial_name"], r.get("config_name") or r["trial_name"])
            continue
        try:
            cfg = TrialConfig.model_validate(json.loads(r["config_json"]))
            out[r["trial_id"]] = spec.name_of(cfg)
        except Exception:  # a row the spec cannot name (should not happen): its id
            out[r["trial_id"]] = (r["trial_id"], r["trial_id"])
    return out


def _ci(v: float, lo: float, hi: float) -> str:
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def build_summary(out_dir: str | Path, spec, rows: list[dict[str, Any]]) -> Summary:
    from advsweep.analysis.frontier import compute_fronts, load_points
    from advsweep.storage.parquet import read_robustness

    out = Path(out_dir)
    names = trial_names(spec, rows)
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    n_done = by_status.get("completed", 0)
    metrics: dict[str, float] = {"n_trials": float(len(rows)), "n_completed": float(n_done)}
    lines = [spec.raw.description.strip(), ""] if spec.raw.description.strip() else []
    states = ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()) if k != "completed")
    lines.append(f"**{n_done}/{len(rows)} trials completed**" + (f" ({states})." if states else "."))

    fronts = compute_fronts(load_points(out)) if n_done else None
    if fronts is not None and len(fronts):
        lines += ["", "| attack | ε | best robust acc [95 % CI] | trial | its natural acc | hypervolume |",
                  "|---|---|---|---|---|---|"]
        for (attack, eps), g in fronts.groupby(["attack", "eps"], sort=True):
            g = g.assign(name=[names.get(t, (t, t))[0] for t in g["trial_id"]])
            # highest robust accuracy; ties: higher natural accuracy, then the name (same answer on any machine)
            best = g.sort_values(["robust_acc", "natural_acc", "name"], ascending=[False, False, True]).iloc[0]
            key = f"{attack}/eps_{eps:g}"
            metrics.update({f"best_robust_acc/{key}": float(best.robust_acc),
                            f"best_robust_acc/{key}/ci_low": float(best.ci_low),
                            f"best_robust_acc/{key}/ci_high": float(best.ci_high),
                            f"hypervolume/{key}": float(best.hypervolume)})
            lines.append(f"| {attack} | {eps:g} | {_ci(best.robust_acc, best.ci_low, best.ci_high)} | {best['name']} | "
                         f"{_ci(best.natural_acc, best.natural_ci_low, best.natural_ci_high)} | "
                         f"{best.hypervolume:.3f} |")
    lines += ["", "Per trial: artifact `results/trials.csv` (raw table: `results/trials.parquet`); "
                  "fronts: `frontier/`."]

    rob = [r for r in read_robustness(out).to_pylist()] if (out / "robustness").exists() else []
    per_trial = attack_metrics(rob)
    table = []
    for r in rows:
        name, cfg_name = names[r["trial_id"]]
        row = {"trial_name": name, "config_name": cfg_name, "trial_id": r["trial_id"], "status": r["status"],
               "model": r.get("model_name"), "seed": r.get("seed"), "config_id": r.get("config_id"),
               "natural_acc": r.get("natural_acc"), "natural_ci_low": r.get("natural_ci_low"),
               "natural_ci_high": r.get("natural_ci_high"), "epochs_completed": r.get("epochs_completed"),
               "nfe_forward": r.get("nfe_forward"), "train_time_s": r.get("train_time_s"),
               "mlflow_run_id": r.get("mlflow_run_id")}
        row.update(sorted(per_trial.get(r["trial_id"], {}).items()))
        table.append(row)
    return Summary(metrics, "\n".join(lines), {"results/trials.csv": table})


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path
