"""Tests for dpjax.data: IDX parsing, Fashion-MNIST lookup, splits."""

import doctest
import gzip
import hashlib
import io
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from dpjax.data import DATASET_NAMES, Split, _datasets, load_dataset, load_idx

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
_BIG_ENDIAN = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written independently of the parser under test."""
    code = _CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(_BIG_ENDIAN[code]).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _write_fashion(folder: Path, n_train: int, n_test: int = 7, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n_train)
    parts = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in parts.items():
        _write(folder / (name + ".gz" if gz else name), _idx_bytes(array), gz)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No real data folders, no network, and nothing written outside tmp_path."""
    monkeypatch.delenv("DPJAX_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_datasets, "_SYSTEM_FASHION_MNIST_DIR", tmp_path / "system")

    def no_network(url, timeout=None):
        raise AssertionError(f"the test touched the network: {url}")

    monkeypatch.setattr(_datasets, "_urlopen", no_network)
    return tmp_path


# ---------------------------------------------------------------- load_idx


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-(2**31), -1, 0, 7, 2**31 - 1], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    ],
    ids=["uint8-3d", "int32-1d", "float32-2d"],
)
def test_load_idx_round_trips(tmp_path, array, gz):
    path = _write(tmp_path / "a-idx", _idx_bytes(array), gz)
    got = load_idx(path)
    assert got.dtype == array.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\x00", "trailing bytes"),
        (lambda b: b[:6], "truncated"),
        (lambda b: b"\x01" + b[1:], "not an IDX file"),
        (lambda b: b[:2] + b"\x42" + b[3:], "type code 0x42"),
        (lambda b: b"", "not an IDX file"),
    ],
    ids=["short-body", "trailing", "short-header", "magic", "type-code", "empty"],
)
def test_load_idx_rejects_corrupt_files(tmp_path, mutate, message, gz):
    payload = mutate(_idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4)))
    path = _write(tmp_path / "bad-idx", payload, gz)
    with pytest.raises(ValueError, match=message):
        load_idx(path)


def test_load_idx_rejects_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        load_idx(path)


def test_load_idx_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_idx(tmp_path / "nope")


# ----------------------------------------------------- fashion-mnist lookup


def test_fashion_mnist_lookup_order(isolated, monkeypatch):
    env_dir, system_dir = isolated / "env", isolated / "system"
    cache_dir = isolated / "cache" / "dpjax" / "fashion-mnist"
    arg_dir = isolated / "arg"
    _write_fashion(arg_dir, n_train=20)
    _write_fashion(env_dir / "fashion-mnist", n_train=30)
    _write_fashion(system_dir, n_train=40)
    _write_fashion(cache_dir, n_train=50, gz=False)
    monkeypatch.setenv("DPJAX_DATA_DIR", str(env_dir))

    def loaded(**kwargs):
        ds = load_dataset("fashion-mnist", validation_size=5, **kwargs)
        return len(ds.train) + len(ds.validation), ds.source

    assert loaded(data_dir=arg_dir) == (20, f"Fashion-MNIST IDX files in {arg_dir} (data_dir)")
    n, source = loaded()
    assert n == 30 and str(env_dir / "fashion-mnist") in source and "$DPJAX_DATA_DIR" in source
    monkeypatch.delenv("DPJAX_DATA_DIR")
    n, source = loaded()
    assert n == 40 and str(system_dir) in source and "dataset-fashion-mnist" in source
    for f in system_dir.iterdir():
        f.unlink()
    n, source = loaded()
    assert n == 50 and str(cache_dir) in source and "user cache" in source


def test_fashion_mnist_splits_and_scaling(isolated):
    _write_fashion(isolated / "d", n_train=40, n_test=9)
    ds = load_dataset("fashion-mnist", data_dir=isolated / "d", validation_size=8, seed=3)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (32, 8, 9)
    assert ds.train.x.shape == (32, 28, 28, 1) and ds.train.x.dtype == np.float32
    raw = load_idx(isolated / "d" / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(ds.test.x[..., 0], raw.astype(np.float32) / 255)
    assert not ds.synthetic and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    # The train and validation parts partition the 40 training images.
    all_train = load_idx(isolated / "d" / "train-images-idx3-ubyte.gz")
    merged = np.concatenate([ds.train.x, ds.validation.x])[..., 0] * 255
    assert sorted(map(bytes, np.rint(merged).astype(np.uint8))) == sorted(map(bytes, all_train))


def test_fashion_mnist_missing_and_download_disabled_names_three_ways(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", download=False)
    message = str(info.value)
    assert "DPJAX_DATA_DIR" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "network" in message
    assert str(isolated / "system") in message


def test_fashion_mnist_missing_and_unreachable_names_three_ways(isolated, monkeypatch):
    urls = []

    def unreachable(url, timeout=None):
        urls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(_datasets, "_urlopen", unreachable)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist")
    assert "DPJAX_DATA_DIR" in str(info.value) and "no route to host" in str(info.value)
    assert urls and all(u.endswith("train-images-idx3-ubyte.gz") for u in urls)
    cache_dir = isolated / "cache" / "dpjax" / "fashion-mnist"
    assert list(cache_dir.iterdir()) == []  # no partial files left behind


def _fake_server(tmp_path, monkeypatch, corrupt=None):
    """Serves tiny .gz files and pins the checksums to them."""
    _write_fashion(tmp_path / "served", n_train=25)
    blobs = {p.name: p.read_bytes() for p in (tmp_path / "served").iterdir()}
    table = {
        key: (name, hashlib.md5(blobs[name]).hexdigest())
        for key, (name, _) in _datasets._FASHION_MNIST_FILES.items()
    }
    monkeypatch.setattr(_datasets, "_FASHION_MNIST_FILES", table)
    fetched = []

    def serve(url, timeout=None):
        name = url.rsplit("/", 1)[1]
        fetched.append(url)
        return io.BytesIO(blobs[name] + (b"x" if name == corrupt else b""))

    monkeypatch.setattr(_datasets, "_urlopen", serve)
    return fetched


def test_fashion_mnist_download_verifies_and_writes_to_cache(isolated, monkeypatch):
    fetched = _fake_server(isolated, monkeypatch)
    ds = load_dataset("fashion-mnist", validation_size=5)
    cache_dir = isolated / "cache" / "dpjax" / "fashion-mnist"
    assert len(ds.train) == 20 and str(cache_dir) in ds.source and "downloaded" in ds.source
    assert len(fetched) == 4 and all(u.startswith("https://") for u in fetched)
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        name for name, _ in _datasets._FASHION_MNIST_FILES.values()
    )


def test_fashion_mnist_download_rejects_bad_checksum(isolated, monkeypatch):
    _fake_server(isolated, monkeypatch, corrupt="t10k-images-idx3-ubyte.gz")
    with pytest.raises(RuntimeError, match="MD5"):
        load_dataset("fashion-mnist")
    cache_dir = isolated / "cache" / "dpjax" / "fashion-mnist"
    assert "t10k-images-idx3-ubyte.gz" not in [p.name for p in cache_dir.iterdir()]
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".part")]


def test_fashion_mnist_rejects_wrong_image_shape(isolated):
    _write_fashion(isolated / "d", n_train=10)
    bad = np.zeros((10, 8, 8), np.uint8)
    _write(isolated / "d" / "train-images-idx3-ubyte.gz", _idx_bytes(bad), gz=True)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        load_dataset("fashion-mnist", data_dir=isolated / "d", validation_size=2)


_SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (_SYSTEM / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("DPJAX_DATA_DIR", raising=False)
    ds = load_dataset("fashion-mnist", seed=0)
    assert str(_SYSTEM) in ds.source
    assert ds.train.x.shape == (55_000, 28, 28, 1) and len(ds.validation) == 5_000
    assert ds.test.x.shape == (10_000, 28, 28, 1)
    for split in (ds.train, ds.validation, ds.test):
        assert split.y.min() == 0 and split.y.max() == 9
    assert np.bincount(ds.test.y).tolist() == [1000] * 10  # the published balanced test set
    assert 0.0 <= ds.test.x.min() and ds.test.x.max() == 1.0


# ------------------------------------------------------------------ digits


def _rows(split_list):
    x = np.concatenate([s.x.reshape(len(s), -1) for s in split_list])
    y = np.concatenate([s.y for s in split_list])
    rows = np.concatenate([x, y[:, None].astype(np.float32)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_digits_partition_is_disjoint_and_complete():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", seed=0)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (1259, 179, 359)
    assert ds.input_shape == (8, 8, 1) and ds.num_classes == 10 and not ds.synthetic
    assert ds.train.x.min() >= 0.0 and ds.train.x.max() == 1.0
    bunch = load_digits()
    full = Split(
        x=(bunch.images / 16.0).astype(np.float32)[..., None], y=bunch.target.astype(np.int32)
    )
    np.testing.assert_array_equal(_rows([ds.train, ds.validation, ds.test]), _rows([full]))


def test_digits_split_is_deterministic_and_seeded():
    a, b, c = (load_dataset("digits", seed=s) for s in (7, 7, 8))
    for part in ("train", "validation", "test"):
        np.testing.assert_array_equal(getattr(a, part).x, getattr(b, part).x)
        np.testing.assert_array_equal(getattr(a, part).y, getattr(b, part).y)
    assert not np.array_equal(a.test.y, c.test.y)


def test_digits_test_split_does_not_depend_on_validation_size():
    a = load_dataset("digits", seed=1, validation_size=0)
    b = load_dataset("digits", seed=1, validation_size=300)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    assert len(a.validation) == 0 and len(a.train) == 1797 - 359
    assert len(b.validation) == 300 and len(b.train) == 1797 - 359 - 300


@pytest.mark.parametrize("bad", [-1, 1.5, True, 1438])
def test_bad_validation_size_is_rejected(bad):
    with pytest.raises(ValueError, match="validation_size"):
        load_dataset("digits", validation_size=bad)


# --------------------------------------------------------------- synthetic


def test_synthetic_is_labelled_and_learnable():
    ds = load_dataset("synthetic", num_examples=600, input_shape=(6, 6, 2), num_classes=4, seed=2)
    assert ds.synthetic and ds.name == "synthetic" and "SYNTHETIC" in ds.source
    assert ds.train.x.shape[1:] == (6, 6, 2) and ds.input_shape == (6, 6, 2)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (420, 60, 120)
    assert 0.0 <= ds.train.x.min() and ds.train.x.max() <= 1.0
    # Nearest class mean, fitted on train, classifies test well above chance (1/4).
    means = np.stack([ds.train.x[ds.train.y == c].mean(0) for c in range(4)])
    dist = ((ds.test.x[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
    assert (dist.argmin(1) == ds.test.y).mean() > 0.9
    again = load_dataset(
        "synthetic", num_examples=600, input_shape=(6, 6, 2), num_classes=4, seed=2
    )
    np.testing.assert_array_equal(ds.train.x, again.train.x)


def test_synthetic_rejects_unknown_option():
    with pytest.raises(ValueError, match="num_examples, input_shape, num_classes and noise_std"):
        load_dataset("synthetic", num_exemples=10)


def test_synthetic_options_rejected_for_real_data():
    with pytest.raises(ValueError, match="num_examples only apply to name='synthetic'"):
        load_dataset("digits", num_examples=10)


# ------------------------------------------------------------------ misc


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError) as info:
        load_dataset("mnist")
    assert all(repr(name) in str(info.value) for name in DATASET_NAMES)


def test_split_is_read_only_and_validated():
    x, y = np.zeros((3, 2, 2, 1), np.float32), np.zeros(3, np.int32)
    split = Split(x=x, y=y)
    assert len(split) == 3 and x.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        split.x[0] = 1.0
    with pytest.raises(ValueError, match="y.shape"):
        Split(x=x, y=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="float32"):
        Split(x=x.astype(np.float64), y=y)


def test_docstring_examples_run():
    result = doctest.testmod(_datasets, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
