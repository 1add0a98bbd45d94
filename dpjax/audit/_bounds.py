"""Epsilon lower bounds from an attack's error rates, with Clopper-Pearson intervals (host side).

A mechanism M is (eps, delta)-DP only if every test that tells M(D) from M(D')
has ``TPR <= e^eps * FPR + delta`` and ``1 - FPR <= e^eps * (1 - TPR) + delta``.
An attack that reaches some (FPR, TPR) therefore proves
``eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR)))``.
Measured rates are estimates: the bound here uses the Clopper-Pearson upper
limit of FPR and lower limit of TPR, each one-sided at ``(1 - confidence) / 2``,
so that it holds with probability at least `confidence`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.stats

from dpjax import _validation


class ThresholdBound(NamedTuple):
    """An epsilon lower bound from one threshold test on held-out scores.

    Attributes:
      epsilon: the lower bound (0.0 when the test proves nothing).
      threshold: a score `>= threshold` is guessed "in" (after `direction`).
      direction: +1 if high scores mean "in", -1 if low scores do.
      false_positives: "out" scores guessed "in", on the evaluation half.
      negatives: "out" scores on the evaluation half.
      true_positives: "in" scores guessed "in", on the evaluation half.
      positives: "in" scores on the evaluation half.
      confidence: the confidence of `epsilon`.
    """

    epsilon: float
    threshold: float
    direction: int
    false_positives: int
    negatives: int
    true_positives: int
    positives: int
    confidence: float


def _check_confidence(confidence: float) -> float:
    if not (isinstance(confidence, float | int) and 0.5 <= float(confidence) < 1.0):
        raise ValueError(
            f"confidence={confidence!r} must lie in [0.5, 1); pass e.g. confidence=0.95."
        )
    return float(confidence)


def _check_counts(successes: int, trials: int, s_name: str, t_name: str) -> tuple[int, int]:
    trials = _validation.check_positive_int(trials, t_name, "1000")
    successes = _validation.check_nonnegative_int(successes, s_name)
    if successes > trials:
        raise ValueError(
            f"{s_name}={successes} exceeds {t_name}={trials}; a count cannot exceed its trials."
        )
    return successes, trials


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion.

    Host side. Each side has error probability `(1 - confidence) / 2`.

    Args:
      successes: k, in [0, trials].
      trials: n >= 1.
      confidence: in [0.5, 1), e.g. 0.95.

    Returns:
      `(low, high)` with `P[low <= p <= high] >= confidence`.

    Raises:
      ValueError: for counts out of range or a bad confidence.

    Example:
      >>> from dpjax.audit import clopper_pearson
      >>> low, high = clopper_pearson(50, 100)
      >>> round(low, 3), round(high, 3)
      (0.398, 0.602)
      >>> clopper_pearson(0, 10)[0]
      0.0

    References:
      Clopper & Pearson, "The use of confidence or fiducial limits illustrated
      in the case of the binomial", Biometrika 1934.
    """
    k, n = _check_counts(successes, trials, "successes", "trials")
    alpha = 1.0 - _check_confidence(confidence)
    low = 0.0 if k == 0 else float(scipy.stats.beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(scipy.stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high


def epsilon_from_rates(fpr: float, tpr: float, delta: float) -> float:
    """The epsilon that a test with these exact rates proves, in both directions.

    Host side. `max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR)), 0)`,
    with `log(x / 0) = inf` for `x > 0`.

    Args:
      fpr: false positive rate in [0, 1].
      tpr: true positive rate in [0, 1].
      delta: the delta of the claim, in [0, 1).

    Returns:
      The lower bound on epsilon (>= 0, possibly `inf`).

    Raises:
      ValueError: for a rate outside [0, 1] or delta outside [0, 1).

    Example:
      >>> from dpjax.audit import epsilon_from_rates
      >>> round(epsilon_from_rates(0.01, 0.05, 0.0), 4)  # log 5
      1.6094
      >>> epsilon_from_rates(0.3, 0.3, 1e-5)
      0.0
    """
    for name, value in (("fpr", fpr), ("tpr", tpr)):
        if not (isinstance(value, float | int) and 0.0 <= float(value) <= 1.0):
            raise ValueError(f"{name}={value!r} must be a rate in [0, 1].")
    if not (isinstance(delta, float | int) and 0.0 <= float(delta) < 1.0):
        raise ValueError(f"delta={delta!r} must lie in [0, 1); pass e.g. delta=1e-5.")

    def log_ratio(numerator: float, denominator: float) -> float:
        if numerator <= 0.0:
            return 0.0
        return math.inf if denominator <= 0.0 else math.log(numerator / denominator)

    forward = log_ratio(tpr - delta, fpr)
    backward = log_ratio(1.0 - fpr - delta, 1.0 - tpr)
    return max(0.0, forward, backward)


def epsilon_lower_bound(
    false_positives: int,
    negatives: int,
    true_positives: int,
    positives: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """An epsilon lower bound that holds with probability `confidence`, from attack counts.

    Host side. Takes the Clopper-Pearson upper limit of FPR and lower limit of
    TPR, each one-sided at `(1 - confidence) / 2` (so both hold together with
    probability >= `confidence`), and returns :func:`epsilon_from_rates` of
    them. Both bounds are monotone in the right direction, so the result is a
    valid lower bound whenever both limits hold.

    Args:
      false_positives: "out" trials the attack called "in".
      negatives: "out" trials, >= 1.
      true_positives: "in" trials the attack called "in".
      positives: "in" trials, >= 1.
      delta: the delta of the claim being tested, in [0, 1).
      confidence: in [0.5, 1).

    Returns:
      The bound, >= 0.

    Raises:
      ValueError: for inconsistent counts or a bad delta/confidence.

    Example:
      >>> from dpjax.audit import epsilon_lower_bound
      >>> round(epsilon_lower_bound(100, 100_000, 2_000, 100_000, 1e-5), 2)
      2.76
      >>> epsilon_lower_bound(500, 1000, 500, 1000, 1e-5)
      0.0

    **Privacy:** an audit, not a guarantee: a bound above the accountant's
    epsilon (at the same delta) proves a bug; a bound below it proves nothing
    about the guarantee. The thresholds must be chosen on data other than the
    counts (see :func:`threshold_bound`), or the confidence is not kept.

    References:
      Jagielski, Ullman & Oprea, "Auditing Differentially Private Machine
      Learning: How Private is Private SGD?", NeurIPS 2020.
      Kairouz, Oh & Viswanath, "The Composition Theorem for Differential
      Privacy", ICML 2015 (the hypothesis-testing view).
    """
    fp, n_neg = _check_counts(false_positives, negatives, "false_positives", "negatives")
    tp, n_pos = _check_counts(true_positives, positives, "true_positives", "positives")
    conf = _check_confidence(confidence)
    # clopper_pearson at level conf leaves (1 - conf) / 2 in each tail: the two limits used
    # here fail together with probability at most 1 - conf.
    fpr_high = clopper_pearson(fp, n_neg, conf)[1]
    tpr_low = clopper_pearson(tp, n_pos, conf)[0]
    return epsilon_from_rates(fpr_high, tpr_low, delta)


def _best_threshold(
    out: np.ndarray, inn: np.ndarray, delta: float, confidence: float
) -> tuple[float, int]:
    """The threshold and direction whose Clopper-Pearson bound is largest on the selection half."""
    alpha = 1.0 - confidence
    best = (-1.0, math.inf, 1)
    for direction in (1, -1):
        o, i = np.sort(direction * out), np.sort(direction * inn)
        candidates = np.unique(np.concatenate([o, i]))
        if len(candidates) > 4096:
            candidates = np.unique(np.quantile(candidates, np.linspace(0.0, 1.0, 4096)))
        fp = len(o) - np.searchsorted(o, candidates, side="left")
        tp = len(i) - np.searchsorted(i, candidates, side="left")
        n_o, n_i = len(o), len(i)
        with np.errstate(divide="ignore", invalid="ignore"):
            fpr_high = np.where(
                fp < n_o, scipy.stats.beta.ppf(1 - alpha / 2, fp + 1, n_o - fp), 1.0
            )
            tpr_low = np.where(tp > 0, scipy.stats.beta.ppf(alpha / 2, tp, n_i - tp + 1), 0.0)
            score = np.maximum(
                np.log(np.maximum(tpr_low - delta, 1e-300) / fpr_high),
                np.log(np.maximum(1 - fpr_high - delta, 1e-300) / np.maximum(1 - tpr_low, 1e-300)),
            )
        score = np.nan_to_num(score, nan=-1.0, posinf=-1.0)
        j = int(np.argmax(score))
        if score[j] > best[0]:
            best = (float(score[j]), float(candidates[j]), direction)
    return best[1], best[2]


def threshold_bound(
    scores_out: np.typing.ArrayLike,
    scores_in: np.typing.ArrayLike,
    delta: float,
    confidence: float = 0.95,
    *,
    selection_fraction: float = 0.5,
    seed: int = 0,
) -> ThresholdBound:
    """The best threshold test's epsilon lower bound, with the threshold chosen on held-out scores.

    Host side. Splits each set of scores at random: the first
    `selection_fraction` picks a threshold and a direction (high or low scores
    mean "in"), the rest is counted and given to :func:`epsilon_lower_bound`.
    Choosing the threshold on the counted scores would break the confidence.

    Args:
      scores_out: attack scores of "out" trials (D without the canary; non-members).
      scores_in: attack scores of "in" trials (with the canary; members).
      delta: the delta of the claim tested.
      confidence: in [0.5, 1).
      selection_fraction: share of each set used to pick the threshold, in (0, 1).
      seed: seed of the random split (public; the split is not secret).

    Returns:
      A :class:`ThresholdBound`.

    Raises:
      ValueError: if a set has fewer than 4 scores, a score is not finite, or a
        parameter is out of range.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import threshold_bound
      >>> rng = np.random.default_rng(0)
      >>> out, inn = rng.normal(0, 1, 20_000), rng.normal(2, 1, 20_000)
      >>> threshold_bound(out, inn, 1e-5).epsilon > 1.0
      True
    """
    out = np.asarray(scores_out, np.float64).ravel()
    inn = np.asarray(scores_in, np.float64).ravel()
    for name, s in (("scores_out", out), ("scores_in", inn)):
        if s.size < 4 or not np.all(np.isfinite(s)):
            raise ValueError(
                f"{name} has {s.size} scores (non-finite: {int(np.sum(~np.isfinite(s)))}); "
                f"pass at least 4 finite scores."
            )
    if not (isinstance(selection_fraction, float) and 0.0 < selection_fraction < 1.0):
        raise ValueError(
            f"selection_fraction={selection_fraction!r} must lie in (0, 1); pass e.g. 0.5."
        )
    conf = _check_confidence(confidence)
    rng = np.random.default_rng(_validation.check_seed(seed))
    out, inn = rng.permutation(out), rng.permutation(inn)
    k_out = min(max(1, int(len(out) * selection_fraction)), len(out) - 1)
    k_in = min(max(1, int(len(inn) * selection_fraction)), len(inn) - 1)
    threshold, direction = _best_threshold(out[:k_out], inn[:k_in], delta, conf)
    eval_out, eval_in = direction * out[k_out:], direction * inn[k_in:]
    fp, tp = int(np.sum(eval_out >= threshold)), int(np.sum(eval_in >= threshold))
    eps = epsilon_lower_bound(fp, len(eval_out), tp, len(eval_in), delta, conf)
    return ThresholdBound(
        epsilon=eps,
        threshold=direction * threshold,
        direction=direction,
        false_positives=fp,
        negatives=len(eval_out),
        true_positives=tp,
        positives=len(eval_in),
        confidence=conf,
    )


class PrivacyBugError(AssertionError):
    """An audit's epsilon lower bound exceeds the epsilon the accountant claims: a privacy bug."""


def check_lower_bound(lower_bound: float, epsilon: float, what: str = "the audit") -> float:
    """Raises :class:`PrivacyBugError` if an audit's lower bound exceeds the claimed epsilon.

    Host side.

    Args:
      lower_bound: the audit's epsilon lower bound (at some confidence).
      epsilon: the epsilon the accountant claims for the same run and delta.
      what: a name for the message.

    Returns:
      `lower_bound`, when it does not exceed `epsilon`.

    Raises:
      PrivacyBugError: if `lower_bound > epsilon` (an `AssertionError`, so a
        test fails loudly).
      ValueError: if `epsilon` is not a number >= 0.

    Example:
      >>> from dpjax.audit import check_lower_bound
      >>> check_lower_bound(0.8, 2.0)
      0.8
      >>> check_lower_bound(2.5, 2.0)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      dpjax.audit._bounds.PrivacyBugError: privacy bug: the audit proves epsilon >= 2.5 ...

    **Privacy:** at 95 % confidence a correct mechanism trips this in at most
    5 % of audits; a bug that leaks more than claimed trips it more often the
    more runs the audit has. Rerun before concluding; never ignore it.
    """
    if not (isinstance(epsilon, float | int) and float(epsilon) >= 0.0):
        raise ValueError(f"epsilon={epsilon!r} must be a number >= 0 (the accountant's).")
    if lower_bound > epsilon:
        raise PrivacyBugError(
            f"privacy bug: {what} proves epsilon >= {lower_bound:.4g} but the accountant "
            f"claims epsilon = {epsilon:.4g}"
        )
    return float(lower_bound)
