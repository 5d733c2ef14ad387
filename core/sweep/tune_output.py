"""Ray Tune's terminal output trimmed to its status table.

Tune's default ("new") output prints every trial's whole config as a table when it starts, every trial's full
result dict when it ends, a TensorBoard hint, and checkpoint lines; the trials of a sweep differ in one or two keys,
which that table cuts off. Here Tune runs its classic reporter instead (`RAY_AIR_NEW_OUTPUT=0`, Ray 2.60), at
verbosity 1 (status tables only), with one column per config key that varies within the sweep (advsweep.naming),
the training metrics, and a new table only when trials end (or every few minutes while they run).
Worker log prefixes lose their colour codes when the output is not a terminal (`RAY_COLOR_PREFIX=0`), and Tune's
closing "Wrote the latest version of all result files" log line is left out.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

from ray.tune import CLIReporter

from advsweep.naming import varying_keys

METRIC_COLUMNS = {"epoch": "epoch", "loss": "loss", "val_acc": "val acc", "val_robust_acc": "val robust acc",
                  "natural_acc": "test acc"}
MIN_INTERVAL_S = 10.0   # between two tables when trials change state
MAX_INTERVAL_S = 300.0  # a table at least this often while nothing changes


def parameter_columns(spec) -> dict[str, str]:
    """Tune config path → short column name, for the keys that vary within the sweep (grid/random: among its
    expanded trials; tpe/nsga2: the search axes)."""
    if spec.searched:
        keys = varying_keys([], spec.search_axes())
    else:
        keys = varying_keys([t.flat() for t in spec.trials])
    tails = [k.rsplit(".", 1)[-1] for k in keys]
    return {"trial/" + k.replace(".", "/"): (t if tails.count(t) == 1 else k) for k, t in zip(keys, tails)}


class StatusReporter(CLIReporter):
    """Tune's classic status table, printed when trials have ended since the last one (at most every
    MIN_INTERVAL_S, and at the end), and at least every MAX_INTERVAL_S while they run."""

    def __init__(self, parameter_columns: dict[str, str]):
        super().__init__(parameter_columns=parameter_columns or None, metric_columns=dict(METRIC_COLUMNS),
                         max_report_frequency=MIN_INTERVAL_S, print_intermediate_tables=True,
                         max_column_length=24)
        self._states: tuple = ()
        self._last = 0.0

    def should_report(self, trials, done: bool = False) -> bool:
        now = time.time()
        ended = tuple(sorted(t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")))
        changed = ended != self._states
        quiet_for = now - self._last  # the first call prints the table of trials (and what varies among them)
        if (done and changed) or (changed and quiet_for >= MIN_INTERVAL_S) or quiet_for >= MAX_INTERVAL_S:
            self._states, self._last = ended, now
            return True
        return False

    def report(self, trials, done: bool, *sys_info: str) -> None:
        # sys_info: the scheduler's description and the resource line; the resource line is the one worth a row.
        # "Result logdir" names Ray's session staging directory, not the sweep's: left out.
        text = self._progress_str(trials, done, *[s for s in sys_info if s.startswith("Logical resource usage")])
        print("\n".join(ln for ln in text.splitlines() if not ln.startswith("Result logdir")), flush=True)


def tune_verbosity(output: str) -> int:
    """Tune's classic verbosity: 0 prints nothing (quiet), 1 the status tables only."""
    return 0 if output == "quiet" else 1


def plain_worker_logs() -> None:
    """No colour codes around the `(pid=…)` prefix of worker log lines the driver prints, when stdout is not a
    terminal (Ray reads the variable each time it prints; a value the user set is kept)."""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


@contextlib.contextmanager
def trimmed_tune_output() -> Iterator[None]:
    """While Tune runs: its classic reporter, no colour codes in worker log prefixes when stdout is not a terminal,
    no closing INFO line from `ray.tune.tune` and no experiment-snapshot warning."""
    # The snapshot warning tells Tune users to tune CheckpointConfig; here every epoch checkpoints by design.
    quiet_env = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    saved = {k: os.environ.get(k) for k in quiet_env}
    os.environ.update(quiet_env)
    plain_worker_logs()
    tune_log = logging.getLogger("ray.tune.tune")
    level = tune_log.level
    tune_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        tune_log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
