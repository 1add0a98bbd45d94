"""Per-example gradients: jitted vmap path against a plain eager loop over single examples."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax


def _eager_loop(loss_fn, params, batch):
    n = jax.tree.leaves(batch)[0].shape[0]
    rows = [jax.grad(loss_fn)(params, jax.tree.map(lambda x, i=i: x[i], batch)) for i in range(n)]
    return jax.tree.map(lambda *r: jnp.stack(r), *rows)


def _assert_tree_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_linear_model_matches_eager_loop_under_jit():
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w": jax.random.normal(k1, (5, 3)), "b": jnp.zeros(3)}
    batch = {"x": jax.random.normal(k2, (7, 5)), "y": jax.random.randint(k3, (7,), 0, 3)}

    def loss(p, ex):
        logits = ex["x"] @ p["w"] + p["b"]
        return -jax.nn.log_softmax(logits)[ex["y"]]

    got = jax.jit(dpjax.per_example_grads(loss))(params, batch)
    _assert_tree_close(got, _eager_loop(loss, params, batch), rtol=1e-5, atol=1e-6)


class _TinyCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(1, 4, (3, 3), strides=2, padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(4, 6, (3, 3), padding="VALID", rngs=rngs)
        self.dense = nnx.Linear(6 * 2 * 2, 3, rngs=rngs)

    def __call__(self, x):
        x = jnp.tanh(self.conv1(x))
        x = nnx.max_pool(x, (2, 2), strides=(1, 1))
        x = jnp.tanh(self.conv2(x))
        return self.dense(x.reshape(x.shape[0], -1))


def test_nnx_cnn_first_layer_matches_eager_loop_under_jit():
    # The conv path is where an im2col formulation was seen to go 60-100 % wrong under jit.
    model = _TinyCNN(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    x = jax.random.normal(jax.random.key(1), (6, 10, 10, 1))
    y = jnp.arange(6) % 3

    def loss(p, ex):
        logits = nnx.merge(graphdef, p)(ex[0][None])[0]
        return -jax.nn.log_softmax(logits)[ex[1]]

    got = jax.jit(dpjax.per_example_grads(loss))(params, (x, y))
    want = _eager_loop(loss, params, (x, y))
    _assert_tree_close(got, want, rtol=1e-4, atol=1e-6)
    assert float(jnp.abs(got["conv1"]["kernel"]).sum()) > 0


def test_has_aux_returns_batched_aux():
    loss = lambda w, x: (jnp.sum(w * x), jnp.sum(x))  # noqa: E731
    grads, aux = jax.jit(dpjax.per_example_grads(loss, has_aux=True))(
        jnp.ones(2), jnp.arange(6.0).reshape(3, 2)
    )
    assert grads.shape == (3, 2) and aux.shape == (3,)
    np.testing.assert_allclose(aux, [1.0, 5.0, 9.0])


def test_mismatched_batch_axes_raise_with_shapes():
    loss = lambda w, ex: jnp.sum(w * ex["a"]) + jnp.sum(ex["b"])  # noqa: E731
    batch = {"a": jnp.ones((4, 2)), "b": jnp.ones((3,))}
    with pytest.raises(ValueError, match=r"leading batch axis.*\(4, 2\)"):
        jax.jit(dpjax.per_example_grads(loss))(jnp.ones(2), batch)
