"""dpjax's normal sampler: tails beyond float32 `jax.random.normal`'s, drawn exactly as stated.

`jax.random.normal` in float32 maps a 2**-23 grid through erfinv, so its draws lie in
[-5.42, +5.22]: an output beyond that is impossible without the example that shifted the
mean and possible with it. dpjax's sampler reaches |z| = 12.95 (module docstring of
dpjax._noise); these tests check the tails, the construction bit by bit against scipy in
float64, and the pool that hands extra random bits to the rare coordinates that need them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dpjax
from dpjax import _noise

F32 = jnp.dtype(jnp.float32)
RTOL_F32 = 8 * float(np.finfo(np.float32).eps)  # ndtri in float32 is within ~4 ulp of scipy


def _normal(key, n, dtype=F32):
    return np.asarray(_noise._standard_normal(key, (n,), dtype))


def _reference(key, n):
    """The sampler's output recomputed in float64 with scipy from the same random words."""
    main_key, extension_key = jax.random.split(key)
    word = np.asarray(jax.random.bits(main_key, (n,), jnp.uint32)).astype(np.int64)
    slots = _noise._pool_size(n, 2.0**-8)
    extension = np.asarray(jax.random.bits(extension_key, (4, slots), jnp.uint32))
    geometric = (word >> 23) & 0xFF
    k = np.where(geometric == 0, 8, 7 - np.floor(np.log2(np.maximum(geometric, 1))))
    overflow = np.flatnonzero(geometric == 0)
    for slot, i in enumerate(overflow[:slots]):  # the j-th overflowing coordinate takes slot j
        bits = "".join(f"{int(w):032b}" for w in extension[:, slot])
        k[i] = 8 + len(bits) - len(bits.lstrip("0"))
    u = np.ldexp(1.0 + (word & 0x7FFFFF) / 2**23, -(np.minimum(k, 124).astype(np.int64) + 2))
    return np.where(word >> 31 == 1, -1.0, 1.0) * scipy.stats.norm.isf(u), overflow.size, slots


def test_draws_reach_beyond_5_5_sigma_in_both_tails():
    # float32 jax.random.normal never leaves [-5.42, 5.22]; P[z > 5.5] = 1.9e-8 per draw, so
    # 2**22-draw steps find both tails within a few dozen steps (keys 0-5 need 6 to 67 steps;
    # key 3 needs 6, which keeps the test short; the result is deterministic per key).
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(3))
    update, state = jax.jit(tx.update), tx.init(None)
    lowest = highest = 0.0
    for _ in range(96):
        noise, state = update(jnp.zeros(2**22), state)
        lowest, highest = min(lowest, float(noise.min())), max(highest, float(noise.max()))
        if lowest < -5.5 and highest > 5.5:
            break
    assert lowest < -5.5 and highest > 5.5, (lowest, highest)


@pytest.mark.parametrize("mantissa", [0, 1, 2**22, 2**23 - 1, 1234567])
def test_magnitude_matches_scipy_isf_in_every_binade(mantissa):
    k = np.arange(0, 131, dtype=np.uint32)  # beyond 124 the binade is clipped: u >= 2**-126
    for sign in (0, 1):
        word = np.full(k.shape, (sign << 31) | mantissa, np.uint32)
        got = np.asarray(_noise._signed_magnitude(jnp.asarray(k), jnp.asarray(word), F32))
        u = np.ldexp(1.0 + mantissa / 2**23, -(np.minimum(k, 124).astype(np.int64) + 2))
        want = (-1.0) ** sign * scipy.stats.norm.isf(u)
        np.testing.assert_allclose(got, want, rtol=RTOL_F32)


def test_largest_draw_is_12_95_sigma_and_the_mass_beyond_is_2_pow_minus_125():
    word = jnp.asarray([0, 1 << 31], jnp.uint32)
    extreme = np.asarray(_noise._signed_magnitude(jnp.asarray([124, 500], jnp.uint32), word, F32))
    z_max = scipy.stats.norm.isf(2.0**-126)
    np.testing.assert_allclose(extreme, [z_max, -z_max], rtol=RTOL_F32)
    assert 12.9 < z_max < 13.0
    assert 2 * scipy.stats.norm.sf(z_max) == pytest.approx(2.0**-125, rel=1e-9)
    assert _noise.NOISE_TAIL_MASS == 2 * 2.0**-125  # the cut tail plus the pool's overflow bound


@pytest.mark.parametrize("n", [2**17 + 5, 1000])
def test_sampler_equals_its_construction_recomputed_with_scipy(n):
    key = jax.random.key(11)
    want, overflowing, slots = _reference(key, n)
    assert 0 < overflowing <= slots  # the extension pool was used, and did not overflow
    np.testing.assert_allclose(_normal(key, n), want, rtol=RTOL_F32, atol=1e-12)


@pytest.mark.parametrize(
    "n, density, size",
    [(1, 1.0, 1), (31, 0.5, 40), (32, 1.0, 32), (33, 0.0, 5), (1000, 0.01, 30), (4099, 0.3, 500)],
)
def test_first_true_equals_nonzero_in_order(n, density, size):
    mask = np.random.default_rng(n).random(n) < density
    got = np.asarray(jax.jit(_noise._first_true, static_argnums=1)(jnp.asarray(mask), size))
    want = np.full(size, n)
    hits = np.flatnonzero(mask)[:size]
    want[: hits.size] = hits
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n", [1, 10, 1000, 200_000, 10**7, 2**30])
def test_pool_overflows_with_probability_below_n_times_2_pow_minus_125(n):
    p = 2.0**-8
    slots = _noise._pool_size(n, p)
    assert 1 <= slots <= n
    if slots < n:  # exact binomial tail: P[more overflowing coordinates than slots]
        assert scipy.stats.binom.logsf(slots, n, p) <= math.log(n) - 125 * math.log(2)
    assert slots <= 2 * n * p + 200  # and the pool stays small (the sampler's cost)


def test_bulk_is_standard_normal_by_ks_test_and_moments():
    z = _normal(jax.random.key(5), 2**20)
    assert abs(z.std() - 1) < 0.005 and abs(z.mean()) < 0.005
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3


def test_tail_beyond_the_first_word_is_gaussian_by_ks_test():
    # |z| > 2.886 (u < 2**-9) are exactly the coordinates drawn from the extension pool.
    t0 = scipy.stats.norm.isf(2.0**-9)
    z = np.abs(_normal(jax.random.key(6), 2**22))
    tail = z[z > t0]
    assert tail.size > 6000

    def cdf(t):  # P[|Z| <= t | |Z| > t0]
        return 1.0 - scipy.stats.norm.sf(t) / scipy.stats.norm.sf(t0)

    assert scipy.stats.kstest(tail, cdf).pvalue > 1e-3


def test_same_key_repeats_and_other_keys_differ():
    a, b = _normal(jax.random.key(1), 4096), _normal(jax.random.key(1), 4096)
    c = _normal(jax.random.key(2), 4096)
    np.testing.assert_array_equal(a, b)
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.1


def test_empty_shape_gives_an_empty_array():
    assert _noise._standard_normal(jax.random.key(0), (0, 3), F32).shape == (0, 3)


def test_float64_draws_use_52_bit_mantissas_under_x64():
    with jax.enable_x64(True):
        f64 = jnp.dtype(jnp.float64)
        z = _normal(jax.random.key(3), 2**16, f64)
        assert z.dtype == np.float64 and scipy.stats.kstest(z, "norm").pvalue > 1e-3
        k = np.arange(0, 125, dtype=np.uint64)
        mantissa = 2**51 + 12345
        got = _noise._signed_magnitude(jnp.asarray(k), jnp.full(k.shape, mantissa, jnp.uint64), f64)
        u = np.ldexp(1.0 + mantissa / 2**52, -(k.astype(np.int64) + 2))
        np.testing.assert_allclose(np.asarray(got), scipy.stats.norm.isf(u), rtol=1e-14)


def test_more_coordinates_than_the_accountant_assumes_are_refused():
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
    too_many = jax.ShapeDtypeStruct((2**21, 2**20), jnp.float32)  # 2**41 > 2**40
    with pytest.raises(ValueError, match=r"2199023255552 coordinates.*MAX_NOISE_COORDINATES"):
        jax.eval_shape(tx.update, too_many, tx.init(None))


def test_noise_over_many_leaves_is_one_draw_sliced_into_them():
    # One draw per dtype (one copy of the sampler in the program), fresh in every leaf.
    tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(4))
    tree = {"a": jnp.zeros((300, 7)), "b": jnp.zeros(5, jnp.bfloat16), "c": jnp.zeros(())}
    out, _ = jax.jit(tx.update)(tree, tx.init(None))
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "a": ((300, 7), jnp.float32),
        "b": ((5,), jnp.float32),
        "c": ((), jnp.float32),
    }
    a, b, c = np.ravel(out["a"]), np.asarray(out["b"]), float(out["c"])
    assert np.all(a[:5] != b) and c not in (a[0], b[0])  # no leaf replays another's noise
    assert scipy.stats.kstest(a, "norm").pvalue > 1e-3
