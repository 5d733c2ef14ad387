"""Sweep locations: URIs and local paths joined, stored relative and resolved the same way (no server needed)."""
from pathlib import Path

from advsweep.storage import location as L

URI = "s3://bkt/sweeps/a?endpoint_override=127.0.0.1:9000&scheme=http"


def test_uri_paths_keep_their_query_and_store_relative():
    assert L.root(URI + "/") == URI and L.root("s3://bkt/x/") == "s3://bkt/x"
    assert L.is_remote(URI) and not L.is_remote("/tmp/x") and not L.is_remote(Path("/tmp/x"))
    ckpt = L.join(URI, "ray", "run", "checkpoint_000001")
    assert ckpt == "s3://bkt/sweeps/a/ray/run/checkpoint_000001?endpoint_override=127.0.0.1:9000&scheme=http"
    # Tune reports a checkpoint as a path inside the bucket's filesystem (no scheme); both forms store the same
    assert L.relative_to(URI, "bkt/sweeps/a/ray/run/checkpoint_000001") == "ray/run/checkpoint_000001"
    assert L.relative_to(URI, ckpt) == "ray/run/checkpoint_000001"
    assert L.relative_to(URI, "bkt/elsewhere/c") == "bkt/elsewhere/c"
    assert L.resolve(URI, "ray/run/checkpoint_000001") == ckpt
    assert L.checkpoint_location(URI, "bkt/sweeps/a/ray/run/checkpoint_000001") == ckpt
    assert L.cache_dir(URI).parts[-4:] == ("s3", "bkt", "sweeps", "a")


def test_local_paths_and_a_mirror_resolve_checkpoints_to_its_source(tmp_path):
    assert L.root(f"file://{tmp_path}") == tmp_path.resolve()
    assert L.relative_to(tmp_path, str(tmp_path / "ray" / "c")) == "ray/c"
    assert L.resolve(tmp_path, "ray/c") == str(tmp_path.resolve() / "ray" / "c")
    L.write_bytes(tmp_path / "d" / "f.txt", b"x")
    assert L.read_bytes(tmp_path / "d" / "f.txt") == b"x" and L.list_files(tmp_path) == ["d/f.txt"]
    assert L.checkpoint_root(tmp_path) == tmp_path
    (tmp_path / L.SOURCE).write_text(URI)
    assert L.checkpoint_root(tmp_path) == URI
