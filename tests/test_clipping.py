"""Clipping invariants: every example's contribution to the pre-noise sum is at most C."""

import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rtol_for
from hypothesis import given
from hypothesis import strategies as st

import dpjax


def _all_real(grads):
    """The mask of a batch with no padded row."""
    return jnp.ones(jax.tree.leaves(grads)[0].shape[0], bool)


@functools.partial(jax.jit, static_argnums=1)
def _clip_sum(grads, c, mask=None):
    clipped = dpjax.clip_and_sum(grads, c, _all_real(grads) if mask is None else mask)
    return clipped.sum, clipped.stats


_rows = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 6), st.just(5)),
    elements=st.floats(-1e4, 1e4, width=32),
)
_row = hnp.arrays(np.float32, (5,), elements=st.floats(-1e4, 1e4, width=32))
_clip = st.floats(1e-3, 1e3)


def _tree(rows):
    # Two leaves so that the norm must be global over the whole gradient.
    return {"a": jnp.asarray(rows[:, :2]), "b": jnp.asarray(rows[:, 2:]).reshape(-1, 3, 1)}


def _flat(tree):
    return np.concatenate([np.asarray(tree["a"]).ravel(), np.asarray(tree["b"]).ravel()]).astype(
        np.float64
    )


def _bound(c, total):
    return c * (1 + rtol_for(np.float32)) + rtol_for(np.float32) * total


@given(rows=_rows, extra=_row, c=_clip)
def test_adding_or_removing_one_example_moves_sum_by_at_most_c(rows, extra, c):
    s, _ = _clip_sum(_tree(rows), c)
    s_add, _ = _clip_sum(_tree(np.vstack([rows, extra])), c)
    diff = np.linalg.norm(_flat(s_add) - _flat(s))
    assert diff <= _bound(c, c * (len(rows) + 1))


@given(rows=_rows, replacement=_row, c=_clip)
def test_replacing_one_example_moves_sum_by_at_most_2c(rows, replacement, c):
    s, _ = _clip_sum(_tree(rows), c)
    swapped = rows.copy()
    swapped[0] = replacement
    s_rep, _ = _clip_sum(_tree(swapped), c)
    diff = np.linalg.norm(_flat(s_rep) - _flat(s))
    assert diff <= _bound(2 * c, c * len(rows))


@given(rows=_rows, c=_clip)
def test_every_clipped_example_has_norm_at_most_c(rows, c):
    singles = jax.vmap(
        lambda t: dpjax.clip_and_sum(jax.tree.map(lambda x: x[None], t), c, jnp.ones(1, bool)).sum
    )(_tree(rows))
    norms = np.asarray(dpjax.per_example_global_norms(singles))
    assert np.all(norms <= c * (1 + rtol_for(np.float32)))


def test_gradients_under_c_pass_unchanged():
    g = {"w": jnp.array([[0.3, 0.4], [0.0, 0.5], [0.1, 0.1]])}
    s, stats = _clip_sum(g, 1.0)
    np.testing.assert_allclose(s["w"], g["w"].sum(0), rtol=1e-6)
    assert int(stats.num_clipped) == 0


def test_over_c_is_scaled_to_exactly_c_in_the_same_direction():
    s, stats = _clip_sum({"w": jnp.array([[30.0, 40.0]])}, 2.0)
    np.testing.assert_allclose(s["w"], [1.2, 1.6], rtol=1e-6)
    assert int(stats.num_clipped) == 1


def test_padded_rows_contribute_exactly_zero():
    real = jnp.array([[1.0, 2.0], [0.5, 0.5]])
    garbage = jnp.array([[1e30, -1e30], [jnp.nan, jnp.inf]])
    g = {"w": jnp.concatenate([real, garbage])}
    mask = jnp.array([True, True, False, False])
    s, stats = _clip_sum(g, 10.0, mask)
    np.testing.assert_array_equal(s["w"], real.sum(0))
    assert int(stats.num_nonfinite) == 0  # padded rows are not counted


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_nonfinite_rows_contribute_zero_and_are_counted(bad):
    g = {"w": jnp.array([[0.3, 0.4], [bad, 1.0], [0.1, 0.2]]), "b": jnp.ones((3, 1))}
    s, stats = _clip_sum(g, 100.0)
    assert np.all(np.isfinite(np.asarray(s["w"])))
    np.testing.assert_allclose(s["w"], [0.4, 0.6], rtol=1e-6)
    np.testing.assert_allclose(s["b"], [2.0], rtol=1e-6)
    assert int(stats.num_nonfinite) == 1


def test_transformation_works_under_jit_and_in_chain():
    import optax

    tx = optax.chain(dpjax.clip_per_example(1.0), dpjax.noisy_mean(1e-3, 2, jax.random.key(0)))
    g = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
    out, state = jax.jit(tx.update)(g, tx.init({"w": jnp.zeros(2)}), mask=jnp.array([True, False]))
    np.testing.assert_allclose(out["w"], [0.3, 0.4], rtol=0, atol=0.01)
    assert int(state[0].num_clipped) == 1


def test_mask_of_wrong_shape_names_the_shapes():
    tx = dpjax.clip_per_example(1.0)
    with pytest.raises(ValueError, match=r"mask has shape \(3,\).*batch size 2"):
        jax.jit(tx.update)({"w": jnp.ones((2, 4))}, tx.init(None), mask=jnp.ones(3, bool))


def test_missing_batch_axis_is_reported_with_shapes():
    tx = dpjax.clip_per_example(1.0)
    with pytest.raises(ValueError, match="leading batch axis"):
        tx.update({"w": jnp.ones((2, 4)), "b": jnp.ones(())}, tx.init(None), mask=jnp.ones(2, bool))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, "1.0", None, True])
def test_invalid_clip_norm_is_refused_with_fix(bad):
    with pytest.raises(ValueError, match=r"l2_norm=.*non_private_aggregate"):
        dpjax.clip_per_example(bad)


_wide = hnp.arrays(
    np.float32,
    st.tuples(st.integers(1, 4), st.just(5)),
    elements=st.sampled_from([0.0, 1.0])
    .flatmap(
        lambda _: st.builds(
            lambda m, e, s: s * m * 10.0**e,
            st.floats(1, 9.99),
            st.integers(-30, 17),
            st.sampled_from([-1, 1]),
        )
    )
    .map(np.float32),
)


@given(rows=_wide, c=st.sampled_from([1e-6, 1e-3, 1.0, 1e3]))
def test_contributions_are_bounded_for_tiny_and_huge_gradients(rows, c):
    # Squares of elements below ~1e-19 underflow and above ~1e19 overflow in float32.
    singles = jax.vmap(
        lambda t: dpjax.clip_and_sum(jax.tree.map(lambda x: x[None], t), c, jnp.ones(1, bool)).sum
    )(_tree(rows))
    norms = np.array(
        [
            np.linalg.norm(_flat(jax.tree.map(lambda x, i=i: x[i], singles)))
            for i in range(len(rows))
        ]
    )
    assert np.all(norms <= c * (1 + rtol_for(np.float32)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_gradients_stay_within_c_and_sum_in_float32(dtype):
    g = jax.random.normal(jax.random.key(0), (64, 300)).astype(dtype) * 5
    singles = jax.vmap(lambda row: dpjax.clip_and_sum(row[None], 1.0, jnp.ones(1, bool)).sum)(g)
    assert singles.dtype == jnp.float32
    assert float(jnp.max(jnp.linalg.norm(singles, axis=1))) <= 1.0 + 1e-6


def test_clip_and_sum_validates_the_clip_norm():
    for bad in (math.inf, math.nan, -1.0, 0.0, 1e-9):
        with pytest.raises(ValueError, match="l2_norm="):
            dpjax.clip_and_sum(jnp.ones((2, 3)), bad, jnp.ones(2, bool))


# ---- issue 16, item 3: the mask cannot be forgotten


def _padded_batch_grads():
    """Per-example gradients of a Poisson batch padded with copies of example 0 (as sampled)."""
    sampler = dpjax.PoissonSampler(50, expected_batch_size=5, seed=3, microbatch_size=16)
    batch = sampler.sample(0)
    assert batch.size < len(batch.indices)  # there is padding
    data = jnp.asarray(np.random.default_rng(0).normal(size=(50, 4)), jnp.float32) * 10
    return data[batch.indices], batch


def test_every_clipper_refuses_a_missing_mask():
    grads, batch = _padded_batch_grads()
    with pytest.raises(ValueError, match="mask=None.*padded"):
        dpjax.clip_and_sum(grads, 1.0, None)
    tx = dpjax.clip_per_example(1.0)
    with pytest.raises(ValueError, match="mask=None.*padded"):
        jax.jit(tx.update)(grads, tx.init(None))
    dp = dpjax.dp_sgd(
        optax.sgd(0.1), l2_norm=1.0, noise_multiplier=1.0, expected_batch_size=5,
        key=jax.random.key(0),
    )  # fmt: skip
    with pytest.raises(ValueError, match="mask=None.*padded"):
        dp.update(grads, dp.init(jnp.zeros(4)), jnp.zeros(4))
    acc = dpjax.accumulate_clipped_grads(lambda p, b: b, l2_norm=1.0, microbatch_size=16)
    with pytest.raises(ValueError, match="mask=None.*padded"):
        jax.jit(acc)(None, grads, None)


def test_replacing_example_0_moves_the_sum_of_a_padded_batch_by_at_most_2c():
    # The README's loop with the batch's mask: the padded copies of example 0 count zero times
    # (without it, replacing example 0 moved this sum by 32.4 against a bound of 2).
    grads, batch = _padded_batch_grads()
    other = jnp.where(jnp.asarray(batch.indices == 0)[:, None], -grads[0], grads)
    s, _ = _clip_sum(grads, 1.0, batch.mask)
    s2, _ = _clip_sum(other, 1.0, batch.mask)
    assert float(jnp.linalg.norm(s - s2)) <= 2.0 * (1 + 1e-6)
