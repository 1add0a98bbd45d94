"""The floating-point-attack-resistant noise: exact discrete Gaussian on a grid (CKS20)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

import dpjax
from dpjax import _noise, _random


def _pmf(sigma2, support):
    weights = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma2))
    return weights / weights.sum()


@pytest.mark.parametrize(("sigma2", "t"), [(12, 4), (2, 1), (2, 2)])
def test_discrete_gaussian_matches_its_pmf_by_chi_square_and_ks(sigma2, t):
    n = 40_000
    y = _random.discrete_gaussian(n, sigma2, t)
    bound = int(8 * math.sqrt(sigma2)) + 2
    support = np.arange(-bound, bound + 1)
    pmf = _pmf(sigma2, support)
    assert np.abs(y).max() <= bound  # 8 sigma: probability < 1e-13 per draw
    counts = np.bincount(y + bound, minlength=support.size)
    keep = pmf * n >= 5  # chi-square cells with enough expected mass; the rest pooled
    observed = np.append(counts[keep], counts[~keep].sum())
    expected = np.append(pmf[keep] * n, pmf[~keep].sum() * n)
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3
    # Kolmogorov-Smirnov distance of the empirical CDF to the exact one (conservative on Z).
    ks = np.abs(np.cumsum(counts) / n - np.cumsum(pmf)).max()
    assert ks < 1.95 / math.sqrt(n)  # the 0.001 critical value


def test_discrete_gaussian_std_matches_sigma_for_a_large_variance():
    sigma2 = 1000 * 1001  # t = 1001 divides it
    y = _random.discrete_gaussian(100_000, sigma2, 1001)
    assert abs(y.std() / math.sqrt(sigma2) - 1) < 0.01
    assert abs(y.mean()) < 5 * math.sqrt(sigma2 / y.size)
    # For sigma >> 1 the discrete Gaussian is the continuous one on the integers.
    z = (y + np.random.default_rng(0).uniform(-0.5, 0.5, y.size)) / math.sqrt(sigma2)
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3


def test_exact_bernoulli_exp_has_the_right_mean():
    n = 100_000
    for num, den in ((5, 3), (1, 1), (0, 7), (7, 40)):
        b = _random._bernoulli_exp(np.full(n, num, np.int64), np.full(n, den, np.int64))
        p = math.exp(-num / den)
        assert abs(b.mean() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_uniform_below_is_unbiased_for_a_bound_that_does_not_divide_2_pow_64():
    u = _random._uniform_below(np.full(60_000, 3, np.int64))
    assert set(np.unique(u)) == {0, 1, 2}
    assert scipy.stats.chisquare(np.bincount(u)).pvalue > 1e-3


def test_every_random_bit_comes_from_the_os_csprng(monkeypatch):
    used = []
    real = _random.secrets.token_bytes
    monkeypatch.setattr(_random.secrets, "token_bytes", lambda k: used.append(k) or real(k))
    _random.discrete_gaussian(100, 12, 4)
    assert sum(used) >= 8 * 100


def test_bad_discrete_parameters_are_refused():
    with pytest.raises(ValueError, match="multiple of t"):
        _random.discrete_gaussian(3, 13, 4)
    with pytest.raises(ValueError, match="multiple of t"):
        _random.discrete_gaussian(3, 2**60, 2**30)


def _mechanism_draw(sigma, rows, c=1.0, calls=1):
    tx = dpjax.gaussian_mechanism(sigma, key=jax.random.key(0), sampler="discrete")
    clipped = dpjax.clip_and_sum(rows, c, mask=jnp.ones(rows.shape[0], bool))
    update = jax.jit(tx.update)
    state, outs = tx.init(None), []
    for _ in range(calls):
        out, state = update(clipped, state)
        outs.append(np.asarray(out))
    return clipped, outs, state


def test_discrete_mechanism_noise_std_is_sigma_times_the_grid_sensitivity():
    sigma, d = 1.5, 20_000
    rows = jax.random.normal(jax.random.key(1), (4, d)) * 0.01
    clipped, (out,), state = _mechanism_draw(sigma, rows)
    grid = _noise.DiscreteGrid.for_sum(sigma, 1.0, d)
    noise = out.astype(np.float64) - np.asarray(clipped.sum, np.float64)
    want = math.sqrt(grid.sigma2) * grid.step  # ~ 1.01 sigma C
    assert want >= sigma * 1.0 and want < sigma * 1.0 * 1.011
    assert abs(noise.std() / want - 1) < 0.03
    assert scipy.stats.kstest(noise / want, "norm").pvalue > 1e-3
    assert int(state.count) == 1 and out.dtype == np.float32


def test_discrete_release_is_on_the_public_grid_and_fresh_every_call():
    rows = jnp.full((3, 50), 0.1)
    _, (a, b), state = _mechanism_draw(2.0, rows, calls=2)
    grid = _noise.DiscreteGrid.for_sum(2.0, 1.0, 50)
    units = a.astype(np.float64) / grid.step
    # A grid step times an integer (up to float32's rounding of that product: post-processing).
    assert np.abs(units - np.rint(units)).max() < 1e-3 * np.abs(units).max() / 2**10 + 1e-3
    assert not np.array_equal(a, b) and int(state.count) == 2


@given(
    st.lists(st.floats(-3, 3), min_size=1, max_size=40),
    st.lists(st.floats(-1, 1), min_size=1, max_size=40),
    st.floats(0.05, 10.0),
)
def test_rounding_to_the_grid_moves_the_sensitivity_by_at_most_the_stated_bound(base, move, c):
    d = min(len(base), len(move))
    s = np.asarray(base[:d], np.float32) * np.float32(c)
    direction = np.asarray(move[:d], np.float64)
    norm = np.linalg.norm(direction)
    step = direction / norm * c if norm > 0 else direction
    s2 = (s.astype(np.float64) + step).astype(np.float32)  # a neighbour at distance <= c
    grid = _noise.DiscreteGrid.for_sum(1.0, c * (1 + 1e-6), d)
    moved = _noise._round_to_grid(s, grid) - _noise._round_to_grid(s2, grid)
    assert np.linalg.norm(moved.astype(np.float64)) <= grid.sensitivity


def test_discrete_sampler_options_are_validated():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="sampler='gauss' is unknown"):
        dpjax.gaussian_mechanism(1.0, key, sampler="gauss")
    schedule = dpjax.NoiseSchedule(((1.0, 2),))
    with pytest.raises(ValueError, match="constant noise_multiplier"):
        dpjax.gaussian_mechanism(schedule, key, sampler="discrete")
    with pytest.raises(ValueError, match="beyond the exact"):
        _noise.DiscreteGrid.for_sum(1e4, 1.0, 10**9)
    tx = dpjax.gaussian_mechanism(1.0, key, sampler="discrete")
    clipped = dpjax.clip_and_sum(jnp.ones((2, 3)), 1.0, mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="support"):
        tx.update(dataclasses.replace(clipped, support=jnp.ones(3, bool)), tx.init(None))


def test_speed_benchmark_times_the_discrete_sampler_against_the_float_one():
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
    import speed  # noqa: PLC0415

    rec = speed.run_secure_noise({"sizes": [500], "steps": 1})
    [row] = rec["rows"]
    assert row["coordinates"] == 500 and row["calls_timed"] == 1
    assert row["float_median_ms"] > 0 and row["discrete_median_ms"] > 0
    assert row["ratio_discrete_over_float"] == row["discrete_median_ms"] / row["float_median_ms"]
