"""Review of the adaptive-clipping release paths (issue 17, section 5), as an attacker would.

Attacks tried on `dpjax.adaptive_dp_aggregate`: a neighbouring batch (one example added, removed
or replaced, hostile rows included: NaN, inf, huge) that moves the JOINT pre-noise value (the
clipped sum and the scaled count of unclipped examples) by more than its stated sensitivity
`sqrt(1 + r**2 / 4)`; a count release noised less than `count_noise_multiplier`. With the same
key two neighbouring runs draw the same noise, so the difference of their outputs is the
difference of the pre-noise values. On `dpjax.private_group_clip_norms`: a release computed
before it is recorded, or over the budget.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax
from dpjax import _adaptive

B, D, SIGMA, SIGMA_B, C0 = 8, 4, 1.0, 2.0, 1.0
R = _adaptive.count_scale(SIGMA, SIGMA_B)
JOINT = math.sqrt(1.0 + R * R / 4.0)

_TX = dpjax.adaptive_dp_aggregate(
    C0, SIGMA, B, key=jax.random.key(0), count_noise_multiplier=SIGMA_B
)


@jax.jit
def _release(g, mask):
    state = _TX.init(jnp.zeros(D))
    mean, state = _TX.update(g, state, mask=mask)
    return mean, state.unclipped_fraction


rows = st.lists(
    st.sampled_from([0.0, 0.1, -0.2, 5.0, 1e30, np.nan, np.inf]), min_size=D, max_size=D
).map(lambda v: np.asarray(v, np.float32))


@settings(max_examples=15)
@given(row=rows, index=st.integers(0, B - 1), kind=st.sampled_from(["add", "remove", "replace"]))
def test_joint_release_moves_by_at_most_its_sensitivity(row, index, kind):
    """No finding: ||(sum diff, r * count diff)|| <= sqrt(1 + r**2/4) (x2 for replace-one)."""
    rng = np.random.default_rng(index)
    g = np.asarray(rng.normal(size=(B, D)), np.float32) * np.float32(0.6)
    mask = np.ones(B, bool)
    other, other_mask = g.copy(), mask.copy()
    if kind == "add":
        g[index], other[index], other_mask[index] = row, row, False
    elif kind == "remove":
        other_mask[index] = False
    else:
        other[index] = row
    m1, f1 = _release(jnp.asarray(g), jnp.asarray(mask))
    m2, f2 = _release(jnp.asarray(other), jnp.asarray(other_mask))
    grad = (np.asarray(m1, np.float64) - np.asarray(m2, np.float64)) * B / C0
    count = (float(f1) - float(f2)) * B * R
    bound = (2.0 if kind == "replace" else 1.0) * JOINT
    assert math.hypot(float(np.linalg.norm(grad)), count) <= bound * (1 + 1e-4)


def test_count_noise_std_is_the_requested_count_noise_multiplier():
    """No finding: the count's noise std is count_noise_multiplier; the accounted sigma is SIGMA."""
    assert SIGMA * JOINT / R == pytest.approx(SIGMA_B, rel=1e-12)
    assert _adaptive.effective_noise_multiplier(SIGMA, SIGMA_B) == pytest.approx(SIGMA * JOINT)

    def fraction(key):
        tx = dpjax.adaptive_dp_aggregate(C0, SIGMA, B, key=key, count_noise_multiplier=SIGMA_B)
        _, state = tx.update(jnp.zeros((B, D)), tx.init(jnp.zeros(D)), mask=jnp.ones(B, bool))
        return state.unclipped_fraction

    keys = jax.random.split(jax.random.key(1), 1000)
    counts = (np.asarray(jax.jit(jax.vmap(fraction))(keys), np.float64) - 0.5) * B  # B/2 centred
    counts -= B / 2.0  # every zero gradient is unclipped: centred count B/2
    assert np.std(counts) == pytest.approx(SIGMA_B, rel=0.1)


def test_private_group_clip_norms_is_refused_before_it_computes_anything():
    """No finding: the histogram release is recorded first and refused over the budget."""
    tracker = dpjax.PrivacyTracker(0.01, 1e-5)
    with pytest.raises(dpjax.BudgetExceededError):
        dpjax.private_group_clip_norms(
            {"a": jnp.ones(10)}, {"w": "a"}, quantile=0.5, noise_multiplier=1.0,
            key=jax.random.key(0), tracker=tracker,
        )  # fmt: skip
    assert tracker.releases == ()
