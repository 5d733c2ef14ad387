"""Image datasets as uint8 NCHW numpy arrays: MNIST and Fashion-MNIST (IDX files), CIFAR-10 (python pickles).

Files are looked for, in order, in: the explicit `data_dir` (itself, then `<data_dir>/<name>`); `$ADVSWEEP_DATA_DIR`
(`<dir>/<name>`, then `<dir>`); the Debian package location (`SYSTEM_DIRS`); the user cache
`${XDG_CACHE_HOME:-~/.cache}/advsweep/<name>`, into which missing files are downloaded (md5-verified).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from advsweep.registry import Registry, SpecError

from . import cifar, idx
from .download import SOURCES, cache_dir, fetch, urls

__all__ = ["DATASETS", "ImageDataset", "SOURCES", "SYSTEM_DIRS", "load_dataset", "resolve_data_dir",
           "search_dirs", "stratified_subset"]

ENV_VAR = "ADVSWEEP_DATA_DIR"
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (Path("/usr/share/datasets/mnist"),),
    "cifar10": (),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
_FORMATS = {"fashion-mnist": idx, "mnist": idx, "cifar10": cifar}


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    name: str
    x_train: np.ndarray  # uint8 (N, C, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for x, y, split in ((self.x_train, self.y_train, "train"), (self.x_test, self.y_test, "test")):
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[2] != x.shape[3]:
                raise ValueError(f"{self.name} x_{split}: expected uint8 (N, C, H, H), got {x.dtype} {x.shape}")
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise ValueError(f"{self.name} y_{split}: expected int64 ({len(x)},), got {y.dtype} {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"{self.name}: train images {self.x_train.shape[1:]} != test {self.x_test.shape[1:]}")

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"shape={self.channels}x{self.image_size}x{self.image_size}, classes={self.num_classes})")


DATASETS = Registry("dataset")


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Candidate directories for `name`, in search order, without duplicates; the last is the download cache."""
    dirs: list[Path] = []
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise SpecError("data_dir", f"{d} is not a directory: create it with the {name} files or fix --data-dir")
        dirs += [d, d / name]
    if env := os.environ.get(ENV_VAR):
        e = Path(env).expanduser()
        dirs += [e / name, e]
    dirs += [*SYSTEM_DIRS.get(name, ()), cache_dir(name)]
    return list(dict.fromkeys(dirs))


def resolve_data_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The first search directory holding the files of `name`; the cache directory when none does."""
    DATASETS.get(name, "dataset")
    dirs = search_dirs(name, data_dir)
    return next((d for d in dirs if _FORMATS[name].present(d)), dirs[-1])


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> ImageDataset:
    return DATASETS.get(name, "dataset")(data_dir=data_dir, download=download)


def _locate(name: str, data_dir: str | None, download: bool) -> Path:
    """Directory with the files of `name`, downloading the missing ones into the cache if needed and allowed."""
    fmt = _FORMATS[name]
    dirs = search_dirs(name, data_dir)
    found = next((d for d in dirs if fmt.present(d)), None)
    if found is not None:
        return found
    cache = dirs[-1]
    partial = [f"{d} lacks {', '.join(m)}" for d in dirs if d.is_dir() and 0 < len(m := fmt.missing(d)) < fmt.NFILES]
    where = ", ".join(map(str, dirs)) + (f" ({'; '.join(partial)})" if partial else "")
    files = list(SOURCES[name]["files"])
    todo = [f for f in files if not (cache / f).is_file() and not (cache / f.removesuffix(".gz")).is_file()]
    wanted = f"{cifar.ARCHIVE} or its {cifar.BATCHES}/ folder" if fmt is cifar else ", ".join(files) + " (or unzipped)"
    fix = f"place {wanted} in one of them or pass --data-dir"
    if not download:
        raise SpecError(todo[0] if todo else name, f"{name} not found in {where}; downloads are off: {fix}")
    for f in todo:
        try:
            fetch(name, f, cache)
        except SpecError as exc:
            raise SpecError(f, f"{name} not found in {where}; {exc.message}: {fix}") from None
    if not fmt.present(cache):
        raise SpecError(str(cache), f"{name} files still incomplete after download: {fix}")
    return cache


def _load_idx(name: str, classes: tuple[str, ...], data_dir: str | None, download: bool) -> ImageDataset:
    x_train, y_train, x_test, y_test = idx.load_dir(_locate(name, data_dir, download), len(classes))
    return ImageDataset(name, x_train, y_train, x_test, y_test, classes)


@DATASETS.register("fashion-mnist")
def fashion_mnist(data_dir: str | None = None, download: bool = True) -> ImageDataset:
    return _load_idx("fashion-mnist", FASHION_MNIST_CLASSES, data_dir, download)


@DATASETS.register("mnist")
def mnist(data_dir: str | None = None, download: bool = True) -> ImageDataset:
    return _load_idx("mnist", MNIST_CLASSES, data_dir, download)


@DATASETS.register("cifar10")
def cifar10(data_dir: str | None = None, download: bool = True) -> ImageDataset:
    root = _locate("cifar10", data_dir, download)
    x_train, y_train, x_test, y_test, classes = cifar.load_dir(root, cache_dir("cifar10"))
    return ImageDataset("cifar10", x_train, y_train, x_test, y_test, classes)


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n samples with each class's share as in `labels` (largest-remainder rounding).

    Deterministic for a seed; n >= len(labels) gives all indices.
    """
    labels = np.asarray(labels)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    if n >= len(labels):
        return np.arange(len(labels))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.floor(exact).astype(np.int64)
    # Stable sort: equal remainders go to the lower class, so the result depends only on labels, n and seed.
    quota[np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(inverse == c))[:q] for c, q in enumerate(quota)]
    return np.sort(np.concatenate(picked)).astype(np.int64)
