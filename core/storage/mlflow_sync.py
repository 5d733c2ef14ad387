"""`advsweep mlflow-sync DIR`: replay a sweep's Parquet tables into a tracking server without duplicating runs.

After a tracking-server outage (or a sweep run with MLflow unreachable) the Parquet tables are complete and MLflow
is not. Runs are found by the same tags the sweep uses (sweep_id + kind, ray_trial_id) or created; per-epoch
metrics are logged only at steps a run does not have yet, final and attack metrics only where missing, checkpoint
artifacts only if absent, and each run ends with its trial's status. Running it twice changes nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from advsweep.registry import SpecError
from advsweep.storage import schema as S
from advsweep.storage.parquet import read_epochs, read_robustness, trial_rows, trials_table, write_atomic
from advsweep.storage.tracking import (RUN_STATUS, _client, _find_run, _metrics_batch, _params_batch, probe,
                                       trial_runs, use_short_retries)
from advsweep.versions import package_versions

FINAL_METRICS = ("natural_acc", "natural_ci_low", "natural_ci_high")  # per-epoch ones are replayed from epochs/
EPOCH_METRICS = ("loss", "train_acc", "val_acc", "val_robust_acc", "lr", "epoch_time_s", "nfe_forward", "nfe_backward")


def _log_missing(client, run, metrics: dict[str, float], step: int) -> int:
    missing = {k: v for k, v in metrics.items() if v is not None and v == v and k not in run.data.metrics}
    _metrics_batch(client, run.info.run_id, missing, step)
    return len(missing)


def sync(out_dir: str | Path, uri: str) -> dict[str, int]:
    """Replay `out_dir` into the tracking store at `uri`; returns counts of what was added."""
    from mlflow.entities import Metric

    out = Path(out_dir).resolve()
    use_short_retries()
    manifest_file = out / "sweep.json"
    if not manifest_file.is_file():
        raise SpecError(str(out), "not a sweep directory (no sweep.json)")
    if not list((out / "trials").glob("*.parquet")):
        raise SpecError(str(out), "has no trials table yet; resume the sweep first (advsweep resume DIR)")
    why = probe(uri)
    if why:
        raise SpecError("--mlflow-uri", f"tracking server {uri} is not reachable ({why})")
    manifest = json.loads(manifest_file.read_text())
    sweep_id = manifest["sweep_id"]
    client = _client(uri)
    counts = {"runs_created": 0, "metrics": 0, "artifacts": 0}

    name = f"advsweep/{sweep_id}"
    exp = client.get_experiment_by_name(name)
    experiment_id = exp.experiment_id if exp else client.create_experiment(name, tags={"sweep_id": sweep_id})
    parent_tags = {"sweep_id": sweep_id, "kind": "sweep"}
    parent = _find_run(client, experiment_id, parent_tags)
    if parent is None:
        parent = client.create_run(experiment_id, run_name=sweep_id, tags={
            **parent_tags, **{f"version.{k}": v for k, v in manifest.get("versions", package_versions()).items()}
        }).info.run_id
        counts["runs_created"] += 1
        _params_batch(client, parent, {"spec_name": manifest.get("name"), "spec_digest": manifest.get("spec_digest"),
                                       **{f"data.{k}": v for k, v in manifest.get("data", {}).items()}})
        client.log_artifact(parent, str(out / "spec.yaml"))

    trials = trial_rows(out)
    epochs = read_epochs(out).to_pylist()
    robustness = [r for r in read_robustness(out).to_pylist() if r.get("status") in (None, "ok")]
    existing = trial_runs(client, experiment_id, sweep_id)
    changed = False
    for row in trials:
        tid = row["trial_id"]
        run = existing.get(tid)
        if run is None:
            run_id = client.create_run(experiment_id, run_name=row.get("trial_name") or tid, tags={
                "sweep_id": sweep_id, "ray_trial_id": tid, "mlflow.parentRunId": parent, "kind": "trial",
                **{f"version.{k}": row.get(f"version_{k}") or "" for k in S.VERSION_COLUMNS}}).info.run_id
            counts["runs_created"] += 1
            run = client.get_run(run_id)
        run_id = run.info.run_id
        if row.get("mlflow_run_id") != run_id:
            row["mlflow_run_id"], changed = run_id, True
        params = row["config"]
        missing = {k: v for k, v in params.items() if k not in run.data.params}
        if missing:
            _params_batch(client, run_id, missing)
        # per-epoch history: only steps the run does not have
        mine = [e for e in epochs if e["trial_id"] == tid]
        items = []
        now = int(time.time() * 1000)
        for key in EPOCH_METRICS:
            have = {m.step for m in client.get_metric_history(run_id, key)} if key in run.data.metrics else set()
            items += [Metric(key, float(e[key]), now, int(e["epoch"])) for e in mine
                      if e.get(key) is not None and e[key] == e[key] and int(e["epoch"]) not in have]
        for i in range(0, len(items), 900):
            client.log_batch(run_id, metrics=items[i:i + 900])
        counts["metrics"] += len(items)
        final = {k: row.get(k) for k in FINAL_METRICS}
        for r in robustness:
            if r["trial_id"] == tid:
                key = f"robust_acc/{r['attack']}/eps_{r['eps']:g}"
                final.update({key: r["robust_acc"], f"{key}/ci_low": r["ci_low"], f"{key}/ci_high": r["ci_high"]})
        counts["metrics"] += _log_missing(client, client.get_run(run_id), final, int(row.get("epochs_completed") or 0))
        ckpt = row.get("checkpoint")
        if ckpt and row["status"] == "completed" and not client.list_artifacts(run_id, "checkpoint"):
            d = Path(ckpt)
            for f in sorted(d.glob("*")) if d.is_dir() else []:
                client.log_artifact(run_id, str(f), "checkpoint")
                counts["artifacts"] += 1
        want = RUN_STATUS.get(row["status"], "FAILED")
        if run.info.status != want:
            client.set_terminated(run_id, want)
    status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(manifest.get("status"), "KILLED")
    if client.get_run(parent).info.status != status:
        client.set_terminated(parent, status)
    if changed:
        write_atomic(trials_table(trials, out), out / "trials" / "part-0.parquet", sweep_id)
    return counts
