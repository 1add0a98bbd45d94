"""Checkpoints of a training run's arrays and accounting (host side).

A checkpoint is one `.npz` file: the leaves of a pytree (PRNG keys stored as
their key data) plus a JSON metadata record (step, accountant state, seeds).
It is written atomically and read without pickle, so loading a checkpoint
never executes code from it.
"""

from __future__ import annotations

import json
import os
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

    **Privacy:** a checkpoint holds the unreleased model, the optimizer state
    and the seeds that generate the noise: protect it like the training data.
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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint written by :func:`save_checkpoint` (no arrays loaded)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(data[META_KEY].tobytes().decode())


def load_checkpoint(path: str | os.PathLike, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Reads a checkpoint written by :func:`save_checkpoint` into the structure of `like`.

    Args:
      path: the `.npz` file.
      like: a pytree with the same structure, shapes and dtypes as the saved one
        (e.g. freshly initialized parameters and optimizer state).

    Returns:
      `(tree, metadata)`.

    Raises:
      ValueError: if the saved leaves do not match `like` (count, shape or dtype).
    """
    with np.load(path, allow_pickle=False) as data:
        metadata = json.loads(data[META_KEY].tobytes().decode())
        saved = {name: data[name] for name in data.files if name != META_KEY}
    like_leaves, treedef = jax.tree.flatten(like)
    if len(saved) != len(like_leaves):
        raise ValueError(
            f"checkpoint {str(path)!r} holds {len(saved)} arrays but the run expects {len(like_leaves)}; "
            "it was written by a different model or optimizer. Pass a new checkpoint path."
        )
    by_index = {int(name.rsplit(":", 1)[-1]): (name, value) for name, value in saved.items()}
    leaves = []
    for i, ref in enumerate(like_leaves):
        name, value = by_index[i]
        if _is_key(ref):
            leaves.append(jax.random.wrap_key_data(value, impl=name.split(":")[1]))
            continue
        ref = np.asarray(ref)
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise ValueError(
                f"checkpoint {str(path)!r} array {i} is {value.dtype}{list(value.shape)} but the run expects "
                f"{ref.dtype}{list(ref.shape)}; it was written by a different model. Pass a new checkpoint path."
            )
        leaves.append(jnp.asarray(value))
    return jax.tree.unflatten(treedef, leaves), metadata
