"""The ONE access to real data: a clipped sum of per-example statistics, noised once, accounted.

Host side (the loop over chunks and the tracker) around device-side, jitted
clipped sums. Each function here records a :class:`dpjax.GaussianRelease` in
the tracker BEFORE it touches the data, sums per-example contributions through
:func:`dpjax.accumulate_clipped_grads` (the sensitivity travels in the
:class:`dpjax.ClippedSum`), adds noise once with :func:`dpjax.gaussian_mechanism`,
and returns a typed record holding only the noisy result and public numbers.
Those records can only be made here, so a function that takes one (the
generator's training, :func:`dpjax.synthetic.train_generator`;
:func:`dpjax.synthetic.fit_class_gaussians`) has no handle on the data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import _validation
from dpjax.synthetic._features import DCTBasis, RandomFourierFeatures

_RELEASED = object()  # held only by this module's release functions


def _frozen(a: Any) -> np.ndarray:
    out = np.array(a, dtype=np.float32, copy=True)
    out.flags.writeable = False
    return out


def _check_token(token: object, name: str, maker: str) -> None:
    if token is not _RELEASED:
        raise TypeError(
            f"{name} is made only by dpjax.synthetic.{maker}, which noises and accounts the "
            f"release; it cannot be built from arrays."
        )


@dataclasses.dataclass(frozen=True, eq=False)
class ReleasedEmbedding:
    """The DP-MERF release: noisy per-class sums of random features and (weighted) counts.

    Made only by :func:`release_embedding`; everything in it is public after the
    release (the noisy sums, the public feature map and the numbers that
    describe the mechanism).

    Attributes:
      noisy_sums: `(K, 2 D + 1)` float32: per class k, the noised
        ``sum_{i: y_i = k} [sqrt(1 - c**2) phi(x_i), c]``.
      features: the public :class:`RandomFourierFeatures`.
      input_shape: the shape of one input, e.g. `(28, 28, 1)`.
      count_weight: c, the weight of the count coordinate.
      noise_multiplier: sigma; the noise std is sigma (the sensitivity is 1).

    Example:
      >>> from dpjax.synthetic import ReleasedEmbedding
      >>> ReleasedEmbedding.__dataclass_fields__.keys() >= {"noisy_sums", "features"}
      True

    **Privacy:** one Gaussian release of L2 sensitivity 1 (each example's row
    has norm exactly 1 and lands in one class), recorded as
    ``GaussianRelease(noise_multiplier)`` before it happened.
    """

    noisy_sums: np.ndarray
    features: RandomFourierFeatures
    input_shape: tuple[int, ...]
    count_weight: float
    noise_multiplier: float
    _token: object = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        _check_token(self._token, "ReleasedEmbedding", "release_embedding")

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.noisy_sums.shape[0])

    def noisy_counts(self) -> np.ndarray:
        """`(K,)` noisy class counts (post-processing), each at least 1."""
        return np.maximum(self.noisy_sums[:, -1] / self.count_weight, 1.0)

    def mean_embeddings(self) -> np.ndarray:
        """`(K, 2 D)` noisy per-class mean feature vectors (post-processing)."""
        feats = self.noisy_sums[:, :-1] / math.sqrt(1.0 - self.count_weight**2)
        return (feats / self.noisy_counts()[:, None]).astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class ReleasedMoments:
    """The DP class-Gaussian release: noisy per-class first and second moments and counts.

    Made only by :func:`release_moments`. The inputs are projected on a public
    basis, scaled by the public radius R and clipped to norm 1 (``u``).

    Attributes:
      noisy_sums: `(K, p + p (p + 1) / 2 + 1)` float32: per class, the noised
        ``sum [a u, b vech(u u^T), c]`` (off-diagonal entries of vech scaled by
        sqrt(2), so that ``||vech(u u^T)|| = ||u||**2``).
      basis: the public :class:`DCTBasis`.
      radius: R, the public scale of the coefficients.
      weights: ``(a, b, c)``, public, with ``a**2 + b**2 + c**2 <= 1``.
      input_shape: the shape of one input.
      noise_multiplier: sigma; the noise std is sigma (the sensitivity is 1).

    Example:
      >>> from dpjax.synthetic import ReleasedMoments
      >>> "noisy_sums" in ReleasedMoments.__dataclass_fields__
      True

    **Privacy:** one Gaussian release of L2 sensitivity 1, recorded as
    ``GaussianRelease(noise_multiplier)`` before it happened.
    """

    noisy_sums: np.ndarray
    basis: DCTBasis
    radius: float
    weights: tuple[float, float, float]
    input_shape: tuple[int, ...]
    noise_multiplier: float
    _token: object = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        _check_token(self._token, "ReleasedMoments", "release_moments")

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.noisy_sums.shape[0])

    def noisy_counts(self) -> np.ndarray:
        """`(K,)` noisy class counts (post-processing), each at least 1."""
        return np.maximum(self.noisy_sums[:, -1] / self.weights[2], 1.0)


def calibrate_release_noise(target_epsilon: float, delta: float) -> float:
    """The noise multiplier of ONE Gaussian release that spends at most `target_epsilon`.

    Host side: :func:`dpjax.calibrate_noise_multiplier` with q = 1 and one step,
    checked against a :class:`dpjax.PrivacyTracker` holding the
    :class:`dpjax.GaussianRelease` (raised by 0.1 % until it fits).

    Args:
      target_epsilon: epsilon, > 0.
      delta: delta, in (0, 1).

    Returns:
      sigma.

    Raises:
      ValueError: if an argument is invalid.

    Example:
      >>> from dpjax.synthetic import calibrate_release_noise
      >>> 0.3 < calibrate_release_noise(10.0, 1e-5) < 0.6
      True

    **Privacy:** the returned sigma is what the tracker is told; the release
    must add noise of std sigma times its L2 sensitivity.
    """
    sigma = dpjax.calibrate_noise_multiplier(target_epsilon, 1.0, 1, delta)
    return dpjax.fitting_noise_multiplier(dpjax.GaussianRelease, sigma, target_epsilon, delta)


def _check_data(
    x: Any, y: Any, num_classes: int, input_dim: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The data as float32 `(N, input_dim)` and int32 `(N,)`, and one input's shape.

    Called after the release is recorded. Its messages name shapes and dtypes,
    never a value of the data.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(
            f"x and y must be (N, ...) inputs and (N,) labels, N >= 1; got x.shape={x.shape}, "
            f"y.shape={y.shape}. Pass e.g. dataset.train.x, dataset.train.y."
        )
    if math.prod(x.shape[1:]) != input_dim:
        raise ValueError(
            f"x has {math.prod(x.shape[1:])} inputs per example but the feature map takes "
            f"{input_dim}; build it with input_dim={math.prod(x.shape[1:])}."
        )
    if y.dtype.kind not in "iu" or not bool(np.all((y >= 0) & (y < num_classes))):
        raise ValueError(
            f"y must hold integer labels in [0, num_classes={num_classes}) (dtype {y.dtype}); "
            "pass the right num_classes."
        )
    shape = tuple(int(d) for d in x.shape[1:])
    return x.reshape(x.shape[0], -1).astype(np.float32), y.astype(np.int32), shape


def _clipped_sum(
    acc: Callable[..., dpjax.ClippedSum],
    params: Any,
    x: np.ndarray,
    y: np.ndarray,
    microbatch_size: int,
    progress: bool,
    what: str,
) -> dpjax.ClippedSum:
    """The sum over all rows of contributions clipped at 1, chunk by chunk (one ClippedSum)."""
    chunk = 16 * microbatch_size
    n = x.shape[0]
    starts = range(0, n, chunk)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415 (only when asked)

        starts = tqdm(starts, desc=what, unit="chunk")
    total: dpjax.ClippedSum | None = None
    for start in starts:
        xb, yb = x[start : start + chunk], y[start : start + chunk]
        pad = chunk - xb.shape[0]
        mask = np.arange(chunk) < xb.shape[0]
        xb = np.pad(xb, ((0, pad), (0, 0)))
        yb = np.pad(yb, (0, pad))
        part = acc(params, (jnp.asarray(xb), jnp.asarray(yb)), jnp.asarray(mask))
        # Disjoint rows: the sum of the parts is the clipped sum of all rows, same sensitivity.
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    assert total is not None
    return total


@functools.lru_cache(maxsize=16)
def _embedding_accumulator(
    features: RandomFourierFeatures, k: int, c: float, m: int
) -> Callable[..., dpjax.ClippedSum]:
    """Jitted clipped sum of the rows ``e_y (x) [sqrt(1 - c**2) phi(x), c]`` (cached)."""
    scale = math.sqrt(1.0 - c * c)

    def contributions(w: jax.Array, batch: Any) -> jax.Array:
        xb, yb = batch
        phi = features(xb, w) * jnp.float32(scale)
        row = jnp.concatenate([phi, jnp.full((phi.shape[0], 1), c, jnp.float32)], axis=1)
        onehot = jax.nn.one_hot(yb, k, dtype=jnp.float32)
        return onehot[:, :, None] * row[:, None, :]

    return jax.jit(dpjax.accumulate_clipped_grads(contributions, l2_norm=1.0, microbatch_size=m))


@functools.lru_cache(maxsize=16)
def _moments_accumulator(
    k: int, a: float, b: float, c: float, m: int
) -> Callable[..., dpjax.ClippedSum]:
    """Jitted clipped sum of the rows ``e_y (x) [a u, b vech(u u^T), c]`` (cached).

    ``u = x @ P`` (P, the basis over R, is the first argument) clipped to norm 1
    by :func:`dpjax.clip_weights`; a non-finite row becomes NaN and the clipper drops it.
    """

    def contributions(p: jax.Array, batch: Any) -> jax.Array:
        xb, yb = batch
        u = xb @ p
        w, keep, _ = dpjax.clip_weights(jnp.linalg.norm(u, axis=1), 1.0, jnp.ones(u.shape[0], bool))
        u = jnp.where(keep[:, None], u * w[:, None], jnp.nan)
        row = jnp.concatenate(
            [a * u, b * _vech(u), jnp.full((u.shape[0], 1), c, jnp.float32)], axis=1
        )
        onehot = jax.nn.one_hot(yb, k, dtype=jnp.float32)
        return onehot[:, :, None] * row[:, None, :]

    return jax.jit(dpjax.accumulate_clipped_grads(contributions, l2_norm=1.0, microbatch_size=m))


def _noised(clipped: dpjax.ClippedSum, noise_multiplier: float, key: jax.Array) -> np.ndarray:
    tx = dpjax.gaussian_mechanism(noise_multiplier, key)
    state = tx.init(jnp.zeros(()))  # the state holds only the key and a count
    noisy, _ = tx.update(cast(Any, clipped), state)  # optax's Updates type: a ClippedSum here
    return _frozen(noisy)


def release_embedding(
    x: Any,
    y: Any,
    *,
    num_classes: int,
    features: RandomFourierFeatures,
    noise_multiplier: float,
    tracker: dpjax.PrivacyTracker,
    key: jax.Array,
    count_weight: float = 0.1,
    microbatch_size: int = 128,
    progress: bool = False,
) -> ReleasedEmbedding:
    """DP-MERF's release: per-class sums of random features, noised once, accounted first.

    Host side. Records ``GaussianRelease(noise_multiplier)`` in `tracker`
    (refused beyond the budget: nothing is computed then), sums the rows
    ``e_{y_i} (x) [sqrt(1 - c**2) phi(x_i), c]`` (norm 1) through
    :func:`dpjax.accumulate_clipped_grads` at clip norm 1, and adds
    ``N(0, sigma**2)`` to every coordinate with :func:`dpjax.gaussian_mechanism`.
    The last coordinate of each class row is c times its count (the counts are
    part of the same release).

    Args:
      x: `(N, ...)` inputs (the private data), flattened to `features.input_dim`.
      y: `(N,)` integer labels in [0, num_classes).
      num_classes: K, >= 1.
      features: the public :class:`RandomFourierFeatures`.
      noise_multiplier: sigma, > 0 (:func:`calibrate_release_noise`).
      tracker: the :class:`dpjax.PrivacyTracker` of the data set.
      key: the noise key (:func:`dpjax.secret_key`), used once.
      count_weight: c in (0, 1): the share of each row's norm given to its count.
      microbatch_size: rows per clipped microbatch (memory only).
      progress: show a tqdm bar.

    Returns:
      The :class:`ReleasedEmbedding`.

    Raises:
      ValueError: for invalid arguments.
      dpjax.BudgetExceededError: if the release would exceed the tracker's budget.

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import RandomFourierFeatures, release_embedding
      >>> rff = RandomFourierFeatures(input_dim=4, num_frequencies=8, length_scale=1.0, seed=0)
      >>> tracker = dpjax.PrivacyTracker(10.0, 1e-5)
      >>> x, y = np.ones((5, 4), np.float32), np.array([0, 1, 1, 0, 1])
      >>> rel = release_embedding(x, y, num_classes=2, features=rff, noise_multiplier=1.0,
      ...                         tracker=tracker, key=jax.random.key(0), microbatch_size=4)
      >>> rel.noisy_sums.shape, tracker.releases
      ((2, 17), (GaussianRelease(noise_multiplier=1.0, count=1),))

    **Privacy:** each example contributes one row of norm exactly 1 (also
    passed through the clipper at 1, so the sensitivity travels in the
    :class:`dpjax.ClippedSum`), to one class: adding or removing it moves the
    `(K, 2 D + 1)` sum by at most 1 in L2. One Gaussian release with std sigma is
    ``GaussianRelease(sigma)`` (add/remove neighbours). The feature map is public.

    References:
      Harder, Adamczewski, Park, "DP-MERF: Differentially Private Mean Embeddings
      with Random Features for Practical Privacy-Preserving Data Generation", AISTATS 2021.
    """
    k = _validation.check_positive_int(num_classes, "num_classes", "10")
    if not isinstance(features, RandomFourierFeatures):
        raise ValueError(f"features={features!r} must be a dpjax.synthetic.RandomFourierFeatures.")
    sigma = _validation.check_noise_multiplier(noise_multiplier)
    if not (isinstance(count_weight, float | int) and 0.0 < count_weight < 1.0):
        raise ValueError(f"count_weight={count_weight!r} must lie in (0, 1); pass e.g. 0.1.")
    m = _validation.check_positive_int(microbatch_size, "microbatch_size", "128")
    key = _validation.check_key(key)
    if not isinstance(tracker, dpjax.PrivacyTracker):
        raise ValueError(f"tracker={tracker!r} must be a dpjax.PrivacyTracker.")
    tracker.record(dpjax.GaussianRelease(sigma))  # BEFORE the data is read, even to check it
    xs, ys, input_shape = _check_data(x, y, k, features.input_dim)
    c = float(count_weight)
    acc = _embedding_accumulator(features, k, c, m)
    clipped = _clipped_sum(acc, features.frequencies(), xs, ys, m, progress, "DP-MERF embedding")
    return ReleasedEmbedding(
        noisy_sums=_noised(clipped, sigma, key),
        features=features,
        input_shape=input_shape,
        count_weight=c,
        noise_multiplier=sigma,
        _token=_RELEASED,
    )


def vech_size(p: int) -> int:
    """``p (p + 1) / 2``."""
    return p * (p + 1) // 2


def _vech(u: jax.Array) -> jax.Array:
    """Upper triangle of ``u u^T`` per row, off-diagonal entries times sqrt(2): `(B, p(p+1)/2)`."""
    p = u.shape[1]
    i, j = np.triu_indices(p)
    scale = jnp.asarray(np.where(i == j, 1.0, math.sqrt(2.0)), jnp.float32)
    return u[:, i] * u[:, j] * scale[None, :]


def unvech(v: np.ndarray, p: int) -> np.ndarray:
    """The symmetric `(p, p)` matrix whose :func:`_vech` form is `v` (host side)."""
    i, j = np.triu_indices(p)
    scale = np.where(i == j, 1.0, math.sqrt(2.0))
    m = np.zeros((p, p), np.float64)
    m[i, j] = v / scale
    m[j, i] = v / scale
    return m


def release_moments(
    x: Any,
    y: Any,
    *,
    num_classes: int,
    basis: DCTBasis,
    radius: float,
    noise_multiplier: float,
    tracker: dpjax.PrivacyTracker,
    key: jax.Array,
    weights: tuple[float, float, float] = (0.5, 0.86, 0.1),
    microbatch_size: int = 64,
    progress: bool = False,
) -> ReleasedMoments:
    """Per-class first and second moments in a public basis, noised once, accounted first.

    Host side. Each image is projected on the public :class:`DCTBasis`, scaled
    by the public radius R and clipped to norm 1 with :func:`dpjax.clip_weights`
    (``u_i``); its row ``e_{y_i} (x) [a u_i, b vech(u_i u_i^T), c]`` has norm at
    most ``sqrt(a**2 + b**2 + c**2) <= 1`` and is summed through
    :func:`dpjax.accumulate_clipped_grads` at clip norm 1; one
    :func:`dpjax.gaussian_mechanism` draw noises the sum. "Analyze Gauss" per class.

    Args:
      x: `(N, side, side[, 1])` images (the private data).
      y: `(N,)` integer labels in [0, num_classes).
      num_classes: K, >= 1.
      basis: the public :class:`DCTBasis`.
      radius: R > 0, the public scale: coefficients are divided by R, then clipped.
      noise_multiplier: sigma, > 0 (:func:`calibrate_release_noise`).
      tracker: the :class:`dpjax.PrivacyTracker` of the data set.
      key: the noise key (:func:`dpjax.secret_key`), used once.
      weights: ``(a, b, c)`` > 0 with ``a**2 + b**2 + c**2 <= 1``: the shares of the
        mean, the second moment and the count.
      microbatch_size: rows per clipped microbatch (memory only).
      progress: show a tqdm bar.

    Returns:
      The :class:`ReleasedMoments`.

    Raises:
      ValueError: for invalid arguments.
      dpjax.BudgetExceededError: if the release would exceed the tracker's budget.

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import DCTBasis, release_moments
      >>> tracker = dpjax.PrivacyTracker(10.0, 1e-5)
      >>> x, y = np.ones((5, 4, 4), np.float32), np.array([0, 1, 1, 0, 1])
      >>> rel = release_moments(x, y, num_classes=2, basis=DCTBasis(4, 2), radius=2.0,
      ...                       noise_multiplier=1.0, tracker=tracker, key=jax.random.key(0),
      ...                       microbatch_size=4)
      >>> rel.noisy_sums.shape, len(tracker.releases)
      ((2, 15), 1)

    **Privacy:** adding or removing one example moves the `(K, F)` sum by at
    most 1 in L2 (``||u|| <= 1`` after clipping; ``||vech(u u^T)|| = ||u||**2``;
    one class row), so one Gaussian draw of std sigma is ``GaussianRelease(sigma)``.
    The basis and R are public (not chosen from the data).

    References:
      Dwork, Talwar, Thakurta, Zhang, "Analyze Gauss: Optimal Bounds for
      Privacy-Preserving Principal Component Analysis", STOC 2014.
    """
    k = _validation.check_positive_int(num_classes, "num_classes", "10")
    if not isinstance(basis, DCTBasis):
        raise ValueError(f"basis={basis!r} must be a dpjax.synthetic.DCTBasis.")
    r = _validation.check_positive_float(radius, "radius", "16.0")
    sigma = _validation.check_noise_multiplier(noise_multiplier)
    a, b, c = (float(w) for w in weights)
    if min(a, b, c) <= 0 or a * a + b * b + c * c > 1.0 + 1e-9:
        raise ValueError(
            f"weights={weights!r} must be three positive numbers with a**2 + b**2 + c**2 <= 1; "
            "pass e.g. (0.5, 0.86, 0.1)."
        )
    m = _validation.check_positive_int(microbatch_size, "microbatch_size", "64")
    key = _validation.check_key(key)
    if not isinstance(tracker, dpjax.PrivacyTracker):
        raise ValueError(f"tracker={tracker!r} must be a dpjax.PrivacyTracker.")
    tracker.record(dpjax.GaussianRelease(sigma))  # BEFORE the data is read, even to check it
    xs, ys, input_shape = _check_data(x, y, k, basis.side * basis.side)
    proj = jnp.asarray(basis.matrix() / np.float32(r))

    acc = _moments_accumulator(k, a, b, c, m)
    clipped = _clipped_sum(acc, proj, xs, ys, m, progress, "class moments")
    return ReleasedMoments(
        noisy_sums=_noised(clipped, sigma, key),
        basis=basis,
        radius=r,
        weights=(a, b, c),
        input_shape=input_shape,
        noise_multiplier=sigma,
        _token=_RELEASED,
    )
