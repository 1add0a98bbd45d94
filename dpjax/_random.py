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


# ---------------------------------------------------------------- exact discrete Gaussian (host)

DISCRETE_MAX_TRIALS = 64
"""Discrete-Laplace proposals longer than ``64 t`` are rejected (see :func:`discrete_gaussian`)."""

_WORD = np.uint64


def _random_words(n: int) -> np.ndarray:
    """`n` uniform 64-bit words from the operating system's CSPRNG (`os.urandom`)."""
    return np.frombuffer(secrets.token_bytes(8 * n), dtype=_WORD).copy()


def _uniform_below(bound: np.ndarray) -> np.ndarray:
    """Uniform integers in `[0, bound)`, elementwise, exactly (rejection; CSPRNG words).

    `bound` is an int64 array of values in `[1, 2**62]`.
    """
    bound = np.asarray(bound, np.int64).astype(_WORD)
    limit = (np.iinfo(_WORD).max // bound) * bound  # accept words below a multiple of bound
    out = np.zeros(bound.shape, _WORD)
    flat_bound, flat_limit = bound.reshape(-1), limit.reshape(-1)
    todo = np.flatnonzero(flat_bound > 1)  # [0, 1) holds only 0: no randomness spent
    flat = out.reshape(-1)
    while todo.size:
        words = _random_words(todo.size)
        ok = words < flat_limit[todo]
        flat[todo[ok]] = words[ok] % flat_bound[todo[ok]]
        todo = todo[~ok]
    return out.astype(np.int64)


def _bernoulli_exp_unit(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) for `0 <= num <= den` (CKS20, Algorithm 1, gamma <= 1).

    K = 1, 2, ... while Bernoulli(gamma / K) succeeds; the draw is "K is odd".
    Bernoulli(gamma / K) is the product of Bernoulli(num / den) and Bernoulli(1 / K),
    both from uniform integers, so no number is ever rounded.
    """
    k = np.ones(num.shape, np.int64)
    alive = np.arange(num.size)
    while alive.size:
        a = (_uniform_below(den[alive]) < num[alive]) & (_uniform_below(k[alive]) == 0)
        k[alive[a]] += 1
        alive = alive[a]
    return (k % 2) == 1


def _bernoulli_exp(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Exact Bernoulli(exp(-num/den)) for integers `num >= 0`, `den >= 1` (CKS20, Algorithm 1)."""
    whole, part = np.divmod(num, den)
    out = np.ones(num.shape, bool)
    one = np.ones(num.shape, np.int64)
    todo = np.flatnonzero(whole > 0)
    while todo.size:  # exp(-whole) as `whole` independent Bernoulli(exp(-1)), stopping at a 0
        ok = _bernoulli_exp_unit(one[todo], one[todo])
        out[todo[~ok]] = False
        whole[todo] -= 1
        todo = todo[ok & (whole[todo] > 0)]
    todo = np.flatnonzero(out)
    out[todo] = _bernoulli_exp_unit(part[todo], den[todo])
    return out


def _discrete_laplace(n: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` proposals with P[y] proportional to exp(-|y| / t) (CKS20, Algorithm 2), and validity.

    Returns `(y, ok)`: `ok` is False where the proposal was rejected (Algorithm 2's
    own rejections, and proposals with ``|y| >= DISCRETE_MAX_TRIALS * t``).
    """
    tt = np.full(n, t, np.int64)
    u = _uniform_below(tt)
    ok = _bernoulli_exp(u, tt)
    v = np.zeros(n, np.int64)
    one = np.ones(n, np.int64)
    alive = np.flatnonzero(ok)
    while alive.size:  # v ~ Geometric(1 - e^-1): count Bernoulli(exp(-1)) successes
        more = _bernoulli_exp_unit(one[alive], one[alive])
        v[alive[more]] += 1
        too_long = v[alive] >= DISCRETE_MAX_TRIALS
        ok[alive[too_long]] = False
        alive = alive[more & ~too_long]
    x = u + t * v
    sign = (_random_words(n) >> _WORD(63)).astype(bool)
    ok &= ~(sign & (x == 0))  # -0 is rejected so that 0 is not counted twice
    return np.where(sign, -x, x), ok


def discrete_gaussian(n: int, sigma2: int, t: int) -> np.ndarray:
    """`n` i.i.d. draws of the discrete Gaussian N_Z(0, sigma2), exactly (host side, CSPRNG).

    P[y] is proportional to ``exp(-y**2 / (2 sigma2))`` for every integer y with
    ``|y| < DISCRETE_MAX_TRIALS * t``. The algorithm is Canonne, Kamath &
    Steinke's (rejection from a discrete Laplace of scale t, Algorithm 3) in
    integer arithmetic only: every Bernoulli(exp(-r)) is exact for rational r
    (their Algorithm 1), and every uniform integer comes from the operating
    system's CSPRNG (`secrets`), never from a seeded generator. The one change:
    a proposal of ``|y| >= 64 t`` is rejected, which cuts the tail beyond
    ``64 t >= 64 sqrt(sigma2)`` standard deviations, a mass below ``exp(-2048)``.

    Args:
      n: how many draws, >= 0.
      sigma2: the variance parameter, a positive integer multiple of `t`
        (so that ``sigma2 / t`` is an integer and the test ``exp(-(|y| -
        sigma2/t)**2 / (2 sigma2))`` stays in 64-bit integers: ``(64 t +
        sigma2 / t)**2 < 2**62``, i.e. sigma2 up to about 2**50).
      t: the proposal's scale, a positive integer (``floor(sqrt(sigma2)) + 1``
        is the efficient choice; any t is exact).

    Returns:
      An int64 array of shape `(n,)`.

    Raises:
      ValueError: if `sigma2` or `t` is out of range or `t` does not divide `sigma2`.

    Example:
      >>> y = discrete_gaussian(1000, 12, 4)
      >>> y.dtype, y.shape
      (dtype('int64'), (1000,))

    **Privacy:** for integer vectors, adding N_Z(0, sigma2) to each coordinate
    is the discrete Gaussian mechanism of CKS20: for L2 sensitivity Delta it is
    ``Delta**2 / (2 sigma2)``-zCDP, the Renyi curve of the continuous Gaussian.
    Its draws depend on no floating-point number, so the low-bit attack of
    Mironov (2012) has nothing to read. Its running time depends on the draws
    (a timing side channel, CKS20 Section 5 and Jin et al. 2022): keep the
    sampler's timing away from the adversary.

    References:
      Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
      Privacy", NeurIPS 2020, https://arxiv.org/abs/2004.00010.
    """
    n = _validation.check_nonnegative_int(n, "n")
    sigma2 = _validation.check_positive_int(sigma2, "sigma2", "12")
    t = _validation.check_positive_int(t, "t", "4")
    m = sigma2 // t
    if sigma2 % t or (DISCRETE_MAX_TRIALS * t + m) ** 2 >= 2**62:
        raise ValueError(
            f"sigma2={sigma2}, t={t}: sigma2 must be a multiple of t and (64 t + sigma2 / t)**2 "
            "below 2**62 (sigma2 up to about 2**50); pass e.g. t = isqrt(sigma2) + 1 and sigma2 "
            "rounded up to a multiple of it."
        )
    out = np.empty(n, np.int64)
    todo = np.arange(n)
    while todo.size:
        y, ok = _discrete_laplace(todo.size, t)
        idx = np.flatnonzero(ok)
        a = np.abs(y[idx]) - m  # |a| < 64 t + m, so a**2 < 2**62 for sigma2 <= 2**50
        accept = _bernoulli_exp(a * a, np.full(idx.size, 2 * sigma2, np.int64))
        ok[idx[~accept]] = False
        out[todo[ok]] = y[ok]
        todo = todo[~ok]
    return out
