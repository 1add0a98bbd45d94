"""One-run auditing: the tail bound of Steinke et al. 2023, its coverage, and the canaries."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dpjax
from dpjax import audit

DELTA = 1e-5


def test_p_value_without_delta_is_the_binomial_tail():
    for m, r, v, eps in [(100, 50, 30, 0.5), (1000, 200, 150, 1.0), (10, 10, 0, 2.0)]:
        q = 1 / (1 + math.exp(-eps))
        assert audit.one_run_p_value(m, r, v, eps, 0.0) == pytest.approx(
            scipy.stats.binom.sf(v - 1, r, q)
        )


def test_p_value_delta_term_is_the_papers_maximum():
    m, r, v, eps, delta = 500, 40, 35, 1.0, 1e-4
    q = 1 / (1 + math.exp(-eps))
    alpha = max(
        sum(scipy.stats.binom.pmf(v - j, r, q) for j in range(1, i + 1)) / i
        for i in range(1, v + 1)
    )
    expected = scipy.stats.binom.sf(v - 1, r, q) + alpha * delta * 2 * m
    assert audit.one_run_p_value(m, r, v, eps, delta) == pytest.approx(expected)


def test_bound_is_monotone_and_perfect_guesses_reach_the_best_bound():
    bounds = [audit.one_run_epsilon_lower_bound(1000, 100, v, DELTA) for v in (60, 80, 95, 100)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    level = 1 - 0.05 / len(audit._one_run.DEFAULT_GUESS_FRACTIONS)
    perfect = audit.one_run_epsilon_lower_bound(1000, 1000, 1000, DELTA, level)
    assert audit.one_run_best_bound(1000, DELTA) >= perfect


def test_bound_at_its_value_is_refuted_just_so():
    eps = audit.one_run_epsilon_lower_bound(1000, 200, 160, DELTA)
    assert audit.one_run_p_value(1000, 200, 160, eps, DELTA) < 0.05
    assert audit.one_run_p_value(1000, 200, 160, eps + 1e-3, DELTA) >= 0.05


def test_one_run_audit_covers_randomized_response():
    # Each canary's score is its membership bit passed through eps-randomized response:
    # an exactly eps-DP release of each bit. The 95 % bound must stay below eps.
    eps, m = 2.0, 2000
    rng = np.random.default_rng(0)
    results = []
    for _ in range(20):
        included = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        said = np.where(truthful, included, ~included)
        results.append(audit.one_run_audit(said + rng.random(m) * 1e-3, included, 0.0))
    assert sum(r.epsilon > eps for r in results) <= 1
    assert np.median([r.epsilon for r in results]) > 1.0  # informative
    assert all(r.epsilon <= r.best_possible for r in results)


def test_one_run_audit_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="scores"):
        audit.one_run_audit(np.zeros(5), np.zeros(4, bool), DELTA)
    with pytest.raises(ValueError, match="guess_fractions"):
        audit.one_run_audit(np.zeros(4), np.zeros(4, bool), DELTA, guess_fractions=(0.0,))


def test_input_space_canaries_are_mislabelled_or_ood():
    x = np.random.default_rng(0).random((50, 8)).astype(np.float32)
    y = np.arange(50) % 5
    c = audit.input_space_canaries(x, y, 20, 5, seed=1)
    rows = [int(np.flatnonzero((x == cx).all(1))[0]) for cx in c.x]  # drawn from the pool
    assert np.all(c.y != y[rows]) and c.y.min() >= 0 and c.y.max() < 5
    assert 0 < c.included.sum() < 20
    ood = audit.input_space_canaries(x, y, 30, 5, kind="ood", seed=1)
    assert ood.x.shape == (30, 8) and ood.x.min() >= x.min() and ood.x.max() <= x.max()
    with pytest.raises(ValueError, match="kind="):
        audit.input_space_canaries(x, y, 5, 5, kind="typo", seed=1)
    with pytest.raises(ValueError, match="count=60"):
        audit.input_space_canaries(x, y, 60, 5, seed=1)


def test_dirac_canaries_are_clipped_and_noised_like_any_example():
    params = {"a": jnp.zeros((3, 4)), "b": jnp.zeros(5)}
    c = audit.dirac_canaries(params, 10, 2.0, seed=0)
    grads = {"a": jnp.ones((2, 3, 4)), "b": jnp.ones((2, 5))}
    sampled = np.arange(10) % 2 == 0
    g, mask = audit.with_dirac_canaries(grads, jnp.ones(2, bool), c, jnp.asarray(sampled))
    assert g["a"].shape == (12, 3, 4) and g["b"].shape == (12, 5)
    flat = np.concatenate([np.asarray(g["a"]).reshape(12, -1), np.asarray(g["b"])], axis=1)
    np.testing.assert_array_equal(np.linalg.norm(flat[2:], axis=1), 2.0)  # norm C: kept whole
    np.testing.assert_array_equal(np.argmax(flat[2:], axis=1), c.coordinates)
    np.testing.assert_array_equal(np.asarray(mask[2:]), sampled & c.included)
    clipped = dpjax.clip_and_sum(g, 2.0, mask)
    in_sum = np.concatenate([np.ravel(clipped.sum["a"]), np.ravel(clipped.sum["b"])])
    on = c.coordinates[sampled & c.included]
    assert np.all(in_sum[on] > 2.0 * 0.999)  # the canary's C is in the sum


def test_dirac_canary_scores_read_the_canary_coordinates():
    params = {"w": jnp.zeros(6)}
    c = audit.dirac_canaries(params, 3, 1.0, seed=0)
    after = {"w": -jnp.arange(6.0)}
    np.testing.assert_allclose(audit.dirac_canary_scores(params, after, c), c.coordinates)


def test_white_box_one_run_audit_of_a_dp_run_stays_below_its_epsilon_and_has_power():
    data = dpjax.load_dataset("digits", seed=0)
    x, y = data.train.x.reshape(-1, 64)[:100], data.train.y[:100]
    canaries = audit.dirac_canaries({"w": np.zeros((64, 10)), "b": np.zeros(10)}, 400, 1.0, seed=3)
    models = audit.train_models(
        x, y, np.ones((1, 100), bool), num_classes=10, steps=10, expected_batch_size=100,
        learning_rate=0.5, target_epsilon=8.0, canaries=canaries, seed=1,
    )  # fmt: skip
    first = jax.tree.map(lambda a: a[0], models.initial_params)
    last = jax.tree.map(lambda a: a[0], models.params)
    scores = audit.dirac_canary_scores(first, last, canaries)
    result = audit.one_run_audit(scores, canaries.included, DELTA)
    audit.check_lower_bound(result.epsilon, models.epsilon, "the one-run audit")
    assert result.epsilon > 0.5  # it sees the canaries (400 of them prove at most ~4.4)
