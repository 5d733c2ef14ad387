"""Where a sweep's files live: a local directory, or a URI that pyarrow's filesystems understand (`s3://bucket/p`,
`gs://bucket/p`).

A sweep location is a `Path` (local) or a `str` URI; `join` builds paths below it, and the functions here read and
write either kind. Local writes go through a hidden temp name and a rename; an object-store PUT is atomic by itself,
so remote writes go straight to the final key. Credentials come from the environment as the cloud SDKs read them
(AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, ~/.aws, an instance role, …). An S3-compatible endpoint other than AWS is
given in the URI as pyarrow reads it (`s3://bucket/p?endpoint_override=host:9000&scheme=http`) or by
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, which this module passes on itself (pyarrow's S3 client ignores them).

Readers that want plain files (the analysis commands, plots) work on a local mirror: `mirror` copies a remote sweep's
tables and metadata (not its checkpoints under `ray/`) into a cache directory and returns it.
"""
from __future__ import annotations

import hashlib
import io
import os
import posixpath
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Union

from advsweep.registry import SpecError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")
SOURCE = ".advsweep-source"  # in a local mirror: the URI it copies (its checkpoints are read from there)
Location = Union[Path, str]


def is_remote(target: Location | None) -> bool:
    return isinstance(target, str) and target.split("://", 1)[0].lower() in REMOTE_SCHEMES and "://" in target


def root(out: str | Path) -> Location:
    """A sweep root as the functions here take it: a remote URI without a trailing slash, else a resolved Path."""
    out = str(out)
    if is_remote(out):
        return out.rstrip("/")
    if out.lower().startswith("file://"):
        out = out[len("file://"):]
    return Path(out).resolve()


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, path inside the filesystem, query) of a remote URI."""
    scheme, rest = uri.split("://", 1)
    path, _, query = rest.partition("?")
    return scheme.lower(), path.rstrip("/"), query


def join(base: Location, *parts: str) -> Location:
    if is_remote(base):
        scheme, path, query = _split(str(base))
        return f"{scheme}://{posixpath.join(path, *parts)}" + (f"?{query}" if query else "")
    return Path(base).joinpath(*parts)


ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_env() -> dict[str, str]:
    """The S3 endpoint variables set here, for Ray workers' runtime_env (credentials are never passed on)."""
    return {k: os.environ[k] for k in ENDPOINT_VARS if os.environ.get(k)}


@lru_cache(maxsize=16)
def _filesystem(scheme: str, bucket: str, query: str):
    from pyarrow import fs as pafs

    endpoint = next((os.environ[k] for k in ENDPOINT_VARS if os.environ.get(k)), None)
    if scheme == "s3" and endpoint and "endpoint_override" not in query:
        return pafs.S3FileSystem(endpoint_override=endpoint)
    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}/" + (f"?{query}" if query else ""))[0]


def fs_path(target: Location):
    """(pyarrow FileSystem, path inside it). One filesystem per bucket is kept (creating one resolves the region)."""
    from pyarrow import fs as pafs

    if not is_remote(target):
        return pafs.LocalFileSystem(), str(target)
    scheme, path, query = _split(str(target))
    return _filesystem(scheme, path.split("/", 1)[0], query), path


def exists(target: Location) -> bool:
    if not is_remote(target):
        return Path(target).exists()
    from pyarrow import fs as pafs

    fs, path = fs_path(target)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(base: Location) -> list[str]:
    """Paths (relative to `base`, '/'-separated, sorted) of every file below `base`; [] when it does not exist."""
    from pyarrow import fs as pafs

    fs, path = fs_path(base)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(i.path[len(path):].lstrip("/") for i in infos if i.type == pafs.FileType.File)


def read_bytes(target: Location) -> bytes:
    if not is_remote(target):
        return Path(target).read_bytes()
    fs, path = fs_path(target)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(target: Location, data: bytes) -> None:
    """Write a whole file: locally via a hidden temp name + rename, remotely as one object (visible only once
    complete)."""
    if is_remote(target):
        fs, path = fs_path(target)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_npz(target: Location) -> dict:
    import numpy as np

    with np.load(io.BytesIO(read_bytes(target))) as f:
        return dict(f)


def check_writable(out: Location) -> None:
    """A remote location accepts a write and a delete (bucket exists, credentials work); else one line on --out."""
    probe = join(out, f".advsweep-probe-{uuid.uuid4().hex[:12]}")
    try:
        write_bytes(probe, b"probe")
        fs, path = fs_path(probe)
        fs.delete_file(path)
    except Exception as exc:  # missing bucket or credentials, no permission, pyarrow without S3/GCS
        raise SpecError("--out", f"{out}: cannot write there ({reason(exc)})") from None


def reason(exc: BaseException) -> str:
    """The informative part of a storage error on one line (the SDK's error code and message when there is one)."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line[line.find('AWS Error'):] if 'AWS Error' in line else line}"[:240]


def cache_dir(uri: str) -> Path:
    """The local directory that mirrors a remote sweep ($ADVSWEEP_CACHE, default ~/.cache/advsweep/sweeps)."""
    base = Path(os.environ.get("ADVSWEEP_CACHE") or Path.home() / ".cache" / "advsweep") / "sweeps"
    scheme, path, _ = _split(uri)
    return base / scheme / path


def pull(uri: Location, local: Path, skip: tuple[str, ...] = ("ray/",)) -> Path:
    """Bring `local` up to date with the remote sweep `uri` (files new, or changed in size or modification time);
    checkpoints under `ray/` stay remote. A local sweep is its own mirror and is returned as is."""
    if not is_remote(uri):
        return Path(uri)
    from pyarrow import fs as pafs

    fs, path = fs_path(uri)
    local.mkdir(parents=True, exist_ok=True)
    (local / SOURCE).write_text(str(uri))
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        rel = info.path[len(path):].lstrip("/")
        if info.type != pafs.FileType.File or rel.startswith(skip) or posixpath.basename(rel).startswith("."):
            continue
        dest, mtime = local / rel, info.mtime.timestamp() if info.mtime else None
        st = dest.stat() if dest.is_file() else None
        if st and mtime is not None and st.st_size == info.size and int(st.st_mtime) == int(mtime):
            continue
        write_bytes(dest, read_bytes(join(uri, rel)))
        if mtime is not None:
            os.utime(dest, (mtime, mtime))  # the next pull compares size and modification time
    return local


def checkpoint_root(sweep: Location) -> Location:
    """Where a sweep's stored checkpoint paths resolve: the sweep itself, or the URI that a local mirror copies."""
    if is_remote(sweep):
        return sweep
    source = Path(sweep) / SOURCE
    return source.read_text().strip() if source.is_file() else sweep


def mirror(uri: Location) -> Path:
    """A local directory holding the sweep at `uri` (the sweep itself when it is local)."""
    if not is_remote(uri):
        return Path(uri)
    return pull(uri, cache_dir(str(uri)))


def push(local: Path, uri: Location, *names: str) -> None:
    """Upload the files or directories `names` of `local` to the same names below `uri` (nothing for a local sweep)."""
    if not is_remote(uri):
        return
    for name in names:
        src = local / name
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else []
        for f in files:
            write_bytes(join(uri, *f.relative_to(local).parts), f.read_bytes())


def local_copy(target: Location) -> Path:
    """A local directory with the files of the checkpoint directory `target` (downloaded once per process)."""
    if not is_remote(target):
        return Path(target)
    import tempfile

    dest = Path(tempfile.gettempdir()) / "advsweep-checkpoints" / hashlib.sha1(str(target).encode()).hexdigest()[:16]
    if not (dest / ".complete").is_file():
        for rel in list_files(target):
            write_bytes(dest / rel, read_bytes(join(target, rel)))
        (dest / ".complete").write_text(str(target))
    return dest


def relative_to(root_: Location, path: str | None) -> str | None:
    """`path` relative to the sweep root when it lies inside it (local path, URI, or a remote filesystem path
    without its scheme, as Tune reports checkpoints); else unchanged."""
    if not path:
        return path
    if is_remote(root_):
        inside = _split(str(root_))[1] + "/"
        bare = _split(path)[1] if is_remote(path) else path
        return bare[len(inside):] if bare.startswith(inside) else path
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path(root_).resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def checkpoint_location(root_: Location, path: str | None) -> str | None:
    """A checkpoint as Tune reports it (a path inside the storage filesystem, no scheme) as a path or URI that
    `local_copy` opens."""
    return resolve(root_, relative_to(root_, path)) if is_remote(root_) else path


def resolve(root_: Location, stored: str | None) -> str | None:
    """A stored path as a full local path or URI: relative ones are resolved against the sweep root."""
    if not stored or is_remote(stored) or Path(stored).is_absolute():
        return stored
    return str(join(root_, stored)) if is_remote(root_) else str(Path(root_).resolve() / stored)
