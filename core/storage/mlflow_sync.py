"""`advsweep mlflow-sync DIR`: replay a sweep's Parquet tables into a tracking server without duplicating runs.

After a tracking-server outage (or a sweep run with MLflow unreachable) the Parquet tables are complete and MLflow
is not. Runs are found by the same tags the sweep uses (sweep_id + kind, ray_trial_id) or created; per-epoch
metrics are logged only at steps a run does not have yet, final and attack metrics only where missing or different,
params only where missing, checkpoint and summary artifacts only if absent, and each run ends with its trial's
status. Names, tags, the experiment's model-training mark and the sweep run's description and summary are brought
to what the sweep writes today (runs logged by an older version get their trial names; trial runs are no longer
nested under the sweep run). Running it twice changes nothing.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from advsweep.registry import SpecError
from advsweep.storage import schema as S
from advsweep.storage.parquet import read_epochs, read_robustness, trial_rows, trials_table, write_atomic
from advsweep.storage.mlflow_records import (NOTE, attack_metrics, attack_params, changed_metrics, missing_params,
                                             trial_note, trial_tags)
from advsweep.storage.tracking import (RUN_STATUS, _client, _find_run, _metrics_batch, _params_batch, _tags_batch,
                                       ensure_experiment, log_named_artifacts, probe, trial_runs, use_short_retries)
from advsweep.versions import package_versions

FINAL_METRICS = ("natural_acc", "natural_ci_low", "natural_ci_high")  # per-epoch ones are replayed from epochs/
EPOCH_METRICS = ("loss", "train_acc", "val_acc", "val_robust_acc", "lr", "epoch_time_s", "nfe_forward", "nfe_backward")


def _log_changed(client, run, metrics: dict[str, float], step: int) -> int:
    new = changed_metrics(run, metrics)
    _metrics_batch(client, run.info.run_id, new, step)
    return len(new)


def _attacks_by_trial(out: Path) -> dict[str, dict[str, str]]:
    """trial_id → `attack.<label>.*` params of every attack in its examples (what the evaluation stage logs)."""
    from advsweep.storage.parquet import read_examples

    t = read_examples(out, columns=["trial_id", "attack", "attack_name", "attack_params", "eps"])
    if t.num_rows == 0:
        return {}
    groups = t.group_by(["trial_id", "attack", "attack_name", "attack_params", "eps"]).aggregate([]).to_pylist()
    eps: dict[tuple, list[float]] = {}
    for g in groups:
        eps.setdefault((str(g["trial_id"]), str(g["attack"]), g["attack_name"], g["attack_params"]), []).append(g["eps"])
    out_params: dict[str, dict[str, str]] = {}
    for (trial_id, label, name, params_json), e in eps.items():
        options = json.loads(params_json or "{}")
        source = options.pop("source_trial", None)
        p = attack_params(label, name, options, e)
        if source is not None:
            p[f"attack.{label}.source_trial"] = str(source)
        out_params.setdefault(trial_id, {}).update(p)
    return out_params


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
    from advsweep.spec import TrialConfig, load_spec
    from advsweep.sweep.summary import build_summary, trial_names, write_csv

    spec = load_spec(out / "spec.yaml")
    client = _client(uri)
    counts = {"runs_created": 0, "metrics": 0, "artifacts": 0}

    artifacts = (out / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    experiment_id = ensure_experiment(client, sweep_id, spec.raw.description, artifacts)
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
    names = trial_names(spec, trials)
    epochs = read_epochs(out).to_pylist()
    robustness = [r for r in read_robustness(out).to_pylist() if r.get("status") in (None, "ok")]
    attack_results = attack_metrics(robustness)
    attack_settings = _attacks_by_trial(out)
    existing = trial_runs(client, experiment_id, sweep_id)
    changed = False
    for row in trials:
        tid = row["trial_id"]
        cfg = TrialConfig.model_validate(json.loads(row["config_json"]))
        run_name, config_name = names[tid]
        tags = {**trial_tags(cfg, run_name, config_name, spec.raw.data.dataset), "sweep_run_id": parent}
        run = existing.get(tid)
        if run is None:
            run_id = client.create_run(experiment_id, run_name=run_name, tags={
                "sweep_id": sweep_id, "ray_trial_id": tid, "kind": "trial", **tags,
                **{f"version.{k}": row.get(f"version_{k}") or "" for k in S.VERSION_COLUMNS}}).info.run_id
            counts["runs_created"] += 1
            run = client.get_run(run_id)
        run_id = run.info.run_id
        if run.info.run_name != run_name:
            client.update_run(run_id, name=run_name)
        stale = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        if stale:
            _tags_batch(client, run_id, stale)
        if "mlflow.parentRunId" in run.data.tags:  # logged nested by an older version: list it with the trials
            client.delete_tag(run_id, "mlflow.parentRunId")
        if row.get("mlflow_run_id") != run_id:
            row["mlflow_run_id"], changed = run_id, True
        params = {**cfg.flat(), "seed": cfg.seed, **({"params": row["params"]} if row.get("params") else {}),
                  **attack_settings.get(tid, {})}
        missing = missing_params(run, params)
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
        counts["metrics"] += _log_changed(client, client.get_run(run_id), final, int(row.get("epochs_completed") or 0))
        counts["metrics"] += _log_changed(client, client.get_run(run_id), attack_results.get(tid, {}), 0)
        if row["status"] == "completed":
            note = trial_note(run_name, row, attack_results.get(tid, {}))
            if run.data.tags.get(NOTE) != note:
                client.set_tag(run_id, NOTE, note)
        ckpt = row.get("checkpoint")
        if ckpt and row["status"] == "completed" and not client.list_artifacts(run_id, "checkpoint"):
            d = Path(ckpt)
            for f in sorted(d.glob("*")) if d.is_dir() else []:
                client.log_artifact(run_id, str(f), "checkpoint")
                counts["artifacts"] += 1
        want = RUN_STATUS.get(row["status"], "FAILED")
        if run.info.status != want:
            client.set_terminated(run_id, want)
    if changed:
        write_atomic(trials_table(trials, out), out / "trials" / "part-0.parquet", sweep_id)
    summary = build_summary(out, spec, trials)
    parent_run = client.get_run(parent)
    counts["metrics"] += _log_changed(client, parent_run, summary.metrics, 0)
    if parent_run.data.tags.get(NOTE) != summary.note:
        client.set_tag(parent, NOTE, summary.note)
    if not client.list_artifacts(parent, "results"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            files = [(write_csv(rows, Path(tmp) / Path(name).name), name) for name, rows in summary.tables.items()]
            files.append((out / "trials" / "part-0.parquet", "results/trials.parquet"))
            counts["artifacts"] += log_named_artifacts(client, parent, files)
    status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(manifest.get("status"), "KILLED")
    if client.get_run(parent).info.status != status:
        client.set_terminated(parent, status)
    return counts
