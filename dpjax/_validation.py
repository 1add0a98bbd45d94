"""Input validation shared by every dpjax constructor (host side).

Every check raises :class:`ValueError` naming the parameter, the value it got
and how to fix it, so that a misconfigured private run fails when it is built,
never silently while it trains.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

MIN_CLIP_NORM = 1e-6
"""Smallest clip norm accepted. An underflowed float32 squared norm (elements below
about 1e-19) then still means a true norm far below C, so no row escapes clipping."""

NOT_PRIVATE_HINT = (
    "use dpjax.non_private_aggregate(...) explicitly if you really want a NOT PRIVATE run"
)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_clip_norm(l2_norm: float, name: str = "l2_norm") -> float:
    """Returns `l2_norm` as a float if it is finite and at least `MIN_CLIP_NORM`.

    Raises:
      ValueError: if it is not a number, not finite, or below `MIN_CLIP_NORM`.
    """
    if not _is_real(l2_norm) or not math.isfinite(l2_norm) or l2_norm <= 0:
        raise ValueError(
            f"{name}={l2_norm!r} must be a finite positive clipping norm C; the sensitivity "
            f"of the clipped sum is C, so C=inf or C<=0 gives no privacy. Pass e.g. "
            f"{name}=1.0, or {NOT_PRIVATE_HINT}."
        )
    if l2_norm < MIN_CLIP_NORM:
        raise ValueError(
            f"{name}={l2_norm!r} is below {MIN_CLIP_NORM:g}: float32 squared norms underflow for "
            f"gradients that small, so clipping could not be guaranteed. Rescale the loss and pass "
            f"{name} >= {MIN_CLIP_NORM:g}."
        )
    return float(l2_norm)


def check_noise_multiplier(noise_multiplier: float, name: str = "noise_multiplier") -> float:
    """Returns `noise_multiplier` as a float if it is a finite positive number.

    Raises:
      ValueError: if it is not a finite positive number (sigma = 0 gives no privacy).
    """
    if not _is_real(noise_multiplier) or not math.isfinite(noise_multiplier):
        raise ValueError(
            f"{name}={noise_multiplier!r} must be a finite positive number; pass e.g. {name}=1.1."
        )
    if noise_multiplier <= 0:
        raise ValueError(
            f"{name}={noise_multiplier!r} gives no privacy; pass a positive value (e.g. "
            f"{name}=1.1, or calibrate one with dpjax.calibrate_noise_multiplier), or "
            f"{NOT_PRIVATE_HINT}."
        )
    return float(noise_multiplier)


def check_positive_float(value: float, name: str, example: str = "1.0") -> float:
    """Returns `value` as a float if it is finite and > 0.

    Raises:
      ValueError: otherwise.
    """
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name}={value!r} must be a finite positive number; pass e.g. {name}={example}."
        )
    return float(value)


def check_delta(delta: float, dataset_size: int | None = None, name: str = "delta") -> float:
    """Returns `delta` as a float if it lies in (0, 1) and below 1/N when N is known.

    A delta of at least 1/N allows a mechanism that publishes one whole record
    at random ("name-and-shame") to satisfy the definition, so dpjax refuses it.

    Raises:
      ValueError: if delta is outside (0, 1), or delta >= 1/dataset_size.
    """
    if not _is_real(delta) or not (0.0 < delta < 1.0):
        raise ValueError(f"{name}={delta!r} must lie in (0, 1); pass e.g. {name}=1e-5.")
    if dataset_size is not None:
        n = check_positive_int(dataset_size, "dataset_size")
        if delta >= 1.0 / n:
            raise ValueError(
                f"{name}={delta!r} is not below 1/N = 1/{n} = {1.0 / n:.3g}: such a delta lets a "
                f"mechanism publish whole records. Pass {name} < 1/N, e.g. {name}={_suggest_delta(n):.1e}."
            )
    return float(delta)


def _suggest_delta(n: int) -> float:
    """A conventional delta well below 1/n: the power of ten below 1/n**1.1."""
    return 10.0 ** math.floor(math.log10(1.0 / n**1.1))


def check_sampling_rate(q: float, name: str = "sampling_rate") -> float:
    """Returns `q` as a float if it lies in (0, 1].

    Raises:
      ValueError: otherwise.
    """
    if not _is_real(q) or not (0.0 < q <= 1.0):
        raise ValueError(
            f"{name}={q!r} must lie in (0, 1]; it is the Poisson inclusion probability "
            f"expected_batch_size / dataset_size, e.g. {name}=0.01."
        )
    return float(q)


def check_positive_int(value: int, name: str, example: str = "1") -> int:
    """Returns `value` as an int if it is an integer >= 1.

    Raises:
      ValueError: otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1; pass e.g. {name}={example}.")
    return int(value)


MAX_STEPS = 10**9
"""Most steps (or repeated releases) one accounting query may describe: the PLD and RDP
computations grow with the count, and 10**9 already exceeds any real run."""


def check_steps(value: int, name: str = "steps") -> int:
    """Returns `value` as an int if it is an integer in [1, MAX_STEPS].

    Raises:
      ValueError: otherwise (a larger count would only exhaust memory in the accountant).
    """
    count = check_positive_int(value, name, "1000")
    if count > MAX_STEPS:
        raise ValueError(
            f"{name}={value!r} exceeds {MAX_STEPS:.0e}, the most the accountant describes in one "
            f"query (the computation grows with it, and no real run is that long); pass fewer."
        )
    return count


def check_target_epsilon(epsilon: float, name: str = "target_epsilon") -> float:
    """Returns `epsilon` as a float if it is finite and > 0.

    Raises:
      ValueError: otherwise.
    """
    if not _is_real(epsilon) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(
            f"{name}={epsilon!r} must be a finite positive number; pass e.g. {name}=3.0."
        )
    return float(epsilon)


def check_key(key: object, name: str = "key") -> jax.Array:
    """Returns `key` if it is a JAX PRNG key (typed, or a legacy uint32[2]).

    Raises:
      ValueError: if `key` is None or not a PRNG key.
    """
    if key is None:
        raise ValueError(
            f"{name}=None: a PRNG key is required and dpjax never picks one for you; "
            f"pass {name}=dpjax.secret_key() (or jax.random.key(seed) for research runs)."
        )
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"{name} has shape {key.shape}; pass a single key, jax.random.key(seed)."
            )
        return key
    if isinstance(key, jax.Array) and key.shape == (2,) and key.dtype == jnp.uint32:
        return jax.random.wrap_key_data(key)
    raise ValueError(f"{name}={key!r} is not a PRNG key; pass {name}=jax.random.key(seed).")


def check_accountant(accountant: str, name: str = "accountant") -> str:
    """Returns `accountant` if it is 'pld' or 'rdp'.

    Raises:
      ValueError: otherwise.
    """
    if accountant not in ("pld", "rdp"):
        raise ValueError(f"{name}={accountant!r} is unknown; pass {name}='pld' (default) or 'rdp'.")
    return accountant


def check_nonnegative_int(value: int, name: str, example: str = "0") -> int:
    """Returns `value` as an int if it is an integer >= 0.

    Raises:
      ValueError: otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0; pass e.g. {name}={example}.")
    return int(value)


def at_least_float32(dtype: jax.typing.DTypeLike) -> jnp.dtype:
    """float64 for float64 inputs, else float32: the dtype sums and noise are computed in.

    Written out rather than `jnp.promote_types(dtype, float32)`, which strict dtype
    promotion refuses for bfloat16 and float16.
    """
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def check_mask(mask: object, batch_size: int, shapes: object) -> jax.Array:
    """Returns `mask` as a boolean `(batch_size,)` array (trace time).

    The mask is required everywhere a clipped sum is formed: batches from
    :class:`dpjax.PoissonSampler` are padded with copies of example 0, and a
    missing mask would count those copies as examples.

    Raises:
      ValueError: if `mask` is None or does not have shape `(batch_size,)`.
    """
    if mask is None:
        raise ValueError(
            f"mask=None: a mask is required so that padded rows never count as examples "
            f"(dpjax.PoissonSampler pads batches with copies of example 0). Pass the sampled "
            f"batch's mask (mask=batch.mask), or jnp.ones({batch_size}, bool) if no row is "
            f"padded. Shapes: {shapes}"
        )
    mask = jnp.asarray(mask)
    if mask.shape != (batch_size,):
        raise ValueError(
            f"mask has shape {mask.shape} but the rows have batch size {batch_size}; pass a boolean "
            f"mask of shape ({batch_size},) marking the real (not padded) rows. Shapes: {shapes}"
        )
    return mask.astype(bool)


def check_seed(seed: object, name: str = "seed") -> int:
    """Returns `seed` as an int if it is an integer in `[0, 2**64)`.

    Raises:
      ValueError: otherwise (a larger seed could not be kept whole in a key).
    """
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not 0 <= int(seed) < 2**64
    ):
        raise ValueError(
            f"{name}={seed!r} must be an integer in [0, 2**64); pass e.g. {name}=0 for a "
            f"reproducible research run, or leave it out to draw a secret seed from the OS."
        )
    return int(seed)


def check_input_shape(input_shape: object, name: str = "input_shape") -> tuple[int, int, int]:
    """Returns `input_shape` as a tuple of three positive ints (height, width, channels).

    Raises:
      ValueError: if it is not a length-3 sequence of integers >= 1.
    """
    ok = (
        isinstance(input_shape, (tuple, list))
        and len(input_shape) == 3
        and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 1
            for d in input_shape
        )
    )
    if not ok:
        raise ValueError(
            f"{name}={input_shape!r} must be the shape of ONE image, (height, width, channels), "
            f"three integers >= 1 without the batch axis; pass e.g. {name}=(28, 28, 1)."
        )
    return tuple(int(d) for d in input_shape)  # type: ignore[return-value]
