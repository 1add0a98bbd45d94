"""Small softmax models (logistic regression or a one-hidden-layer MLP) trained side by side for audits.

Host side driving one jitted step for K models at once (`jax.vmap` over the
models): the target model and the reference models of a membership attack, or
a model with canaries. Each model trains with dpjax's own DP-SGD
(:func:`dpjax.dp_sgd` after :func:`dpjax.per_example_grads`, batches from
:class:`dpjax.PoissonSampler`, the run recorded with a :class:`dpjax.PrivacyTracker`
before its first step) or, explicitly, NOT PRIVATE (:func:`dpjax.non_private_aggregate`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
from dpjax import _validation
from dpjax.audit._one_run import DiracCanaries, with_dirac_canaries

PyTree = Any


def softmax_logits(params: PyTree, x: jax.Array) -> jax.Array:
    """Logits of the audit models: `x @ w + b`, or through one tanh layer if `params` has `w1`.

    Device side. `x` is `(n, features)` (or one example `(features,)`).

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.audit import softmax_logits
      >>> softmax_logits({"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}, jnp.ones((4, 2))).shape
      (4, 3)
    """
    lead = (1,) * (jnp.ndim(x) - 1)  # broadcast the biases explicitly (strict rank promotion)
    if "w1" in params:
        x = jnp.tanh(x @ params["w1"] + params["b1"].reshape(*lead, -1))
        return x @ params["w2"] + params["b2"].reshape(*lead, -1)
    return x @ params["w"] + params["b"].reshape(*lead, -1)


def _init(key: jax.Array, features: int, classes: int, hidden: int) -> PyTree:
    if hidden == 0:
        return {"w": jnp.zeros((features, classes)), "b": jnp.zeros(classes)}
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (features, hidden)) / math.sqrt(features),
        "b1": jnp.zeros(hidden),
        "w2": jax.random.normal(k2, (hidden, classes)) / math.sqrt(hidden),
        "b2": jnp.zeros(classes),
    }


def _example_loss(params: PyTree, example: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = example
    return -jax.nn.log_softmax(softmax_logits(params, x))[y]


class TrainedModels(NamedTuple):
    """K models trained by :func:`train_models`.

    Attributes:
      params: the parameters, every leaf with a leading axis K.
      initial_params: the parameters before training (leading axis K).
      epsilon: the accountant's epsilon for ONE model at `delta` (`inf` if NOT PRIVATE).
      delta: the delta.
      noise_multiplier: sigma (0.0 if NOT PRIVATE).
      sampling_rate: q.
      steps: steps per model.
      label: `"DP"` or `"NOT PRIVATE"`.
    """

    params: PyTree
    initial_params: PyTree
    epsilon: float
    delta: float
    noise_multiplier: float
    sampling_rate: float
    steps: int
    label: str

    def logits(self, x: jax.typing.ArrayLike) -> jax.Array:
        """`(K, n, classes)` logits of every model on `x` `(n, features)`."""
        xs = jnp.asarray(x, jnp.float32)
        return jax.vmap(softmax_logits, in_axes=(0, None))(self.params, xs)

    def losses(self, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike) -> np.ndarray:
        """`(K, n)` per-example cross-entropy losses of every model."""
        logp = jax.nn.log_softmax(self.logits(x), axis=-1)
        ys = jnp.asarray(y, jnp.int32)
        return np.asarray(-jnp.take_along_axis(logp, ys[None, :, None], axis=-1)[..., 0])


def train_models(
    x: np.typing.ArrayLike,
    y: np.typing.ArrayLike,
    members: np.typing.ArrayLike,
    *,
    num_classes: int,
    steps: int,
    expected_batch_size: float,
    learning_rate: float,
    l2_norm: float = 1.0,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    hidden: int = 0,
    canaries: DiracCanaries | None = None,
    seed: int,
    not_private: bool = False,
) -> TrainedModels:
    """Trains K softmax models, model k on the rows where `members[k]` is True.

    Host side driving one jitted, model-vectorized step. Every model has the
    same number of members N (so the same q = n / N); step t samples each
    model's batch with its own :class:`dpjax.PoissonSampler`, and (DP) runs
    `dp_sgd(sgd(lr), l2_norm=C, noise_multiplier=sigma, ...)` with sigma
    calibrated so that `steps` steps spend `target_epsilon` at `delta`
    (:func:`dpjax.calibrate_noise_multiplier`), all `steps` recorded with a
    :class:`dpjax.PrivacyTracker` before the first one runs. With `canaries`, the
    included Dirac canaries are sampled at the same q (their own sampler) and
    appended to every batch's per-example gradients before the clipper
    (:func:`dpjax.audit.with_dirac_canaries`).

    Args:
      x: `(n, features)` inputs (flattened).
      y: `(n,)` integer labels.
      members: `(K, n)` bool, every row with the same count N >= 1.
      num_classes: number of classes.
      steps: steps T per model.
      expected_batch_size: `q * N`.
      learning_rate: of plain SGD (the white-box canary score assumes SGD).
      l2_norm: clip norm C.
      target_epsilon: the budget each model spends (required unless NOT PRIVATE).
      delta: the delta.
      hidden: 0 for logistic regression, else the width of the tanh layer.
      canaries: optional :class:`dpjax.audit.DiracCanaries`.
      seed: master seed of initialization, sampling and noise. Audit runs are
        research runs; a real run draws its keys with :func:`dpjax.secret_key`.
      not_private: train NOT PRIVATE (no clipping, no noise; warns).

    Returns:
      :class:`TrainedModels`.

    Raises:
      ValueError: for inconsistent shapes, unequal member counts, a missing
        `target_epsilon`, or an invalid value.

    Warns:
      dpjax.NotPrivateWarning: when `not_private=True`.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import train_models
      >>> x, y = np.eye(4, dtype=np.float32), np.arange(4) % 2
      >>> models = train_models(x, y, np.ones((2, 4), bool), num_classes=2, steps=3,
      ...                       expected_batch_size=2, learning_rate=0.1,
      ...                       target_epsilon=8.0, delta=1e-3, seed=0)
      >>> models.logits(x).shape, models.label
      ((2, 4, 2), 'DP')

    **Privacy:** each model is (epsilon, delta)-DP with respect to its own
    members under add/remove of one example, by the accountant's Poisson
    subsampled Gaussian analysis (a canary counts as one example).
    """
    xs = jnp.asarray(x, jnp.float32)
    ys = np.asarray(y, np.int32)
    mem = np.asarray(members, bool)
    if xs.ndim != 2 or ys.shape != (xs.shape[0],) or mem.ndim != 2 or mem.shape[1] != len(ys):
        raise ValueError(
            f"x {xs.shape} must be (n, features), y {ys.shape} (n,) and members {mem.shape} (K, n)."
        )
    counts = mem.sum(axis=1)
    if counts.min() < 1 or counts.min() != counts.max():
        raise ValueError(
            f"every model needs the same number of members (>= 1), got {sorted(set(counts))}."
        )
    n_members = int(counts[0])
    classes = _validation.check_positive_int(num_classes, "num_classes", "10")
    steps = _validation.check_positive_int(steps, "steps", "100")
    hidden = _validation.check_nonnegative_int(hidden, "hidden")
    lr = _validation.check_positive_float(learning_rate, "learning_rate", "0.5")
    batch = _validation.check_positive_float(expected_batch_size, "expected_batch_size", "64")
    seed = _validation.check_seed(seed)
    k_models = mem.shape[0]
    q = batch / n_members
    if not_private:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
            aggregate = dpjax.non_private_aggregate(batch)
        warnings.warn(
            "NOT PRIVATE: train_models(not_private=True) trains without clipping or noise.",
            dpjax.NotPrivateWarning,
            stacklevel=2,
        )
        sigma, epsilon, tracker = 0.0, math.inf, None

        def make_tx(key: jax.Array) -> optax.GradientTransformationExtraArgs:
            del key
            return optax.chain(aggregate, optax.sgd(lr))
    else:
        if target_epsilon is None:
            raise ValueError(
                "target_epsilon=None: a DP run needs a budget; pass e.g. target_epsilon=4.0 "
                "(or not_private=True for the NOT PRIVATE baseline)."
            )
        sigma = dpjax.calibrate_noise_multiplier(target_epsilon, q, steps, delta)
        tracker = dpjax.PrivacyTracker(target_epsilon=target_epsilon, delta=delta, sampling_rate=q)

        def make_tx(key: jax.Array) -> optax.GradientTransformationExtraArgs:
            return dpjax.dp_sgd(
                optax.sgd(lr),
                l2_norm=l2_norm,
                noise_multiplier=sigma,
                expected_batch_size=batch,
                key=key,
            )

        epsilon = dpjax.compute_epsilon(sigma, steps, q, delta)

    keys = jax.random.split(dpjax.key_from_seed(dpjax.derive_seed(seed, 0)), k_models)
    noise_keys = jax.random.split(dpjax.key_from_seed(dpjax.derive_seed(seed, 1)), k_models)
    features = xs.shape[1]
    params = jax.vmap(lambda k: _init(k, features, classes, hidden))(keys)
    initial = params
    opt_state = jax.vmap(lambda k, p: make_tx(k).init(p))(noise_keys, params)
    tx = make_tx(jax.random.key(0))  # its update reads each model's key from the state
    grads_fn = dpjax.per_example_grads(_example_loss)
    member_index = [np.flatnonzero(row) for row in mem]
    samplers = [
        dpjax.PoissonSampler(
            n_members,
            expected_batch_size=batch,
            seed=dpjax.derive_seed(seed, 2 + k),
            microbatch_size=n_members,
        )
        for k in range(k_models)
    ]
    canary_sampler = None
    if canaries is not None:
        m = len(canaries.coordinates)
        canary_sampler = dpjax.PoissonSampler(
            m, expected_batch_size=q * m, seed=dpjax.derive_seed(seed, 2**31), microbatch_size=m
        )

    def one_model(p, state, idx, mask, sampled):
        g = grads_fn(p, (xs[idx], jnp.asarray(ys)[idx]))
        if canaries is not None:
            g, mask = with_dirac_canaries(g, mask, canaries, sampled)
        updates, state = tx.update(g, state, p, mask=mask)
        return optax.apply_updates(p, updates), state

    step = jax.jit(jax.vmap(one_model, in_axes=(0, 0, 0, 0, None)))
    no_canary = np.zeros(0 if canaries is None else len(canaries.coordinates), bool)
    if tracker is not None:  # the whole run, recorded before its first release
        tracker.record(dpjax.PoissonGaussianSteps(sigma, q, steps))
    for t in range(steps):
        drawn = [s.sample(t) for s in samplers]
        idx = np.stack([member_index[k][b.indices] for k, b in enumerate(drawn)])
        mask = np.stack([b.mask for b in drawn])
        sampled = no_canary.copy()
        if canary_sampler is not None:
            cb = canary_sampler.sample(t)
            sampled[cb.indices[cb.mask]] = True
        params, opt_state = step(params, opt_state, idx, mask, sampled)
    if tracker is not None:
        epsilon = tracker.epsilon_spent()
    return TrainedModels(
        params=params,
        initial_params=initial,
        epsilon=float(epsilon),
        delta=float(delta),
        noise_multiplier=float(sigma),
        sampling_rate=float(q),
        steps=steps,
        label="NOT PRIVATE" if not_private else "DP",
    )
