"""Warm worker pool and the in-process path of the engine (issue 13): same rows as fresh actors, actors cleaned up."""
import functools
import os
import shutil
import time
from pathlib import Path

import pytest

from advsweep.evaluation.engine import TrialRef, WorkerPool, evaluate
from advsweep.evaluation.units import AttackConfig
from advsweep.storage.parquet import read_examples
from checkpoints import make_checkpoint, two_trial_job

pytestmark = pytest.mark.slow
ATTACKS = [AttackConfig("fgsm", "fgsm", (0.05, 0.1)), AttackConfig("pgd", "pgd", (0.1,), {"steps": 3})]
N, SHARD = 32, 16


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return two_trial_job(tmp_path_factory.mktemp("pool"), N, 500)


def _rows(out):
    df = read_examples(out).to_pandas().drop(columns=["wall_time_s", "node_id", "node_ip"])
    for c in ("trial_id", "attack"):
        df[c] = df[c].astype(str)
    return df.sort_values(["trial_id", "attack", "eps", "example_index"]).reset_index(drop=True)


def _eval(out, job, trials, attacks=ATTACKS, batch_size=8, **kw):
    _, x, y, index = job
    infos = []
    counts = evaluate(out, "sweep-p", trials, attacks, x, y, index, shard_size=SHARD, batch_size=batch_size,
                      base_seed=3, progress=lambda u, info: infos.append(info), **kw)
    return counts, infos


def _gone(pids, timeout=20.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.5)
    return False


def test_warm_pool_across_calls_gives_the_fresh_actor_rows(ray_local, job, tmp_path):
    trials = job[0]
    _, fresh = _eval(tmp_path / "fresh", job, trials, num_workers=2, head_start=False)
    with WorkerPool(tmp_path / "warm", "sweep-p") as pool:
        # one call per trial, as the overlapped evaluation makes them: the second reuses the first's processes
        _, first = _eval(tmp_path / "warm", job, trials[:1], num_workers=2, pool=pool)
        _, second = _eval(tmp_path / "warm", job, trials[1:], num_workers=2, pool=pool)
        assert pool.created == 2 and len(pool.idle) == 2
        assert {i["pid"] for i in second} <= {i["pid"] for i in first}
        warm_pids = {i["pid"] for i in first + second}
    assert _rows(tmp_path / "warm").equals(_rows(tmp_path / "fresh"))
    assert _gone(warm_pids), "close() left actor processes running"
    assert _gone({i["pid"] for i in fresh}), "a call without a pool left its actors running"


def test_background_pool_holds_no_cpu_slot_and_runs_niced(ray_local, job, tmp_path):
    with WorkerPool(tmp_path / "normal", "sweep-p") as pool:
        _, infos = _eval(tmp_path / "normal", job, job[0][:1], num_workers=1, pool=pool)
        base = os.getpriority(os.PRIO_PROCESS, infos[0]["pid"])  # Ray's own worker niceness
    with WorkerPool(tmp_path / "bg", "sweep-p", background=True, nice=2) as pool:
        _, infos = _eval(tmp_path / "bg", job, job[0][:1], num_workers=1, pool=pool)
        pid = infos[0]["pid"]
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, base + 2)
        assert ray_local.available_resources().get("CPU") == 2  # the idle warm actor keeps no slot
    assert _gone({pid})
    assert _rows(tmp_path / "bg").equals(_rows(tmp_path / "normal"))


def test_single_unit_job_runs_in_process_with_the_actor_rows(ray_local, job, tmp_path):
    """Compared at the same thread count: the rows do not depend on where the units run."""
    trials = job[0]
    one = [AttackConfig("pgd", "pgd", (0.1,), {"steps": 3})]
    _, x, y, index = job
    small = (trials, x[:SHARD], y[:SHARD], index[:SHARD])
    counts, here = _eval(tmp_path / "here", small, trials[:1], one)
    assert counts["ran"] == 1 and here[0]["pid"] == os.getpid()  # auto: one pending unit runs here
    assert here[0]["threads"] == 1  # a worker's threads, as on an actor
    threads = min(2, os.cpu_count())
    _, actor = _eval(tmp_path / "actor", small, trials[:1], one, in_process=False, cpus_per_worker=threads,
                     head_start=False)
    _, here2 = _eval(tmp_path / "here2", small, trials[:1], one, cpus_per_worker=threads)
    assert here2[0]["pid"] == os.getpid() and here2[0]["threads"] == threads
    assert actor[0]["pid"] != os.getpid() and actor[0]["threads"] == threads
    assert _rows(tmp_path / "here2").equals(_rows(tmp_path / "actor"))
    # A job of several units still goes to actors; forcing it here gives the same rows.
    _, many = _eval(tmp_path / "many", job, trials, num_workers=1, cpus_per_worker=threads, head_start=False)
    assert os.getpid() not in {i["pid"] for i in many}
    _eval(tmp_path / "many-here", job, trials, in_process=True, cpus_per_worker=threads)
    assert _rows(tmp_path / "many-here").equals(_rows(tmp_path / "many"))


def test_in_process_calls_keep_the_model_until_its_checkpoint_changes(ray_local, job, tmp_path, monkeypatch):
    """Repeated lone jobs in this process load a checkpoint once, as a warm actor does; weights rewritten at the
    same path are loaded again, and the rows are those of a fresh actor on the new weights."""
    import advsweep.evaluation.checkpoints as checkpoints

    loads = []
    real = checkpoints.load_model
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    trials = job[0]
    ckpt = shutil.copytree(trials[0].checkpoint, tmp_path / "ckpt")
    trial = [TrialRef("t0", str(ckpt))]
    one = [AttackConfig("pgd", "pgd", (0.1,), {"steps": 3})]
    _, x, y, index = job
    small = (trials, x[:SHARD], y[:SHARD], index[:SHARD])
    for out in ("first", "second"):
        _, here = _eval(tmp_path / out, small, trial, one)
        assert here[0]["pid"] == os.getpid()
    assert loads == [str(ckpt)]
    assert _rows(tmp_path / "second").equals(_rows(tmp_path / "first"))
    shutil.rmtree(ckpt)
    make_checkpoint(ckpt, 7, width=8, blocks=1)  # other weights, same path
    _eval(tmp_path / "new", small, trial, one)
    assert loads == [str(ckpt)] * 2
    _eval(tmp_path / "actor", small, trial, one, in_process=False, head_start=False)
    new, actor = _rows(tmp_path / "new"), _rows(tmp_path / "actor")
    assert new.equals(actor) and not new.equals(_rows(tmp_path / "first"))


def test_head_start_runs_jobs_here_until_an_actor_is_up(ray_local, job, tmp_path, monkeypatch):
    """A fresh call's first jobs run in this process (a worker's threads); actors start only when the work left
    exceeds their start-up (forced here: 0 s) and take over once up. The rows are those of an actor-only
    run, every unit once, and this process's torch thread count is restored."""
    import torch

    from advsweep.evaluation import engine

    trials = job[0]
    threads = torch.get_num_threads()
    short, _ = _eval(tmp_path / "short", job, trials, num_workers=2)  # seconds of work: usually all done here
    monkeypatch.setattr(engine, "HEAD_START_S", 0.0)
    counts, infos = _eval(tmp_path / "head", job, trials, num_workers=2)
    assert counts["ran"] == counts["units"] == len(infos) == short["ran"]
    here = [i for i in infos if i["pid"] == os.getpid()]
    assert here and all(i["threads"] == 1 for i in here)
    assert torch.get_num_threads() == threads
    _eval(tmp_path / "actors", job, trials, num_workers=2, head_start=False)
    actors = _rows(tmp_path / "actors")
    assert _rows(tmp_path / "head").equals(actors) and _rows(tmp_path / "short").equals(actors)


def test_workers_keep_freed_memory_instead_of_faulting_it_back(ray_local, tmp_path):
    """glibc in a Ray worker returns each freed activation buffer to the OS and page-faults it in at the next step
    (advsweep.malloc); the engine's workers keep it. Same job on a warm pool with and without the setting."""
    import numpy as np

    from advsweep.evaluation.engine import TrialRef

    trials = [TrialRef("t0", make_checkpoint(tmp_path / "c", 0, width=16, blocks=1))]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=64).astype(np.int64)
    attack = [AttackConfig("pgd", "pgd", (0.1,), {"steps": 10})]
    faults = {}
    for name, env in (("kept", {}), ("glibc", {"ADVSWEEP_MALLOC": "default"})):
        with WorkerPool(tmp_path / name, "sweep-m", worker_env=env) as pool:
            for _ in range(2):  # the second call runs on a warm actor (model loaded, heap grown)
                infos = []
                evaluate(pool.out_dir, "sweep-m", trials, attack, x, y, np.arange(64), shard_size=64, batch_size=64,
                         base_seed=0, num_workers=1, pool=pool, in_process=False,
                         progress=lambda u, i: infos.append(i))
                shutil.rmtree(Path(pool.out_dir) / "examples")
            (info,) = infos
            assert info["malloc_tuned"] is (name == "kept")
            faults[name] = info["minor_faults"]
    assert faults["glibc"] > 5 * faults["kept"], faults


def test_pass_bounds_cut_a_lone_shard_between_threads():
    from advsweep.evaluation.shard import pass_bounds

    assert pass_bounds(150, 64) == [(0, 64), (64, 128), (128, 150)]  # one thread: as before
    assert pass_bounds(64, 64, 2) == [(0, 32), (32, 64)]  # a lone shard: both cores
    assert pass_bounds(192, 64, 2) == [(0, 48), (48, 96), (96, 144), (144, 192)]  # a multiple of the threads
    assert pass_bounds(3, 64, 4) == [(0, 1), (1, 2), (2, 3)]  # never an empty pass
    for total, batch, threads in ((1, 8, 2), (100, 7, 3), (64, 64, 5)):
        cut = pass_bounds(total, batch, threads)
        assert cut[0][0] == 0 and cut[-1][1] == total and all(a < b <= a + batch for a, b in cut)
        assert all(p[1] == q[0] for p, q in zip(cut, cut[1:]))


def test_lone_job_spreads_its_passes_over_the_node_cpus_with_the_actor_rows(ray_local, job, tmp_path):
    """One pending ε-batched job runs in this process with its passes on 2 one-thread Python threads, also when a
    warm pool is at hand (a niced background pool's job stays on its actor); the rows are those of one actor
    running it as one pass (batch = shard size: 2 passes of 8 here, 1 of 16 there). A lone job that cannot split
    (Square) runs here too beside a warm pool, on a worker's one thread, with the rows of the pool's actor."""
    trials = job[0]
    _, x, y, index = job
    lone = (trials, x[:SHARD], y[:SHARD], index[:SHARD])
    pgd = [AttackConfig("pgd", "pgd", (0.1,), {"steps": 3})]
    lone_eval = functools.partial(_eval, batch_size=SHARD)
    _, here = lone_eval(tmp_path / "here", lone, trials[:1], pgd, num_workers=2)
    assert here[0]["pid"] == os.getpid() and (here[0]["threads"], here[0]["pass_threads"]) == (1, 2)
    _, actor = lone_eval(tmp_path / "actor", lone, trials[:1], pgd, num_workers=1, in_process=False, head_start=False)
    assert actor[0]["pid"] != os.getpid() and actor[0]["pass_threads"] == 1
    assert _rows(tmp_path / "here").equals(_rows(tmp_path / "actor"))
    with WorkerPool(tmp_path / "warm", "sweep-p") as pool:
        _, warm = lone_eval(tmp_path / "warm", lone, trials[:1], pgd, pool=pool)
        assert warm[0]["pid"] == os.getpid() and warm[0]["pass_threads"] == 2 and pool.created == 0
        square_attack = [AttackConfig("sq", "square", (0.1,), {"n_queries": 5})]
        _, square = lone_eval(tmp_path / "warm", lone, trials[:1], square_attack, pool=pool)
        assert square[0]["pid"] == os.getpid() and (square[0]["threads"], square[0]["pass_threads"]) == (1, 1)
        _, on_actor = lone_eval(tmp_path / "warm-actor", lone, trials[:1], square_attack, pool=None,
                                num_workers=1, in_process=False, head_start=False)
        assert on_actor[0]["pid"] != os.getpid()
        assert pool.created == 0
    assert _rows(tmp_path / "warm").query("attack == 'sq'").reset_index(drop=True).equals(_rows(tmp_path / "warm-actor"))
    with WorkerPool(tmp_path / "bg", "sweep-p", background=True) as pool:
        _, bg = lone_eval(tmp_path / "bg", lone, trials[:1], pgd, pool=pool)
        assert bg[0]["pid"] != os.getpid()
    assert _rows(tmp_path / "warm").query("attack == 'pgd'").reset_index(drop=True).equals(_rows(tmp_path / "actor"))
    assert _rows(tmp_path / "bg").equals(_rows(tmp_path / "actor"))
