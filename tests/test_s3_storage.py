"""Sweeps stored on S3: a real S3 API (moto's server on loopback), a real private Ray started by `advsweep run`,
tables read back from the bucket with pyarrow, a sweep copied out of the bucket analysed locally."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest
from pyarrow import fs as pafs

from advsweep.cluster.loopback import free_port

sys.path.insert(0, str(Path(__file__).parent))
from tiny_spec import TINY_SPEC  # noqa: E402

pytestmark = pytest.mark.slow  # a server and CLI subprocesses (the end-to-end test starts Ray)
BIN = Path(sys.executable).parent
BUCKET = "advsweep-test"
# the tiny spec without PGD and the monitor: fgsm × 2 ε
SPEC = (TINY_SPEC.replace("  - {name: pgd, eps: [0.1], steps: 3}\n", "")
        .replace("monitor: {eps: 0.1, steps: 2, n: 32}\n", ""))
N_TEST, N_TRIALS, N_EPOCHS, N_ATTACK_EPS = 60, 2, 2, 2


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 with one bucket; env for the commands (endpoint, dummy credentials, cache)."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.3)
        env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "ADVSWEEP_CACHE": str(tmp_path_factory.mktemp("cache")), "RAY_AUTH_MODE": "disabled"}
        fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                               region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(BUCKET)
        yield fs, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: the server's workers may not exit in time
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _advsweep(env, *args, timeout=600):
    return subprocess.run([str(BIN / "advsweep"), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_bad_output_uri_fails_with_one_line_and_writes_nothing(s3, tmp_path):
    fs, env = s3
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    r = _advsweep(env, "run", str(spec), "--out", "s3://no-such-bucket/sweep", "--mlflow-uri",
                  f"sqlite:///{tmp_path / 'm.db'}", timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("advsweep: error: --out")
    assert "no-such-bucket" in r.stderr and "NO_SUCH_BUCKET" in r.stderr
    r = _advsweep(env, "run", str(spec), "--out", f"s3://{BUCKET}/no-mlflow", timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "--mlflow-uri" in r.stderr
    assert fs.get_file_info(pafs.FileSelector(f"{BUCKET}/no-mlflow", allow_not_found=True)) == []

    from advsweep.cluster.jobs import submit
    from advsweep.registry import SpecError

    with pytest.raises(SpecError, match="--mlflow-uri"):
        submit(spec, "http://127.0.0.1:1", f"s3://{BUCKET}/job")


def test_sweep_on_s3_end_to_end_then_copied_and_analysed_locally(s3, tmp_path, fashion_available):
    fs, env = s3
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    uri, key = f"s3://{BUCKET}/sweeps/tiny", f"{BUCKET}/sweeps/tiny"
    r = _advsweep(env, "run", str(spec), "--out", uri, "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--quiet")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"Stored    {uri}" in r.stdout

    def table(name, partitioning=None):
        return ds.dataset(f"{key}/{name}", filesystem=fs, format="parquet", partitioning=partitioning).to_table()

    examples = table("examples", "hive")
    per_unit = examples.group_by(["trial_id", "attack", "eps", "example_index"]).aggregate([([], "count_all")])
    assert per_unit.num_rows == N_TRIALS * N_ATTACK_EPS * N_TEST
    assert pc.max(per_unit["count_all"]).as_py() == 1
    epochs = table("epochs")
    per_epoch = epochs.group_by(["trial_id", "epoch"]).aggregate([([], "count_all")])
    assert per_epoch.num_rows == N_TRIALS * N_EPOCHS and pc.max(per_epoch["count_all"]).as_py() == 1
    trials = table("trials").to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * N_TRIALS
    for t in trials:  # stored relative to the sweep root, and there in the bucket
        assert not t["checkpoint"].startswith(("/", "s3:", BUCKET)), t["checkpoint"]
        assert t["checkpoint"].startswith("ray/")
        assert fs.get_file_info(f"{key}/{t['checkpoint']}/state.pt").type == pafs.FileType.File
    assert fs.get_file_info(f"{key}/robustness/part-0.parquet").type == pafs.FileType.File
    for name in ("sweep.json", "spec.yaml", "subsets.npz"):
        assert fs.get_file_info(f"{key}/{name}").type == pafs.FileType.File, name

    r = _advsweep(env, "show", uri, "--format", "csv", timeout=120)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.strip().splitlines()
    assert len(rows) == 1 + N_TRIALS and "robust_acc/fgsm/eps_0.05" in rows[0], r.stdout
    assert f"{uri}/ray/" in rows[1]  # the mirror holds no checkpoints: they are named where they are
    r = _advsweep(env, "compare", uri, "0", "1", "--attack", "fgsm", "--eps", "0.1", timeout=120)
    assert r.returncode == 0 and "exact McNemar" in r.stdout, r.stdout + r.stderr

    # A copy of the bucket's sweep in a local directory is a complete sweep there: tables, and checkpoints that
    # the stored relative paths find.
    local = tmp_path / "copy"
    pafs.copy_files(key, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    from advsweep.evaluation.checkpoints import load_model
    from advsweep.storage.parquet import trial_rows

    for row in trial_rows(local):
        assert Path(row["checkpoint"]).is_relative_to(local)
        load_model(row["checkpoint"])
    from advsweep.analysis.frontier import write_frontiers
    from advsweep.analysis.summary import load_results

    assert len(load_results(local).trials) == N_TRIALS
    assert any(f.name == "front.csv" for f in write_frontiers(local))
