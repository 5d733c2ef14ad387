"""A tiny real sweep end to end: real local Ray, real Fashion-MNIST, a real `mlflow server`, Parquet read back by
pyarrow, pandas and DuckDB, MLflow queried with MlflowClient, frontier PNGs written."""
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from advsweep.cluster.loopback import free_port
from advsweep.spec import parse_spec
from advsweep.storage.parquet import read_examples, read_robustness, read_trials

sys.path.insert(0, str(Path(__file__).parent))
from tiny_spec import TINY_SPEC  # noqa: E402

pytestmark = pytest.mark.slow
N_TEST, N_TRIALS, N_ATTACK_EPS = 60, 2, 3  # fgsm × 2 ε + pgd × 1 ε
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited")
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not become healthy")
    yield url
    import os
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a loaded machine: the server's workers may not exit in time
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ray_local, fashion_available, mlflow_server):
    from advsweep.sweep.driver import run_sweep

    out = tmp_path_factory.mktemp("sweep") / "tiny"
    result = run_sweep(parse_spec(TINY_SPEC), out, mlflow_uri=mlflow_server)
    return result


def test_tables_have_one_row_per_unit(sweep):
    out = sweep.out_dir
    trials = read_trials(out)
    assert trials.num_rows == N_TRIALS
    assert set(trials.column("status").to_pylist()) == {"completed"}
    assert all(v.startswith("2.13") for v in trials.column("version_torch").to_pylist())
    assert set(trials.column("config_model_name").to_pylist()) == {"resnet", "odenet"}
    assert trials.column("trial_name").to_pylist() == trials.column("config_model_name").to_pylist()  # what varies
    ex = read_examples(out)
    assert ex.num_rows == N_TRIALS * N_ATTACK_EPS * N_TEST
    keys = ex.select(["trial_id", "attack", "eps", "example_index"]).to_pandas().astype(str)
    assert not keys.duplicated().any()
    # The three readers agree.
    n_duck = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/examples/**/*.parquet', hive_partitioning=true)"
                        ).fetchall()[0][0]
    assert n_duck == ex.num_rows
    assert len(pd.read_parquet(out / "examples")) == ex.num_rows
    per_attack = duckdb.sql(f"SELECT attack, count(*) FROM read_parquet('{out}/examples/**/*.parquet', "
                            "hive_partitioning=true) GROUP BY attack ORDER BY attack").fetchall()
    assert per_attack == [("fgsm", 2 * 2 * N_TEST), ("pgd", 2 * N_TEST)]


def test_perturbations_respect_eps_and_robust_acc_has_intervals(sweep):
    ex = read_examples(sweep.out_dir).to_pandas()
    assert (ex["linf"] <= ex["eps"] + 1e-6).all()
    rob = read_robustness(sweep.out_dir).to_pandas()
    assert len(rob[rob["attack"] != "ensemble"]) == N_TRIALS * N_ATTACK_EPS
    assert ((rob["ci_low"] <= rob["robust_acc"]) & (rob["robust_acc"] <= rob["ci_high"])).all()
    assert (rob["n"] == N_TEST).all()
    # The ensemble (worst case over fgsm and pgd at ε = 0.1) is never above either attack.
    for tid, g in rob[rob["eps"] == 0.1].groupby("trial_id"):
        worst = g.set_index("attack")["robust_acc"]
        assert worst["ensemble"] <= min(worst["fgsm"], worst["pgd"]) + 1e-12


def test_mlflow_sweep_run_and_one_run_per_trial(sweep, mlflow_server):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name(f"advsweep/{sweep.sweep_id}")
    assert exp is not None
    children = client.search_runs([exp.experiment_id], f"tags.sweep_run_id = '{sweep.parent_run_id}'")
    assert len(children) == N_TRIALS
    trial_ids = set(read_trials(sweep.out_dir).column("trial_id").to_pylist())
    assert {r.data.tags["ray_trial_id"] for r in children} == trial_ids
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["version.torchdiffeq"]
        assert "natural_acc" in r.data.metrics and "robust_acc/pgd/eps_0.1" in r.data.metrics
        history = client.get_metric_history(r.info.run_id, "val_acc")
        assert [m.step for m in history] == [1, 2]
        assert {a.path for a in client.list_artifacts(r.info.run_id, "checkpoint")} == {
            "checkpoint/state.pt", "checkpoint/meta.json"}
    all_runs = client.search_runs([exp.experiment_id])
    assert len(all_runs) == N_TRIALS + 1  # no duplicates
    assert "spec.yaml" in {a.path for a in client.list_artifacts(sweep.parent_run_id)}


def _readme_blocks(heading: str) -> list[str]:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    return [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]


def test_readme_query_one_liners(sweep, capsys):
    """The README's DuckDB and pandas lines, exactly as written, on this sweep's robustness/ (no join)."""
    duck, pandas_ = _readme_blocks("### Query the results")
    here = str(sweep.out_dir)
    exec(duck.replace("runs/quickstart", here), {})
    shown = capsys.readouterr().out
    assert "resnet" in shown and "odenet" in shown and "natural_acc" in shown
    *setup, last = pandas_.replace("runs/quickstart", here).strip().split("; ")
    scope = {}
    exec("; ".join(setup), scope)
    table = eval(last, scope)
    rob = read_robustness(sweep.out_dir).to_pandas()
    want = rob[(rob.attack == "pgd") & (rob.eps == 0.1)]
    assert len(table) == N_TRIALS == len(want)
    assert set(table.trial_name) == {"resnet", "odenet"} and set(table.model_name) == {"resnet", "odenet"}
    trials = read_trials(sweep.out_dir).to_pandas().set_index("trial_name")
    for r in table.itertuples():  # the copied natural accuracy is the trial's own
        assert r.natural_acc == trials.loc[r.trial_name, "natural_acc"]
        assert r.ci_low <= r.robust_acc <= r.ci_high


def test_frontier_pngs_written(sweep):
    png = sorted((sweep.out_dir / "frontier").glob("*.png"))
    assert {p.name for p in png} >= {"fgsm_eps0.05.png", "fgsm_eps0.1.png", "pgd_eps0.1.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in png)
    front = pd.read_csv(sweep.out_dir / "frontier" / "front.csv")
    assert front["on_front"].any() and set(front["trial_name"]) == {"resnet", "odenet"}


def test_cli_run_embedded_mlflow_then_eval_and_frontier(tmp_path, fashion_available):
    """The CLI path with the default embedded sqlite store, then `advsweep eval` and `advsweep frontier`."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC.replace("n_test: 60", "n_test: 40").replace(
        "  - model: {name: odenet, width: 8, solver: euler, step_size: 0.5}\n"
        "    training: {recipe: {name: natural}, epochs: 2, batch_size: 64, lr: 0.05}\n", ""))
    out = tmp_path / "run"
    env = {"RAY_AUTH_MODE": "disabled", "PATH": str(BIN) + ":/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([str(BIN / "advsweep"), "run", str(spec), "--out", str(out)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1/1 trials completed" in r.stdout and "mlflow ui --backend-store-uri sqlite:///" in r.stdout
    assert (out / "mlflow.db").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.search_experiments(filter_string="name LIKE 'advsweep/%'")
    assert len(exp) == 1 and len(client.search_runs([exp[0].experiment_id])) == 2

    suite = tmp_path / "suite.yaml"
    suite.write_text("attacks:\n  - {name: pgd, label: pgd2, eps: [0.05, 0.2], steps: 2}\n"
                     "eval: {batch_size: 20, shard_size: 20, seed: 3}\n")
    r = subprocess.run([str(BIN / "advsweep"), "eval", str(out), "--suite", str(suite)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "4 of 4 units run" in r.stdout
    ex = read_examples(out, filter=ds.field("attack") == "pgd2")
    assert ex.num_rows == 2 * 40
    files = sorted((out / "examples").rglob("*.parquet"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    r = subprocess.run([str(BIN / "advsweep"), "eval", str(out), "--suite", str(suite)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 0 and "0 of 4 units run" in r.stdout, r.stdout + r.stderr[-2000:]
    assert [f.stat().st_mtime_ns for f in sorted((out / "examples").rglob("*.parquet"))] == mtimes
    trials = read_trials(out).to_pylist()
    assert {(x["attack"], x["eps"]) for x in trials[0]["robust_summary"]} >= {("pgd2", 0.05), ("pgd2", 0.2)}
    rob = read_robustness(out).to_pandas()  # `advsweep eval` copies the trial's columns from the trials table too
    assert (rob.trial_name == trials[0]["trial_name"]).all() and (rob.natural_acc == trials[0]["natural_acc"]).all()
    # The same label with other options would mix two attacks in one partition: refused.
    suite.write_text("attacks:\n  - {name: pgd, label: pgd2, eps: [0.05], steps: 7}\n")
    r = subprocess.run([str(BIN / "advsweep"), "eval", str(out), "--suite", str(suite)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 2 and "attacks[0].label" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    shutil.rmtree(out / "frontier")
    r = subprocess.run([str(BIN / "advsweep"), "frontier", str(out)], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert f"pgd2 eps=0.2: {trials[0]['trial_name']} (" in r.stdout
    assert (out / "frontier" / "pgd2_eps0.2.png").exists() and (out / "frontier" / "front.parquet").exists()

    # A corrupt checkpoint: one line naming it, exit 2, nothing new written.
    ckpt = out / trials[0]["checkpoint"] / "state.pt"  # stored relative to the sweep directory
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    suite.write_text("attacks:\n  - {name: fgsm, label: fgsm-new, eps: [0.1]}\n")
    before = sorted(str(p) for p in (out / "examples").rglob("*"))
    r = subprocess.run([str(BIN / "advsweep"), "eval", str(out), "--suite", str(suite)], capture_output=True,
                       text=True, timeout=600, env=env)
    assert r.returncode == 2 and str(ckpt.parent) in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert sorted(str(p) for p in (out / "examples").rglob("*")) == before
