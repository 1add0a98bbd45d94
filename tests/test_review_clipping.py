"""Review of per-group clipping and clip-norm schedules (issue 17, section 5), as an attacker would.

Attacks tried: a neighbouring batch whose added row is hostile in one group only (NaN, inf, huge)
and so might escape the other groups' clipping, or push the sum past `sqrt(sum_g C_g**2)`; a
clip-norm schedule C_t whose release `C_t * (sum + noise)` moves by more than C_t, or whose
invalid C_t leaks an unclipped or un-noised value. These paths are pre-noise sums, so they are
compared directly.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax

B = 5
NORMS = {"a": 0.5, "b": 2.0}
CLIP = dpjax.GroupClipNorms(NORMS, {"w": "a", "v": "b"})

values = st.sampled_from([0.0, 0.3, -1.0, 1e4, 3e38, np.nan, np.inf, -np.inf])


def _rows(draw_a, draw_b):
    return {"w": np.asarray(draw_a, np.float32), "v": np.asarray(draw_b, np.float32)}


@settings(max_examples=25)
@given(
    a=st.lists(values, min_size=3, max_size=3),
    b=st.lists(values, min_size=2, max_size=2),
    index=st.integers(0, B - 1),
)
def test_group_clipping_one_hostile_row_moves_the_sum_by_at_most_the_sensitivity(a, b, index):
    """No finding: per group <= C_g, in total <= sqrt(sum C_g**2); non-finite anywhere gives 0."""
    rng = np.random.default_rng(index)
    g = {"w": rng.normal(size=(B, 3)).astype(np.float32), "v": rng.normal(size=(B, 2)) * 5}
    g["v"] = g["v"].astype(np.float32)
    row = _rows(a, b)
    g["w"][index], g["v"][index] = row["w"], row["v"]
    with_row = np.ones(B, bool)
    without = with_row.copy()
    without[index] = False
    s1 = dpjax.clip_and_sum(g, CLIP, mask=jnp.asarray(with_row)).sum
    s2 = dpjax.clip_and_sum(g, CLIP, mask=jnp.asarray(without)).sum
    dw = np.asarray(s1["w"], np.float64) - np.asarray(s2["w"], np.float64)
    dv = np.asarray(s1["v"], np.float64) - np.asarray(s2["v"], np.float64)
    assert np.linalg.norm(dw) <= NORMS["a"] * (1 + 1e-5)
    assert np.linalg.norm(dv) <= NORMS["b"] * (1 + 1e-5)
    assert np.hypot(np.linalg.norm(dw), np.linalg.norm(dv)) <= CLIP.sensitivity * (1 + 1e-5)
    if not (np.isfinite(row["w"]).all() and np.isfinite(row["v"]).all()):
        assert np.all(dw == 0) and np.all(dv == 0)  # non-finite in ANY group: zero everywhere


C_T = (0.5, 0.75, 1.0)


def _schedule(t):
    """A public clip-norm schedule: C_t = 0.5 + 0.25 t."""
    return 0.5 + 0.25 * jnp.asarray(t, jnp.float32)


@jax.jit
def _scheduled_release(g, mask):
    tx = dpjax.gaussian_mechanism(1.0, key=jax.random.key(0))
    clip = dpjax.clip_per_example(_schedule)
    c_state = clip.init(None)
    outs = []
    for _ in range(3):  # C_t = 0.5, 0.75, 1.0; same noise key in both runs
        clipped, c_state = clip.update(g, c_state, mask=mask)
        noisy, _ = tx.update(clipped, tx.init(None))
        outs.append(noisy)
    return outs


def test_clip_norm_schedule_release_moves_by_at_most_c_t():
    """No finding: C_t * (sum + noise) moves by <= C_t when one (huge) example is removed."""
    g = jnp.asarray(np.random.default_rng(0).normal(size=(B, 4)) * 100, jnp.float32)
    mask = np.ones(B, bool)
    other = mask.copy()
    other[2] = False
    full = _scheduled_release(g, jnp.asarray(mask))
    less = _scheduled_release(g, jnp.asarray(other))
    for t, (x, y) in enumerate(zip(full, less, strict=True)):  # noqa: B007
        gap = np.linalg.norm(np.asarray(x, np.float64) - np.asarray(y, np.float64))
        assert 0.9 * C_T[t] <= gap <= C_T[t] * (1 + 1e-5)


def test_invalid_clip_norm_schedule_value_releases_nan():
    """No finding: a C_t of inf, NaN or 0 gives a NaN release, never an unclipped one."""
    for bad in (jnp.inf, jnp.nan, 0.0):
        clip = dpjax.clip_per_example(lambda t, bad=bad: jnp.asarray(bad))
        clipped, _ = clip.update(jnp.ones((2, 3)), clip.init(None), mask=jnp.ones(2, bool))
        tx = dpjax.gaussian_mechanism(1.0, key=jax.random.key(0))
        noisy, _ = tx.update(clipped, tx.init(None))
        assert bool(jnp.isnan(noisy).all())


def test_ghost_group_clipping_hostile_row_moves_each_group_by_at_most_c_g():
    """No finding: on the ghost path a row huge or NaN in its input stays within C_g per group."""
    import optax
    from flax import nnx

    import dpjax.ghost

    class TwoLayer(nnx.Module):
        def __init__(self, rngs):
            self.a = dpjax.ghost.GhostLinear(4, 5, rngs=rngs)
            self.b = dpjax.ghost.GhostLinear(5, 3, rngs=rngs)

        def __call__(self, x):
            return self.b(jnp.tanh(self.a(x)))

    graphdef, params = nnx.split(TwoLayer(nnx.Rngs(0)))
    norms = {"a": 0.3, "b": 0.4}

    def labels(p):
        return jax.tree_util.tree_map_with_path(lambda path, _: str(path[0].key), p)

    clip = dpjax.GroupClipNorms(norms, labels)

    def losses(p, batch):
        xs, ys = batch
        return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(xs), ys)

    clipper = jax.jit(dpjax.ghost.ghost_clipped_grads(losses, l2_norm=clip))
    y = jnp.arange(6) % 3
    base = np.asarray(jax.random.normal(jax.random.key(1), (6, 4)), np.float32)
    full = jnp.ones(6, bool)
    less = full.at[5].set(False)
    for hostile in (1e6, np.nan):
        x = base.copy()
        x[5] = hostile
        with_row = clipper(params, (jnp.asarray(x), y), full).sum
        without = clipper(params, (jnp.asarray(x), y), less).sum
        gaps = {}
        for group in norms:
            d = [
                np.asarray(u, np.float64) - np.asarray(v, np.float64)
                for u, v in zip(
                    jax.tree.leaves(with_row[group]), jax.tree.leaves(without[group]), strict=True
                )
            ]
            gaps[group] = float(np.sqrt(sum(np.sum(e * e) for e in d)))
            assert gaps[group] <= norms[group] * (1 + 1e-4), (hostile, gaps)
        assert np.isfinite(list(gaps.values())).all()
        if np.isnan(hostile):  # a non-finite row contributes 0 to every group
            assert all(g == 0.0 for g in gaps.values()), gaps
