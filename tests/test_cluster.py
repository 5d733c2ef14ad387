"""A real 2-node Ray cluster on loopback (two `ray start` nodes with distinct custom resources, dashboard on
127.0.0.1, RAY_AUTH_MODE set explicitly), a real `mlflow server`, tiny Fashion-MNIST sweeps submitted through
`advsweep submit` (Ray Jobs API): trials and attack units run on both nodes and the rows say where; MLflow holds every
run; bad input is one line, exit 2, nothing submitted or written; losing the worker node mid-training or
mid-evaluation loses nothing.
Every process started here is stopped by process group in the fixtures' teardown, also on failure."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from advsweep.cluster import mlflow_server as ms
from advsweep.cluster.jobs import TERMINAL, _info, connect, wait
from advsweep.cluster.loopback import LoopbackCluster, free_port
from advsweep.storage.parquet import read_epochs, read_examples, read_trials

sys.path.insert(0, str(Path(__file__).parent))
from sweep_proc import checkpoint_metas  # noqa: E402
from tiny_spec import TINY_SPEC  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
N_TEST, N_TRIALS, N_ATTACK_EPS = 60, 2, 3
KEYS = ["trial_id", "attack", "eps", "example_index"]


@pytest.fixture(scope="module")
def cluster():
    c = LoopbackCluster(auth_mode="disabled")  # loopback only; a real cluster uses token (see cluster/README.md)
    try:
        c.start_head(num_cpus=1, resources={"head_node": 1})
        c.add_node("worker_node", num_cpus=1, resources={"worker_node": 1})
        yield c
    finally:
        c.stop()
        shutil.rmtree(c.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    plan = ms.plan(root, port=free_port(), workers=1)
    proc = ms.start(plan, root)
    try:
        yield plan.uri
    finally:
        ms.stop(proc)


def cli(cluster, *args, timeout=600):
    env = {**cluster.env(), "RAY_API_SERVER_ADDRESS": cluster.dashboard_url}
    return subprocess.run([str(BIN / "advsweep"), *args], capture_output=True, text=True, timeout=timeout, env=env)


def one_error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return lines[0]


def submit(cluster, spec_file, out, mlflow_url):
    r = cli(cluster, "submit", str(spec_file), "--out", str(out), "--mlflow-uri", mlflow_url,
            "--python", sys.executable)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "preflight: preflight ok: 2 nodes write to" in r.stdout
    return re.search(r"submitted job (\S+)", r.stdout).group(1)


def wait_ok(cluster, sid, timeout=900):
    os.environ["RAY_AUTH_MODE"] = cluster.auth_mode
    client = connect(cluster.dashboard_url)
    state = wait(client, sid, timeout)
    assert state.status == "SUCCEEDED", client.get_job_logs(sid)[-6000:]
    return client.get_job_logs(sid)


def check_complete(out: Path) -> None:
    trials = read_trials(out)
    assert trials.num_rows == N_TRIALS
    assert set(trials.column("status").to_pylist()) == {"completed"}
    ex = read_examples(out)
    assert ex.num_rows == N_TRIALS * N_ATTACK_EPS * N_TEST
    dup = duckdb.sql(f"SELECT count(*) FROM (SELECT {', '.join(KEYS)}, count(*) c FROM ex GROUP BY ALL) "
                     "WHERE c > 1").fetchall()[0][0]
    assert dup == 0
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".advsweep-probe-*"))


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, fashion_available):
    f = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    f.write_text(TINY_SPEC)
    return f


def test_sweep_runs_on_both_nodes(cluster, mlflow_url, spec_file, tmp_path):
    out = tmp_path / "sweep"
    sid = submit(cluster, spec_file, out, mlflow_url)
    again = cli(cluster, "submit", str(spec_file), "--out", str(out), "--mlflow-uri", mlflow_url,
                "--python", sys.executable)
    assert f"already submitted as job {sid}" in one_error_line(again)

    logs = wait_ok(cluster, sid)
    # the job's driver joined the cluster (RAY_ADDRESS, set by Ray for the job) instead of starting a private Ray
    assert re.search(rf"ray: joined the cluster at [\d.]+:{cluster.gcs_port} \(RAY_ADDRESS; RAY_AUTH_MODE=disabled\)",
                     logs), logs[:3000]
    check_complete(out)
    head, worker = cluster.node_id_of("head"), cluster.node_id_of("worker_node")
    trials = read_trials(out).to_pylist()
    assert {t["node_id"] for t in trials} == {head, worker}  # 1 CPU per node, 1 CPU per trial: one trial each
    ex = read_examples(out).select(["trial_id", "attack", "eps", "shard", "node_id", "node_ip"]).to_pandas()
    per_unit = ex.groupby(["trial_id", "attack", "eps", "shard"])["node_id"].nunique()
    assert (per_unit == 1).all()  # every row of a unit names the unit's node
    assert set(ex["node_id"]) == {head, worker}
    assert ex["node_ip"].notna().all() and ex["node_ip"].nunique() == 1  # two nodes, one machine

    from mlflow.tracking import MlflowClient

    manifest = json.loads((out / "sweep.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_url)
    exp = client.get_experiment_by_name(f"advsweep/{manifest['sweep_id']}")
    runs = client.search_runs([exp.experiment_id])
    kinds = sorted(r.data.tags.get("kind") for r in runs)
    assert kinds == ["sweep", "trial", "trial"]
    for r in runs:
        assert r.info.status == "FINISHED"
        if r.data.tags["kind"] == "trial":
            assert r.info.run_id in {t["mlflow_run_id"] for t in trials}
            assert "robust_acc/pgd/eps_0.1" in r.data.metrics and "val_acc" in r.data.metrics

    st = cli(cluster, "status", sid)
    assert st.returncode == 0 and f"{sid}: SUCCEEDED" in st.stdout
    lg = cli(cluster, "logs", sid)
    assert lg.returncode == 0 and "[eval]" in lg.stdout
    lf = cli(cluster, "logs", sid, "--follow")  # a finished job: prints everything, then returns
    assert lf.returncode == 0 and "[eval]" in lf.stdout
    listing = cli(cluster, "status")
    assert listing.returncode == 0 and f"{sid}: SUCCEEDED" in listing.stdout and "preflight" not in listing.stdout
    sp = cli(cluster, "stop", sid)
    assert sp.returncode == 0 and "nothing to stop" in sp.stdout


def test_bad_input_is_one_line_and_submits_nothing(cluster, spec_file, tmp_path, mlflow_url):
    for cmd in (["status", "nope-123"], ["logs", "nope-123"], ["stop", "nope-123"]):
        assert one_error_line(cli(cluster, *cmd)) == \
            f"advsweep: error: JOB: nope-123: no such job on {cluster.dashboard_url}"
    closed = free_port()
    r = subprocess.run([str(BIN / "advsweep"), "status", "--address", f"http://127.0.0.1:{closed}"],
                       capture_output=True, text=True, env=cluster.env(), timeout=120)
    assert one_error_line(r) == f"advsweep: error: --address: no Ray Jobs API reachable at http://127.0.0.1:{closed}"

    before = {j.submission_id for j in connect(cluster.dashboard_url).list_jobs()}
    gpu_spec = tmp_path / "gpu.yaml"
    gpu_spec.write_text(TINY_SPEC + "resources: {gpu: 1}\n")
    out = tmp_path / "gpu-out"
    line = one_error_line(cli(cluster, "submit", str(gpu_spec), "--out", str(out), "--python", sys.executable))
    assert line == ("advsweep: error: resources.gpu: each trial and evaluation worker asks for 1 GPU, but the largest "
                    "of its 2 nodes of this Ray cluster has 0")
    assert not out.exists()
    line = one_error_line(cli(cluster, "submit", str(spec_file), "--out", "/proc/advsweep-out",
                              "--python", sys.executable))
    assert line.startswith("advsweep: error: --out: /proc/advsweep-out: the head cannot write in /proc")
    line = one_error_line(cli(cluster, "submit", str(spec_file), "--out", "relative/out"))
    assert line.startswith("advsweep: error: --out: 'relative/out' is relative")
    client = connect(cluster.dashboard_url)
    new = {j.submission_id for j in client.list_jobs()} - before
    # No sweep was submitted; the only new jobs are finished preflight checks (deleted, but Ray may keep a record of
    # a job driver that connected, so the Jobs API can still list some of them).
    assert len(new) <= 2 and all(j.startswith("advsweep-preflight-") for j in new), new
    assert all(_info(client, j).status in TERMINAL for j in new), new


def _actors_on(node_id: str, cluster) -> list[str]:
    """Class names of the actors alive on that node (during training: Tune's trial actors, `ImplicitFunc`)."""
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=cluster.dashboard_url, filters=[("state", "=", "ALIVE")], detail=True)
    except Exception:  # the state API is briefly unavailable while the job starts
        return []
    return [a.class_name for a in actors if a.node_id == node_id and a.class_name != "JobSupervisor"]


def test_losing_the_worker_node_mid_training_loses_nothing(cluster, mlflow_url, tmp_path, fashion_available):
    """Kills the worker node's raylet while a trial trains there; Tune retries that trial on the head from its last
    checkpoint (FailureConfig max_failures=1). Then starts a worker node again for the next test."""
    from mlflow.tracking import MlflowClient

    spec = tmp_path / "longer.yaml"  # epochs long enough to kill one mid-training
    spec.write_text(TINY_SPEC.replace("epochs: 2", "epochs: 6").replace("n_train: 256", "n_train: 2048"))
    out = tmp_path / "train-fault"
    sid = submit(cluster, spec, out, mlflow_url)
    head, worker = cluster.node_id_of("head"), cluster.node_id_of("worker_node")
    client = connect(cluster.dashboard_url)
    try:
        deadline = time.time() + 600
        seen = set()
        while not (on_worker := _actors_on(worker, cluster)):
            seen.update(_actors_on(head, cluster))
            assert time.time() < deadline, "no trial ever trained on the worker node"
            assert client.get_job_status(sid).value not in TERMINAL, (seen, client.get_job_logs(sid)[-4000:])
            time.sleep(0.5)
        assert "ImplicitFunc" in on_worker, on_worker  # Tune's actor for a function trainable (train_trial)
        # Kill once the trial on the worker node has a checkpoint to resume from and epochs still to train.
        while not any(m.get("node_id") == worker and 1 <= m["epoch"] < 6 for m in checkpoint_metas(out)):
            assert time.time() < deadline, "no checkpoint of an unfinished trial on the worker node"
            assert client.get_job_status(sid).value not in TERMINAL, client.get_job_logs(sid)[-4000:]
            time.sleep(0.2)
        assert not (out / "trials").exists(), "training had already ended"
        cluster.kill_node("worker_node")
        wait_ok(cluster, sid)
    finally:
        cluster.add_node("worker_node", num_cpus=1, resources={"worker_node": 1})

    check_complete(out)
    trials = read_trials(out).to_pylist()
    assert [t["epochs_completed"] for t in trials] == [6, 6]
    assert {t["node_id"] for t in trials} == {head}  # the trial that lost its node finished on the head
    ep = read_epochs(out).to_pandas()
    assert sorted(ep.groupby("trial_id")["epoch"].apply(list).map(sorted).tolist()) == [list(range(1, 7))] * 2
    assert set(read_examples(out).column("node_id").to_pylist()) == {head}  # evaluation after the loss: head only

    manifest = json.loads((out / "sweep.json").read_text())
    mc = MlflowClient(tracking_uri=mlflow_url)
    exp = mc.get_experiment_by_name(f"advsweep/{manifest['sweep_id']}")
    runs = mc.search_runs([exp.experiment_id])
    assert sorted(r.data.tags.get("kind") for r in runs) == ["sweep", "trial", "trial"]  # one run per trial
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_id for r in runs if r.data.tags["kind"] == "trial"} == {t["mlflow_run_id"] for t in trials}


def test_losing_the_worker_node_mid_evaluation_loses_nothing(cluster, mlflow_url, spec_file, tmp_path):
    """Runs last in this module: it kills the worker node's raylet (by pid) once that node has written a unit."""
    out = tmp_path / "fault"
    sid = submit(cluster, spec_file, out, mlflow_url)
    worker = cluster.node_id_of("worker_node")
    head = cluster.node_id_of("head")
    client = connect(cluster.dashboard_url)
    killed_after = None
    deadline = time.time() + 900
    while killed_after is None and time.time() < deadline:
        files = list((out / "examples").rglob("shard-*.parquet")) if (out / "examples").exists() else []  # not .tmp-*
        on_worker = [f for f in files if pq.read_table(f, columns=["node_id"]).column(0)[0].as_py() == worker]
        if on_worker:
            cluster.kill_node("worker_node")
            killed_after = {str(f) for f in files}
            break
        assert client.get_job_status(sid).value not in ("FAILED", "STOPPED", "SUCCEEDED"), \
            client.get_job_logs(sid)[-4000:]
        time.sleep(0.3)
    assert killed_after is not None, "the worker node never ran a unit"

    logs = wait_ok(cluster, sid)
    check_complete(out)
    ex = read_examples(out).select(["trial_id", "attack", "eps", "shard", "node_id"]).to_pandas()
    units = ex.drop_duplicates(["trial_id", "attack", "eps", "shard"])
    assert len(units) == N_TRIALS * N_ATTACK_EPS * (N_TEST // 30)
    assert set(units["node_id"]) == {head, worker}
    assert (units["node_id"] == worker).sum() <= len(killed_after) + 1  # nothing ran there after the kill
    assert "[eval]" in logs
