"""Nothing lost (issue 8): real faults injected into real sweeps run as a user runs them (`advsweep` subprocesses,
a private local Ray, the embedded MLflow store or a real `mlflow server`), then rows counted per (trial, epoch) and
per (trial, attack, ε, example), and MLflow child runs per trial (exactly one each, none left RUNNING)."""
from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pandas as pd
import pytest

from sweep_proc import checkpoint_metas, descendants, kill_tree, run, start, wait_for

pytestmark = pytest.mark.slow

SPEC = """
name: chaos
seed: 1
data: {dataset: fashion-mnist, n_train: 384, n_val: 64, n_test: 48, seed: 0}
trials:
  - model: {name: resnet, width: 8, blocks: 1}
    training: {recipe: {name: natural}, epochs: 3, batch_size: 64, lr: 0.05}
  - model: {name: odenet, width: 8, solver: rk4, step_size: 0.5}
    training: {recipe: {name: natural}, epochs: 3, batch_size: 64, lr: 0.05}
attacks:
  - {name: fgsm, eps: [0.05, 0.1]}
  - {name: pgd, eps: [0.1], steps: 3}
  - {name: deepfool, eps: [0.5], steps: 5}
monitor: {eps: 0.1, steps: 1, n: 32}
eval: {batch_size: 16, shard_size: 16, seed: 0, overlap: true}
"""
N_TRIALS, EPOCHS, N_TEST = 2, 3, 48
# attack label -> ε rows per example (deepfool keeps its unbounded ε = 0 rows beside ε = 0.5)
EPS_ROWS = {"fgsm": 2, "pgd": 1, "deepfool": 2}


def _checkpoints(out: Path) -> list[Path]:
    return list((out / "ray").glob("*/*/checkpoint_*"))


def _examples(out: Path) -> list[Path]:
    return list((out / "examples").glob("*/*/*/*.parquet"))


def assert_complete(out: Path) -> None:
    """Every table complete, each row exactly once; one MLflow child run per trial, none RUNNING."""
    from mlflow.tracking import MlflowClient

    from advsweep.storage.manifest import read_manifest
    from advsweep.storage.parquet import read_epochs, read_examples, read_trials

    manifest = read_manifest(out)
    assert manifest["status"] == "finished"
    trials = read_trials(out).to_pandas()
    assert len(trials) == N_TRIALS and (trials["status"] == "completed").all(), trials[["trial_id", "status"]]
    assert trials["checkpoint"].map(lambda p: not Path(p).is_absolute() and (out / p).is_dir()).all()
    epochs = read_epochs(out).to_pandas()
    counts = epochs.groupby(["trial_id", "epoch"]).size()
    assert (counts == 1).all() and len(counts) == N_TRIALS * EPOCHS, counts
    ex = read_examples(out, columns=["trial_id", "attack", "eps", "example_index"]).to_pandas()
    per = ex.groupby(["trial_id", "attack", "eps", "example_index"], observed=True).size()
    assert (per == 1).all(), per[per > 1]
    assert len(per) == N_TRIALS * N_TEST * sum(EPS_ROWS.values())
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"advsweep/{manifest['sweep_id']}")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    by_trial = pd.Series([r.data.tags["ray_trial_id"] for r in runs]).value_counts()
    assert set(by_trial.index) == set(trials["trial_id"]) and (by_trial == 1).all(), by_trial
    assert all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]
    parent = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    for r in runs:  # per-epoch history exactly once per step
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), steps


@pytest.fixture()
def spec_file(tmp_path, fashion_available) -> Path:
    f = tmp_path / "chaos.yaml"
    f.write_text(SPEC)
    return f


@pytest.mark.parametrize("seed", [3])
def test_chaos_worker_actor_driver_killed_then_resumed(tmp_path, spec_file, seed):
    """A training worker, an evaluation actor and the driver are each SIGKILLed once, at seeded random points;
    after `advsweep resume` nothing is lost or duplicated."""
    rng = random.Random(seed)
    out = tmp_path / "sweep"
    log = tmp_path / "run.log"
    proc = start("run", str(spec_file), "--out", str(out), log=log)
    try:
        # 1. a training worker, after its first or second checkpoint
        k = rng.choice([1, 2])
        wait_for(lambda: len(_checkpoints(out)) >= k, 600, proc, f"{k} checkpoints")
        workers = descendants(proc.pid, "ImplicitFunc")
        assert workers, "no trial worker found"
        rng.choice(workers).kill()
        # 2. an evaluation actor, mid-evaluation
        wait_for(lambda: len(_examples(out)) >= rng.choice([1, 3]), 900, proc, "evaluation units")
        actors = []
        wait_for(lambda: bool(actors.extend(descendants(proc.pid, "EvalWorker")) or actors), 120, proc, "an actor")
        rng.choice(actors).kill()
        # 3. the driver, a little later in the evaluation
        n = len(_examples(out)) + rng.choice([1, 2])
        wait_for(lambda: len(_examples(out)) >= n, 600, proc, "more evaluation units")
    finally:
        kill_tree(proc)
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["status"] in ("training", "evaluating")  # evaluation overlaps training (issue 9)
    r = run("frontier", str(out))
    assert r.returncode == 2 and "advsweep resume" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("resume", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2/2 trials completed" in r.stdout
    assert_complete(out)


def test_sigint_marks_interrupted_and_resumes(tmp_path, spec_file):
    out = tmp_path / "sweep"
    proc = start("run", str(spec_file), "--out", str(out), log=tmp_path / "run.log")
    try:
        wait_for(lambda: len(_checkpoints(out)) >= 1, 600, proc, "a checkpoint")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=300)
    finally:
        kill_tree(proc)
    text = (tmp_path / "run.log").read_text()
    assert rc == 130, text[-3000:]
    assert "advsweep resume" in text
    from advsweep.storage.parquet import read_trials

    trials = read_trials(out).to_pandas()
    assert "interrupted" in set(trials["status"]) and "early_stopped" not in set(trials["status"])
    assert json.loads((out / "sweep.json").read_text())["status"] == "interrupted"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(f"advsweep/{json.loads((out / 'sweep.json').read_text())['sweep_id']}").experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    r = run("resume", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert_complete(out)


def test_trial_worker_killed_after_an_epoch_loses_no_epoch(tmp_path, fashion_available):
    """Tune restarts a killed trial from its last checkpoint and, in doing so, replaces the driver's result.json with
    the last copy synced to storage; the epochs in between must still reach the epoch table (once each)."""
    from advsweep.storage.parquet import read_epochs, read_trials

    spec = tmp_path / "one.yaml"
    spec.write_text(SPEC.split("  - model: {name: odenet")[0].replace("epochs: 3", "epochs: 6")
                    + "attacks: []\nmonitor: {eps: 0.1, steps: 1, n: 32}\n")
    out = tmp_path / "sweep"
    proc = start("run", str(spec), "--out", str(out), log=tmp_path / "run.log")
    try:
        wait_for(lambda: len(_checkpoints(out)) >= 2 and any(m["epoch"] >= 3 for m in checkpoint_metas(out)), 600,
                 proc, "3 epochs")
        workers = descendants(proc.pid, "ImplicitFunc")
        assert workers, "no trial worker found"
        workers[0].kill()
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        kill_tree(proc)
    assert read_trials(out).column("status").to_pylist() == ["completed"]
    assert sorted(read_epochs(out).column("epoch").to_pylist()) == list(range(1, 7))
