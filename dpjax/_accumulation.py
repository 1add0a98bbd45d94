"""Logical batches larger than memory: clip per microbatch, accumulate the sums (device side)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dpjax import _clipping, _per_example, _validation

PyTree = Any


def accumulate_clipped_grads(
    grads_fn: Callable[[PyTree, PyTree], PyTree],
    *,
    l2_norm: _clipping.ClipNorm,
    microbatch_size: int,
) -> Callable[[PyTree, PyTree, jax.Array], _clipping.ClippedSum]:
    """Sums clipped per-example gradients over microbatches with `jax.lax.scan`.

    The batch (leading axis `k * microbatch_size`) is cut into k microbatches;
    for each, per-example gradients are computed, clipped and summed, and the
    sums are accumulated. Only one microbatch of per-example gradients is in
    memory at a time. Feed the result, a :class:`dpjax.ClippedSum` of
    sensitivity C, to :func:`dpjax.noisy_mean`, which adds noise ONCE to the
    accumulated sum and reads C from it.

    Args:
      grads_fn: per-example gradient function, `grads_fn(params, batch)`, e.g.
        `dpjax.per_example_grads(loss_fn)`.
      l2_norm: clip norm C, or per-group norms (:class:`dpjax.GroupClipNorms`).
      microbatch_size: rows per microbatch; the batch size must be a multiple
        (:class:`dpjax.PoissonSampler` pads batches to one).

    Returns:
      `fn(params, batch, mask) -> ClippedSum`, jittable; `mask` is
      boolean `(k * microbatch_size,)` and required (False for padded rows).

    Raises:
      ValueError: if `l2_norm` or `microbatch_size` is invalid; at trace time if the
        batch size is not a multiple of `microbatch_size` or the mask is missing.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> grads = dpjax.per_example_grads(lambda w, x: jnp.sum(w * x))
      >>> acc = dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=2)
      >>> clipped = jax.jit(acc)(jnp.zeros(3), jnp.ones((4, 3)), jnp.ones(4, bool))
      >>> clipped.sum.shape, clipped.sensitivity
      ((3,), 1.0)

    **Privacy:** the sum of clipped per-example gradients over all microbatches
    has sensitivity C, exactly as if the whole batch were clipped at once. Noise
    must NOT be added per microbatch (that would multiply the noise by sqrt(k)
    relative to what the accountant assumes, or, if scaled down, under-noise).

    References:
      optax issue #527 and jax_privacy issue #234 discuss the failure modes.
    """
    c = _clipping.check_clip(l2_norm)

    def clipper(params: PyTree, batch: PyTree, mask: jax.Array) -> _clipping.ClippedSum:
        return _clipping.clip_and_sum_unchecked(grads_fn(params, batch), c, mask)

    return accumulate_microbatches(clipper, microbatch_size=microbatch_size)


def accumulate_microbatches(
    clipper: Callable[[PyTree, PyTree, jax.Array], _clipping.ClippedSum],
    *,
    microbatch_size: int,
) -> Callable[[PyTree, PyTree, jax.Array], _clipping.ClippedSum]:
    """Runs any clipper microbatch by microbatch under `jax.lax.scan` and adds its sums.

    The general form of :func:`accumulate_clipped_grads`: `clipper(params,
    microbatch, mask) -> ClippedSum` may be a ghost clipper
    (:func:`dpjax.ghost.ghost_clipped_grads`), a per-group or data-parallel
    clipper, or any other. Only one microbatch is in memory at a time, so a
    logical batch of thousands of examples runs in the memory of one
    microbatch.

    Args:
      clipper: `clipper(params, batch, mask) -> ClippedSum`.
      microbatch_size: rows per microbatch; the batch size must be a multiple
        (:class:`dpjax.PoissonSampler` pads batches to one).

    Returns:
      `fn(params, batch, mask) -> ClippedSum`, jittable, with the clipper's
      sensitivity; `mask` is boolean and required (False for padded rows).

    Raises:
      ValueError: if `microbatch_size` is not a positive integer; at trace time
        if the batch size is not a multiple of it or the mask is missing.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> from dpjax import ghost
      >>> losses = lambda w, batch: ghost.ghost_dense(batch, w).sum(-1)
      >>> acc = dpjax.accumulate_microbatches(ghost.ghost_clipped_grads(losses, l2_norm=1.0),
      ...                                     microbatch_size=2)
      >>> clipped = jax.jit(acc)(jnp.zeros((3, 2)), jnp.ones((4, 3)), jnp.ones(4, bool))
      >>> clipped.sum.shape, clipped.sensitivity
      ((3, 2), 1.0)

    **Privacy:** the microbatches hold disjoint examples, so the accumulated
    sum has the clipper's sensitivity C, as if the whole batch were clipped at
    once (the `ClippedSum`s are added leaf by leaf, which refuses sums of
    different sensitivities). Noise is added once, afterwards, by the noise
    stage: never per microbatch.
    """
    m = _validation.check_positive_int(microbatch_size, "microbatch_size", "64")

    def fn(params: PyTree, batch: PyTree, mask: jax.Array) -> _clipping.ClippedSum:
        b = _per_example.batch_size(batch)
        if b % m:
            raise ValueError(
                f"batch size {b} is not a multiple of microbatch_size={m}; pad the batch "
                f"(dpjax.PoissonSampler does) or pick a divisor. Batch shapes: "
                f"{jax.tree.map(jnp.shape, batch)}"
            )
        mask = _validation.check_mask(mask, b, jax.tree.map(jnp.shape, batch))
        k = b // m
        if k == 1:  # no loop: XLA's CPU backend runs convolutions inside loops several times slower
            return clipper(params, batch, mask)
        split = jax.tree.map(lambda x: x.reshape((k, m) + x.shape[1:]), (batch, jnp.asarray(mask)))

        def body(acc, xs):
            micro, micro_mask = xs
            return jax.tree.map(jnp.add, acc, clipper(params, micro, micro_mask)), None

        one = jax.tree.map(lambda x: x[0], split)
        zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: clipper(params, *one)))
        clipped, _ = jax.lax.scan(body, zeros, split)
        return clipped

    return fn
