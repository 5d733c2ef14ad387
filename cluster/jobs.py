"""Sweeps as Ray Jobs: submit, status, logs, stop (the Jobs REST API of the head's dashboard, port 8265).

The submission id is derived from the spec's digest and the output location, so submitting the same sweep twice is
refused (Ray keeps ids unique) instead of running it twice. Before the sweep itself, `submit` runs a short preflight
job (`advsweep.cluster.preflight`) that checks, on the cluster, that the spec's resources fit the largest node and that
every node writes to the output location; a failure there is one line, exit 2, and the sweep is not submitted.

Inside the job `advsweep run` finds RAY_ADDRESS (set by Ray for every job driver) and joins the cluster.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from advsweep.registry import SpecError

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
JOB_ENV = {"PYTHONWARNINGS": "ignore::DeprecationWarning"}


@dataclass
class JobState:
    job_id: str
    status: str
    message: str
    entrypoint: str
    metadata: dict[str, str]
    start_time: float | None
    end_time: float | None

    def line(self) -> str:
        took = ""
        if self.start_time:
            end = self.end_time or time.time() * 1000
            took = f" ({(end - self.start_time) / 1000:.0f}s)"
        out = self.metadata.get("out", "")
        return f"{self.job_id}: {self.status}{took} {self.metadata.get('spec', '')} -> {out}  {self.message}".rstrip()


def submission_id(spec_name: str, spec_digest: str, out: str) -> str:
    """Stable per (spec content, output location): a resubmission of the same sweep gets the same id."""
    h = hashlib.sha256(f"{spec_digest}\0{out}".encode()).hexdigest()[:12]
    return f"advsweep-{re.sub(r'[^A-Za-z0-9_-]', '-', spec_name)[:40]}-{h}"


def connect(address: str | None):
    """A JobSubmissionClient for the dashboard at `address` (http://HEAD:8265); one line if nothing answers."""
    from ray.job_submission import JobSubmissionClient

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "Uploading package …" lines: the CLI prints its own
    if not address:
        raise SpecError("--address", "give the head's dashboard, e.g. http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
    if "://" not in address:
        address = f"http://{address}"
    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise SpecError("--address", f"no Ray Jobs API reachable at {address}") from None
    except Exception as exc:  # auth failures, a non-Ray server on that port
        raise SpecError("--address", f"{address}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def _info(client, job_id: str, missing_ok: bool = False) -> JobState | None:
    try:
        d = client.get_job_info(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            if missing_ok:
                return None
            raise SpecError("JOB", f"{job_id}: no such job on {client.get_address()}") from None
        raise
    status = d.status.value if hasattr(d.status, "value") else str(d.status)
    return JobState(d.submission_id or d.job_id, status, d.message or "", d.entrypoint, dict(d.metadata or {}),
                    d.start_time, d.end_time)


def status(address: str | None, job_id: str | None = None) -> list[JobState]:
    """One job, or every advsweep job on the cluster (newest first)."""
    client = connect(address)
    if job_id:
        return [_info(client, job_id)]
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("advsweep") == "sweep"]
    jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
    return [_info(client, j.submission_id) for j in jobs]


def logs(address: str | None, job_id: str, follow: bool = False) -> Iterator[str]:
    client = connect(address)
    _info(client, job_id)
    if not follow:
        yield client.get_job_logs(job_id)
        return
    agen = client.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def stop(address: str | None, job_id: str) -> JobState:
    client = connect(address)
    state = _info(client, job_id)
    if state.status not in TERMINAL:
        client.stop_job(job_id)
    return state


def wait(client, job_id: str, timeout: float, poll: float = 1.0) -> JobState:
    deadline = time.time() + timeout
    while True:
        state = _info(client, job_id)
        if state.status in TERMINAL:
            return state
        if time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {state.status} after {timeout:.0f}s")
        time.sleep(poll)


def _error_line(text: str) -> str | None:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("advsweep: error:")]
    return lines[-1][len("advsweep: error:"):].strip() if lines else None


def _remove_job(client, job: str, timeout: float = 60) -> None:
    """Stop (if needed) and delete a job; deletion is refused until the job is terminal, so retry a while."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if _info(client, job).status not in TERMINAL:
                client.stop_job(job)
            elif client.delete_job(job):
                return
        except SpecError:
            return  # already gone
        except Exception:
            pass
        time.sleep(0.5)


def preflight(client, runtime_env: dict[str, Any], python: str, out: str, timeout: float = 600) -> str:
    """Run `advsweep.cluster.preflight` as a job, wait for it, delete it; raise SpecError with its line on failure."""
    job = f"advsweep-preflight-{uuid.uuid4().hex[:10]}"
    client.submit_job(entrypoint=f"{shlex.quote(python)} -m advsweep.cluster.preflight spec.yaml {shlex.quote(out)}",
                      submission_id=job, runtime_env=runtime_env, metadata={"advsweep": "preflight"},
                      entrypoint_num_cpus=0)
    try:
        state = wait(client, job, timeout)
        text = client.get_job_logs(job)
    finally:
        _remove_job(client, job)
    if state.status != "SUCCEEDED":
        line = _error_line(text)
        if line:
            field, _, msg = line.partition(": ")
            raise SpecError(field, msg)
        tail = " | ".join(text.strip().splitlines()[-3:])[:300]
        raise SpecError("preflight", f"the check job ended {state.status}: {tail or state.message}")
    return text.strip().splitlines()[-1] if text.strip() else ""


def submit(spec_file: str | Path, address: str | None, out: str, *, mlflow_uri: str | None = None,
           python: str = "python", env: dict[str, str] | None = None, run_preflight: bool = True,
           echo: Callable[[str], None] = print) -> str:
    """Submit `advsweep run SPEC --out OUT` as a Ray Job; returns the submission id."""
    from advsweep.cluster.storage import split_output
    from advsweep.spec import load_spec

    spec = load_spec(spec_file)
    scheme, out = split_output(out)
    if scheme != "file" and not mlflow_uri:
        raise SpecError("--mlflow-uri", f"an output at {out} cannot hold MLflow's sqlite store: pass the tracking "
                                        "server every node reaches (advsweep mlflow-server prints its URI)")
    client = connect(address)
    sid = submission_id(spec.name, spec.digest, out)
    existing = _info(client, sid, missing_ok=True)
    if existing is not None:
        raise SpecError("--out", f"this sweep (spec {spec.name} -> {out}) was already submitted as job {sid} "
                                 f"({existing.status}); see `advsweep status {sid}`")
    env_vars = {**JOB_ENV, **(env or {})}
    if mlflow_uri:
        env_vars["MLFLOW_TRACKING_URI"] = mlflow_uri
    wd = Path(tempfile.mkdtemp(prefix="advsweep-job-"))
    try:
        shutil.copyfile(spec_file, wd / "spec.yaml")
        runtime_env = {"working_dir": str(wd), "env_vars": env_vars}
        if run_preflight:
            echo(f"preflight: {preflight(client, runtime_env, python, out)}")
        entry = [python, "-m", "advsweep.cli", "run", "spec.yaml", "--out", out]
        if mlflow_uri:
            entry += ["--mlflow-uri", mlflow_uri]
        try:
            client.submit_job(entrypoint=" ".join(shlex.quote(a) for a in entry), submission_id=sid,
                              runtime_env=runtime_env, entrypoint_num_cpus=0,
                              metadata={"advsweep": "sweep", "spec": spec.name, "out": out,
                                        "spec_digest": spec.digest})
        except RuntimeError as exc:  # lost a race with a concurrent submit of the same sweep
            if _info(client, sid, missing_ok=True) is not None:
                raise SpecError("--out", f"this sweep was already submitted as job {sid}") from None
            raise
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    return sid
