"""A conditional VAE trained with DP-SGD; the release is its decoder, and sampling takes only that.

Host side (the loop, the sampler, the tracker) around one jitted DP-SGD step
built from the mechanism's own pieces: Poisson batches from
:class:`dpjax.PoissonSampler`, per-example clipping by
:func:`dpjax.ghost.ghost_clipped_grads` (one backward pass; every parameter
lives in a :func:`dpjax.ghost.ghost_dense` layer) or
:func:`dpjax.accumulate_clipped_grads` (vmap), noise by :func:`dpjax.noisy_mean`,
joined by :func:`dpjax.private_update`; accounted by ONE
:class:`dpjax.PoissonGaussianSteps` record told to the tracker before any data
is read.

Which parameters saw real data: ALL of the VAE's parameters, the encoder
q(z | x, y) and the decoder p(x | z, y), both trained only by DP-SGD on the
training split. The release keeps the decoder's weights alone (the encoder is
discarded inside :func:`release_decoder` and never leaves it). Nothing else
about the data is released: labels are drawn uniformly over the classes (a
public choice), not from the data's class counts.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
import dpjax.ghost
from dpjax import _validation
from dpjax.data import Dataset
from dpjax.synthetic._generators import _draws_by_batch, _labels
from dpjax.synthetic._release import _check_data
from dpjax.synthetic._synthesize import SyntheticData, _run_setup

CLIPPING = ("ghost", "vmap")
"""``"ghost"``: :func:`dpjax.ghost.ghost_clipped_grads` (one backward pass);
``"vmap"``: :func:`dpjax.per_example_grads` + :func:`dpjax.accumulate_clipped_grads`."""

_DECODED = object()  # held only by release_decoder: a ReleasedDecoder is made there alone

Layers = list[dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Hyperparameters of the DP-SGD conditional VAE (public, fixed before the data is read).

    Args:
      latent_dim: size of z, >= 1.
      hidden: widths of the encoder's and the decoder's hidden layers (ReLU), each >= 1.
      steps: DP-SGD steps T, >= 1.
      expected_batch_size: q N, the Poisson batch's expected size, >= 1 (and <= N).
      learning_rate: Adam's step size, > 0.
      l2_norm: the clip norm C of each example's gradient, > 0.
      kl_weight: beta, the weight of the KL term of the ELBO, > 0 (beta-VAE). Above 1
        it keeps the latent code from carrying the class, so that the decoder
        follows the label it is given: at 1, under DP noise, most Fashion-MNIST
        samples did not look like their label.
      clipping: one of :data:`CLIPPING` (``"ghost"``: one backward pass).
      microbatch_size: rows per microbatch on the ``"vmap"`` path (memory only).

    Raises:
      ValueError: for an invalid value (named, with the fix).

    Example:
      >>> from dpjax.synthetic import VAEConfig
      >>> VAEConfig(steps=10).clipping
      'ghost'
    """

    latent_dim: int = 16
    hidden: tuple[int, ...] = (512,)
    steps: int = 1000
    expected_batch_size: int = 2048
    learning_rate: float = 5e-3
    l2_norm: float = 1.0
    kl_weight: float = 8.0
    clipping: str = "ghost"
    microbatch_size: int = 64

    def __post_init__(self):
        _validation.check_positive_int(self.latent_dim, "latent_dim", "16")
        object.__setattr__(self, "hidden", tuple(self.hidden))
        for width in self.hidden:
            _validation.check_positive_int(width, "hidden", "(512,)")
        _validation.check_steps(self.steps)
        _validation.check_positive_int(self.expected_batch_size, "expected_batch_size", "2048")
        _validation.check_positive_float(self.learning_rate, "learning_rate", "5e-3")
        _validation.check_clip_norm(self.l2_norm)
        _validation.check_positive_float(self.kl_weight, "kl_weight", "1.0")
        if self.clipping not in CLIPPING:
            raise ValueError(f"clipping={self.clipping!r} is not one of {CLIPPING}; pass 'ghost'.")
        _validation.check_positive_int(self.microbatch_size, "microbatch_size", "64")


def default_vae_config(side: int, dataset_size: int | None = None) -> VAEConfig:
    """The public default for `side x side` grey images (a function of public sizes only).

    Small images (the 8x8 digits, about 1,300 training examples) get a small
    model, small batches and few steps; larger ones (28x28) the defaults. Both
    were chosen at epsilon = 10 on the VALIDATION split of digits and
    Fashion-MNIST (TSTR), never on the test split; that choice is not accounted.
    With `dataset_size` N (public in DP-SGD's account), the expected batch size
    is capped at N / 4.

    Example:
      >>> from dpjax.synthetic import default_vae_config
      >>> default_vae_config(8).hidden, default_vae_config(28).hidden
      ((128,), (512,))
      >>> default_vae_config(8, dataset_size=40).expected_batch_size
      10
    """
    side = _validation.check_positive_int(side, "side", "28")
    if side <= 16:
        config = VAEConfig(
            latent_dim=8,
            hidden=(128,),
            steps=300,
            expected_batch_size=128,
            learning_rate=1e-2,
            kl_weight=1.0,
        )
    else:
        config = VAEConfig()
    if dataset_size is not None:
        n = _validation.check_positive_int(dataset_size, "dataset_size", "60000")
        batch = max(1, min(config.expected_batch_size, n // 4))
        config = dataclasses.replace(config, expected_batch_size=batch)
    return config


@dataclasses.dataclass(frozen=True, eq=False)
class ReleasedDecoder:
    """The release of a DP-SGD conditional VAE: the DP-trained decoder's weights, public numbers.

    Made only by :func:`release_decoder`. The decoder maps z through ReLU
    layers to pixel logits, every layer reading ``[h, one_hot(y)]``; samples are
    ``sigmoid`` of the logits.

    Attributes:
      params: the decoder's layers, ``({"w": (fan_in + K, fan_out), "b": (fan_out,)}, ...)``,
        read-only float32 arrays: the only values in the record derived from data
        (through DP-SGD).
      config: the public :class:`VAEConfig`.
      input_shape: the shape of one sample, e.g. `(28, 28, 1)`.
      num_classes: K.
      noise_multiplier: sigma of every DP-SGD step.
      sampling_rate: q, the Poisson inclusion probability.
      steps: T, the number of DP-SGD steps that ran.

    Example:
      >>> from dpjax.synthetic import ReleasedDecoder
      >>> "encoder" in ReleasedDecoder.__dataclass_fields__
      False

    **Privacy:** T steps of DP-SGD on the encoder and decoder together (each
    example's gradient with respect to ALL parameters clipped to C, Gaussian
    noise of std sigma C on the sum, Poisson sampling at rate q), recorded as
    ``PoissonGaussianSteps(sigma, q, T)`` before the first step. The encoder saw
    the data under the same DP-SGD and is discarded; the class frequencies are
    uniform (public), not the data's.
    """

    params: tuple[dict[str, np.ndarray], ...]
    config: VAEConfig
    input_shape: tuple[int, ...]
    num_classes: int
    noise_multiplier: float
    sampling_rate: float
    steps: int
    _token: object = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self._token is not _DECODED:
            raise TypeError(
                "ReleasedDecoder is made only by dpjax.synthetic.release_decoder, which trains "
                "with DP-SGD and accounts every step; it cannot be built from arrays."
            )

    @property
    def class_probs(self) -> np.ndarray:
        """`(K,)` uniform label frequencies (public: not learned from the data)."""
        return np.full(self.num_classes, 1.0 / self.num_classes)


def _init(key: jax.Array, sizes: list[int], k: int) -> Layers:
    """He-initialized layers `sizes[i] + k -> sizes[i + 1]` (every layer also reads the label)."""
    layers = []
    for key_i, fan_in, fan_out in zip(
        jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:], strict=True
    ):
        w = jax.random.normal(key_i, (fan_in + k, fan_out), jnp.float32) * jnp.float32(
            math.sqrt(2.0 / (fan_in + k))
        )
        layers.append({"w": w, "b": jnp.zeros((fan_out,), jnp.float32)})
    return layers


def _mlp(layers: Layers, h: jax.Array, onehot: jax.Array) -> jax.Array:
    """ReLU MLP whose every layer reads ``[h, one_hot(y)]``; every layer a ghost dense layer.

    The label enters every layer (not only the first), so that the decoder's
    output layer can follow the class directly. Outside ghost clipping the
    layers are plain matmuls.
    """
    for layer in layers[:-1]:
        h = jnp.concatenate([h, onehot], axis=1)
        h = jax.nn.relu(dpjax.ghost.ghost_dense(h, layer["w"], layer["b"]))
    h = jnp.concatenate([h, onehot], axis=1)
    return dpjax.ghost.ghost_dense(h, layers[-1]["w"], layers[-1]["b"])


def _losses_fn(k: int, latent: int, kl_weight: float) -> Callable[[Any, Any], jax.Array]:
    """Per-example negative ELBO of a batch ``(x, y, eps)``, `(B,)`; row i depends on row i only.

    ``eps`` is the reparameterization noise, drawn outside (public randomness).
    """

    def losses(params: dict[str, Layers], batch: Any) -> jax.Array:
        x, y, eps = batch
        onehot = jax.nn.one_hot(y, k, dtype=jnp.float32)
        stats = _mlp(params["encoder"], x, onehot)
        mu, logvar = stats[:, :latent], jnp.clip(stats[:, latent:], -8.0, 8.0)
        z = mu + jnp.exp(0.5 * logvar) * eps
        logits = _mlp(params["decoder"], z, onehot)
        rec = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=1)
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=1)
        return rec + jnp.float32(kl_weight) * kl

    return losses


def _clipper(config: VAEConfig, k: int) -> Callable[..., dpjax.ClippedSum]:
    losses = _losses_fn(k, config.latent_dim, config.kl_weight)
    if config.clipping == "ghost":
        return dpjax.ghost.ghost_clipped_grads(losses, l2_norm=config.l2_norm)

    def one_loss(params: dict[str, Layers], example: Any) -> jax.Array:
        return losses(params, jax.tree.map(lambda a: a[None], example))[0]

    return dpjax.accumulate_clipped_grads(
        dpjax.per_example_grads(one_loss),
        l2_norm=config.l2_norm,
        microbatch_size=config.microbatch_size,
    )


def _transform(config: VAEConfig, sigma: float, key: jax.Array) -> optax.GradientTransformation:
    """Noise (sigma times the clipped sum's sensitivity, then the expected-size mean), then Adam."""
    return optax.chain(
        dpjax.noisy_mean(sigma, config.expected_batch_size, key), optax.adam(config.learning_rate)
    )


@functools.lru_cache(maxsize=16)
def _dp_step(config: VAEConfig, k: int, sigma: float) -> Callable[..., Any]:
    """The jitted DP-SGD step (cached: one compilation per configuration and batch shape).

    ``step(params, state, x_all, y_all, idx, mask, t, eps_key, noise_key)``: the
    batch ``x_all[idx]`` with its mask, the step's reparameterization noise
    ``fold_in(eps_key, t)``, then :func:`dpjax.private_update` of the clipper and
    :func:`_transform` (whose noise key is `noise_key`, the one the state was made with).
    """
    clipper = _clipper(config, k)
    latent = config.latent_dim

    @jax.jit
    def step(params, state, x_all, y_all, idx, mask, t, eps_key, noise_key):
        update = dpjax.private_update(clipper, _transform(config, sigma, noise_key))
        eps = jax.random.normal(jax.random.fold_in(eps_key, t), (idx.shape[0], latent))
        return update(params, state, (x_all[idx], y_all[idx], eps), mask)

    return step


def calibrate_decoder_noise(
    target_epsilon: float, delta: float, *, dataset_size: int, config: VAEConfig
) -> float:
    """The noise multiplier of `config.steps` Poisson DP-SGD steps that spends at most epsilon.

    Host side: :func:`dpjax.calibrate_noise_multiplier` at q = expected batch
    size / N and T = `config.steps`, checked against a :class:`dpjax.PrivacyTracker`
    holding the :class:`dpjax.PoissonGaussianSteps` (raised by 0.1 % until it fits).

    Args:
      target_epsilon: epsilon, > 0.
      delta: delta, in (0, 1).
      dataset_size: N, the number of training examples (public, as in DP-SGD's account).
      config: the :class:`VAEConfig`.

    Returns:
      sigma.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> from dpjax.synthetic import VAEConfig, calibrate_decoder_noise
      >>> sigma = calibrate_decoder_noise(10.0, 1e-5, dataset_size=55_000, config=VAEConfig())
      >>> 0.8 < sigma < 1.0
      True

    **Privacy:** the returned sigma is what :func:`release_decoder` tells the tracker.
    """
    n = _validation.check_positive_int(dataset_size, "dataset_size", "60000")
    q = _sampling_rate(config, n)
    sigma = dpjax.calibrate_noise_multiplier(target_epsilon, q, config.steps, delta)
    return dpjax.fitting_noise_multiplier(
        lambda s: dpjax.PoissonGaussianSteps(s, q, config.steps), sigma, target_epsilon, delta
    )


def _sampling_rate(config: VAEConfig, n: int) -> float:
    if config.expected_batch_size > n:
        raise ValueError(
            f"config.expected_batch_size={config.expected_batch_size} exceeds the {n} training "
            f"examples; pass VAEConfig(expected_batch_size=...) <= {n}."
        )
    return config.expected_batch_size / n


def _frozen(a: Any) -> np.ndarray:
    out = np.array(a, dtype=np.float32, copy=True)
    out.flags.writeable = False
    return out


def release_decoder(
    x: Any,
    y: Any,
    *,
    num_classes: int,
    config: VAEConfig,
    noise_multiplier: float,
    tracker: dpjax.PrivacyTracker,
    key: jax.Array,
    sampler_seed: int,
    seed: int,
    progress: bool = False,
) -> ReleasedDecoder:
    """Trains a conditional VAE with DP-SGD on `(x, y)` and releases its decoder alone.

    Host loop around one jitted step. Records
    ``PoissonGaussianSteps(noise_multiplier, q, config.steps)`` in `tracker`
    BEFORE reading the data (refused beyond the budget: nothing is read then),
    with q = `config.expected_batch_size` / N. Then, T times: a Poisson batch
    from :class:`dpjax.PoissonSampler`, the per-example negative ELBO (Bernoulli
    likelihood of the pixels in [0, 1], KL to N(0, I) weighted by beta), each
    example's gradient with respect to the encoder AND decoder clipped to C
    (:func:`dpjax.ghost.ghost_clipped_grads` or the vmap clipper, as
    `config.clipping` says), :func:`dpjax.noisy_mean` and Adam, joined by
    :func:`dpjax.private_update`. The encoder is then dropped.

    Args:
      x: `(N, ...)` inputs in [0, 1] (the private data), flattened.
      y: `(N,)` integer labels in [0, num_classes).
      num_classes: K, >= 1.
      config: the public :class:`VAEConfig`.
      noise_multiplier: sigma, > 0 (:func:`calibrate_decoder_noise`).
      tracker: the :class:`dpjax.PrivacyTracker` of the data set.
      key: the noise key (:func:`dpjax.secret_key`).
      sampler_seed: the Poisson sampler's seed (:func:`dpjax.secret_seed`; secret).
      seed: seeds the initial weights and the reparameterization noise (public).
      progress: show a tqdm bar.

    Returns:
      The :class:`ReleasedDecoder`.

    Raises:
      ValueError: for invalid arguments.
      dpjax.BudgetExceededError: if the T steps would exceed the tracker's budget.

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import VAEConfig, release_decoder
      >>> tracker = dpjax.PrivacyTracker(10.0, 1e-5)
      >>> x, y = np.full((8, 2, 2), 0.5, np.float32), np.arange(8) % 2
      >>> rel = release_decoder(x, y, num_classes=2, noise_multiplier=1.0, tracker=tracker,
      ...     config=VAEConfig(latent_dim=2, hidden=(4,), steps=2, expected_batch_size=4),
      ...     key=jax.random.key(0), sampler_seed=1, seed=2)
      >>> tracker.releases
      (PoissonGaussianSteps(noise_multiplier=1.0, sampling_rate=0.5, steps=2),)

    **Privacy:** (epsilon, delta) of T Poisson-sampled Gaussian steps at rate q
    (add/remove one example): each example's gradient, with respect to all of
    the VAE's parameters, is clipped to C (one ELBO term per example; the
    reparameterization noise and the weights' initialization are data-free),
    the clipped sum gets N(0, (sigma C)**2) per coordinate, fresh each step, and
    the batch is Poisson-sampled with the secret `sampler_seed`. Parameters that
    saw real data: the encoder's and the decoder's, both only through these
    steps; the decoder alone is returned. Padding rows are masked out. An empty
    batch is still noised. If the run stops early, the tracker has counted all
    T steps (conservative).

    References:
      Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Sohn, Lee,
      Yan, "Learning Structured Output Representation using Deep Conditional
      Generative Models", NeurIPS 2015 (the conditional VAE); Abadi et al.,
      "Deep Learning with Differential Privacy", CCS 2016.
    """
    k = _validation.check_positive_int(num_classes, "num_classes", "10")
    if not isinstance(config, VAEConfig):
        raise ValueError(f"config={config!r} must be a dpjax.synthetic.VAEConfig.")
    sigma = _validation.check_noise_multiplier(noise_multiplier)
    key = _validation.check_key(key)
    sampler_seed = _validation.check_seed(sampler_seed, "sampler_seed")
    seed = _validation.check_seed(seed)
    if not isinstance(tracker, dpjax.PrivacyTracker):
        raise ValueError(f"tracker={tracker!r} must be a dpjax.PrivacyTracker.")
    n = _validation.check_positive_int(len(x), "len(x)", "60000")  # N, public in DP-SGD's account
    _sampling_rate(config, n)  # the config fits the data set (checked before anything is recorded)
    micro = config.microbatch_size if config.clipping == "vmap" else None
    sampler = dpjax.PoissonSampler(
        n, expected_batch_size=config.expected_batch_size, seed=sampler_seed, microbatch_size=micro
    )
    q = sampler.sampling_rate  # the account's rate IS the sampler's
    tracker.record(dpjax.PoissonGaussianSteps(sigma, q, config.steps))  # BEFORE the data is read
    xs, ys, input_shape = _check_data(x, y, k, math.prod(np.shape(x)[1:]))
    d = xs.shape[1]
    init_key, eps_key = jax.random.split(dpjax.key_from_seed(seed))
    enc_key, dec_key = jax.random.split(init_key)
    params = {
        "encoder": _init(enc_key, [d, *config.hidden, 2 * config.latent_dim], k),
        "decoder": _init(dec_key, [config.latent_dim, *config.hidden, d], k),
    }
    step = _dp_step(config, k, sigma)
    x_dev, y_dev = jnp.asarray(xs), jnp.asarray(ys)
    state = _transform(config, sigma, key).init(params)
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415 (only when asked)

        steps = tqdm(steps, desc="DP-SGD VAE", unit="step")
    for t in steps:
        batch = sampler.sample(t)
        idx, mask = jnp.asarray(batch.indices), jnp.asarray(batch.mask)
        params, state = step(params, state, x_dev, y_dev, idx, mask, t, eps_key, key)
    decoder = tuple(
        {name: _frozen(value) for name, value in layer.items()} for layer in params["decoder"]
    )
    return ReleasedDecoder(
        params=decoder,
        config=config,
        input_shape=input_shape,
        num_classes=k,
        noise_multiplier=sigma,
        sampling_rate=q,
        steps=config.steps,
        _token=_DECODED,
    )


@functools.partial(jax.jit, static_argnames=("latent_dim", "k"))
def _draw(params: Any, key: jax.Array, labels: jax.Array, latent_dim: int, k: int) -> jax.Array:
    z = jax.random.normal(key, (labels.shape[0], latent_dim), jnp.float32)
    onehot = jax.nn.one_hot(labels, k, dtype=jnp.float32)
    return jax.nn.sigmoid(_mlp(params, z, onehot))


def sample_decoder(
    release: ReleasedDecoder,
    num_samples: int,
    *,
    seed: int,
    batch_size: int = 10_000,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws labelled images from a released decoder alone (post-processing, free).

    Host side around jitted draws: labels uniform over the classes (largest
    remainders, sorted), ``z ~ N(0, I)``, images ``sigmoid(decoder(z, y))``
    (the Bernoulli means) in [0, 1]. The same release and seed give the same samples.

    Args:
      release: the :class:`ReleasedDecoder` (the only input derived from data).
      num_samples: how many, >= 1.
      seed: seeds the draws (public).
      batch_size: draws per jitted call (memory only).

    Returns:
      ``(x, y)``: float32 `(num_samples, *input_shape)` in [0, 1] and int32 labels.

    Raises:
      TypeError: if `release` is not a :class:`ReleasedDecoder` (e.g. real data).
      ValueError: for an invalid argument.

    Example:
      >>> import jax, numpy as np, dpjax
      >>> from dpjax.synthetic import VAEConfig, release_decoder, sample_decoder
      >>> rel = release_decoder(np.full((8, 2, 2), 0.5, np.float32), np.arange(8) % 2,
      ...     num_classes=2, noise_multiplier=1.0, tracker=dpjax.PrivacyTracker(10.0, 1e-5),
      ...     config=VAEConfig(latent_dim=2, hidden=(4,), steps=2, expected_batch_size=4),
      ...     key=jax.random.key(0), sampler_seed=1, seed=2)
      >>> x, y = sample_decoder(rel, 5, seed=0)
      >>> x.shape, x.dtype, y.tolist()
      ((5, 2, 2), dtype('float32'), [0, 0, 0, 1, 1])

    **Privacy:** post-processing: the function receives only the release (the
    DP-trained decoder and public numbers), so it cannot read the data, and it
    spends nothing.
    """
    if not isinstance(release, ReleasedDecoder):
        raise TypeError(
            f"sample_decoder takes a dpjax.synthetic.ReleasedDecoder (the DP-SGD release), "
            f"not {type(release).__name__}; make one with release_decoder(...)."
        )
    n = _validation.check_positive_int(num_samples, "num_samples", "10000")
    seed = _validation.check_seed(seed)
    bs = _validation.check_positive_int(batch_size, "batch_size", "10000")
    y = _labels(release.class_probs, n)
    key = dpjax.key_from_seed(seed)
    params = [{name: jnp.asarray(v) for name, v in layer.items()} for layer in release.params]
    latent, k = release.config.latent_dim, release.num_classes
    out = _draws_by_batch(lambda key_i, labels: _draw(params, key_i, labels, latent, k), key, y, bs)
    x = np.concatenate(out).astype(np.float32).reshape(n, *release.input_shape)
    return x, y


def synthesize_vae(
    dataset: Dataset,
    *,
    target_epsilon: float,
    delta: float = 1e-5,
    num_samples: int | None = None,
    seed: int | None = None,
    config: VAEConfig | None = None,
    progress: bool = False,
) -> SyntheticData:
    """Spends `target_epsilon` on DP-SGD training of a conditional VAE, then samples its decoder.

    Host side. Calibrates sigma for `config.steps` Poisson DP-SGD steps
    (:func:`calibrate_decoder_noise`), trains and releases the decoder with
    :func:`release_decoder` (the one function that reads `dataset.train`, under
    a fresh :class:`dpjax.PrivacyTracker`), then draws samples with
    :func:`sample_decoder`, which receives only the :class:`ReleasedDecoder`.

    Args:
      dataset: a :class:`dpjax.data.Dataset` of square grey images; only
        `dataset.train` is read (the private data).
      target_epsilon: the budget, > 0.
      delta: the delta, in (0, 1/N).
      num_samples: how many samples (default: as many as `dataset.train`).
      seed: None (default) draws the noise key and the sampler's seed from the
        OS (a real run); an integer makes the run reproducible (research mode:
        not for sensitive data).
      config: the :class:`VAEConfig` (default: :func:`default_vae_config` of the image
        side and N).
      progress: show tqdm bars on the long steps.

    Returns:
      The :class:`dpjax.synthetic.SyntheticData`; its `model` is the :class:`ReleasedDecoder`.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> from dpjax.data import load_dataset
      >>> from dpjax.synthetic import default_vae_config, synthesize_vae
      >>> import dataclasses
      >>> config = dataclasses.replace(default_vae_config(8), steps=20)
      >>> out = synthesize_vae(load_dataset("digits"), target_epsilon=10.0, num_samples=100,
      ...                      seed=0, config=config)
      >>> out.x.shape, out.statement["releases_of_real_data"]
      ((100, 8, 8, 1), 1)

    **Privacy:** (epsilon, delta)-DP for the training split under add/remove of
    one example, by T Poisson-sampled Gaussian steps (the tracker's account);
    the decoder, the samples and anything computed from them are
    post-processing. A fixed `seed` makes the noise and the batches predictable
    to whoever knows it: research only. The statement never holds the seed's
    value (it regenerates the noise), only whether it was explicit or secret.
    """
    run = _run_setup(dataset, target_epsilon, delta, num_samples, seed, streams=3)
    n, eps, delta, m, research = run.n, run.eps, run.delta, run.m, run.research
    config = default_vae_config(run.side, n) if config is None else config
    if not isinstance(config, VAEConfig):
        raise ValueError(f"config={config!r} must be a dpjax.synthetic.VAEConfig.")
    noise_key, (init_seed, sample_seed, sampler_seed), k = run.noise_key, run.seeds, run.k
    sigma = calibrate_decoder_noise(eps, delta, dataset_size=n, config=config)
    tracker = dpjax.PrivacyTracker(eps, delta, dataset_size=n)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    release = release_decoder(
        dataset.train.x, dataset.train.y, num_classes=k, config=config, noise_multiplier=sigma,
        tracker=tracker, key=noise_key, sampler_seed=sampler_seed, seed=init_seed,
        progress=progress,
    )  # fmt: skip
    seconds["release"] = time.perf_counter() - start
    seconds["fit"] = 0.0  # the decoder IS the release: nothing is fitted afterwards
    start = time.perf_counter()
    xs, ys = sample_decoder(release, m, seed=sample_seed)
    seconds["sample"] = time.perf_counter() - start
    statement = {
        "epsilon": tracker.epsilon_spent(),
        "target_epsilon": eps,
        "delta": delta,
        "method": "vae",
        "mechanism": (
            f"DP-SGD ({config.steps} Poisson-sampled steps at rate q, per-example gradients "
            f"clipped to C = {config.l2_norm:g} by {config.clipping} clipping, Gaussian noise "
            "sigma C on each step's sum) training a conditional VAE; the decoder alone is "
            "released and sampled (post-processing); labels uniform over the classes"
        ),
        "parameters_that_saw_real_data": (
            "the encoder q(z|x,y) and the decoder p(x|z,y), both only through DP-SGD; the "
            "encoder is discarded, the decoder is the release"
        ),
        "noise_multiplier": sigma,
        "sampling_rate": release.sampling_rate,
        "steps": release.steps,
        "l2_sensitivity": config.l2_norm,
        "releases_of_real_data": len(tracker.releases),  # one record: T DP-SGD steps
        "accounted_as": (
            f"one PoissonGaussianSteps record of {release.steps} steps (sigma, q), told to the "
            "tracker before the data was read"
        ),
        "neighbouring_relation": "add or remove one example of the training split",
        "covers": (
            f"every example of the {dataset.name!r} training split ({n} examples): the decoder, "
            "the samples and anything computed from them (post-processing)"
        ),
        "does_not_cover": (
            "the validation and test splits (not read); diagnostics computed without noise; "
            "group privacy (one person with several examples: epsilon grows with the group); "
            "float rounding of the noise (see dpjax.add_gaussian_noise)"
        ),
        "public_parameters": dataclasses.asdict(config),
        "dataset": {"name": dataset.name, "train_size": n, "num_classes": k},
        "num_samples": m,
        "research_mode": research,
        # Never the seed's value: derive_seed(seed, 1) is the noise key, derive_seed(seed, 4) the
        # sampler's; whoever knew them could remove the noise (as in synthesize's statement).
        "seed": (
            "explicit (reproducible research; not recorded: whoever knows it can regenerate "
            "the noise and the batches)"
            if research
            else "secret (drawn from the OS; not recorded)"
        ),
        "accountant": tracker.state_dict(),
    }
    # SyntheticData.model is annotated for the release-statistics methods; here it is the decoder.
    model: Any = release
    return SyntheticData(
        x=xs, y=ys, model=model, statement=statement, tracker=tracker, seconds=seconds
    )
