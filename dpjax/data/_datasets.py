"""Image classification data sets for examples, tests and benchmarks (host side, NumPy).

Every loader returns a :class:`Dataset` of NHWC ``float32`` images scaled to
``[0, 1]`` by a fixed constant and ``int32`` labels, split into train,
validation and test parts that are disjoint and fixed by ``seed``.

Real data is never replaced by fake data: when Fashion-MNIST cannot be found
or fetched, :func:`load_dataset` raises. Synthetic data exists only under the
name ``"synthetic"`` and says so in ``Dataset.synthetic`` and ``Dataset.source``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dpjax import _validation

DATASET_NAMES = ("digits", "fashion-mnist", "synthetic")

# The four files of Fashion-MNIST and the MD5 checksums of the .gz files as
# published by Zalando Research (https://github.com/zalandoresearch/fashion-mnist).
_FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
# Canonical hosts, tried in order; every download is checked against the MD5 above.
_FASHION_MNIST_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
# Where Debian's package dataset-fashion-mnist installs the files.
_SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_DATA_DIR_ENV = "DPJAX_DATA_DIR"
_DOWNLOAD_TIMEOUT_S = 60.0

# Opens a URL and returns a readable binary file object; tests replace it.
_urlopen: Callable[..., Any] = urllib.request.urlopen

_IDX_MAX_BYTES = 2**32
"""The most body bytes dpjax reads from one gzipped IDX file (Fashion-MNIST's largest: 47 MB)."""

# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Split:
    """One part (train, validation or test) of a :class:`Dataset`: N inputs and N targets.

    Any arrays with the examples on their first axis: images `(N, H, W, C)`,
    feature vectors `(N, d)`, token sequences `(N, L)`; targets `(N,)` class
    labels or `(N, ...)` regression targets. The loaders here give float32
    images in [0, 1] and int32 labels.

    Attributes:
      x: inputs, `(N, ...)`, of a float32 or integer dtype. Read-only: copy
        before editing in place.
      y: targets, `(N, ...)`, of an integer or float32 dtype.

    Raises:
      ValueError: if the first axes differ or a dtype is not one JAX keeps
        (float64 would be silently cast to float32 with x64 off).

    Example:
      >>> import numpy as np
      >>> from dpjax.data import Split
      >>> split = Split.from_examples([(np.ones(3, np.float32), 1), (np.zeros(3, np.float32), 0)])
      >>> len(split), split.x.shape, split.y.dtype
      (2, (2, 3), dtype('int64'))
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self):
        x, y = np.asarray(self.x), np.asarray(self.y)
        if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"Split needs x and y with the examples on their first axis, (N, ...) each; got "
                f"x.shape={x.shape} and y.shape={y.shape}."
            )
        for name, a, kinds in (("x", x, "fiu"), ("y", y, "fiub")):
            if a.dtype.kind not in kinds or a.dtype == np.float64:
                raise ValueError(
                    f"Split needs {name} of float32 or an integer dtype; got {name}.dtype={a.dtype}. "
                    f"Convert with {name}.astype(np.float32) (float64 would be cut to float32 "
                    "silently by JAX)."
                )
        for field, a in (
            ("x", x),
            ("y", y),
        ):  # Read-only views; the caller's arrays stay writeable.
            view = a.view()
            view.flags.writeable = False
            object.__setattr__(self, field, view)

    @classmethod
    def from_examples(cls, examples: Iterable[tuple[Any, Any]]) -> Split:
        """Stacks an iterable of `(input, target)` NumPy examples into a Split (host side).

        Poisson sampling needs random access to every example, so an iterator
        is read once, whole, into memory.

        Args:
          examples: `(x_i, y_i)` pairs of equal shapes.

        Returns:
          A :class:`Split`.

        Raises:
          ValueError: if there is no example or the shapes differ.
        """
        xs, ys = [], []
        for x, y in examples:
            xs.append(np.asarray(x))
            ys.append(np.asarray(y))
        if not xs:
            raise ValueError("examples is empty; pass at least one (input, target) pair.")
        try:
            x, y = np.stack(xs), np.stack(ys)
        except ValueError as err:
            raise ValueError(f"examples have different shapes ({err}); pad them first.") from err
        if x.dtype == np.float64:
            x = x.astype(np.float32)
        if y.dtype == np.float64:
            y = y.astype(np.float32)
        return cls(x=x, y=y)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __repr__(self) -> str:
        return f"Split(x={self.x.dtype}{self.x.shape}, y={self.y.dtype}{self.y.shape})"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set split three ways (train for the private data, validation, test).

    Attributes:
      name: a name for summaries, e.g. one of :data:`DATASET_NAMES`.
      train: The examples to train on (the private data set of size N).
      validation: Held out from ``train`` for model selection; may be empty.
      test: Held out for the final report.
      num_classes: Number of classes for classification (labels in
        ``[0, num_classes)``), None otherwise.
      input_shape: Shape of one input (default: ``train.x.shape[1:]``).
      synthetic: True only for generated data.
      source: Where the data came from: file paths, a package, or ``SYNTHETIC``.
    """

    name: str
    train: Split
    validation: Split
    test: Split
    num_classes: int | None = None
    input_shape: tuple[int, ...] = ()
    synthetic: bool = False
    source: str = "arrays passed by the user"

    def __post_init__(self):
        if not self.input_shape:
            object.__setattr__(self, "input_shape", tuple(self.train.x.shape[1:]))


def _read_at_most(stream: Any, limit: int, chunk: int = 1 << 20) -> bytes:
    """Up to `limit` bytes of `stream`, in chunks: memory grows with the data, not the request."""
    parts, total = [], 0
    while total < limit:
        part = stream.read(min(chunk, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def load_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    Host side. A gzip stream is recognised by its magic bytes, not by the file
    name. The header is two zero bytes, a type code (``0x08`` ubyte, ``0x09``
    byte, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64),
    the number of dimensions, and each dimension as a big-endian uint32; the
    body must hold exactly the number of values the dimensions announce.

    Args:
      path: The file to read.

    Returns:
      An array of the announced shape in the announced type, native byte order.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is not IDX, has an unknown type code, is truncated,
        has trailing bytes, or is a corrupt gzip stream.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte")
      >>> with open(path, "wb") as f:
      ...     _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
      >>> load_idx(path)
      array([7, 8, 9], dtype=uint8)

    References:
      LeCun, Cortes, Burges, "The MNIST database of handwritten digits", 1998,
      section "THE IDX FILE FORMAT", http://yann.lecun.com/exdb/mnist/
    """
    path = Path(path)
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        stream: Any = gzip.GzipFile(fileobj=raw) if is_gzip else raw
        try:
            # The header first; the body is read only once the header's dimensions are checked
            # against what the file can hold, and never more than they announce (plus one byte
            # to detect trailing data): a forged header cannot make dpjax allocate or read more.
            head = stream.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise ValueError(
                    f"{path} is not an IDX file: it must start with two zero bytes, a type code "
                    f"and the number of dimensions, but starts with {head!r}."
                )
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise ValueError(
                    f"{path} has IDX type code {code:#04x}; known codes are "
                    f"{', '.join(f'{c:#04x}' for c in _IDX_DTYPES)}."
                )
            if ndim == 0:
                raise ValueError(f"{path} announces 0 dimensions; an IDX file needs at least one.")
            dims = stream.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(
                    f"{path} is truncated: its header announces {ndim} dimensions but holds "
                    f"{4 + len(dims)} bytes; delete it and fetch the file again."
                )
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = _IDX_DTYPES[code]
            expected = math.prod(shape) * dtype.itemsize
            if not is_gzip:
                got = os.fstat(raw.fileno()).st_size - 4 - 4 * ndim
                if got != expected:
                    what = "is truncated" if got < expected else "has trailing bytes"
                    raise ValueError(
                        f"{path} {what}: shape {shape} of {dtype} needs {expected} bytes after "
                        f"the header but {got} are there; delete it and fetch the file again."
                    )
            elif expected > _IDX_MAX_BYTES:
                raise ValueError(
                    f"{path} announces shape {shape} of {dtype}, {expected} bytes, more than "
                    f"dpjax reads from one IDX file ({_IDX_MAX_BYTES} bytes); the header is "
                    "corrupt or the file is not a data set dpjax loads."
                )
            data = _read_at_most(stream, expected + 1)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"{path} is a corrupt or truncated gzip stream ({err}); delete it and fetch "
                f"the file again."
            ) from err
    got = len(data)
    if got != expected:
        what = "is truncated" if got < expected else "has trailing bytes"
        raise ValueError(
            f"{path} {what}: shape {shape} of {dtype} needs {expected} bytes after the "
            f"header but {got if got <= expected else 'more'} are there; delete it and fetch "
            "the file again."
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape))
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    validation_size: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **synthetic_kwargs: Any,
) -> Dataset:
    """Loads a data set by name, split into train, validation and test parts.

    Host side. Images are ``float32`` NHWC in ``[0, 1]`` (pixel value divided by
    the format's maximum, 16 for digits and 255 for Fashion-MNIST); labels are
    ``int32``. The splits are disjoint, and the same ``seed`` gives the same
    splits. Within a split, examples keep their original order.

    * ``"digits"``: scikit-learn's bundled 8x8 handwritten digits (1,797
      images, 10 classes, no network). A seeded permutation puts 20 % (359) in
      test, then ``validation_size`` (default 10 %, 179) in validation, the
      rest (1,259) in train. The test part does not depend on
      ``validation_size``.
    * ``"fashion-mnist"``: 28x28 grey images, 10 classes. The standard 10,000
      test images are the test part; ``validation_size`` (default 5,000) of
      the 60,000 training images, chosen by a seeded permutation, are the
      validation part. The IDX files (``.gz`` or uncompressed) are looked for
      in ``data_dir`` (or ``$DPJAX_DATA_DIR`` when ``data_dir`` is None) and its
      ``fashion-mnist/`` subfolder, then ``/usr/share/datasets/fashion-mnist``
      (Debian package ``dataset-fashion-mnist``), then
      ``$XDG_CACHE_HOME/dpjax/fashion-mnist`` (default ``~/.cache``). If none
      holds them and ``download`` is True, they are fetched from the canonical
      host, checked against the published MD5 checksums and written
      atomically to ``<data_dir>/fashion-mnist`` (or the cache folder).
    * ``"synthetic"``: generated, learnable, labelled ``synthetic=True``; see
      the keyword arguments below. Split like digits.

    Args:
      name: One of :data:`DATASET_NAMES`.
      seed: Seeds the split permutation (and, for ``"synthetic"``, the data).
      validation_size: Number of examples held out of train for validation;
        None for the data set's default, 0 for none.
      data_dir: Folder to look in first for files of real data sets; None uses
        ``$DPJAX_DATA_DIR`` if set.
      download: Whether Fashion-MNIST may be fetched over the network when it
        is not found locally.
      **synthetic_kwargs: Only for ``"synthetic"``: ``num_examples`` (total
        over the three splits, default 2,000), ``input_shape`` (default
        ``(28, 28, 1)``), ``num_classes`` (default 10) and ``noise_std`` (the
        pixel noise around each class's mean image, default 0.3).

    Returns:
      The :class:`Dataset`.

    Raises:
      ValueError: for an unknown ``name``, a bad ``seed`` or
        ``validation_size``, keyword arguments the data set does not take, or
        a malformed data file.
      FileNotFoundError: if Fashion-MNIST is neither found nor downloadable.
      RuntimeError: if a downloaded file fails its checksum.

    **Privacy**: the scaling is by a fixed constant and the splits depend only
    on ``seed`` and the number of examples, never on their content, so no
    statistic of the private data leaks through preprocessing. Standardizing
    with the training set's mean and variance would leak; dpjax does not. The
    accountant's N is ``len(dataset.train)``.

    Example:
      >>> ds = load_dataset("digits", seed=0)
      >>> len(ds.train), len(ds.validation), len(ds.test), ds.input_shape
      (1259, 179, 359, (8, 8, 1))
    """
    if name not in DATASET_NAMES:
        raise ValueError(
            f"name={name!r} is not a known data set; pass one of "
            f"{', '.join(repr(n) for n in DATASET_NAMES)}."
        )
    seed = _validation.check_nonnegative_int(seed, "seed")
    if validation_size is not None:
        validation_size = _validation.check_nonnegative_int(validation_size, "validation_size")
    if synthetic_kwargs and name != "synthetic":
        raise ValueError(
            f"{', '.join(sorted(synthetic_kwargs))} only apply to name='synthetic'; remove them "
            f"to load {name!r}."
        )
    if name == "digits":
        return _load_digits(seed, validation_size)
    if name == "fashion-mnist":
        return _load_fashion_mnist(seed, validation_size, data_dir, download)
    return _load_synthetic(seed, validation_size, **synthetic_kwargs)


def _split_indices(
    n: int, n_test: int, n_validation: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded disjoint (train, validation, test) indices, each sorted.

    The first ``n_test`` positions of one permutation are test, so the test
    part does not move when ``n_validation`` changes.
    """
    if n_validation > n - n_test - 1:
        raise ValueError(
            f"validation_size={n_validation} leaves no training examples: only {n - n_test} "
            f"examples are outside the test split; pass validation_size <= {n - n_test - 1}."
        )
    perm = rng.permutation(n)
    test = np.sort(perm[:n_test])
    validation = np.sort(perm[n_test : n_test + n_validation])
    train = np.sort(perm[n_test + n_validation :])
    return train, validation, test


def _take(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
    return Split(x=np.ascontiguousarray(x[idx]), y=y[idx].astype(np.int32))


def _load_digits(seed: int, validation_size: int | None) -> Dataset:
    import sklearn
    from sklearn.datasets import load_digits

    bunch: Any = load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = bunch.target.astype(np.int32)
    n = x.shape[0]
    n_test = n // 5
    n_validation = n // 10 if validation_size is None else validation_size
    train, validation, test = _split_indices(n, n_test, n_validation, np.random.default_rng(seed))
    return Dataset(
        name="digits",
        train=_take(x, y, train),
        validation=_take(x, y, validation),
        test=_take(x, y, test),
        num_classes=10,
        input_shape=(8, 8, 1),
        synthetic=False,
        source=f"sklearn.datasets.load_digits (scikit-learn {sklearn.__version__})",
    )


def _load_synthetic(
    seed: int,
    validation_size: int | None,
    *,
    num_examples: int = 2000,
    input_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    noise_std: float = 0.3,
    **unknown: Any,
) -> Dataset:
    if unknown:
        raise ValueError(
            f"{', '.join(sorted(unknown))} are not options of name='synthetic'; it takes "
            f"num_examples, input_shape, num_classes and noise_std."
        )
    num_examples = _validation.check_positive_int(num_examples, "num_examples", "2000")
    input_shape = _validation.check_input_shape(input_shape)
    num_classes = _validation.check_positive_int(num_classes, "num_classes", "10")
    noise_std = _validation.check_positive_float(noise_std, "noise_std", "0.3")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2; pass e.g. num_classes=10.")
    rng = np.random.default_rng([seed, 0x5EED])
    means = rng.uniform(0.0, 1.0, size=(num_classes, *input_shape)).astype(np.float32)
    y = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    noise = rng.normal(0.0, noise_std, size=(num_examples, *input_shape)).astype(np.float32)
    x = np.clip(means[y] + noise, 0.0, 1.0)
    n_test = num_examples // 5
    n_validation = num_examples // 10 if validation_size is None else validation_size
    train, validation, test = _split_indices(
        num_examples, n_test, n_validation, np.random.default_rng(seed)
    )
    return Dataset(
        name="synthetic",
        train=_take(x, y, train),
        validation=_take(x, y, validation),
        test=_take(x, y, test),
        num_classes=num_classes,
        input_shape=input_shape,
        synthetic=True,
        source=(
            f"SYNTHETIC: class-mean images U(0, 1) plus N(0, {noise_std}^2) pixel noise, "
            f"clipped to [0, 1]; seed={seed}, num_examples={num_examples}"
        ),
    )


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dpjax" / "fashion-mnist"


def _fashion_mnist_candidates(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    """Folders to search, in order, each with how it was chosen."""
    candidates = []
    root, how = None, ""
    if data_dir is not None:
        root, how = Path(data_dir), "data_dir"
    elif os.environ.get(_DATA_DIR_ENV):
        root, how = Path(os.environ[_DATA_DIR_ENV]), f"${_DATA_DIR_ENV}"
    if root is not None:
        candidates += [(root / "fashion-mnist", how), (root, how)]
    candidates.append((_SYSTEM_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist"))
    candidates.append((_cache_dir(), "user cache"))
    return candidates


def _find_files(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (each .gz or uncompressed), or None if any is missing."""
    found = {}
    for key, (gz_name, _) in _FASHION_MNIST_FILES.items():
        for candidate in (folder / gz_name, folder / gz_name.removesuffix(".gz")):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_fashion_mnist(dest: Path) -> None:
    """Fetches the four .gz files into ``dest``, verifying MD5s; atomic per file.

    Raises:
      OSError: if no mirror could be reached for some file.
      RuntimeError: if a fetched file has the wrong checksum.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for filename, md5 in _FASHION_MNIST_FILES.values():
        target = dest / filename
        if target.is_file() and _md5(target) == md5:
            continue
        errors = []
        for mirror in _FASHION_MNIST_MIRRORS:
            url = mirror + filename
            fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as r:
                    for chunk in iter(lambda r=r: r.read(1 << 20), b""):
                        out.write(chunk)
                got = _md5(tmp)
                if got != md5:
                    raise RuntimeError(
                        f"{url} has MD5 {got}, not the published {md5}; the file was discarded. "
                        f"Fetch it by hand and put it in ${_DATA_DIR_ENV}, or install the Debian "
                        f"package dataset-fashion-mnist."
                    )
                os.replace(tmp, target)
                break
            except OSError as err:
                errors.append(f"{url}: {err}")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        else:
            raise OSError("could not download Fashion-MNIST: " + "; ".join(errors))


def _load_fashion_mnist(
    seed: int,
    validation_size: int | None,
    data_dir: str | os.PathLike[str] | None,
    download: bool,
) -> Dataset:
    candidates = _fashion_mnist_candidates(data_dir)
    found = [(folder, how, files) for folder, how in candidates if (files := _find_files(folder))]
    if found:
        folder, how, files = found[0]
    else:
        searched = ", ".join(str(folder) for folder, _ in candidates)
        ways = (
            f"Fashion-MNIST was not found in {searched}. Either set ${_DATA_DIR_ENV} (or pass "
            f"data_dir=) to a folder holding the four IDX files (.gz or uncompressed), or run "
            f"`apt-get install dataset-fashion-mnist`, or allow network access so dpjax can "
            f"download them"
        )
        if not download:
            raise FileNotFoundError(ways + " (download=False was passed).")
        # Into <data_dir>/fashion-mnist when a data folder was named, else the user cache.
        folder, how = candidates[0] if len(candidates) == 4 else candidates[-1]
        try:
            _download_fashion_mnist(folder)
        except OSError as err:
            raise FileNotFoundError(f"{ways}; the download failed: {err}") from err
        how = f"downloaded into {how}"
        files = _find_files(folder)
        if files is None:  # pragma: no cover - _download_fashion_mnist wrote all four.
            raise RuntimeError(f"downloaded Fashion-MNIST files are missing from {folder}")

    arrays = {key: load_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if (
            images.dtype != np.uint8
            or images.ndim != 3
            or images.shape[1:] != (28, 28)
            or labels.dtype != np.uint8
            or labels.shape != images.shape[:1]
            or (labels.size and labels.max() > 9)
        ):
            raise ValueError(
                f"Fashion-MNIST {part} files in {folder} do not hold uint8 images of shape "
                f"(N, 28, 28) and N uint8 labels in 0..9 (got images {images.dtype}"
                f"{images.shape}, labels {labels.dtype}{labels.shape}); replace them with the "
                f"published files."
            )

    def to_split(part: str, idx: np.ndarray | None = None) -> Split:
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if idx is not None:
            images, labels = images[idx], labels[idx]
        x = images.astype(np.float32)[..., None]
        x /= np.float32(255.0)
        return Split(x=x, y=labels.astype(np.int32))

    n_train = arrays["train_labels"].shape[0]
    n_validation = 5000 if validation_size is None else validation_size
    train, validation, _ = _split_indices(n_train, 0, n_validation, np.random.default_rng(seed))
    return Dataset(
        name="fashion-mnist",
        train=to_split("train", train),
        validation=to_split("train", validation),
        test=to_split("test"),
        num_classes=10,
        input_shape=(28, 28, 1),
        synthetic=False,
        source=f"Fashion-MNIST IDX files in {folder} ({how})",
    )
