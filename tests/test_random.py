"""Secret randomness: keys keep all 64 bits of their seed; seeds come from the OS."""

import jax
import numpy as np
import pytest

import dpjax


def _data(key):
    return np.asarray(jax.random.key_data(key))


def test_seeds_that_differ_only_in_their_high_bits_give_different_noise():
    # jax.random.key(2**32 + 5) == jax.random.key(5) with x64 off: 32 bits of key space.
    for low in (0, 5, 2**32 - 1):
        keys = [dpjax.key_from_seed(low + (high << 32)) for high in (0, 1, 2**31, 2**32 - 1)]
        noise = [np.asarray(jax.random.normal(k, (8,))) for k in keys]
        assert len({tuple(n) for n in noise}) == len(keys)


def test_key_from_small_seed_equals_jax_random_key():
    for seed in (0, 1, 1234, 2**32 - 1):
        np.testing.assert_array_equal(_data(dpjax.key_from_seed(seed)), _data(jax.random.key(seed)))


def test_key_data_is_the_seed_in_two_words():
    seed = 0xDEADBEEF_01234567
    np.testing.assert_array_equal(_data(dpjax.key_from_seed(seed)), [0xDEADBEEF, 0x01234567])


@pytest.mark.parametrize("bad", [-1, 2**64, 1.5, "7", None, True])
def test_bad_seed_is_refused_with_the_range(bad):
    with pytest.raises(ValueError, match=r"seed=.*\[0, 2\*\*64\)"):
        dpjax.key_from_seed(bad)


def test_secret_seeds_and_keys_use_the_whole_range_and_never_repeat():
    seeds = [dpjax.secret_seed() for _ in range(256)]
    assert len(set(seeds)) == 256 and all(0 <= s < 2**64 for s in seeds)
    assert max(seeds) >= 2**62  # the top bits are used (P[fail] = (3/4)**256)
    keys = {tuple(_data(dpjax.secret_key())) for _ in range(64)}
    assert len(keys) == 64 and any(k[0] != 0 for k in keys)
