"""MLflow a researcher recognises (issue 11): a model-training experiment, trial runs named by what varies, tags and
attack settings to search by, minimal-distortion attacks reported as success rate and distance (never as an
accuracy at ε = 0), the sweep run's description and summary, `advsweep runs` with MLflow's filter syntax — against a
real `mlflow server` on 127.0.0.1 and against an embedded sqlite store filled by `advsweep mlflow-sync`."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from typer.testing import CliRunner

from advsweep.cli import app
from advsweep.cluster.loopback import free_port
from advsweep.spec import parse_spec
from advsweep.storage.mlflow_records import attack_metrics, attack_params

sys.path.insert(0, str(Path(__file__).parent))
from sweep_proc import BIN, run  # noqa: E402

DESCRIPTION = "An MLP against an ODE net (Euler) on Fashion-MNIST; FGSM, PGD and DeepFool."
SPEC = f"""
name: readable
description: "{DESCRIPTION}"
seed: 1
data: {{dataset: fashion-mnist, n_train: 300, n_val: 40, n_test: 40, seed: 0}}
trials:
  - model: {{name: mlp, hidden: [32]}}
    training: {{recipe: {{name: natural}}, epochs: 1, batch_size: 20, optimizer: adam, lr: 0.01}}
  - model: {{name: odenet, width: 4, solver: euler, step_size: 0.5}}
    training: {{recipe: {{name: natural}}, epochs: 1, batch_size: 20, optimizer: adam, lr: 0.01}}
attacks:
  - {{name: fgsm, eps: [0.1]}}
  - {{name: pgd, eps: [0.1], steps: 2}}
  - {{name: deepfool, eps: [0.5, 2.0], steps: 5}}
monitor: null
eval: {{batch_size: 40, shard_size: 40, seed: 0}}
"""
MINIMAL = "deepfool"


# --- the records themselves (no Ray, no server) ---------------------------------------------------------------------

def test_minimal_distortion_rows_become_success_rate_and_distance():
    base = {"trial_id": "t", "status": "ok", "ci_low": 0.1, "ci_high": 0.3, "median_l2_success": None,
            "median_linf_success": None, "success_rate": None, "found_rate": None}
    rows = [{**base, "attack": "deepfool", "norm": "none", "eps": 0.0, "robust_acc": 0.0, "success_rate": 0.95,
             "found_rate": 0.95, "median_l2_success": 0.42, "median_linf_success": 0.05},
            {**base, "attack": "deepfool", "norm": "none", "eps": 0.5, "robust_acc": 0.2, "found_rate": 0.95},
            {**base, "attack": "pgd", "norm": "linf", "eps": 0.1, "robust_acc": 0.25},
            {**base, "attack": "cw", "norm": "l2", "eps": 0.5, "robust_acc": 0.3, "found_rate": 0.9},
            {**base, "attack": "pgd", "norm": "linf", "eps": 0.2, "robust_acc": None, "status": "not_applicable"}]
    m = attack_metrics(rows)["t"]
    assert not any(k.endswith("eps_0") for k in m), m
    assert m["success_rate/deepfool"] == 0.95 and m["median_l2/deepfool"] == 0.42 and m["median_linf/deepfool"] == 0.05
    assert m["robust_acc/deepfool/eps_0.5"] == 0.2 and m["robust_acc/pgd/eps_0.1"] == 0.25
    assert m["robust_acc/pgd/eps_0.1/ci_low"] == 0.1 and m["robust_acc/pgd/eps_0.1/ci_high"] == 0.3
    assert m["success_rate/cw"] == 0.9 and "robust_acc/pgd/eps_0.2" not in m


def test_attack_params_carry_defaults_and_the_distance_norm():
    p = attack_params("pgd-strong", "pgd", {"steps": 40}, [0.1, 0.03])
    assert p["attack.pgd-strong.steps"] == "40" and p["attack.pgd-strong.restarts"] == "1"
    assert p["attack.pgd-strong.loss"] == "ce" and p["attack.pgd-strong.alpha"] == "auto"
    assert p["attack.pgd-strong.norm"] == "linf" and p["attack.pgd-strong.eps"] == "[0.03,0.1]"
    d = attack_params("df", "deepfool", {}, [0.0, 0.5])
    assert d["attack.df.norm"] == "l2" and d["attack.df.eps"] == "[0.5]" and d["attack.df.minimal_distortion"] == "true"
    assert attack_params("fab", "fab", {"p": "linf"}, [0.0])["attack.fab.norm"] == "linf"


def test_workers_name_runs_as_the_spec_does():
    """The trainable names its run from the driver's ctx: the same names as Spec.name_of, for expanded and sampled
    (tpe) sweeps alike."""
    from advsweep.spec import TrialConfig
    from advsweep.sweep.trainable import names_of

    grid = parse_spec(SPEC)
    ctx = {"trial_names": dict(enumerate(zip(*grid.trial_names()))), "name_axes": []}
    assert [names_of(ctx, t) for t in grid.trials] == [grid.name_of(t) for t in grid.trials] == [
        ("mlp", "mlp"), ("odenet", "odenet")]
    tpe = parse_spec(SPEC.replace("seed: 1\n", "seed: 1\nsearch: {algorithm: tpe, num_samples: 3, objective: val_acc}\n")
                     .replace("hidden: [32]", "hidden: {choice: [[16], [32]]}"))
    ctx = {"trial_names": {}, "name_axes": tpe.search_axes()}
    for i, hidden in enumerate(([16], [32])):
        cfg = TrialConfig(family=0, index=i, model={"name": "mlp", "hidden": hidden}, training=tpe.probes[0].training)
        assert names_of(ctx, cfg) == tpe.name_of(cfg) and str(hidden[0]) in names_of(ctx, cfg)[0]


# --- a real sweep against a real tracking server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root, port = tmp_path_factory.mktemp("mlflow"), free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300  # a contended CI machine can take minutes to start it
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}")
            if time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError("mlflow server did not become healthy in 300 s")
            time.sleep(1)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, server, fashion_available):
    tmp = tmp_path_factory.mktemp("readable")
    spec_file = tmp / "readable.yaml"
    spec_file.write_text(SPEC)
    out = tmp / "sweep"
    r = run("run", str(spec_file), "--out", str(out), "--mlflow-uri", server)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    manifest = json.loads((out / "sweep.json").read_text())
    # the printed link opens the model-training view (runs table), not MLflow 3's GenAI overview
    assert f"{server}/#/experiments/{manifest['experiment_id']}?workflowType=machine_learning" in r.stdout
    return out, manifest


def cli(*args: str):
    """`advsweep ARGS` in this process (stdout, stderr and the exit code as a user sees them)."""
    r = CliRunner().invoke(app, list(args))
    r.returncode = r.exit_code
    return r


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _check_store(uri: str, sweep_id: str) -> None:
    """What a researcher sees in a tracking store holding this sweep (written by the sweep or by mlflow-sync)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(f"advsweep/{sweep_id}")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.tags["mlflow.note.content"] == DESCRIPTION
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'trial'")
    names, _ = parse_spec(SPEC).trial_names()
    assert sorted(r.info.run_name for r in runs) == sorted(names) == ["mlp", "odenet"]  # one run per trial
    parent = client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")
    assert len(parent) == 1 and parent[0].info.run_name == sweep_id
    parent = parent[0]
    by_name = {r.info.run_name: r for r in runs}
    for name, r in by_name.items():
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        assert "mlflow.parentRunId" not in tags and tags["sweep_run_id"] == parent.info.run_id  # listed, not folded
        assert tags["trial_name"] == name and tags["model"] == name and tags["recipe"] == "natural"
        assert tags["dataset"] == "fashion-mnist" and len(tags["config_id"]) == 12
        assert params["attack.pgd.steps"] == "2" and params["attack.pgd.restarts"] == "1"
        assert params["attack.pgd.loss"] == "ce" and params["attack.pgd.norm"] == "linf"
        assert params["attack.pgd.eps"] == "[0.1]" and params["attack.fgsm.name"] == "fgsm"
        assert params["attack.deepfool.steps"] == "5" and params["attack.deepfool.eps"] == "[0.5,2.0]"
        assert not [k for k in metrics if k.startswith("robust_acc/") and "/eps_0/" in k + "/"], sorted(metrics)
        found = metrics[f"success_rate/{MINIMAL}"]  # share of clean-correct examples DeepFool found an adversarial for
        assert 0 <= found <= 1 and (found == 0 or metrics[f"median_l2/{MINIMAL}"] > 0)
        for key in ("robust_acc/pgd/eps_0.1", "robust_acc/fgsm/eps_0.1", f"robust_acc/{MINIMAL}/eps_0.5",
                    f"robust_acc/{MINIMAL}/eps_2"):
            assert metrics[f"{key}/ci_low"] <= metrics[key] <= metrics[f"{key}/ci_high"], key
        assert "natural_acc" in metrics
    assert by_name["mlp"].data.metrics[f"success_rate/{MINIMAL}"] > 0  # a trained MLP: DeepFool finds adversarials
    assert by_name["odenet"].data.tags["solver"] == "euler" and "solver" not in by_name["mlp"].data.tags
    # the sweep run: description + summary, best robust accuracy per attack × ε with its interval, hypervolume
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(DESCRIPTION) and "2/2 trials completed" in note and "| pgd | 0.1 |" in note
    pm = parent.data.metrics
    best = max(r.data.metrics["robust_acc/pgd/eps_0.1"] for r in runs)
    assert pm["best_robust_acc/pgd/eps_0.1"] == best and pm["n_completed"] == 2
    assert pm["best_robust_acc/pgd/eps_0.1/ci_low"] <= best <= pm["best_robust_acc/pgd/eps_0.1/ci_high"]
    assert 0 <= pm["hypervolume/pgd/eps_0.1"] <= 1
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert arts == {"results/trials.csv", "results/trials.parquet"}
    with open(client.download_artifacts(parent.info.run_id, "results/trials.csv")) as f:
        table = list(csv.DictReader(f))
    assert sorted(r["trial_name"] for r in table) == ["mlp", "odenet"]
    assert all(float(r["natural_acc"]) == by_name[r["trial_name"]].data.metrics["natural_acc"] for r in table)


@pytest.mark.slow
def test_server_store_reads_like_a_sweep(sweep, server):
    out, manifest = sweep
    _check_store(server, manifest["sweep_id"])


@pytest.mark.slow
def test_runs_command_filters_and_formats(sweep, server):
    out, manifest = sweep
    sid = manifest["sweep_id"]
    r = cli("runs", "--mlflow-uri", server, "--experiment", sid, "--format", "json")
    assert r.returncode == 0, r.stderr
    recs = {x["trial_name"]: x for x in json.loads(r.stdout)}
    assert set(recs) == {"mlp", "odenet"} and all(x["status"] == "FINISHED" for x in recs.values())
    assert recs["odenet"]["tags"]["solver"] == "euler"
    pgd = {k: x["robust_acc/pgd/eps_0.1"] for k, x in recs.items()}
    assert all(x["natural_ci_low"] <= x["natural_acc"] <= x["natural_ci_high"] for x in recs.values())
    # MLflow's filter syntax, on a metric and a tag
    cut = min(pgd.values())
    r = cli("runs", "--mlflow-uri", server, "--experiment", f"advsweep/{sid}", "--format", "csv",
            "--filter", f"metrics.`robust_acc/pgd/eps_0.1` > {cut} and tags.recipe = 'natural'")
    assert r.returncode == 0, r.stderr
    assert sorted(x["trial_name"] for x in csv.DictReader(io.StringIO(r.stdout))) == sorted(
        k for k, v in pgd.items() if v > cut)
    r = cli("runs", str(out), "--filter", "tags.solver = 'euler'")  # the sweep directory's own store
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["trial", "status"] and "pgd ε=0.1" in lines[0] and "natural acc" in lines[0]
    assert [ln.split()[0] for ln in lines[2:-1]] == ["odenet"] and lines[-1] == "1 run"
    # bad input: one line, exit 2
    for args, field in ((["--filter", "metrics.natural_acc >>> 2"], "--filter"),
                        (["--experiment", "no-such-sweep"], "--experiment"),
                        (["--format", "xml"], "--format")):
        r = cli("runs", "--mlflow-uri", server, *args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and field in r.stderr, (args, r.stderr)
    r = cli("runs", "--mlflow-uri", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "not reachable" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("runs", "--mlflow-uri", f"sqlite:///{out / 'nothing.db'}")
    assert r.returncode == 2 and "no sqlite store" in r.stderr and not (out / "nothing.db").exists()


@pytest.mark.slow
def test_sync_into_embedded_store_and_rerun_adds_nothing(sweep, server, tmp_path):
    out, manifest = sweep
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = cli("mlflow-sync", str(out), "--mlflow-uri", store)
    assert r.returncode == 0, r.stderr
    _check_store(store, manifest["sweep_id"])
    for uri in (store, server):  # a replay into a store that has everything changes nothing
        r = cli("mlflow-sync", str(out), "--mlflow-uri", uri)
        assert r.returncode == 0 and "0 runs created, 0 metric values and 0 artifacts" in r.stdout, r.stdout
        _check_store(uri, manifest["sweep_id"])
    r = cli("runs", "--mlflow-uri", store, "--format", "json")
    assert sorted(x["trial_name"] for x in json.loads(r.stdout)) == ["mlp", "odenet"]
