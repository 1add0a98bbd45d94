"""Review of the top-k release paths (issue 17, section 5), as an attacker would.

Attacks tried on `dpjax.private_topk` (sources previous / ema / warmup / random): a neighbouring
batch (one example added, removed or replaced by a hostile row) that changes the support or moves
the pre-noise sum by more than C; a caller who passes a support computed from the clean batch; a
random support that repeats across steps. With the same noise key, two neighbouring runs draw
the same noise, so the difference of their releases IS the difference of the pre-noise sums.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax

B, D, K, C, SIGMA = 6, 12, 3, 1.0, 1.0


def _tx(source: str) -> optax.GradientTransformationExtraArgs:
    dp = dpjax.dp_sgd(
        optax.sgd(1.0), l2_norm=C, noise_multiplier=SIGMA, expected_batch_size=B,
        key=jax.random.key(7),
    )  # fmt: skip
    extra = {"key": jax.random.key(8)} if source == "random" else {}
    warm = {"warmup_steps": 1} if source == "warmup" else {}
    return dpjax.private_topk(dp, K, source=source, **extra, **warm)


_STEPS: dict = {}


def _two_steps(source: str):
    """A jitted function: one shared first step, then a second step on the given batch."""
    if source not in _STEPS:
        tx = _tx(source)
        params = jnp.zeros(D)

        @jax.jit
        def run(first, second, mask):
            state = tx.init(params)
            _, state = tx.update(first, state, params, mask=jnp.ones(B, bool))
            out, state = tx.update(second, state, params, mask=mask)
            return out, state.support

        _STEPS[source] = run
    return _STEPS[source]


rows = st.lists(st.sampled_from([0.0, 1.0, -3.0, 1e6, np.nan, np.inf]), min_size=D, max_size=D).map(
    lambda v: np.asarray(v, np.float32)
)


@pytest.mark.parametrize("source", ["previous", "ema", "warmup", "random"])
@settings(max_examples=4)
@given(row=rows, index=st.integers(0, B - 1), kind=st.sampled_from(["add", "remove", "replace"]))
def test_neighbouring_batch_keeps_the_support_and_moves_the_sum_by_at_most_c(
    source, row, index, kind
):
    """No finding: the support is the same, and the release moves by <= C, on the support only."""
    rng = np.random.default_rng(index)
    first = jnp.asarray(rng.normal(size=(B, D)) * 3, jnp.float32)
    second = np.asarray(rng.normal(size=(B, D)) * 3, np.float32)
    mask = np.ones(B, bool)
    other, other_mask = second.copy(), mask.copy()
    if kind == "add":  # the neighbour has row `index` as a padded row (mask False)
        other[index], other_mask[index] = row, False
        second[index] = row
    elif kind == "remove":
        other_mask[index] = False
    else:
        other[index] = row
    run = _two_steps(source)
    out, support = run(first, jnp.asarray(second), jnp.asarray(mask))
    out2, support2 = run(first, jnp.asarray(other), jnp.asarray(other_mask))
    np.testing.assert_array_equal(support, support2)
    assert int(support.sum()) == K
    diff = (np.asarray(out, np.float64) - np.asarray(out2, np.float64)) * B  # sgd(1) / B
    assert np.all(diff[~np.asarray(support)] == 0.0)
    bound = (2.0 if kind == "replace" else 1.0) * C
    assert np.linalg.norm(diff) <= bound * (1 + 1e-5)


def test_a_support_passed_by_the_caller_is_ignored():
    """No finding: a clean-data support (the attack) passed as `support=` changes nothing."""
    tx = _tx("ema")
    params = jnp.zeros(D)
    g = jnp.asarray(np.random.default_rng(0).normal(size=(B, D)), jnp.float32)
    clean = dpjax.topk_support(g.sum(0), K)  # top-k of the CLEAN sum: not private

    @jax.jit
    def both(g):
        state = tx.init(params)
        _, state = tx.update(g, state, params, mask=jnp.ones(B, bool))
        a, _ = tx.update(g, state, params, mask=jnp.ones(B, bool))
        b, _ = tx.update(g, state, params, mask=jnp.ones(B, bool), support=clean)
        return a, b

    a, b = both(g)
    np.testing.assert_array_equal(a, b)


def test_random_support_is_fresh_every_step_and_noise_lands_on_it_only():
    """No finding: step t's random support comes from fold_in(key, t); zero grads get noise on it."""
    tx = _tx("random")
    params = jnp.zeros(D)
    step = jax.jit(
        lambda state: tx.update(jnp.zeros((B, D)), state, params, mask=jnp.ones(B, bool))
    )
    state = tx.init(params)
    supports = []
    for _ in range(4):
        out, state = step(state)
        supports.append(np.asarray(state.support))
        assert np.all((np.asarray(out) != 0) == supports[-1])
    assert len({s.tobytes() for s in supports}) > 1


def test_coordinates_outside_the_support_never_leave_unnoised():
    """A ClippedSum whose sum is NOT restricted to its support (a custom or buggy clipper)."""
    data = jnp.arange(1.0, 6.0)  # clean, data-dependent values on every coordinate
    support = jnp.asarray([True, False, False, False, False])
    clipped = dpjax.ClippedSum(
        data, dpjax.ClipStats(jnp.int32(0), jnp.int32(0)), 1.0, support=support
    )
    tx = dpjax.gaussian_mechanism(1.0, key=jax.random.key(0))
    out, _ = tx.update(clipped, tx.init(None))
    leaked = np.asarray(out)[1:] == np.asarray(data)[1:]
    assert not leaked.any(), f"coordinates released without noise: {np.asarray(out)[1:]}"


def _topk_before_noise_release(chain, g, mask):
    """The release of `chain` on per-example gradients `g`, or None if the chain is refused."""
    try:
        out, _ = chain.update(g, chain.init(jnp.zeros(3)), jnp.zeros(3), mask=mask)
    except ValueError:
        return None
    return np.asarray(out, np.float64)


@pytest.mark.parametrize("where", ["after clipping", "before clipping"])
def test_topk_after_noise_put_before_the_noise_is_refused(where):
    """Finding 4 (fixed in dpjax/_sparsity.py): a top-k of CLEAN values ran silently.

    After clipping (top-1 of the clipped sum), one added example swaps the surviving coordinate:
    the pre-noise sum moves from (1.8, 0, 0) to (0, 2.77, 0), 3.3 > C = 1. Before clipping
    (top-3 over the per-example gradients), the added example takes every slot and zeroes the
    others: 1.47 > C. The chain must be refused, or move by <= C.
    """
    noisy = dpjax.noisy_mean(1.0, 4, key=jax.random.key(0))
    clip = dpjax.clip_per_example(C)
    if where == "after clipping":
        chain = optax.chain(clip, dpjax.topk_after_noise(1), noisy)
        added = [0.0, 1.0, 0.0]
    else:
        chain = optax.chain(dpjax.topk_after_noise(3), clip, noisy)
        added = [0.7, 0.7, 0.7]
    rows = [[0.6, 0.59, 0.0]] * 3
    g_with = jnp.asarray([*rows, added], jnp.float32)
    g_without = jnp.asarray([*rows, [0.0, 0.0, 0.0]], jnp.float32)  # a padded row
    with_row = _topk_before_noise_release(chain, g_with, jnp.asarray([True, True, True, True]))
    without = _topk_before_noise_release(chain, g_without, jnp.asarray([True, True, True, False]))
    if with_row is None or without is None:
        assert with_row is None and without is None
        return
    assert np.linalg.norm((with_row - without) * 4) <= C * (1 + 1e-5)
