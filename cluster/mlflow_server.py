"""`advsweep mlflow-server`: an MLflow tracking server for sweeps that run on more than one machine.

The backend store holds runs, params and metrics: sqlite (one file, fine for a handful of concurrent trials) or
PostgreSQL (`postgresql://user@host/db`, needs psycopg2 in the server's environment) for larger clusters. With
`--serve-artifacts` (MLflow's default, set explicitly here) clients upload artifacts through the server, so only the
server needs the artifact root (a local directory or s3://…); the nodes need nothing but the server's URL.
It binds 127.0.0.1 unless told otherwise: MLflow has no authentication of its own.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from advsweep.registry import SpecError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerPlan:
    command: list[str]
    uri: str
    backend_store_uri: str
    artifacts_destination: str


def plan(root: Path, *, host: str = "127.0.0.1", port: int = 5000, backend_store_uri: str | None = None,
         artifacts_destination: str | None = None, workers: int = 2) -> ServerPlan:
    """Command line and client URI; checks the port is free and the store scheme is one MLflow serves."""
    root = Path(root).resolve()
    backend = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    if not backend.startswith(("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")):
        raise SpecError("--backend-store-uri", f"{backend}: use sqlite:////ABS/PATH.db or postgresql://…")
    if backend.startswith("postgresql"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            raise SpecError("--backend-store-uri", "a PostgreSQL store needs psycopg2 in this environment "
                                                   "(pip install psycopg2-binary)") from None
    artifacts = artifacts_destination or str(root / "mlartifacts")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as exc:
        raise SpecError("--port", f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    mlflow = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow) if mlflow.exists() else "mlflow", "server", "--backend-store-uri", backend,
           "--artifacts-destination", artifacts, "--serve-artifacts", "--host", host, "--port", str(port),
           "--workers", str(workers)]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServerPlan(cmd, f"http://{shown}:{port}", backend, artifacts)


def start(p: ServerPlan, root: Path, timeout: float = 180, log: Path | None = None) -> subprocess.Popen:
    """Start the server in its own process group and wait for /health; the caller stops it with `stop`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = open(log or root / "mlflow-server.log", "ab")
    proc = subprocess.Popen(p.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(p.uri + "/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {out.name}")
            time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"mlflow server did not answer {p.uri}/health within {timeout:.0f}s; see {out.name}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop the server and its workers (its whole process group)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
