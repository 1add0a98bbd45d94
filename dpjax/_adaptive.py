"""Adaptive clipping: the clip norm follows a quantile of the per-example norms (device side).

Andrew, Thakkar, McMahan, Ramaswamy (2021): each step also releases a noisy
count of the examples whose norm was at most the current clip norm C_t, and
moves C_t geometrically towards the target quantile. Both releases form ONE
Gaussian mechanism here: the count of unclipped examples (centred, each example
contributes +-1/2) is scaled by `r` and appended to the normalized clipped sum,
so the pair has L2 sensitivity `sqrt(1 + r**2 / 4)` and gets noise
`sigma * sqrt(1 + r**2 / 4)` from :func:`dpjax.gaussian_mechanism` in one draw.
`r` is chosen so that the count's noise std is the requested
`count_noise_multiplier`; the gradient's effective noise multiplier is then
`(sigma**-2 - (2 * count_noise_multiplier)**-2) ** -0.5`, as in the paper. The
step is accounted as `PoissonGaussianSteps(sigma, q)`: the extra release is
inside sigma, never ignored.

References:
  Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with
  Adaptive Clipping", NeurIPS 2021, https://arxiv.org/abs/1905.03871.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import _clipping, _noise, _releases, _validation

PyTree = Any


class AdaptiveClipState(NamedTuple):
    """State of :func:`adaptive_dp_aggregate`.

    Attributes:
      l2_norm: the clip norm the next step uses (public: a function of the
        initial norm and the released noisy counts).
      unclipped_fraction: the last released noisy fraction of unclipped examples.
      noise: the noise stage's state.
      stats: the last step's :class:`dpjax.ClipStats` (NOT private).
    """

    l2_norm: jax.Array
    unclipped_fraction: jax.Array
    noise: Any
    stats: _clipping.ClipStats


def count_scale(noise_multiplier: float, count_noise_multiplier: float) -> float:
    """`r`: the count's weight that gives it noise std `count_noise_multiplier` (module doc)."""
    ratio = noise_multiplier / (2.0 * count_noise_multiplier)
    return (noise_multiplier / count_noise_multiplier) / math.sqrt(1.0 - ratio * ratio)


def effective_noise_multiplier(noise_multiplier: float, count_noise_multiplier: float) -> float:
    """The gradient's own noise multiplier: `(sigma**-2 - (2 sigma_b)**-2) ** -0.5` (>= sigma)."""
    return (noise_multiplier**-2 - (2.0 * count_noise_multiplier) ** -2) ** -0.5


def adaptive_dp_aggregate(
    initial_l2_norm: float,
    noise_multiplier: Any,
    expected_batch_size: float,
    key: jax.Array,
    *,
    target_quantile: float = 0.5,
    learning_rate: float = 0.2,
    count_noise_multiplier: float | None = None,
) -> optax.GradientTransformationExtraArgs:
    """DP aggregation with a clip norm that tracks a quantile of the per-example norms.

    Per-example gradients (and `mask=`) in, the noisy mean out, as
    :func:`dpjax.dp_aggregate`; chain an optimizer after it. Step t clips at
    C_t, releases the noisy sum and a noisy count of unclipped examples as ONE
    Gaussian mechanism (module docstring), then sets
    `C_{t+1} = C_t * exp(-learning_rate * (b_t - target_quantile))` with `b_t`
    the noisy unclipped fraction.

    Args:
      initial_l2_norm: C_0, finite and >= 1e-6.
      noise_multiplier: sigma of the joint release (what the accountant is
        told), or a :class:`dpjax.NoiseSchedule`.
      expected_batch_size: `q * N`.
      key: the noise key (:func:`dpjax.secret_key`).
      target_quantile: the fraction of examples to leave unclipped, in (0, 1).
      learning_rate: the geometric step eta, > 0 (0.2 in the paper).
      count_noise_multiplier: std of the noise on the count of unclipped
        examples, > sigma / 2; default `expected_batch_size / 20` (the paper's).

    Returns:
      An `optax.GradientTransformationExtraArgs` with :class:`AdaptiveClipState`.

    Raises:
      ValueError: for invalid arguments, or a count noise too small for sigma
        (the count would need more than the whole budget).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.adaptive_dp_aggregate(1.0, 1.0, 8, key=jax.random.key(0),
      ...                                  count_noise_multiplier=2.0)
      >>> state = tx.init(jnp.zeros(3))
      >>> upd, state = tx.update(jnp.ones((8, 3)) * 5, state, mask=jnp.ones(8, bool))
      >>> float(state.l2_norm) > 1.0  # every norm was above C: C grows
      True

    **Privacy:** each example contributes at most C_t to the sum and +-1/2 to
    the count; the joint noise makes one step exactly a Gaussian mechanism with
    noise multiplier sigma on a Poisson sample: record
    `PoissonGaussianSteps(sigma, q)` per step. C_t is a function of released
    values only.

    References:
      Andrew et al., "Differentially Private Learning with Adaptive Clipping",
      NeurIPS 2021.
    """
    c0 = _validation.check_clip_norm(initial_l2_norm, "initial_l2_norm")
    n = _validation.check_positive_float(expected_batch_size, "expected_batch_size", "256")
    if not (isinstance(target_quantile, (int, float)) and 0.0 < target_quantile < 1.0):
        raise ValueError(f"target_quantile={target_quantile!r} must lie in (0, 1); e.g. 0.5.")
    eta = _validation.check_positive_float(learning_rate, "learning_rate", "0.2")
    sigma_b = n / 20.0 if count_noise_multiplier is None else count_noise_multiplier
    sigma_b = _validation.check_positive_float(sigma_b, "count_noise_multiplier", "n / 20")
    if not isinstance(noise_multiplier, (int, float)) and not hasattr(noise_multiplier, "phases"):
        raise ValueError(
            f"noise_multiplier={noise_multiplier!r}: adaptive clipping takes a number or a "
            "dpjax.NoiseSchedule (its count scale is fixed from the largest sigma)."
        )
    mechanism = _noise.gaussian_mechanism(noise_multiplier, key)
    # The largest sigma the schedule (or constant) reaches bounds r's domain.
    phases = getattr(noise_multiplier, "phases", None)
    top = max(s for s, _ in phases) if phases else float(noise_multiplier)
    if sigma_b <= top / 2.0:
        raise ValueError(
            f"count_noise_multiplier={sigma_b!r} must exceed noise_multiplier / 2 = {top / 2:g}: "
            "a count that precise would need more than the whole step's budget. Pass a larger "
            "count_noise_multiplier (e.g. expected_batch_size / 20)."
        )
    # r for a constant sigma; for a schedule the count's noise is at most sigma_b (r from the top).
    r = count_scale(top, sigma_b)
    joint = math.sqrt(1.0 + r * r / 4.0)

    def init_fn(params: PyTree) -> AdaptiveClipState:
        zero = jnp.zeros((), jnp.int32)
        return AdaptiveClipState(
            jnp.asarray(c0, jnp.float32),
            jnp.asarray(target_quantile, jnp.float32),
            mechanism.init(params),
            _clipping.ClipStats(zero, zero),
        )

    def update_fn(updates, state, params=None, *, mask=None, support=None, **extra_args):
        del params, extra_args
        if support is not None:
            raise ValueError(
                "adaptive_dp_aggregate does not restrict gradients to a support; use "
                "dpjax.private_topk around dpjax.dp_sgd (a fixed or scheduled clip norm)."
            )
        c = state.l2_norm
        scaled = jax.tree.map(lambda g: g / c.astype(g.dtype), updates)
        clipped = _clipping.clip_and_sum_unchecked(scaled, 1.0, mask)
        real = jnp.sum(jnp.asarray(mask, bool)).astype(jnp.float32)
        kept = real - clipped.stats.num_nonfinite.astype(jnp.float32)
        unclipped = kept - clipped.stats.num_clipped.astype(jnp.float32)
        centred = unclipped - real / 2.0  # each real example: +1/2 unclipped, -1/2 otherwise
        both: Any = _clipping.ClippedSum(
            {"grad": clipped.sum, "count": r * centred}, clipped.stats, joint
        )
        noisy: Any
        noisy, noise_state = mechanism.update(both, state.noise)
        fraction = noisy["count"] / r / n + 0.5
        mean = jax.tree.map(lambda s: s * c / n, noisy["grad"])
        new_c = jnp.clip(c * jnp.exp(-eta * (fraction - target_quantile)), 1e-6, 1e6)
        return mean, AdaptiveClipState(new_c, jnp.asarray(fraction), noise_state, clipped.stats)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_GROUP_NORMS_STREAM = 2**32 - 1  # the fold_in index of private_group_clip_norms's draw


def private_group_clip_norms(
    group_norms: dict[str, Any],
    labels: Any,
    *,
    quantile: float,
    noise_multiplier: float,
    key: jax.Array,
    tracker: Any,
    candidates: Any = None,
) -> _clipping.GroupClipNorms:
    """Per-group clip norms at a privately estimated quantile of each group's norms.

    Each example falls in one bin of a geometric grid of candidate norms per
    group (a non-finite or larger norm in the last bin); the histograms of all
    G groups are released at once with Gaussian noise (each example changes
    one count per group: L2 sensitivity `sqrt(G)`), and group g's clip norm is
    the smallest candidate whose noisy CDF reaches `quantile`. The release is
    recorded with `tracker` (a :class:`dpjax.GaussianRelease`) BEFORE it is
    computed, and refused if it would exceed the budget.

    Args:
      group_norms: `{label: (N,) per-example norms of that group}` (e.g. from
        :func:`dpjax.per_example_grads` at the initial parameters), over the
        whole data set (no subsampling is assumed).
      labels: the parameter labels, as for :class:`dpjax.GroupClipNorms`.
      quantile: the target fraction of unclipped examples, in (0, 1).
      noise_multiplier: sigma of the histogram release.
      key: a noise key (:func:`dpjax.secret_key`), not used for anything else; the
        draw comes from `fold_in(key, 2**32 - 1)`, which no step of a noise stage
        with the same key reaches, so reusing the training key by mistake does not
        repeat a step's noise.
      tracker: the run's :class:`dpjax.PrivacyTracker`.
      candidates: increasing candidate norms; default 64 points from 1e-3 to 1e3.

    Returns:
      A :class:`dpjax.GroupClipNorms`.

    Raises:
      ValueError: for invalid arguments; :class:`dpjax.BudgetExceededError`
        if the release does not fit the budget.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tracker = dpjax.PrivacyTracker(10.0, 1e-5)
      >>> norms = {"body": jnp.linspace(0.1, 2, 1000), "head": jnp.linspace(1, 20, 1000)}
      >>> clip = dpjax.private_group_clip_norms(norms, {"w": "body", "b": "head"}, quantile=0.5,
      ...     noise_multiplier=5.0, key=jax.random.key(0), tracker=tracker)
      >>> 0.9 < clip.norms["body"] < 1.5, 9 < clip.norms["head"] < 14  # median, grid step 1.25x
      (True, True)

    **Privacy:** one Gaussian mechanism with noise multiplier sigma on the
    histograms (sensitivity sqrt(G) under adding or removing one example),
    accounted as `GaussianRelease(sigma)`; the clip norms are post-processing.

    References:
      Andrew et al., "Differentially Private Learning with Adaptive Clipping",
      NeurIPS 2021 (private quantiles for clipping).
    """
    if not isinstance(group_norms, dict) or not group_norms:
        raise ValueError("group_norms must be a non-empty dict {label: (N,) norms}.")
    if not (isinstance(quantile, (int, float)) and 0.0 < quantile < 1.0):
        raise ValueError(f"quantile={quantile!r} must lie in (0, 1); e.g. 0.5.")
    sigma = _validation.check_noise_multiplier(noise_multiplier)
    key = _validation.check_key(key)
    grid = jnp.geomspace(1e-3, 1e3, 64) if candidates is None else jnp.asarray(candidates)
    if grid.ndim != 1 or grid.size < 2 or not bool(jnp.all(jnp.diff(grid) > 0)):
        raise ValueError("candidates must be an increasing 1-D array of at least 2 norms.")
    release = _releases.GaussianRelease(sigma)
    tracker.record(release)  # checked (and refused) before anything is computed
    groups = sorted(group_norms)
    hists = []
    for g in groups:
        norms = jnp.asarray(group_norms[g], jnp.float32).reshape(-1)
        finite = jnp.where(jnp.isfinite(norms), norms, jnp.inf)
        bins = jnp.minimum(jnp.searchsorted(grid, finite, side="left"), grid.size - 1)
        hists.append(jnp.zeros(grid.size, jnp.float32).at[bins].add(1.0))
    # A stream of its own: fold_in(key, 2**32 - 1) is no training step's fold_in(key, t) (step
    # counters are int32), so passing the training key by mistake cannot repeat step 0's noise.
    stream = jax.random.fold_in(key, _GROUP_NORMS_STREAM)
    noise: Any = _noise.add_gaussian_noise(sigma * math.sqrt(len(groups)), stream)
    noisy: Any
    noisy, _ = noise.update(hists, noise.init(hists))
    chosen = {}
    for g, hist in zip(groups, noisy, strict=True):
        cdf = jnp.cumsum(hist) / jnp.maximum(jnp.sum(hist), 1.0)
        index = int(jnp.argmax(cdf >= quantile)) if bool(jnp.any(cdf >= quantile)) else -1
        chosen[g] = float(grid[index])
    return _clipping.GroupClipNorms(chosen, labels)
