"""Review of the trainer's levers (issue 17, section 5), as an attacker would.

Attacks tried on augmentation multiplicity: an example whose clipped gradient depends on ANOTHER
example of the batch (so adding one example moves several rows), a per-example gradient that
is not the mean of its K augmentations' gradients (averaged after clipping, or over the batch),
and augmentation keys that repeat across steps. On the EMA: a value that depends on anything but
the released parameters and the public step.
"""

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax.training import _levers

B, H, W, CH, K, C = 3, 6, 6, 1, 4, 0.5


def _apply(params, x):
    return x.reshape(x.shape[0], -1) @ params  # (n, H*W*CH) @ (H*W*CH, 2)


def _loss(out, y):
    return jnp.sum((out - y) ** 2)


def _batch(seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(B, H, W, CH)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(B, 2)), jnp.float32)
    keys = jax.vmap(lambda i: jax.random.key_data(jax.random.key(i)))(jnp.arange(B))
    return x, y, keys


def test_augmult_averages_k_augmentations_of_one_example_before_clipping():
    """No finding: row i's gradient is the mean over ITS K views, and changing example j leaves it."""
    one_loss = _levers.augmult_loss(_apply, _loss, K, flip=True)
    grads = jax.jit(dpjax.per_example_grads(one_loss))
    params = jnp.asarray(np.random.default_rng(9).normal(size=(H * W * CH, 2)), jnp.float32)
    x, y, keys = _batch(0)
    g = grads(params, (x, y, keys))

    # The mean of the K views' gradients of example 0, computed by hand.
    @jax.jit
    def by_hand(params, x0, y0, key0):
        key = jax.random.wrap_key_data(key0, impl=_levers.AUGMENT_KEY_IMPL)
        views = jax.vmap(lambda k: _levers.augment(x0, k, flip=True))(jax.random.split(key, K))
        one = lambda v: jax.grad(lambda p: _loss(_apply(p, v[None])[0], y0))(params)  # noqa: E731
        return jnp.mean(jax.vmap(one)(views), axis=0)

    np.testing.assert_allclose(g[0], by_hand(params, x[0], y[0], keys[0]), rtol=1e-5, atol=1e-6)
    # Change example 2 only (a neighbour): rows 0 and 1 do not move.
    x2 = x.at[2].set(100.0)
    g2 = grads(params, (x2, y, keys))
    np.testing.assert_array_equal(g[:2], g2[:2])
    clipped = dpjax.clip_and_sum(g, C, mask=jnp.ones(B, bool))
    clipped2 = dpjax.clip_and_sum(g2, C, mask=jnp.ones(B, bool))
    assert float(jnp.linalg.norm(clipped.sum - clipped2.sum)) <= 2 * C * (1 + 1e-5)


def test_augmult_views_differ_across_steps_and_examples():
    """No finding: the trainer's keys fold_in(fold_in(augment_key, t), index) never repeat."""
    root = dpjax.key_from_seed(12345)
    data = {
        (t, i): tuple(
            np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.fold_in(root, t), i)))
        )
        for t in range(3)
        for i in range(4)
    }
    assert len(set(data.values())) == len(data)


def test_ema_is_a_function_of_released_parameters_and_the_step_only():
    """No finding: post-processing; the warm-up decay depends on the public step alone."""
    ema = {"w": jnp.ones(3)}
    params = {"w": jnp.zeros(3)}
    out = _levers.ema_update(ema, params, 0.999, jnp.asarray(0, jnp.int32))
    d = float(_levers.ema_decay_at(0.999, jnp.asarray(0, jnp.int32)))
    assert d == np.float32(0.1)
    np.testing.assert_allclose(out["w"], d * 1.0, rtol=1e-6)
    assert float(_levers.ema_decay_at(0.9, jnp.asarray(10**6, jnp.int32))) == np.float32(0.9)
