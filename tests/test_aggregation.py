"""The assembled DP-SGD aggregation: noise on the SUM, expected-size normalization, no silent fallback."""

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
    huge = optax.chain(dpjax.clip_per_example(1e9), dpjax.scale_by_expected_batch_size(16))
    out, _ = jax.jit(lambda g, s: huge.update(g, s, mask=real))(per_ex, huge.init(w))
    np.testing.assert_allclose(out, mean_grad, rtol=1e-5, atol=1e-7)


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
        dpjax.noisy_mean(1.0, 0.0, 4, key=jax.random.key(0))


@pytest.mark.parametrize("bad", [0, -3.0, math.inf])
def test_bad_expected_batch_size_is_refused(bad):
    with pytest.raises(ValueError, match="expected_batch_size="):
        dpjax.scale_by_expected_batch_size(bad)
