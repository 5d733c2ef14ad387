"""The sharded evaluation engine on real Ray actors: fault tolerance, idempotent reruns, determinism, bad input."""
from pathlib import Path

import pytest
import torch

from advsweep.evaluation.checkpoints import CHECKPOINT_META, CHECKPOINT_STATE, load_model
from advsweep.evaluation.engine import evaluate
from advsweep.evaluation.units import AttackConfig
from advsweep.registry import SpecError
from advsweep.storage.parquet import read_examples
from checkpoints import two_trial_job

pytestmark = pytest.mark.slow
ATTACKS = [AttackConfig("fgsm", "fgsm", (0.05, 0.1)), AttackConfig("pgd", "pgd", (0.1,), {"steps": 3})]
N, SHARD = 48, 16


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return (root, *two_trial_job(root, N, 1000))


def _run(out, job, **kw):
    _, trials, x, y, index = job
    return evaluate(out, "sweep-x", trials, ATTACKS, x, y, index, shard_size=SHARD, batch_size=8, base_seed=5,
                    num_workers=2, **kw)


def _rows(out):
    df = read_examples(out).to_pandas().drop(columns=["wall_time_s"])
    df["trial_id"] = df["trial_id"].astype(str)
    df["attack"] = df["attack"].astype(str)
    return df.sort_values(["trial_id", "attack", "eps", "example_index"]).reset_index(drop=True)


def test_actor_killed_mid_unit_job_completes_exactly_once(ray_local, job, tmp_path):
    marker = tmp_path / "crashed"
    counts = _run(tmp_path / "a", job, crash_marker=str(marker))
    assert marker.exists(), "the injected crash did not happen"
    assert counts["resubmitted"] >= 1
    assert counts["ran"] == counts["units"] == 2 * 3 * (N // SHARD)
    rows = _rows(tmp_path / "a")
    assert len(rows) == 2 * 3 * N
    assert not rows.duplicated(["trial_id", "attack", "eps", "example_index"]).any()
    assert not list((tmp_path / "a").rglob(".tmp-*")), "a half-written temp file was left behind"
    # Same seed, no crash: identical rows.
    _run(tmp_path / "b", job)
    other = _rows(tmp_path / "b")
    assert rows.equals(other)
    # A rerun of a finished job writes nothing.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.parquet")}
    assert _run(tmp_path / "a", job)["ran"] == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*.parquet")} == before


def test_rows_are_correct(ray_local, job, tmp_path):
    _run(tmp_path / "c", job)
    rows = _rows(tmp_path / "c")
    _, trials, x, y, index = job
    assert set(rows["example_index"]) == set(index.tolist())
    assert (rows["linf"] <= rows["eps"] + 1e-6).all()
    assert (rows["robust"] == ((rows["clean_pred"] == rows["label"]) & (rows["adv_pred"] == rows["label"]))).all()
    model = load_model(trials[0].checkpoint)
    with torch.no_grad():
        clean = model(torch.from_numpy(x).float() / 255).argmax(1).numpy()
    t0 = rows[(rows["trial_id"] == "t0") & (rows["attack"] == "fgsm") & (rows["eps"] == 0.05)]
    assert (t0.sort_values("example_index")["clean_pred"].to_numpy() == clean).all()
    assert rows["seed"].nunique() == 2 * 3 * (N // SHARD)  # one recorded seed per unit


def test_corrupt_or_missing_checkpoint_is_one_line(tmp_path, job):
    root, trials, *_ = job
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CHECKPOINT_META).write_text((Path(trials[0].checkpoint) / CHECKPOINT_META).read_text())
    (bad / CHECKPOINT_STATE).write_bytes(b"not a pickle")
    with pytest.raises(SpecError) as exc:
        load_model(bad)
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(SpecError) as exc:
        load_model(tmp_path / "nowhere")
    assert "checkpoint file missing" in str(exc.value)


def test_transfer_from_the_same_checkpoint_equals_white_box(ray_local, job, tmp_path):
    _, trials, x, y, index = job
    xfer = AttackConfig("xfer", "transfer", (0.1,), {"base": "fgsm"}, source_trial="t0")
    evaluate(tmp_path, "s", trials[:1], [ATTACKS[0], xfer], x, y, index, shard_size=SHARD, batch_size=8,
             base_seed=5, num_workers=2, source_checkpoints={"xfer": trials[0].checkpoint})
    rows = _rows(tmp_path)
    wb = rows[(rows["attack"] == "fgsm") & (rows["eps"] == 0.1)].set_index("example_index")
    tr = rows[rows["attack"] == "xfer"].set_index("example_index")
    assert len(tr) == N and (tr["adv_pred"] == wb["adv_pred"]).all()
    assert (tr["linf"] - wb["linf"]).abs().max() < 1e-6
    assert '"source_trial": "t0"' in tr["attack_params"].iloc[0]


def test_worker_env_sets_a_short_openmp_spin_only_for_multithreaded_workers(monkeypatch):
    from advsweep.evaluation.engine import default_worker_env

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(var, raising=False)
    assert default_worker_env(1) == {}
    assert default_worker_env(2) == {"GOMP_SPINCOUNT": "10000"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice wins
    assert default_worker_env(2) == {}


def test_multithreaded_worker_with_short_openmp_spin_gives_identical_rows(ray_local, job, tmp_path):
    """One 2-thread worker (GOMP_SPINCOUNT=10000 from the engine) and one with the environment's policy write the
    same rows as two 1-thread workers: the thread layout and the OpenMP wait policy are not part of the result."""
    import os

    from advsweep.evaluation.engine import default_worker_env, omp_wait

    _run(tmp_path / "ref", job)
    ref = _rows(tmp_path / "ref")
    _, trials, x, y, index = job
    for name, env in (("short-spin", None), ("inherited", {})):
        infos = []
        evaluate(tmp_path / name, "sweep-x", trials, ATTACKS, x, y, index, shard_size=SHARD, batch_size=8,
                 base_seed=5, num_workers=1, cpus_per_worker=2, worker_env=env, head_start=False,
                 progress=lambda unit, info: infos.append(info))
        assert {i["threads"] for i in infos} == {2}
        engine_env = default_worker_env(2) if env is None else {}
        expected = next((f"{k}={v}" for k, v in engine_env.items()), omp_wait())  # else the driver's, inherited
        assert {i["omp_wait"] for i in infos} == {expected}
        assert _rows(tmp_path / name).equals(ref), name


def test_eps_batched_jobs_write_the_rows_of_one_unit_jobs(ray_local, job, tmp_path):
    """batch_size 32 over shards of 16: FGSM's two ε share one job and its passes; PGD's single ε runs alone. The rows
    equal those of every unit run as a job of its own (in this process, same batch size), one file per unit."""
    from advsweep.evaluation.engine import EvalWorker, jobs
    from advsweep.evaluation.units import make_units, shard_bounds

    _, trials, x, y, index = job
    seen = []
    evaluate(tmp_path / "grouped", "sweep-x", trials, ATTACKS, x, y, index, shard_size=SHARD, batch_size=32,
             base_seed=5, num_workers=2, progress=lambda unit, info: seen.append(unit))
    units = [u for t in trials for u in make_units(t.trial_id, ATTACKS, N, SHARD, t.index)]
    assert sorted(map(str, seen)) == sorted(map(str, units))  # progress is still counted per unit
    grouped = jobs(units, [SHARD] * (N // SHARD), 32)
    assert sorted(len(j) for j in grouped) == [1] * 6 + [2] * 6
    worker = EvalWorker(str(tmp_path / "alone"), "sweep-x", 1, False)
    bounds = shard_bounds(N, SHARD)
    ckpt = {t.trial_id: t.checkpoint for t in trials}
    for u in units:
        lo, hi = bounds[u.shard]
        worker.run(u, ckpt[u.trial_id], x[lo:hi], y[lo:hi], index[lo:hi], 5, 32)
    alone = _rows(tmp_path / "alone").drop(columns=["node_id", "node_ip"])
    assert _rows(tmp_path / "grouped").drop(columns=["node_id", "node_ip"]).equals(alone)
    assert len(alone) == 2 * 3 * N


GPU_WORKER = """
import pickle, sys
import ray
from advsweep.evaluation.engine import evaluate
from advsweep.evaluation.units import AttackConfig
trials, x, y, index, out = pickle.load(open(sys.argv[1], "rb"))
ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
try:
    evaluate(out, "s", trials[:1], [AttackConfig("fgsm", "fgsm", (0.1,))], x, y, index, shard_size=16, batch_size=8,
             base_seed=5, num_workers=1, gpus_per_worker=1)
    print("RAN")
except RuntimeError as exc:
    print("ERROR", exc)
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine whose torch sees no GPU")
def test_a_worker_given_a_gpu_that_torch_cannot_see_stops_the_call_with_its_reason(job, tmp_path):
    """A Ray that advertises a GPU (num_gpus=1) with a torch that sees none: the worker must not run on the CPU in
    silence, and its constructor's error must reach the caller at once (not three retries, not a generic line)."""
    import pickle
    import subprocess
    import sys

    _, trials, x, y, index = job
    args = tmp_path / "args.pkl"
    args.write_bytes(pickle.dumps((trials, x[:16], y[:16], index[:16], str(tmp_path / "out"))))
    r = subprocess.run([sys.executable, "-c", GPU_WORKER, str(args)], capture_output=True, text=True, timeout=300)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
    assert last.startswith("ERROR an evaluation worker could not start: RuntimeError: an evaluation worker was "
                           "given 1 GPU by Ray, but torch"), last
    assert "sees no GPU" in last
    assert not list((tmp_path / "out").rglob("*.parquet"))

    with pytest.raises(ValueError, match="head_start"):
        evaluate(tmp_path / "hs", "s", trials[:1], ATTACKS, x, y, index, shard_size=SHARD, batch_size=8,
                 base_seed=5, gpus_per_worker=1, head_start=True)
