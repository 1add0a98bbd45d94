"""Epsilon lower bounds from (FPR, TPR): Clopper-Pearson limits, both directions, coverage."""

import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from dpjax import audit

DELTA = 1e-5


@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_clopper_pearson_matches_scipy_exact_interval(kn):
    k, n = kn
    low, high = audit.clopper_pearson(k, n, 0.95)
    ref = scipy.stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_epsilon_from_rates_is_the_bound_in_both_directions():
    # forward: TPR <= e^eps FPR + delta
    assert audit.epsilon_from_rates(0.01, 0.1, 0.0) == pytest.approx(math.log(10))
    # backward: 1 - FPR <= e^eps (1 - TPR) + delta
    assert audit.epsilon_from_rates(0.9, 0.99, 0.0) == pytest.approx(math.log(0.1 / 0.01))
    assert audit.epsilon_from_rates(0.0, 0.5, 0.0) == math.inf
    assert audit.epsilon_from_rates(0.2, 0.1, 0.0) == 0.0  # worse than chance proves nothing
    assert audit.epsilon_from_rates(0.0, 1e-6, 1e-5) == 0.0  # below delta proves nothing


@given(st.floats(1e-4, 0.5), st.floats(0.0, 1.0), st.floats(1e-4, 0.5), st.floats(0.0, 1e-3))
def test_epsilon_from_rates_is_monotone(fpr, tpr, bump, delta):
    base = audit.epsilon_from_rates(fpr, tpr, delta)
    assert audit.epsilon_from_rates(fpr, min(1.0, tpr + bump), delta) >= base
    assert audit.epsilon_from_rates(min(1.0, fpr + bump), tpr, delta) <= base + 1e-12


def test_epsilon_lower_bound_is_below_the_point_estimate_and_grows_with_counts():
    point = audit.epsilon_from_rates(0.001, 0.02, DELTA)
    small = audit.epsilon_lower_bound(10, 10_000, 200, 10_000, DELTA)
    large = audit.epsilon_lower_bound(1000, 1_000_000, 20_000, 1_000_000, DELTA)
    assert small < large < point


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((5, 4, 1, 10, DELTA), "false_positives=5 exceeds negatives=4"),
        ((1, 10, 1, 0, DELTA), "positives"),
        ((1, 10, 1, 10, 1.5), "delta=1.5"),
    ],
)
def test_epsilon_lower_bound_refuses_bad_counts(args, match):
    with pytest.raises(ValueError, match=match):
        audit.epsilon_lower_bound(*args)


def test_threshold_bound_covers_the_true_epsilon_of_randomized_response():
    # Randomized response with eps = 1 (pure DP): answer truthfully w.p. e/(1+e). The 95 % bound
    # must stay below 1 in (nearly) all repetitions, and be informative.
    eps, n, reps = 1.0, 20_000, 30
    p = math.exp(eps) / (1 + math.exp(eps))
    rng = np.random.default_rng(0)
    bounds = []
    for _ in range(reps):
        out = (rng.random(n) > p).astype(float)  # says "1" w.p. 1 - p without the canary
        inn = (rng.random(n) < p).astype(float)
        bounds.append(audit.threshold_bound(out, inn, 0.0, seed=int(rng.integers(1 << 30))).epsilon)
    assert sum(b > eps for b in bounds) <= 2  # at most ~5 % may exceed; expect 0
    assert np.median(bounds) > 0.85 * eps


def test_threshold_bound_finds_the_low_side_too():
    rng = np.random.default_rng(1)
    out, inn = rng.normal(0, 1, 5000), rng.normal(-3, 1, 5000)
    result = audit.threshold_bound(out, inn, DELTA)
    assert result.direction == -1 and result.epsilon > 2.0


def test_threshold_bound_refuses_nonfinite_scores():
    with pytest.raises(ValueError, match="scores_in"):
        audit.threshold_bound(np.zeros(10), np.array([0.0, np.nan, 1.0, 2.0, 3.0]), DELTA)


def test_check_lower_bound_fails_loudly():
    assert audit.check_lower_bound(1.0, 2.0) == 1.0
    with pytest.raises(audit.PrivacyBugError, match="privacy bug"):
        audit.check_lower_bound(2.01, 2.0, "the test")
    with pytest.raises(AssertionError):  # a PrivacyBugError fails a test like an assert
        audit.check_lower_bound(3.0, 2.0)
