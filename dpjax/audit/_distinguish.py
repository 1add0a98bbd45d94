"""A distinguishing audit of the mechanism itself: many runs of one DP step on neighbouring batches.

Two batches of per-example gradients differ in one example, a worst-case
canary: a Dirac gradient far above the clip norm on one coordinate. The step
under audit (clip -> sum -> noise -> mean) runs many times on each, vectorized
over PRNG keys (`jax.vmap`); the projection of each release on the canary's
direction is the attack's score, and the best threshold test on those scores
gives an epsilon lower bound (:func:`dpjax.audit.threshold_bound`). For a
correct step the bound stays below the accountant's epsilon and comes close to
it; noise that is too small, noise divided among devices or microbatches, or a
missed clip push it above, and :func:`dpjax.audit.check_lower_bound` says
"privacy bug".
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import _validation
from dpjax.audit._bounds import ThresholdBound, threshold_bound

PyTree = Any
Mechanism = Callable[[jax.Array, jax.Array, jax.Array], PyTree]
"""`mechanism(grads (B, d), mask (B,), key) -> release`: one DP step on one batch."""


class NeighbouringBatches(NamedTuple):
    """Two batches of per-example gradients that differ in one example (add/remove).

    Attributes:
      grads_out: `(B, d)` float32, D: the canary's row is a masked-out zero row.
      mask_out: `(B,)` bool.
      grads_in: `(B, d)` float32, D' = D plus the canary.
      mask_in: `(B,)` bool.
      direction: `(d,)` unit vector: the canary's direction (the attack projects on it).
    """

    grads_out: jax.Array
    mask_out: jax.Array
    grads_in: jax.Array
    mask_in: jax.Array
    direction: jax.Array


def dirac_canary_batches(
    dim: int, batch_size: int, *, canary_norm: float = 100.0, seed: int = 0
) -> NeighbouringBatches:
    """Neighbouring batches whose canary is a Dirac gradient of norm `canary_norm` on coordinate 0.

    Host side. The other `batch_size - 1` rows are Gaussian gradients of norm
    about 2 (some clipped at C = 1), the same in both batches; the canary sits
    in the last row, masked out of D. A canary far above the clip norm is the
    worst case for add/remove: after clipping it moves the sum by exactly C,
    and a step that forgets to clip moves it by `canary_norm`.

    Args:
      dim: d, gradient dimension, >= 1.
      batch_size: B, >= 1 (the canary included).
      canary_norm: the canary's norm before clipping, > 0.
      seed: seed of the background rows (public).

    Returns:
      :class:`NeighbouringBatches`.

    Raises:
      ValueError: for a bad size or norm.

    Example:
      >>> from dpjax.audit import dirac_canary_batches
      >>> b = dirac_canary_batches(4, 3)
      >>> b.grads_in.shape, int(b.mask_out.sum()), int(b.mask_in.sum())
      ((3, 4), 2, 3)
    """
    d = _validation.check_positive_int(dim, "dim", "8")
    n = _validation.check_positive_int(batch_size, "batch_size", "8")
    norm = _validation.check_positive_float(canary_norm, "canary_norm", "100.0")
    rng = np.random.default_rng(_validation.check_seed(seed))
    background = rng.normal(size=(n - 1, d)) * (2.0 / np.sqrt(d))
    canary = np.zeros((1, d))
    canary[0, 0] = norm
    direction = np.zeros(d, np.float32)
    direction[0] = 1.0
    grads = jnp.asarray(np.vstack([background, canary]), jnp.float32)
    mask_in = jnp.ones(n, bool)
    return NeighbouringBatches(
        grads_out=grads.at[-1].set(0.0),
        mask_out=mask_in.at[-1].set(False),
        grads_in=grads,
        mask_in=mask_in,
        direction=jnp.asarray(direction),
    )


def dp_step(l2_norm: float, noise_multiplier: float, expected_batch_size: float) -> Mechanism:
    """dpjax's own DP step as a mechanism to audit: `dp_aggregate` (clip -> noise -> mean).

    Device side, jittable, vmappable over the key.

    Args:
      l2_norm: the clip norm C.
      noise_multiplier: sigma.
      expected_batch_size: the divisor of the noisy sum.

    Returns:
      `mechanism(grads, mask, key)`: `dpjax.dp_aggregate(C, sigma, n, key)` applied once.

    Raises:
      ValueError: for invalid arguments (checked here, by building the step once).

    Example:
      >>> import jax
      >>> from dpjax.audit import dirac_canary_batches, dp_step
      >>> step, b = dp_step(1.0, 1.0, 4), dirac_canary_batches(3, 4)
      >>> step(b.grads_in, b.mask_in, jax.random.key(0)).shape
      (3,)

    **Privacy:** exactly the release of one DP-SGD step before the optimizer:
    the Gaussian mechanism with noise multiplier sigma on a sum of sensitivity C.
    """
    dpjax.dp_aggregate(l2_norm, noise_multiplier, expected_batch_size, key=jax.random.key(0))

    def mechanism(grads: jax.Array, mask: jax.Array, key: jax.Array) -> PyTree:
        tx = dpjax.dp_aggregate(l2_norm, noise_multiplier, expected_batch_size, key=key)
        release, _ = tx.update(grads, tx.init(grads), mask=mask)
        return release

    return mechanism


class DistinguishingAudit(NamedTuple):
    """The result of :func:`distinguishing_audit`.

    Attributes:
      epsilon: the eps lower bound at `bound.confidence`.
      bound: the :class:`dpjax.audit.ThresholdBound` behind it.
      runs: runs of the mechanism on EACH batch.
      seconds: wall time of the runs and the bound.
      delta: the delta of the claim tested.
    """

    epsilon: float
    bound: ThresholdBound
    runs: int
    seconds: float
    delta: float


def _flat(tree: PyTree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def distinguishing_audit(
    mechanism: Mechanism,
    batches: NeighbouringBatches,
    *,
    runs: int,
    delta: float,
    key: jax.Array,
    confidence: float = 0.95,
    chunk: int = 1 << 16,
) -> DistinguishingAudit:
    """Runs `mechanism` `runs` times on each neighbouring batch and bounds its epsilon from below.

    Host side driving device work: chunks of `chunk` keys are run with
    `jax.jit(jax.vmap(...))`; each release is projected on
    `batches.direction`, and :func:`dpjax.audit.threshold_bound` (threshold
    chosen on half the runs, Clopper-Pearson on the other half) turns the two
    score sets into the bound.

    Args:
      mechanism: `mechanism(grads, mask, key) -> release`, e.g. :func:`dp_step`.
      batches: :class:`NeighbouringBatches`, e.g. :func:`dirac_canary_batches`.
      runs: runs per batch, >= 8.
      delta: the delta of the claim tested (the accountant's).
      key: a PRNG key for the runs (an audit's noise need not be secret).
      confidence: in [0.5, 1).
      chunk: runs per compiled call (memory vs. speed).

    Returns:
      :class:`DistinguishingAudit`.

    Raises:
      ValueError: for a bad argument.

    Example:
      >>> import jax
      >>> from dpjax.audit import dirac_canary_batches, distinguishing_audit, dp_step
      >>> result = distinguishing_audit(dp_step(1.0, 2.0, 8), dirac_canary_batches(2, 8),
      ...                               runs=20_000, delta=1e-5, key=jax.random.key(0))
      >>> 0.2 < result.epsilon < 2.0
      True

    **Privacy:** the bound holds (at `confidence`) for the mechanism as run,
    whatever its implementation: compare it with the accountant's epsilon for
    one release at the same delta (:func:`dpjax.audit.check_lower_bound`).

    References:
      Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine
      Learning: How Private is Private SGD?", NeurIPS 2020.
      Nasr et al., "Adversary Instantiation: Lower Bounds for Differentially
      Private Machine Learning", IEEE S&P 2021.
    """
    n_runs = _validation.check_positive_int(runs, "runs", "1_000_000")
    if n_runs < 8:
        raise ValueError(f"runs={runs} is too few; pass runs >= 8 (about 10**6 for a tight bound).")
    size = min(_validation.check_positive_int(chunk, "chunk", "65536"), n_runs)
    key = _validation.check_key(key)
    direction = jnp.asarray(batches.direction, jnp.float32)

    @jax.jit
    def scores(keys: jax.Array, grads: jax.Array, mask: jax.Array) -> jax.Array:
        return jax.vmap(lambda k: jnp.dot(_flat(mechanism(grads, mask, k)), direction))(keys)

    start = time.perf_counter()
    out_scores, in_scores = [], []
    for which, grads, mask, sink in (
        (0, batches.grads_out, batches.mask_out, out_scores),
        (1, batches.grads_in, batches.mask_in, in_scores),
    ):
        side = jax.random.fold_in(key, which)
        for i, first in enumerate(range(0, n_runs, size)):
            keys = jax.random.split(jax.random.fold_in(side, i), size)
            sink.append(np.asarray(scores(keys, grads, mask))[: min(size, n_runs - first)])
    bound = threshold_bound(
        np.concatenate(out_scores), np.concatenate(in_scores), delta, confidence
    )
    return DistinguishingAudit(
        epsilon=bound.epsilon,
        bound=bound,
        runs=n_runs,
        seconds=time.perf_counter() - start,
        delta=float(delta),
    )
