"""The client side: local SGD on each sampled client, vmapped over padded clients (device side)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validation

PyTree = Any


class ClientBatch(NamedTuple):
    """The clients of one round, padded to fixed shapes (built on the host).

    Attributes:
      indices: int32 `(K, P)`: row j of client k's data is `train[indices[k, j]]`;
        padded rows point at 0.
      example_mask: bool `(K, P)`: True for a client's real examples.
      client_mask: bool `(K,)`: True for real (sampled) clients; padded clients
        are selected out by the aggregator and never count.
      user_ids: int32 `(K,)`: the user of each row (0 for padding), for keys.
    """

    indices: np.ndarray
    example_mask: np.ndarray
    client_mask: np.ndarray
    user_ids: np.ndarray


def padded_size(n: int, batch_size: int) -> int:
    """`batch_size * 2**ceil(log2(ceil(n / batch_size)))`: a few shapes for all client sizes."""
    steps = max(1, math.ceil(n / batch_size))
    return batch_size * (1 << (steps - 1).bit_length())


def client_batch(
    users: Sequence[np.ndarray],
    user_ids: np.ndarray,
    client_mask: np.ndarray,
    batch_size: int,
    max_examples: int | None = None,
) -> ClientBatch:
    """Pads the sampled clients' example indices to `(K, P)` with masks (host side).

    `P` is the largest sampled client's size rounded up by :func:`padded_size`
    (a power of two times `batch_size`), so rounds compile for a handful of
    shapes, never once per client size.

    Args:
      users: every user's example indices (:attr:`FederatedData.users`).
      user_ids: `(K,)` the user of each row (a :class:`dpjax.Batch`'s `indices`).
      client_mask: `(K,)` True for real rows (the :class:`dpjax.Batch`'s `mask`).
      batch_size: the local minibatch size.
      max_examples: if given, each client uses at most its first `max_examples`
        examples (a public cap that bounds the local work).

    Returns:
      A :class:`ClientBatch`.

    Example:
      >>> import numpy as np
      >>> from dpjax.federated import client_batch
      >>> users = [np.arange(3), np.arange(3, 8)]
      >>> b = client_batch(users, np.array([1, 0]), np.array([True, False]), batch_size=2)
      >>> b.indices.shape, int(b.example_mask.sum())
      ((2, 8), 5)
    """
    batch_size = _validation.check_positive_int(batch_size, "batch_size", "16")
    ids = np.asarray(user_ids, np.int64)
    real = np.asarray(client_mask, bool)
    sizes = [len(users[u]) if r else 0 for u, r in zip(ids, real, strict=True)]
    if max_examples is not None:
        sizes = [min(s, max_examples) for s in sizes]
    width = padded_size(max(sizes, default=1), batch_size)
    indices = np.zeros((len(ids), width), np.int32)
    mask = np.zeros((len(ids), width), bool)
    for k, (u, s) in enumerate(zip(ids, sizes, strict=True)):
        indices[k, :s] = users[u][:s]
        mask[k, :s] = True
    return ClientBatch(indices, mask, real.copy(), np.where(real, ids, 0).astype(np.int32))


def _own_rows(a: jax.Array, mask: jax.Array) -> jax.Array:
    """`a` with its masked rows replaced by the first real row (zeros if none is real)."""
    a = jnp.asarray(a)
    real = jnp.asarray(mask, bool)
    fill = jnp.where(jnp.any(real), a[jnp.argmax(real)], jnp.zeros_like(a[0]))
    return jnp.where(real.reshape((-1,) + (1,) * (a.ndim - 1)), a, fill[None])


@dataclasses.dataclass(frozen=True)
class LocalSGD:
    """E epochs of minibatch SGD on one client's data; returns its pseudo-gradient.

    The client's update is `params - local_params` (a "pseudo-gradient": the
    server optimizer steps along minus it, so FedAvg is `optax.sgd(1.0)`).
    Device side, pure and jittable. Written for ONE client (padded to P rows
    with a mask) and batched over clients with `jax.vmap` by :meth:`__call__`.
    Each epoch visits the client's real examples in a random order (from
    `key`), in minibatches of `batch_size`; the last may be smaller, and a
    minibatch with no real example is a no-op. The minibatch loss is the mean
    over its real examples.

    Args:
      loss_fn: `loss_fn(params, x, y) -> scalar`, the loss of ONE example.
      learning_rate: the local step size, > 0.
      epochs: local epochs E, >= 1.
      batch_size: local minibatch size, >= 1.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from dpjax.federated import LocalSGD
      >>> local = LocalSGD(lambda w, x, y: (x @ w - y) ** 2, learning_rate=0.1)
      >>> x, y = jnp.ones((4, 2)), jnp.ones(4)
      >>> g = local.client_update(jnp.zeros(2), x, y, jnp.ones(4, bool), jax.random.key(0))
      >>> g.shape
      (2,)

    **Privacy:** none by itself: the pseudo-gradient is private data. It must
    be clipped (by the server's clipper under central DP, or on the client
    under local DP) before anything leaves. The update is a function of the
    client's OWN real rows only: padded rows (which :func:`client_batch` and
    the Flower client point at `train[0]`, another user's example) are
    replaced by the client's first real row (zeros for a client without one)
    before any loss is evaluated. A masked row's loss gets a zero cotangent,
    but `0 * NaN = NaN`: without the replacement, one user's NaN or inf
    example turned every other padded client's update into NaN, which the
    clipper then drops (issue 17, section 5: that user moved the round's sum
    by up to K C instead of C).
    """

    loss_fn: Callable[..., jax.Array]
    learning_rate: float
    epochs: int = 1
    batch_size: int = 16

    def __post_init__(self):
        if not callable(self.loss_fn):
            raise ValueError(f"loss_fn={self.loss_fn!r} must be callable (params, x, y) -> loss.")
        object.__setattr__(
            self,
            "learning_rate",
            _validation.check_positive_float(self.learning_rate, "learning_rate", "0.1"),
        )
        object.__setattr__(self, "epochs", _validation.check_positive_int(self.epochs, "epochs"))
        object.__setattr__(
            self, "batch_size", _validation.check_positive_int(self.batch_size, "batch_size", "16")
        )

    def client_update(
        self, params: PyTree, x: jax.Array, y: jax.Array, mask: jax.Array, key: jax.Array
    ) -> PyTree:
        """One client's pseudo-gradient `params - local_params` (x, y: `(P, ...)`, mask `(P,)`)."""
        x, y = _own_rows(x, mask), _own_rows(y, mask)
        p = x.shape[0]
        b = min(self.batch_size, p)
        steps = -(-p // b)
        width = steps * b

        def order(k: jax.Array) -> jax.Array:  # real rows first, shuffled; then padding
            # Row i's sort key depends on (k, i) only, not on P: the same client visits its
            # examples in the same order however far it is padded (simulation == Flower).
            draw = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(k, i)))(jnp.arange(p))
            u = jnp.where(mask, draw, 2.0)
            perm = jnp.argsort(u)
            return jnp.pad(perm, (0, width - p), constant_values=0)

        perms = jax.vmap(order)(jax.random.split(key, self.epochs)).reshape(-1, b)
        row_ok = jnp.pad(jnp.ones(p, bool), (0, width - p))
        oks = jnp.tile(row_ok, self.epochs).reshape(-1, b)

        def minibatch_loss(w: PyTree, xb: jax.Array, yb: jax.Array, mb: jax.Array) -> jax.Array:
            losses = jax.vmap(self.loss_fn, in_axes=(None, 0, 0))(w, xb, yb)
            total = jnp.sum(jnp.where(mb, losses, 0.0))
            return total / jnp.maximum(jnp.sum(mb), 1).astype(total.dtype)

        def step(w: PyTree, rows: tuple[jax.Array, jax.Array]) -> tuple[PyTree, None]:
            idx, ok = rows
            mb = mask[idx] & ok
            g = jax.grad(minibatch_loss)(w, x[idx], y[idx], mb)
            return jax.tree.map(lambda a, d: a - self.learning_rate * d, w, g), None

        local, _ = jax.lax.scan(step, params, (perms, oks))
        return jax.tree.map(lambda a, b_: a - b_, params, local)

    def __call__(
        self, params: PyTree, x: jax.Array, y: jax.Array, mask: jax.Array, keys: jax.Array
    ) -> PyTree:
        """Pseudo-gradients of K clients stacked on a leading axis (x: `(K, P, ...)`, keys `(K,)`)."""
        return jax.vmap(self.client_update, in_axes=(None, 0, 0, 0, 0))(params, x, y, mask, keys)
