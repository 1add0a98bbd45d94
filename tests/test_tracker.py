"""The tracker's typed releases: exact composition, the pure-epsilon rule, checks before release."""

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant

import dpjax
from dpjax import _accounting

DELTA = 1e-5
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]


def _laplace_rdp(alpha, b):
    """RDP of the Laplace mechanism with scale b, sensitivity 1 (Mironov 2017, Prop. 6)."""
    a = alpha
    return math.log(
        a / (2 * a - 1) * math.exp((a - 1) / b) + (a - 1) / (2 * a - 1) * math.exp(-a / b)
    ) / (a - 1)


def _rdp_to_dp(rdp, delta):
    """Epsilon from RDP curves (Balle et al. 2020, Prop. 12; the conversion dp-accounting uses)."""
    return max(
        0.0,
        min(
            r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
            for a, r in zip(ORDERS, rdp, strict=True)
        ),
    )


def test_a_laplace_count_alone_is_pure_epsilon_one_over_b():
    tracker = dpjax.PrivacyTracker(math.inf, DELTA)
    tracker.record(dpjax.LaplaceRelease(noise_multiplier=4.0))  # a count: L1 sensitivity 1
    assert tracker.epsilon_spent() == pytest.approx(0.25, rel=1e-3)
    assert tracker.epsilon_spent() <= 0.25 + 1e-9


def test_laplace_composed_with_gaussian_steps_matches_the_hand_computed_rdp():
    sigma, b, steps = 3.0, 2.0, 7
    tracker = dpjax.PrivacyTracker(math.inf, DELTA, accountant="rdp")
    tracker.record(dpjax.GaussianRelease(noise_multiplier=sigma, count=steps))
    tracker.record(dpjax.LaplaceRelease(noise_multiplier=b))
    hand = _rdp_to_dp([steps * a / (2 * sigma**2) + _laplace_rdp(a, b) for a in ORDERS], DELTA)
    assert tracker.epsilon_spent() == pytest.approx(hand, rel=1e-6)


def test_laplace_composed_with_dp_sgd_steps_equals_dp_accounting_directly():
    q, sigma, b = 0.01, 1.1, 5.0
    tracker = dpjax.PrivacyTracker(math.inf, DELTA, sampling_rate=q)
    for _ in range(50):
        tracker.record_step(sigma)
    tracker.record(dpjax.LaplaceRelease(noise_multiplier=b))
    for _ in range(30):
        tracker.record_step(sigma)
    event = dp_accounting.ComposedDpEvent(
        [
            dpjax.PoissonGaussianSteps(sigma, q, 50).dp_event(),
            dp_accounting.LaplaceDpEvent(b),
            dpjax.PoissonGaussianSteps(sigma, q, 30).dp_event(),
        ]
    )
    acc = PLDAccountant(
        value_discretization_interval=_accounting.pld_value_discretization_interval(event)
    )
    acc.compose(event)
    assert tracker.epsilon_spent() == pytest.approx(acc.get_epsilon(DELTA), rel=1e-9)
    assert [type(r).__name__ for r in tracker.releases] == [
        "PoissonGaussianSteps",
        "LaplaceRelease",
        "PoissonGaussianSteps",
    ]


def test_pure_epsilon_releases_add_to_the_exact_account():
    q, sigma = 0.02, 1.0
    exact = dpjax.PrivacyTracker(math.inf, DELTA, sampling_rate=q)
    with_pure = dpjax.PrivacyTracker(math.inf, DELTA, sampling_rate=q)
    for t in (exact, with_pure):
        for _ in range(40):
            t.record_step(sigma)
    with_pure.record(dpjax.PureEpsilonRelease(epsilon=0.1, count=3, label="selection"))
    assert with_pure.epsilon_spent() == pytest.approx(exact.epsilon_spent() + 0.3, rel=1e-12)


def test_a_refused_release_leaves_the_account_unchanged():
    tracker = dpjax.PrivacyTracker(1.0, DELTA)
    tracker.record(dpjax.GaussianRelease(noise_multiplier=5.0))
    before = (tracker.releases, tracker.epsilon_spent())
    assert not tracker.can_record(dpjax.LaplaceRelease(noise_multiplier=0.5))
    with pytest.raises(dpjax.BudgetExceededError, match="not recorded"):
        tracker.record(dpjax.LaplaceRelease(noise_multiplier=0.5))
    assert (tracker.releases, tracker.epsilon_spent()) == before


def test_every_record_kind_round_trips_through_json():
    tracker = dpjax.PrivacyTracker(100.0, DELTA, sampling_rate=0.05)
    tracker.record_step(1.2)
    tracker.record_step(1.2)
    tracker.record(dpjax.GaussianRelease(4.0, count=2))
    tracker.record(dpjax.LaplaceRelease(3.0))
    tracker.record(dpjax.PureEpsilonRelease(0.2, label="exp. mechanism"))
    tracker.record_event(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(10.0)), "quantile"
    )
    state = json.loads(json.dumps(tracker.state_dict()))
    restored = dpjax.PrivacyTracker.from_state_dict(state)
    assert restored.releases == tracker.releases
    assert restored.epsilon_spent() == tracker.epsilon_spent()
    assert restored.steps == 2


def test_first_version_state_still_resumes():
    old = {
        "version": 1,
        "target_epsilon": 3.0,
        "delta": DELTA,
        "sampling_rate": 0.01,
        "accountant": "pld",
        "dataset_size": None,
        "entries": [{"kind": "steps", "noise_multiplier": 1.0, "steps": 100}],
    }
    tracker = dpjax.PrivacyTracker.from_state_dict(old)
    assert tracker.phases == ((1.0, 100),)
    assert tracker.epsilon_spent() == pytest.approx(dpjax.compute_epsilon(1.0, 100, 0.01, DELTA))


@pytest.mark.parametrize(
    "bad",
    [None, [], {"version": 3}, {"version": 2}, {"version": 2, "target_epsilon": 1.0}],
)
def test_malformed_states_are_value_errors(bad):
    with pytest.raises(ValueError):
        dpjax.PrivacyTracker.from_state_dict(bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: dpjax.PoissonGaussianSteps(0.0, 0.1),
        lambda: dpjax.PoissonGaussianSteps(1.0, 1.5),
        lambda: dpjax.PoissonGaussianSteps(1.0, 0.1, steps=0),
        lambda: dpjax.GaussianRelease(-1.0),
        lambda: dpjax.LaplaceRelease(math.inf),
        lambda: dpjax.PureEpsilonRelease(0.0),
        lambda: dpjax.EventRelease("not an event"),
    ],
)
def test_records_validate_when_built(make):
    with pytest.raises(ValueError):
        make()


def test_many_steps_in_a_row_stay_one_record_and_stop_exactly_at_the_budget():
    tracker = dpjax.PrivacyTracker(0.5, DELTA, sampling_rate=0.01)
    n = 0
    while tracker.can_step(1.0):
        tracker.record_step(1.0)
        n += 1
    assert len(tracker.releases) == 1 and tracker.steps == n
    assert dpjax.compute_epsilon(1.0, n, 0.01, DELTA) <= 0.5
    assert dpjax.compute_epsilon(1.0, n + 1, 0.01, DELTA) > 0.5
    assert np.isclose(tracker.epsilon_spent(), dpjax.compute_epsilon(1.0, n, 0.01, DELTA))


def test_a_reserved_schedule_is_checked_once_and_a_release_off_it_as_usual():
    q = 0.02
    schedule = dpjax.NoiseSchedule(((2.0, 30), (1.2, 20)))
    total = schedule.epsilon(q, 1e-5)
    tracker = dpjax.PrivacyTracker(total * 1.0001, 1e-5, sampling_rate=q)
    assert tracker.reserve(schedule.releases(q))
    assert tracker.releases == ()  # nothing recorded by reserving
    for t in range(schedule.steps):
        tracker.record(dpjax.PoissonGaussianSteps(schedule.at(t), q))
    assert tracker.epsilon_spent() == pytest.approx(total, rel=1e-12)
    # Past the reserved path every release is checked on its own: the budget is spent.
    assert not tracker.can_record(dpjax.PoissonGaussianSteps(1.2, q))
    with pytest.raises(dpjax.BudgetExceededError):
        tracker.record(dpjax.PoissonGaussianSteps(schedule.at(0), q))
    small = dpjax.PrivacyTracker(total / 2, 1e-5, sampling_rate=q)
    assert not small.reserve(schedule.releases(q))  # does not fit: nothing reserved
    steps = 0
    while small.can_record(dpjax.PoissonGaussianSteps(schedule.at(steps), q)):
        small.record(dpjax.PoissonGaussianSteps(schedule.at(steps), q))
        steps += 1
    assert small.epsilon_spent() <= total / 2 and 0 < steps < schedule.steps


def test_step_by_step_recording_stops_exactly_where_pld_says():
    """The fast paths (RDP bound, phase limit) never let a step past the exact PLD budget."""
    q, sigma, target = 0.01, 1.0, 1.0
    limit = dpjax.max_steps(sigma, q, 1e-5, target)
    tracker = dpjax.PrivacyTracker(target, 1e-5, sampling_rate=q)
    recorded = 0
    while tracker.can_step(sigma):
        tracker.record_step(sigma)
        recorded += 1
    assert limit > 10 and recorded == limit and tracker.epsilon_spent() <= target
    assert dpjax.compute_epsilon(sigma, limit + 1, q, 1e-5) > target
    # A second sigma after a first phase: the next phase also stops at the exact composition.
    two = dpjax.PrivacyTracker(target, 1e-5, sampling_rate=q)
    for _ in range(limit // 2):
        two.record_step(2.0)
    extra = 0
    while two.can_step(sigma):
        two.record_step(sigma)
        extra += 1
    eps = dpjax.compute_epsilon([2.0, sigma], [limit // 2, extra], q, 1e-5)
    assert eps == pytest.approx(two.epsilon_spent(), rel=1e-9) and eps <= target
    assert dpjax.compute_epsilon([2.0, sigma], [limit // 2, extra + 1], q, 1e-5) > target


def test_steps_within_a_phase_cost_no_accounting_once_its_limit_is_known(monkeypatch):
    # At q = 0.5 one RDP evaluation takes ~0.5 s: each step must not compute an epsilon.
    # The phase's limit is searched once (by RDP, a valid upper bound), then steps are free.
    from dpjax import _accounting

    calls = []
    real = _accounting.epsilon_of_releases
    monkeypatch.setattr(
        _accounting, "epsilon_of_releases", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    tracker = dpjax.PrivacyTracker(target_epsilon=2.0, delta=1e-5, sampling_rate=0.5)
    tracker.record_step(30.0)
    tracker.record_step(30.0)
    calls.clear()
    for _ in range(50):
        tracker.record_step(30.0)
    assert calls == []
    assert tracker.epsilon_spent() <= 2.0


def test_fitting_noise_multiplier_returns_a_sigma_the_tracker_accepts():
    sigma = dpjax.calibrate_noise_multiplier(1.0, 1.0, 1, 1e-5)
    fitted = dpjax.fitting_noise_multiplier(dpjax.GaussianRelease, sigma, 1.0, 1e-5)
    assert sigma <= fitted <= sigma * 1.01
    assert dpjax.PrivacyTracker(1.0, 1e-5).can_record(dpjax.GaussianRelease(fitted))
    with pytest.raises(ValueError, match="no noise multiplier"):
        dpjax.fitting_noise_multiplier(dpjax.GaussianRelease, 0.5, 1.0, 1e-5, tries=3)
