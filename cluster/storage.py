"""Output locations of sweeps on a cluster: parsing, and a check that every node writes to the same place.

A sweep's output directory must be one location that every node reaches: Tune trials write checkpoints there and
evaluation workers write Parquet shards there, from whichever node they run on. The check writes a hidden probe file
from the submitting job (on the head), then asks a task pinned to every alive node to read it back and to write and
delete a probe of its own: a node that cannot write, or that writes to a local directory of the same name (a path
that is not actually shared), fails with one line naming the node. Probes are removed; nothing else is written.
"""
from __future__ import annotations

import posixpath
import uuid
from typing import Any

from advsweep.registry import SpecError

from advsweep.storage.location import REMOTE_SCHEMES


def split_output(out: str) -> tuple[str, str]:
    """(scheme, path): `file` for absolute local paths (and file:// URIs), else the URI's scheme."""
    if "://" in out:
        scheme, rest = out.split("://", 1)
        scheme = scheme.lower()
        if scheme == "file":
            out = rest if rest.startswith("/") else "/" + rest
        elif scheme in REMOTE_SCHEMES:
            return scheme, out
        else:
            raise SpecError("--out", f"{out}: unknown scheme {scheme!r} (an absolute path, file://, "
                                     f"{', '.join(s + '://' for s in REMOTE_SCHEMES[:2])})")
    if not out.startswith("/"):
        raise SpecError("--out", f"{out!r} is relative: a job runs in a temporary directory on the head, so give an "
                                 "absolute path mounted at the same place on every node, or a URI")
    return "file", posixpath.normpath(out)


def filesystem(out: str):
    """(pyarrow FileSystem, path inside it) for a local path or a URI pyarrow understands."""
    from pyarrow import fs as pafs

    scheme, path = split_output(out)
    if scheme == "file":
        return pafs.LocalFileSystem(), path
    try:
        from advsweep.storage.location import fs_path

        return fs_path(path)  # the filesystem the sweep itself writes through (same endpoint and credentials)
    except Exception as exc:  # missing credentials, unknown bucket, pyarrow built without S3/GCS
        raise SpecError("--out", f"{out}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def _nearest_existing_dir(fs, path: str) -> str:
    from pyarrow import fs as pafs

    p = path
    while True:
        info = fs.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            return p
        if info.type == pafs.FileType.File:
            raise SpecError("--out", f"{p} is a file")
        parent = posixpath.dirname(p.rstrip("/"))
        if not parent or parent == p:
            return p
        p = parent


def check_new_output(out: str) -> None:
    """The output location must not hold files already (each sweep gets its own directory)."""
    from pyarrow import fs as pafs

    fs, path = filesystem(out)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    if entries:
        raise SpecError("--out", f"{out} exists and is not empty; give each sweep its own directory")


def _probe_on_node(out: str, probe: str, token: str) -> dict[str, Any]:
    """Runs on one node: read the head's probe, write and delete this node's own."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    try:
        fs, _ = filesystem(out)
        with fs.open_input_stream(probe) as f:
            seen = f.read().decode()
        if seen != token:
            return {"node": node, "error": "sees a different file at that path (not shared storage)"}
        mine = f"{probe}-{node[:12]}"
        with fs.open_output_stream(mine) as f:
            f.write(token.encode())
        fs.delete_file(mine)
        return {"node": node, "error": None}
    except FileNotFoundError:
        return {"node": node, "error": "does not see files written on the head (not shared storage)"}
    except Exception as exc:
        return {"node": node, "error": f"cannot write there ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"}


def check_output_shared(out: str, timeout: float = 120) -> int:
    """Every alive node of the connected Ray reaches `out` and writes there; returns the number of nodes checked."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    fs, path = filesystem(out)
    base = _nearest_existing_dir(fs, path)
    token = uuid.uuid4().hex
    probe = posixpath.join(base, f".advsweep-probe-{token[:12]}")
    try:
        with fs.open_output_stream(probe) as f:
            f.write(token.encode())
    except Exception as exc:
        raise SpecError("--out", f"{out}: the head cannot write in {base} "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        task = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(out, probe, token) for n in nodes]
        ip = {n["NodeID"]: n["NodeManagerAddress"] for n in nodes}
        for r in ray.get(refs, timeout=timeout):
            if r["error"]:
                raise SpecError("--out", f"{out}: node {r['node'][:12]} ({ip.get(r['node'], '?')}) {r['error']}")
        return len(nodes)
    finally:
        try:
            fs.delete_file(probe)
        except Exception:
            pass
