"""Per-example gradients through `jax.vmap` (device side, jittable)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

PyTree = Any


def per_example_grads(
    loss_fn: Callable[..., jax.Array], *, has_aux: bool = False
) -> Callable[[PyTree, PyTree], Any]:
    """Turns a loss written for ONE example into a function of per-example gradients.

    `loss_fn(params, example)` returns a scalar loss for a single example (no
    batch axis). The returned function takes `(params, batch)`, where every leaf
    of `batch` has a leading batch axis of size B, and returns gradients with
    respect to `params` with the same structure as `params` and a leading axis
    of size B: row i is the gradient of `loss_fn(params, example_i)`.

    It works for any pytree of parameters (the `nnx.Param` state of
    `nnx.split`, linen variables, plain dicts) and any pytree batch, and can be
    wrapped in `jax.jit`.

    Args:
      loss_fn: `loss_fn(params, example) -> scalar` (or `(scalar, aux)` with
        `has_aux=True`), written for one example.
      has_aux: whether `loss_fn` returns `(loss, aux)`; the per-example `aux`
        is then returned as a second output, batched along axis 0.

    Returns:
      `grads_fn(params, batch) -> grads` (or `(grads, aux)` with `has_aux`).

    Raises:
      ValueError: at trace time, if the leaves of `batch` disagree on the batch
        size (the message lists the shapes it saw).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> loss = lambda w, ex: (ex["x"] @ w - ex["y"]) ** 2
      >>> grads = dpjax.per_example_grads(loss)
      >>> batch = {"x": jnp.ones((4, 3)), "y": jnp.zeros(4)}
      >>> jax.jit(grads)(jnp.ones(3), batch).shape
      (4, 3)

    **Privacy:** DP-SGD bounds each example's influence by clipping *its own*
    gradient, so `loss_fn` must not mix examples (no BatchNorm, no in-batch
    negatives). Writing the loss for one example and batching it with `vmap`
    guarantees this by construction.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
      https://arxiv.org/abs/1607.00133
    """
    grad_fn = jax.grad(loss_fn, has_aux=has_aux)
    batched = jax.vmap(grad_fn, in_axes=(None, 0))

    def grads_fn(params: PyTree, batch: PyTree) -> Any:
        batch_size(batch)
        return batched(params, batch)

    return grads_fn


def batch_size(tree: PyTree) -> int:
    """Returns the common leading-axis size of every leaf of `tree`.

    Raises:
      ValueError: if `tree` has no leaves, a scalar leaf, or leaves whose leading
        axes differ; the message lists the shapes seen.
    """
    leaves = jax.tree.leaves(tree)
    sizes = {int(leaf.shape[0]) if getattr(leaf, "ndim", 0) > 0 else -1 for leaf in leaves}
    if not leaves or -1 in sizes or len(sizes) != 1:
        raise ValueError(
            "expected every leaf to have the same leading batch axis (per-example values "
            f"stacked along axis 0); got shapes {jax.tree.map(lambda x: getattr(x, 'shape', ()), tree)}. "
            "Compute per-example gradients with dpjax.per_example_grads(loss_fn)."
        )
    return sizes.pop()
