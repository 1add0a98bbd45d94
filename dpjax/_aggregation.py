"""The noisy mean and DP-SGD, composed from the stages: clip -> noise -> normalize (device side)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import optax

from dpjax import _clipping, _noise, _validation
from dpjax._clipping import NotPrivateWarning

PyTree = Any


def scale_by_expected_batch_size(expected_batch_size: float) -> optax.GradientTransformation:
    """Divides the (noisy) sum by the EXPECTED batch size, `q * N`.

    Args:
      expected_batch_size: `sampling_rate * dataset_size`, > 0 (need not be an
        integer).

    Returns:
      An `optax.GradientTransformation` (stateless).

    Raises:
      ValueError: if `expected_batch_size` is not finite and positive.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> tx = dpjax.scale_by_expected_batch_size(4)
      >>> float(tx.update(jnp.array(2.0), tx.init(None))[0])
      0.5

    **Privacy:** dividing by the realized batch size would make the output depend
    on how many examples were sampled, a quantity that was never noised. The
    expected size is public (a function of q and N).
    """
    n = _validation.check_positive_float(expected_batch_size, "expected_batch_size", "256")
    return optax.scale(1.0 / n)


def noisy_mean(
    noise_multiplier: Any, expected_batch_size: float, key: jax.Array
) -> optax.GradientTransformation:
    """Privatizes a :class:`dpjax.ClippedSum`: Gaussian noise on the sum, then the expected-size mean.

    Adds N(0, (sigma * sensitivity)^2) to every coordinate of the sum, reading
    the sensitivity from the clipped sum itself, and divides by the expected
    batch size. Use it after any clipper: :func:`clip_per_example`,
    :func:`accumulate_clipped_grads` (noise is then added once, to the
    accumulated sum) or :func:`dpjax.ghost.ghost_clipped_grads`.

    Args:
      noise_multiplier: sigma; the noise std is `sigma * sensitivity`. Or a
        :class:`dpjax.NoiseSchedule` (sigma_t at the noise stage's step t).
      expected_batch_size: `q * N`.
      key: PRNG key reserved for the noise (:func:`dpjax.secret_key`).

    Returns:
      `optax.chain(gaussian_mechanism(sigma, key), scale_by_expected_batch_size(n))`.

    Raises:
      ValueError: for a non-positive or non-finite sigma or batch size, or a bad
        key; at trace time, if the input is not a :class:`dpjax.ClippedSum` of
        finite sensitivity.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.noisy_mean(1.1, 256, key=jax.random.key(0))
      >>> clipped = dpjax.clip_and_sum(jnp.ones((2, 3)), 1.0, mask=jnp.ones(2, bool))
      >>> update, _ = tx.update(clipped, tx.init(None))
      >>> update.shape
      (3,)

    **Privacy:** the Gaussian mechanism with noise multiplier sigma on a sum of
    sensitivity C; the accountant must be told sigma, q and the step count.
    """
    return optax.chain(
        _noise.gaussian_mechanism(noise_multiplier, key),
        scale_by_expected_batch_size(expected_batch_size),
    )


def dp_aggregate(
    l2_norm: Any, noise_multiplier: Any, expected_batch_size: float, key: jax.Array
) -> optax.GradientTransformationExtraArgs:
    """Per-example gradients -> clipped sum -> Gaussian noise -> divide by expected size.

    Args:
      l2_norm: clip norm C, or :class:`dpjax.GroupClipNorms`.
      noise_multiplier: sigma (noise std sigma * C on the sum), or a
        :class:`dpjax.NoiseSchedule`.
      expected_batch_size: `q * N`.
      key: PRNG key reserved for the noise.

    Returns:
      `optax.chain(clip_per_example(C), noisy_mean(sigma, n, key))`; its update
      takes per-example gradients and the keyword `mask` (required).

    Raises:
      ValueError: for invalid arguments (see the parts).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.dp_aggregate(1.0, 1.1, 4, key=jax.random.key(0))
      >>> g = jnp.ones((4, 3))
      >>> update, _ = tx.update(g, tx.init(jnp.zeros(3)), mask=jnp.ones(4, bool))
      >>> update.shape
      (3,)

    **Privacy:** one step is the sampled Gaussian mechanism with noise multiplier
    sigma when batches are Poisson-sampled with rate q (see
    :class:`dpjax.PoissonSampler`).
    """
    return optax.chain(
        _clipping.clip_per_example(l2_norm),
        noisy_mean(noise_multiplier, expected_batch_size, key),
    )


def dp_sgd(
    optimizer: optax.GradientTransformation,
    *,
    l2_norm: Any,
    noise_multiplier: Any,
    expected_batch_size: float,
    key: jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """DP-SGD with any optax optimizer, in one line.

    Args:
      optimizer: any optax optimizer, e.g. `optax.adam(1e-3)`; it sees only the
        privatized gradient.
      l2_norm: clip norm C, or :class:`dpjax.GroupClipNorms`.
      noise_multiplier: sigma, or a :class:`dpjax.NoiseSchedule`.
      expected_batch_size: `q * N`.
      key: PRNG key reserved for the noise.

    Returns:
      `optax.chain(dp_aggregate(...), optimizer)`. Feed it per-example gradients
      (leading batch axis) and `mask=` for padded rows.

    Raises:
      ValueError: for invalid arguments.

    Example:
      >>> import jax, jax.numpy as jnp, optax, dpjax
      >>> tx = dpjax.dp_sgd(optax.adam(1e-3), l2_norm=1.0, noise_multiplier=1.1,
      ...                   expected_batch_size=256, key=jax.random.key(0))
      >>> params = {"w": jnp.zeros(3)}
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.ones((8, 3))}
      >>> updates, state = tx.update(grads, state, params, mask=jnp.ones(8, bool))

    **Privacy:** see :func:`dp_aggregate`. Post-processing by the optimizer does
    not change the guarantee. The state keeps the clipping counts of the last
    step (:class:`ClipStats`), computed without noise: do not publish the
    optimizer state, only the parameters.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
      https://arxiv.org/abs/1607.00133
    """
    return optax.chain(dp_aggregate(l2_norm, noise_multiplier, expected_batch_size, key), optimizer)


def non_private_mean(expected_batch_size: float) -> optax.GradientTransformation:
    """NOT PRIVATE: the mean of a :class:`dpjax.ClippedSum` of any sensitivity, without noise.

    The counterpart of :func:`noisy_mean` for the explicit NOT PRIVATE baseline
    (e.g. after :func:`dpjax.not_private_sum`).

    Args:
      expected_batch_size: the divisor.

    Returns:
      An `optax.GradientTransformation` (stateless) taking a ClippedSum.

    Raises:
      ValueError: if `expected_batch_size` is not positive.

    Warns:
      NotPrivateWarning: always, when built.

    Example:
      >>> import warnings, jax.numpy as jnp, dpjax
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
      ...     tx = dpjax.non_private_mean(2)
      >>> clipped = dpjax.clip_and_sum(jnp.ones((2, 1)), 5.0, mask=jnp.ones(2, bool))
      >>> float(tx.update(clipped, tx.init(None))[0][0])
      1.0

    **Privacy:** NONE.
    """
    warnings.warn(
        "NOT PRIVATE: non_private_mean adds no noise; the result has no differential-privacy "
        "guarantee.",
        NotPrivateWarning,
        stacklevel=2,
    )
    scale = scale_by_expected_batch_size(expected_batch_size)

    def update_fn(updates, state, params=None):
        del params
        if not isinstance(updates, _clipping.ClippedSum):
            raise ValueError(
                "non_private_mean expects a dpjax.ClippedSum (from a clipper or "
                f"dpjax.not_private_sum), got {type(updates).__name__}."
            )
        summed = updates.sum
        if updates.scale is not None:
            summed = jax.tree.map(lambda x: x * updates.scale, summed)
        return scale.update(summed, state)[0], state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def non_private_aggregate(expected_batch_size: float) -> optax.GradientTransformationExtraArgs:
    """NOT PRIVATE: plain mean of per-example gradients (no clipping, no noise).

    The explicit, loudly named baseline for comparisons. It keeps the interface of
    :func:`dp_aggregate` (per-example gradients and `mask` in) so that a private
    and a non-private run differ only in this one line.

    Args:
      expected_batch_size: the divisor (the padded rows are masked out).

    Returns:
      `optax.chain(not_private_sum(), non_private_mean(n))`.

    Raises:
      ValueError: if `expected_batch_size` is not positive.

    Warns:
      NotPrivateWarning: always, when built.

    Example:
      >>> import warnings, jax.numpy as jnp, dpjax
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
      ...     tx = dpjax.non_private_aggregate(2)
      >>> g = jnp.array([[1.0], [3.0]])
      >>> float(tx.update(g, tx.init(None), mask=jnp.ones(2, bool))[0][0])
      2.0

    **Privacy:** NONE. Nothing bounds an example's influence.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotPrivateWarning)  # one warning, below
        parts = (_clipping.not_private_sum(), non_private_mean(expected_batch_size))
    warnings.warn(
        "NOT PRIVATE: non_private_aggregate adds no noise and does not clip; the result has no "
        "differential-privacy guarantee.",
        NotPrivateWarning,
        stacklevel=2,
    )
    return optax.chain(*parts)


def private_update(
    clipper: Callable[[PyTree, PyTree, jax.Array], _clipping.ClippedSum],
    tx: optax.GradientTransformation,
) -> Callable[[PyTree, Any, PyTree, jax.Array], tuple[PyTree, Any]]:
    """One DP-SGD update from a clipper and a transformation: the step every dpjax loop runs.

    `clipper(params, batch, mask)` returns a :class:`dpjax.ClippedSum`
    (:func:`accumulate_clipped_grads` for any model,
    :func:`dpjax.ghost.ghost_clipped_grads` for models built from ghost layers),
    and `tx` privatizes it and steps the optimizer, e.g.
    `optax.chain(dpjax.noisy_mean(sigma, n, key), optax.adam(1e-3))`. The
    sensitivity travels from the clipper to the noise inside the ClippedSum.

    Args:
      clipper: `(params, batch, mask) -> ClippedSum`.
      tx: a transformation that takes a ClippedSum (starting with
        :func:`noisy_mean`, or :func:`non_private_mean` for the NOT PRIVATE
        baseline).

    Returns:
      `update(params, opt_state, batch, mask, **tx_args) -> (params, opt_state)`,
      pure and jittable; `tx_args` go to `tx.update` (e.g. the step's
      `noise_multiplier=` for :class:`dpjax.OnlineNoise`).

    Example:
      >>> import jax, jax.numpy as jnp, optax, dpjax
      >>> loss = lambda w, ex: jnp.sum((ex @ w) ** 2)
      >>> clipper = dpjax.accumulate_clipped_grads(
      ...     dpjax.per_example_grads(loss), l2_norm=1.0, microbatch_size=4)
      >>> tx = optax.chain(dpjax.noisy_mean(1.0, 4, key=jax.random.key(0)), optax.sgd(0.1))
      >>> update = jax.jit(dpjax.private_update(clipper, tx))
      >>> w = jnp.ones(3)
      >>> w, state = update(w, tx.init(w), jnp.ones((4, 3)), jnp.ones(4, bool))

    **Privacy:** one step is the sampled Gaussian mechanism when the batch is
    Poisson-sampled (:class:`dpjax.PoissonSampler`) and `tx` starts with
    :func:`noisy_mean`; record it with the tracker
    (`tracker.record(dpjax.PoissonGaussianSteps(sigma, q))`) before releasing
    the new parameters.
    """

    def update(
        params: PyTree, opt_state: Any, batch: PyTree, mask: jax.Array, **tx_args: Any
    ) -> tuple[PyTree, Any]:
        clipped: Any = clipper(params, batch, mask)  # optax types updates as plain pytrees
        tx_update: Any = tx.update  # extra keywords reach ExtraArgs stages (dpjax.OnlineNoise)
        updates, opt_state = tx_update(clipped, opt_state, params, **tx_args)
        return optax.apply_updates(params, updates), opt_state

    return update
