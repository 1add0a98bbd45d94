"""Feature normalization without looking at the data in the clear.

Two ways: per-example group normalization (:func:`group_normalize`: each
example is normalized by its OWN statistics, a fixed function of one example,
so it costs no privacy), or data normalization by group statistics estimated
privately (:func:`private_group_statistics`: per-example statistics clipped,
summed, one Gaussian release recorded in the tracker first).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import _validation


def _check_groups(channels: int, groups: int) -> int:
    groups = _validation.check_positive_int(groups, "groups", "27")
    if channels % groups:
        raise ValueError(
            f"groups={groups} does not divide the {channels} feature channels; pass a divisor "
            f"of {channels} (e.g. 27 for the 81 scattering channels)."
        )
    return groups


def _grouped(x: jax.Array, groups: int) -> jax.Array:
    """`(N, ..., C)` -> `(N, P, G, C / G)`: P positions, G contiguous channel groups."""
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(n, -1, groups, c // groups)


def group_normalize(
    features: jax.typing.ArrayLike, groups: int = 27, epsilon: float = 1e-5
) -> jax.Array:
    """Per-example group normalization of channels-last features (no learnt affine).

    The C channels are split into `groups` contiguous groups; each example's
    group is shifted and scaled to mean 0 and variance 1 over its positions and
    channels (as `torch.nn.GroupNorm(groups, C, affine=False)` on NCHW).

    Args:
      features: `(N, ..., C)` (e.g. `(N, 7, 7, 81)` scattering features).
      groups: a divisor of C.
      epsilon: added to the variance, > 0.

    Returns:
      float32 normalized features, same shape.

    Raises:
      ValueError: if `groups` does not divide C.

    Example:
      >>> import numpy as np
      >>> from dpjax.features import group_normalize
      >>> x = np.random.default_rng(0).normal(3.0, 2.0, (2, 4, 4, 6)).astype(np.float32)
      >>> y = group_normalize(x, groups=3)
      >>> float(abs(y[0, ..., :2].mean())) < 1e-5, round(float(y[0, ..., :2].std()), 3)
      (True, 1.0)

    **Privacy:** a fixed function of ONE example (its own statistics, nothing
    estimated across examples): training on the result spends exactly what it
    spends on the raw features.

    References:
      Wu & He, "Group Normalization", ECCV 2018.
      Tramer & Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021 (GroupNorm on ScatterNet features).
    """
    x = jnp.asarray(features, jnp.float32)
    groups = _check_groups(x.shape[-1], groups)
    epsilon = _validation.check_positive_float(epsilon, "epsilon", "1e-5")
    return _group_normalize(x, groups, float(epsilon))


@functools.partial(jax.jit, static_argnames=("groups", "epsilon"))
def _group_normalize(x: jax.Array, groups: int, epsilon: float) -> jax.Array:
    g = _grouped(x, groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / jnp.sqrt(var + epsilon)).reshape(x.shape)


class GroupStatistics(NamedTuple):
    """Private estimates of each channel group's mean and variance (released values).

    Attributes:
      mean: `(G,)` float32.
      variance: `(G,)` float32, floored at `min_variance`.
      noise_multiplier: the sigma of the release that produced them.
    """

    mean: np.ndarray
    variance: np.ndarray
    noise_multiplier: float

    def normalize(self, features: jax.typing.ArrayLike, epsilon: float = 1e-5) -> jax.Array:
        """`(x - mean_g) / sqrt(variance_g + epsilon)` for the channels of each group.

        **Privacy:** post-processing of released statistics; no further cost.
        """
        x = jnp.asarray(features, jnp.float32)
        groups = _check_groups(x.shape[-1], len(self.mean))
        g = _grouped(x, groups)
        mean = jnp.asarray(self.mean)[None, None, :, None]
        var = jnp.asarray(self.variance)[None, None, :, None]
        return ((g - mean) / jnp.sqrt(var + epsilon)).reshape(x.shape)


@functools.partial(jax.jit, static_argnames=("groups", "clip_norm"))
def _clipped_moments(
    rows: jax.Array, mask: jax.Array, groups: int, clip_norm: float
) -> dpjax.ClippedSum:
    """Each row's G group means and G group second moments, clipped to `clip_norm`, summed."""
    g = _grouped(rows, groups)
    moments = jnp.concatenate([g.mean(axis=(1, 3)), (g * g).mean(axis=(1, 3))], axis=-1)
    return dpjax.clip_and_sum(moments, clip_norm, mask)


_STATISTICS_STREAM = 2**32 - 2  # the fold_in index of private_group_statistics's draw


def private_group_statistics(
    features: np.ndarray,
    *,
    groups: int,
    clip_norm: float,
    noise_multiplier: float,
    key: jax.Array,
    tracker: dpjax.PrivacyTracker,
    min_variance: float = 1e-3,
    chunk: int = 1024,
) -> GroupStatistics:
    """Each channel group's mean and variance over the data set, estimated with DP.

    Each example contributes the vector of its G group means and G group
    second moments (2G numbers), clipped to L2 norm `clip_norm` with
    :func:`dpjax.clip_and_sum`; the sum gets ONE Gaussian release
    (:func:`dpjax.gaussian_mechanism`, std `noise_multiplier * clip_norm`),
    recorded as `dpjax.GaussianRelease(noise_multiplier)` in `tracker` BEFORE
    anything is computed. Mean = noisy sum / N, variance = noisy second moment /
    N - mean**2 (floored at `min_variance`).

    Args:
      features: `(N, ..., C)` features (private data).
      groups: G, a divisor of C.
      clip_norm: the per-example clip norm, > 0 (the features' group moments
        should mostly lie within it: scale the features first).
      noise_multiplier: sigma, > 0.
      key: a fresh JAX key (e.g. `dpjax.secret_key()`); never reuse it. The draw
        comes from `fold_in(key, 2**32 - 2)`, which no step of a noise stage with
        the same key reaches, so passing the training key by mistake does not
        repeat a step's noise.
      tracker: the run's :class:`dpjax.PrivacyTracker`; the release is refused
        (:class:`dpjax.BudgetExceededError`) if it would exceed the budget.
      min_variance: the floor of the released variance, > 0.
      chunk: examples clipped per device call.

    Returns:
      The :class:`GroupStatistics`.

    Raises:
      ValueError: for invalid arguments.
      dpjax.BudgetExceededError: if the release does not fit the budget
        (nothing is released then).

    Example:
      >>> import numpy as np, jax, dpjax
      >>> from dpjax.features import private_group_statistics
      >>> x = np.random.default_rng(0).normal(0.5, 0.1, (1000, 4, 4, 6)).astype(np.float32)
      >>> tracker = dpjax.PrivacyTracker(target_epsilon=2.0, delta=1e-5)
      >>> stats = private_group_statistics(x, groups=3, clip_norm=2.0, noise_multiplier=5.0,
      ...                                  key=jax.random.key(0), tracker=tracker)
      >>> stats.mean.shape, tracker.releases
      ((3,), (GaussianRelease(noise_multiplier=5.0, count=1),))

    **Privacy:** under adding or removing one example, the clipped sum moves
    by at most `clip_norm` in L2, so the release is the Gaussian mechanism with
    noise multiplier sigma, exactly what the record says. N (the data set size)
    is treated as public, as dpjax does for the sampling rate q = B / N.
    Padded rows are masked out and contribute nothing; a row with a non-finite
    (or overflowing) moment contributes 0. The features must be
    data-independent functions of each example (e.g. scattering features).
    The release is recorded first: over the budget it is refused before the
    data are read (issue 17, section 5).

    References:
      Tramer & Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021 (data normalization with private
      statistics).
    """
    x = np.asarray(features, np.float32)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"features must be (N, ..., C) with N >= 1; got shape {x.shape}.")
    groups = _check_groups(x.shape[-1], groups)
    clip_norm = _validation.check_clip_norm(clip_norm, "clip_norm")
    sigma = _validation.check_noise_multiplier(noise_multiplier)
    _validation.check_positive_float(min_variance, "min_variance", "1e-3")
    chunk = _validation.check_positive_int(chunk, "chunk", "4096")
    if not isinstance(tracker, dpjax.PrivacyTracker):
        raise ValueError(f"tracker={tracker!r} must be a dpjax.PrivacyTracker.")

    key = _validation.check_key(key)

    tracker.record(dpjax.GaussianRelease(sigma))  # refused (if over budget) before any compute
    summed: dpjax.ClippedSum | None = None
    for i in range(0, len(x), chunk):
        rows = np.zeros((chunk, *x.shape[1:]), np.float32)  # one compiled shape
        part = x[i : i + chunk]
        rows[: len(part)] = part
        c = _clipped_moments(jnp.asarray(rows), jnp.arange(chunk) < len(part), groups, clip_norm)
        # Chunks hold disjoint examples: their sums add, the sensitivity stays clip_norm.
        summed = c if summed is None else dataclasses.replace(summed, sum=summed.sum + c.sum)
    assert summed is not None and summed.sensitivity == clip_norm
    # A stream of its own: fold_in(key, 2**32 - 2) is no training step's fold_in(key, t) (step
    # counters are int32), nor private_group_clip_norms's 2**32 - 1: passing the training key by
    # mistake cannot repeat step 0's noise.
    noise = dpjax.gaussian_mechanism(sigma, jax.random.fold_in(key, _STATISTICS_STREAM))
    release: Any = summed  # a ClippedSum: the noise stage reads its sensitivity
    noisy, _ = noise.update(release, noise.init(summed.sum))
    noisy = np.asarray(noisy, np.float64) / len(x)
    mean = noisy[:groups]
    variance = np.maximum(noisy[groups:] - mean**2, min_variance)
    return GroupStatistics(mean.astype(np.float32), variance.astype(np.float32), sigma)
