"""DP-SGD aggregation built from the parts: clip -> noise -> normalize (device side)."""

from __future__ import annotations

import warnings

import jax
import optax

from dpjax import _clipping, _noise, _validation


class NotPrivateWarning(UserWarning):
    """Emitted whenever a NOT PRIVATE code path is built."""


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
    l2_norm: float, noise_multiplier: float, expected_batch_size: float, key: jax.Array
) -> optax.GradientTransformation:
    """Privatizes a clipped SUM: adds N(0, (sigma*C)^2) noise, divides by the expected size.

    Use it after :func:`clip_per_example`, or after
    :func:`accumulate_clipped_grads` when a logical batch is split into
    microbatches: noise is then added once, to the accumulated sum.

    Args:
      l2_norm: the clip norm C used to clip the sum.
      noise_multiplier: sigma; the noise std is `sigma * C`.
      expected_batch_size: `q * N`.
      key: PRNG key reserved for the noise.

    Returns:
      `optax.chain(add_gaussian_noise(sigma*C, key), scale_by_expected_batch_size(n))`.

    Raises:
      ValueError: for a non-positive or non-finite C, sigma or batch size, or a bad key.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.noisy_mean(1.0, 1.1, 256, key=jax.random.key(0))
      >>> update, _ = tx.update(jnp.zeros(3), tx.init(None))

    **Privacy:** the input must have L2 sensitivity C (a sum of per-example
    gradients clipped to C). The result is the Gaussian mechanism with noise
    multiplier sigma; the accountant must be told sigma, q and the step count.
    """
    c = _validation.check_clip_norm(l2_norm)
    sigma = _validation.check_noise_multiplier(noise_multiplier)
    return optax.chain(
        _noise.add_gaussian_noise(sigma * c, key),
        scale_by_expected_batch_size(expected_batch_size),
    )


def dp_aggregate(
    l2_norm: float, noise_multiplier: float, expected_batch_size: float, key: jax.Array
) -> optax.GradientTransformationExtraArgs:
    """Per-example gradients -> clipped sum -> Gaussian noise -> divide by expected size.

    Args:
      l2_norm: clip norm C.
      noise_multiplier: sigma (noise std sigma * C on the sum).
      expected_batch_size: `q * N`.
      key: PRNG key reserved for the noise.

    Returns:
      `optax.chain(clip_per_example(C), noisy_mean(C, sigma, n, key))`; its update
      takes per-example gradients and the keyword `mask`.

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
        noisy_mean(l2_norm, noise_multiplier, expected_batch_size, key),
    )


def dp_sgd(
    optimizer: optax.GradientTransformation,
    *,
    l2_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    key: jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """DP-SGD with any optax optimizer, in one line.

    Args:
      optimizer: any optax optimizer, e.g. `optax.adam(1e-3)`; it sees only the
        privatized gradient.
      l2_norm: clip norm C.
      noise_multiplier: sigma.
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


def non_private_aggregate(expected_batch_size: float) -> optax.GradientTransformationExtraArgs:
    """NOT PRIVATE: plain mean of per-example gradients (no clipping, no noise).

    The explicit, loudly named baseline for comparisons. It keeps the interface of
    :func:`dp_aggregate` (per-example gradients in, `mask` honoured) so that a
    private and a non-private run differ only in this one line.

    Args:
      expected_batch_size: the divisor (the padded rows are masked out).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

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
    warnings.warn(
        "NOT PRIVATE: non_private_aggregate adds no noise and does not clip; the result has no "
        "differential-privacy guarantee.",
        NotPrivateWarning,
        stacklevel=2,
    )
    scale = scale_by_expected_batch_size(expected_batch_size)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, mask=None, **extra_args):
        del params, extra_args
        summed, _ = _clipping.clip_and_sum_unchecked(updates, float("inf"), mask)
        return scale.update(summed, state)[0], state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
