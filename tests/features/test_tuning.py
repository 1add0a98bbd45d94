"""Private hyperparameter selection: the accountant equals Papernot & Steinke's formula."""

import math

import dp_accounting
import numpy as np
import pytest
import scipy.stats
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

import dpjax
from dpjax.features import (
    POISSON,
    private_tuning,
    sample_number_of_runs,
    tuning_epsilon,
    tuning_release,
)

ORDERS = np.asarray(rdp_lib.DEFAULT_RDP_ORDERS, dtype=float)


def _tnb_mean(gamma, eta):
    """E[K] of the truncated negative binomial (Papernot & Steinke, Definition 1)."""
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma**eta))


def _paper_epsilon(sigma, gamma, eta, delta):
    """Theorem 2 of Papernot & Steinke (2022), written out for a Gaussian run.

    One run is (lambda, lambda / (2 sigma^2))-RDP for every lambda. The selection is
    (lambda, eps')-RDP with eps' = eps(lambda) + (1 + eta) (1 - 1/lhat) eps(lhat)
    + (1 + eta) log(1/gamma) / lhat + log(E[K]) / (lambda - 1), minimised over lhat
    (on the same grid of orders), then made monotone in lambda, then converted to
    (epsilon, delta) by dp-accounting's conversion.
    """
    eps = ORDERS / (2 * sigma**2)
    c = (1 + eta) * np.min((1 - 1 / ORDERS) * eps + math.log(1 / gamma) / ORDERS)
    curve = np.full_like(ORDERS, np.inf)
    above = ORDERS > 1
    curve[above] = eps[above] + c + math.log(_tnb_mean(gamma, eta)) / (ORDERS[above] - 1)
    curve = np.array([curve[ORDERS >= o].min() for o in ORDERS])  # RDP grows with lambda
    return rdp_lib.compute_epsilon(ORDERS, curve, delta)[0]


@pytest.mark.parametrize(
    ("sigma", "gamma", "eta"), [(5.0, 1 / 3, 1.0), (2.0, 0.1, 0.5), (8.0, 0.05, 0.0)]
)
def test_tuning_accountant_equals_the_papers_formula(sigma, gamma, eta):
    mean = _tnb_mean(gamma, eta)
    record = tuning_release(dp_accounting.GaussianDpEvent(sigma), mean=mean, shape=eta)
    assert tuning_epsilon(record, 1e-5) == pytest.approx(
        _paper_epsilon(sigma, gamma, eta, 1e-5), rel=1e-5
    )


def test_tuning_costs_more_than_one_run_and_grows_with_the_runs():
    event = dp_accounting.GaussianDpEvent(5.0)
    one = tuning_epsilon(tuning_release(event, mean=1.0), 1e-5)
    single_run = dpjax.compute_epsilon(5.0, 1, 1.0, 1e-5, accountant="rdp")
    assert one >= single_run * (1 - 1e-9)
    eps = [tuning_epsilon(tuning_release(event, mean=m), 1e-5) for m in (2.0, 4.0, 16.0)]
    assert eps == sorted(eps) and eps[0] > one
    assert tuning_epsilon(tuning_release(event, mean=4.0, shape=POISSON), 1e-5) > one


def test_the_record_round_trips_through_the_trackers_state():
    tracker = dpjax.PrivacyTracker(target_epsilon=8.0, delta=1e-5, accountant="rdp")
    tracker.record(dpjax.GaussianRelease(noise_multiplier=20.0))  # e.g. private statistics
    tracker.record(tuning_release(dpjax.dp_sgd_event(1.0, 100, 0.01), mean=3.0))
    again = dpjax.PrivacyTracker.from_state_dict(tracker.state_dict())
    assert again.releases == tracker.releases
    assert again.epsilon_spent() == pytest.approx(tracker.epsilon_spent())


@pytest.mark.parametrize(("mean", "eta"), [(3.0, 1.0), (3.0, 0.5), (3.0, 0.0)])
def test_number_of_runs_follows_the_truncated_negative_binomial(mean, eta):
    rng = np.random.default_rng(0)
    draws = np.array([sample_number_of_runs(mean, eta, rng) for _ in range(3000)])
    assert draws.min() >= 1
    # The pmf of Definition 1: proportional to (1 - gamma)^k prod_{l<k} (l + eta) / (l + 1).
    lo, hi = 1e-9, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _tnb_mean(mid, eta) > mean else (lo, mid)
    ks = np.arange(1, 200)
    logw = ks * math.log(1 - hi) + np.cumsum(np.log((ks - 1 + eta) / ks)) if eta > 0 else None
    if eta == 0:
        logw = ks * math.log(1 - hi) - np.log(ks)
    p = np.exp(logw - logw.max())
    p /= p.sum()
    observed = np.array([np.sum(draws == k) for k in range(1, 8)] + [np.sum(draws >= 8)])
    expected = np.append(p[:7], p[7:].sum()) * len(draws)
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


def test_poisson_runs_may_be_zero():
    rng = np.random.default_rng(0)
    draws = [sample_number_of_runs(1.5, POISSON, rng) for _ in range(2000)]
    assert min(draws) == 0 and abs(np.mean(draws) - 1.5) < 0.1


def test_private_tuning_records_before_the_first_run_and_keeps_the_best():
    tracker = dpjax.PrivacyTracker(target_epsilon=6.0, delta=1e-5, accountant="rdp")
    record = tuning_release(dp_accounting.GaussianDpEvent(5.0), mean=4.0)
    seen = []

    def run(i):
        seen.append(tracker.releases)
        return [0.3, 0.9, 0.1, float("nan")][i % 4], i

    out = private_tuning(run, record, tracker, rng=np.random.default_rng(3))
    assert out.count == len(out.results) >= 1 and all(s == (record,) for s in seen)
    assert out.best == max(out.results, key=lambda r: r[0])
    assert tracker.releases == (record,)


def test_private_tuning_refuses_what_the_budget_or_the_accountant_cannot_hold():
    record = tuning_release(dp_accounting.GaussianDpEvent(0.5), mean=10.0)
    ran = []
    small = dpjax.PrivacyTracker(target_epsilon=1.0, delta=1e-5, accountant="rdp")
    with pytest.raises(dpjax.BudgetExceededError):
        private_tuning(lambda i: ran.append(i) or (0.0, None), record, small)
    assert ran == [] and small.releases == ()
    pld = dpjax.PrivacyTracker(target_epsilon=100.0, delta=1e-5)
    with pytest.raises(ValueError, match="accountant='rdp'"):
        private_tuning(lambda i: (0.0, None), record, pld)
    with pytest.raises(ValueError, match="not a tuning record"):
        private_tuning(lambda i: (0.0, None), dpjax.GaussianRelease(1.0), small)
    with pytest.raises(ValueError, match="mean"):
        tuning_release(dp_accounting.GaussianDpEvent(1.0), mean=0.5)
    with pytest.raises(ValueError, match="shape"):
        tuning_release(dp_accounting.GaussianDpEvent(1.0), mean=2.0, shape=-1.0)
