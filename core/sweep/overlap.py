"""Evaluation overlapped with training: each trial is attacked as soon as it completes, while others still train.

A Tune callback (driver side) hands every completed trial to a background thread of the driver, which runs that
trial's evaluation units on the engine (`evaluation.engine.evaluate`) with as many workers as the cluster can place at
that moment. Ray's resource accounting keeps training and evaluation from oversubscribing the cluster: an actor is
placed only on a free CPU/GPU, and a pending trial waits for one. Units are idempotent files, so the final evaluation
stage after training finds them done (and runs what is left: transfer attacks, whose source trial may finish later,
and anything the thread did not reach). The callback finds its pool through a registry keyed by sweep id, so it also
works after `Tuner.restore` (Tune pickles callbacks into its experiment state).

The thread's actors come from one warm `WorkerPool` kept for the whole sweep (each actor process starts, imports torch
and loads each checkpoint once, not once per completed trial). Its actors hold no CPU slot and run niced, so an idle one
never keeps a trial from starting and training keeps the cores when both want them; the evaluation stage after
training reuses the same warm actors (`pool`), and `close()` ends them. Not with GPUs (`resources.gpu` > 0): an
actor holds its GPU for as long as it lives, idle or not, and warm actors would keep pending trials from ever
starting; there each completed trial's evaluation starts actors of its own and ends them, handing the GPUs back.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from advsweep.evaluation.engine import TrialRef, WorkerPool, evaluate, free_worker_slots
from advsweep.evaluation.units import AttackConfig

_POOLS: dict[str, "OverlappedEvaluation"] = {}


class OverlappedEvaluation:
    def __init__(self, out_dir: Path, sweep_id: str, attacks: list[AttackConfig], data: dict[str, np.ndarray],
                 eval_cfg: dict[str, Any], cpus_per_worker: float, gpus_per_worker: float):
        self.out_dir, self.sweep_id = out_dir, sweep_id
        self.attacks = [a for a in attacks if a.source_trial is None]
        self.data, self.eval_cfg = data, eval_cfg
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.queue: queue.Queue[TrialRef | None] = queue.Queue()
        self.errors: list[str] = []
        self.units_run = 0
        self.busy_s = 0.0
        self.trials_done: list[str] = []
        self.thread = threading.Thread(target=self._loop, name="advsweep-overlap", daemon=True)
        self.pool: WorkerPool | None = None

    def __enter__(self) -> "OverlappedEvaluation":
        _POOLS[self.sweep_id] = self
        if not self.gpus:
            self.pool = WorkerPool(self.out_dir, self.sweep_id, cpus_per_worker=self.cpus, background=True)
        self.thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """Stops the thread; the warm actors stay for the evaluation stage unless an error ends the sweep here."""
        self.queue.put(None)
        self.thread.join()
        _POOLS.pop(self.sweep_id, None)
        if exc_type is not None:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def submit(self, ref: TrialRef) -> None:
        from dataclasses import replace

        from advsweep.storage.location import checkpoint_location

        self.queue.put(replace(ref, checkpoint=checkpoint_location(self.out_dir, ref.checkpoint)))

    def _loop(self) -> None:
        from advsweep.sweep.evaluate import not_applicable

        while True:
            ref = self.queue.get()
            if ref is None:
                return
            start = time.perf_counter()
            try:
                skip = set(not_applicable(ref.trial_id, ref.index, ref.checkpoint, self.attacks))
                counts = evaluate(self.out_dir, self.sweep_id, [ref], self.attacks, self.data["x_test"],
                                  self.data["y_test"], self.data["test_index"], shard_size=self.eval_cfg["shard_size"],
                                  batch_size=self.eval_cfg["batch_size"], base_seed=self.eval_cfg["seed"],
                                  num_workers=max(1, free_worker_slots(self.cpus, self.gpus)),
                                  cpus_per_worker=self.cpus, gpus_per_worker=self.gpus, skip=skip, pool=self.pool)
                self.units_run += counts["ran"]
                self.trials_done.append(ref.trial_id)
            except Exception as exc:  # the final stage redoes what is missing; never lose the sweep to this thread
                self.errors.append(f"{ref.trial_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            self.busy_s += time.perf_counter() - start


class EvaluateOnComplete(tune.Callback):
    """Tune callback: a trial that completed its budget goes to the sweep's overlapped evaluation."""

    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        pool = _POOLS.get(self.sweep_id)
        result = trial.last_result or {}
        if pool is None or not result.get("completed") or result.get("final_status") or trial.checkpoint is None:
            return
        pool.submit(TrialRef(trial.trial_id, trial.checkpoint.path, trial.config["trial"]["index"]))
