"""One-run auditing (Steinke, Nasr & Jagielski 2023): canaries in at random, one training run.

m canaries are each included with probability 1/2, independently, and the model
is trained ONCE. The auditor scores every canary, guesses "in" for the `k_in`
highest scores and "out" for the `k_out` lowest, abstains on the rest, and
counts the correct guesses. Under (eps, delta)-DP the number of correct
guesses is (up to a delta term) dominated by a Binomial(r, e^eps / (1 + e^eps)):
many more correct guesses than that refute the claim. :func:`one_run_p_value`
is that tail bound (the paper's Theorem 3.1 with its delta term, its
Appendix D procedure), :func:`one_run_epsilon_lower_bound` the largest eps it
refutes at the given confidence.

Canaries, host side: :func:`input_space_canaries` (mislabelled or
out-of-distribution examples to add to the training set) and
:func:`dirac_canaries` (white-box: gradient rows equal to C on one coordinate,
appended to the per-example gradients before the clipper by
:func:`with_dirac_canaries`), and their scores :func:`dirac_canary_scores`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from dpjax import _validation
from dpjax.audit._bounds import _check_confidence

PyTree = Any

DEFAULT_GUESS_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Shares of the canaries guessed on (half "in", half "out") tried by :func:`one_run_audit`."""


def _check_delta0(delta: float) -> float:
    if not (isinstance(delta, float | int) and 0.0 <= float(delta) < 1.0):
        raise ValueError(f"delta={delta!r} must lie in [0, 1); pass e.g. delta=1e-5.")
    return float(delta)


def _check_mrv(canaries: int, guesses: int, correct: int) -> tuple[int, int, int]:
    m = _validation.check_positive_int(canaries, "canaries", "1000")
    r = _validation.check_nonnegative_int(guesses, "guesses")
    v = _validation.check_nonnegative_int(correct, "correct")
    if not v <= r <= m:
        raise ValueError(
            f"need 0 <= correct <= guesses <= canaries, got correct={v}, guesses={r}, canaries={m}."
        )
    return m, r, v


def one_run_p_value(
    canaries: int, guesses: int, correct: int, epsilon: float, delta: float
) -> float:
    """P[>= `correct` right guesses out of `guesses`] under (eps, delta)-DP: the one-run tail bound.

    Host side. With ``p = e^eps / (1 + e^eps)`` it is
    ``P[Binomial(r, p) >= v] + 2 m delta max_{1<=i<=v} P[v - i <= Binomial(r, p) < v] / i``
    (Steinke et al. 2023, Theorem 3.1 with delta > 0, computed as in their Appendix D).

    Args:
      canaries: m, canaries each included with probability 1/2.
      guesses: r <= m, the canaries guessed on (not abstained).
      correct: v <= r, the correct guesses.
      epsilon: the eps of the null hypothesis, >= 0.
      delta: its delta, in [0, 1).

    Returns:
      The p-value, in [0, 1].

    Raises:
      ValueError: for inconsistent counts or a bad eps/delta.

    Example:
      >>> from dpjax.audit import one_run_p_value
      >>> round(one_run_p_value(100, 100, 50, 0.0, 0.0), 3)
      0.54
      >>> one_run_p_value(1000, 100, 100, 1.0, 0.0) < 1e-13
      True

    References:
      Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
      NeurIPS 2023, https://arxiv.org/abs/2305.08846.
    """
    m, r, v = _check_mrv(canaries, guesses, correct)
    if not (isinstance(epsilon, float | int) and 0.0 <= float(epsilon) < math.inf):
        raise ValueError(f"epsilon={epsilon!r} must be finite and >= 0.")
    delta = _check_delta0(delta)
    p = 1.0 / (1.0 + math.exp(-float(epsilon)))
    tail = float(scipy.stats.binom.sf(v - 1, r, p))  # P[Binomial(r, p) >= v]
    alpha = 0.0
    if delta > 0.0 and v > 0:
        i = np.arange(1, v + 1)
        partial = np.cumsum(scipy.stats.binom.pmf(v - i, r, p))  # P[v - i <= B < v]
        alpha = float(np.max(partial / i))
    return min(1.0, tail + alpha * delta * 2 * m)


def one_run_epsilon_lower_bound(
    canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest eps whose one-run p-value is below `1 - confidence`: a lower bound at `confidence`.

    Host side. Bisection on eps (the p-value decreases in eps) to 1e-4.

    Args:
      canaries: m.
      guesses: r.
      correct: v.
      delta: the delta of the claims tested, in [0, 1).
      confidence: in [0.5, 1).

    Returns:
      The lower bound (0.0 when even eps = 0 is not refuted).

    Raises:
      ValueError: for inconsistent counts or a bad delta/confidence.

    Example:
      >>> from dpjax.audit import one_run_epsilon_lower_bound
      >>> round(one_run_epsilon_lower_bound(1000, 100, 100, 0.0), 2)  # 100 of 100 right
      3.49
      >>> one_run_epsilon_lower_bound(1000, 100, 50, 1e-5)
      0.0
    """
    m, r, v = _check_mrv(canaries, guesses, correct)
    beta = 1.0 - _check_confidence(confidence)
    delta = _check_delta0(delta)

    def refuted(eps: float) -> bool:
        return one_run_p_value(m, r, v, eps, delta) < beta

    if not refuted(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while refuted(high):
        low, high = high, 2.0 * high
        if high > 1e3:
            return low
    while high - low > 1e-4:
        mid = 0.5 * (low + high)
        low, high = (mid, high) if refuted(mid) else (low, mid)
    return low


def one_run_best_bound(
    canaries: int,
    delta: float,
    confidence: float = 0.95,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> float:
    """The best bound one-run auditing can reach with m canaries: every guess right.

    Host side. The largest :func:`one_run_epsilon_lower_bound` with v = r over
    the guess counts :func:`one_run_audit` tries (at its Bonferroni-corrected
    level), i.e. what a perfect attack would prove. An audit's bound is to be
    read against it: with few canaries even a perfect attack proves little.

    Args:
      canaries: m.
      delta: as for the audit.
      confidence: as for the audit.
      guess_fractions: as for the audit.

    Returns:
      The bound a perfect attack would reach.

    Raises:
      ValueError: for a bad argument.

    Example:
      >>> from dpjax.audit import one_run_best_bound
      >>> 5.0 < one_run_best_bound(1000, 1e-5) < 7.0
      True
    """
    fractions = _check_fractions(guess_fractions)
    m = _validation.check_positive_int(canaries, "canaries", "1000")
    return _best_bound(m, _check_delta0(delta), _check_confidence(confidence), fractions)


@functools.lru_cache(maxsize=64)
def _best_bound(m: int, delta: float, confidence: float, fractions: tuple[float, ...]) -> float:
    level = 1.0 - (1.0 - confidence) / len(fractions)
    return max(
        one_run_epsilon_lower_bound(m, r, r, delta, level) for r in _guess_counts(m, fractions)
    )


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(f) for f in fractions)
    if not out or not all(0.0 < f <= 1.0 for f in out):
        raise ValueError(
            f"guess_fractions={fractions!r} must be a non-empty sequence of shares in (0, 1]; "
            f"pass e.g. {DEFAULT_GUESS_FRACTIONS}."
        )
    return out


def _guess_counts(m: int, fractions: tuple[float, ...]) -> list[int]:
    """Even guess counts r = 2k (k "in" and k "out"), at least 2, at most m."""
    return [max(2, min(m - m % 2, 2 * round(f * m / 2))) for f in fractions]


class OneRunAudit(NamedTuple):
    """The result of :func:`one_run_audit`.

    Attributes:
      epsilon: the eps lower bound at `confidence` (Bonferroni over the guess counts tried).
      canaries: m.
      guesses: r of the best guess count (r/2 "in", r/2 "out").
      correct: v, correct guesses at that count.
      best_possible: :func:`one_run_best_bound` for m: what perfect guesses would prove.
      delta: the delta of the claim tested.
      confidence: the confidence.
    """

    epsilon: float
    canaries: int
    guesses: int
    correct: int
    best_possible: float
    delta: float
    confidence: float


def one_run_audit(
    scores: np.typing.ArrayLike,
    included: np.typing.ArrayLike,
    delta: float,
    confidence: float = 0.95,
    *,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> OneRunAudit:
    """The one-run eps lower bound from canary scores (higher = more likely included).

    Host side. For each guess count r in `guess_fractions * m` (rounded to an
    even number), guesses "in" for the r/2 highest scores and "out" for the r/2
    lowest, counts the correct guesses v, and computes
    :func:`one_run_epsilon_lower_bound` at level `1 - (1 - confidence) / G`
    (Bonferroni over the G counts tried, so that picking the best one keeps the
    confidence). Returns the largest.

    Args:
      scores: one score per canary, `(m,)`, finite.
      included: booleans `(m,)`: which canaries were in the training data (each
        drawn independently with probability 1/2, before training).
      delta: the delta of the claim being tested, in [0, 1).
      confidence: in [0.5, 1).
      guess_fractions: the shares of m to guess on.

    Returns:
      A :class:`OneRunAudit`.

    Raises:
      ValueError: if the shapes differ, a score is not finite, or a parameter is bad.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import one_run_audit
      >>> rng = np.random.default_rng(0)
      >>> included = rng.random(1000) < 0.5
      >>> result = one_run_audit(included + rng.normal(0, 0.3, 1000), included, 1e-5)
      >>> 1.0 < result.epsilon <= result.best_possible
      True

    **Privacy:** the bound is valid only if each canary was included
    independently with probability 1/2 and the scores were computed without
    looking at `included`. A bound above the accountant's epsilon is a privacy
    bug (:func:`dpjax.audit.check_lower_bound`).

    References:
      Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
      NeurIPS 2023, https://arxiv.org/abs/2305.08846.
    """
    s = np.asarray(scores, np.float64).ravel()
    inc = np.asarray(included).ravel()
    if s.shape != inc.shape or s.size < 2:
        raise ValueError(
            f"scores {s.shape} and included {inc.shape} must be two (m,) arrays, m >= 2."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores has {int(np.sum(~np.isfinite(s)))} non-finite entries.")
    inc = inc.astype(bool)
    fractions = _check_fractions(guess_fractions)
    conf = _check_confidence(confidence)
    delta = _check_delta0(delta)
    level = 1.0 - (1.0 - conf) / len(fractions)
    m = s.size
    order = np.argsort(s, kind="stable")
    best = (0.0, _guess_counts(m, fractions)[0], 0)
    for r in _guess_counts(m, fractions):
        k = r // 2
        v = int(np.sum(inc[order[m - k :]])) + int(np.sum(~inc[order[:k]]))
        eps = one_run_epsilon_lower_bound(m, r, v, delta, level)
        if eps > best[0] or (best[0] == 0.0 and v / r > best[2] / max(best[1], 1)):
            best = (eps, r, v)
    return OneRunAudit(
        epsilon=best[0],
        canaries=m,
        guesses=best[1],
        correct=best[2],
        best_possible=one_run_best_bound(m, delta, conf, fractions),
        delta=delta,
        confidence=conf,
    )


# ------------------------------------------------------------------------- canaries


class InputCanaries(NamedTuple):
    """Input-space canaries: examples to add to the training set, each with probability 1/2.

    Attributes:
      x: `(m, ...)` canary inputs.
      y: `(m,)` int32 canary labels.
      included: `(m,)` bool, drawn independently with probability 1/2.
    """

    x: np.ndarray
    y: np.ndarray
    included: np.ndarray


def input_space_canaries(
    x: np.typing.ArrayLike,
    y: np.typing.ArrayLike,
    count: int,
    num_classes: int,
    *,
    kind: str = "mislabelled",
    seed: int,
) -> InputCanaries:
    """Canary examples and their random inclusion, for a one-run audit on any model.

    Host side. `"mislabelled"`: `count` examples drawn without replacement from
    `(x, y)` (a pool DISJOINT from the training data) with a label chosen
    uniformly among the wrong ones. `"ood"`: inputs of uniform noise in the
    range of `x`, with uniform random labels. Each canary is included
    independently with probability 1/2.

    Args:
      x: the pool of inputs, `(n, ...)`.
      y: its labels, `(n,)`.
      count: m, the number of canaries (<= n for "mislabelled").
      num_classes: the number of classes, >= 2.
      kind: `"mislabelled"` or `"ood"`.
      seed: seed of the canaries and of their inclusion. For an audit it must
        be unknown to whatever is audited; it never needs to be secret from
        the auditor.

    Returns:
      :class:`InputCanaries`.

    Raises:
      ValueError: for a bad kind, count or shape.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import input_space_canaries
      >>> x, y = np.zeros((10, 4), np.float32), np.arange(10) % 3
      >>> c = input_space_canaries(x, y, 6, 3, seed=0)
      >>> c.x.shape, c.y.shape, c.included.dtype
      ((6, 4), (6,), dtype('bool'))
    """
    xs, ys = np.asarray(x), np.asarray(y)
    if xs.ndim < 1 or ys.shape != (xs.shape[0],):
        raise ValueError(f"x {xs.shape} and y {ys.shape} must have the same first axis.")
    m = _validation.check_positive_int(count, "count", "500")
    classes = _validation.check_positive_int(num_classes, "num_classes", "10")
    if classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2.")
    rng = np.random.default_rng(_validation.check_seed(seed))
    if kind == "mislabelled":
        if m > len(xs):
            raise ValueError(f"count={m} exceeds the pool of {len(xs)} examples; pass fewer.")
        pick = rng.choice(len(xs), size=m, replace=False)
        cx = xs[pick]
        shift = rng.integers(1, classes, size=m)
        cy = (ys[pick].astype(np.int64) + shift) % classes
    elif kind == "ood":
        low, high = float(np.min(xs)), float(np.max(xs))
        cx = rng.uniform(low, high, size=(m, *xs.shape[1:])).astype(xs.dtype)
        cy = rng.integers(0, classes, size=m)
    else:
        raise ValueError(f"kind={kind!r} is not a canary kind; pass 'mislabelled' or 'ood'.")
    included = rng.random(m) < 0.5
    return InputCanaries(x=cx, y=cy.astype(np.int32), included=included)


class DiracCanaries(NamedTuple):
    """White-box gradient canaries: canary i's gradient is `l2_norm` on flat coordinate i.

    Attributes:
      coordinates: `(m,)` int, distinct flat indices into the parameters
        (in `jax.tree.leaves` order, each leaf raveled).
      included: `(m,)` bool, drawn independently with probability 1/2.
      l2_norm: the clip norm C: each canary row has norm exactly C.
    """

    coordinates: np.ndarray
    included: np.ndarray
    l2_norm: float


def dirac_canaries(params: PyTree, count: int, l2_norm: float, *, seed: int) -> DiracCanaries:
    """Draws m distinct coordinates of the parameters and the canaries' random inclusion.

    Host side.

    Args:
      params: the model's parameters (only shapes are read).
      count: m <= the number of parameters.
      l2_norm: the clip norm C of the audited run.
      seed: seed of the coordinates and the inclusion (unknown to what is audited).

    Returns:
      :class:`DiracCanaries`.

    Raises:
      ValueError: if m exceeds the number of parameters, or a bad value.

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.audit import dirac_canaries
      >>> c = dirac_canaries({"w": jnp.zeros((4, 5))}, 8, 1.0, seed=0)
      >>> len(set(c.coordinates.tolist())), c.included.shape
      (8, (8,))
    """
    total = sum(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params))
    m = _validation.check_positive_int(count, "count", "1000")
    if m > total:
        raise ValueError(f"count={m} exceeds the {total} parameters; pass count <= {total}.")
    c = _validation.check_clip_norm(l2_norm)
    rng = np.random.default_rng(_validation.check_seed(seed))
    coordinates = rng.choice(total, size=m, replace=False)
    return DiracCanaries(coordinates=coordinates, included=rng.random(m) < 0.5, l2_norm=c)


def _flatten(tree: PyTree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def with_dirac_canaries(
    grads: PyTree, mask: jax.Array, canaries: DiracCanaries, sampled: jax.typing.ArrayLike
) -> tuple[PyTree, jax.Array]:
    """Appends the sampled included canaries' gradient rows to a batch of per-example gradients.

    Device side, jittable. Row i of the appended block is `C * e_{coordinates[i]}`
    (norm C: the clipper keeps it whole) and is masked in when canary i is
    included AND sampled this step. The result goes to the clipper unchanged
    (e.g. `dp_sgd`'s update with `mask=`): the canaries are clipped, summed and
    noised like any example.

    Args:
      grads: per-example gradients, leaves `(B, ...)`.
      mask: `(B,)` bool.
      canaries: :class:`DiracCanaries` matching the parameters' structure.
      sampled: `(m,)` bool, whether each canary is in this step's Poisson batch
        (draw it as for any example, e.g. with a :class:`dpjax.PoissonSampler`
        over the canaries at the same rate).

    Returns:
      `(grads, mask)` with `m` more rows.

    Raises:
      ValueError: when traced, if `sampled` is not `(m,)`.

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.audit import dirac_canaries, with_dirac_canaries
      >>> params = {"w": jnp.zeros(6)}
      >>> c = dirac_canaries(params, 3, 1.0, seed=0)
      >>> g, mask = with_dirac_canaries({"w": jnp.zeros((2, 6))}, jnp.ones(2, bool), c,
      ...                               jnp.ones(3, bool))
      >>> g["w"].shape, int(mask.sum()) == 2 + int(c.included.sum())
      ((5, 6), True)

    **Privacy:** a canary is an example like any other: it must be sampled
    with the same rate q, and its row must reach the clipper (not the sum).
    """
    m = len(canaries.coordinates)
    on = jnp.asarray(sampled, bool)
    if on.shape != (m,):
        raise ValueError(f"sampled has shape {on.shape}; pass ({m},) booleans.")
    leaves, treedef = jax.tree.flatten(grads)
    sizes = [math.prod(jnp.shape(x)[1:]) for x in leaves]
    rows = jnp.zeros((m, sum(sizes)), jnp.float32)
    rows = rows.at[jnp.arange(m), jnp.asarray(canaries.coordinates)].set(canaries.l2_norm)
    splits = np.cumsum(sizes)[:-1].tolist()
    blocks = jnp.split(rows, splits, axis=1)
    new = [
        jnp.concatenate([g, b.reshape((m, *jnp.shape(g)[1:])).astype(g.dtype)])
        for g, b in zip(leaves, blocks, strict=True)
    ]
    new_mask = jnp.concatenate([jnp.asarray(mask, bool), on & jnp.asarray(canaries.included)])
    return jax.tree.unflatten(treedef, new), new_mask


def dirac_canary_scores(
    params_before: PyTree, params_after: PyTree, canaries: DiracCanaries
) -> np.ndarray:
    """Each canary's score: how far training moved its coordinate against its gradient.

    Host side. `(before - after)[coordinates]`: with SGD, the sum over steps of
    the update along the canary's gradient direction (the paper's white-box
    score), larger when the canary was in.

    Args:
      params_before: parameters before training.
      params_after: parameters after training.
      canaries: :class:`DiracCanaries`.

    Returns:
      `(m,)` float64 scores.

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.audit import dirac_canaries, dirac_canary_scores
      >>> c = dirac_canaries({"w": jnp.zeros(4)}, 2, 1.0, seed=0)
      >>> dirac_canary_scores({"w": jnp.zeros(4)}, {"w": -jnp.ones(4)}, c).tolist()
      [1.0, 1.0]
    """
    moved = np.asarray(_flatten(params_before) - _flatten(params_after), np.float64)
    return moved[np.asarray(canaries.coordinates)]
