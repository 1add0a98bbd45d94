"""The assembled DP-SGD aggregation: noise on the SUM, expected-size normalization, no silent fallback."""

import inspect
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax


def test_noise_std_is_sigma_c_on_the_sum_divided_by_expected_size():
    c, sigma, n = 2.0, 1.5, 8.0
    tx = dpjax.dp_aggregate(c, sigma, n, key=jax.random.key(0))
    zero = jnp.zeros((4, 100_000))
    out, _ = jax.jit(tx.update)(zero, tx.init(None), mask=jnp.ones(4, bool))
    assert abs(float(jnp.std(out)) / (sigma * c / n) - 1) < 0.05


def test_empty_batch_still_gets_noise():
    tx = dpjax.dp_aggregate(1.0, 1.0, 10.0, key=jax.random.key(0))
    out, _ = jax.jit(tx.update)(jnp.ones((4, 50_000)), tx.init(None), mask=jnp.zeros(4, bool))
    assert abs(float(jnp.std(out)) / 0.1 - 1) < 0.05
    assert abs(float(jnp.mean(out))) < 0.01


def test_divides_by_expected_not_realized_batch_size():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        tx = dpjax.non_private_aggregate(expected_batch_size=10)
    g = jnp.ones((4, 3))
    out, _ = tx.update(g, tx.init(None), mask=jnp.array([True, True, True, False]))
    np.testing.assert_allclose(out, np.full(3, 0.3), rtol=1e-6)


def test_huge_clip_and_non_private_mode_reproduce_the_plain_mean_gradient():
    key = jax.random.key(1)
    w = jax.random.normal(key, (6,))
    x = jax.random.normal(jax.random.fold_in(key, 1), (16, 6))
    loss = lambda w, xi: jnp.log1p(jnp.exp(xi @ w))  # noqa: E731
    mean_grad = jax.grad(lambda w: jnp.mean(jax.vmap(loss, (None, 0))(w, x)))(w)
    per_ex = dpjax.per_example_grads(loss)(w, x)
    with pytest.warns(dpjax.NotPrivateWarning, match="NOT PRIVATE"):
        tx = optax.chain(dpjax.non_private_aggregate(16), optax.sgd(1.0))
    real = jnp.ones(16, bool)
    updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, mask=real))(per_ex, tx.init(w), w)
    np.testing.assert_allclose(-updates, mean_grad, rtol=1e-5, atol=1e-7)
    with pytest.warns(dpjax.NotPrivateWarning):
        huge = optax.chain(dpjax.clip_per_example(1e9), dpjax.non_private_mean(16))
    out, _ = jax.jit(lambda g, s: huge.update(g, s, mask=real))(per_ex, huge.init(w))
    np.testing.assert_allclose(out, mean_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.standard_promotion  # optax.adam promotes its int32 step count
def test_dp_sgd_with_adam_is_one_line_and_jits():
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    tx = dpjax.dp_sgd(
        optax.adam(1e-2),
        l2_norm=1.0,
        noise_multiplier=1.1,
        expected_batch_size=4,
        key=jax.random.key(0),
    )
    grads = jax.tree.map(lambda p: jnp.ones((4,) + p.shape), params)
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, mask=jnp.ones(4, bool)))
    u1, state = step(grads, state, params)
    u2, state = step(grads, state, params)
    assert jax.tree.map(jnp.shape, u1) == jax.tree.map(jnp.shape, params)
    assert not np.allclose(u1["w"], u2["w"])  # fresh noise each step


@pytest.mark.parametrize("sigma", [0.0, -0.5, math.nan, math.inf])
def test_zero_or_bad_noise_is_refused_and_points_to_the_explicit_opt_out(sigma):
    with pytest.raises(ValueError, match=r"noise_multiplier="):
        dpjax.dp_sgd(
            optax.sgd(0.1),
            l2_norm=1.0,
            noise_multiplier=sigma,
            expected_batch_size=4,
            key=jax.random.key(0),
        )


def test_zero_noise_message_names_the_not_private_opt_out():
    with pytest.raises(ValueError, match=r"no privacy.*NOT PRIVATE"):
        dpjax.noisy_mean(0.0, 4, key=jax.random.key(0))


@pytest.mark.parametrize("bad", [0, -3.0, math.inf])
def test_bad_expected_batch_size_is_refused(bad):
    with pytest.raises(ValueError, match="expected_batch_size="):
        dpjax.scale_by_expected_batch_size(bad)


# ---- the sensitivity travels with the clipped sum (architecture issue)


def _clipped(c, rows=8, dim=20_000):
    g = jnp.ones((rows, dim)) * 10.0  # every row clipped to c
    return dpjax.clip_and_sum(g, c, jnp.ones(rows, bool))


@pytest.mark.parametrize("c", [0.1, 1.0, 7.5])
def test_noise_std_is_sigma_times_the_sensitivity_the_clipper_carried(c):
    clipped = _clipped(c)
    assert clipped.sensitivity == c
    tx = dpjax.gaussian_mechanism(1.3, key=jax.random.key(5))
    noisy, _ = jax.jit(tx.update)(clipped, tx.init(None))
    noise = np.asarray(noisy - clipped.sum)
    assert abs(noise.std() / (1.3 * c) - 1) < 0.03


def test_the_noise_stage_takes_no_clip_norm_and_cannot_be_given_another():
    for fn in (dpjax.gaussian_mechanism, dpjax.noisy_mean):
        params = inspect.signature(fn).parameters
        assert not {"l2_norm", "clip_norm", "sensitivity", "stddev"} & set(params), params
    # The old four-argument form (C given a second time) no longer exists.
    with pytest.raises(TypeError):
        dpjax.noisy_mean(1.0, 1.1, 256, jax.random.key(0))


def test_the_noise_stage_refuses_anything_but_a_clipped_sum():
    tx = dpjax.noisy_mean(1.0, 8, key=jax.random.key(0))
    with pytest.raises(ValueError, match="ClippedSum"):
        tx.update(jnp.ones(3), tx.init(None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        unclipped = dpjax.not_private_sum()
    s, _ = unclipped.update(jnp.ones((2, 3)), unclipped.init(None), mask=jnp.ones(2, bool))
    with pytest.raises(ValueError, match="sensitivity inf"):
        tx.update(s, tx.init(None))


@pytest.mark.standard_promotion
def test_a_clipped_sum_without_noise_cannot_be_applied_to_the_parameters():
    tx = optax.chain(dpjax.clip_per_example(1.0), optax.sgd(0.1))  # the noise left out
    params = {"w": jnp.zeros(3)}
    updates, _ = tx.update({"w": jnp.ones((4, 3))}, tx.init(params), params, mask=jnp.ones(4, bool))
    assert isinstance(updates, dpjax.ClippedSum)
    with pytest.raises((TypeError, ValueError)):
        optax.apply_updates(params, updates)


def test_every_clipper_carries_its_clip_norm_as_sensitivity():
    loss = lambda w, x: jnp.sum((x @ w) ** 2)  # noqa: E731
    w, x, mask = jnp.ones(3), jnp.ones((4, 3)), jnp.ones(4, bool)
    grads = dpjax.per_example_grads(loss)
    assert dpjax.clip_and_sum(grads(w, x), 0.3, mask).sensitivity == 0.3
    tx = dpjax.clip_per_example(0.4)
    assert tx.update(grads(w, x), tx.init(w), mask=mask)[0].sensitivity == 0.4
    acc = dpjax.accumulate_clipped_grads(grads, l2_norm=0.5, microbatch_size=2)
    assert jax.jit(acc)(w, x, mask).sensitivity == 0.5


def test_the_raw_noise_primitive_refuses_a_clipped_sum():
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="gaussian_mechanism"):
        tx.update(_clipped(1.0, dim=3), tx.init(None))
