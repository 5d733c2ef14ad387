"""Dataset layer: IDX / CIFAR-10 parsing against files written in the exact on-disk formats, the search order,
md5-verified downloads from a local HTTP server, the real Debian Fashion-MNIST, and stratified subsets."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import advsweep.data as data
from advsweep.data import DATASETS, ImageDataset, load_dataset, resolve_data_dir, stratified_subset
from advsweep.data import download as dl
from advsweep.registry import SpecError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real cache, env or system directory leaks in; tests opt back in explicitly."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ADVSWEEP_DATA_DIR", raising=False)
    for name in list(data.SYSTEM_DIRS):
        monkeypatch.setitem(data.SYSTEM_DIRS, name, ())


# ---------- writers for the on-disk formats ----------

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_idx(rng, n_train=7, n_test=5, size=6, classes=10):
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, classes, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, classes, n_test).astype(np.uint8),
    }


def write_idx(d: Path, arrays: dict, gz=True) -> Path:
    """gz: True, False, or a set of the names to compress."""
    d.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        if gz is True or (isinstance(gz, set) and name in gz):
            (d / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(arr)))
        else:
            (d / name).write_bytes(idx_bytes(arr))
    return d


def make_cifar(rng, per_batch=3, n_test=4):
    batches = {f"data_batch_{i}": (rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                   [int(v) for v in rng.integers(0, 10, per_batch)]) for i in range(1, 6)}
    batches["test_batch"] = (rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                             [int(v) for v in rng.integers(0, 10, n_test)])
    # Image 0 of batch 1: pixel (row 4, col 7) is R=1, G=2, B=3 — each plane is 1024 row-major bytes.
    img = batches["data_batch_1"][0][0]
    img[4 * 32 + 7], img[1024 + 4 * 32 + 7], img[2048 + 4 * 32 + 7] = 1, 2, 3
    return batches


def cifar_files(batches) -> dict[str, bytes]:
    # Keys as bytes, as the original Python 2 pickles read with encoding="bytes" have them.
    out = {name: pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": x,
                               b"filenames": [b"f.png"] * len(x)}, protocol=2)
           for name, (x, labels) in batches.items()}
    out["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES],
                                        b"num_cases_per_batch": 10000, b"num_vis": 3072}, protocol=2)
    return out


def write_cifar_dir(root: Path, batches) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, blob in cifar_files(batches).items():
        (d / name).write_bytes(blob)
    return root


def cifar_tar(batches, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {f"cifar-10-batches-py/{k}": v for k, v in cifar_files(batches).items()}
        members["cifar-10-batches-py/readme.html"] = b"<html></html>"
        members.update(extra or {})
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def check_idx(ds: ImageDataset, arrays: dict):
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    n, h, w = arrays["train-images-idx3-ubyte"].shape
    assert ds.x_train.shape == (n, 1, h, w) and ds.channels == 1 and ds.image_size == h
    np.testing.assert_array_equal(ds.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.x_test[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


def check_cifar(ds: ImageDataset, batches):
    x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert ds.x_train.shape == (len(x), 3, 32, 32) and ds.channels == 3 and ds.image_size == 32
    np.testing.assert_array_equal(ds.x_train[0, :, 4, 7], [1, 2, 3])
    np.testing.assert_array_equal(ds.x_train.reshape(len(x), -1), x)
    np.testing.assert_array_equal(ds.y_train, y)
    np.testing.assert_array_equal(ds.x_test.reshape(len(ds.x_test), -1), batches["test_batch"][0])
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][1])
    assert ds.classes == tuple(CIFAR_CLASSES) and ds.num_classes == 10


# ---------- IDX ----------

@pytest.mark.parametrize("gz", [True, False, {"train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}],
                         ids=["gz", "raw", "mixed"])
def test_idx_roundtrip(tmp_path, gz):
    arrays = make_idx(np.random.default_rng(0))
    ds = load_dataset("mnist", data_dir=str(write_idx(tmp_path / "d", arrays, gz)), download=False)
    check_idx(ds, arrays)
    assert ds.name == "mnist" and ds.classes == tuple("0123456789")


def test_idx_gzip_detected_by_content(tmp_path):
    arrays = make_idx(np.random.default_rng(1))
    d = write_idx(tmp_path / "d", arrays, gz=False)
    name = "train-images-idx3-ubyte"
    (d / name).write_bytes(gzip.compress((d / name).read_bytes()))  # compressed but named raw
    check_idx(load_dataset("fashion-mnist", data_dir=str(d), download=False), arrays)


def _corrupt_magic(d):
    p = d / "train-images-idx3-ubyte"
    p.write_bytes(struct.pack(">I", 0x801) + p.read_bytes()[4:])
    return p, "magic"


def _truncate_raw(d):
    p = d / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-3])
    return p, "truncated"


def _truncate_gz(d):
    raw = d / "train-labels-idx1-ubyte"
    p = d / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(raw.read_bytes())[:-10])
    raw.unlink()
    return p, "truncated"


def _short_header(d):
    p = d / "t10k-labels-idx1-ubyte"
    p.write_bytes(struct.pack(">I", 0x801) + b"\x00\x00")
    return p, "header"


def _count_mismatch(d):
    p = d / "t10k-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.zeros(4, np.uint8)))  # 5 images
    return p, "4 labels but"


def _label_range(d):
    p = d / "train-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.full(7, 10, np.uint8)))
    return p, "out of range"


@pytest.mark.parametrize("corrupt", [_corrupt_magic, _truncate_raw, _truncate_gz, _short_header, _count_mismatch,
                                     _label_range])
def test_idx_corrupt_files_name_the_file(tmp_path, corrupt):
    d = write_idx(tmp_path / "d", make_idx(np.random.default_rng(2)), gz=False)
    path, words = corrupt(d)
    with pytest.raises(SpecError) as err:
        load_dataset("mnist", data_dir=str(d), download=False)
    assert err.value.field == str(path)
    assert words in err.value.message and "\n" not in str(err.value)


# ---------- CIFAR-10 ----------

def test_cifar_batches_dir(tmp_path):
    batches = make_cifar(np.random.default_rng(3))
    check_cifar(load_dataset("cifar10", data_dir=str(write_cifar_dir(tmp_path / "d", batches)), download=False),
                batches)
    # Pointing straight at the batches folder works too.
    check_cifar(load_dataset("cifar10", data_dir=str(tmp_path / "d" / "cifar-10-batches-py"), download=False),
                batches)


def test_cifar_archive_extracted_into_cache(tmp_path):
    batches = make_cifar(np.random.default_rng(4))
    d = tmp_path / "d"
    d.mkdir()
    (d / "cifar-10-python.tar.gz").write_bytes(cifar_tar(batches))
    check_cifar(load_dataset("cifar10", data_dir=str(d), download=False), batches)
    cache = tmp_path / "xdg" / "advsweep" / "cifar10"
    assert sorted(p.name for p in (cache / "cifar-10-batches-py").iterdir()) == sorted(CIFAR_FILES)
    assert sorted(p.name for p in cache.iterdir()) == ["cifar-10-batches-py"]  # no temp dirs left
    assert sorted(p.name for p in d.iterdir()) == ["cifar-10-python.tar.gz"]


@pytest.mark.parametrize("bad", ["../evil", "/tmp/advsweep-test-evil", "cifar-10-batches-py/../../evil"])
def test_cifar_archive_path_traversal_refused(tmp_path, bad):
    d = tmp_path / "d" / "inner"
    d.mkdir(parents=True)
    archive = d / "cifar-10-python.tar.gz"
    archive.write_bytes(cifar_tar(make_cifar(np.random.default_rng(5)), extra={bad: b"owned"}))
    with pytest.raises(SpecError, match="unsafe member") as err:
        load_dataset("cifar10", data_dir=str(d), download=False)
    assert err.value.field == str(archive)
    assert not list(tmp_path.rglob("evil")) and not Path("/tmp/advsweep-test-evil").exists()
    cache = tmp_path / "xdg" / "advsweep" / "cifar10"
    assert not cache.exists() or not list(cache.iterdir())


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    d = write_cifar_dir(tmp_path / "d", make_cifar(np.random.default_rng(6)))
    bad = d / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(SpecError, match="refusing global") as err:
        load_dataset("cifar10", data_dir=str(d), download=False)
    assert err.value.field == str(bad) and not marker.exists()


@pytest.mark.parametrize("mutate, words", [
    (lambda b: b.__setitem__("test_batch", (b["test_batch"][0][:, :100], b["test_batch"][1])), "expected uint8"),
    (lambda b: b.__setitem__("test_batch", (b["test_batch"][0], b["test_batch"][1][:-1])), "must be 4 integers"),
])
def test_cifar_bad_batch(tmp_path, mutate, words):
    batches = make_cifar(np.random.default_rng(7))
    mutate(batches)
    d = write_cifar_dir(tmp_path / "d", batches)
    with pytest.raises(SpecError, match=words) as err:
        load_dataset("cifar10", data_dir=str(d), download=False)
    assert err.value.field == str(d / "cifar-10-batches-py" / "test_batch")


def test_cifar_truncated_pickle(tmp_path):
    d = write_cifar_dir(tmp_path / "d", make_cifar(np.random.default_rng(8)))
    p = d / "cifar-10-batches-py" / "data_batch_5"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(SpecError, match="not a readable CIFAR-10 pickle") as err:
        load_dataset("cifar10", data_dir=str(d), download=False)
    assert err.value.field == str(p)


# ---------- search order ----------

def test_search_order(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    sets = {k: make_idx(rng) for k in ("explicit", "env_named", "env_root", "system", "cache")}
    explicit = write_idx(tmp_path / "explicit", sets["explicit"])
    env = tmp_path / "env"
    write_idx(env / "mnist", sets["env_named"])
    write_idx(env, sets["env_root"])
    system = write_idx(tmp_path / "system", sets["system"])
    cache = write_idx(tmp_path / "xdg" / "advsweep" / "mnist", sets["cache"])
    monkeypatch.setenv("ADVSWEEP_DATA_DIR", str(env))
    monkeypatch.setitem(data.SYSTEM_DIRS, "mnist", (system,))

    def loaded():
        check_idx(load_dataset("mnist", download=False), expected)

    assert resolve_data_dir("mnist", str(explicit)) == explicit
    check_idx(load_dataset("mnist", data_dir=str(explicit), download=False), sets["explicit"])
    for remove, expected in [(None, sets["env_named"]), (env / "mnist", sets["env_root"]), (env, sets["system"]),
                             (system, sets["cache"])]:
        if remove is not None:
            for n in IDX_NAMES:
                (remove / f"{n}.gz").unlink()
        loaded()
    assert resolve_data_dir("mnist") == cache
    # <data_dir>/<name> is searched as well.
    nested = write_idx(tmp_path / "root" / "mnist", sets["explicit"])
    assert resolve_data_dir("mnist", str(tmp_path / "root")) == nested


def test_resolve_defaults_to_cache_and_respects_xdg(tmp_path):
    assert resolve_data_dir("cifar10") == tmp_path / "xdg" / "advsweep" / "cifar10"
    with pytest.raises(SpecError, match="unknown dataset"):
        resolve_data_dir("imagenet")


def test_missing_explicit_dir(tmp_path):
    with pytest.raises(SpecError, match="not a directory") as err:
        load_dataset("mnist", data_dir=str(tmp_path / "nope"))
    assert err.value.field == "data_dir"


def test_offline_without_files_is_one_clear_line(tmp_path):
    partial = tmp_path / "partial"
    write_idx(partial, make_idx(np.random.default_rng(10)))
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SpecError) as err:
        load_dataset("mnist", data_dir=str(partial), download=False)
    msg = str(err.value)
    assert "\n" not in msg and "downloads are off" in msg and "--data-dir" in msg
    assert str(partial) in msg and "lacks t10k-labels-idx1-ubyte[.gz]" in msg
    assert str(tmp_path / "xdg" / "advsweep" / "mnist") in msg


# ---------- downloads ----------

@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (www dir, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/"


def md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def serve_idx(www: Path, arrays) -> dict[str, str]:
    sums = {}
    for name, arr in arrays.items():
        blob = gzip.compress(idx_bytes(arr))
        (www / f"{name}.gz").write_bytes(blob)
        sums[f"{name}.gz"] = md5(blob)
    return sums


def test_download_verified_with_mirror_fallback(server, monkeypatch, tmp_path):
    www, url = server
    arrays = make_idx(np.random.default_rng(11))
    sums = serve_idx(www, arrays)
    monkeypatch.setitem(dl.SOURCES, "mnist", {"mirrors": [dead_url(), url], "files": sums})
    check_idx(load_dataset("mnist"), arrays)
    cache = tmp_path / "xdg" / "advsweep" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(sums)
    # Second load reads the cache; the server is not needed.
    www.joinpath("train-images-idx3-ubyte.gz").unlink()
    check_idx(load_dataset("mnist"), arrays)


def test_download_checksum_mismatch_leaves_nothing(server, monkeypatch, tmp_path):
    www, url = server
    sums = serve_idx(www, make_idx(np.random.default_rng(12)))
    sums["train-labels-idx1-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(dl.SOURCES, "fashion-mnist", {"mirrors": [url], "files": sums})
    cache = tmp_path / "xdg" / "advsweep" / "fashion-mnist"
    with pytest.raises(SpecError, match="md5 mismatch") as err:
        dl.fetch("fashion-mnist", "train-labels-idx1-ubyte.gz", cache)
    assert err.value.field == "train-labels-idx1-ubyte.gz" and not list(cache.iterdir())
    with pytest.raises(SpecError, match="md5 mismatch.*--data-dir"):
        load_dataset("fashion-mnist")
    # The files before the bad one were kept (verified); the bad one and its temp file are gone.
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_download_http_404_and_offline_fail_fast(server, monkeypatch, tmp_path):
    _, url = server
    monkeypatch.setitem(dl.SOURCES, "mnist", {"mirrors": [url, dead_url()],
                                              "files": {"train-images-idx3-ubyte.gz": "0" * 32}})
    t = time.monotonic()
    with pytest.raises(SpecError) as err:
        load_dataset("mnist")
    assert time.monotonic() - t < 5
    msg = str(err.value)
    assert "HTTP 404" in msg and "no network" in msg and url in msg and "--data-dir" in msg and "\n" not in msg
    assert not list((tmp_path / "xdg" / "advsweep" / "mnist").iterdir())


def test_download_cifar_archive(server, monkeypatch):
    www, url = server
    batches = make_cifar(np.random.default_rng(13))
    blob = cifar_tar(batches)
    (www / "cifar-10-python.tar.gz").write_bytes(blob)
    monkeypatch.setitem(dl.SOURCES, "cifar10", {"mirrors": [url], "files": {"cifar-10-python.tar.gz": md5(blob)}})
    check_cifar(load_dataset("cifar10"), batches)


def test_sources_table_matches_torchvision():
    """The published md5s (cross-checked against torchvision/datasets/mnist.py and cifar.py)."""
    s = dl.SOURCES
    assert s["fashion-mnist"]["files"]["train-images-idx3-ubyte.gz"] == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert s["mnist"]["files"]["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
    assert s["cifar10"]["files"] == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    assert all(set(s[n]["files"]) == {f"{x}.gz" for x in IDX_NAMES} for n in ("mnist", "fashion-mnist"))


# ---------- real Fashion-MNIST ----------

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# md5 of the *decompressed* upstream files. Debian re-gzipped them, so the .gz md5s differ from the published ones.
FASHION_RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


@pytest.mark.skipif(not (FASHION_DIR / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason=f"{FASHION_DIR} absent (install Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", (FASHION_DIR,))
    assert resolve_data_dir("fashion-mnist") == FASHION_DIR
    for name, want in FASHION_RAW_MD5.items():
        assert md5(gzip.decompress((FASHION_DIR / f"{name}.gz").read_bytes())) == want, name
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert (ds.channels, ds.image_size, ds.num_classes) == (1, 28, 10)
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert ds.y_train[:5].tolist() == [9, 0, 0, 3, 0]  # first training labels of Fashion-MNIST
    sub = stratified_subset(ds.y_train, 1000, seed=0)
    np.testing.assert_array_equal(np.bincount(ds.y_train[sub]), [100] * 10)


# ---------- stratified_subset, dataset, registry ----------

def test_stratified_subset():
    labels = np.repeat(np.arange(3), [500, 300, 200])
    np.random.default_rng(0).shuffle(labels)
    a = stratified_subset(labels, 100, seed=1)
    assert a.dtype == np.int64 and len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(np.bincount(labels[a]), [50, 30, 20])
    np.testing.assert_array_equal(a, stratified_subset(labels, 100, seed=1))
    assert not np.array_equal(a, stratified_subset(labels, 100, seed=2))
    np.testing.assert_array_equal(stratified_subset(labels, 1000, seed=0), np.arange(1000))
    np.testing.assert_array_equal(stratified_subset(labels, 5000, seed=0), np.arange(1000))
    assert len(stratified_subset(labels, 0, seed=0)) == 0
    # Largest remainder: 3 equal classes, 100 samples → 34/33/33, total exact.
    even = np.repeat(np.arange(3), 333)
    np.testing.assert_array_equal(np.bincount(even[stratified_subset(even, 100, seed=0)]), [34, 33, 33])
    # Labels need not be 0..K-1.
    odd = np.repeat([7, 42], [80, 20])
    np.testing.assert_array_equal(np.unique(odd[stratified_subset(odd, 10, seed=3)], return_counts=True)[1], [8, 2])
    with pytest.raises(ValueError):
        stratified_subset(labels, -1, seed=0)


def test_image_dataset_validates():
    x = np.zeros((2, 1, 4, 4), np.uint8)
    y = np.zeros(2, np.int64)
    ds = ImageDataset("t", x, y, x, y, ("a", "b"))
    assert (ds.channels, ds.image_size, ds.num_classes) == (1, 4, 2) and "train=2" in repr(ds)
    with pytest.raises(ValueError):
        ImageDataset("t", x.astype(np.float32), y, x, y, ("a",))
    with pytest.raises(ValueError):
        ImageDataset("t", x, y[:1], x, y, ("a",))


def test_registry():
    assert DATASETS.names() == ["cifar10", "fashion-mnist", "mnist"]
    assert DATASETS.validate("mnist", {}, "dataset") == {"data_dir": None, "download": True}
    with pytest.raises(SpecError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")
