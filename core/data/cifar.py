"""CIFAR-10 "python version": pickled batches in cifar-10-batches-py/, or the cifar-10-python.tar.gz holding them."""
from __future__ import annotations

import _codecs
import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from advsweep.registry import SpecError

BATCHES = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST = "test_batch"
META = "batches.meta"
FILES = (*TRAIN, TEST, META)
NFILES = len(FILES)
_FIX = "delete or replace it (or pass --data-dir to a good copy)"

try:  # numpy >= 2 moved it; old pickles (the real CIFAR ones) name numpy.core.multiarray
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # pragma: no cover
    from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]

# A pickle can run arbitrary code; the batches only need what rebuilds a numpy array.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _codecs.encode,  # protocol-2 pickles of bytes written by Python 3
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure means "not a CIFAR batch"
        raise SpecError(str(path), f"not a readable CIFAR-10 pickle ({type(exc).__name__}: {exc}): {_FIX}") from None
    if not isinstance(obj, dict):
        raise SpecError(str(path), f"pickle holds {type(obj).__name__}, expected a dict: {_FIX}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def batches_dir(root: Path) -> Path | None:
    for d in (root / BATCHES, root):
        if all((d / f).is_file() for f in FILES):
            return d
    return None


def present(root: Path) -> bool:
    return batches_dir(root) is not None or (root / ARCHIVE).is_file()


def missing(root: Path) -> list[str]:
    if present(root):
        return []
    d = root / BATCHES if (root / BATCHES).is_dir() else root
    return [f"{BATCHES}/{f}" for f in FILES if not (d / f).is_file()]


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _unpickle(path)
    if "data" not in obj or "labels" not in obj:
        raise SpecError(str(path), f"batch lacks b'data' or b'labels' (keys: {sorted(obj)}): {_FIX}")
    data = obj["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise SpecError(str(path), f"b'data' is {desc}, expected uint8 (N, 3072): {_FIX}")
    try:
        labels = np.asarray(obj["labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise SpecError(str(path), f"b'labels' are not integers ({exc}): {_FIX}") from None
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise SpecError(str(path), f"b'labels' must be {len(data)} integers in 0..9: {_FIX}")
    # Each row is 1024 R, 1024 G, 1024 B values, each plane row-major: exactly NCHW after a reshape.
    return data.reshape(-1, 3, 32, 32), labels


def read_meta(path: Path) -> tuple[str, ...]:
    names = _unpickle(path).get("label_names")
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise SpecError(str(path), f"b'label_names' must list 10 class names: {_FIX}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def extract(archive: Path, cache: Path) -> Path:
    """Extract the batches of `archive` into cache/cifar-10-batches-py (atomically); return that directory."""
    dest = cache / BATCHES
    if batches_dir(dest) == dest:
        return dest
    if dest.exists():
        raise SpecError(str(dest), f"incomplete (missing {', '.join(missing(dest))}): delete it to re-extract")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=cache))
    try:
        found = set()
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts:
                    raise SpecError(str(archive), f"unsafe member path {m.name!r}, refusing to extract: {_FIX}")
                # Only the expected files are written, by name, so nothing else in the archive touches the disk.
                if len(p.parts) == 2 and p.parts[0] == BATCHES and p.parts[1] in FILES:
                    if not m.isfile():
                        raise SpecError(str(archive), f"member {m.name!r} is not a regular file: {_FIX}")
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(tmp / p.parts[1], "wb") as out:
                        shutil.copyfileobj(src, out)
                    found.add(p.parts[1])
        if lacking := [f for f in FILES if f not in found]:
            raise SpecError(str(archive), f"archive lacks {BATCHES}/{', '.join(lacking)}: {_FIX}")
        try:
            os.replace(tmp, dest)
        except OSError:
            if batches_dir(dest) != dest:  # else another process extracted it first
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise SpecError(str(archive), f"cannot extract ({type(exc).__name__}: {exc}): {_FIX}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_dir(root: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """(x_train, y_train, x_test, y_test, classes); images uint8 (N, 3, 32, 32), labels int64."""
    d = batches_dir(root) or extract(root / ARCHIVE, cache)
    parts = [read_batch(d / f) for f in TRAIN]
    x_test, y_test = read_batch(d / TEST)
    x_train = np.concatenate([x for x, _ in parts])
    y_train = np.concatenate([y for _, y in parts])
    return x_train, y_train, np.array(x_test), y_test, read_meta(d / META)
