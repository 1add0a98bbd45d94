"""Microbatching: clip per microbatch, accumulate, add noise once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax


def _setup():
    key = jax.random.key(0)
    params = {"w": jax.random.normal(key, (5, 3)), "b": jnp.zeros(3)}
    x = 3.0 * jax.random.normal(jax.random.fold_in(key, 1), (12, 5))
    y = jnp.arange(12) % 3

    def loss(p, ex):
        return -jax.nn.log_softmax(ex[0] @ p["w"] + p["b"])[ex[1]]

    mask = jnp.array([True] * 9 + [False] * 3)
    return params, (x, y), mask, dpjax.per_example_grads(loss)


def test_k_microbatches_plus_one_noise_draw_equals_the_whole_batch_with_the_same_key():
    params, batch, mask, grads = _setup()
    c, sigma, n = 0.5, 1.3, 9.0
    whole = dpjax.dp_aggregate(c, sigma, n, key=jax.random.key(42))
    want, _ = jax.jit(whole.update)(grads(params, batch), whole.init(params), mask=mask)
    for m in (1, 3, 4, 12):
        clipped = jax.jit(dpjax.accumulate_clipped_grads(grads, l2_norm=c, microbatch_size=m))(
            params, batch, mask
        )
        assert clipped.sensitivity == c  # carried from the clipper: the noise reads it
        noise = dpjax.noisy_mean(sigma, n, key=jax.random.key(42))
        got, _ = noise.update(clipped, noise.init(params))
        stats = clipped.stats
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert int(stats.num_nonfinite) == 0


def test_accumulated_sum_equals_clipping_the_whole_batch_at_once():
    params, batch, mask, grads = _setup()
    acc = jax.jit(dpjax.accumulate_clipped_grads(grads, l2_norm=0.5, microbatch_size=4))
    got = acc(params, batch, mask)
    want = dpjax.clip_and_sum(grads(params, batch), 0.5, mask)
    for a, b in zip(jax.tree.leaves(got.sum), jax.tree.leaves(want.sum), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(got.stats.num_clipped) == int(want.stats.num_clipped)
    assert got.sensitivity == want.sensitivity == 0.5


def test_batch_not_a_multiple_of_microbatch_size_is_refused():
    params, batch, mask, grads = _setup()
    acc = dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=5)
    with pytest.raises(ValueError, match="not a multiple of microbatch_size=5"):
        jax.jit(acc)(params, batch, mask)


def test_mask_of_the_wrong_shape_is_refused_before_reshaping():
    params, batch, mask, grads = _setup()
    acc = dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=4)
    with pytest.raises(ValueError, match=r"mask has shape \(11,\)"):
        jax.jit(acc)(params, batch, mask[:11])
