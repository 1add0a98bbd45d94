"""Secret randomness: seeds from the operating system, keys with their full entropy (host side).

A DP guarantee holds against an adversary who does not know the noise. The
noise is a deterministic function of a PRNG key, so the key (and every seed it
is derived from) must be as secret as the data, and must carry enough entropy
that it cannot be searched. `jax.random.key(seed)` keeps only the low 32 bits
of `seed` when 64-bit mode is off (`key(2**32 + 5) == key(5)`, without a
warning): a 2**32 key space can be searched in minutes by anyone holding the
released model. The functions here build keys from all 64 bits.
"""

from __future__ import annotations

import secrets

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validation

SEED_BITS = 64
"""Bits of entropy in a seed drawn by :func:`secret_seed` and kept by :func:`key_from_seed`."""

_KEY_IMPL = "threefry2x32"  # two uint32 words of key data: exactly 64 bits


def secret_seed() -> int:
    """A fresh 64-bit seed from the operating system's CSPRNG (`secrets`).

    Host side.

    Returns:
      An integer in `[0, 2**64)`.

    Example:
      >>> import dpjax
      >>> 0 <= dpjax.secret_seed() < 2**64
      True

    **Privacy:** use it for every seed that drives noise or sampling in a real
    run, and never write it to a log, a summary or a file meant to be shared.
    """
    return secrets.randbits(SEED_BITS)


def key_from_seed(seed: int) -> jax.Array:
    """A typed `threefry2x32` PRNG key holding all 64 bits of `seed`.

    Host side. The key data is `[seed >> 32, seed & 0xFFFFFFFF]`, so for seeds
    below `2**32` the key equals `jax.random.key(seed)`; unlike that function it
    never drops the high 32 bits.

    Args:
      seed: an integer in `[0, 2**64)`.

    Returns:
      A scalar typed PRNG key.

    Raises:
      ValueError: if `seed` is not an integer in `[0, 2**64)`.

    Example:
      >>> import jax, dpjax
      >>> k1, k2 = dpjax.key_from_seed(5), dpjax.key_from_seed(2**32 + 5)
      >>> bool((jax.random.key_data(k1) == jax.random.key_data(k2)).all())
      False

    **Privacy:** the key is only as secret as `seed`: draw it with
    :func:`secret_seed` (or use :func:`secret_key`) for a real run; a fixed
    seed is for reproducible research on data that is not sensitive.
    """
    seed = _validation.check_seed(seed)
    words = np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    return jax.random.wrap_key_data(jnp.asarray(words), impl=_KEY_IMPL)


def secret_key() -> jax.Array:
    """A PRNG key drawn from the operating system's CSPRNG, with 64 bits of entropy.

    Host side.

    Returns:
      `key_from_seed(secret_seed())`.

    Example:
      >>> import jax, dpjax
      >>> key = dpjax.secret_key()
      >>> key.shape
      ()

    **Privacy:** the default for every noise key; nothing records it. Keep the
    optimizer state that holds it (e.g. a checkpoint) as secret as the data.
    """
    return key_from_seed(secret_seed())


def derive_seed(seed: int, purpose: int) -> int:
    """An independent 64-bit seed for one `purpose` (model init, noise, sampling, ...).

    Host side; `numpy.random.SeedSequence([seed, purpose])` keeps every bit of
    both inputs.

    Args:
      seed: the master seed, an integer in `[0, 2**64)`.
      purpose: a small non-negative integer naming the stream.

    Returns:
      An integer in `[0, 2**64)`.

    Raises:
      ValueError: if `seed` or `purpose` is invalid.
    """
    seed = _validation.check_seed(seed)
    purpose = _validation.check_nonnegative_int(purpose, "purpose")
    return int(np.random.SeedSequence([seed, purpose]).generate_state(1, np.uint64)[0])
