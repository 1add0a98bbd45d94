"""Per-example clipping and summation (device side, jittable)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import _per_example, _validation

PyTree = Any


class ClipStats(NamedTuple):
    """Counts from one clipped sum.

    **Privacy:** these counts are computed from private data WITHOUT noise. They
    are diagnostics for the data owner; releasing them is outside the DP
    guarantee.

    Attributes:
      num_nonfinite: real (unmasked) rows whose gradient had a NaN/inf (or whose
        norm overflowed); they contributed zero to the sum.
      num_clipped: real, finite rows whose norm exceeded the clip norm.
    """

    num_nonfinite: jax.Array
    num_clipped: jax.Array


def per_example_global_norms(grads: PyTree) -> jax.Array:
    """Returns the L2 norm of each example's whole gradient, shape `(B,)`.

    The norm is taken over all leaves together (a "global" norm), accumulated in
    at least float32.

    Args:
      grads: per-example gradients, every leaf with a leading batch axis B.

    Returns:
      A float array of shape `(B,)`.

    Raises:
      ValueError: if the leaves do not share a leading batch axis.
    """
    _per_example.batch_size(grads)

    def sq(g: jax.Array) -> jax.Array:
        g = g.astype(jnp.promote_types(g.dtype, jnp.float32))
        return jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1)

    return jnp.sqrt(sum(sq(g) for g in jax.tree.leaves(grads)))


def clip_and_sum(
    grads: PyTree, l2_norm: float, mask: jax.typing.ArrayLike
) -> tuple[PyTree, ClipStats]:
    """Clips each example's gradient to L2 norm <= `l2_norm` and sums over examples.

    Row i is scaled by `min(1, l2_norm / ||g_i||)`. Rows with `mask[i] == False`
    (padding) and rows whose gradient is not finite (or whose squared norm
    overflows float32) contribute exactly zero: they are selected out with
    `where`, so a NaN never reaches the sum. The sum is returned in at least
    float32, whatever the gradients' dtype.

    Args:
      grads: per-example gradients, every leaf with leading axis B.
      l2_norm: the clip norm C, finite and >= 1e-6 (a Python number).
      mask: boolean `(B,)`, False for padded rows (a :class:`dpjax.Batch`'s
        `mask`); required, so that padding can never count as an example. Pass
        `jnp.ones(B, bool)` when no row is padded.

    Returns:
      `(summed, stats)`: the sum with the structure of one example's gradient,
      and :class:`ClipStats`.

    Raises:
      ValueError: if `l2_norm` is invalid; at trace time, if leading axes
        disagree or `mask` is missing or not `(B,)`.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> g = jnp.array([[3.0, 4.0], [jnp.nan, 0.0]])
      >>> s, stats = dpjax.clip_and_sum(g, 1.0, mask=jnp.ones(2, bool))
      >>> [round(float(v), 2) for v in s], int(stats.num_nonfinite)
      ([0.6, 0.8], 1)

    **Privacy:** adding, removing or replacing one example changes `summed` by
    at most C (2C for replacement) in L2 norm, whatever its gradient (including
    NaN/inf): this is the sensitivity the Gaussian noise is calibrated to.
    """
    return clip_and_sum_unchecked(grads, _validation.check_clip_norm(l2_norm), mask)


def clip_and_sum_unchecked(
    grads: PyTree, l2_norm: float, mask: jax.typing.ArrayLike | None
) -> tuple[PyTree, ClipStats]:
    """:func:`clip_and_sum` without validating `l2_norm` (inf allowed: NOT PRIVATE callers)."""
    b = _per_example.batch_size(grads)
    real = _validation.check_mask(mask, b, jax.tree.map(jnp.shape, grads))
    norms = per_example_global_norms(grads)
    keep = jnp.isfinite(norms) & real
    safe_norms = jnp.where(keep, norms, 1.0)
    scale = jnp.where(keep, jnp.minimum(1.0, l2_norm / jnp.maximum(safe_norms, 1e-30)), 0.0)

    def clip_sum(g: jax.Array) -> jax.Array:
        acc = jnp.promote_types(g.dtype, jnp.float32)
        kept = jnp.where(keep.reshape((b,) + (1,) * (g.ndim - 1)), g, 0).astype(acc)
        # Kept in (at least) float32: rounding the sum back to bf16/fp16 could push one
        # example's contribution above C, and noise must be drawn in float32 too.
        return jnp.tensordot(scale.astype(acc), kept, axes=1)

    stats = ClipStats(
        num_nonfinite=jnp.sum(real & ~jnp.isfinite(norms)).astype(jnp.int32),
        num_clipped=jnp.sum(keep & (norms > l2_norm)).astype(jnp.int32),
    )
    return jax.tree.map(clip_sum, grads), stats


def clip_per_example(l2_norm: float) -> optax.GradientTransformationExtraArgs:
    """Clips per-example gradients to global L2 norm <= `l2_norm` and sums them.

    Input updates are per-example gradients with a leading batch axis (e.g. from
    :func:`dpjax.per_example_grads`); the output is their clipped SUM, with the
    structure of one example's gradient. Put it first in an `optax.chain`,
    followed by :func:`dpjax.noisy_mean` (or use :func:`dpjax.dp_sgd`).

    Args:
      l2_norm: the clip norm C, finite and > 0.

    Returns:
      An `optax.GradientTransformationExtraArgs`. Its update requires the
      keyword `mask` (boolean `(B,)`, False for padded rows). Its state is a
      :class:`ClipStats` with the counts of the last update.

    Raises:
      ValueError: if `l2_norm` is not finite and positive; at trace time if the
        mask is missing or the batch axes or the mask disagree (the message
        lists the shapes).

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> tx = dpjax.clip_per_example(1.0)
      >>> g = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
      >>> s, _ = tx.update(g, tx.init(None), mask=jnp.array([True, True]))
      >>> [round(float(v), 2) for v in s["w"]]
      [0.9, 1.2]

    **Privacy:** each real example contributes a vector of norm <= C; padded and
    non-finite rows contribute exactly zero. The L2 sensitivity of the output is
    C under add/remove of one example. C = inf or C <= 0 is refused.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
      https://arxiv.org/abs/1607.00133
    """
    c = _validation.check_clip_norm(l2_norm)

    def init_fn(params: PyTree) -> ClipStats:
        del params
        return ClipStats(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, mask=None, **extra_args):
        del state, params, extra_args
        return clip_and_sum_unchecked(updates, c, mask)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
