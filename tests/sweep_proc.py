"""Helpers for tests that run `advsweep` as a user would (a subprocess) and inject real faults into it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONWARNINGS": "ignore::DeprecationWarning",
       "PYTHONUNBUFFERED": "1"}


def start(*args: str, log: Path) -> subprocess.Popen:
    """`advsweep ARGS` in its own process group, output to `log`."""
    return subprocess.Popen([str(BIN / "advsweep"), *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=ENV, start_new_session=True)


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "advsweep"), *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def wait_for(cond, timeout: float, proc: subprocess.Popen | None = None, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def descendants(pid: int, name_part: str) -> list[psutil.Process]:
    """Live descendants of `pid` whose process title contains `name_part` (Ray renames its workers, e.g.
    `ray::ImplicitFunc.train` for a Tune trial, `ray::EvalWorker.run` for an evaluation actor)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            title = " ".join(p.cmdline()) or p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name_part in title:
            out.append(p)
    return out


def kill_tree(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """SIGKILL a driver and everything it started (its private Ray), as `kill -9` on the process group would."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    for k in kids:
        try:
            k.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(kids, timeout=30)


def checkpoint_metas(out: Path) -> list[dict]:
    """The `meta.json` of every trial checkpoint a sweep in `out` has written so far (one being written is skipped)."""
    metas = []
    for f in Path(out).glob("ray/*/*/checkpoint_*/meta.json"):
        try:
            metas.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    return metas
