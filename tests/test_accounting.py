"""Tests for dpjax._accounting: epsilon, calibration, step budgets, limits (and the tracker)."""

import json
import math
from fractions import Fraction

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given
from hypothesis import strategies as st

from dpjax import BudgetExceededError, PrivacyTracker, _accounting
from dpjax._accounting import (
    calibrate_noise_multiplier,
    compute_epsilon,
    dp_sgd_event,
    max_steps,
    pld_value_discretization_interval,
    steps_from_epochs,
)

DELTA = 1e-5


def _direct(event, accountant, delta=DELTA):
    """Epsilon from dp_accounting itself, with the accountant parameters dpjax documents."""
    if accountant == "pld":
        acc = PLDAccountant(value_discretization_interval=pld_value_discretization_interval(event))
    else:
        acc = RdpAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


def _sgd(sigma, q):
    return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


# ------------------------------------------------------------------------ events


def test_dp_sgd_event_single_phase_is_self_composed_poisson_gaussian():
    assert dp_sgd_event(1.1, 100, 0.01) == dp_accounting.SelfComposedDpEvent(_sgd(1.1, 0.01), 100)


def test_dp_sgd_event_phases_are_composed_in_order():
    event = dp_sgd_event([2.0, 1.0], [30, 20], 0.05)
    assert event == dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(_sgd(2.0, 0.05), 30),
            dp_accounting.SelfComposedDpEvent(_sgd(1.0, 0.05), 20),
        ]
    )


def test_mismatched_phase_lengths_are_refused():
    with pytest.raises(ValueError, match="noise_multipliers has 2 phases but steps has 3"):
        dp_sgd_event([1.0, 2.0], [1, 2, 3], 0.01)


# ------------------------------------------------------------------ compute_epsilon


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize(
    "sigmas, steps, q",
    [(1.0, 1000, 0.01), (5.0, 300, 0.02), ([2.0, 1.0, 0.8], [200, 100, 50], 0.01)],
)
def test_compute_epsilon_equals_dp_accounting_directly(accountant, sigmas, steps, q):
    event = dp_sgd_event(sigmas, steps, q)
    expected = _direct(event, accountant)
    assert compute_epsilon(sigmas, steps, q, DELTA, accountant=accountant) == expected


def test_pld_grid_follows_the_per_step_loss_scale():
    assert pld_value_discretization_interval(dp_sgd_event(1.0, 10, 0.01)) == 1e-3
    assert pld_value_discretization_interval(dp_sgd_event(5.0, 10, 0.01)) == pytest.approx(2e-4)
    # Several phases: the finest phase decides.
    event = dp_sgd_event([1.0, 50.0], [10, 10], 0.01)
    assert pld_value_discretization_interval(event) == pytest.approx(2e-5)


def test_pld_epsilon_is_tight_against_a_much_finer_grid():
    event = dp_sgd_event(5.0, 1000, 0.01)
    fine = PLDAccountant(value_discretization_interval=1e-5)
    fine.compose(event)
    reference = fine.get_epsilon(DELTA)
    eps = compute_epsilon(5.0, 1000, 0.01, DELTA)
    assert reference <= eps <= 1.005 * reference


def test_pld_is_tighter_than_rdp():
    pld = compute_epsilon(1.0, 1000, 0.01, DELTA)
    rdp = compute_epsilon(1.0, 1000, 0.01, DELTA, accountant="rdp")
    assert pld < rdp


def test_more_steps_and_less_noise_spend_more():
    base = compute_epsilon(1.0, 500, 0.01, DELTA)
    assert compute_epsilon(1.0, 1000, 0.01, DELTA) > base
    assert compute_epsilon(0.8, 500, 0.01, DELTA) > base
    assert compute_epsilon(1.0, 500, 0.02, DELTA) > base


# -------------------------------------------------------------------- validation


def _eps(**kw):
    args = {"noise_multipliers": 1.0, "steps": 10, "sampling_rate": 0.01, "delta": DELTA}
    return compute_epsilon(**{**args, **kw})


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: _eps(delta=0.0), "delta"),
        (lambda: _eps(delta=1.0), "delta"),
        (lambda: _eps(delta=1e-3, dataset_size=1000), "delta"),
        (lambda: _eps(sampling_rate=0.0), "sampling_rate"),
        (lambda: _eps(sampling_rate=1.5), "sampling_rate"),
        (lambda: _eps(steps=0), "steps"),
        (lambda: _eps(noise_multipliers=0.0), "noise_multiplier"),
        (lambda: _eps(noise_multipliers=[1.0, -1.0], steps=[1, 1]), "noise_multipliers"),
        (lambda: _eps(accountant="moments"), "accountant"),
        (lambda: calibrate_noise_multiplier(0.0, 0.01, 100, DELTA), "target_epsilon"),
        (lambda: calibrate_noise_multiplier(-1.0, 0.01, 100, DELTA), "target_epsilon"),
        (lambda: calibrate_noise_multiplier(1.0, 0.01, 0, DELTA), "steps"),
        (lambda: calibrate_noise_multiplier(1.0, 0.01, 100, DELTA, rtol=0.0), "rtol"),
        (lambda: calibrate_noise_multiplier(1.0, 0.01, 100, DELTA, accountant="x"), "accountant"),
        (lambda: max_steps(0.0, 0.01, DELTA, 1.0), "noise_multiplier"),
        (lambda: max_steps(1.0, 0.01, DELTA, 0.0), "target_epsilon"),
        (lambda: max_steps(1.0, 2.0, DELTA, 1.0), "sampling_rate"),
        (lambda: PrivacyTracker(1.0, 0.0, 0.01), "delta"),
        (lambda: PrivacyTracker(1.0, 1e-2, 0.01, dataset_size=100), "delta"),
        (lambda: PrivacyTracker(0.0, DELTA, 0.01), "target_epsilon"),
        (lambda: PrivacyTracker(1.0, DELTA, 0.0), "sampling_rate"),
        (lambda: PrivacyTracker(1.0, DELTA, 0.01, accountant="gdp"), "accountant"),
        (lambda: PrivacyTracker(1.0, DELTA, 0.01).record_step(0.0), "noise_multiplier"),
        (lambda: steps_from_epochs(0, 1, 1), "dataset_size"),
        (lambda: steps_from_epochs(100, 200, 1), "batch_size"),
        (lambda: steps_from_epochs(100, 10, 0), "epochs"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}="):
        call()


# ---------------------------------------------------------------------- calibration


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize(
    "target, q, steps", [(1.0, 0.01, 1000), (3.0, 0.004, 10000), (8.0, 0.1, 100), (0.3, 0.02, 200)]
)
def test_calibration_round_trip_never_overshoots(accountant, target, q, steps):
    sigma = calibrate_noise_multiplier(target, q, steps, DELTA, accountant=accountant)
    eps = compute_epsilon(sigma, steps, q, DELTA, accountant=accountant)
    assert target * 0.99 <= eps <= target


def test_calibration_honours_rtol():
    sigma = calibrate_noise_multiplier(2.0, 0.01, 1000, DELTA, rtol=0.2)
    assert 1.6 <= compute_epsilon(sigma, 1000, 0.01, DELTA) <= 2.0


def test_unreachable_target_raises_with_smallest_reachable_epsilon():
    smallest = compute_epsilon(500.0, 1000, 0.5, DELTA, accountant="rdp")
    with pytest.raises(ValueError, match="unreachable") as info:
        calibrate_noise_multiplier(1e-3, 0.5, 1000, DELTA, accountant="rdp")
    assert f"epsilon={smallest:.6g}" in str(info.value)
    assert "target_epsilon=0.001" in str(info.value)


def test_absurdly_large_target_raises_instead_of_returning_a_loose_sigma():
    with pytest.raises(ValueError, match="target_epsilon=1000000.0 is so large"):
        calibrate_noise_multiplier(1e6, 0.01, 10, DELTA, accountant="rdp")


# ------------------------------------------------------------------------ max_steps


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("sigma, q, target", [(1.0, 0.01, 2.0), (0.7, 0.1, 5.0)])
def test_max_steps_is_exact(accountant, sigma, q, target):
    t = max_steps(sigma, q, DELTA, target, accountant=accountant)
    assert t >= 1
    assert compute_epsilon(sigma, t, q, DELTA, accountant=accountant) <= target
    assert compute_epsilon(sigma, t + 1, q, DELTA, accountant=accountant) > target


def test_max_steps_is_zero_when_one_step_already_exceeds():
    assert max_steps(0.5, 1.0, DELTA, 0.1, accountant="rdp") == 0


def test_max_steps_counts_the_prior_event():
    prior = dp_sgd_event(1.0, 500, 0.01)
    t = max_steps(1.0, 0.01, DELTA, 2.0, prior_event=prior)
    assert compute_epsilon([1.0, 1.0], [500, t], 0.01, DELTA) <= 2.0
    assert compute_epsilon([1.0, 1.0], [500, t + 1], 0.01, DELTA) > 2.0
    # Composing 500 + t steps in two pieces is the same run as one piece (up to rounding).
    assert abs(t - (max_steps(1.0, 0.01, DELTA, 2.0) - 500)) <= 1


# --------------------------------------------------------------------------- epochs


def test_steps_from_epochs_rounds_up_and_says_so():
    q, steps, note = steps_from_epochs(1797, 256, 3)
    assert q == 256 / 1797
    assert steps == 22
    assert "21.06" in note and "rounded up to 22 steps" in note


def test_steps_from_epochs_exact_case():
    q, steps, note = steps_from_epochs(1000, 100, 3)
    assert (q, steps) == (0.1, 30)
    assert "exactly" in note
    # 0.1 is not exact in binary; it still means one tenth of an epoch.
    assert steps_from_epochs(1000, 10, 0.1)[1] == 10


@given(
    n=st.integers(1, 10**6),
    b_frac=st.floats(1e-6, 1.0),
    epochs=st.floats(0.01, 100.0),
)
def test_steps_from_epochs_covers_the_epochs_with_the_fewest_steps(n, b_frac, epochs):
    b = max(1, min(n, int(n * b_frac)))
    _, steps, _ = steps_from_epochs(n, b, epochs)
    needed = Fraction(repr(epochs)) * n
    assert steps * b >= needed > (steps - 1) * b


# -------------------------------------------------------------------------- tracker


def test_tracker_refuses_the_step_that_would_exceed_and_records_nothing():
    tracker = PrivacyTracker(1.0, DELTA, 0.01)
    limit = max_steps(1.0, 0.01, DELTA, 1.0)
    for _ in range(limit):
        tracker.record_step(1.0)
    spent = tracker.epsilon_spent()
    assert not tracker.can_step(1.0)
    with pytest.raises(BudgetExceededError, match=r"epsilon=[\d.]+ > target_epsilon=1"):
        tracker.record_step(1.0)
    assert tracker.steps == limit
    assert tracker.phases == ((1.0, limit),)
    assert tracker.epsilon_spent() == spent <= 1.0
    assert tracker.remaining_steps(1.0) == 0


def test_tracker_epsilon_is_zero_before_any_step():
    tracker = PrivacyTracker(1.0, DELTA, 0.01)
    assert tracker.epsilon_spent() == 0.0
    assert tracker.steps == 0
    assert tracker.phases == ()


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_tracker_epsilon_equals_compute_epsilon_of_its_phases(accountant):
    tracker = PrivacyTracker(5.0, DELTA, 0.02, accountant=accountant)
    schedule = [2.0] * 40 + [1.0] * 25 + [1.5] * 10 + [1.0] * 5
    for sigma in schedule:
        tracker.record_step(sigma)
    assert tracker.phases == ((2.0, 40), (1.0, 25), (1.5, 10), (1.0, 5))
    assert tracker.steps == len(schedule)
    sigmas, steps = zip(*tracker.phases, strict=True)
    expected = compute_epsilon(sigmas, steps, 0.02, DELTA, accountant=accountant)
    assert tracker.epsilon_spent() == expected
    assert tracker.dp_event() == dp_sgd_event(sigmas, steps, 0.02)


def test_tracker_remaining_steps_matches_max_steps_with_prior():
    tracker = PrivacyTracker(2.0, DELTA, 0.01)
    for _ in range(300):
        tracker.record_step(1.0)
    prior = dp_sgd_event(1.0, 300, 0.01)
    assert tracker.remaining_steps(1.0) == max_steps(1.0, 0.01, DELTA, 2.0) - 300
    assert tracker.remaining_steps(2.0) == max_steps(2.0, 0.01, DELTA, 2.0, prior_event=prior)


def test_tracker_state_dict_round_trip_resumes_the_account():
    k = 30
    uninterrupted = PrivacyTracker(3.0, DELTA, 0.01)
    for _ in range(200):
        uninterrupted.record_step(1.0)
    state = json.loads(json.dumps(uninterrupted.state_dict()))
    for _ in range(k):
        uninterrupted.record_step(1.0)

    resumed = PrivacyTracker.from_state_dict(state)
    assert resumed.steps == 200
    assert resumed.epsilon_spent() > 0.0
    for _ in range(k):
        resumed.record_step(1.0)
    assert resumed.phases == uninterrupted.phases == ((1.0, 200 + k),)
    assert resumed.epsilon_spent() == uninterrupted.epsilon_spent()


def test_record_event_composes_extra_events_and_survives_a_round_trip():
    tracker = PrivacyTracker(3.0, DELTA, 0.01)
    for _ in range(100):
        tracker.record_step(1.0)
    before = tracker.epsilon_spent()
    quantile = dp_accounting.SelfComposedDpEvent(_sgd(20.0, 0.01), 100)
    tracker.record_event(quantile, "adaptive clipping")
    after = tracker.epsilon_spent()
    assert after > before
    assert after == _direct(
        dp_accounting.ComposedDpEvent([dp_sgd_event(1.0, 100, 0.01), quantile]), "pld"
    )
    assert tracker.events == (("adaptive clipping", quantile),)
    tracker.record_step(1.0)
    restored = PrivacyTracker.from_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert restored.dp_event() == tracker.dp_event()
    assert restored.epsilon_spent() == tracker.epsilon_spent()


def test_record_event_that_would_exceed_is_refused():
    tracker = PrivacyTracker(1.0, DELTA, 0.01)
    with pytest.raises(BudgetExceededError, match="not recorded"):
        tracker.record_event(dp_accounting.GaussianDpEvent(0.5), "release")
    assert tracker.events == ()
    assert tracker.epsilon_spent() == 0.0


def test_from_state_dict_rejects_malformed_state():
    with pytest.raises(ValueError, match="state"):
        PrivacyTracker.from_state_dict({"version": 1})
    good = PrivacyTracker(1.0, DELTA, 0.01).state_dict()
    bad = {**good, "releases": [{"kind": "event", "label": "x", "event": {"type": "os"}}]}
    with pytest.raises(ValueError, match="unknown DpEvent"):
        PrivacyTracker.from_state_dict(bad)


def test_tracker_with_infinite_target_only_tracks():
    tracker = PrivacyTracker(math.inf, DELTA, 0.5)
    for _ in range(20):
        tracker.record_step(0.5)
    assert tracker.can_step(0.5)
    assert tracker.epsilon_spent() == compute_epsilon(0.5, 20, 0.5, DELTA) > 10.0


def test_tracker_budget_exhausted_with_varying_sigma():
    tracker = PrivacyTracker(0.5, DELTA, 0.2, accountant="rdp")
    recorded = 0
    with pytest.raises(BudgetExceededError):
        for i in range(10_000):
            tracker.record_step(3.0 if i % 2 else 2.5)  # a new phase every step
            recorded += 1
    assert tracker.steps == recorded
    assert tracker.epsilon_spent() <= 0.5
    assert math.isfinite(tracker.epsilon_spent())


# ------------------------------------------------------------------ noise-tail term


def test_noise_tail_delta_matches_a_hand_calculation():
    # (1 + e^2) * 1000 steps * 2**40 coordinates * 2**-124 = 8389.056... * 2**-84.
    assert _accounting.noise_tail_delta(1000, 2.0) == pytest.approx(4.33704035e-22, rel=1e-7)
    assert _accounting.noise_tail_delta(1000, 2.0, num_coordinates=1) == pytest.approx(
        4.33704035e-22 / 2**40, rel=1e-7
    )
    assert _accounting.noise_tail_delta(0, 5.0) == 0.0
    assert _accounting.noise_tail_delta(1, 800.0) == math.inf


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steps": -1, "epsilon": 1.0}, "steps"),
        ({"steps": 10, "epsilon": math.nan}, "epsilon"),
        ({"steps": 10, "epsilon": -1.0}, "epsilon"),
        ({"steps": 10, "epsilon": 1.0, "num_coordinates": 0}, "num_coordinates"),
    ],
)
def test_noise_tail_delta_refuses_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}="):
        _accounting.noise_tail_delta(**kwargs)


def test_reported_epsilon_is_certified_with_the_tail_term_included(monkeypatch):
    # Inflate the sampler's tail mass so that the term is visible (about delta / 10 here).
    base = compute_epsilon(1.0, 1000, 0.01, DELTA)
    monkeypatch.setattr(_accounting, "NOISE_TAIL_MASS", 1.5e-22)
    _accounting._clear_cache()
    eps = compute_epsilon(1.0, 1000, 0.01, DELTA)
    tail = _accounting.noise_tail_delta(1000, eps)
    assert 1e-7 < tail < DELTA and eps > base
    acc = PLDAccountant(
        value_discretization_interval=pld_value_discretization_interval(
            dp_sgd_event(1.0, 1000, 0.01)
        )
    )
    acc.compose(dp_sgd_event(1.0, 1000, 0.01))
    assert acc.get_delta(eps) + tail <= DELTA  # (eps, DELTA) holds with the tail counted
    assert eps == acc.get_epsilon(DELTA - tail)  # and eps is the accountant's at delta - tail
    monkeypatch.undo()
    _accounting._clear_cache()


def test_epsilon_is_infinite_where_the_tail_term_alone_exceeds_delta():
    # Exact-Gaussian accounting gives a finite (huge) epsilon; with the sampler's cut tail
    # (1 + e^eps) * T * 2**40 * 2**-124 > delta for any eps above ~46, so none is certified.
    exact = _direct(dp_sgd_event(0.3, 10, 1.0), "pld")
    assert 47 < exact < math.inf
    assert compute_epsilon(0.3, 10, 1.0, DELTA) == math.inf


def test_calibration_refuses_targets_beyond_the_certifiable_epsilon():
    with pytest.raises(ValueError, match=r"target_epsilon=60.0 is so large.*noise-tail term"):
        calibrate_noise_multiplier(60.0, 0.01, 10, DELTA)


# ------------------------------------------------- inputs that must fail clearly


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_vanishing_noise_multiplier_is_refused_instead_of_overflowing(accountant):
    floor = "PLD_MIN_NOISE_MULTIPLIER" if accountant == "pld" else "RDP_MIN_NOISE_MULTIPLIER"
    with pytest.raises(ValueError, match=rf"noise_multiplier=1e-300 is below {floor}"):
        compute_epsilon(1e-300, 10, 0.01, DELTA, accountant=accountant)
    with pytest.raises(ValueError, match=r"noise_multiplier=1e-300"):
        max_steps(1e-300, 0.01, DELTA, 3.0, accountant=accountant)
    with pytest.raises(ValueError, match=r"noise_multiplier=1e-300"):
        PrivacyTracker(3.0, DELTA, 0.01, accountant=accountant).record_step(1e-300)


@pytest.mark.parametrize("accountant, q", [("rdp", 0.01), ("pld", 1.0)])
def test_huge_target_at_small_sigma_is_refused_instead_of_allocating(accountant, q):
    # Before: the step search composed ever more steps (491 GiB requested).
    with pytest.raises(ValueError, match=r"noise_multiplier=0.05 .*ONE step"):
        max_steps(0.05, q, DELTA, target_epsilon=1e12, accountant=accountant)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_more_steps_than_the_cap_are_refused(accountant):
    with pytest.raises(ValueError, match=r"steps=100000000000000 exceeds MAX_STEPS_CAP"):
        compute_epsilon(1.0, 10**14, 0.01, DELTA, accountant=accountant)


def test_pld_beyond_its_memory_limit_is_refused_and_rdp_answers():
    with pytest.raises(ValueError, match=r"steps=1000000000 at noise_multiplier=1.0.*'rdp'"):
        compute_epsilon(1.0, 10**9, 1.0, DELTA)
    with pytest.raises(ValueError, match=r"one step at noise_multiplier=0.3, sampling_rate=1e-06"):
        compute_epsilon(0.3, 10, 1e-6, DELTA)
    assert math.isfinite(compute_epsilon(0.3, 10, 1e-6, DELTA, accountant="rdp"))


def test_max_steps_counts_the_prior_event_against_the_cap():
    prior = dp_sgd_event(100.0, 10, 1e-6)
    assert max_steps(100.0, 1e-6, DELTA, 1.0, accountant="rdp", prior_event=prior) == (
        _accounting.MAX_STEPS_CAP - 10
    )


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibration_with_a_large_delta_does_not_crash(accountant):
    # delta = 0.4 makes sigma = 1 spend epsilon = 0, which used to reach math.log(0).
    sigma = calibrate_noise_multiplier(3.0, 0.01, 1000, 0.4, accountant=accountant)
    assert 2.97 <= compute_epsilon(sigma, 1000, 0.01, 0.4, accountant=accountant) <= 3.0


def _state(**entry):
    """A first-version state (`entries`), which the tracker still reads, with one entry."""
    good = {**PrivacyTracker(3.0, DELTA, 0.01).state_dict(), "version": 1}
    good.pop("releases")
    return {**good, "entries": [entry]}


_GAUSSIAN = {"type": "GaussianDpEvent", "noise_multiplier": 1.0}


@pytest.mark.parametrize(
    "state",
    [
        {"version": True},
        {**PrivacyTracker(3.0, DELTA, 0.01).state_dict(), "releases": None},
        {**PrivacyTracker(3.0, DELTA, 0.01).state_dict(), "releases": [["steps", 1.0, 3]]},
        {**PrivacyTracker(3.0, DELTA, 0.01).state_dict(), "releases": [[]]},
        _state(kind="steps", noise_multiplier=1.0, steps=10**14),
        _state(kind="steps", noise_multiplier=1e-300, steps=10),
        _state(kind="event", label="x", event=None),  # used to load as an empty account
        _state(kind="event", label="x", event=[]),
        _state(kind="event", label=["x"], event=_GAUSSIAN),
        _state(kind="event", label="x", event={**_GAUSSIAN, "noise_multiplier": "1.0"}),
        _state(kind="event", label="x", event={**_GAUSSIAN, "noise_multiplier": -1.0}),
        _state(kind="event", label="x", event={"type": "ComposedDpEvent", "events": [5]}),
        _state(kind="event", label="x", event={"type": "UnsupportedDpEvent"}),
        _state(
            kind="event",
            label="x",
            event={"type": "SelfComposedDpEvent", "event": _GAUSSIAN, "count": 2.5},
        ),
        _state(
            kind="event",
            label="x",
            event={
                "type": "PoissonSampledDpEvent",
                "sampling_probability": 2.0,
                "event": _GAUSSIAN,
            },
        ),
    ],
)
def test_malformed_states_raise_value_error_when_loaded(state):
    with pytest.raises(ValueError, match=r"state|noise_multiplier=1e-300 is below"):
        PrivacyTracker.from_state_dict(state)
