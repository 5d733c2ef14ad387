"""MLflow logging: one experiment per sweep (marked as model training), a sweep run and one run per trial.

Trial runs are top-level runs named by their trial name (`odenet·dopri5`), so the UI's runs table lists the trials
themselves; the sweep run (named by the sweep id, tag kind=sweep) carries the spec's description and the summary, and
every trial run points to it with the tag `sweep_run_id`. Runs are found-or-created by deterministic tags (sweep_id,
ray_trial_id), so a retried or restored trial continues its run instead of creating a duplicate. Parquet is the source of truth; a tracking outage never fails training: the
first failed call is reported once, further calls are skipped for OUTAGE_BACKOFF_S (so an outage costs seconds, not
minutes of retries), and `advsweep mlflow-sync DIR` replays the Parquet tables into the server afterwards.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from advsweep.storage.mlflow_records import NOTE, changed_metrics, experiment_tags
from advsweep.versions import package_versions

# Workers talk to a server through these: fail in seconds, not the ~4 min of MLflow's default retry policy.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


OUTAGE_BACKOFF_S = 60.0
EMBEDDED = "embedded:mlflow.db"  # what a sweep's manifest stores for its own sqlite store (relative to the sweep)


def use_short_retries() -> None:
    """The driver process too: a down server costs seconds per call, not MLflow's default ~4 minutes."""
    for k, v in CLIENT_ENV.items():
        os.environ.setdefault(k, v)


def resolve_tracking_uri(uri: str | None, out_dir: str | Path) -> str:
    """Explicit option, then MLFLOW_TRACKING_URI, then a sqlite store inside the sweep directory (never the cwd)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or embedded_uri(out_dir)


def embedded_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def stored_uri(uri: str, out_dir: str | Path) -> str:
    """The URI as a sweep's manifest keeps it: the embedded store by a name relative to the sweep directory."""
    return EMBEDDED if uri == embedded_uri(out_dir) else uri


def runtime_uri(stored: str | None, out_dir: str | Path) -> str | None:
    return embedded_uri(out_dir) if stored == EMBEDDED else stored


def probe(uri: str, timeout: float = 5.0) -> str | None:
    """None if the tracking store answers, else why not (one line). sqlite stores are local files: always fine."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return None if r.status == 200 else f"/health answered HTTP {r.status}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


_down_until = 0.0
failures = 0  # failed or skipped calls in this process (the driver reports it at the end)


def _safe(what: str, fn: Callable[[], Any]) -> Any:
    global _down_until, failures
    if time.monotonic() < _down_until:
        failures += 1
        return None
    try:
        return fn()
    except Exception as exc:  # tracking must never take a trial down
        failures += 1
        _down_until = time.monotonic() + OUTAGE_BACKOFF_S
        warnings.warn(f"MLflow {what} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); MLflow calls "
                      f"are skipped for {OUTAGE_BACKOFF_S:.0f} s. Parquet keeps everything: `advsweep mlflow-sync` "
                      "replays it afterwards", stacklevel=2)
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


def _tags_batch(client, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, tags=items[i:i + 90])


def ensure_experiment(client, sweep_id: str, description: str = "", artifact_location: str | None = None) -> str:
    """The sweep's experiment (created if missing), tagged as a model-training experiment with the spec's
    description; tags are (re)set on an existing experiment too, which is idempotent."""
    name = f"advsweep/{sweep_id}"
    exp = client.get_experiment_by_name(name)
    tags = experiment_tags(sweep_id, description)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    for k, v in tags.items():
        if exp.tags.get(k) != v:
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def log_named_artifacts(client, run_id: str, files: list[tuple[Path, str]]) -> int:
    """Log each local file under the artifact path given (`results/trials.parquet`), renaming it on the way."""
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src, dest in files:
            src = Path(src)
            if not src.is_file():
                continue
            folder, _, base = dest.rpartition("/")
            if src.name != base:
                staged = Path(tmp) / f"{n}" / base
                staged.parent.mkdir()
                shutil.copyfile(src, staged)
                src = staged
            client.log_artifact(run_id, str(src), folder or None)
            n += 1
    return n


class SweepTracker:
    """Driver side: experiment + sweep run."""

    def __init__(self, uri: str, sweep_id: str, out_dir: str | Path):
        self.uri, self.sweep_id, self.out_dir = uri, sweep_id, Path(out_dir).resolve()
        self.client = _client(uri)
        self.experiment_id = ""
        self.run_id = ""

    def start(self, spec_file: Path, params: dict[str, Any], description: str = "") -> tuple[str, str]:
        # A local sqlite store keeps artifacts beside it; a server decides for itself (--serve-artifacts).
        artifacts = (self.out_dir / "mlartifacts").as_uri() if self.uri.startswith("sqlite:") else None
        self.experiment_id = ensure_experiment(self.client, self.sweep_id, description, artifacts)
        tags = {"sweep_id": self.sweep_id, "kind": "sweep"}
        found = _find_run(self.client, self.experiment_id, tags)
        if found:  # a resumed sweep continues its parent run
            self.run_id = found
            self.client.update_run(found, status="RUNNING")
        else:
            note = {NOTE: description} if description else {}
            self.run_id = self.client.create_run(
                self.experiment_id, run_name=self.sweep_id,
                tags={**tags, **note, **{f"version.{k}": v for k, v in package_versions().items()}}).info.run_id
            _params_batch(self.client, self.run_id, params)
            self.client.log_artifact(self.run_id, str(spec_file))
        return self.experiment_id, self.run_id

    def finish(self, metrics: dict[str, float], artifacts: list[tuple[Path, str]], status: str = "FINISHED",
               note: str | None = None) -> None:
        """Summary metrics (only new or changed values, so a resumed sweep does not repeat them), the description
        with the summary (`note`), and artifacts as (local file, artifact path)."""
        if not self.run_id:
            return
        run = _safe("sweep run", lambda: self.client.get_run(self.run_id))
        if run is not None:
            _safe("sweep metrics", lambda: _metrics_batch(self.client, self.run_id, changed_metrics(run, metrics), 0))
        if note:
            _safe("sweep note", lambda: self.client.set_tag(self.run_id, NOTE, note))
        _safe("sweep artifacts", lambda: log_named_artifacts(self.client, self.run_id, artifacts))
        _safe("sweep end", lambda: self.client.set_terminated(self.run_id, status))


class TrialTracker:
    """Trial side: the run of one Tune trial, named `run_name`, tagged with `tags` (see mlflow_records.trial_tags)."""

    def __init__(self, uri: str, experiment_id: str, sweep_run_id: str, sweep_id: str, trial_id: str,
                 run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None):
        self.client = _client(uri)
        find = {"sweep_id": sweep_id, "ray_trial_id": trial_id}
        self.run_id = _safe("find run", lambda: _find_run(self.client, experiment_id, find))
        self._logged: dict[str, set[int]] | None = None  # key -> steps a resumed run already has
        if self.run_id is not None:  # a retried or restored trial continues its run
            _safe("resume run", lambda: self.client.update_run(self.run_id, status="RUNNING"))
            self._logged = {}
        elif experiment_id:
            all_tags = {**find, **(tags or {}), "sweep_run_id": sweep_run_id, "kind": "trial",
                        **{f"version.{k}": v for k, v in package_versions().items()}}
            run = _safe("create run", lambda: self.client.create_run(experiment_id, run_name=run_name, tags=all_tags))
            self.run_id = run.info.run_id if run else None
            if self.run_id:
                _safe("params", lambda: _params_batch(self.client, self.run_id, params))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.run_id:
            return
        if self._logged is not None:  # a resumed trial may redo an epoch it had logged before the crash
            for k in metrics:
                if k not in self._logged:
                    hist = _safe("history", lambda k=k: self.client.get_metric_history(self.run_id, k))
                    self._logged[k] = {m.step for m in hist or []}
            metrics = {k: v for k, v in metrics.items() if step not in self._logged[k]}
            for k in metrics:
                self._logged[k].add(step)
        if metrics:
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


def log_attack_results(uri: str, runs: list[tuple[str, dict[str, str], dict[str, float], str]]) -> None:
    """(run id, attack params, attack metrics, description) per trial run: params the run lacks, metrics it lacks or
    holds with another value (so `advsweep eval` with more attacks, or a rerun, adds no duplicates)."""
    from advsweep.storage.mlflow_records import missing_params

    def log() -> None:
        client = _client(uri)
        for run_id, params, metrics, note in runs:
            run = client.get_run(run_id)
            _params_batch(client, run_id, missing_params(run, params))
            _metrics_batch(client, run_id, changed_metrics(run, metrics), 0)
            if note and run.data.tags.get(NOTE) != note:
                client.set_tag(run_id, NOTE, note)

    _safe("attack results", log)


def log_run_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Add metrics to an existing (possibly finished) run, e.g. attack results computed after training."""
    _safe("metrics", lambda: _metrics_batch(_client(uri), run_id, metrics, step))


# Status of a trial's MLflow run for each trial status of the trials table.
RUN_STATUS = {"completed": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "early_stopped": "KILLED",
              "interrupted": "KILLED"}


def trial_runs(client, experiment_id: str, sweep_id: str) -> dict[str, Any]:
    """ray_trial_id → run of every trial run of a sweep (paged)."""
    out, token = {}, None
    while True:
        page = client.search_runs([experiment_id], f"tags.sweep_id = '{sweep_id}' and tags.kind = 'trial'",
                                  max_results=1000, page_token=token)
        for r in page:
            out[r.data.tags.get("ray_trial_id")] = r
        token = page.token
        if not token:
            return out


def finalize_trial_runs(uri: str, experiment_id: str, sweep_id: str, rows: list[dict[str, Any]]) -> None:
    """End every trial run with the status of its trial (none left RUNNING); runs of trials that no longer exist
    (a driver killed before Tune saved them) are marked KILLED."""
    def run() -> None:
        client = _client(uri)
        status = {r["trial_id"]: RUN_STATUS.get(r["status"], "FAILED") for r in rows}
        for trial_id, r in trial_runs(client, experiment_id, sweep_id).items():
            want = status.get(trial_id, "KILLED")
            if r.info.status != want:
                client.set_terminated(r.info.run_id, want)

    _safe("finalize runs", run)


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
