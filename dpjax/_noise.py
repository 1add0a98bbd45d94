"""Gaussian noise on the clipped sum (device side, jittable).

**The sampler.** ``jax.random.normal`` in float32 computes ``sqrt(2) *
erfinv(u)`` with ``u`` on a grid of spacing 2**-23, so its draws never leave
[-5.42, +5.22]: an output beyond the largest value reachable without some
example then has probability 0 without it and (for sigma = 1, q = 1) about
1.3e-5 with it, more than a typical delta. dpjax draws instead a sign and a
magnitude ``|z| = -ndtri(u)`` from ``u`` in (0, 1/2) with full floating-point
resolution near 0: the mantissa is 23 random bits (52 in float64) and the
binade ``u in [2**-(k+2), 2**-(k+1))`` has probability 2**-(k+1), ``k`` being the
number of leading zeros of further random bits, down to ``u >= 2**-126`` (float32's
smallest normal). The largest draw is then ``|z| = 12.95`` and the mass beyond
it 2**-125. See :data:`NOISE_TAIL_MASS` for the bound the accountant charges.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.experimental
import jax.numpy as jnp
import optax
from jax import lax
from jax.scipy.special import ndtri

from dpjax import _clipping, _validation

PyTree = Any

NOISE_TAIL_MASS = 2.0**-124
"""Per noised coordinate and step, a bound on P[the draw differs from its exact Gaussian].

dpjax's sampler can be coupled with an exact N(0, 1) draw Z so that the two agree
(up to the rounding of ``ndtri`` and the 2**-23 relative grid of ``u``, the
floating-point discretisation that every float sampler has) except on an event of
probability at most ``2**-125`` (``|Z| > 12.95``, beyond the smallest ``u``) plus, per
array of n coordinates, ``n * 2**-125`` (the rare case that more coordinates need
extra random bits than the pool holds, see :func:`_pool_size`): at most
``NOISE_TAIL_MASS = 2**-124`` (about 4.7e-38) per coordinate. The accountant turns it
into a delta term: :func:`dpjax._accounting.noise_tail_delta`.
"""

MAX_NOISE_COORDINATES = 2**40
"""The most coordinates one step may noise (about 1.1e12); the accountant assumes it.

:func:`add_gaussian_noise` refuses larger updates when traced, so the tail term the
accountant adds (``(1 + e^eps) * steps * MAX_NOISE_COORDINATES * NOISE_TAIL_MASS``)
holds for every model dpjax can noise.
"""

_EXTENSION_BITS = 128  # further geometric bits for the coordinates that need them
_MAX_BINADE = 124  # u >= 2**-(124 + 2) = 2**-126, the smallest normal float32
_MAX_DRAW = 2**30  # coordinates per sampler call (its indices are int32)
_LOG_POOL_FAILURE = -125 * math.log(2)  # per coordinate, before the e^-1 safety factor

NOISE_SAMPLERS = ("float", "discrete")
"""The samplers of :func:`gaussian_mechanism`: dpjax's float Gaussian, or the exact discrete one."""

DISCRETE_ROUNDING_SLACK = 0.01
"""With ``sampler="discrete"`` the grid step is ``0.01 * Delta / sqrt(d)``: rounding the sum to it
moves the sensitivity by at most ``0.01 * Delta * (1 + 2**-12)``, and the noise is 1 % larger."""

_GRID_CLAMP = 2.0**40  # |sum / grid| is clamped here before rounding (float64 error <= 2**-13)
_ROUNDING_ERROR = 0.5 + 2.0**-13  # per coordinate, in grid steps, after the clamp


class DiscreteGrid(NamedTuple):
    """The fixed-point grid of the discrete Gaussian mechanism on d coordinates (host side).

    Attributes:
      step: the grid step gamma (the sum is released as ``gamma * integer``).
      sensitivity: the L2 sensitivity of the ROUNDED sum, in grid steps:
        ``Delta / gamma + sqrt(d) * (1 + 2**-12)`` (each coordinate's rounding error
        is at most ``1/2 + 2**-13`` steps, for each of the two neighbouring sums).
      sigma2: the discrete Gaussian's variance parameter (an integer multiple of `t`),
        at least ``(noise_multiplier * sensitivity)**2``.
      t: the scale of the sampler's discrete-Laplace proposal.
    """

    step: float
    sensitivity: float
    sigma2: int
    t: int

    @classmethod
    def for_sum(cls, noise_multiplier: float, delta: float, coordinates: int) -> DiscreteGrid:
        """The grid for a sum of L2 sensitivity `delta` with `coordinates` coordinates.

        Raises:
          ValueError: if the variance parameter would overflow the sampler's 64-bit
            arithmetic (noise_multiplier * sqrt(d) above about 3e5).
        """
        root_d = math.sqrt(max(coordinates, 1))
        step = DISCRETE_ROUNDING_SLACK * delta / root_d
        sensitivity = delta / step + 2.0 * _ROUNDING_ERROR * root_d
        target = (noise_multiplier * sensitivity) ** 2 * (1.0 + 2.0**-40)  # float rounding up
        if not target < 2.0**48:
            raise ValueError(
                f"sampler='discrete' with noise_multiplier={noise_multiplier} on {coordinates} "
                f"coordinates needs a variance of {target:.3g} grid steps, beyond the exact "
                "sampler's 64-bit range (2**48); noise fewer coordinates per release, or use "
                "sampler='float'."
            )
        t = math.isqrt(math.ceil(target)) + 1
        return cls(step, sensitivity, t * -(-math.ceil(target) // t), t)


def _round_to_grid(flat: Any, grid: DiscreteGrid) -> Any:
    """Host: ``rint(clamp(sum / step))`` in float64, as int64 (error <= 1/2 + 2**-13 per coordinate)."""
    import numpy as np  # noqa: PLC0415 (host-side only)

    scaled = np.clip(np.asarray(flat, np.float64) / grid.step, -_GRID_CLAMP, _GRID_CLAMP)
    return np.rint(scaled).astype(np.int64)


def _discrete_noised_host(flat: Any, grid: DiscreteGrid, dtype: Any) -> Any:
    """Host: round the float sum to the grid, add exact discrete Gaussian noise, scale back."""
    import numpy as np  # noqa: PLC0415 (host-side only)

    from dpjax._random import discrete_gaussian  # noqa: PLC0415 (host-side only)

    integer = _round_to_grid(flat, grid)
    integer += discrete_gaussian(integer.size, grid.sigma2, grid.t)
    return (integer.astype(np.float64) * grid.step).astype(dtype)


def _discrete_noised(updates: PyTree, noise_multiplier: float, delta: float) -> PyTree:
    """`updates` rounded to the grid plus exact discrete Gaussian noise, via a host callback."""
    leaves, treedef = jax.tree.flatten(updates)
    dtypes = [_validation.at_least_float32(jnp.result_type(g)) for g in leaves]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.dtype(jnp.float32)
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(g, dtype)) for g in leaves])
    grid = DiscreteGrid.for_sum(noise_multiplier, delta, flat.size)
    noisy = jax.experimental.io_callback(
        functools.partial(_discrete_noised_host, grid=grid, dtype=dtype),
        jax.ShapeDtypeStruct(flat.shape, dtype),
        flat,
        ordered=False,
    )
    out, offset = [], 0
    for g, d in zip(leaves, dtypes, strict=True):
        size = math.prod(jnp.shape(g))
        out.append(noisy[offset : offset + size].reshape(jnp.shape(g)).astype(d))
        offset += size
    return jax.tree.unflatten(treedef, out)


class GaussianNoiseState(NamedTuple):
    """State of :func:`add_gaussian_noise`.

    Attributes:
      count: int32, how many noise draws were made (the next step's index).
      key: the root PRNG key; step t uses `jax.random.fold_in(key, t)`.
    """

    count: jax.Array
    key: jax.Array


@functools.lru_cache(maxsize=256)
def _pool_size(n: int, p: float) -> int:
    """Slots for the coordinates (of n) that need extension bits, each with probability p.

    The smallest s with ``P[Binomial(n, p) > s] <= n * 2**-125 / e`` by the Chernoff
    bound ``P[X >= a] <= exp(-n * KL(a/n || p))`` (a > n p); n when no s < n does.
    Host side, at trace time.
    """
    log_target = math.log(n) + _LOG_POOL_FAILURE - 1.0

    def log_tail(a: int) -> float:  # log of the Chernoff bound on P[X >= a], a > n p
        x = a / n
        if x >= 1.0:
            return n * math.log(p)
        return -n * (x * math.log(x / p) + (1.0 - x) * math.log1p(-x) - (1.0 - x) * math.log1p(-p))

    lo, hi = math.floor(n * p) + 1, n  # search a = s + 1 in (n p, n]
    if lo > n or log_tail(hi) > log_target:
        return n
    while lo < hi:  # the smallest a with log_tail(a) <= log_target (decreasing in a)
        mid = (lo + hi) // 2
        if log_tail(mid) <= log_target:
            hi = mid
        else:
            lo = mid + 1
    return lo - 1


def _first_true(mask: jax.Array, size: int) -> jax.Array:
    """Indices of the first `size` True entries of a 1-D bool mask, in order.

    Slots beyond the number of True entries hold `mask.size` (out of range, so a
    scatter with ``mode="drop"`` ignores them). Equals ``jnp.nonzero(mask,
    size=size, fill_value=mask.size)[0]`` but costs O(n) elementwise work plus a
    search over n / 32 block counts, with no scatter over n elements.
    """
    n = mask.size
    blocks = -(-n // 32)
    lane = jnp.arange(32, dtype=jnp.uint32)[None, :]
    bits = jnp.pad(mask, (0, 32 * blocks - n)).reshape(blocks, 32).astype(jnp.uint32)
    word = jnp.sum(bits << lane, axis=1, dtype=jnp.uint32)  # bit j: mask[32 b + j]
    count = lax.population_count(word).astype(jnp.int32)
    end = jnp.cumsum(count, dtype=jnp.int32)  # True entries in blocks 0..b
    slot = jnp.arange(size, dtype=jnp.int32)
    block = jnp.searchsorted(end, slot, side="right", method="scan").astype(jnp.int32)
    safe = jnp.minimum(block, blocks - 1)
    rank = slot - (end[safe] - count[safe])  # the slot's rank within its block
    w = word[safe][:, None]
    before = lax.population_count(w & ((jnp.uint32(1) << lane) - 1)).astype(jnp.int32)
    hit = (((w >> lane) & 1) == 1) & (before == rank[:, None])
    first = jnp.argmax(hit, axis=1).astype(jnp.int32)
    return jnp.where(block < blocks, safe * 32 + first, n).astype(jnp.int32)


def _leading_zeros(words: jax.Array) -> jax.Array:
    """Leading zeros of the bit string words[0] words[1] ... (axis 0), per column."""
    total = jnp.zeros(words.shape[1:], words.dtype)
    running = jnp.ones(words.shape[1:], bool)
    for w in words:
        zeros = lax.clz(w)
        total = total + jnp.where(running, zeros, 0).astype(words.dtype)
        running = running & (zeros == w.dtype.itemsize * 8)
    return total


def _signed_magnitude(k: jax.Array, word: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """``(-1)**sign * (-ndtri(u))``, ``u = 2**-(k+2) * (1 + mantissa * 2**-nmant)``.

    `word` holds the sign in its top bit and the mantissa in its low bits; `k`
    (clipped to 124, so u >= 2**-126) is the binade.
    """
    nbits, nmant = dtype.itemsize * 8, jnp.finfo(dtype).nmant
    bias = int(jnp.finfo(dtype).maxexp) - 1  # 127 or 1023
    utype = word.dtype
    k = jnp.minimum(k.astype(utype), utype.type(_MAX_BINADE))
    mantissa = word & utype.type((1 << nmant) - 1)
    u = lax.bitcast_convert_type(((utype.type(bias - 2) - k) << nmant) | mantissa, dtype)
    magnitude = -ndtri(u)
    return jnp.where((word >> (nbits - 1)) == 1, -magnitude, magnitude)


@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _standard_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """I.i.d. N(0, 1) draws in float32 or float64 whose tails reach |z| = 12.95.

    Device side, jittable. One random word per coordinate gives the sign, the
    mantissa of ``u`` and the first 8 (float32; 11 in float64) geometric bits. The
    coordinates whose geometric bits are all zero (probability 2**-8) take 128
    further bits from a pool of :func:`_pool_size` slots, assigned in index order
    (:func:`_first_true`); the pool overflows with probability at most
    ``n * 2**-125``. Cost about 1.2-1.5x ``jax.random.normal`` on CPU.

    Args:
      key: a PRNG key.
      shape: the output shape.
      dtype: float32 or float64 (float64 needs ``jax_enable_x64``).

    Returns:
      An array of `shape` and `dtype`.
    """
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype={dtype} is not supported; noise is drawn in float32 or float64.")
    n = math.prod(shape)
    if n == 0:
        return jnp.zeros(shape, dtype)
    if n > _MAX_DRAW:
        raise ValueError(f"shape={shape} has {n} > 2**30 coordinates; draw it in pieces.")
    nbits, nmant = dtype.itemsize * 8, jnp.finfo(dtype).nmant
    ngeo = nbits - 1 - nmant  # geometric bits in the coordinate's own word: 8 or 11
    utype = jnp.dtype(f"uint{nbits}")
    main_key, extension_key = jax.random.split(key)
    word = jax.random.bits(main_key, (n,), utype)
    geometric = (word >> utype.type(nmant)) & utype.type((1 << ngeo) - 1)
    k = lax.clz(geometric) - utype.type(nbits - ngeo)  # leading zeros of the ngeo bits
    z = _signed_magnitude(k, word, dtype)
    slots = _pool_size(n, 2.0**-ngeo)
    index = _first_true(k == ngeo, slots)
    extension = jax.random.bits(extension_key, (_EXTENSION_BITS // nbits, slots), utype)
    slot_word = word.at[index].get(mode="fill", fill_value=0)
    slot_z = _signed_magnitude(utype.type(ngeo) + _leading_zeros(extension), slot_word, dtype)
    return z.at[index].set(slot_z, mode="drop").reshape(shape)


def _normals_like(key: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
    """One N(0, 1) array per leaf, each in its leaf's dtype promoted to at least float32.

    Device side. One sampler call per dtype (per 2**30 coordinates), sliced into
    the leaves, so that the program holds one copy of the sampler however many
    leaves there are. A bf16/fp16 normal would have a few hundred distinct values
    and |z| < 3, which breaks the Gaussian mechanism; hence at least float32.
    """
    dtypes = [_validation.at_least_float32(jnp.result_type(g)) for g in leaves]
    groups = sorted(set(dtypes), key=str)
    out: list[Any] = [None] * len(leaves)
    for group_key, dtype in zip(jax.random.split(key, len(groups)), groups, strict=True):
        members = [i for i, d in enumerate(dtypes) if d == dtype]
        sizes = [math.prod(jnp.shape(leaves[i])) for i in members]
        total = sum(sizes)
        starts = range(0, max(total, 1), _MAX_DRAW)
        draws = [
            _standard_normal(k, (min(_MAX_DRAW, total - s),), jnp.dtype(dtype))
            for k, s in zip(jax.random.split(group_key, len(starts)), starts, strict=True)
        ]
        flat = draws[0] if len(draws) == 1 else jnp.concatenate(draws)
        offset = 0
        for i, size in zip(members, sizes, strict=True):
            out[i] = flat[offset : offset + size].reshape(jnp.shape(leaves[i]))
            offset += size
    return out


# sigma, the sensitivity and their product are each rounded to float32 on the device, losing at
# most 2**-24 relative each; the std is raised by 2**-20 so that it is never below the accounted
# sigma * sensitivity (a schedule's or an online sigma included).
_STD_MARGIN = 1.0 + 2.0**-20


def _noised(
    updates: PyTree,
    std: float | jax.Array,
    state: GaussianNoiseState,
    support: PyTree | None = None,
) -> tuple[PyTree, GaussianNoiseState]:
    """`updates + std * z` (z drawn from `fold_in(key, count)`), only on `support` if given."""
    leaves, treedef = jax.tree.flatten(updates)
    coordinates = sum(math.prod(jnp.shape(g)) for g in leaves)
    if coordinates > MAX_NOISE_COORDINATES:
        raise ValueError(
            f"the updates have {coordinates} coordinates, more than MAX_NOISE_COORDINATES "
            f"= 2**40 that the accountant's noise-tail term assumes; noise fewer "
            f"coordinates per step."
        )
    noise = _normals_like(jax.random.fold_in(state.key, state.count), leaves)
    if support is not None:
        # Off the support nothing is released: the noise AND the sum are zeroed there (a clipper
        # that sets a support without restricting its sum must not leak those coordinates).
        on = jax.tree.leaves(support)
        noise = [jnp.where(s, z, jnp.zeros((), z.dtype)) for s, z in zip(on, noise, strict=True)]
        leaves = [
            jnp.where(s, g, jnp.zeros((), jnp.result_type(g)))
            for s, g in zip(on, leaves, strict=True)
        ]
    std = std * _STD_MARGIN  # never below the accounted std after float32 rounding
    noisy = [jnp.asarray(g, z.dtype) + std * z for g, z in zip(leaves, noise, strict=True)]
    return jax.tree.unflatten(treedef, noisy), GaussianNoiseState(
        count=jnp.asarray(optax.safe_increment(state.count)), key=state.key
    )


def add_gaussian_noise(stddev: float, key: jax.Array) -> optax.GradientTransformation:
    """Adds i.i.d. N(0, stddev^2) noise to every coordinate of the updates.

    Noise is drawn and added in at least float32 (the output of a bfloat16 or
    float16 input is float32; cast after the noise, e.g. in the optimizer), by
    dpjax's sampler (see the module docstring), whose tails reach 12.95 sigma
    instead of ``jax.random.normal``'s 5.4 sigma. Step t draws from
    `jax.random.fold_in(key, t)`, t being the count kept in the state (one draw
    for all leaves of a dtype, sliced into them): every update gets fresh noise,
    and a run restored from a checkpoint (state included) continues the sequence
    instead of replaying it.

    Args:
      stddev: the standard deviation, finite and > 0. For DP-SGD this is
        `noise_multiplier * l2_norm` (:func:`dpjax.noisy_mean` does it for you).
      key: a PRNG key reserved for this noise (`dpjax.secret_key()`); do not use
        it for anything else.

    Returns:
      An `optax.GradientTransformation` with :class:`GaussianNoiseState`.

    Raises:
      ValueError: if `stddev` is not finite and positive, or `key` is not a key;
        when traced, if the updates have more than ``MAX_NOISE_COORDINATES = 2**40``
        coordinates.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))
      >>> noisy, state = tx.update(jnp.zeros(3), tx.init(None))
      >>> int(state.count)
      1

    **Privacy:** applied to a sum of L2 sensitivity C with `stddev = sigma * C`,
    this is the Gaussian mechanism with noise multiplier sigma. Noise must be
    added once per logical step, to the SUM, after all microbatches are
    accumulated. stddev = 0 is refused (no privacy). The draws equal exact
    Gaussians except with probability ``NOISE_TAIL_MASS = 2**-124`` per coordinate
    and step (the cut tail beyond 12.95 sigma); by the coupling lemma a mechanism
    that is (eps, delta)-DP with exact Gaussians is then (eps, delta + (1 + e^eps)
    * T * d * 2**-124)-DP for T steps of d coordinates, and dpjax's accountant
    charges that term (:func:`dpjax._accounting.noise_tail_delta`, d = 2**40). Not
    covered here: float rounding of the noise and of ``g + noise`` (the low-bit
    attack of Mironov 2012), a separate issue.

    References:
      Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014,
      Appendix A (Gaussian mechanism).
      Mironov, "On Significance of the Least Significant Bits for Differential
      Privacy", CCS 2012, https://doi.org/10.1145/2382196.2382264.
    """
    std = _validation.check_positive_float(stddev, "stddev", "noise_multiplier * l2_norm")
    key = _validation.check_key(key)

    def init_fn(params: PyTree) -> GaussianNoiseState:
        del params
        # A copy, so that donating one state to `jax.jit` cannot delete the key of the next init.
        return GaussianNoiseState(count=jnp.zeros((), jnp.int32), key=jnp.array(key, copy=True))

    def update_fn(updates, state, params=None):
        del params
        if isinstance(updates, _clipping.ClippedSum):
            raise ValueError(
                "add_gaussian_noise got a dpjax.ClippedSum: privatize it with "
                "dpjax.gaussian_mechanism(noise_multiplier, key) (or dpjax.noisy_mean), which "
                "reads its sensitivity; a stddev given here could disagree with the clip norm."
            )
        return _noised(updates, std, state)

    return optax.GradientTransformation(init_fn, update_fn)


def gaussian_mechanism(
    noise_multiplier: Any, key: jax.Array, *, sampler: str = "float"
) -> optax.GradientTransformationExtraArgs:
    """The Gaussian mechanism on a clipped sum: noise std = sigma times the sum's own sensitivity.

    Takes the :class:`dpjax.ClippedSum` that a clipper returns and adds i.i.d.
    N(0, (noise_multiplier * sensitivity)^2) to every coordinate of its sum,
    reading the sensitivity from the ClippedSum: the clip norm is never given
    here, so it cannot disagree with the one used to clip. Noise is drawn as by
    :func:`add_gaussian_noise` (fresh every step, `fold_in(key, count)`).

    Args:
      noise_multiplier: sigma, finite and > 0; or a :class:`dpjax.NoiseSchedule`,
        whose sigma at the state's step count is used (NaN output past its
        last step: never an un-noised value); or :class:`dpjax.OnlineNoise`,
        whose sigma the update takes as the keyword `noise_multiplier=`.
      key: a PRNG key reserved for this noise (:func:`dpjax.secret_key`).
      sampler: "float" (default: dpjax's float32 sampler on device, drawn from
        `key`) or "discrete": the floating-point-attack-resistant mechanism. The
        sum is rounded (on the host, in float64) to a grid of step
        ``gamma = 0.01 * Delta / sqrt(d)`` (d coordinates), exact discrete
        Gaussian noise N_Z(0, s) with ``s >= (sigma * Delta_grid)**2`` is added in
        64-bit integers (:func:`dpjax._random.discrete_gaussian`, Canonne, Kamath &
        Steinke 2020, every random bit from the OS CSPRNG, not from `key`), and
        ``gamma * integer`` is returned. ``Delta_grid = Delta / gamma + sqrt(d) *
        (1 + 2**-12)`` bounds the rounded sum's sensitivity, so the noise std is
        about 1.01 sigma Delta. It runs on the host through `jax.experimental.io_callback`
        (about 5 us per coordinate on one CPU core), takes a constant sigma only,
        no support, and is not reproducible from `key` (by design).

    Returns:
      An `optax.GradientTransformationExtraArgs` with :class:`GaussianNoiseState`; its
      output is the noisy sum (a plain pytree, in at least float32). If the
      ClippedSum has a `support`, noise lands on the support only (the sum is
      zero elsewhere).

    Raises:
      ValueError: if sigma or the key is invalid; at trace time, if the input is
        not a :class:`dpjax.ClippedSum` or its sensitivity is not finite and
        positive (a NOT PRIVATE sum).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.gaussian_mechanism(1.0, key=jax.random.key(0))
      >>> clipped = dpjax.clip_and_sum(jnp.ones((4, 3)), 0.5, mask=jnp.ones(4, bool))
      >>> noisy, state = tx.update(clipped, tx.init(None))
      >>> noisy.shape, int(state.count)
      ((3,), 1)

    **Privacy:** for a sum of L2 sensitivity Delta (C for per-example clipping
    at C), this is the Gaussian mechanism with noise multiplier sigma. Add it
    once per logical step, after all microbatches and devices are summed.
    With ``sampler="discrete"`` the release is an integer vector (times a public
    grid step) whose noise depends on no floating-point number: the low-bit
    attack of Mironov (2012) on the noise and on ``sum + noise`` has nothing to
    read. It is the discrete Gaussian mechanism on the rounded sum, whose L2
    sensitivity is at most ``Delta_grid`` (the rounding is accounted, not
    ignored), with ``s >= (sigma * Delta_grid)**2``: CKS20 prove that it has the
    Renyi-DP (zCDP) curve of the continuous Gaussian of noise multiplier sigma.
    The accountant is told the same ``PoissonGaussianSteps(sigma, q)``: that the
    Poisson-subsampled PLD of the continuous Gaussian also bounds the discrete
    one is an ASSUMPTION (CKS20 show the discrete Gaussian's privacy is at least
    as good as the continuous one's in the cases they compute; it is not proved
    here for subsampling). Not addressed: float rounding in the clipping and the
    summation before the noise, and the sampler's data-independent but
    output-dependent running time (a timing side channel).

    References:
      Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014,
      Appendix A (Gaussian mechanism).
      Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
      Privacy", NeurIPS 2020, https://arxiv.org/abs/2004.00010.
      Mironov, "On Significance of the Least Significant Bits for Differential
      Privacy", CCS 2012.
    """
    from dpjax._schedules import NoiseSchedule, OnlineNoise  # noqa: PLC0415 (import cycle)

    if sampler not in NOISE_SAMPLERS:
        raise ValueError(
            f"sampler={sampler!r} is unknown; pass one of {', '.join(NOISE_SAMPLERS)} "
            "('discrete' resists floating-point attacks)."
        )
    if sampler == "discrete" and isinstance(noise_multiplier, (NoiseSchedule, OnlineNoise)):
        raise ValueError(
            f"sampler='discrete' takes a constant noise_multiplier, got "
            f"{type(noise_multiplier).__name__}; pass a float, or sampler='float' for a schedule."
        )
    if isinstance(noise_multiplier, (NoiseSchedule, OnlineNoise)):
        varying: NoiseSchedule | OnlineNoise | None = noise_multiplier
        sigma = 1.0
    else:
        varying = None
        sigma = _validation.check_noise_multiplier(noise_multiplier)
    key = _validation.check_key(key)
    noise = add_gaussian_noise(1.0, key)

    def update_fn(updates, state, params=None, *, noise_multiplier=None, **extra_args):
        del params, extra_args
        if not isinstance(updates, _clipping.ClippedSum):
            raise ValueError(
                "gaussian_mechanism privatizes the dpjax.ClippedSum a clipper returns "
                "(clip_per_example, accumulate_clipped_grads, dpjax.ghost.ghost_clipped_grads), "
                f"which carries its sensitivity; got {type(updates).__name__}. For a value whose "
                "sensitivity you computed yourself, use dpjax.add_gaussian_noise(stddev, key)."
            )
        delta = updates.sensitivity
        if not (isinstance(delta, float) and math.isfinite(delta) and delta > 0):
            raise ValueError(
                f"the clipped sum has sensitivity {delta!r}: a NOT PRIVATE sum cannot be made "
                "private by noise of unbounded std; clip it (e.g. dpjax.clip_per_example(C))."
            )
        if sampler == "discrete":
            if updates.support is not None:
                raise ValueError(
                    "sampler='discrete' noises every coordinate; the clipped sum carries a "
                    "support (private_topk). Use sampler='float' with a support."
                )
            noisy = _discrete_noised(updates.sum, sigma, delta)
            state = state._replace(count=jnp.asarray(optax.safe_increment(state.count)))
        else:
            if isinstance(varying, NoiseSchedule):
                std = varying.on_device(state.count) * delta
            elif isinstance(varying, OnlineNoise):
                std = varying.on_device(noise_multiplier) * delta
            else:
                std = sigma * delta
            noisy, state = _noised(updates.sum, std, state, updates.support)
        scale = updates.scale
        if scale is not None:  # a clip-norm schedule's C_t (public), after the noise
            noisy = jax.tree.map(lambda x: x * jnp.asarray(scale, x.dtype), noisy)
        return noisy, state

    return optax.GradientTransformationExtraArgs(noise.init, update_fn)
