"""MLflow logging: one experiment per sweep, a parent run for the sweep, one child run per trial.

Runs are found-or-created by deterministic tags (sweep_id, ray_trial_id), so a retried or restored trial continues its
run instead of creating a duplicate. Parquet is the source of truth; a tracking outage warns and never fails training.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from advsweep.versions import package_versions

# Workers talk to a server through these: fail in seconds, not the ~4 min of MLflow's default retry policy.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def resolve_tracking_uri(uri: str | None, out_dir: str | Path) -> str:
    """Explicit option, then MLFLOW_TRACKING_URI, then a sqlite store inside the sweep directory (never the cwd)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _safe(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # tracking must never take a trial down
        warnings.warn(f"MLflow {what} failed: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


def _find_run(client, experiment_id: str, tags: dict[str, str]) -> str | None:
    flt = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=2)
    return runs[0].info.run_id if runs else None


def _metrics_batch(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None and v == v]
    for i in range(0, len(items), 900):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=items[i:i + 900])


def _params_batch(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 90):  # and a batch at 100 params
        client.log_batch(run_id, params=items[i:i + 90])


class SweepTracker:
    """Driver side: experiment + parent run."""

    def __init__(self, uri: str, sweep_id: str, out_dir: str | Path):
        self.uri, self.sweep_id, self.out_dir = uri, sweep_id, Path(out_dir).resolve()
        self.client = _client(uri)
        self.experiment_id = ""
        self.run_id = ""

    def start(self, spec_file: Path, params: dict[str, Any]) -> tuple[str, str]:
        name = f"advsweep/{self.sweep_id}"
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            # A local sqlite store keeps artifacts beside it; a server decides for itself (--serve-artifacts).
            artifacts = (self.out_dir / "mlartifacts").as_uri() if self.uri.startswith("sqlite:") else None
            self.experiment_id = self.client.create_experiment(name, artifact_location=artifacts,
                                                               tags={"sweep_id": self.sweep_id})
        else:
            self.experiment_id = exp.experiment_id
        tags = {"sweep_id": self.sweep_id, "kind": "sweep"}
        self.run_id = _find_run(self.client, self.experiment_id, tags) or self.client.create_run(
            self.experiment_id, run_name=self.sweep_id,
            tags={**tags, **{f"version.{k}": v for k, v in package_versions().items()}}).info.run_id
        _params_batch(self.client, self.run_id, params)
        self.client.log_artifact(self.run_id, str(spec_file))
        return self.experiment_id, self.run_id

    def finish(self, metrics: dict[str, float], artifacts: list[Path], status: str = "FINISHED") -> None:
        _safe("parent metrics", lambda: _metrics_batch(self.client, self.run_id, metrics, 0))
        for a in artifacts:
            if a.exists():
                _safe("parent artifact", lambda a=a: self.client.log_artifact(self.run_id, str(a)))
        _safe("parent end", lambda: self.client.set_terminated(self.run_id, status))


class TrialTracker:
    """Trial side: the child run of one Tune trial."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, sweep_id: str, trial_id: str,
                 run_name: str, params: dict[str, Any]):
        self.client = _client(uri)
        tags = {"sweep_id": sweep_id, "ray_trial_id": trial_id}
        self.run_id = _safe("find run", lambda: _find_run(self.client, experiment_id, tags))
        if self.run_id is None:
            all_tags = {**tags, "mlflow.parentRunId": parent_run_id, "kind": "trial",
                        **{f"version.{k}": v for k, v in package_versions().items()}}
            run = _safe("create run", lambda: self.client.create_run(experiment_id, run_name=run_name, tags=all_tags))
            self.run_id = run.info.run_id if run else None
            if self.run_id:
                _safe("params", lambda: _params_batch(self.client, self.run_id, params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run_id:
            _safe("metrics", lambda: _metrics_batch(self.client, self.run_id, metrics, step))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.run_id:
            _safe("artifact", lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id:
            _safe("tag", lambda: self.client.set_tag(self.run_id, key, value))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            _safe("end run", lambda: self.client.set_terminated(self.run_id, status))


def log_run_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Add metrics to an existing (possibly finished) run, e.g. attack results computed after training."""
    _safe("metrics", lambda: _metrics_batch(_client(uri), run_id, metrics, step))


def log_run_audit(uri: str, run_id: str, tags: dict[str, str], metrics: dict[str, float], record: dict) -> None:
    """Attach a gradient-masking audit to an existing trial run: tags (verdict), metrics (check values) and the
    full record as `audit/audit.json`."""
    client = _safe("client", lambda: _client(uri))
    if client is None:
        return
    for k, v in tags.items():
        _safe("audit tag", lambda k=k, v=v: client.set_tag(run_id, k, v))
    _safe("audit metrics", lambda: _metrics_batch(client, run_id, metrics, 0))
    _safe("audit record", lambda: client.log_dict(run_id, record, "audit/audit.json"))
