"""IDX files (MNIST, Fashion-MNIST): big-endian header, then uint8 data; gzip-compressed or raw."""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from advsweep.registry import SpecError

IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
LABELS_MAGIC = 0x00000801  # uint8, 1 dim
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NFILES = len(STEMS)
_FIX = "delete or replace it (or pass --data-dir to a good copy)"


def find(root: Path, stem: str) -> Path | None:
    for p in (root / stem, root / f"{stem}.gz"):
        if p.is_file():
            return p
    return None


def missing(root: Path) -> list[str]:
    return [f"{s}[.gz]" for s in STEMS if find(root, s) is None]


def present(root: Path) -> bool:
    return not missing(root)


def read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"  # by content, so a misnamed file still reads
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise SpecError(str(path), f"unreadable, corrupt or truncated ({exc}): {_FIX}") from None
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != magic:
        got = f"0x{struct.unpack('>I', data[:4])[0]:08x}" if len(data) >= 4 else f"{len(data)} bytes"
        raise SpecError(str(path), f"not an IDX {'image' if magic == IMAGES_MAGIC else 'label'} file "
                                   f"(magic {got}, expected 0x{magic:08x}): {_FIX}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise SpecError(str(path), f"truncated IDX header ({len(data)} bytes): {_FIX}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise SpecError(str(path), f"header says {'x'.join(map(str, dims))} = {math.prod(dims)} bytes but "
                                   f"{len(data) - header} follow (truncated or corrupt): {_FIX}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _split(root: Path, prefix: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    ipath = find(root, f"{prefix}-images-idx3-ubyte")
    lpath = find(root, f"{prefix}-labels-idx1-ubyte")
    if ipath is None or lpath is None:
        raise SpecError(str(root), f"{prefix}-images/-labels IDX files missing: place all four files there")
    images = read_idx(ipath, IMAGES_MAGIC)
    labels = read_idx(lpath, LABELS_MAGIC).astype(np.int64)
    n, h, w = images.shape
    if h != w:
        raise SpecError(str(ipath), f"images are {h}x{w}, expected square: {_FIX}")
    if len(labels) != n:
        raise SpecError(str(lpath), f"{len(labels)} labels but {ipath.name} has {n} images: {_FIX}")
    if n and labels.max() >= num_classes:
        raise SpecError(str(lpath), f"label {labels.max()} out of range 0..{num_classes - 1}: {_FIX}")
    return images.reshape(n, 1, h, w), labels


def load_dir(root: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), images uint8 (N, 1, H, W), labels int64."""
    x_train, y_train = _split(root, "train", num_classes)
    x_test, y_test = _split(root, "t10k", num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise SpecError(str(root), f"train images are {x_train.shape[2:]} but test images {x_test.shape[2:]}: "
                                   "the files come from different datasets")
    return x_train, y_train, x_test, y_test
