"""Sweep driver: spec → data subsets → Ray Tune run → Parquet tables + MLflow parent run → frontier plots."""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from advsweep.storage.schema import SCHEMA_VERSION
from advsweep.data import load_dataset, stratified_subset
from advsweep.registry import SpecError
from advsweep.spec import Spec, TrialConfig
from advsweep.storage import schema as S
from advsweep.storage import location, tracking
from advsweep.storage.manifest import MANIFEST, read_manifest, write_manifest
from advsweep.storage.parquet import trials_table, write_atomic
from advsweep.storage.tracking import (CLIENT_ENV, EMBEDDED, SweepTracker, embedded_uri, finalize_trial_runs, probe,
                                       resolve_tracking_uri, runtime_uri, stored_uri, use_short_retries)
from advsweep.sweep.cluster_checks import check_cluster_resources, check_reachable
from advsweep.sweep.evaluate import attack_configs, check_evaluation, run_evaluation_stage
from advsweep.sweep.overlap import EvaluateOnComplete, OverlappedEvaluation
from advsweep.sweep.tune_output import StatusReporter, parameter_columns, trimmed_tune_output, tune_verbosity
from advsweep.versions import package_versions
from advsweep.evaluation.checkpoints import CHECKPOINT_META
from advsweep.sweep.trainable import EPOCH_HISTORY, EXTRA_PREFIX, one_line, write_error_log


@dataclass
class SweepResult:
    sweep_id: str
    out_dir: Path
    mlflow_uri: str
    experiment_id: str
    parent_run_id: str
    n_trials: int
    n_completed: int
    status: str = "finished"  # or "interrupted"
    by_status: dict[str, int] = field(default_factory=dict)
    mlflow_failures: int = 0
    location: str = ""  # where the sweep is stored: out_dir, or the URI whose local mirror out_dir is


def prepare_data(spec: Spec) -> dict[str, Any]:
    """Load the dataset once and cut the recorded, stratified, seeded subsets the trials receive."""
    d = spec.raw.data
    dataset = load_dataset(d.dataset, d.data_dir)
    n_avail = len(dataset.y_train)
    if d.n_val >= n_avail:
        raise SpecError("data.n_val", f"{d.n_val} ≥ the {n_avail} training images of {d.dataset}")
    n_train = d.n_train if d.n_train is not None else n_avail - d.n_val
    if n_train + d.n_val > n_avail:
        raise SpecError("data.n_train", f"n_train + n_val = {n_train + d.n_val} > {n_avail} training images of {d.dataset}")
    if d.n_test > len(dataset.y_test):
        raise SpecError("data.n_test", f"{d.n_test} > {len(dataset.y_test)} test images of {d.dataset}")
    rng = np.random.default_rng(d.seed)
    val_idx = stratified_subset(dataset.y_train, d.n_val, d.seed)
    rest = np.setdiff1d(np.arange(n_avail), val_idx)
    train_idx = rest[stratified_subset(dataset.y_train[rest], n_train, d.seed + 1)]
    test_idx = stratified_subset(dataset.y_test, d.n_test, d.seed + 2)
    # Shuffle the test subset once (seeded) so shards are class-balanced.
    test_idx = test_idx[rng.permutation(len(test_idx))]
    return {
        "x_train": dataset.x_train[train_idx], "y_train": dataset.y_train[train_idx],
        "x_val": dataset.x_train[val_idx], "y_val": dataset.y_train[val_idx],
        "x_test": dataset.x_test[test_idx], "y_test": dataset.y_test[test_idx], "test_index": test_idx,
        "train_index": train_idx, "val_index": val_idx,
        "channels": dataset.channels, "num_classes": dataset.num_classes, "image_size": dataset.image_size,
    }


def check_out_dir(out_dir: Path | str, resume: bool = False) -> None:
    if location.is_remote(out_dir):
        location.check_writable(out_dir)
        if resume:
            read_manifest(out_dir)
        elif location.list_files(out_dir):
            raise SpecError("--out", f"{out_dir} exists and is not empty; give each sweep its own location")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError("--out", f"{out_dir} is a file, not a directory")
    if resume:
        read_manifest(out_dir)
    elif out_dir.exists() and any(out_dir.iterdir()):
        hint = ("it holds a sweep: continue it with `advsweep resume DIR`" if (out_dir / MANIFEST).exists()
                else "give each sweep its own directory")
        raise SpecError("--out", f"{out_dir} exists and is not empty; {hint}")


def check_tracking(uri: str, fallback: str | None, out: Path) -> str:
    """Probe the tracking server before anything is written: one line and exit 2, or the explicit fallback."""
    why = probe(uri)
    if why is None:
        return uri
    if fallback == "local":
        local = embedded_uri(out)
        print(f"MLflow at {uri} is not reachable ({why}); logging to the sweep's own store {local} instead "
              f"(advsweep mlflow-sync DIR --mlflow-uri {uri} copies it there later)", flush=True)
        return local
    raise SpecError("--mlflow-uri", f"tracking server {uri} is not reachable ({why}); start it, or pass "
                                    "--mlflow-fallback local to log into the sweep directory")


def new_sweep_id(spec: Spec) -> str:
    return f"{spec.name}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{spec.digest[:6]}"


def init_ray(address: str | None, env: dict[str, str]) -> str:
    """Connect to Ray; returns what it connected to (also printed).

    `address` given: that cluster (checked for reachability first, one line if nothing listens). Otherwise, inside a
    Ray Job (RAY_ADDRESS set by the job's driver), the job's cluster: never a private Ray beside it. Otherwise a
    private local Ray bound to 127.0.0.1 (every listening port on loopback, no dashboard); its auth mode defaults to
    `disabled` because nothing outside this machine can reach it."""
    import ray

    if ray.is_initialized():
        return "ray: already initialised"
    env = {**location.endpoint_env(), **env}  # an S3 endpoint other than AWS reaches every worker; credentials do not
    runtime_env = {"env_vars": env}
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        check_reachable(target)
        if not address:  # inside a Ray Job: keys its runtime_env already sets may not be set again (Ray refuses)
            runtime_env = {"env_vars": {k: v for k, v in env.items() if os.environ.get(k) != v}}
        ray.init(address=target, runtime_env=runtime_env, log_to_driver=True)
        how = "--address" if address else "RAY_ADDRESS"
        msg = f"ray: joined the cluster at {target} ({how}; RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')})"
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        restore = _loopback_only()
        try:
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env,
                     _node_ip_address="127.0.0.1")
        finally:
            restore()  # Ray's processes have their environment; a later connection to a real cluster must not
        msg = (f"ray: private local instance on 127.0.0.1 only (no dashboard; RAY_AUTH_MODE="
               f"{os.environ['RAY_AUTH_MODE']}: loopback is not reachable from other machines)")
    print(msg, flush=True)
    return msg


def _loopback_only():
    """Make a private Ray keep 127.0.0.1 as its node address.

    On Linux Ray 2.60 replaces a loopback `_node_ip_address` by the machine's routable address (so that other nodes
    could join) and then binds its gRPC servers and agents to that address or to all interfaces. With clusters
    switched off, as Ray does on macOS/Windows, it keeps 127.0.0.1 and binds every port to loopback. The variable is
    inherited by the processes Ray starts; the constant is re-set because `ray` may already be imported. Returns a
    function that undoes both once `ray.init` has started them."""
    from ray._private import ray_constants

    old_env, old_const = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"), ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        else:
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = old_env

    return restore


def run_sweep(spec: Spec, out_dir: str | Path, *, address: str | None = None, mlflow_uri: str | None = None,
              spec_path: str | Path | None = None, make_plots: bool = True, resume: bool = False,
              mlflow_fallback: str | None = None, output: str = "bar", workers: int | None = None) -> SweepResult:
    """Train, evaluate and record a sweep; with `resume`, continue the sweep in `out_dir` where it stopped (finished
    trials are not retrained, interrupted and crashed ones continue from their last checkpoint, finished evaluation
    units are skipped, MLflow runs are found again). Everything that can be checked is checked before anything is
    written. Trial failures never abort the sweep; a Ctrl-C returns with status "interrupted". `output`: `bar`
    (Tune's status table, an evaluation progress bar), `quiet` or `verbose` (a line per evaluation unit);
    `workers`: evaluation actors (default: one per free worker slot)."""
    from ray import tune

    from advsweep.sweep.search import planned_trials, search_record
    from advsweep.sweep.trainable import train_trial

    root = location.root(out_dir)  # where the sweep is stored: a local directory or a URI (s3://…)
    check_out_dir(root, resume)
    # Files that must be local (the Optuna study, plots, MLflow's artifacts) live in `out`: the sweep directory
    # itself, or for a URI a local mirror that the tables are pulled into before plots and summaries read them.
    out = root if not location.is_remote(root) else location.cache_dir(str(root))
    manifest = read_manifest(root) if resume else None
    if manifest is not None and manifest.get("spec_digest") != spec.digest:
        raise SpecError(str(spec_path or "SPEC"), f"differs from the spec {root} was started with; "
                                                  f"resume it with `advsweep resume {root}`")
    if manifest is not None and str(manifest.get("schema_version", SCHEMA_VERSION)) != SCHEMA_VERSION:
        raise SpecError(str(root), f"written by advsweep schema version {manifest['schema_version']}; it can be "
                                  f"analysed but not resumed by schema version {SCHEMA_VERSION}")
    if location.is_remote(root) and not mlflow_uri and (manifest or {}).get("mlflow_uri", EMBEDDED) == EMBEDDED:
        raise SpecError("--mlflow-uri", f"an output at {root} cannot hold MLflow's sqlite store: pass the tracking "
                                        "server every node reaches (advsweep mlflow-server prints its URI)")
    data = prepare_data(spec)  # validates the data section before anything is written
    if manifest is not None:
        subsets = location.join(root, "subsets.npz")
        if not np.array_equal(location.load_npz(subsets)["test_index"], data["test_index"]):
            raise SpecError(str(subsets), "the dataset no longer gives this sweep's subsets")
    use_short_retries()
    stored = manifest.get("mlflow_uri") if manifest else None
    uri = check_tracking(mlflow_uri or runtime_uri(stored, out) or resolve_tracking_uri(None, out), mlflow_fallback, out)
    env = {**CLIENT_ENV, "MLFLOW_TRACKING_URI": uri, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    init_ray(address, env)
    check_cluster_resources(spec.raw.resources)  # a request no node can hold fails here, before anything is written

    def save(manifest: dict[str, Any]) -> None:
        write_manifest(out, manifest)
        location.push(out, root, MANIFEST)

    if manifest is None:
        sweep_id = new_sweep_id(spec)
        if location.is_remote(root) and out.exists():  # a mirror left from an earlier sweep at this URI
            import shutil

            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.yaml").write_text(spec.source)
        manifest = {
            "sweep_id": sweep_id, "schema_version": SCHEMA_VERSION, "name": spec.name, "spec_digest": spec.digest,
            "started": datetime.now(timezone.utc).isoformat(), "status": "training", "mlflow_uri": stored_uri(uri, out),
            "versions": package_versions(), "n_trials": planned_trials(spec),
            "search": search_record(spec, out, sweep_id),
            "data": {"dataset": spec.raw.data.dataset, "seed": spec.raw.data.seed,
                     "n_train": int(len(data["y_train"])), "n_val": int(len(data["y_val"])),
                     "n_test": int(len(data["y_test"]))},
        }
        np.savez_compressed(out / "subsets.npz", train_index=data["train_index"], val_index=data["val_index"],
                            test_index=data["test_index"])
        location.push(out, root, "spec.yaml", "subsets.npz")
    else:
        location.pull(root, out)
        sweep_id = manifest["sweep_id"]
        manifest["resumed"] = [*manifest.get("resumed", []), datetime.now(timezone.utc).isoformat()]
        print(f"resuming sweep {sweep_id} (state: {manifest.get('status')})", flush=True)
    save(manifest)

    tracker = SweepTracker(uri, sweep_id, out)
    try:
        experiment_id, parent_run_id = tracker.start(out / "spec.yaml", {
            "spec_name": spec.name, "spec_digest": spec.digest, "n_trials": manifest["n_trials"],
            "dataset": spec.raw.data.dataset, **{f"data.{k}": v for k, v in manifest["data"].items()}},
            description=spec.raw.description)
    except Exception as exc:  # the server went down after the probe: Parquet goes on, mlflow-sync catches up
        print(f"MLflow unreachable ({type(exc).__name__}); continuing without it", flush=True)
        experiment_id, parent_run_id = manifest.get("experiment_id", ""), manifest.get("parent_run_id", "")
    manifest.update(experiment_id=experiment_id, parent_run_id=parent_run_id, mlflow_uri=stored_uri(uri, out))
    if manifest["status"] in ("interrupted", "finished"):
        manifest["status"] = "training"
    save(manifest)

    raw = spec.raw
    ctx = {
        "sweep_id": sweep_id, "out_dir": str(root), "mlflow_uri": uri, "experiment_id": experiment_id,
        "parent_run_id": parent_run_id, "seed": raw.seed, "cpu": raw.resources.cpu, "gpu": raw.resources.gpu,
        "monitor": raw.monitor.model_dump() if raw.monitor else None, "eval": raw.eval.model_dump(),
        "attacks": [{"label": a.label, "name": a.name, "eps": list(a.eps), "options": a.options} for a in raw.attacks],
        # MLflow run names and tags (advsweep.naming): expanded trials by index, sampled ones from the search axes
        "trial_names": dict(enumerate(zip(*spec.trial_names()))) if spec.trials else {},
        "name_axes": spec.search_axes() if spec.searched else [], "dataset": raw.data.dataset,
    }
    resources = {"cpu": raw.resources.cpu, "gpu": raw.resources.gpu}
    if raw.resources.memory_gb:
        resources["memory"] = int(raw.resources.memory_gb * 2**30)
    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx, data=data), resources)
    # Tune writes checkpoints from every node straight to the sweep's location (a local path or the URI's bucket)
    storage_fs, storage_path = (location.fs_path(location.join(root, "ray")) if location.is_remote(root)
                                else (None, str(out / "ray")))
    exp_path = f"{storage_path}/{sweep_id}"
    if tune.Tuner.can_restore(exp_path, storage_filesystem=storage_fs):
        # Finished trials stay finished; unfinished and crashed ones continue from their last checkpoint. Trials
        # that failed deterministically ended normally (recorded as failed/diverged) and are not rerun.
        tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True,
                                   restart_errored=False, storage_filesystem=storage_fs)
    else:
        tuner = _new_tuner(spec, trainable, sweep_id, out, output, storage_path, storage_fs)
    start = time.time()
    attacks = attack_configs(raw.attacks)
    overlap = (OverlappedEvaluation(root, sweep_id, attacks, data, raw.eval.model_dump(), raw.resources.cpu,
                                    raw.resources.gpu) if raw.eval.overlap and attacks else contextlib.nullcontext())
    with overlap, trimmed_tune_output():
        results = tuner.fit()
    if isinstance(overlap, OverlappedEvaluation):
        print(f"evaluation overlapped with training: {overlap.units_run} units of {len(overlap.trials_done)} "
              f"trials ran while others trained", flush=True)
        for err in overlap.errors:
            print(f"[eval] overlapped evaluation of {err}; the evaluation stage redoes it", flush=True)
        manifest["overlap"] = {"units": overlap.units_run, "trials": overlap.trials_done, "busy_s": overlap.busy_s}
    trial_rows, epoch_rows = _collect(results, spec, sweep_id, time.time() - start, root)
    # Training results are on disk before evaluation starts: a crash there loses nothing of training.
    write_atomic(pa.Table.from_pylist(epoch_rows, schema=S.EPOCHS), location.join(root, "epochs", "part-0.parquet"),
                 sweep_id)
    write_atomic(trials_table(trial_rows, root), location.join(root, "trials", "part-0.parquet"), sweep_id)
    if experiment_id:
        finalize_trial_runs(uri, experiment_id, sweep_id, trial_rows)
    by_status = {st: sum(r["status"] == st for r in trial_rows) for st in S.TRIAL_STATUSES}
    n_completed = by_status["completed"]

    def result(status: str) -> SweepResult:
        return SweepResult(sweep_id, out, uri, experiment_id, parent_run_id, len(trial_rows), n_completed, status,
                           {k: v for k, v in by_status.items() if v}, tracking.failures, str(root))

    if by_status["interrupted"]:
        if isinstance(overlap, OverlappedEvaluation):
            overlap.close()
        manifest.update(status="interrupted", n_completed=n_completed)
        save(manifest)
        location.pull(root, out)
        _finish_sweep_run(tracker, out, spec, trial_rows, [], "KILLED")
        return result("interrupted")

    manifest["status"] = "evaluating"
    save(manifest)
    print(f"training done in {time.time() - start:.0f}s; evaluating attacks on the engine", flush=True)
    skip = check_evaluation(root, trial_rows, attack_configs(raw.attacks))
    warm = overlap.pool if isinstance(overlap, OverlappedEvaluation) else None  # the overlap's actors, still warm
    try:
        run_evaluation_stage(root, sweep_id, trial_rows, attack_configs(raw.attacks), data, raw.eval.model_dump(), uri,
                             cpus_per_worker=raw.resources.cpu, gpus_per_worker=raw.resources.gpu, skip=skip,
                             num_workers=workers, output=output, pool=warm)
    finally:
        if warm is not None:
            warm.close()

    location.pull(root, out)  # plots and the summary read the tables from local files
    artifacts = []
    if make_plots and n_completed:
        from advsweep.analysis.frontier import write_frontiers

        artifacts = write_frontiers(out)
        location.push(out, root, "frontier")
    manifest.update(status="finished", finished=datetime.now(timezone.utc).isoformat(), n_completed=n_completed)
    save(manifest)
    _finish_sweep_run(tracker, out, spec, trial_rows, artifacts, "FINISHED")
    return result("finished")


def _finish_sweep_run(tracker: SweepTracker, out: Path, spec: Spec, trial_rows: list[dict], artifacts: list[Path],
                      status: str) -> None:
    """The sweep run's description + summary, summary metrics, trials table and fronts (never fails the sweep)."""
    import tempfile

    from advsweep.sweep.summary import build_summary, write_csv

    try:
        summary = build_summary(out, spec, trial_rows)
    except Exception as exc:  # a summary is a convenience: the sweep's results are in Parquet either way
        print(f"MLflow summary skipped ({type(exc).__name__}: {exc})", flush=True)
        tracker.finish({"n_trials": len(trial_rows),
                        "n_completed": sum(r["status"] == "completed" for r in trial_rows)}, [], status)
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = [(write_csv(rows, Path(tmp) / Path(name).name), name) for name, rows in summary.tables.items()]
        files.append((out / "trials" / "part-0.parquet", "results/trials.parquet"))
        files += [(a, f"frontier/{a.name}") for a in artifacts]
        tracker.finish(summary.metrics, files, status, note=summary.note)


def _new_tuner(spec: Spec, trainable, sweep_id: str, out: Path, output: str, storage_path: str, storage_fs=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from advsweep.sweep.search import build_search, trial_name

    raw = spec.raw
    plan = build_search(spec, out, sweep_id)  # tpe/nsga2: the Optuna searcher, its study in out/optuna.db
    max_epochs = plan.max_epochs
    if raw.scheduler.type == "asha":
        scheduler = ASHAScheduler(metric=raw.scheduler.metric, mode=raw.scheduler.mode, max_t=max_epochs,
                                  grace_period=raw.scheduler.grace_period,
                                  reduction_factor=raw.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler, max_concurrent_trials=plan.max_concurrent,
            search_alg=plan.search_alg, num_samples=plan.num_samples,
            trial_name_creator=lambda t: trial_name(t.config),
            trial_dirname_creator=lambda t: f"{trial_name(t.config)}-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=sweep_id, storage_path=storage_path, storage_filesystem=storage_fs, verbose=tune_verbosity(output),
            progress_reporter=StatusReporter(parameter_columns(spec)),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            # A crashed worker (OOM kill, lost node) is retried once from its checkpoint; a trial whose own code
            # raises is recorded as failed by the trainable and never retried (the failure is deterministic).
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=[EvaluateOnComplete(sweep_id)],
        ),
    )


def _trial_status(trial, metrics: dict[str, Any], scheduler: str) -> str:
    """The exact status of a trial from its Tune state and its last result (see schema.TRIAL_STATUSES)."""
    if metrics.get("final_status") in ("failed", "diverged"):
        return metrics["final_status"]
    if metrics.get("completed"):
        return "completed"
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED" and scheduler == "asha":
        return "early_stopped"
    return "interrupted"  # PENDING / RUNNING / PAUSED when the sweep stopped: resumable


def _collect(results, spec: Spec, sweep_id: str, wall: float, out: Path | str) -> tuple[list[dict], list[dict]]:
    versions = package_versions()
    trial_rows, epoch_rows = [], []
    trials = results._experiment_analysis.trials  # same order as the results (ResultGrid.__getitem__)
    listed = None if spec.searched else spec.trial_names()  # names of the expanded list, computed once
    for trial, res in zip(trials, results):
        cfg = TrialConfig.model_validate(trial.config["trial"])
        trial_name, config_name = (listed[0][cfg.index], listed[1][cfg.index]) if listed else spec.name_of(cfg)
        m = res.metrics or {}
        trial_id = trial.trial_id
        status = _trial_status(trial, m, spec.raw.scheduler.type)
        error, error_log = m.get("error"), m.get("error_log")
        if status == "failed" and res.error is not None and not error:
            error = one_line(res.error)  # the worker kept dying (OOM kill, lost node): Tune's error, cleaned
            error_log = write_error_log(str(out), trial_id, str(res.error))
        for e in _epoch_metrics(res):
            extra = {k[len(EXTRA_PREFIX):]: float(v) for k, v in e.items()
                     if k.startswith(EXTRA_PREFIX) and v is not None and v == v}
            epoch_rows.append({
                "sweep_id": sweep_id, "trial_id": trial_id, "epoch": int(e["epoch"]),
                **{k: _f(e.get(k)) for k in ("loss", "train_acc", "val_acc", "val_robust_acc", "lr",
                                              "epoch_time_s", "nfe_forward", "nfe_backward")},
                "extra": extra,
            })
        completed = status == "completed"
        trial_rows.append({
            "schema_version": SCHEMA_VERSION, "sweep_id": sweep_id, "trial_id": trial_id, "trial_index": cfg.index,
            "trial_name": trial_name, "config_name": config_name, "family": cfg.family, "seed": cfg.seed, "config_id": cfg.config_id,
            "model_name": cfg.model["name"], "status": status,
            "epochs_completed": int(m.get("epoch", 0)), "epochs_planned": cfg.training.epochs,
            "n_test": m.get("n_test") if completed else None, "natural_acc": _f(m.get("natural_acc")),
            "natural_ci_low": _f(m.get("natural_ci_low")), "natural_ci_high": _f(m.get("natural_ci_high")),
            "val_acc": _f(m.get("val_acc")), "val_robust_acc": _f(m.get("val_robust_acc")),
            "params": m.get("params"), "nfe_forward": _f(m.get("test_nfe_forward", m.get("nfe_forward"))),
            "nfe_backward": _f(m.get("nfe_backward")), "train_time_s": _f(m.get("train_time_s")),
            "eval_time_s": _f(m.get("eval_time_s")), "wall_time_s": _f(m.get("time_total_s")),
            "checkpoint": location.checkpoint_location(out, res.checkpoint.path) if res.checkpoint and completed
            else None,
            "mlflow_run_id": m.get("mlflow_run_id") or None,
            "error": error, "error_log": error_log,
            "node_id": m.get("node_id") or None, "node_ip": m.get("node_ip") or None,
            "config_json": json.dumps(cfg.model_dump(), sort_keys=True), "config": cfg.flat(),
            **{f"version_{p}": versions.get(p) for p in S.VERSION_COLUMNS},
        })
    trial_rows.sort(key=lambda r: r["trial_index"])
    return trial_rows, epoch_rows


def _epoch_metrics(res) -> list[dict[str, Any]]:
    """One dict per trained epoch, in order: the epochs recorded in the trial's latest checkpoint (the history of the
    model it holds), then any later ones from Tune's results (a restored trial may repeat an epoch: the last wins)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    df = res.metrics_dataframe
    if df is not None and len(df) and "epoch" in df:
        if "final_status" in df:
            df = df[df["final_status"].isna()]
        for e in df.to_dict("records"):
            by_epoch[int(e["epoch"])] = e
    for e in _checkpoint_history(res.checkpoint):
        by_epoch[int(e["epoch"])] = {**by_epoch.get(int(e["epoch"]), {}), **e}
    return [by_epoch[k] for k in sorted(by_epoch) if k > 0]


def _checkpoint_history(checkpoint) -> list[dict[str, Any]]:
    if checkpoint is None:
        return []
    try:
        with checkpoint.filesystem.open_input_stream(f"{checkpoint.path}/{CHECKPOINT_META}") as f:
            return json.loads(f.readall()).get(EPOCH_HISTORY, [])
    except (OSError, ValueError):  # a checkpoint written before the history was kept, or unreadable: Tune's rows stand
        return []


def _f(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
