"""What a sweep writes into MLflow besides training curves: experiment tags, trial-run tags, attack settings as
params, attack results as metrics, and the sweep run's summary. Shared by the sweep (driver, trainable, evaluation
stage) and `advsweep mlflow-sync`, so a replay writes exactly what the sweep would have written.

Metric names on a trial run:
    robust_acc/<attack>/eps_<ε>  (+ /ci_low, /ci_high)   accuracy under the attack at each ε > 0 (Wilson 95 % CI)
    success_rate/<attack>                                 distance-reporting attacks (minimal distortion, boundary,
                                                          cw_l2): share of clean-correct examples an adversarial was
                                                          found for, at any distance
    median_l2/<attack>, median_linf/<attack>              minimal-distortion attacks: median distance of the
                                                          adversarials found (unbounded run)
A minimal-distortion attack's unbounded result is therefore never reported as an accuracy at ε = 0; its rows at the
listed ε > 0 (distance found ≤ ε) are ordinary `robust_acc` values.
"""
from __future__ import annotations

import json
import math
from typing import Any

# MLflow 3 stores the experiment type in this tag ("custom_model_development" = model training; the UI writes it
# when a user picks the type). MLflow 3.17's UI takes the view from its sidebar switch instead, so links to the
# experiment carry `?workflowType=machine_learning` (see `ui_url`).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE = "mlflow.note.content"  # rendered as the description of an experiment or a run
UI_QUERY = "workflowType=machine_learning"


def experiment_tags(sweep_id: str, description: str = "") -> dict[str, str]:
    tags = {"sweep_id": sweep_id, EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1]}
    if description:
        tags[NOTE] = description
    return tags


def ui_url(server: str, experiment_id: str, run_id: str | None = None) -> str:
    """Link into the MLflow UI that opens the model-training view (runs table / run page)."""
    base = f"{server.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{base}/runs/{run_id}?{UI_QUERY}" if run_id else f"{base}?{UI_QUERY}"


def trial_tags(cfg, trial_name: str, config_name: str, dataset: str | None) -> dict[str, str]:
    """Searchable tags of a trial run: `tags.model = 'odenet' and tags.solver = 'dopri5'`."""
    tags = {"trial_name": trial_name, "config_name": config_name, "config_id": cfg.config_id,
            "model": str(cfg.model["name"]), "recipe": str(cfg.training.recipe.get("name", "")), "seed": str(cfg.seed)}
    if cfg.model.get("solver") is not None:
        tags["solver"] = str(cfg.model["solver"])
    if dataset:
        tags["dataset"] = dataset
    return tags


def _show(v: Any) -> str:
    if v is None:
        return "auto"  # the attack derives it (e.g. PGD's step size from ε and steps)
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), default=str)
    return str(v)


def attack_params(label: str, name: str, options: dict[str, Any], eps: list[float]) -> dict[str, str]:
    """`attack.<label>.<setting>` params: registry name, norm, ε list and every option with its default filled in."""
    from advsweep.attacks import ATTACKS

    cls = ATTACKS.get(name)
    try:
        settings = ATTACKS.validate(name, dict(options), f"attack {label}")
    except Exception:  # options recorded by another version: log them as given
        settings = dict(options)
    norm = cls.norm if cls.norm != "none" else str(settings.get("p", "l2"))
    out = {"name": name, "norm": norm, "eps": _show(sorted(float(e) for e in eps if cls.norm != "none" or e > 0)),
           "minimal_distortion": str(cls.norm == "none").lower()}
    out.update({k: _show(v) for k, v in settings.items() if k != "source_model"})
    return {f"attack.{label}.{k}": v for k, v in out.items()}


def _ok(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def attack_metrics(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """trial_id → metrics from robustness rows (status ok). See the module docstring for the names."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("status") not in (None, "ok"):
            continue
        m = out.setdefault(r["trial_id"], {})
        a, eps = r["attack"], float(r["eps"])
        if r["norm"] == "none" and eps == 0:  # the unbounded run of a minimal-distortion attack
            for key, col in ((f"success_rate/{a}", "success_rate"), (f"median_l2/{a}", "median_l2_success"),
                             (f"median_linf/{a}", "median_linf_success")):
                if _ok(r.get(col)):
                    m[key] = float(r[col])
            continue
        key = f"robust_acc/{a}/eps_{eps:g}"
        m.update({key: r["robust_acc"], f"{key}/ci_low": r["ci_low"], f"{key}/ci_high": r["ci_high"]})
        if _ok(r.get("found_rate")) and f"success_rate/{a}" not in m:
            m[f"success_rate/{a}"] = float(r["found_rate"])
    return {t: {k: float(v) for k, v in m.items() if _ok(v)} for t, m in out.items()}


def changed_metrics(run, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics a run does not hold yet with this latest value: logging the rest again would only repeat them."""
    have = run.data.metrics
    return {k: v for k, v in metrics.items() if _ok(v) and have.get(k) != v}


def missing_params(run, params: dict[str, Any]) -> dict[str, Any]:
    """Params are immutable in MLflow: log only keys the run does not have."""
    return {k: v for k, v in params.items() if k not in run.data.params}


def trial_note(trial_name: str, row: dict[str, Any], metrics: dict[str, float]) -> str:
    """A trial run's description (markdown): natural and robust accuracies with their intervals, minimal-distortion
    results — the numbers a reader looks for first on the run page."""
    def acc(v, lo, hi):
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if _ok(v) and _ok(lo) and _ok(hi) else "-"

    lines = [f"| {trial_name} | accuracy [95 % CI] |", "|---|---|",
             f"| natural | {acc(row.get('natural_acc'), row.get('natural_ci_low'), row.get('natural_ci_high'))} |"]
    robust = sorted((k for k in metrics if k.startswith("robust_acc/") and not k.endswith(("/ci_low", "/ci_high"))),
                    key=lambda k: (k.split("/")[1], float(k.rsplit("_", 1)[1])))
    for k in robust:
        _, attack, eps = k.split("/")
        lines.append(f"| {attack} ε={eps[4:]} | {acc(metrics[k], metrics.get(k + '/ci_low'), metrics.get(k + '/ci_high'))} |")
    for k in sorted(m for m in metrics if m.startswith("success_rate/")):
        attack = k.split("/", 1)[1]
        med = metrics.get(f"median_l2/{attack}")
        dist = f", median ℓ2 distance {med:.3g}" if med is not None else ""
        lines.append(f"| {attack} (unbounded) | adversarial found for {metrics[k]:.1%} of correctly classified{dist} |")
    return "\n".join(lines)
