"""Review of the release paths of `dpjax.features` (issue 17, section 5), as an attacker would.

Attacks tried on `private_tuning`: a released best that names K (the secret number of runs), K
or the other runs' scores leaving through a repr or `json.dumps`, a run (or K's draw) before the
record or over the budget, a `tuning_epsilon` unlike dp-accounting's own RDP composition of
`RepeatAndSelectDpEvent`. On `private_group_statistics`: a neighbouring data set (one example
added, removed or replaced by NaN, inf, 1e30 rows) that moves the released sums by more than
`clip_norm`; the training key passed by mistake, repeating a training step's noise; the data
read before the release is recorded. On `group_normalize` and the scattering transform: an
example's features that depend on another example. With the same noise key, two neighbouring
runs draw the same noise, so the difference of their releases is the difference of the pre-noise
values.
"""

import json
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax
from dpjax.features import (
    POISSON,
    GroupStatistics,
    _normalization,
    group_normalize,
    private_group_statistics,
    private_tuning,
    scatternet_features,
    tuning_epsilon,
    tuning_release,
)

_RUN = dp_accounting.SelfComposedDpEvent(
    dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(2.0)), 100
)


def _tracker(target=math.inf):
    return dpjax.PrivacyTracker(target_epsilon=target, delta=1e-5, accountant="rdp")


# --- private_tuning ------------------------------------------------------------------------------


def test_a_run_that_picks_by_its_argument_never_releases_the_number_of_runs():
    # Finding 1 (fixed): each run got its INDEX i. A run choosing its hyperparameters by it (a
    # grid, or `default_rng(i)` as the README's example did) is not one of K i.i.d. runs, and the
    # released best can name K: `run(i) -> (i, i)` released K - 1 in every selection. Each run
    # now gets an independent 64-bit seed.
    record = tuning_release(_RUN, mean=4.0)
    named = 0
    for s in range(40):
        seen = []

        def run(arg, seen=seen):
            seen.append(arg)
            return float(arg), arg  # score and output: both its argument

        out = private_tuning(run, record, _tracker(), rng=np.random.default_rng(s))
        assert len(set(seen)) == len(seen) == out.count and seen != list(range(out.count))
        named += out.best[1] == out.count - 1
    assert named == 0


def test_tuning_result_repr_and_json_hide_the_count_and_the_other_runs():
    # Finding 2 (fixed, low): TuningResult was a NamedTuple: print(result) showed K and every
    # run's score, and json.dumps wrote them as a list. Its repr now shows `best` only.
    scores = iter([0.123456, 0.654321, 0.3141592, 0.2718281] * 10)
    out = private_tuning(
        lambda seed: (next(scores), {"lr": 0.5}), tuning_release(_RUN, mean=4.0), _tracker(),
        rng=np.random.default_rng(7),
    )  # fmt: skip
    assert out.count >= 2
    hidden = [f"{s!r}" for s, _ in out.results if (s, _) != out.best]
    for text in (repr(out), str(out), f"{out}", "%s" % (out,)):  # noqa: UP031
        assert "count" not in text and "results" not in text
        assert not any(h in text for h in hidden) and repr(out.best[0]) in text
    with pytest.raises(TypeError):
        json.dumps({"tuning": out})


def test_tuning_is_recorded_before_k_is_drawn_and_refused_over_the_budget():
    """No finding: over the budget nothing runs and K is never drawn (the rng is untouched);
    within it, the one record is all the tracker holds when the first run starts."""
    record = tuning_release(dp_accounting.GaussianDpEvent(0.5), mean=10.0)
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    ran = []
    small = _tracker(1.0)
    with pytest.raises(dpjax.BudgetExceededError):
        private_tuning(lambda seed: ran.append(seed) or (0.0, None), record, small, rng=rng)
    assert ran == [] and small.releases == () and rng.bit_generator.state == before
    tracker = _tracker()
    seen = []
    private_tuning(
        lambda seed: seen.append(tracker.releases) or (0.0, None),
        tuning_release(_RUN, mean=3.0), tracker, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert seen and all(s == (tuning_release(_RUN, mean=3.0),) for s in seen)


@pytest.mark.parametrize(("mean", "shape"), [(3.0, 1.0), (3.0, 0.0), (2.5, 0.5), (3.0, POISSON)])
def test_tuning_epsilon_equals_dp_accountings_rdp_composition(mean, shape):
    """No finding: one record, alone or after another release, equals RdpAccountant's own."""
    record = tuning_release(_RUN, mean=mean, shape=shape)
    direct = RdpAccountant()
    direct.compose(dp_event.RepeatAndSelectDpEvent(_RUN, mean, shape))
    assert tuning_epsilon(record, 1e-5) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    tracker = _tracker()
    tracker.record(dpjax.GaussianRelease(20.0))  # e.g. private statistics first
    tracker.record(record)
    both = RdpAccountant()
    both.compose(dp_accounting.GaussianDpEvent(20.0))
    both.compose(dp_event.RepeatAndSelectDpEvent(_RUN, mean, shape))
    assert tracker.epsilon_spent() == pytest.approx(both.get_epsilon(1e-5), rel=1e-9)
    assert tracker.epsilon_spent() > tuning_epsilon(record, 1e-5)


# --- private_group_statistics ---------------------------------------------------------------------

G, CLIP, SIGMA = 3, 1.0, 0.5


def _noisy_sums(x, key=7):
    """The released noisy sums (2G numbers) recovered from the statistics (variance unfloored)."""
    stats = private_group_statistics(
        x, groups=G, clip_norm=CLIP, noise_multiplier=SIGMA, key=jax.random.key(key),
        tracker=dpjax.PrivacyTracker(math.inf, 1e-5), min_variance=1e-30, chunk=16,
    )  # fmt: skip
    mean = np.asarray(stats.mean, np.float64)
    second = np.asarray(stats.variance, np.float64) + mean**2
    return np.concatenate([mean, second]) * len(x)


_rows = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 3e19, 5.0, 0.0])


@settings(max_examples=8, deadline=None)
@given(value=_rows, index=st.integers(0, 19), kind=st.sampled_from(["add", "remove", "replace"]))
def test_neighbouring_data_moves_the_released_sums_by_at_most_the_clip_norm(value, index, kind):
    """No finding: add/remove moves the noisy sums by <= C, replace by <= 2C (same key)."""
    x = np.random.default_rng(index).normal(0.5, 0.3, (20, 2, 2, 6)).astype(np.float32)
    if kind == "add":
        other = np.concatenate([x, np.full((1, 2, 2, 6), value, np.float32)])
    elif kind == "remove":
        other = np.delete(x, index, axis=0)
    else:
        other = x.copy()
        other[index] = value
    moved = np.linalg.norm(_noisy_sums(x) - _noisy_sums(other))
    bound = (2 if kind == "replace" else 1) * CLIP
    assert math.isfinite(moved) and moved <= bound * (1 + 1e-4) + 1e-4


def test_statistics_never_repeat_a_training_steps_noise_when_given_the_training_key():
    # Finding 3 (fixed): the release drew from fold_in(key, 0), step 0's draw of any noise stage
    # with the same key: passing the training key by mistake gave the statistics exactly step 0's
    # noise (the attacker could cancel it). It now draws from fold_in(key, 2**32 - 2).
    key = jax.random.key(11)
    stats = private_group_statistics(
        np.zeros((8, 2, 2, 6), np.float32), groups=G, clip_norm=CLIP, noise_multiplier=SIGMA,
        key=key, tracker=dpjax.PrivacyTracker(math.inf, 1e-5),
    )  # fmt: skip
    z_stats = np.asarray(stats.mean, np.float64) * 8 / (SIGMA * CLIP)  # the standard normals drawn
    training = dpjax.add_gaussian_noise(1.0, key)
    state = training.init(None)
    for _ in range(4):
        z, state = training.update(jnp.zeros(2 * G), state)
        assert np.max(np.abs(np.asarray(z[:G]) - z_stats)) > 0.05


def test_statistics_are_refused_over_the_budget_before_the_data_are_read(monkeypatch):
    # Finding 4 (fixed, hardening): the per-example moments were clipped and summed on the
    # device BEFORE the release was recorded; over the budget it was refused only after. As
    # in private_group_clip_norms, the record now comes first and nothing is computed.
    calls = []
    real = _normalization._clipped_moments
    monkeypatch.setattr(
        _normalization, "_clipped_moments", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    small = dpjax.PrivacyTracker(target_epsilon=0.1, delta=1e-5)
    with pytest.raises(dpjax.BudgetExceededError):
        private_group_statistics(
            np.ones((4, 2, 2, 6), np.float32), groups=G, clip_norm=CLIP, noise_multiplier=1.0,
            key=jax.random.key(0), tracker=small,
        )  # fmt: skip
    assert calls == [] and small.releases == ()


# --- per-example, data-independent transforms -----------------------------------------------------


@pytest.mark.standard_promotion  # consumer code (the scattering filters), as in tests/features
@pytest.mark.parametrize("value", [np.nan, 1e30, -7.0])
def test_group_normalize_and_scattering_of_one_example_ignore_the_others(value):
    """No finding: changing example 1 (NaN, huge) leaves example 0's output bit-identical."""
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    y = x.copy()
    y[1] = value
    a, b = scatternet_features(x, J=1, L=4, chunk=2), scatternet_features(y, J=1, L=4, chunk=2)
    np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])
    assert a.shape == (3, 4, 4, 5)  # 1 + L channels for J = 1
    na, nb = group_normalize(a, groups=5), group_normalize(b, groups=5)
    np.testing.assert_array_equal(np.asarray(na)[[0, 2]], np.asarray(nb)[[0, 2]])
    stats = GroupStatistics(np.zeros(5, np.float32), np.ones(5, np.float32), 1.0)
    np.testing.assert_array_equal(
        np.asarray(stats.normalize(a))[[0, 2]], np.asarray(stats.normalize(b))[[0, 2]]
    )
