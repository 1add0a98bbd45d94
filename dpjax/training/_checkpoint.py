"""Checkpoints of a training run's arrays and accounting (host side).

A checkpoint is one `.npz` file: the leaves of a pytree (PRNG keys stored as
their key data) plus a JSON metadata record (step, accountant state, the secret
seed). It is SENSITIVE: keep it with the data, never share it.
It is written atomically (a temporary file in the same folder, fsync'd, then
renamed over the old one), so a failed or interrupted write keeps the last good
checkpoint; and read without pickle, so loading a checkpoint never executes code
from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
META_KEY = "__metadata__"
_KEY_PREFIX = "key:"


def _is_key(leaf: Any) -> bool:
    return isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def save_checkpoint(path: str | os.PathLike, tree: PyTree, metadata: dict[str, Any]) -> None:
    """Writes `tree`'s leaves and `metadata` to `path` atomically.

    Args:
      path: the `.npz` file to write (its folder must exist).
      tree: any pytree of arrays; typed PRNG keys are stored as key data.
      metadata: JSON-serializable record.

    Raises:
      TypeError: if `metadata` is not JSON-serializable.
      OSError: if the write fails; the previous checkpoint at `path` (if any) is
        then left unchanged and no temporary file remains.

    **Privacy:** a checkpoint is SENSITIVE, never meant to be shared: it holds
    the unreleased model and optimizer state (including the noise key) and the
    run's secret seed (which regenerates the noise and the batches). Anyone who
    has it can subtract the noise of every step. Protect it like the training
    data.
    """
    leaves = jax.tree.leaves(jax.device_get(tree))
    arrays = {}
    for i, leaf in enumerate(leaves):
        if _is_key(leaf):
            arrays[f"{_KEY_PREFIX}{jax.random.key_impl(leaf)}:{i}"] = np.asarray(
                jax.random.key_data(leaf)
            )
        else:
            arrays[str(i)] = np.asarray(leaf)
    arrays[META_KEY] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    path = Path(path)
    # A fresh temporary file next to the target, made durable, then renamed over it: a crash
    # or a failed write (disk full, I/O error, a signal) leaves the last good checkpoint whole.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in `folder` durable (best effort: not every OS can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _corrupt(path: str | os.PathLike, why: str) -> ValueError:
    return ValueError(
        f"checkpoint={str(path)!r} is not a readable dpjax checkpoint ({why}); it is corrupt, "
        "truncated or was not written by dpjax. Restore a good copy, or pass a new checkpoint "
        "path to start a new run (its budget starts from zero: never do that to dodge a budget)."
    )


def _open(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and arrays of a checkpoint; every way a file can be bad becomes a ValueError."""
    try:
        # Our own file handle: np.load leaks its handle when the archive is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise _corrupt(path, "not an .npz archive")
            names = list(data.files)
            if META_KEY not in names:
                raise _corrupt(path, "no metadata record")
            raw = data[META_KEY]
            arrays = {name: data[name] for name in names if name != META_KEY}
    except ValueError as err:
        if str(err).startswith("checkpoint="):
            raise
        raise _corrupt(path, f"{type(err).__name__}: {err}") from err
    except (OSError, EOFError, KeyError, TypeError, AttributeError, zipfile.BadZipFile) as err:
        raise _corrupt(path, f"{type(err).__name__}: {err}") from err
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise _corrupt(path, "metadata record is not JSON bytes")
    try:
        metadata = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _corrupt(path, f"metadata is not JSON: {err}") from err
    if not isinstance(metadata, dict):
        raise _corrupt(path, "metadata is not a JSON object")
    return metadata, arrays


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint written by :func:`save_checkpoint`.

    Raises:
      ValueError: if the file is not a readable dpjax checkpoint.
    """
    return _open(path)[0]


def load_checkpoint(path: str | os.PathLike, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Reads a checkpoint written by :func:`save_checkpoint` into the structure of `like`.

    Args:
      path: the `.npz` file.
      like: a pytree with the same structure, shapes and dtypes as the saved one
        (e.g. freshly initialized parameters and optimizer state).

    Returns:
      `(tree, metadata)`.

    Raises:
      ValueError: if the file is corrupt or truncated, or its leaves do not
        match `like` (count, names, shape, dtype or key type).
    """
    metadata, saved = _open(path)
    like_leaves, treedef = jax.tree.flatten(like)
    if len(saved) != len(like_leaves):
        raise ValueError(
            f"checkpoint {str(path)!r} holds {len(saved)} arrays but the run expects {len(like_leaves)}; "
            "it was written by a different model or optimizer. Pass a new checkpoint path."
        )
    by_index: dict[int, tuple[str, np.ndarray]] = {}
    for name, value in saved.items():
        index = name.rsplit(":", 1)[-1]
        if not index.isdigit() or int(index) >= len(like_leaves):
            raise _corrupt(path, f"unexpected array name {name!r}")
        by_index[int(index)] = (name, value)
    if len(by_index) != len(like_leaves):
        raise _corrupt(path, "array names repeat")
    leaves = []
    for i, ref in enumerate(like_leaves):
        name, value = by_index[i]
        if _is_key(ref):
            impl = str(jax.random.key_impl(ref))
            want = np.asarray(jax.random.key_data(ref))
            if (
                name != f"{_KEY_PREFIX}{impl}:{i}"
                or value.shape != want.shape
                or value.dtype != want.dtype
            ):
                raise _corrupt(path, f"array {i} should be a {impl} PRNG key")
            leaves.append(jax.random.wrap_key_data(jnp.asarray(value), impl=impl))
            continue
        ref = np.asarray(ref)
        if name != str(i) or value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(
                f"checkpoint {str(path)!r} array {i} is {value.dtype}{list(value.shape)} but the run expects "
                f"{ref.dtype}{list(ref.shape)}; it was written by a different model. Pass a new checkpoint path."
            )
        leaves.append(jnp.asarray(value))
    return jax.tree.unflatten(treedef, leaves), metadata
