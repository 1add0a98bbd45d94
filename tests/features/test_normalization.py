"""Feature normalization: per-example GroupNorm (free) and DP group statistics (accounted)."""

import jax
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax
from dpjax.features import GroupStatistics, group_normalize, private_group_statistics


def test_group_normalize_matches_a_reference_groupnorm():
    x = np.random.default_rng(0).normal(2.0, 3.0, (4, 7, 7, 81)).astype(np.float32)
    y = np.asarray(group_normalize(x, groups=27))
    g = x.reshape(4, 49, 27, 3)
    ref = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(
        g.var(axis=(1, 3), keepdims=True) + 1e-5
    )
    np.testing.assert_allclose(y, ref.reshape(x.shape), atol=1e-4)
    with pytest.raises(ValueError, match="groups=4 does not divide"):
        group_normalize(x, groups=4)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 3), st.floats(-5, 5), st.floats(0.1, 10))
def test_group_normalize_is_per_example(i, shift, scale):
    # Changing, adding or removing any OTHER example never changes an example's features:
    # a fixed function of one example, so it costs no privacy.
    x = np.random.default_rng(1).normal(size=(4, 3, 3, 6)).astype(np.float32)
    other = x.copy()
    other[i] = other[i] * scale + shift
    keep = [k for k in range(4) if k != i]
    np.testing.assert_allclose(
        np.asarray(group_normalize(x, 3))[keep], np.asarray(group_normalize(other, 3))[keep]
    )
    np.testing.assert_allclose(
        np.asarray(group_normalize(x[keep], 3)), np.asarray(group_normalize(x, 3))[keep]
    )


def _features(n=600, seed=0):
    return np.random.default_rng(seed).normal(0.4, 0.2, (n, 2, 2, 6)).astype(np.float32)


def test_private_statistics_record_one_gaussian_release_before_releasing():
    tracker = dpjax.PrivacyTracker(target_epsilon=3.0, delta=1e-5)
    stats = private_group_statistics(
        _features(),
        groups=3,
        clip_norm=2.0,
        noise_multiplier=4.0,
        key=jax.random.key(0),
        tracker=tracker,
    )
    assert isinstance(stats, GroupStatistics) and stats.noise_multiplier == 4.0
    assert tracker.releases == (dpjax.GaussianRelease(noise_multiplier=4.0),)
    assert tracker.epsilon_spent() == pytest.approx(
        dpjax.compute_epsilon(4.0, 1, 1.0, 1e-5), rel=1e-6
    )
    np.testing.assert_allclose(stats.mean, 0.4, atol=0.05)
    np.testing.assert_allclose(stats.variance, 0.04, atol=0.05)


def test_a_release_beyond_the_budget_is_refused_and_nothing_is_released():
    tracker = dpjax.PrivacyTracker(target_epsilon=0.1, delta=1e-5)
    with pytest.raises(dpjax.BudgetExceededError):
        private_group_statistics(
            _features(),
            groups=3,
            clip_norm=1.0,
            noise_multiplier=1.0,
            key=jax.random.key(0),
            tracker=tracker,
        )
    assert tracker.releases == ()


def test_the_noise_has_std_sigma_times_the_clip_norm():
    # Identical rows of norm < C: the noisy sums minus the true sums are N(0, (sigma C)^2),
    # one independent draw per released coordinate (400 of them per release).
    n, sigma, clip = 50, 3.0, 1.5
    x = np.full((n, 1, 1, 200), 0.01, np.float32)  # 400 moments, norm 0.14 < C
    errors = []
    for seed in range(2):
        tracker = dpjax.PrivacyTracker(target_epsilon=float("inf"), delta=1e-5)
        s = private_group_statistics(
            x,
            groups=200,
            clip_norm=clip,
            noise_multiplier=sigma,
            key=jax.random.key(seed),
            tracker=tracker,
            chunk=64,
            min_variance=1e-30,
        )
        errors.append((s.mean - 0.01) * n)
    result = scipy.stats.kstest(np.concatenate(errors) / (sigma * clip), "norm")
    assert result.pvalue > 1e-3


def test_one_example_moves_the_clipped_sum_by_at_most_the_clip_norm():
    # The sensitivity: with sigma tiny the release IS the clipped sum (up to the noise).
    x = _features(40)
    outlier = np.full((1, 2, 2, 6), 1e4, np.float32)
    sums = []
    for data in (x, np.concatenate([x, outlier])):
        tracker = dpjax.PrivacyTracker(target_epsilon=float("inf"), delta=1e-5)
        s = private_group_statistics(
            data,
            groups=3,
            clip_norm=0.5,
            noise_multiplier=1e-6,
            key=jax.random.key(0),
            tracker=tracker,
        )
        sums.append(np.concatenate([s.mean, s.mean**2 + s.variance]) * len(data))
    assert np.linalg.norm(sums[1] - sums[0]) <= 0.5 * (1 + 1e-3)


def test_normalize_with_released_statistics():
    stats = GroupStatistics(np.array([1.0, 2.0], np.float32), np.array([4.0, 9.0], np.float32), 1.0)
    x = np.array([[[[3.0, 3.0, 5.0, 5.0]]]], np.float32)
    np.testing.assert_allclose(np.asarray(stats.normalize(x, epsilon=0.0)), [[[[1, 1, 1, 1]]]])


def test_invalid_arguments_are_named():
    tracker = dpjax.PrivacyTracker(target_epsilon=1.0, delta=1e-5)
    kw = dict(groups=3, key=jax.random.key(0), tracker=tracker)
    with pytest.raises(ValueError, match="noise_multiplier"):
        private_group_statistics(_features(), clip_norm=1.0, noise_multiplier=0.0, **kw)
    with pytest.raises(ValueError, match="clip_norm"):
        private_group_statistics(_features(), clip_norm=-1.0, noise_multiplier=1.0, **kw)
    with pytest.raises(ValueError, match="tracker"):
        private_group_statistics(
            _features(),
            groups=3,
            clip_norm=1.0,
            noise_multiplier=1.0,
            key=jax.random.key(0),
            tracker=None,
        )
