"""Generators fitted to a release ALONE: their functions take a release record, never data.

Host side (the loops), device side (the jitted steps). :func:`train_generator`
takes a :class:`ReleasedEmbedding` and :func:`fit_class_gaussians` a
:class:`ReleasedMoments`; both records are made only by the release functions,
which noise and account. Everything here is post-processing: it spends no
privacy, and training, sampling or sharing as much as one likes costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
from dpjax import _validation
from dpjax.synthetic._features import RandomFourierFeatures
from dpjax.synthetic._release import ReleasedEmbedding, ReleasedMoments, unvech, vech_size


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Hyperparameters of the DP-MERF generator (public, fixed before the release).

    Args:
      latent_dim: size of the noise input z, >= 1.
      hidden: widths of the hidden layers (ReLU), each >= 1.
      steps: Adam steps, >= 1.
      batch_per_class: generated examples per class per step, >= 1.
      learning_rate: Adam's step size, > 0.

    Raises:
      ValueError: for an invalid value.

    Example:
      >>> from dpjax.synthetic import GeneratorConfig
      >>> GeneratorConfig(steps=10).hidden
      (200, 500)
    """

    latent_dim: int = 10
    hidden: tuple[int, ...] = (200, 500)
    steps: int = 2000
    batch_per_class: int = 50
    learning_rate: float = 1e-3

    def __post_init__(self):
        _validation.check_positive_int(self.latent_dim, "latent_dim", "10")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for width in self.hidden:
            _validation.check_positive_int(width, "hidden", "(200, 500)")
        _validation.check_positive_int(self.steps, "steps", "2000")
        _validation.check_positive_int(self.batch_per_class, "batch_per_class", "50")
        _validation.check_positive_float(self.learning_rate, "learning_rate", "1e-3")


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
    """A trained conditional generator (an MLP from ``[z, one_hot(y)]`` to ``sigmoid`` pixels).

    Attributes:
      params: the weights (post-processing of the release).
      config: its :class:`GeneratorConfig`.
      input_shape: the shape of one sample.
      class_probs: `(K,)` label frequencies for sampling (from the noisy counts).

    Example:
      >>> from dpjax.synthetic import Generator
      >>> sorted(Generator.__dataclass_fields__)
      ['class_probs', 'config', 'input_shape', 'params']
    """

    params: Any
    config: GeneratorConfig
    input_shape: tuple[int, ...]
    class_probs: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class ClassGaussians:
    """One Gaussian per class in a public basis, fitted to a :class:`ReleasedMoments`.

    Attributes:
      means: `(K, p)` class means of the scaled coefficients.
      factors: `(K, p, p)` square roots of the class covariances (PSD projections).
      basis_matrix: `(pixels, p)` the public basis.
      radius: the public scale R.
      input_shape: the shape of one sample.
      class_probs: `(K,)` label frequencies (from the noisy counts).

    Example:
      >>> from dpjax.synthetic import ClassGaussians
      >>> "factors" in ClassGaussians.__dataclass_fields__
      True
    """

    means: np.ndarray
    factors: np.ndarray
    basis_matrix: np.ndarray
    radius: float
    input_shape: tuple[int, ...]
    class_probs: np.ndarray


def _mlp_init(key: jax.Array, sizes: list[int]) -> list[dict[str, jax.Array]]:
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32) * jnp.float32(
            math.sqrt(2.0 / fan_in)
        )
        params.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
    return params


def _generate(params: list[dict[str, jax.Array]], z: jax.Array, onehot: jax.Array) -> jax.Array:
    h = jnp.concatenate([z, onehot], axis=1)
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"][None, :])
    return jax.nn.sigmoid(h @ params[-1]["w"] + params[-1]["b"][None, :])


@functools.lru_cache(maxsize=16)
def _generator_step(
    config: GeneratorConfig, features: RandomFourierFeatures, k: int
) -> tuple[optax.GradientTransformation, Callable[..., Any]]:
    """Adam and the jitted step on ``sum_k ||target_k - mean phi(G(z, k))||**2`` (cached)."""
    opt = optax.adam(config.learning_rate)
    m = config.batch_per_class
    onehot = jax.nn.one_hot(jnp.repeat(jnp.arange(k), m), k, dtype=jnp.float32)

    def loss(params: Any, z: jax.Array, target: jax.Array, w: jax.Array) -> jax.Array:
        phi = features(_generate(params, z, onehot), w)  # (K m, F)
        means = jnp.mean(phi.reshape(k, m, -1), axis=1)
        return jnp.sum(jnp.square(means - target))

    @jax.jit
    def step(params: Any, state: Any, key: jax.Array, target: jax.Array, w: jax.Array):
        z = jax.random.normal(key, (k * m, config.latent_dim), jnp.float32)
        grads = jax.grad(loss)(params, z, target, w)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return opt, step


@functools.partial(jax.jit, static_argnames=("latent_dim", "k"))
def _draw_generator(params: Any, key: jax.Array, labels: jax.Array, latent_dim: int, k: int):
    z = jax.random.normal(key, (labels.shape[0], latent_dim), jnp.float32)
    return _generate(params, z, jax.nn.one_hot(labels, k, dtype=jnp.float32))


@functools.partial(jax.jit, static_argnames=("rows",))
def _draw_gaussian(key, mean, factor, basis, radius, rows: int):
    z = jax.random.normal(key, (rows, mean.shape[0]), jnp.float32)
    coef = mean[None, :] + z @ factor.T
    return jnp.clip((coef * radius) @ basis.T, 0.0, 1.0)


def train_generator(
    release: ReleasedEmbedding,
    config: GeneratorConfig = GeneratorConfig(),
    *,
    seed: int,
    progress: bool = False,
) -> Generator:
    """Trains DP-MERF's conditional generator on the released embedding alone.

    Host loop over jitted Adam steps. The loss is
    ``sum_k || mu_k - mean_j phi(G(z_j, k)) ||**2`` with ``mu_k`` the noisy mean
    embedding of class k (:meth:`ReleasedEmbedding.mean_embeddings`) and ``phi``
    the release's public feature map. The same `seed` and release give the same
    weights.

    Args:
      release: the :class:`ReleasedEmbedding` (the only input derived from data).
      config: the :class:`GeneratorConfig`.
      seed: seeds the weights and the latent draws (public; the release is
        already private).
      progress: show a tqdm bar.

    Returns:
      The :class:`Generator`.

    Raises:
      TypeError: if `release` is not a :class:`ReleasedEmbedding` (e.g. real data).
      ValueError: for an invalid seed.

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import (GeneratorConfig, RandomFourierFeatures,
      ...     release_embedding, train_generator)
      >>> rff = RandomFourierFeatures(input_dim=4, num_frequencies=8, length_scale=1.0, seed=0)
      >>> rel = release_embedding(np.ones((4, 2, 2), np.float32), np.array([0, 1, 1, 0]),
      ...     num_classes=2, features=rff, noise_multiplier=1.0,
      ...     tracker=dpjax.PrivacyTracker(10.0, 1e-5), key=jax.random.key(0), microbatch_size=4)
      >>> gen = train_generator(rel, GeneratorConfig(hidden=(8,), steps=3), seed=0)
      >>> gen.input_shape
      (2, 2)

    **Privacy:** post-processing of one release: the function receives only the
    :class:`ReleasedEmbedding` (noisy sums and public numbers), so it cannot
    read the data, and it spends nothing.

    References:
      Harder, Adamczewski, Park, "DP-MERF", AISTATS 2021.
    """
    if not isinstance(release, ReleasedEmbedding):
        raise TypeError(
            f"train_generator takes a dpjax.synthetic.ReleasedEmbedding (the noisy release), "
            f"not {type(release).__name__}; make one with release_embedding(...)."
        )
    if not isinstance(config, GeneratorConfig):
        raise ValueError(f"config={config!r} must be a dpjax.synthetic.GeneratorConfig.")
    seed = _validation.check_seed(seed)
    k = release.num_classes
    d = release.features.input_dim
    target = jnp.asarray(release.mean_embeddings())  # (K, F)
    w = release.features.frequencies()
    key = dpjax.key_from_seed(seed)
    init_key, key = jax.random.split(key)
    params = _mlp_init(init_key, [config.latent_dim + k, *config.hidden, d])
    opt, step = _generator_step(config, release.features, k)
    state = opt.init(params)
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415 (only when asked)

        steps = tqdm(steps, desc="generator (post-processing)", unit="step")
    for t in steps:
        params, state = step(params, state, jax.random.fold_in(key, t), target, w)
    counts = release.noisy_counts()
    return Generator(
        params=params,
        config=config,
        input_shape=release.input_shape,
        class_probs=(counts / counts.sum()).astype(np.float64),
    )


def fit_class_gaussians(release: ReleasedMoments) -> ClassGaussians:
    """One Gaussian per class from the released moments alone (host side, deterministic).

    Per class k: ``n_k`` from the noisy count, ``mu_k = s1_k / (a n_k)``,
    ``Sigma_k = S2_k / (b n_k) - mu_k mu_k^T`` projected on the PSD cone (negative
    eigenvalues set to 0), and its square root as the sampling factor.

    Args:
      release: the :class:`ReleasedMoments` (the only input derived from data).

    Returns:
      The :class:`ClassGaussians`.

    Raises:
      TypeError: if `release` is not a :class:`ReleasedMoments` (e.g. real data).

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import DCTBasis, fit_class_gaussians, release_moments
      >>> rel = release_moments(np.ones((4, 4, 4), np.float32), np.array([0, 1, 1, 0]),
      ...     num_classes=2, basis=DCTBasis(4, 2), radius=2.0, noise_multiplier=1.0,
      ...     tracker=dpjax.PrivacyTracker(10.0, 1e-5), key=jax.random.key(0), microbatch_size=4)
      >>> fit_class_gaussians(rel).factors.shape
      (2, 4, 4)

    **Privacy:** post-processing of one release; it receives only the
    :class:`ReleasedMoments`, so it cannot read the data, and it spends nothing.
    """
    if not isinstance(release, ReleasedMoments):
        raise TypeError(
            f"fit_class_gaussians takes a dpjax.synthetic.ReleasedMoments (the noisy release), "
            f"not {type(release).__name__}; make one with release_moments(...)."
        )
    a, b, _ = release.weights
    p = release.basis.dim
    counts = release.noisy_counts()
    sums = release.noisy_sums.astype(np.float64)
    means, factors = [], []
    for k in range(release.num_classes):
        n = counts[k]
        mu = sums[k, :p] / (a * n)
        second = unvech(sums[k, p : p + vech_size(p)], p) / (b * n)
        cov = second - np.outer(mu, mu)
        eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2.0)
        factors.append(eigvec * np.sqrt(np.maximum(eigval, 0.0))[None, :])
        means.append(mu)
    return ClassGaussians(
        means=np.asarray(means, np.float32),
        factors=np.asarray(factors, np.float32),
        basis_matrix=release.basis.matrix(),
        radius=release.radius,
        input_shape=release.input_shape,
        class_probs=(counts / counts.sum()).astype(np.float64),
    )


def _labels(class_probs: np.ndarray, num_samples: int) -> np.ndarray:
    """`num_samples` labels in the proportions `class_probs` (largest remainders), sorted."""
    raw = class_probs * num_samples
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: num_samples - int(counts.sum())]] += 1
    return np.repeat(np.arange(len(class_probs)), counts).astype(np.int32)


def _draws_by_batch(
    draw: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, y: np.ndarray, size: int
) -> list[np.ndarray]:
    """`draw(fold_in(key, i), labels)` over consecutive batches of `size` labels (host side)."""
    return [
        np.asarray(draw(jax.random.fold_in(key, i), jnp.asarray(y[start : start + size])))
        for i, start in enumerate(range(0, len(y), size))
    ]


def sample(
    model: Generator | ClassGaussians,
    num_samples: int,
    *,
    seed: int,
    batch_size: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws labelled synthetic images from a fitted model (post-processing, free).

    Host side around jitted draws. Labels follow the model's `class_probs`
    (largest remainders, so the counts are exact); images are float32 in [0, 1].

    Args:
      model: a :class:`Generator` or :class:`ClassGaussians`.
      num_samples: how many, >= 1.
      seed: seeds the draws (public).
      batch_size: draws per jitted call (memory only).

    Returns:
      ``(x, y)``: float32 `(num_samples, *input_shape)` in [0, 1] and int32 labels.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import DCTBasis, fit_class_gaussians, release_moments, sample
      >>> rel = release_moments(np.ones((4, 4, 4), np.float32), np.array([0, 1, 1, 0]),
      ...     num_classes=2, basis=DCTBasis(4, 2), radius=2.0, noise_multiplier=1.0,
      ...     tracker=dpjax.PrivacyTracker(10.0, 1e-5), key=jax.random.key(0), microbatch_size=4)
      >>> x, y = sample(fit_class_gaussians(rel), 6, seed=0)
      >>> x.shape, x.dtype, y.dtype
      ((6, 4, 4), dtype('float32'), dtype('int32'))

    **Privacy:** post-processing: the model holds only functions of the release.
    """
    n = _validation.check_positive_int(num_samples, "num_samples", "10000")
    seed = _validation.check_seed(seed)
    bs = _validation.check_positive_int(batch_size, "batch_size", "10000")
    if not isinstance(model, Generator | ClassGaussians):
        raise ValueError(
            f"model must be a Generator or ClassGaussians; got {type(model).__name__}."
        )
    y = _labels(model.class_probs, n)
    k = len(model.class_probs)
    key = dpjax.key_from_seed(seed)
    out = []
    if isinstance(model, Generator):
        latent = model.config.latent_dim
        out = _draws_by_batch(
            lambda key_i, labels: _draw_generator(model.params, key_i, labels, latent, k),
            key,
            y,
            bs,
        )
    else:
        basis = jnp.asarray(model.basis_matrix)
        r = jnp.float32(model.radius)
        rows = min(bs, n)  # one compiled shape; the last draw of a class is cut
        for c in range(k):  # labels are sorted by class
            count = int(np.sum(y == c))
            mean, factor = jnp.asarray(model.means[c]), jnp.asarray(model.factors[c])
            for i, start in enumerate(range(0, count, rows)):
                key_ci = jax.random.fold_in(jax.random.fold_in(key, c), i)
                draw = _draw_gaussian(key_ci, mean, factor, basis, r, rows)
                out.append(np.asarray(draw)[: count - start])
    x = np.concatenate(out).astype(np.float32).reshape(n, *model.input_shape)
    return x, y
