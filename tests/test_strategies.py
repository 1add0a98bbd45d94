"""Issue 10's levers in the mechanism: private top-k, per-group clipping, sigma schedules, adaptive clipping.

Each privacy property is tested directly: the support never depends on the current batch,
noise lands on the support only with std sigma * C, sensitivities are what the clipped sum
carries, schedules run and are accounted step by step, and adaptive clipping's joint release
has the noise its accounting claims.
"""

import functools
import math

import flax.nnx as nnx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax
import dpjax.ghost

C = 1.0


def _dense(key, sigma=1.0, n=8.0, lr=1.0):
    return dpjax.dp_sgd(
        optax.sgd(lr), l2_norm=C, noise_multiplier=sigma, expected_batch_size=n, key=key
    )


# ------------------------------------------------------------------------- top-k supports


@functools.cache
def _topk_step(source):
    """The jitted update of a top-k chain, and its state after two earlier steps (compiled once)."""
    kwargs = {"warmup_steps": 1} if source == "warmup" else {}
    key = jax.random.key(3) if source == "random" else None
    tx = dpjax.private_topk(_dense(jax.random.key(0)), 3, source=source, key=key, **kwargs)
    params = jnp.zeros(12)
    update = jax.jit(lambda g, s, m: tx.update(g, s, params, mask=m))
    state = tx.init(params)
    history = jax.random.normal(jax.random.key(1), (5, 12)) * 10
    for _ in range(2):
        _, state = update(history, state, jnp.ones(5, bool))
    return update, state


@pytest.mark.parametrize("source", ["previous", "ema", "warmup", "random"])
@settings(max_examples=8, deadline=None)
@given(
    grads=hnp.arrays(np.float32, (5, 12), elements=st.floats(-1e3, 1e3, width=32)),
    other=hnp.arrays(np.float32, (12,), elements=st.floats(-1e3, 1e3, width=32)),
    row=st.integers(0, 4),
    change=st.sampled_from(["replace", "add", "remove"]),
)
def test_support_never_depends_on_the_current_batch(source, grads, other, row, change):
    """Changing, adding or removing one example of the current batch never changes its mask."""
    update, state = _topk_step(source)
    batch, mask = jnp.asarray(grads), jnp.ones(5, bool)
    neighbour, neighbour_mask = batch, mask
    if change == "replace":
        neighbour = batch.at[row].set(other)
    elif change == "add":  # a padded row becomes a real one
        mask = mask.at[row].set(False)
        neighbour = batch.at[row].set(other)
    else:
        neighbour_mask = mask.at[row].set(False)
    _, after = update(batch, state, mask)
    _, after_neighbour = update(neighbour, state, neighbour_mask)
    np.testing.assert_array_equal(after.support, after_neighbour.support)
    assert int(after.support.sum()) == 3


def test_noise_lands_on_the_support_only_with_std_sigma_c():
    sigma, d, k = 2.0, 400, 40
    support = dpjax.topk_support(jnp.arange(d, dtype=jnp.float32), k)
    tx = dpjax.gaussian_mechanism(sigma, key=jax.random.key(0))
    grads = jnp.zeros((4, d))
    clipped = dpjax.clip_and_sum(grads, 0.5, mask=jnp.ones(4, bool), support=support)
    draws = []
    state = tx.init(None)
    step = jax.jit(tx.update)
    for _ in range(50):
        noisy, state = step(clipped, state)
        draws.append(noisy)
    draws = np.stack(draws)
    on, off = draws[:, np.asarray(support)], draws[:, ~np.asarray(support)]
    assert np.all(off == 0.0)
    # 2000 draws: the std estimate is within 5 % of sigma * C = 1.0 (about 3.2 standard errors).
    assert abs(on.std() - sigma * 0.5) / (sigma * 0.5) < 0.05
    assert abs(on.mean()) < 4 * sigma * 0.5 / math.sqrt(on.size)


@settings(max_examples=25, deadline=None)
@given(
    grads=hnp.arrays(np.float32, (4, 10), elements=st.floats(-1e6, 1e6, width=32)),
    bits=hnp.arrays(bool, (10,)),
)
def test_sensitivity_on_the_support_is_at_most_c(grads, bits):
    support = jnp.asarray(bits)
    clip = jax.jit(lambda g, m: dpjax.clip_and_sum(g, C, mask=m, support=support))
    full = clip(jnp.asarray(grads), jnp.ones(4, bool))
    for row in range(4):
        without = clip(jnp.asarray(grads), jnp.ones(4, bool).at[row].set(False))
        moved = np.linalg.norm(np.asarray(full.sum) - np.asarray(without.sum))
        assert moved <= C * (1 + 1e-5)
    assert np.all(np.asarray(full.sum)[~bits] == 0.0)
    assert full.sensitivity == C


def test_topk_with_k_equal_d_is_dense_dp_sgd_exactly():
    key = jax.random.key(7)
    grads = jax.random.normal(jax.random.key(1), (8, 6)) * 3
    params = jnp.ones(6)
    mask = jnp.ones(8, bool).at[7].set(False)
    sparse = dpjax.private_topk(_dense(key), 6, source="ema")
    dense = _dense(key)
    s_state, d_state = sparse.init(params), dense.init(params)
    s_step = jax.jit(lambda g, s: sparse.update(g, s, params, mask=mask))
    d_step = jax.jit(lambda g, s: dense.update(g, s, params, mask=mask))
    for _ in range(3):
        s_out, s_state = s_step(grads, s_state)
        d_out, d_state = d_step(grads, d_state)
        np.testing.assert_array_equal(s_out, d_out)


def test_support_follows_the_released_updates():
    """'previous': step t's support is the top-k of step t-1's released update."""
    tx = dpjax.private_topk(_dense(jax.random.key(0), sigma=0.5), 2, source="previous")
    params = jnp.zeros(6)
    state = tx.init(params)
    grads = jax.random.normal(jax.random.key(2), (8, 6))
    out, state = tx.update(grads, state, params, mask=jnp.ones(8, bool))
    assert bool(state.support.all())  # nothing released yet: dense
    _, state = tx.update(grads, state, params, mask=jnp.ones(8, bool))
    np.testing.assert_array_equal(state.support, dpjax.topk_support(out, 2))


def test_warmup_support_is_frozen_after_the_dense_phase():
    tx = dpjax.private_topk(_dense(jax.random.key(0)), 0.25, source="warmup", warmup_steps=2)
    params = jnp.zeros(8)
    state = tx.init(params)
    grads = jax.random.normal(jax.random.key(2), (8, 8))
    supports = []
    for _ in range(5):
        _, state = tx.update(grads, state, params, mask=jnp.ones(8, bool))
        supports.append(np.asarray(state.support))
    assert supports[0].all() and supports[1].all()
    assert supports[2].sum() == 2
    for later in supports[3:]:
        np.testing.assert_array_equal(later, supports[2])


def test_random_support_is_independent_of_the_data_and_fresh_each_step():
    like = {"a": jnp.zeros((10, 10)), "b": jnp.zeros(20)}
    s1 = dpjax.random_support(jax.random.key(0), like, 0.1)
    s2 = dpjax.random_support(jax.random.key(0), jax.tree.map(lambda x: x + 5, like), 0.1)
    jax.tree.map(np.testing.assert_array_equal, s1, s2)
    assert sum(int(x.sum()) for x in jax.tree.leaves(s1)) == 12
    per_leaf = dpjax.random_support(jax.random.key(0), like, 0.1, per_leaf=True)
    assert int(per_leaf["a"].sum()) == 10 and int(per_leaf["b"].sum()) == 2
    tx = dpjax.private_topk(_dense(jax.random.key(0)), 3, source="random", key=jax.random.key(9))
    params = jnp.zeros(30)
    state = tx.init(params)
    seen = []
    for _ in range(3):
        _, state = tx.update(jnp.ones((8, 30)), state, params, mask=jnp.ones(8, bool))
        seen.append(np.asarray(state.support))
    assert not np.array_equal(seen[0], seen[1]) or not np.array_equal(seen[1], seen[2])


def test_topk_after_noise_is_post_processing_of_the_noisy_update():
    noisy = dpjax.noisy_mean(1.0, 4, key=jax.random.key(0))
    tx = optax.chain(noisy, dpjax.topk_after_noise(3))
    clipped = dpjax.clip_and_sum(jnp.ones((4, 10)), 1.0, mask=jnp.ones(4, bool))
    out, _ = tx.update(clipped, tx.init(None))
    dense, _ = noisy.update(clipped, noisy.init(None))
    assert int((out != 0).sum()) == 3
    kept = np.asarray(out) != 0
    np.testing.assert_array_equal(np.asarray(out)[kept], np.asarray(dense)[kept])
    assert np.abs(np.asarray(dense)[~kept]).max() <= np.abs(np.asarray(dense)[kept]).min()


def test_ghost_refuses_a_support():
    layer = dpjax.ghost.GhostLinear(3, 2, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)

    def losses(p, x):
        return jnp.sum(nnx.merge(graphdef, p)(x) ** 2, axis=1)

    clipper = dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0)
    support = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
    with pytest.raises(ValueError, match="support"):
        clipper(params, jnp.ones((4, 3)), jnp.ones(4, bool), support)


@pytest.mark.parametrize("k", [0, -1, 1.5, 0.0, "3", True])
def test_invalid_k_is_refused(k):
    with pytest.raises(ValueError, match="k="):
        dpjax.topk_support(jnp.ones(3), k)


def test_private_topk_validates_its_arguments():
    inner = _dense(jax.random.key(0))
    with pytest.raises(ValueError, match="source="):
        dpjax.private_topk(inner, 2, source="clean")
    with pytest.raises(ValueError, match="key="):
        dpjax.private_topk(inner, 2, source="random")
    with pytest.raises(ValueError, match="decay="):
        dpjax.private_topk(inner, 2, decay=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        dpjax.private_topk(inner, 2, source="warmup", warmup_steps=0)


# ------------------------------------------------------------------ per-group clip norms


def _two_groups():
    labels = {"w": "body", "b": "head"}
    return dpjax.GroupClipNorms({"body": 0.6, "head": 0.8}, labels)


@settings(max_examples=25, deadline=None)
@given(
    w=hnp.arrays(np.float32, (6, 3, 2), elements=st.floats(-1e5, 1e5, width=32)),
    b=hnp.arrays(np.float32, (6, 2), elements=st.floats(-1e5, 1e5, width=32)),
)
def test_group_norms_bound_each_group_and_squares_sum_to_c_squared(w, b):
    clip = _two_groups()
    assert clip.sensitivity == pytest.approx(1.0)
    grads = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
    fn = jax.jit(lambda g, m: dpjax.clip_and_sum(g, clip, mask=m))
    full = fn(grads, jnp.ones(6, bool))
    assert full.sensitivity == pytest.approx(1.0)
    for row in range(6):
        without = fn(grads, jnp.ones(6, bool).at[row].set(False))
        dw = np.linalg.norm(np.asarray(full.sum["w"]) - np.asarray(without.sum["w"]))
        db = np.linalg.norm(np.asarray(full.sum["b"]) - np.asarray(without.sum["b"]))
        assert dw <= 0.6 * (1 + 1e-5) and db <= 0.8 * (1 + 1e-5)
        assert dw**2 + db**2 <= 1.0 * (1 + 1e-5)


def test_group_clipping_matches_an_eager_loop_over_single_examples():
    clip = _two_groups()
    grads = {
        "w": jax.random.normal(jax.random.key(0), (5, 3, 2)) * 2,
        "b": jax.random.normal(jax.random.key(1), (5, 2)),
    }
    got = jax.jit(lambda g: dpjax.clip_and_sum(g, clip, mask=jnp.ones(5, bool)))(grads)
    want = {"w": np.zeros((3, 2)), "b": np.zeros(2)}
    for i in range(5):
        for name, c in (("w", 0.6), ("b", 0.8)):
            g = np.asarray(grads[name][i], np.float64)
            want[name] += g * min(1.0, c / np.linalg.norm(g))
    for name in want:
        np.testing.assert_allclose(got.sum[name], want[name], rtol=1e-5, atol=1e-6)


def test_a_row_non_finite_in_one_group_contributes_nothing_anywhere():
    grads = {"w": jnp.ones((3, 3, 2)), "b": jnp.ones((3, 2)).at[1, 0].set(jnp.nan)}
    out = dpjax.clip_and_sum(grads, _two_groups(), mask=jnp.ones(3, bool))
    single = dpjax.clip_and_sum(
        jax.tree.map(lambda g: g[:1], grads), _two_groups(), mask=jnp.ones(1, bool)
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, 2 * b, rtol=1e-6), out.sum, single.sum)
    assert int(out.stats.num_nonfinite) == 1


def test_group_constructors():
    labels = {"w": "body", "b": "head"}
    eq = dpjax.GroupClipNorms.equal(2.0, labels, ["body", "head"])
    assert eq.norms == pytest.approx({"body": 2 / math.sqrt(2), "head": 2 / math.sqrt(2)})
    assert eq.sensitivity == pytest.approx(2.0)
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    by = dpjax.GroupClipNorms.by_size(2.0, labels, params)
    assert by.norms["body"] ** 2 / by.norms["head"] ** 2 == pytest.approx(3.0)
    assert by.sensitivity == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no clip norm"):
        dpjax.clip_and_sum(
            {"w": jnp.ones((1, 3, 2)), "b": jnp.ones((1, 2))},
            dpjax.GroupClipNorms({"body": 1.0}, labels),
            mask=jnp.ones(1, bool),
        )
    with pytest.raises(ValueError, match="norms\\['x'\\]"):
        dpjax.GroupClipNorms({"x": math.inf}, labels)
    with pytest.raises(ValueError, match="norms="):
        dpjax.GroupClipNorms({}, labels)


class _TwoLayer(nnx.Module):
    def __init__(self, rngs):
        self.a = dpjax.ghost.GhostLinear(4, 5, rngs=rngs)
        self.b = dpjax.ghost.GhostLinear(5, 3, rngs=rngs)

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


def test_ghost_group_clipping_equals_the_vmap_path_under_jit():
    model = _TwoLayer(nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def labels(p):
        return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), p)

    clip = dpjax.GroupClipNorms({"a": 0.3, "b": 0.4}, labels)
    x = jax.random.normal(jax.random.key(1), (6, 4)) * 3
    y = jnp.arange(6) % 3
    mask = jnp.ones(6, bool).at[5].set(False)

    def losses(p, batch):
        xs, ys = batch
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(xs), ys)

    ghost = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=clip))(params, (x, y), mask)
    per_example = dpjax.per_example_grads(lambda p, ex: losses(p, (ex[0][None], ex[1][None]))[0])
    vmap = jax.jit(lambda p: dpjax.clip_and_sum(per_example(p, (x, y)), clip, mask=mask))(params)
    assert ghost.sensitivity == vmap.sensitivity == pytest.approx(0.5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), ghost.sum, vmap.sum)


# ---------------------------------------------------------------------- sigma schedules


def test_schedule_records_round_down_and_merge():
    s = dpjax.NoiseSchedule(((2.0, 3), (2.0, 2), (1.5, 1)))
    assert s.phases == ((2.0, 5), (1.5, 1)) and s.steps == 6
    assert [s.at(t) for t in range(6)] == [2.0] * 5 + [1.5]
    with pytest.raises(ValueError, match="past"):
        s.at(6)
    grid = dpjax.NoiseSchedule.from_schedule(optax.linear_schedule(2.0, 1.0, 50), 50)
    exact = np.asarray(optax.linear_schedule(2.0, 1.0, 50)(np.arange(50)), np.float64)
    got = np.array([grid.at(t) for t in range(50)])
    assert np.all(got <= exact) and np.all(got >= exact / 1.05 * (1 - 1e-7))
    assert np.all(got == got.astype(np.float32))  # the device uses exactly this value
    with pytest.raises(ValueError, match="step 3"):
        dpjax.NoiseSchedule.from_values([1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="phases"):
        dpjax.NoiseSchedule(())


def test_device_sigma_is_the_accounted_sigma_at_every_step_and_nan_after():
    s = dpjax.NoiseSchedule.from_schedule(optax.exponential_decay(3.0, 10, 0.5), 40)
    device = np.asarray(jax.jit(s.on_device)(jnp.arange(42)))
    np.testing.assert_array_equal(device[:40], np.array([s.at(t) for t in range(40)], np.float32))
    assert np.isnan(device[40:]).all()


def test_noise_std_follows_the_schedule():
    s = dpjax.NoiseSchedule(((4.0, 1), (1.0, 1)))
    tx = dpjax.gaussian_mechanism(s, key=jax.random.key(0))
    clipped = dpjax.clip_and_sum(jnp.zeros((2, 20000)), 0.5, mask=jnp.ones(2, bool))
    state = tx.init(None)
    stds = []
    for _ in range(3):
        noisy, state = tx.update(clipped, state)
        stds.append(float(jnp.std(noisy)))
    assert stds[0] == pytest.approx(2.0, rel=0.03) and stds[1] == pytest.approx(0.5, rel=0.03)
    assert math.isnan(stds[2])  # past the schedule: NaN, never an un-noised value


def test_schedule_accounting_composes_the_steps_exactly():
    s = dpjax.NoiseSchedule(((2.0, 30), (1.2, 20)))
    tracker = dpjax.PrivacyTracker(10.0, 1e-5, sampling_rate=0.02)
    for t in range(s.steps):
        tracker.record(dpjax.PoissonGaussianSteps(s.at(t), 0.02))
    (high, _), (low, _) = s.phases
    assert high == 2.0 and 1.2 * (1 - 1e-7) < low <= 1.2  # rounded down to a float32
    want = dpjax.compute_epsilon([high, low], [30, 20], 0.02, 1e-5)
    assert tracker.epsilon_spent() == pytest.approx(want, rel=1e-9)
    assert s.epsilon(0.02, 1e-5) == pytest.approx(want, rel=1e-9)


def test_calibrated_schedule_keeps_its_shape_and_lands_within_one_percent():
    shape = optax.linear_schedule(1.0, 0.5, 60)
    s = dpjax.calibrate_noise_schedule(shape, 2.0, 0.05, 60, 1e-5, accountant="rdp")
    eps = s.epsilon(0.05, 1e-5, accountant="rdp")
    assert 1.98 <= eps <= 2.0
    first, last = s.at(0), s.at(59)
    assert 0.5 / 1.06 < last / first < 0.5 * 1.06


# --------------------------------------------------------------------- adaptive clipping


def test_adaptive_clip_norm_moves_towards_the_target_quantile():
    n = 2000
    norms = jnp.linspace(0.01, 10.0, n)  # median 5
    grads = norms[:, None] * jnp.ones((n, 4)) / 2.0
    tx = dpjax.adaptive_dp_aggregate(
        1.0, 1.0, n, key=jax.random.key(0), target_quantile=0.5, learning_rate=0.3
    )
    state = tx.init(jnp.zeros(4))
    step = jax.jit(lambda s: tx.update(grads, s, mask=jnp.ones(n, bool)))
    for _ in range(60):
        _, state = step(state)
    assert 4.0 < float(state.l2_norm) < 6.0
    assert abs(float(state.unclipped_fraction) - 0.5) < 0.1


def test_adaptive_joint_release_has_the_noise_its_accounting_claims():
    """Gradient noise std = sigma_eff * C_t and count noise std = sigma_b, from one draw."""
    sigma, sigma_b, n, d = 1.0, 2.0, 16, 4000
    tx = dpjax.adaptive_dp_aggregate(
        0.5, sigma, n, key=jax.random.key(1), count_noise_multiplier=sigma_b, learning_rate=1e-6
    )
    state = tx.init(jnp.zeros(d))
    step = jax.jit(lambda s: tx.update(jnp.zeros((n, d)), s, mask=jnp.ones(n, bool)))
    grads, fractions = [], []
    for _ in range(200):
        mean, state = step(state)
        grads.append(np.asarray(mean))
        fractions.append(float(state.unclipped_fraction))
    sigma_eff = dpjax.effective_noise_multiplier(sigma, sigma_b)
    assert sigma_eff > sigma
    assert np.std(np.stack(grads)) * n == pytest.approx(sigma_eff * 0.5, rel=0.02)
    # All 16 rows are unclipped (zero gradients): the noisy count is 16 + N(0, sigma_b^2).
    counts = np.array(fractions) * n
    assert np.mean(counts) == pytest.approx(16.0, abs=4 * sigma_b / math.sqrt(200))
    assert np.std(counts) == pytest.approx(sigma_b, rel=0.15)


def test_adaptive_clipping_validates_its_arguments():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="count_noise_multiplier"):
        dpjax.adaptive_dp_aggregate(1.0, 2.0, 8, key, count_noise_multiplier=0.9)
    with pytest.raises(ValueError, match="target_quantile"):
        dpjax.adaptive_dp_aggregate(1.0, 1.0, 256, key, target_quantile=1.0)
    with pytest.raises(ValueError, match="initial_l2_norm"):
        dpjax.adaptive_dp_aggregate(math.inf, 1.0, 256, key)


# ------------------------------------------------------------------------ adaptive noise


def test_online_noise_uses_the_given_sigma_and_refuses_less_than_the_minimum():
    tx = dpjax.gaussian_mechanism(dpjax.OnlineNoise(0.5), key=jax.random.key(0))
    clipped = dpjax.clip_and_sum(jnp.zeros((2, 20000)), 0.5, mask=jnp.ones(2, bool))
    traces = []

    @jax.jit
    def step(state, sigma):
        traces.append(1)
        return tx.update(clipped, state, noise_multiplier=sigma)

    state = tx.init(None)
    for sigma in (2.0, 1.0, 0.7):
        noisy, state = step(state, sigma)
        assert float(jnp.std(noisy)) == pytest.approx(sigma * 0.5, rel=0.03)
    assert len(traces) == 1  # a new sigma does not recompile
    for bad in (0.4, math.nan, math.inf):
        noisy, state = step(state, bad)
        assert bool(jnp.isnan(noisy).all())
    with pytest.raises(ValueError, match="noise_multiplier=sigma"):
        tx.update(clipped, tx.init(None))


def test_plateau_noise_decays_on_a_public_metric_and_the_tracker_stops_the_run():
    """Adaptive noise end to end: sigma from a public metric, accounted step by step, hard stop."""
    policy = dpjax.PlateauNoise(3.0, minimum=0.8, factor=0.5, patience=1)
    q = 0.05
    tracker = dpjax.PrivacyTracker(4.0, 1e-5, sampling_rate=q)
    tx = optax.chain(dpjax.noisy_mean(dpjax.OnlineNoise(0.8), 8, key=jax.random.key(0)))
    clipper = dpjax.accumulate_clipped_grads(
        dpjax.per_example_grads(lambda w, x: jnp.sum((x - w) ** 2)), l2_norm=1.0, microbatch_size=8
    )
    update = jax.jit(dpjax.private_update(clipper, optax.chain(tx, optax.sgd(0.5))))
    w = jnp.zeros(3)
    state = optax.chain(tx, optax.sgd(0.5)).init(w)
    public = jnp.ones(3)  # the metric: distance to a public target
    used, steps = [], 0
    while True:
        sigma = policy.sigma
        if not tracker.can_record(dpjax.PoissonGaussianSteps(sigma, q)):
            break
        tracker.record(dpjax.PoissonGaussianSteps(sigma, q))
        w, state = update(w, state, jnp.ones((8, 3)), jnp.ones(8, bool), noise_multiplier=sigma)
        used.append(sigma)
        steps += 1
        policy.observe(float(jnp.sum((w - public) ** 2)) + steps)  # never improves: decays
    assert used[0] == 3.0 and min(used) == 0.8 and sorted(used, reverse=True) == used
    phases = [(s, used.count(s)) for s in sorted(set(used), reverse=True)]
    want = dpjax.compute_epsilon([s for s, _ in phases], [t for _, t in phases], q, 1e-5)
    assert tracker.epsilon_spent() == pytest.approx(want, rel=1e-9) and want <= 4.0
    assert not tracker.can_record(dpjax.PoissonGaussianSteps(0.8, q))


def test_private_group_clip_norms_are_recorded_first_and_land_near_the_quantile():
    norms = {"body": jnp.linspace(0.1, 2.0, 4000), "head": jnp.linspace(1.0, 20.0, 4000)}
    labels = {"w": "body", "b": "head"}
    tracker = dpjax.PrivacyTracker(5.0, 1e-5)
    clip = dpjax.private_group_clip_norms(
        norms, labels, quantile=0.9, noise_multiplier=10.0, key=jax.random.key(0), tracker=tracker
    )
    assert 1.6 < clip.norms["body"] < 2.2 and 16 < clip.norms["head"] < 22
    assert tracker.releases == (dpjax.GaussianRelease(10.0),)
    assert tracker.epsilon_spent() > 0
    tight = dpjax.PrivacyTracker(0.01, 1e-5)
    with pytest.raises(dpjax.BudgetExceededError):
        dpjax.private_group_clip_norms(
            norms, labels, quantile=0.5, noise_multiplier=1.0, key=jax.random.key(0), tracker=tight
        )
    assert tight.releases == ()


# ---------------------------------------------------------------- clip-norm schedules


def test_clip_norm_schedule_clips_at_c_t_and_noises_with_sigma_c_t():
    schedule = optax.linear_schedule(2.0, 0.5, 3)
    clipper = dpjax.clip_per_example(schedule)
    noise = dpjax.gaussian_mechanism(1.5, key=jax.random.key(0))
    grads = jnp.ones((4, 10000)) * 10.0  # every row clipped
    c_state, n_state = clipper.init(None), noise.init(None)
    step = jax.jit(
        lambda g, cs, ns: (lambda c: (c, noise.update(c[0], ns)))(
            clipper.update(g, cs, mask=jnp.ones(4, bool))
        )
    )
    zero_noise = dpjax.clip_per_example(schedule)
    z_state = zero_noise.init(None)
    for t in range(3):
        c_t = float(schedule(t))
        (clipped, c_state), (noisy, n_state) = step(grads, c_state, n_state)
        assert clipped.sensitivity == 1.0 and float(clipped.scale) == pytest.approx(c_t)
        # Before the noise, each example contributes C_t: the sum is 4 * C_t / sqrt(d) per coordinate.
        np.testing.assert_allclose(clipped.sum * clipped.scale, 4 * c_t / 100.0, rtol=1e-5)
        centred = np.asarray(noisy) - 4 * c_t / 100.0
        assert centred.std() == pytest.approx(1.5 * c_t, rel=0.03)
        clipped_again, z_state = zero_noise.update(grads, z_state, mask=jnp.ones(4, bool))
    bad = dpjax.clip_per_example(lambda t: 0.0)
    out, _ = bad.update(grads, bad.init(None), mask=jnp.ones(4, bool))
    noisy, _ = noise.update(out, noise.init(None))
    assert bool(jnp.isnan(noisy).all())
