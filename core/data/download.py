"""Checksum-verified downloads of the canonical dataset files into the user cache."""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from advsweep.registry import SpecError

log = logging.getLogger(__name__)

# Per socket operation; an offline machine fails at DNS or connect well before this.
TIMEOUT_S = 10.0

# Dataset → mirrors (tried in order; URL = mirror + file name) and file → md5 as published by the dataset authors.
# Checked against torchvision/datasets/mnist.py and cifar.py (MNIST, FashionMNIST, CIFAR10).
SOURCES: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "files": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
    "mnist": {
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        "files": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "cifar10": {
        "mirrors": ["https://www.cs.toronto.edu/~kriz/"],
        "files": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    },
}


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "advsweep" / name


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def urls(name: str, filename: str) -> list[str]:
    return [m + filename for m in SOURCES[name]["mirrors"]]


def fetch(name: str, filename: str, dest_dir: Path, timeout: float | None = None) -> Path:
    """Download `filename` of dataset `name` into dest_dir, trying each mirror; md5-verified, atomic.

    Raises SpecError(filename, reasons) when no mirror delivered the right bytes; nothing is left behind then.
    """
    expected = SOURCES[name]["files"][filename]
    dest_dir.mkdir(parents=True, exist_ok=True)
    reasons = []
    for url in urls(name, filename):
        log.info("downloading %s → %s", url, dest_dir)
        try:
            _download(url, dest_dir / filename, expected, TIMEOUT_S if timeout is None else timeout)
            return dest_dir / filename
        except _Failed as exc:
            reasons.append(f"{url} ({exc})")
    raise SpecError(filename, "could not download from " + "; ".join(reasons))


class _Failed(Exception):
    pass


def _download(url: str, dest: Path, expected_md5: str, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise _Failed(f"HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise _Failed(f"no network: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Failed(f"{type(exc).__name__}: {exc}") from None
        if h.hexdigest() != expected_md5:
            raise _Failed(f"md5 mismatch: got {h.hexdigest()}, expected {expected_md5}; download discarded")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
