"""Sparse DP updates: top-k supports chosen without looking at the batch (device side, jittable).

Top-k of the clean aggregated gradient is NOT private: which coordinates are
kept depends on the batch and is released without noise. dpjax's sparse
updates choose the support from values that are already public, BEFORE the
batch is seen, restrict every per-example gradient to it before clipping (so
the sensitivity on the support is C) and noise only its k coordinates (the
noise energy falls by d / k):

- :func:`private_topk` with `source="previous"` / `"ema"` / `"warmup"`: the
  top-k of the previous released update, of an exponential moving average of
  the released updates (a momentum of what was released), or of the sum of the
  released updates of a dense warm-up phase, frozen afterwards (two phases);
- :func:`private_topk` with `source="random"`: a random support drawn
  independently of the data (Zhu & Blaschko 2021);
- :func:`topk_after_noise`: top-k of the already-noised update. Free
  post-processing, but it does not reduce the noise: it only saves
  communication (a sparse message).

References:
  Zhu & Blaschko, "Improving Differentially Private SGD via Randomly Sparsified
  Gradients", TMLR 2023 (arXiv 2112.00845, 2021).
  Zhou, Wu, Banerjee, "Bypassing the Ambient Dimension: Private SGD with
  Gradient Subspace Identification", ICLR 2021 (subspaces from public values).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import _clipping, _validation

PyTree = Any

SOURCES = ("previous", "ema", "warmup", "random")


def _check_k(k: int | float, name: str = "k") -> int | float:
    """A count >= 1 (int) or a fraction in (0, 1] (float)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"{name}={k!r} must be a count (int >= 1) or a fraction in (0, 1].")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"{name}={k!r} must be >= 1 as a count; e.g. {name}=1000 or 0.1.")
    if isinstance(k, float) and not (0.0 < k <= 1.0):
        raise ValueError(f"{name}={k!r} must lie in (0, 1] as a fraction; e.g. {name}=0.1.")
    return k


def _count(k: int | float, size: int) -> int:
    """k as a number of coordinates out of `size` (a fraction rounds up; at most `size`)."""
    if isinstance(k, float):
        return max(1, min(size, math.ceil(k * size)))
    return min(int(k), size)


def _top_mask(scores: jax.Array, k: int) -> jax.Array:
    """Boolean mask of the k largest entries of a flat `scores` (ties: lowest index first)."""
    if k >= scores.size:
        return jnp.ones(scores.shape, bool)
    _, idx = jax.lax.top_k(scores, k)
    return jnp.zeros(scores.shape, bool).at[idx].set(True)


def _mask_from_scores(scores: PyTree, k: int | float, per_leaf: bool) -> PyTree:
    """Top-k of `scores` over all leaves (global) or within each leaf."""
    leaves, treedef = jax.tree.flatten(scores)
    if per_leaf:
        out = [
            _top_mask(leaf.reshape(-1), _count(k, leaf.size)).reshape(leaf.shape) for leaf in leaves
        ]
        return jax.tree.unflatten(treedef, out)
    flat = jnp.concatenate([leaf.reshape(-1).astype(jnp.float32) for leaf in leaves])
    mask = _top_mask(flat, _count(k, flat.size))
    out, start = [], 0
    for leaf in leaves:
        out.append(mask[start : start + leaf.size].reshape(leaf.shape))
        start += leaf.size
    return jax.tree.unflatten(treedef, out)


def topk_support(values: PyTree, k: int | float, *, per_leaf: bool = False) -> PyTree:
    """The support of the k largest `|values|`: boolean leaves shaped like `values`.

    Args:
      values: PUBLIC values (a released update, its moving average, or public
        data); never the clean gradient of the current batch.
      k: a count (int >= 1) or a fraction of the coordinates (float in (0, 1]).
      per_leaf: k per leaf (per layer) instead of over all leaves together.

    Returns:
      A pytree of boolean arrays with exactly `k` True entries in all (or per
      leaf); ties go to the lowest index.

    Raises:
      ValueError: if `k` is invalid.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> dpjax.topk_support({"w": jnp.array([0.1, -3.0, 2.0])}, 2)["w"].tolist()
      [False, True, True]

    **Privacy:** the support is a function of `values` alone; it is private
    only if `values` are already released or public.
    """
    k = _check_k(k)
    return _mask_from_scores(jax.tree.map(jnp.abs, values), k, per_leaf)


def random_support(key: jax.Array, like: PyTree, k: int | float, *, per_leaf: bool = False):
    """A uniformly random support of k coordinates, drawn independently of the data.

    Args:
      key: a PRNG key (need not be secret: the support is independent of the
        data; do not reuse the noise key).
      like: a pytree whose leaves' shapes the support takes.
      k: a count or a fraction, as for :func:`topk_support`.
      per_leaf: k per leaf instead of over all leaves.

    Returns:
      Boolean leaves shaped like `like`.

    Raises:
      ValueError: if `k` is invalid.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> s = dpjax.random_support(jax.random.key(0), jnp.zeros(10), 3)
      >>> int(s.sum())
      3

    **Privacy:** independent of the data, so revealing it costs nothing.

    References:
      Zhu & Blaschko, "Improving Differentially Private SGD via Randomly
      Sparsified Gradients", arXiv 2112.00845, 2021.
    """
    k = _check_k(k)
    key = _validation.check_key(key)
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    scores = [jax.random.uniform(kk, jnp.shape(x)) for kk, x in zip(keys, leaves, strict=True)]
    return _mask_from_scores(jax.tree.unflatten(treedef, scores), k, per_leaf)


class PrivateTopKState(NamedTuple):
    """State of :func:`private_topk`.

    Attributes:
      inner: the wrapped transformation's state.
      released: the public values the next support is chosen from (the last
        released update, their moving average, or the warm-up sum).
      support: the support used by the last update (public).
      count: updates so far.
    """

    inner: Any
    released: PyTree
    support: PyTree
    count: jax.Array


def private_topk(
    inner: optax.GradientTransformation,
    k: int | float,
    *,
    source: str = "ema",
    decay: float = 0.9,
    warmup_steps: int = 0,
    key: jax.Array | None = None,
    per_leaf: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Sparse DP-SGD: restricts every step to k coordinates chosen from public values.

    Wraps a DP chain whose clipper takes per-example gradients, e.g.
    `dpjax.dp_sgd(optimizer, ...)` or `optax.chain(dpjax.clip_per_example(C),
    dpjax.noisy_mean(sigma, n, key), optimizer)`. Each update first chooses the
    support from the state (never from the batch), then calls the chain with
    `support=`: :func:`dpjax.clip_per_example` restricts every per-example
    gradient to it before clipping (sensitivity C on the support) and
    :func:`dpjax.gaussian_mechanism` noises only its coordinates.

    Sources of the support:
      - `"previous"`: top-k of the last released update (the chain's output);
      - `"ema"`: top-k of `m_t = decay * m_{t-1} + update_t` over released
        updates (momentum of what was released);
      - `"warmup"`: dense for `warmup_steps` steps while summing the released
        updates, then the top-k of that sum, frozen (a two-phase scheme);
      - `"random"`: a fresh random support each step, independent of the data.
    The first update of `"previous"`/`"ema"` (nothing released yet) and the
    warm-up steps are dense.

    Args:
      inner: the DP chain (its update takes `mask=` and `support=`).
      k: the support size, a count or a fraction (see :func:`topk_support`).
      source: one of `"previous"`, `"ema"`, `"warmup"`, `"random"`.
      decay: the moving-average decay for `"ema"`, in [0, 1).
      warmup_steps: dense steps before the support freezes (`"warmup"`; >= 1).
      key: PRNG key for `"random"` (required there; not the noise key).
      per_leaf: k per parameter leaf (per layer) instead of globally.

    Returns:
      An `optax.GradientTransformationExtraArgs` with :class:`PrivateTopKState`;
      its update takes per-example gradients, `params` and `mask=`.

    Raises:
      ValueError: for invalid arguments (named, with the fix).

    Example:
      >>> import jax, jax.numpy as jnp, optax, dpjax
      >>> dp = dpjax.dp_sgd(optax.sgd(0.1), l2_norm=1.0, noise_multiplier=1.0,
      ...                   expected_batch_size=4, key=jax.random.key(0))
      >>> tx = dpjax.private_topk(dp, k=2, source="ema")
      >>> params = jnp.zeros(5)
      >>> state = tx.init(params)
      >>> upd, state = tx.update(jnp.ones((4, 5)), state, params, mask=jnp.ones(4, bool))
      >>> upd, state = tx.update(jnp.ones((4, 5)), state, params, mask=jnp.ones(4, bool))
      >>> int(state.support.sum()), int((upd != 0).sum())
      (2, 2)

    **Privacy:** the support of step t is a function of released updates
    (post-processing of the noisy steps before t) or of randomness independent
    of the data, so changing, adding or removing an example of the batch
    cannot change it. The step is then the Gaussian mechanism on the
    restricted sum, sensitivity C: account it as a dense step
    (`PoissonGaussianSteps(sigma, q)`). The released update must not use the
    optimizer's view of anything unreleased; optax optimizers only see the
    noisy gradient.

    References:
      Zhu & Blaschko 2021 (random supports); Zhou, Wu, Banerjee, ICLR 2021
      (supports from public information).
    """
    k = _check_k(k)
    if source not in SOURCES:
        raise ValueError(f"source={source!r} must be one of {SOURCES}.")
    if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
        raise ValueError(f"decay={decay!r} must lie in [0, 1); e.g. decay=0.9.")
    if source == "previous":
        decay = 0.0
    if source == "warmup":
        warmup_steps = _validation.check_positive_int(warmup_steps, "warmup_steps", "100")
    rng = _validation.check_key(key) if source == "random" else None
    if source == "random" and rng is None:
        raise ValueError('source="random" needs key=; pass e.g. key=jax.random.key(1).')

    def init_fn(params: PyTree) -> PrivateTopKState:
        zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
        ones = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
        return PrivateTopKState(inner.init(params), zeros, ones, jnp.zeros((), jnp.int32))

    def support_for(state: PrivateTopKState) -> PyTree:
        if source == "random":
            assert rng is not None
            step_key = jax.random.fold_in(rng, state.count)
            return random_support(step_key, state.released, k, per_leaf=per_leaf)
        top = topk_support(state.released, k, per_leaf=per_leaf)
        dense = jax.tree.map(lambda m: jnp.ones(m.shape, bool), state.released)
        start = warmup_steps if source == "warmup" else 1
        use_dense = state.count < start
        return jax.tree.map(lambda d, t: jnp.where(use_dense, d, t), dense, top)

    def update_fn(updates, state, params=None, **extra_args):
        extra_args.pop("support", None)
        support = support_for(state)
        inner_update: Any = inner.update  # a clipper's update takes `support=`
        out, inner_state = inner_update(updates, state.inner, params, support=support, **extra_args)
        if source == "warmup":
            accumulate = state.count < warmup_steps
            released = jax.tree.map(
                lambda m, u: jnp.where(accumulate, m + u.astype(jnp.float32), m),
                state.released,
                out,
            )
        else:
            released = jax.tree.map(
                lambda m, u: decay * m + u.astype(jnp.float32), state.released, out
            )
        new = PrivateTopKState(
            inner_state, released, support, jnp.asarray(optax.safe_increment(state.count))
        )
        return out, new

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def topk_after_noise(k: int | float, *, per_leaf: bool = False) -> optax.GradientTransformation:
    """Keeps the k largest `|update|` coordinates of an ALREADY NOISED update, zeroes the rest.

    Post-processing: place it after :func:`dpjax.noisy_mean` (or after the
    optimizer). It costs no privacy, but the noise was already added to all d
    coordinates, so it does not improve the signal-to-noise ratio; it only
    makes the message sparse (communication, e.g. in federated rounds).

    Args:
      k: a count or a fraction, as for :func:`topk_support`.
      per_leaf: k per leaf instead of globally.

    Returns:
      A stateless `optax.GradientTransformation`.

    Raises:
      ValueError: if `k` is invalid; at update time, if the updates are not yet
        noised: a :class:`dpjax.ClippedSum` (the clipper's output), or
        per-example gradients (leaves shaped unlike `params`, when given).

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> tx = dpjax.topk_after_noise(1)
      >>> tx.update(jnp.array([0.5, -2.0, 1.0]), tx.init(None))[0].tolist()
      [0.0, -2.0, 0.0]

    **Privacy:** a function of the noisy update only (post-processing). Do NOT
    put it before the noise: top-k of a clean sum is not private (one example
    can swap which coordinates survive, moving the sum by far more than C).
    Placed before the noise stage it is refused: it raises on a ClippedSum, and
    on per-example gradients when the chain passes `params`.
    """
    k = _check_k(k)

    def update_fn(updates, state, params=None):
        if isinstance(updates, _clipping.ClippedSum):
            raise ValueError(
                "topk_after_noise got a dpjax.ClippedSum, the clean sum before the noise: its "
                "top-k is NOT private. Place topk_after_noise after dpjax.noisy_mean (or use "
                "dpjax.private_topk to sparsify before the noise)."
            )
        shapes = [jnp.shape(u) for u in jax.tree.leaves(updates)]
        if params is not None and shapes != [jnp.shape(p) for p in jax.tree.leaves(params)]:
            raise ValueError(
                "topk_after_noise got updates shaped unlike the parameters (per-example "
                "gradients, before clipping and noise?): their top-k is NOT private. Place "
                "topk_after_noise after dpjax.noisy_mean."
            )
        keep = topk_support(updates, k, per_leaf=per_leaf)
        return jax.tree.map(
            lambda u, m: jnp.where(m, u, jnp.zeros((), u.dtype)), updates, keep
        ), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
