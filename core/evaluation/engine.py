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

from advsweep.evaluation.units import AttackConfig, Unit, make_units, shard_bounds
from advsweep.storage.parquet import example_file

MAX_ATTEMPTS = 3  # per unit, for failures of the actor process (not for bugs: those raise at once)

# OpenMP variables that, when set in the driver's environment, leave the workers' OpenMP wait policy to the user.
_OMP_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def default_worker_env(threads: int) -> dict[str, str]:
    """Environment for the worker processes: OMP_WAIT_POLICY=PASSIVE for multi-threaded workers.

    An attack step on small images is hundreds of short OpenMP regions. With libgomp's default policy a thread spins
    after each region; when the node's cores are shared (other workers, trials, another user's jobs) the spinning
    thread holds a core that the thread it waits for needs: on a busy 2-core machine a 2-thread PGD loop ran 5-6x
    slower than with PASSIVE (benchmarks/attack_throughput.py, "OpenMP wait policy"). With PASSIVE idle threads
    sleep; results are unchanged (bit for bit: the policy only decides how threads wait). Nothing is set for 1-thread
    workers (no OpenMP team) or when the driver's environment chooses a policy itself (OMP_WAIT_POLICY,
    GOMP_SPINCOUNT, KMP_BLOCKTIME)."""
    if threads <= 1 or any(v in os.environ for v in _OMP_POLICY_VARS):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"}


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


class EvalWorker:
    """Ray actor body: keeps loaded models, runs units, writes their files. Plain class so it can run in-process."""

    def __init__(self, out_dir: str, sweep_id: str, threads: int, use_gpu: bool, cache_models: int = 4,
                 crash_marker: str | None = None):
        torch.set_num_threads(max(1, threads))
        self.out_dir, self.sweep_id = out_dir, sweep_id
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self.cache_models = cache_models
        self.clean: dict[tuple[str, int], torch.Tensor] = {}
        self.crash_marker = crash_marker  # tests: die once, mid-unit, after the attack and before the rename

    def _model(self, checkpoint: str) -> torch.nn.Module:
        from advsweep.evaluation.checkpoints import load_model

        if checkpoint not in self.models:
            self.models[checkpoint] = load_model(checkpoint, self.device)
            if len(self.models) > self.cache_models:
                self.models.popitem(last=False)
        self.models.move_to_end(checkpoint)
        return self.models[checkpoint]

    def run(self, unit: Unit, checkpoint: str, x: np.ndarray, y: np.ndarray, index: np.ndarray, base_seed: int,
            batch_size: int, source_checkpoint: str | None = None) -> dict[str, Any]:
        from advsweep.evaluation.shard import predict_logits, run_unit
        from advsweep.storage.parquet import write_atomic
        from advsweep.training.trainer import as_float_images

        start = time.perf_counter()
        model = self._model(checkpoint)
        source = self._model(source_checkpoint) if source_checkpoint else None
        xt = as_float_images(torch.from_numpy(np.array(x)))  # object-store arrays are read-only
        yt = torch.from_numpy(np.array(y)).long()
        key = (checkpoint, unit.shard)
        if key not in self.clean:
            self.clean[key] = predict_logits(model, xt, batch_size, self.device)
        tables = run_unit(model, unit, xt, yt, index, self.clean[key], self.sweep_id, base_seed, batch_size,
                          self.device, source_model=source)
        if self.crash_marker and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).write_text(str(unit))
            os._exit(1)
        node = ray_node()
        paths = []
        for eps, table in tables:
            for name, value in node.items():  # where the unit ran, on every row
                column = pa.array([value] * table.num_rows, pa.string())
                table = table.set_column(table.schema.get_field_index(name), name, column)
            path = example_file(self.out_dir, unit.trial_id, unit.attack.label, eps, unit.shard)
            write_atomic(table, path, self.sweep_id)
            paths.append(str(path))
        return {"paths": paths, "rows": sum(t.num_rows for _, t in tables), "examples": len(x),
                "seconds": time.perf_counter() - start, "pid": os.getpid(), **node,
                "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


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
            if not all(example_file(out_dir, u.trial_id, u.attack.label, e, u.shard).exists() for e in u.eps)]
    return units, todo


def evaluate(out_dir: str | Path, sweep_id: str, trials: list[TrialRef], attacks: list[AttackConfig],
             x: np.ndarray, y: np.ndarray, index: np.ndarray, *, shard_size: int, batch_size: int, base_seed: int,
             num_workers: int | None = None, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
             source_checkpoints: dict[str, str] | None = None, progress: Callable[[Unit, dict], None] | None = None,
             crash_marker: str | None = None, worker_env: dict[str, str] | None = None,
             skip: set[tuple[str, str]] = frozenset()) -> dict[str, int]:
    """Run every pending unit on a pool of actors; returns counts. Ray must be initialised by the caller.

    `source_checkpoints` maps an attack label to the checkpoint it crafts on (transfer attacks). `worker_env`:
    environment variables of the worker processes (added to the job's runtime_env); None: `default_worker_env`."""
    import ray

    out_dir = str(Path(out_dir).resolve())
    units, todo = pending_units(out_dir, trials, attacks, len(x), shard_size, skip)
    if not todo:
        return {"units": len(units), "ran": 0, "resubmitted": 0}
    ckpt = {t.trial_id: t.checkpoint for t in trials}
    bounds = shard_bounds(len(x), shard_size)

    def slots() -> int:  # workers the alive nodes hold now (a lost node lowers it)
        res = ray.cluster_resources()
        return int(res.get("GPU", 0) / gpus_per_worker if gpus_per_worker else res.get("CPU", 1) / cpus_per_worker)

    if num_workers is None:
        num_workers = max(1, slots())
    num_workers = min(num_workers, len(todo))
    threads = int(max(1, cpus_per_worker))
    env = default_worker_env(threads) if worker_env is None else dict(worker_env)
    Actor = ray.remote(EvalWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=0,
                                           **({"runtime_env": {"env_vars": env}} if env else {}))

    # Shard data travels as small per-call arrays; each shard's slice is put once and shared by its units.
    started: dict[Any, Any] = {}  # actor -> ref that resolves once the actor process is up
    evicted: set = set()  # actors killed because they never started while a started one sat idle

    def new_actor():
        actor = Actor.remote(out_dir, sweep_id, threads, gpus_per_worker > 0, crash_marker=crash_marker)
        started[actor] = actor.__ray_ready__.remote()
        return actor

    def is_up(actor) -> bool:
        return not ray.wait([started[actor]], timeout=0)[1]

    refs = {s: (ray.put(x[lo:hi]), ray.put(y[lo:hi]), ray.put(index[lo:hi])) for s, (lo, hi) in enumerate(bounds)}
    free = [new_actor() for _ in range(num_workers)]
    queue = list(reversed(todo))  # pop() from the end keeps the trial-major order: actors reuse loaded models
    attempts: dict[Unit, int] = {}
    inflight: dict[Any, tuple[Unit, Any]] = {}
    resubmitted = 0
    while queue or inflight:
        while queue and free:
            # A replacement actor may wait for a slot that only the idle actors hold: prefer actors that are up.
            up = [a for a in free if is_up(a)]
            actor = up[0] if up else free[-1]
            free.remove(actor)
            unit = queue.pop()
            attempts[unit] = attempts.get(unit, 0) + 1
            src = (source_checkpoints or {}).get(unit.attack.label)
            xs, ys, ids = refs[unit.shard]
            ref = actor.run.remote(unit, ckpt[unit.trial_id], xs, ys, ids, base_seed, batch_size, src)
            inflight[ref] = (unit, actor)
        finished, _ = ray.wait(list(inflight), num_returns=1, timeout=10)
        if not finished:
            # Work handed to an actor that never started (its slot went with a lost node, or an idle actor holds
            # it) would wait forever: kill such actors while a started one is idle; their units are requeued.
            if any(is_up(a) for a in free):
                for ref, (u, a) in list(inflight.items()):
                    if not is_up(a):
                        evicted.add(a)
                        ray.kill(a)
            continue
        done = finished[0]
        unit, actor = inflight.pop(done)
        try:
            info = ray.get(done)
        except ray.exceptions.RayActorError:
            if actor in evicted:  # never started, killed above: its unit goes to a started actor, not counted
                attempts[unit] -= 1
                queue.append(unit)
                continue
            # The process died (OOM, node loss, kill): the unit's file was not renamed into place, so run it again
            # on a fresh actor. Its deterministic seed gives the same rows as an uninterrupted run.
            if attempts[unit] >= MAX_ATTEMPTS:
                raise RuntimeError(f"unit {unit} failed {attempts[unit]} times: its worker keeps dying") from None
            queue.append(unit)
            live = len(free) + len({id(a) for _, a in inflight.values()})
            if live == 0 or live < min(num_workers, slots()):  # no replacement that only a lost node could hold
                free.append(new_actor())
            resubmitted += 1
            continue
        free.append(actor)
        if progress:
            progress(unit, info)
    for a in free:
        ray.kill(a)
    return {"units": len(units), "ran": len(todo), "resubmitted": resubmitted}
