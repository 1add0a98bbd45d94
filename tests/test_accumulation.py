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


def _ghost_mlp():
    from dpjax import ghost

    key = jax.random.key(3)
    params = {
        "l1": {"w": 0.5 * jax.random.normal(key, (6, 8)), "b": jnp.zeros(8)},
        "l2": {"w": 0.5 * jax.random.normal(jax.random.fold_in(key, 1), (8, 3)), "b": jnp.zeros(3)},
    }

    def logits(p, x):
        h = jnp.tanh(ghost.ghost_dense(x, p["l1"]["w"], p["l1"]["b"]))
        return ghost.ghost_dense(h, p["l2"]["w"], p["l2"]["b"])

    def losses(p, batch):
        x, y = batch
        return -jnp.take_along_axis(jax.nn.log_softmax(logits(p, x)), y[:, None], axis=1)[:, 0]

    return params, losses


def test_ghost_clipper_accumulated_over_microbatches_matches_an_eager_loop_under_jit():
    from dpjax import ghost

    params, losses = _ghost_mlp()
    key = jax.random.key(4)
    x = 2.0 * jax.random.normal(key, (16, 6))
    y = jnp.arange(16) % 3
    mask = jnp.arange(16) < 13
    x = x.at[13].set(jnp.nan).at[14].set(1e6)  # padded rows: hostile, and masked out
    c = 0.3
    # The reference: one example at a time, eagerly, clipped to c, summed over the real rows.
    want = jax.tree.map(jnp.zeros_like, params)
    for i in range(13):
        g = jax.grad(lambda p, i=i: losses(p, (x[i : i + 1], y[i : i + 1]))[0])(params)
        norm = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g)))
        want = jax.tree.map(lambda a, b, n=norm: a + b * jnp.minimum(1.0, c / n), want, g)
    clipper = ghost.ghost_clipped_grads(losses, l2_norm=c)
    for m in (4, 8, 16):
        acc = jax.jit(dpjax.accumulate_microbatches(clipper, microbatch_size=m))
        got = acc(params, (x, y), mask)
        assert got.sensitivity == c
        for a, b in zip(jax.tree.leaves(got.sum), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_accumulated_ghost_sum_moves_by_at_most_c_when_one_example_is_added():
    from dpjax import ghost

    params, losses = _ghost_mlp()
    x = 50.0 * jax.random.normal(jax.random.key(5), (8, 6))
    y = jnp.arange(8) % 3
    acc = jax.jit(
        dpjax.accumulate_microbatches(
            ghost.ghost_clipped_grads(losses, l2_norm=1.0), microbatch_size=4
        )
    )
    with_it = acc(params, (x, y), jnp.ones(8, bool))
    without = acc(params, (x, y), jnp.arange(8) != 5)
    diff = jax.tree.map(jnp.subtract, with_it.sum, without.sum)
    norm = float(jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(diff))))
    assert 0.5 < norm <= 1.0 + 1e-5  # a large example: clipped to exactly C


def test_accumulate_microbatches_refuses_a_batch_that_is_not_a_multiple():
    params, batch, mask, grads = _setup()
    clipper = dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=12)
    with pytest.raises(ValueError, match="multiple of microbatch_size=5"):
        dpjax.accumulate_microbatches(clipper, microbatch_size=5)(params, batch, mask)
    with pytest.raises(ValueError, match="microbatch_size"):
        dpjax.accumulate_microbatches(clipper, microbatch_size=0)
