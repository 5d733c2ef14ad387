"""One trial's failure never fails the sweep; statuses are exact; MLflow outages cost seconds and are repaired by
`advsweep mlflow-sync`; bad input stops with one line, exit 2, nothing written (issue 8)."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from advsweep.cluster.loopback import free_port

from sweep_proc import BIN, kill_tree, run, start, wait_for

pytestmark = pytest.mark.slow

BASE = """
name: {name}
seed: 1
data: {{dataset: fashion-mnist, n_train: 256, n_val: 64, n_test: 32, seed: 0}}
monitor: {{eps: 0.1, steps: 1, n: 32}}
eval: {{batch_size: 16, shard_size: 16, seed: 0}}
attacks: [{{name: fgsm, eps: [0.1]}}]
"""
HEALTHY = """  - model: {name: resnet, width: 8, blocks: 1}
    training: {recipe: {name: natural}, epochs: 2, batch_size: 64, lr: 0.05}
"""


def _spec(tmp_path: Path, name: str, trials: str) -> Path:
    f = tmp_path / f"{name}.yaml"
    f.write_text(BASE.format(name=name) + "trials:\n" + trials)
    return f


def test_failing_and_diverging_trials_beside_healthy_ones(tmp_path, fashion_available):
    spec = _spec(tmp_path, "fail", HEALTHY + """  - model: {name: odenet, width: 8, solver: dopri5, rtol: 1.0e-7, atol: 1.0e-7, max_num_steps: 2}
    training: {recipe: {name: natural}, epochs: 2, batch_size: 64, lr: 0.05}
  - model: {name: resnet, width: 8, blocks: 1}
    training: {recipe: {name: natural}, epochs: 3, batch_size: 64, lr: 1.0e+6, momentum: 0.0}
""")
    out = tmp_path / "sweep"
    r = run("run", str(spec), "--out", str(out))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]  # not every trial completed
    from mlflow.tracking import MlflowClient

    from advsweep.storage.parquet import read_robustness, read_trials

    trials = read_trials(out).to_pandas().set_index("trial_index")
    assert list(trials["status"]) == ["completed", "failed", "diverged"], trials[["status", "error"]]
    assert "max_num_steps" in trials.loc[1, "error"] and "\n" not in trials.loc[1, "error"]
    assert "\x1b" not in trials.loc[1, "error"]
    log = out / trials.loc[1, "error_log"]
    assert "Traceback" in log.read_text() and "max_num_steps" in log.read_text()
    assert "loss" in trials.loc[2, "error"]
    rob = read_robustness(out).to_pandas()
    assert set(rob["trial_id"]) == {trials.loc[0, "trial_id"]}  # only the healthy trial was attacked
    front = pd.read_csv(out / "frontier" / "front.csv")
    assert set(front["trial_id"]) == {trials.loc[0, "trial_id"]}
    # tried once each: the failure is deterministic
    assert (pd.read_parquet(out / "epochs").groupby("trial_id").size() <= 3).all()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = {r.data.tags["ray_trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name(f"advsweep/{json.loads((out / 'sweep.json').read_text())['sweep_id']}").experiment_id],
        "tags.kind = 'trial'")}
    assert {t: runs[t].info.status for t in trials["trial_id"]} == dict(zip(trials["trial_id"], ["FINISHED", "FAILED", "FAILED"]))


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    import urllib.request

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False

    wait_for(healthy, 120, proc, "mlflow server health")
    return proc


def _runs(uri: str, sweep_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"advsweep/{sweep_id}")
    return client, client.search_runs([exp.experiment_id], "tags.kind = 'trial'")


def test_mlflow_server_killed_mid_sweep_then_synced(tmp_path, fashion_available):
    root, port = tmp_path / "mlflow", free_port()
    root.mkdir()
    server = _mlflow_server(root, port)
    uri = f"http://127.0.0.1:{port}"
    spec = _spec(tmp_path, "outage", HEALTHY + HEALTHY.replace("epochs: 2", "epochs: 3"))
    out = tmp_path / "sweep"
    proc = start("run", str(spec), "--out", str(out), "--mlflow-uri", uri, log=tmp_path / "run.log")
    try:
        wait_for(lambda: bool(list((out / "ray").glob("*/*/checkpoint_*"))), 600, proc, "a checkpoint")
        kill_tree(server)  # the tracking server dies mid-training
        rc = proc.wait(timeout=900)
    finally:
        kill_tree(proc)
        kill_tree(server)
    text = (tmp_path / "run.log").read_text()
    assert rc == 0, text[-3000:]
    assert "mlflow-sync" in text
    from advsweep.storage.parquet import read_epochs, read_trials

    trials = read_trials(out).to_pandas()
    assert (trials["status"] == "completed").all() and len(read_epochs(out)) == 2 + 3  # Parquet is complete
    server = _mlflow_server(root, port)
    try:
        r = run("mlflow-sync", str(out))
        assert r.returncode == 0, r.stderr
        sweep_id = json.loads((out / "sweep.json").read_text())["sweep_id"]
        client, runs = _runs(uri, sweep_id)
        assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trials["trial_id"])  # one each
        assert all(r.info.status == "FINISHED" for r in runs)
        for r in runs:
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_acc"))
            assert steps == list(range(1, len(steps) + 1)) and len(steps) in (2, 3), steps
            assert "natural_acc" in r.data.metrics and "robust_acc/fgsm/eps_0.1" in r.data.metrics
            assert client.list_artifacts(r.info.run_id, "checkpoint")
        r2 = run("mlflow-sync", str(out))  # idempotent
        assert r2.returncode == 0 and "0 runs created, 0 metric values and 0 artifacts" in r2.stdout, r2.stdout
    finally:
        kill_tree(server)


def test_mlflow_down_from_the_start(tmp_path, fashion_available):
    spec = _spec(tmp_path, "down", HEALTHY)
    uri = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "sweep"
    t0 = time.monotonic()
    r = run("run", str(spec), "--out", str(out), "--mlflow-uri", uri)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--mlflow-uri" in r.stderr and "not reachable" in r.stderr and "--mlflow-fallback local" in r.stderr
    assert not out.exists() and time.monotonic() - t0 < 120
    r = run("run", str(spec), "--out", str(out), "--mlflow-uri", uri, "--mlflow-fallback", "local")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "mlflow.db").exists()
    # Paths in a sweep are relative to it: a copy, with the original gone, is evaluated and analysed where it is.
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(out)
    suite = tmp_path / "suite.yaml"
    suite.write_text("attacks: [{name: pgd, label: pgd2, eps: [0.1], steps: 2}]\neval: {batch_size: 16, shard_size: 16}\n")
    r = run("eval", str(copy), "--suite", str(suite))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert list((copy / "examples").glob("trial_id=*/attack=pgd2/eps=*/*.parquet"))
    assert run("frontier", str(copy)).returncode == 0


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, fashion_available):
    binary = tmp_path / "spec.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    for args in (["run", str(binary), "--out", str(tmp_path / "o1")], ["validate", str(binary)]):
        r = run(*args)
        assert r.returncode == 2 and "not a text file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o1").exists()
    spec = _spec(tmp_path, "bad", HEALTHY)
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    r = run("run", str(spec), "--out", str(a_file))
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr
    runaway = _spec(tmp_path, "runaway", HEALTHY.replace("{name: resnet, width: 8, blocks: 1}",
                                                          "{name: odenet, width: 8, rtol: 1.0e-12, atol: 1.0e-12}"))
    r = run("run", str(runaway), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "trials[0].model.rtol" in r.stderr and not (tmp_path / "o2").exists()
    r = run("eval", str(tmp_path), "--suite", str(binary))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
