"""Sweep driver: spec → data subsets → Ray Tune run → Parquet tables + MLflow parent run → frontier plots."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from advsweep.storage.schema import SCHEMA_VERSION
from advsweep.data import load_dataset, stratified_subset
from advsweep.registry import SpecError
from advsweep.spec import Spec
from advsweep.storage import schema as S
from advsweep.storage.parquet import write_atomic
from advsweep.storage.tracking import CLIENT_ENV, SweepTracker, resolve_tracking_uri
from advsweep.sweep.cluster_checks import check_cluster_resources, check_reachable
from advsweep.sweep.evaluate import attack_configs, check_evaluation, run_evaluation_stage
from advsweep.versions import package_versions
from advsweep.sweep.trainable import EXTRA_PREFIX


@dataclass
class SweepResult:
    sweep_id: str
    out_dir: Path
    mlflow_uri: str
    experiment_id: str
    parent_run_id: str
    n_trials: int
    n_completed: int


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


def check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SpecError("--out", f"{out_dir} exists and is not empty; give each sweep its own directory")


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
              spec_path: str | Path | None = None, make_plots: bool = True) -> SweepResult:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from advsweep.sweep.trainable import train_trial

    out = Path(out_dir).resolve()
    check_out_dir(out)
    data = prepare_data(spec)  # validates the data section before anything is written
    uri = resolve_tracking_uri(mlflow_uri, out)
    env = {**CLIENT_ENV, "MLFLOW_TRACKING_URI": uri, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    init_ray(address, env)
    check_cluster_resources(spec.raw.resources)  # a request no node can hold fails here, before anything is written
    sweep_id = new_sweep_id(spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.yaml").write_text(spec.source)
    manifest = {
        "sweep_id": sweep_id, "schema_version": SCHEMA_VERSION, "name": spec.name, "spec_digest": spec.digest,
        "started": datetime.now(timezone.utc).isoformat(), "status": "running", "mlflow_uri": uri,
        "versions": package_versions(), "n_trials": len(spec.trials),
        "data": {"dataset": spec.raw.data.dataset, "seed": spec.raw.data.seed,
                 "n_train": int(len(data["y_train"])), "n_val": int(len(data["y_val"])),
                 "n_test": int(len(data["y_test"]))},
    }
    np.savez_compressed(out / "subsets.npz", train_index=data["train_index"], val_index=data["val_index"],
                        test_index=data["test_index"])
    _write_manifest(out, manifest)

    tracker = SweepTracker(uri, sweep_id, out)
    experiment_id, parent_run_id = tracker.start(out / "spec.yaml", {
        "spec_name": spec.name, "spec_digest": spec.digest, "n_trials": len(spec.trials),
        "dataset": spec.raw.data.dataset, **{f"data.{k}": v for k, v in manifest["data"].items()}})
    manifest.update(experiment_id=experiment_id, parent_run_id=parent_run_id)
    _write_manifest(out, manifest)

    raw = spec.raw
    ctx = {
        "sweep_id": sweep_id, "out_dir": str(out), "mlflow_uri": uri, "experiment_id": experiment_id,
        "parent_run_id": parent_run_id, "seed": raw.seed, "cpu": raw.resources.cpu, "gpu": raw.resources.gpu,
        "monitor": raw.monitor.model_dump() if raw.monitor else None, "eval": raw.eval.model_dump(),
        "attacks": [{"label": a.label, "name": a.name, "eps": list(a.eps), "options": a.options} for a in raw.attacks],
    }
    max_epochs = max(t.training.epochs for t in spec.trials)
    if raw.scheduler.type == "asha":
        scheduler = ASHAScheduler(metric=raw.scheduler.metric, mode=raw.scheduler.mode, max_t=max_epochs,
                                  grace_period=raw.scheduler.grace_period,
                                  reduction_factor=raw.scheduler.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    trainable = tune.with_resources(tune.with_parameters(train_trial, ctx=ctx, data=data),
                                    {"cpu": raw.resources.cpu, "gpu": raw.resources.gpu})
    configs = [t.model_dump() for t in spec.trials]
    names = {t.index: f"{t.index:03d}-{t.model['name']}" for t in spec.trials}
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(
            scheduler=scheduler, max_concurrent_trials=raw.resources.max_concurrent,
            trial_name_creator=lambda t: names[t.config["trial"]["index"]],
            trial_dirname_creator=lambda t: f"{names[t.config['trial']['index']]}-{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=sweep_id, storage_path=str(out / "ray"), verbose=1,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    start = time.time()
    results = tuner.fit()
    trial_rows, epoch_rows = _collect(results, spec, sweep_id, time.time() - start)

    print(f"training done in {time.time() - start:.0f}s; evaluating attacks on the engine", flush=True)
    check_evaluation(out, trial_rows, attack_configs(raw.attacks))
    run_evaluation_stage(out, sweep_id, trial_rows, attack_configs(raw.attacks), data, raw.eval.model_dump(), uri,
                         cpus_per_worker=raw.resources.cpu, gpus_per_worker=raw.resources.gpu)
    write_atomic(pa.Table.from_pylist(epoch_rows, schema=S.EPOCHS), out / "epochs" / "part-0.parquet", sweep_id)

    n_completed = sum(r["status"] == "completed" for r in trial_rows)
    artifacts = []
    if make_plots and n_completed:
        from advsweep.analysis.frontier import write_frontiers

        artifacts = write_frontiers(out)
    manifest.update(status="finished", finished=datetime.now(timezone.utc).isoformat(), n_completed=n_completed)
    _write_manifest(out, manifest)
    tracker.finish({"n_trials": len(trial_rows), "n_completed": n_completed},
                   [out / "trials" / "part-0.parquet", *artifacts])
    return SweepResult(sweep_id, out, uri, experiment_id, parent_run_id, len(trial_rows), n_completed)


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / ".sweep.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(tmp, out / "sweep.json")


def _collect(results, spec: Spec, sweep_id: str, wall: float) -> tuple[list[dict], list[dict]]:
    versions = package_versions()
    trial_rows, epoch_rows = [], []
    by_index = {t.index: t for t in spec.trials}
    for res in results:
        cfg = by_index[res.config["trial"]["index"]]
        m = res.metrics or {}
        df = res.metrics_dataframe
        trial_id = m.get("trial_id") or (str(df["trial_id"].iloc[-1]) if df is not None and len(df) else res.path.rsplit("-", 1)[-1])
        status = "error" if res.error else ("completed" if m.get("completed") else "early_stopped")
        if df is not None:
            for _, e in df.iterrows():
                extra = {k[len(EXTRA_PREFIX):]: float(v) for k, v in e.items()
                         if k.startswith(EXTRA_PREFIX) and v == v and v is not None}
                epoch_rows.append({
                    "sweep_id": sweep_id, "trial_id": trial_id, "epoch": int(e.get("epoch", 0)),
                    **{k: _f(e.get(k)) for k in ("loss", "train_acc", "val_acc", "val_robust_acc", "lr",
                                                  "epoch_time_s", "nfe_forward", "nfe_backward")},
                    "extra": extra,
                })
        trial_rows.append({
            "schema_version": SCHEMA_VERSION, "sweep_id": sweep_id, "trial_id": trial_id, "trial_index": cfg.index,
            "family": cfg.family, "model_name": cfg.model["name"], "status": status,
            "epochs_completed": int(m.get("epoch", 0)), "epochs_planned": cfg.training.epochs,
            "n_test": m.get("n_test"), "natural_acc": _f(m.get("natural_acc")),
            "natural_ci_low": _f(m.get("natural_ci_low")), "natural_ci_high": _f(m.get("natural_ci_high")),
            "val_acc": _f(m.get("val_acc")), "val_robust_acc": _f(m.get("val_robust_acc")),
            "params": m.get("params"), "nfe_forward": _f(m.get("test_nfe_forward", m.get("nfe_forward"))),
            "nfe_backward": _f(m.get("nfe_backward")), "train_time_s": _f(m.get("train_time_s")),
            "eval_time_s": _f(m.get("eval_time_s")), "wall_time_s": _f(m.get("time_total_s")),
            "checkpoint": res.checkpoint.path if res.checkpoint else None,
            "mlflow_run_id": m.get("mlflow_run_id") or None,
            "error": f"{type(res.error).__name__}: {res.error}"[:2000] if res.error else None,
            "node_id": m.get("node_id") or None, "node_ip": m.get("node_ip") or None,
            "config_json": json.dumps(cfg.model_dump(), sort_keys=True), "config": cfg.flat(),
            **{f"version_{p}": versions.get(p) for p in S.VERSION_COLUMNS},
        })
    trial_rows.sort(key=lambda r: r["trial_index"])
    return trial_rows, epoch_rows


def _f(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None
