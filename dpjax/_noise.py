"""Gaussian noise on the clipped sum (device side, jittable)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import _validation

PyTree = Any


class GaussianNoiseState(NamedTuple):
    """State of :func:`add_gaussian_noise`.

    Attributes:
      count: int32, how many noise draws were made (the next step's index).
      key: the root PRNG key; step t uses `jax.random.fold_in(key, t)`.
    """

    count: jax.Array
    key: jax.Array


def _add_noise(g: jax.Array, key: jax.Array, std: float) -> jax.Array:
    # Drawn and added in at least float32: a bf16/fp16 normal has a few hundred distinct
    # values and bounded support (|z| < 3 sigma in bf16), which breaks the Gaussian mechanism.
    dtype = jnp.promote_types(jnp.result_type(g), jnp.float32)
    return jnp.asarray(g, dtype) + std * jax.random.normal(key, jnp.shape(g), dtype)


def add_gaussian_noise(stddev: float, key: jax.Array) -> optax.GradientTransformation:
    """Adds i.i.d. N(0, stddev^2) noise to every coordinate of the updates.

    Noise is drawn and added in at least float32 (the output of a bfloat16 or
    float16 input is float32; cast after the noise, e.g. in the optimizer).
    Step t draws from `jax.random.fold_in(key, t)`, t being the count kept in the
    state, split once per leaf: every update gets fresh noise, and a run restored
    from a checkpoint (state included) continues the sequence instead of
    replaying it.

    Args:
      stddev: the standard deviation, finite and > 0. For DP-SGD this is
        `noise_multiplier * l2_norm` (:func:`dpjax.noisy_mean` does it for you).
      key: a PRNG key reserved for this noise (`jax.random.key(seed)`); do not use
        it for anything else.

    Returns:
      An `optax.GradientTransformation` with :class:`GaussianNoiseState`.

    Raises:
      ValueError: if `stddev` is not finite and positive, or `key` is not a key.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
      >>> noisy, state = tx.update(jnp.zeros(3), tx.init(None))
      >>> int(state.count)
      1

    **Privacy:** applied to a sum of L2 sensitivity C with `stddev = sigma * C`,
    this is the Gaussian mechanism with noise multiplier sigma. Noise must be
    added once per logical step, to the SUM, after all microbatches are
    accumulated. stddev = 0 is refused (no privacy).

    References:
      Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014,
      Appendix A (Gaussian mechanism).
    """
    std = _validation.check_positive_float(stddev, "stddev", "noise_multiplier * l2_norm")
    key = _validation.check_key(key)

    def init_fn(params: PyTree) -> GaussianNoiseState:
        del params
        # A copy, so that donating one state to `jax.jit` cannot delete the key of the next init.
        return GaussianNoiseState(count=jnp.zeros((), jnp.int32), key=jnp.array(key, copy=True))

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(jax.random.fold_in(state.key, state.count), len(leaves))
        noisy = [_add_noise(g, k, std) for g, k in zip(leaves, keys, strict=True)]
        return jax.tree.unflatten(treedef, noisy), GaussianNoiseState(
            count=optax.safe_increment(state.count), key=state.key
        )

    return optax.GradientTransformation(init_fn, update_fn)
