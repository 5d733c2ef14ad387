"""The sharded evaluation engine: (checkpoints × attacks × ε) over test-example shards on a pool of Ray actors.

The only module that knows Ray core. Each unit (trial, attack, ε, shard) writes one deterministic Parquet file via a
hidden temp name + rename, so a unit that runs twice (an actor died after writing, a retry) rewrites the same file and
a rerun skips finished units. Actors load each checkpoint once and keep it; the driver only tracks which units are done
and resubmits the ones whose actor died.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from advsweep.devices import worker_device
from advsweep.evaluation.units import AttackConfig, Unit, make_units, shard_bounds
from advsweep.malloc import keep_freed_memory, minor_faults
from advsweep.storage import location
from advsweep.storage.parquet import example_file

MAX_ATTEMPTS = 3  # per unit, for failures of the actor process (not for bugs: those raise at once)
# Work left (at the calling process's pace, one worker's threads) above which a fresh call starts actors. On an idle
# 2-core machine (benchmarks/engine_speed.py) two actors take ≈ 5 s to start and then do the work of two such
# processes; starting them pays once the work left exceeds ≈ 1.3 × that start-up.
HEAD_START_S = 6.0
# The same when this process's jobs already spread their ε-batched passes over all the node's CPUs: actors then gain
# only what separate processes run faster than threads sharing one interpreter (PGD-20, width-16 ResNet: 2 warm
# actors 1.31x the plain 2-thread loop, passes on 2 threads 1.12x, so g = 1.17), and while they start they slow this
# process (their imports take the same cores, c ~ 0.5). They pay once work left W > S (g - c) / (g - 1) ~ 4 S.
HEAD_START_SPLIT_S = 20.0

# OpenMP variables that, when set in the driver's environment, leave the workers' OpenMP wait policy to the user.
_OMP_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def default_worker_env(threads: int) -> dict[str, str]:
    """Environment for the worker processes: a short OpenMP spin (GOMP_SPINCOUNT=10000) for multi-threaded workers.

    An attack step on small images is hundreds of short OpenMP regions. With libgomp's default policy a thread spins
    up to 300,000 iterations after each region, which is the fastest when the worker has its cores to itself, but when
    the node's cores are shared (other workers, trials, another user's jobs) the spinning thread holds a core that the
    thread it waits for needs (a busy 2-core machine once made a 2-thread PGD loop 5-6x slower). OMP_WAIT_POLICY=
    PASSIVE (threads sleep at once) avoids that but made the same loop ~1.8x slower on the idle machine. A 10,000
    spin kept the idle speed (0.79-0.83 s vs 0.76-0.80 s default and 1.39-1.44 s PASSIVE for PGD-20 on 256 images,
    width-16 ResNet, AMD EPYC, 2026-12-02) and beside two busy processes was the fastest of the three (2.1-3.4 s vs
    3.4-3.9 s default, 2.4-5.0 s PASSIVE). Results are unchanged (bit for bit: only how threads wait). Nothing is
    set for 1-thread workers (no OpenMP team) or when the driver's environment chooses a policy itself
    (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME)."""
    if threads <= 1 or any(v in os.environ for v in _OMP_POLICY_VARS):
        return {}
    return {"GOMP_SPINCOUNT": "10000"}


def omp_wait() -> str | None:
    """This process's OpenMP wait setting as the environment gives it (None: libgomp's default)."""
    return next((f"{v}={os.environ[v]}" for v in _OMP_POLICY_VARS if v in os.environ), None)


def ray_node() -> dict[str, str | None]:
    """Node id and IP of the Ray node this process runs on (None outside Ray)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": None, "node_ip": None}
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


@dataclass(frozen=True)
class TrialRef:
    trial_id: str
    checkpoint: str
    index: int | None = None  # position in the spec's trial list (attacks may name trials by it)


class ModelCache:
    """Loaded models (least recently used first, at most `size`) and their clean logits, keyed by checkpoint. A local
    checkpoint whose weights file changed since it was loaded (same path, new weights) is loaded again and its
    clean logits dropped; a remote one is a download that `location.local_copy` keeps once per process."""

    def __init__(self, size: int = 4):
        self.size = size
        self.models: OrderedDict[tuple[str, str], tuple[tuple | None, torch.nn.Module]] = OrderedDict()
        self.clean: dict[tuple, torch.Tensor] = {}  # (checkpoint, device type, batch, pixels' hash) -> logits

    @staticmethod
    def stamp(checkpoint: str) -> tuple | None:
        from advsweep.evaluation.checkpoints import CHECKPOINT_STATE

        if location.is_remote(checkpoint):
            return None
        try:
            st = os.stat(Path(checkpoint) / CHECKPOINT_STATE)
        except OSError:
            return None  # load_model names the missing file
        return st.st_ino, st.st_size, st.st_mtime_ns

    def model(self, checkpoint: str, device: torch.device) -> torch.nn.Module:
        from advsweep.evaluation.checkpoints import load_model

        key, stamp = (checkpoint, device.type), self.stamp(checkpoint)
        held = self.models.get(key)
        if held is None or held[0] != stamp:
            self._forget_clean(key)
            self.models[key] = (stamp, load_model(checkpoint, device))
            if len(self.models) > self.size:
                self._forget_clean(self.models.popitem(last=False)[0])
        self.models.move_to_end(key)
        return self.models[key][1]

    def _forget_clean(self, model_key: tuple[str, str]) -> None:
        self.clean = {k: v for k, v in self.clean.items() if k[:2] != model_key}


# This process's work in process (lone jobs, the head start) keeps its models across `evaluate` calls, as a warm
# pool's actors do: a repeated one-shard call then neither reloads the checkpoint nor recomputes its clean logits.
_LOCAL_CACHE = ModelCache()


class EvalWorker:
    """Ray actor body: keeps loaded models, runs units, writes their files. Plain class so it can run in-process."""

    def __init__(self, out_dir: str, sweep_id: str, threads: int, use_gpu: bool, cache_models: int = 4,
                 crash_marker: str | None = None, nice: int = 0, pass_threads: int | None = None,
                 cache: "ModelCache | None" = None):
        """`threads`: torch threads of a job. `pass_threads` (default `threads`): ε-batched passes (fgsm, pgd, pgd_l2)
        run on that many Python threads with one torch thread each, so their rows never depend on the thread count
        (see shard.pass_threads_for: one at a time on a GPU). `cache`: loaded models and clean logits to use and
        fill (this process's work in process shares one across `evaluate` calls); None: a cache of its own."""
        torch.set_num_threads(max(1, threads))
        self.pass_threads = max(1, threads if pass_threads is None else pass_threads)
        self.malloc_tuned = keep_freed_memory()  # a Ray worker otherwise page-faults every tensor in (see malloc.py)
        import advsweep.evaluation.shard  # noqa: F401  (the attacks: an actor is up once it can run a unit at once)
        if nice:  # a background worker (overlapped evaluation): the OS runs training first when cores are short
            os.nice(nice)
        self.out_dir, self.sweep_id = out_dir, sweep_id
        self.device = worker_device(1 if use_gpu else 0, "an evaluation worker")
        self.cache = cache if cache is not None else ModelCache(cache_models)
        self.crash_marker = crash_marker  # tests: die once, mid-unit, after the attack and before the rename

    def _model(self, checkpoint: str) -> torch.nn.Module:
        return self.cache.model(checkpoint, self.device)

    def run(self, units: Unit | tuple[Unit, ...], checkpoint: str, x: np.ndarray, y: np.ndarray, index: np.ndarray,
            base_seed: int, batch_size: int, source_checkpoint: str | None = None) -> dict[str, Any]:
        """Run one job: a unit, or several ε-batched units of one attack on one shard (see `jobs`)."""
        from advsweep.evaluation.shard import pass_threads_for, predict_logits, run_units
        from advsweep.storage.parquet import write_atomic
        from advsweep.training.trainer import as_float_images

        units = units if isinstance(units, tuple) else (units,)
        start, cpu_start, faults_start = time.perf_counter(), time.process_time(), minor_faults()
        model = self._model(checkpoint)
        source = self._model(source_checkpoint) if source_checkpoint else None
        xt = as_float_images(torch.from_numpy(np.array(x)))  # object-store arrays are read-only
        yt = torch.from_numpy(np.array(y)).long()
        # A warm pool's worker (and this process's cache) serves many evaluate() calls: the key names the examples
        # by their pixels, not by a shard number or dataset indices that another call may give other images.
        key = (checkpoint, self.device.type, batch_size, hash(np.asarray(x).tobytes()))
        clean = self.cache.clean.get(key)
        if clean is None:
            clean = self.cache.clean[key] = predict_logits(model, xt, batch_size, self.device)
        pass_threads = pass_threads_for(model, units, self.pass_threads, self.device)
        tables = run_units(model, units, xt, yt, index, clean, self.sweep_id, base_seed, batch_size,
                           self.device, source_model=source, pass_threads=pass_threads)
        if self.crash_marker and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).write_text(str(units))
            os._exit(1)
        node = ray_node()
        paths = []
        for unit, eps, table in tables:
            for name, value in node.items():  # where the unit ran, on every row
                column = pa.array([value] * table.num_rows, pa.string())
                table = table.set_column(table.schema.get_field_index(name), name, column)
            path = example_file(self.out_dir, unit.trial_id, unit.attack.label, eps, unit.shard)
            write_atomic(table, path, self.sweep_id)
            paths.append(str(path))
        return {"paths": paths, "rows": sum(t.num_rows for _, _, t in tables), "examples": len(x),
                "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
                "minor_faults": minor_faults() - faults_start, "malloc_tuned": self.malloc_tuned,
                "pid": os.getpid(), **node,
                "threads": torch.get_num_threads(), "omp_wait": omp_wait(),
                "pass_threads": pass_threads}


def free_worker_slots(cpus_per_worker: float, gpus_per_worker: float = 0) -> int:
    """Evaluation workers the cluster can place right now (other work, e.g. training trials, holds the rest)."""
    import ray

    res = ray.available_resources()
    if gpus_per_worker:
        return int(res.get("GPU", 0) // gpus_per_worker)
    return int(res.get("CPU", 0) // cpus_per_worker)


def pending_units(out_dir: str | Path, trials: list[TrialRef], attacks: list[AttackConfig], n: int,
                  shard_size: int, skip: set[tuple[str, str]] = frozenset()) -> tuple[list[Unit], list[Unit]]:
    """(all units, units with a file not there yet). `skip`: (trial id, attack label) pairs not to run."""
    units = [u for t in trials for u in make_units(t.trial_id, attacks, n, shard_size, t.index)
             if (u.trial_id, u.attack.label) not in skip]
    todo = [u for u in units
            if not all(location.exists(example_file(out_dir, u.trial_id, u.attack.label, e, u.shard)) for e in u.eps)]
    return units, todo


def jobs(units: list[Unit], shard_lengths: list[int], batch_size: int) -> list[tuple[Unit, ...]]:
    """Units grouped into the jobs handed to workers. The ε-batched units of one (trial, attack, shard) share a job,
    as many as fill one pass (⌈batch_size / shard length⌉): a shard smaller than the batch then fills its passes with
    the next ε instead of running short ones, while workers still get as many jobs as possible. Every other unit is
    a job of its own. Grouping never changes a unit's rows (see shard.run_units)."""
    from advsweep.evaluation.shard import eps_batched

    out: list[list[Unit]] = []
    open_job: dict[tuple, list[Unit]] = {}
    for u in units:
        key = (u.trial_id, u.attack.label, u.shard)
        per_job = -(-batch_size // shard_lengths[u.shard])
        if not eps_batched(u) or per_job == 1:
            out.append([u])
            continue
        job = open_job.get(key)
        if job is None or len(job) >= per_job:
            job = open_job[key] = []
            out.append(job)
        job.append(u)
    return [tuple(j) for j in out]


def _report(progress: Callable[[Unit, dict], None] | None, job: tuple[Unit, ...], info: dict[str, Any]) -> None:
    """Progress is counted in units: a job's units share its time, CPU time and page faults (so that sums over
    units are the job's)."""
    if progress:
        share = {k: info[k] / len(job) for k in ("seconds", "cpu_seconds", "minor_faults")}
        for u in job:
            progress(u, {**info, **share})


class WorkerPool:
    """Evaluation actors kept across `evaluate` calls (one pool per sweep): each actor process starts, imports torch,
    loads a checkpoint and computes its clean logits once instead of once per call. Ray must be initialised;
    `close()` (or leaving a `with` block) kills the actors.

    `background=True` (overlapped evaluation, while training runs): actors hold no CPU slot (num_cpus=0; GPUs are
    still reserved) and their OS niceness is raised by `nice` above Ray's worker niceness (capped at 19), so an idle
    warm actor never keeps a trial from starting and a busy one yields the cores to training when they are short.
    `evaluate` still bounds how many of them run at once."""

    def __init__(self, out_dir: str | Path, sweep_id: str, *, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
                 worker_env: dict[str, str] | None = None, background: bool = False, nice: int = 10,
                 crash_marker: str | None = None):
        import ray

        self.out_dir, self.sweep_id = str(location.root(out_dir)), sweep_id
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.threads = int(max(1, cpus_per_worker))
        self.nice = nice if background else 0
        self.crash_marker = crash_marker
        env = default_worker_env(self.threads) if worker_env is None else dict(worker_env)
        self._actor_cls = ray.remote(EvalWorker).options(
            num_cpus=0 if background else cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
            **({"runtime_env": {"env_vars": env}} if env else {}))
        self.started: dict[Any, Any] = {}  # live actor -> ref that resolves once its process is up
        self.idle: list = []
        self.created = 0  # actor processes started over the pool's life

    def new_actor(self):
        actor = self._actor_cls.remote(self.out_dir, self.sweep_id, self.threads, self.gpus_per_worker > 0,
                                       crash_marker=self.crash_marker, nice=self.nice)
        self.started[actor] = actor.__ray_ready__.remote()
        self.created += 1
        return actor

    def is_up(self, actor) -> bool:
        import ray

        return not ray.wait([self.started[actor]], timeout=0)[1]

    def take(self, n: int) -> list:
        """n actors: warm idle ones first (those already up before those still starting), then new ones."""
        self.idle.sort(key=lambda a: not self.is_up(a))
        out, self.idle = self.idle[:n], self.idle[n:]
        return out + [self.new_actor() for _ in range(n - len(out))]

    def give_back(self, actors: list) -> None:
        self.idle.extend(a for a in actors if a in self.started)

    def discard(self, actor) -> None:
        """Forget an actor (dead, or about to be killed) and kill it."""
        import ray

        self.started.pop(actor, None)
        if actor in self.idle:
            self.idle.remove(actor)
        ray.kill(actor)

    def close(self) -> None:
        for actor in list(self.started):
            self.discard(actor)

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def evaluate(out_dir: str | Path, sweep_id: str, trials: list[TrialRef], attacks: list[AttackConfig],
             x: np.ndarray, y: np.ndarray, index: np.ndarray, *, shard_size: int, batch_size: int, base_seed: int,
             num_workers: int | None = None, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
             source_checkpoints: dict[str, str] | None = None, progress: Callable[[Unit, dict], None] | None = None,
             crash_marker: str | None = None, worker_env: dict[str, str] | None = None,
             skip: set[tuple[str, str]] = frozenset(), pool: WorkerPool | None = None,
             in_process: bool | None = None, head_start: bool | None = None) -> dict[str, int]:
    """Run every pending unit on a pool of actors; returns counts. Ray must be initialised by the caller.

    `source_checkpoints` maps an attack label to the checkpoint it crafts on (transfer attacks). `worker_env`:
    environment variables of the worker processes (added to the job's runtime_env); None: `default_worker_env`.
    `pool`: a `WorkerPool` whose warm actors this call uses and leaves warm (its own settings then replace
    `cpus_per_worker`, `gpus_per_worker`, `worker_env` and `crash_marker`); None: a pool for this call only.
    `in_process`: run the units in this process (the same worker code and files; no actor start-up, no retry of a
    dying process) with a worker's torch threads (`cpus_per_worker`), and ε-batched passes on as many 1-thread
    Python threads as `num_workers` workers have CPUs (default: the node's CPUs); None: only when the pending
    units make one job (see `jobs`) on a one-node CPU cluster, without a pool (an actor would add its start-up) or
    with a warm pool that is not niced (background): its actor would run an ε-batched job on one worker's CPUs,
    and any job after a round trip, while this process keeps its models across calls too (`ModelCache`).
    `head_start`: this process runs the first jobs itself (a worker's torch threads; ε-batched passes on as many
    1-thread Python threads as the workers have CPUs) and starts the actors only once the work left, at the pace of
    the jobs done so far, exceeds `HEAD_START_S` (`HEAD_START_SPLIT_S` when its jobs used all those CPUs); it stops taking
    jobs as soon as an actor is up, and jobs go only to actors that are up meanwhile. So work shorter than an actor's
    start-up never waits for one. None: on for a call without a warm pool on a one-node CPU cluster (no crash
    marker)."""
    import ray

    worker_gpus = pool.gpus_per_worker if pool is not None else gpus_per_worker  # a pool's settings replace ours
    if head_start and worker_gpus:
        raise ValueError("head_start: this process runs its jobs on the CPU, the workers on GPUs, and a unit's rows "
                         "must not depend on where it ran")
    out_dir = str(location.root(out_dir))
    units, todo = pending_units(out_dir, trials, attacks, len(x), shard_size, skip)
    if not todo:
        return {"units": len(units), "ran": 0, "resubmitted": 0}
    if pool is not None and (pool.out_dir, pool.sweep_id) != (out_dir, sweep_id):
        raise ValueError(f"the worker pool writes {pool.out_dir} for {pool.sweep_id}, not {out_dir} for {sweep_id}")
    bounds = shard_bounds(len(x), shard_size)
    work = jobs(todo, [hi - lo for lo, hi in bounds], batch_size)
    ckpt = {t.trial_id: t.checkpoint for t in trials}
    sources = source_checkpoints or {}

    def run_args(job: tuple[Unit, ...], shard_data) -> tuple:
        """`EvalWorker.run`'s arguments for a job; shard_data = its shard's (x, y, index), arrays or object refs."""
        return (job, ckpt[job[0].trial_id], *shard_data, base_seed, batch_size, sources.get(job[0].attack.label))

    def shard_arrays(job: tuple[Unit, ...]) -> list[np.ndarray]:
        lo, hi = bounds[job[0].shard]
        return [x[lo:hi], y[lo:hi], index[lo:hi]]

    one_node = not ray.is_initialized() or sum(n["Alive"] for n in ray.nodes()) == 1
    one_cpu_node = pool is None and not gpus_per_worker and crash_marker is None and one_node
    if in_process is None:
        # A warm pool's actor would run a lone ε-batched job on its one worker's CPUs (here its passes can use all
        # the node's) and any lone job after a round trip. Not for a niced (background) pool: its work must yield
        # to training, this process does not.
        in_process = len(work) == 1 and (one_cpu_node or (
            pool is not None and one_node and not pool.gpus_per_worker and pool.nice == 0 and crash_marker is None
            and pool.crash_marker is None))
    # Work in this process uses a worker's thread count: an adaptive ODE solver's steps, and so a unit's rows, can
    # depend on the number of threads, and rows must not depend on where a unit ran. ε-batched passes run on
    # 1-thread Python threads anyway (EvalWorker), so a lone job spreads its passes over the node's CPUs.
    if in_process:
        threads = pool.threads if pool is not None else int(max(1, cpus_per_worker))
        if num_workers is not None:
            cpus = num_workers * threads
        else:
            cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
        here = _LocalWorker(out_dir, sweep_id, threads, worker_gpus > 0, pass_threads=max(threads, cpus))
        try:
            for job in work:
                _report(progress, job, here.run(*run_args(job, shard_arrays(job))))
        finally:
            here.stop()
        return {"units": len(units), "ran": len(todo), "resubmitted": 0}
    own_pool = pool is None
    if own_pool:
        pool = WorkerPool(out_dir, sweep_id, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                          worker_env=worker_env, crash_marker=crash_marker)
    cpus_per_worker, gpus_per_worker = pool.cpus_per_worker, pool.gpus_per_worker

    def slots() -> int:  # workers the alive nodes hold now (a lost node lowers it)
        res = ray.cluster_resources()
        return int(res.get("GPU", 0) / gpus_per_worker if gpus_per_worker else res.get("CPU", 1) / cpus_per_worker)

    if num_workers is None:
        num_workers = max(1, slots())
    num_workers = min(num_workers, len(work))
    evicted: set = set()  # actors killed because they never started while a started one sat idle

    # Shard data travels as small per-call arrays; each shard's slice is put once and shared by its units.
    refs = {s: (ray.put(x[lo:hi]), ray.put(y[lo:hi]), ray.put(index[lo:hi])) for s, (lo, hi) in enumerate(bounds)}
    use_head_start = one_cpu_node if head_start is None else head_start
    here = (_LocalWorker(out_dir, sweep_id, pool.threads, False, pass_threads=int(num_workers * pool.threads))
            if use_head_start else None)
    free = pool.take(num_workers) if here is None else []  # with a head start, actors start when work is left
    launched = here is None
    queue = list(reversed(work))  # pop() from the end keeps the trial-major order: actors reuse loaded models
    attempts: dict[tuple[Unit, ...], int] = {}
    inflight: dict[Any, tuple[tuple[Unit, ...], Any]] = {}
    resubmitted = 0
    try:
        while queue or inflight:
            if not launched and here.seconds_left(len(queue)) > here.head_start_s():
                free, launched = pool.take(num_workers), True
            if here is not None and any(pool.is_up(a) for a in [*free, *(a for _, a in inflight.values())]):
                here = here.stop()
            while queue and free:
                # A replacement actor may wait for a slot that only the idle actors hold: prefer actors that are up.
                up = [a for a in free if pool.is_up(a)]
                if here is not None and not up:
                    break  # this process is working meanwhile: no job waits for an actor's start-up
                actor = up[0] if up else free[-1]
                free.remove(actor)
                job = queue.pop()
                attempts[job] = attempts.get(job, 0) + 1
                ref = actor.run.remote(*run_args(job, refs[job[0].shard]))
                inflight[ref] = (job, actor)
            if here is not None:
                if queue:
                    job = queue.pop()
                    _report(progress, job, here.run(*run_args(job, shard_arrays(job))))
                    continue
                here = here.stop()
            finished, _ = ray.wait(list(inflight), num_returns=1, timeout=10)
            if not finished:
                # Work handed to an actor that never started (its slot went with a lost node, or an idle actor holds
                # it) would wait forever: kill such actors while a started one is idle; their units are requeued.
                if any(pool.is_up(a) for a in free):
                    for ref, (u, a) in list(inflight.items()):
                        if not pool.is_up(a):
                            evicted.add(a)
                            ray.kill(a)
                continue
            done = finished[0]
            job, actor = inflight.pop(done)
            try:
                info = ray.get(done)
            except ray.exceptions.RayActorError as exc:
                pool.discard(actor)
                if exc.actor_init_failed:  # its constructor raised (torch sees no GPU, say): a new one would too
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    raise RuntimeError(f"an evaluation worker could not start: {lines[-1].strip()}") from exc
                if actor in evicted:  # never started, killed above: its job goes to a started actor, not counted
                    attempts[job] -= 1
                    queue.append(job)
                    continue
                # The process died (OOM, node loss, kill): the unit's file was not renamed into place, so run it
                # again on a fresh actor. Its deterministic seed gives the same rows as an uninterrupted run.
                if attempts[job] >= MAX_ATTEMPTS:
                    raise RuntimeError(f"units {job} failed {attempts[job]} times: their worker keeps dying") from None
                queue.append(job)
                live = len(free) + len({id(a) for _, a in inflight.values()})
                if live == 0 or live < min(num_workers, slots()):  # no replacement that only a lost node could hold
                    free.append(pool.new_actor())
                resubmitted += 1
                continue
            free.append(actor)
            _report(progress, job, info)
    finally:
        if here is not None:
            here.stop()
        # Actors still busy when an error ends the call are killed: their units were not counted as done.
        for _, a in inflight.values():
            pool.discard(a)
        pool.give_back(free)
        if own_pool:
            pool.close()
    return {"units": len(units), "ran": len(todo), "resubmitted": resubmitted}


class _LocalWorker:
    """This process as an evaluation worker (work in process, the head start): an `EvalWorker` with `threads`
    threads that times its jobs; `stop()` restores this process's thread count and returns None (for
    `here = here.stop()`)."""

    def __init__(self, out_dir: str, sweep_id: str, threads: int, use_gpu: bool, pass_threads: int | None = None):
        self.threads = torch.get_num_threads()
        self.worker = EvalWorker(out_dir, sweep_id, threads, use_gpu, pass_threads=pass_threads, cache=_LOCAL_CACHE)
        self.jobs, self.seconds, self.split = 0, 0.0, 0

    def run(self, *args) -> dict[str, Any]:
        info = self.worker.run(*args)
        self.jobs, self.seconds = self.jobs + 1, self.seconds + info["seconds"]
        self.split += info["pass_threads"] > 1
        return info

    def head_start_s(self) -> float:
        """Work left above which actors pay: `HEAD_START_SPLIT_S` while every job so far spread its passes over
        several threads, else `HEAD_START_S`."""
        return HEAD_START_SPLIT_S if self.jobs and self.split == self.jobs else HEAD_START_S

    def seconds_left(self, jobs_left: int) -> float:
        """The work left at this process's pace so far (0 before its first job)."""
        return self.seconds / self.jobs * jobs_left if self.jobs else 0.0

    def stop(self) -> None:
        torch.set_num_threads(self.threads)
        self.worker = None
