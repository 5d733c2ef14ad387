"""Checks against the Ray the driver runs on, made after `ray.init` and before anything is written.

`check_cluster_resources` compares what one trial and one evaluation worker ask for (`resources: {cpu, gpu}`) with the
largest alive node: Ray places each trial and each actor on a single node, so a request larger than every node would
wait forever instead of failing. It covers a private local Ray (one node) and a multi-node cluster alike.
"""
from __future__ import annotations

import socket
from typing import Any, Mapping
from urllib.parse import urlparse

from advsweep.registry import SpecError


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray."""
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_cluster_resources(resources: Any, nodes: list[Mapping[str, float]] | None = None,
                            field: str = "resources") -> None:
    """Raise SpecError when a trial or worker asks for more CPU/GPU than the largest node has.

    `resources`: the spec's (or suite's) ResourcesSpec, or any object with `cpu` and `gpu`; `nodes`: each alive
    node's total resources (default: from the connected Ray)."""
    nodes = alive_node_resources() if nodes is None else [dict(n) for n in nodes]
    if not nodes:
        raise SpecError("--address", "the Ray cluster has no alive node")
    for key, need in (("CPU", float(resources.cpu)), ("GPU", float(resources.gpu))):
        if need <= 0:
            continue
        best = max(n.get(key, 0.0) for n in nodes)
        if need > best:
            where = "node" if len(nodes) == 1 else f"of its {len(nodes)} nodes"
            raise SpecError(f"{field}.{key.lower()}",
                            f"each trial and evaluation worker asks for {need:g} {key}, but the largest {where} "
                            f"of this Ray cluster has {best:g}")


def gcs_host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a `HOST:PORT` / `ray://HOST:PORT` / `http://HOST:PORT` address; None for `auto`/`local`."""
    if address in ("auto", "local"):
        return None
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if not parsed.hostname:
        raise SpecError("--address", f"{address!r} is not HOST:PORT")
    try:
        port = parsed.port
    except ValueError:
        port = None
    if port is None:
        raise SpecError("--address", f"{address!r} has no port (the GCS port, 6379 by default)")
    return parsed.hostname, port


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """One line instead of Ray's minute-long connection retries when nothing listens at `address`."""
    hp = gcs_host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        raise SpecError("--address", f"no Ray cluster reachable at {address} ({exc.strerror or exc})") from None
