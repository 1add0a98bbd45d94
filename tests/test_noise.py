"""Gaussian noise: the right std on the sum, fresh every step, reproducible from a seed."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dpjax


def _draw(stddev, shape, key=0, steps=1):
    tx = dpjax.add_gaussian_noise(stddev, key=jax.random.key(key))
    state = tx.init(None)
    update = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        noisy, state = update(jnp.zeros(shape), state)
        out.append(np.asarray(noisy))
    return out, state


def test_noise_std_within_5_percent_and_gaussian_by_ks_test():
    (noise,), _ = _draw(2.5, (200_000,))
    assert abs(noise.std() / 2.5 - 1) < 0.05
    assert abs(noise.mean()) < 5 * 2.5 / math.sqrt(noise.size)
    assert scipy.stats.kstest(noise, scipy.stats.norm(scale=2.5).cdf).pvalue > 1e-3


def test_noise_is_independent_across_leaves_and_coordinates():
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(3))
    out, _ = tx.update({"a": jnp.zeros(50_000), "b": jnp.zeros(50_000)}, tx.init(None))
    assert abs(np.corrcoef(out["a"], out["b"])[0, 1]) < 0.02


def test_consecutive_steps_draw_different_noise():
    (a, b), state = _draw(1.0, (1000,), steps=2)
    assert not np.allclose(a, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15
    assert int(state.count) == 2


def test_same_seed_reproduces_and_another_seed_differs():
    a, _ = _draw(1.0, (100,), key=7, steps=3)
    b, _ = _draw(1.0, (100,), key=7, steps=3)
    c, _ = _draw(1.0, (100,), key=8, steps=3)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert not np.allclose(np.stack(a), np.stack(c))


def test_restored_state_continues_instead_of_replaying():
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
    uninterrupted, _ = _draw(1.0, (10,), steps=3)
    state = tx.init(None)
    _, state = tx.update(jnp.zeros(10), state)
    _, state = tx.update(jnp.zeros(10), state)
    # A checkpoint stores the state (count and key data); restoring continues at step 2.
    saved = {"count": int(state.count), "key": np.asarray(jax.random.key_data(state.key))}
    restored = dpjax.GaussianNoiseState(
        count=jnp.asarray(saved["count"], jnp.int32), key=jax.random.wrap_key_data(saved["key"])
    )
    third, _ = tx.update(jnp.zeros(10), restored)
    np.testing.assert_array_equal(third, uninterrupted[2])
    assert not np.allclose(third, uninterrupted[0])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_invalid_stddev_is_refused(bad):
    with pytest.raises(ValueError, match="stddev="):
        dpjax.add_gaussian_noise(bad, key=jax.random.key(0))


def test_missing_key_is_refused():
    with pytest.raises(ValueError, match=r"key=None.*jax.random.key"):
        dpjax.add_gaussian_noise(1.0, key=None)


def test_legacy_uint32_key_is_accepted():
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.PRNGKey(0))
    out, _ = tx.update(jnp.zeros(3), tx.init(None))
    assert np.all(np.asarray(out) != 0)


def test_donating_the_state_does_not_break_the_next_init():
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
    update = jax.jit(tx.update, donate_argnums=1)
    first, _ = update(jnp.zeros(4), tx.init(None))
    again, _ = update(jnp.zeros(4), tx.init(None))  # the first state's buffers were donated
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_get_full_precision_gaussian_noise(dtype):
    # A bf16 normal has ~128 values and |z| < 2.9: distinguishable neighbours (infinite loss).
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
    out, _ = jax.jit(tx.update)(jnp.zeros(200_000, dtype), tx.init(None))
    out = np.asarray(out)
    assert out.dtype == np.float32
    assert len(np.unique(out)) > 100_000
    assert np.abs(out).max() > 4.0
    assert scipy.stats.kstest(out, scipy.stats.norm().cdf).pvalue > 1e-3
