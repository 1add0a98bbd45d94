"""Levers that keep accuracy under privacy: sigma schedules, per-layer clipping, EMA, augmult.

Each lever is built here from public :mod:`dpjax` pieces and validated once, in
:class:`dpjax.training.TrainConfig`:

- a noise-multiplier schedule (host side: its shape; the noise stage and the
  accountant both read the resulting :class:`dpjax.NoiseSchedule`);
- per-layer clip norms (:class:`dpjax.GroupClipNorms`, one group per layer);
- an exponential moving average of the parameters (device side, jittable);
- augmentation multiplicity: each example's loss is the mean over K random
  augmentations of it (device side, jittable), inside the per-example loss.

References:
  De, Berrada, Hayes, Smith, Balle, "Unlocking High-Accuracy Differentially
  Private Image Classification through Scale", arXiv:2204.13650, 2022
  (augmentation multiplicity, parameter averaging).
  McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
  Language Models", ICLR 2018 (per-layer clipping).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import dpjax

PyTree = Any

NOISE_SCHEDULES = ("constant", "linear:R", "exponential:R")
"""The accepted `noise_schedule` strings; R = sigma_end / sigma_start > 0."""
CLIP_GROUPS = ("none", "equal", "by-size")
"""The accepted `clip_groups` values."""
AUGMENT_KEY_IMPL = "threefry2x32"
"""The PRNG implementation of the augmentation keys (that of :func:`dpjax.key_from_seed`)."""
AUGMENT_SHIFT = 2
"""Augmentation multiplicity shifts each image by up to this many pixels (zero padding)."""
FLIP_DATASETS = ("fashion-mnist",)
"""Data sets whose images are flip-invariant (digits are not: a flipped 2 is no 2)."""


# ------------------------------------------------------------------ noise schedule


def parse_noise_schedule(spec: Any) -> tuple[str, float]:
    """`(kind, R)` of a `noise_schedule` string: `("constant", 1.0)`, `("linear", R)`, ...

    Args:
      spec: "constant", "linear:R" or "exponential:R" with R = sigma_end /
        sigma_start a finite number > 0.

    Returns:
      The kind and the ratio R (1.0 for "constant").

    Raises:
      ValueError: naming `noise_schedule`, its value and the accepted forms.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"noise_schedule={spec!r} must be a string: one of {', '.join(NOISE_SCHEDULES)} "
            "(R = sigma_end / sigma_start > 0), e.g. noise_schedule='linear:0.5'."
        )
    if spec == "constant":
        return "constant", 1.0
    kind, sep, ratio = spec.partition(":")
    if kind not in ("linear", "exponential") or not sep:
        raise ValueError(
            f"noise_schedule={spec!r} is unknown; pass one of {', '.join(NOISE_SCHEDULES)} "
            "(R = sigma_end / sigma_start > 0), e.g. noise_schedule='linear:0.5'."
        )
    try:
        r = float(ratio)
    except ValueError:
        r = math.nan
    if not (math.isfinite(r) and r > 0):
        raise ValueError(
            f"noise_schedule={spec!r} has R={ratio!r}: R = sigma_end / sigma_start must be a "
            f"finite number > 0; pass e.g. noise_schedule='{kind}:0.5'."
        )
    return kind, r


def noise_schedule_shape(spec: str, steps: int) -> Callable[[Any], Any] | None:
    """The relative sigma of every step (1 at step 0, R at step T - 1), or None for "constant".

    "linear:R" is `optax.linear_schedule(1.0, R, T - 1)`; "exponential:R" is
    the geometric interpolation `R ** (t / (T - 1))`
    (`optax.exponential_decay(1.0, T - 1, R)`). Host side.

    Args:
      spec: a valid `noise_schedule` string.
      steps: the run's number of steps T.

    Returns:
      A function step -> relative sigma (jnp code), or None for the constant schedule.

    Raises:
      ValueError: if `spec` is not a valid `noise_schedule` string.

    **Privacy:** the shape is public (chosen without the data); the run's
    :class:`dpjax.NoiseSchedule` built from it drives both the noise of step t
    and its record `PoissonGaussianSteps(sigma_t, q)`, so it is accounted
    exactly, step by step.
    """
    kind, r = parse_noise_schedule(spec)
    span = max(int(steps) - 1, 1)
    if kind == "linear":
        return optax.linear_schedule(1.0, r, span)
    if kind == "exponential":
        return optax.exponential_decay(1.0, span, r)
    return None


def schedule_prefix(schedule: dpjax.NoiseSchedule, steps: int) -> dpjax.NoiseSchedule:
    """The first `steps` steps of `schedule`, as a schedule of their own.

    Args:
      schedule: the whole schedule.
      steps: how many leading steps to keep, in [1, schedule.steps].

    Returns:
      A :class:`dpjax.NoiseSchedule` whose `at(t)` equals `schedule.at(t)` for t < steps.
    """
    phases, left = [], steps
    for sigma, count in schedule.phases:
        if left <= 0:
            break
        phases.append((sigma, min(count, left)))
        left -= count
    return dpjax.NoiseSchedule(tuple(phases))


def schedule_max_steps(
    schedule: dpjax.NoiseSchedule, eps: Callable[[dpjax.NoiseSchedule], float], target: float
) -> int:
    """The most leading steps of `schedule` whose epsilon `eps(prefix)` is at most `target`.

    Host side: one evaluation if the whole schedule fits, else a bisection
    (epsilon only grows with the number of steps).

    Args:
      schedule: the planned schedule.
      eps: the epsilon of a schedule (its accountant, q and delta fixed).
      target: the budget.

    Returns:
      An integer in [0, schedule.steps]; 0 if even one step exceeds the budget.
    """
    if eps(schedule) <= target:
        return schedule.steps
    lo, hi = 0, schedule.steps  # eps(lo steps) <= target < eps(hi steps)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if eps(schedule_prefix(schedule, mid)) <= target:
            lo = mid
        else:
            hi = mid
    return lo


# ------------------------------------------------------------------ per-layer clipping


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def layer_labels(params: PyTree) -> PyTree:
    """The layer of every parameter leaf: its path without the last key, e.g. "layers/0".

    A leaf at the root (no layer) is labelled "/". Host side; reads only the
    tree's structure.

    Args:
      params: the parameters (any pytree).

    Returns:
      A pytree of strings with the structure of `params` (the `labels` of
      :class:`dpjax.GroupClipNorms`).

    Example:
      >>> import jax.numpy as jnp
      >>> layer_labels({"layers": {0: {"kernel": jnp.ones(2), "bias": jnp.ones(1)}}})
      {'layers': {0: {'bias': 'layers/0', 'kernel': 'layers/0'}}}
    """

    def label(path: tuple, _: Any) -> str:
        return "/".join(_key_name(k) for k in path[:-1]) or "/"

    return jax.tree_util.tree_map_with_path(label, params)


def group_clip_norms(mode: str, clip_norm: float, params: PyTree) -> float | dpjax.GroupClipNorms:
    """The clip norm a clipper gets: `clip_norm` for "none", else per-layer norms.

    Args:
      mode: "none", "equal" (each of the G layers gets C / sqrt(G)) or
        "by-size" (C_g**2 proportional to the layer's parameter count).
      clip_norm: the total clip norm C.
      params: the parameters (only their structure and shapes are read: public).

    Returns:
      `clip_norm`, or a :class:`dpjax.GroupClipNorms` whose sensitivity
      `sqrt(sum_g C_g**2)` equals C.

    **Privacy:** an example's clipped gradient has norm at most C_g in layer g,
    so its whole contribution is at most `sqrt(sum_g C_g**2) = C`: the
    sensitivity the clipped sum carries to the noise, as without groups. The
    groups come from the model's structure, never from the data.
    """
    if mode == "none":
        return clip_norm
    labels = layer_labels(params)
    if mode == "equal":
        return dpjax.GroupClipNorms.equal(clip_norm, labels, jax.tree.leaves(labels))
    return dpjax.GroupClipNorms.by_size(clip_norm, labels, params)


# ------------------------------------------------------------------ parameter averaging


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The warmed-up decay of step t (from 0): `min(decay, (1 + t) / (10 + t))` (De et al.).

    Args:
      decay: the EMA decay in [0, 1).
      step: the step index t (an integer array or number).

    Returns:
      A float32 scalar.
    """
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + t) / (10.0 + t))


def ema_update(ema: PyTree, params: PyTree, decay: float, step: jax.Array) -> PyTree:
    """`d * ema + (1 - d) * params` with `d = ema_decay_at(decay, step)` (jittable).

    Args:
      ema: the average so far (the initial parameters before step 0).
      params: the parameters after step `step`.
      decay: the EMA decay in [0, 1).
      step: the index t of the step that produced `params` (an array, so that
        jitting does not recompile per step).

    Returns:
      The new average, in the parameters' dtypes.

    **Privacy:** post-processing of released parameters: it costs no privacy.
    """
    d = ema_decay_at(decay, step)
    return jax.tree.map(
        lambda e, p: (d * e + (1.0 - d) * p).astype(jnp.result_type(e)), ema, params
    )


# ------------------------------------------------------------------ augmentation multiplicity


def augment(x: jax.Array, key: jax.Array, *, flip: bool) -> jax.Array:
    """One random augmentation of ONE image `(H, W, C)`: a shift and, if `flip`, a mirror.

    The image is padded with zeros by :data:`AUGMENT_SHIFT` pixels on each side
    and cropped back to `(H, W)` at a random offset (a shift by -2..2 pixels in
    each direction); with `flip`, it is mirrored left-right with probability
    1/2. Device side, jittable.

    Args:
      x: one image `(H, W, C)`.
      key: a PRNG key for this augmentation.
      flip: whether random horizontal flips are allowed.

    Returns:
      The augmented image, same shape and dtype.
    """
    s = AUGMENT_SHIFT
    shift_key, flip_key = jax.random.split(key)
    dy, dx = jax.random.randint(shift_key, (2,), 0, 2 * s + 1)
    padded = jnp.pad(x, ((s, s), (s, s), (0, 0)))
    out = jax.lax.dynamic_slice(padded, (dy, dx, jnp.zeros((), dy.dtype)), x.shape)
    if flip:
        out = jnp.where(jax.random.bernoulli(flip_key), out[:, ::-1, :], out)
    return out


def augmult_loss(
    apply: Callable[[PyTree, jax.Array], jax.Array],
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    multiplicity: int,
    *,
    flip: bool,
) -> Callable[[PyTree, PyTree], jax.Array]:
    """ONE example's loss averaged over `multiplicity` random augmentations of it.

    Args:
      apply: the model, `apply(params, x)` for a batch `(B, H, W, C)`.
      loss: the per-example loss `loss(output, target)`.
      multiplicity: K >= 2.
      flip: whether augmentations may mirror the image (see :func:`augment`).

    Returns:
      `one_loss(params, (x, y, key_data))` for one example: `x` `(H, W, C)`,
      its target `y`, and the raw data of its PRNG key (typed keys do not
      travel through microbatch reshapes); augmentation k uses the k-th key of
      `jax.random.split(key, K)`.

    **Privacy:** the K augmentations are computed from the one example inside
    its own loss, BEFORE its gradient is clipped: the clipped per-example
    gradient still has norm at most C, so the sensitivity (and the privacy
    cost) is unchanged.
    """

    def one_loss(params: PyTree, example: PyTree) -> jax.Array:
        x, y, key_data = example
        keys = jax.random.split(
            jax.random.wrap_key_data(key_data, impl=AUGMENT_KEY_IMPL), multiplicity
        )
        views = jax.vmap(lambda k: augment(x, k, flip=flip))(keys)
        outputs = apply(params, views)
        return jnp.mean(jax.vmap(loss, in_axes=(0, None))(outputs, y))

    return one_loss
