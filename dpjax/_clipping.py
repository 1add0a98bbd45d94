"""Per-example clipping: every example's contribution bounded by C, summed (device side, jittable).

Every way dpjax forms a clipped sum (this module's `vmap` path, microbatch
accumulation, ghost clipping in :mod:`dpjax.ghost`) computes its clip weights
with ONE function, :func:`clip_weights`, and returns a :class:`ClippedSum`: the
sum together with its L2 sensitivity. The noise stage reads the sensitivity
from there, so the clip norm is given once.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from dpjax import _per_example, _validation

PyTree = Any


class NotPrivateWarning(UserWarning):
    """Emitted whenever a NOT PRIVATE code path is built."""


class ClipStats(NamedTuple):
    """Counts from one clipped sum.

    **Privacy:** these counts are computed from private data WITHOUT noise. They
    are diagnostics for the data owner; releasing them is outside the DP
    guarantee.

    Attributes:
      num_nonfinite: real (unmasked) rows whose gradient had a NaN/inf (or whose
        norm overflowed); they contributed zero to the sum.
      num_clipped: real, finite rows whose norm exceeded the clip norm.
    """

    num_nonfinite: jax.Array
    num_clipped: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClippedSum:
    """A sum of per-example contributions, and the L2 sensitivity that bounds them.

    Every clipper returns one (:func:`clip_and_sum`, :func:`clip_per_example`,
    :func:`accumulate_clipped_grads`, :func:`dpjax.ghost.ghost_clipped_grads`),
    and the noise stage (:func:`dpjax.gaussian_mechanism`,
    :func:`dpjax.noisy_mean`) reads `sensitivity` from it: the clip norm is
    given once, to the clipper, and cannot be given again to the noise.

    It is a pytree whose leaves are `sum` and `stats`; `sensitivity` is static
    (a Python float), so it survives `jax.jit` and `optax.chain` unchanged.

    Attributes:
      sum: the clipped sum, with the structure of one example's gradient, in at
        least float32.
      stats: :class:`ClipStats` of this sum (diagnostics, NOT private).
      sensitivity: the L2 sensitivity of `sum` under adding or removing one
        example (C for per-example clipping at C, `sqrt(sum_g C_g**2)` for
        :class:`GroupClipNorms`); `inf` only for the NOT PRIVATE sum of
        :func:`dpjax.non_private_aggregate`.
      support: None (dense), or boolean leaves shaped like `sum`'s: the
        coordinates every per-example gradient was restricted to BEFORE
        clipping (:func:`dpjax.private_topk`). The sum is zero elsewhere, and
        the noise stage noises only these coordinates. It must be public
        (chosen from released values or independently of the data).
      scale: None, or a public scalar the noise stage multiplies the noisy sum
        by: a clip-norm schedule clips `g / C_t` at 1 (sensitivity 1) and
        sets `scale = C_t`, so the release is `C_t * (sum + noise)`.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> clipped = dpjax.clip_and_sum(jnp.ones((3, 4)), 0.5, mask=jnp.ones(3, bool))
      >>> clipped.sensitivity
      0.5

    **Privacy:** the noise of the Gaussian mechanism must have std
    `noise_multiplier * sensitivity`; reading it from here makes a mismatch
    between the clip norm and the noise impossible.
    """

    sum: PyTree
    stats: ClipStats
    sensitivity: float = dataclasses.field(metadata={"static": True})
    support: PyTree | None = None
    scale: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class GroupClipNorms:
    """Per-group clip norms: parameters partitioned by a label, group g clipped to `C_g`.

    Pass it wherever a clip norm goes (:func:`clip_and_sum`,
    :func:`clip_per_example`, :func:`dpjax.accumulate_clipped_grads`,
    :func:`dpjax.ghost.ghost_clipped_grads`). Each example's gradient restricted
    to group g is clipped to L2 norm `C_g` (weight `min(1, C_g / ||g_i,g||)`),
    so the example's whole contribution has norm at most
    `sqrt(sum_g C_g**2)`: the :attr:`sensitivity` the clipped sum carries to the
    noise stage.

    Args:
      norms: `{label: C_g}`, every `C_g` finite and >= 1e-6.
      labels: the label of every parameter leaf, as in `optax.multi_transform`:
        a pytree of strings with the parameters' structure, or a function from
        the parameters (or gradients, same structure) to one.

    Raises:
      ValueError: if `norms` is empty, a norm is invalid, or `labels` is neither
        a pytree of strings nor callable; at trace time, if a leaf's label has
        no norm.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> clip = dpjax.GroupClipNorms({"w": 3.0, "b": 4.0}, {"w": "w", "b": "b"})
      >>> clip.sensitivity
      5.0
      >>> g = {"w": jnp.array([[30.0]]), "b": jnp.array([[0.5]])}
      >>> clipped = dpjax.clip_and_sum(g, clip, mask=jnp.ones(1, bool))
      >>> float(clipped.sum["w"][0]), float(clipped.sum["b"][0])
      (3.0, 0.5)

    **Privacy:** a row's group norms are each at most `C_g`, so the squares of
    its group norms sum to at most `sum_g C_g**2 = sensitivity**2` (invariant 1).
    A row that is non-finite in ANY group contributes zero to every group. The
    `C_g` must be public (chosen without the data, or from released values).

    References:
      McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
      Language Models", ICLR 2018 (per-layer clipping).
    """

    norms: Any
    labels: Any

    def __post_init__(self):
        if not isinstance(self.norms, dict) or not self.norms:
            raise ValueError(
                f"norms={self.norms!r} must be a non-empty dict {{label: clip norm}}, e.g. "
                "{'conv': 0.5, 'dense': 0.5}."
            )
        norms = {
            str(k): _validation.check_clip_norm(v, f"norms[{k!r}]") for k, v in self.norms.items()
        }
        object.__setattr__(self, "norms", norms)
        if not callable(self.labels) and not all(
            isinstance(v, str) for v in jax.tree.leaves(self.labels)
        ):
            raise ValueError(
                f"labels={self.labels!r} must be a pytree of strings with the parameters' "
                "structure, or a function params -> such a pytree (as in optax.multi_transform)."
            )

    @property
    def sensitivity(self) -> float:
        """`sqrt(sum_g C_g**2)`: the L2 bound of one example's clipped contribution."""
        return float(sum(c * c for c in self.norms.values()) ** 0.5)

    def leaf_labels(self, tree: PyTree) -> list[str]:
        """The label of every leaf of `tree` (params or gradients), in leaf order.

        Raises:
          ValueError: if the labels do not match the tree or name a group with no norm.
        """
        labels = self.labels(tree) if callable(self.labels) else self.labels
        leaves = jax.tree.leaves(tree)
        flat = jax.tree.leaves(labels)
        if len(flat) != len(leaves) or not all(isinstance(v, str) for v in flat):
            raise ValueError(
                f"labels give {len(flat)} labels for {len(leaves)} parameter leaves; give one "
                "string per leaf (a pytree with the parameters' structure)."
            )
        unknown = sorted(set(flat) - set(self.norms))
        if unknown:
            raise ValueError(
                f"labels {unknown} have no clip norm in norms={self.norms!r}; add them."
            )
        return flat

    @classmethod
    def equal(cls, l2_norm: float, labels: Any, groups: Any) -> GroupClipNorms:
        """Every group gets `C / sqrt(G)`, so that the total sensitivity is `C`.

        Args:
          l2_norm: the total clip norm C.
          labels: as for the constructor.
          groups: the group labels (an iterable of strings).
        """
        c = _validation.check_clip_norm(l2_norm)
        names = sorted(set(groups))
        if not names:
            raise ValueError("groups is empty; pass the group labels, e.g. ['conv', 'dense'].")
        return cls({g: c / len(names) ** 0.5 for g in names}, labels)

    @classmethod
    def by_size(cls, l2_norm: float, labels: Any, params: PyTree) -> GroupClipNorms:
        """`C_g**2` proportional to the group's parameter count, summing to `C**2`.

        Args:
          l2_norm: the total clip norm C.
          labels: as for the constructor.
          params: the parameters (only their shapes are read: public).
        """
        c = _validation.check_clip_norm(l2_norm)
        cls({"_": 1.0}, labels)  # validates `labels`
        flat = labels(params) if callable(labels) else labels
        sizes: dict[str, int] = {}
        for name, leaf in zip(jax.tree.leaves(flat), jax.tree.leaves(params), strict=True):
            sizes[name] = sizes.get(name, 0) + int(jnp.size(leaf))
        total = sum(sizes.values())
        return cls({g: c * (n / total) ** 0.5 for g, n in sizes.items()}, labels)


ClipNorm = float | GroupClipNorms
"""A clip norm: one global C, or per-group norms (:class:`GroupClipNorms`)."""


def check_clip(l2_norm: Any) -> ClipNorm:
    """Validates a clip norm: a :class:`GroupClipNorms` as is, else a finite C >= 1e-6."""
    if isinstance(l2_norm, GroupClipNorms):
        return l2_norm
    return _validation.check_clip_norm(l2_norm)


def sensitivity_of(clip: ClipNorm) -> float:
    """The L2 sensitivity of a sum clipped with `clip` (C, or sqrt(sum C_g**2))."""
    return clip.sensitivity if isinstance(clip, GroupClipNorms) else float(clip)


def clip_weights(
    norms: jax.Array, l2_norm: float, mask: jax.Array
) -> tuple[jax.Array, jax.Array, ClipStats]:
    """The clip weight of every example: THE rule every clipped sum in dpjax uses.

    Row i gets `min(1, l2_norm / norms[i])` if it is real (`mask[i]`) and its
    norm is finite, else exactly 0. Device side, jittable.

    Args:
      norms: `(B,)` per-example L2 norms (NaN/inf allowed).
      l2_norm: the clip norm C (already validated, or `inf` for NOT PRIVATE sums).
      mask: boolean `(B,)`, False for padded rows.

    Returns:
      `(weights, keep, stats)`: float32 weights `(B,)`, the boolean rows that
      contribute, and the :class:`ClipStats`.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> w, keep, _ = dpjax.clip_weights(jnp.array([2.0, 0.5, jnp.nan]), 1.0, jnp.ones(3, bool))
      >>> [round(float(v), 2) for v in w]
      [0.5, 1.0, 0.0]

    **Privacy:** a row with weight w and norm n contributes w * n <= C; padded
    and non-finite rows contribute 0 and must be selected out with `keep` (not
    multiplied by 0: NaN * 0 is NaN).
    """
    keep = jnp.isfinite(norms) & mask
    safe = jnp.where(keep, norms, 1.0)
    weights = jnp.where(keep, jnp.minimum(1.0, l2_norm / jnp.maximum(safe, 1e-30)), 0.0)
    stats = ClipStats(
        num_nonfinite=jnp.sum(mask & ~jnp.isfinite(norms)).astype(jnp.int32),
        num_clipped=jnp.sum(keep & (norms > l2_norm)).astype(jnp.int32),
    )
    return weights.astype(jnp.float32), keep, stats


def per_example_global_norms(grads: PyTree) -> jax.Array:
    """Returns the L2 norm of each example's whole gradient, shape `(B,)`.

    The norm is taken over all leaves together (a "global" norm), accumulated in
    at least float32.

    Args:
      grads: per-example gradients, every leaf with a leading batch axis B.

    Returns:
      A float array of shape `(B,)`.

    Raises:
      ValueError: if the leaves do not share a leading batch axis.
    """
    _per_example.batch_size(grads)

    def sq(g: jax.Array) -> jax.Array:
        g = g.astype(_validation.at_least_float32(g.dtype))
        return jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=1)

    return jnp.sqrt(sum(sq(g) for g in jax.tree.leaves(grads)))


def clip_and_sum(
    grads: PyTree,
    l2_norm: ClipNorm,
    mask: jax.typing.ArrayLike,
    *,
    support: PyTree | None = None,
) -> ClippedSum:
    """Clips each example's gradient to L2 norm <= `l2_norm` and sums over examples.

    Row i is scaled by `min(1, l2_norm / ||g_i||)`. Rows with `mask[i] == False`
    (padding) and rows whose gradient is not finite (or whose squared norm
    overflows float32) contribute exactly zero: they are selected out with
    `where`, so a NaN never reaches the sum. The sum is returned in at least
    float32, whatever the gradients' dtype.

    Args:
      grads: per-example gradients, every leaf with leading axis B.
      l2_norm: the clip norm C, finite and >= 1e-6 (a Python number), or
        per-group norms (:class:`GroupClipNorms`).
      mask: boolean `(B,)`, False for padded rows (a :class:`dpjax.Batch`'s
        `mask`); required, so that padding can never count as an example. Pass
        `jnp.ones(B, bool)` when no row is padded.
      support: optional boolean pytree shaped like ONE example's gradient:
        every per-example gradient is restricted to it BEFORE its norm is
        taken (:func:`dpjax.private_topk`). It must be public.

    Returns:
      A :class:`ClippedSum` with sensitivity `l2_norm` (`sqrt(sum C_g**2)` for
      groups): the sum (structure of one example's gradient), its
      :class:`ClipStats` and the support.

    Raises:
      ValueError: if `l2_norm` is invalid; at trace time, if leading axes
        disagree or `mask` is missing or not `(B,)`.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> g = jnp.array([[3.0, 4.0], [jnp.nan, 0.0]])
      >>> clipped = dpjax.clip_and_sum(g, 1.0, mask=jnp.ones(2, bool))
      >>> [round(float(v), 2) for v in clipped.sum], int(clipped.stats.num_nonfinite)
      ([0.6, 0.8], 1)

    **Privacy:** adding, removing or replacing one example changes `summed` by
    at most C (2C for replacement) in L2 norm, whatever its gradient (including
    NaN/inf): this is the sensitivity the Gaussian noise is calibrated to.
    """
    return clip_and_sum_unchecked(grads, check_clip(l2_norm), mask, support=support)


def restrict_to_support(grads: PyTree, support: PyTree) -> PyTree:
    """Zeroes every per-example gradient outside `support` (broadcast over the batch axis)."""
    if jax.tree.structure(support) != jax.tree.structure(grads):
        raise ValueError(
            f"support has structure {jax.tree.structure(support)} but the gradients have "
            f"{jax.tree.structure(grads)}; give one boolean array per parameter leaf."
        )

    def restrict(g: jax.Array, s: jax.Array) -> jax.Array:
        if jnp.shape(s) != jnp.shape(g)[1:]:
            raise ValueError(
                f"a support leaf has shape {jnp.shape(s)} but its per-example gradients have "
                f"{jnp.shape(g)}; the support has the shape of ONE example's gradient."
            )
        return jnp.where(jnp.asarray(s, bool)[None], g, jnp.zeros((), g.dtype))

    return jax.tree.map(restrict, grads, support)


def group_clip_weights(
    group_norms: dict[str, jax.Array], clip: GroupClipNorms, real: jax.Array
) -> tuple[dict[str, jax.Array], jax.Array, ClipStats]:
    """Clip weights for per-group clipping: group g's from :func:`clip_weights` at `C_g`.

    Args:
      group_norms: `{label: (B,) norms of the examples' gradients in that group}`.
      clip: the per-group norms.
      real: boolean `(B,)`, False for padded rows.

    Returns:
      `(weights, keep, stats)`: `{label: (B,) weights}`, the rows that
      contribute (real, and finite in EVERY group) and the :class:`ClipStats`.

    **Privacy:** group g's weight bounds the row's group-g norm by `C_g`; a row
    non-finite in any group gets weight 0 in all of them.
    """
    parts = {g: clip_weights(n, clip.norms[g], real) for g, n in group_norms.items()}
    keep = real
    clipped = jnp.zeros_like(real)
    for g, (_, group_keep, _) in parts.items():
        keep = keep & group_keep
        clipped = clipped | (group_keep & (group_norms[g] > clip.norms[g]))
    stats = ClipStats(
        num_nonfinite=jnp.sum(real & ~keep).astype(jnp.int32),
        num_clipped=jnp.sum(keep & clipped).astype(jnp.int32),
    )
    return {g: jnp.where(keep, w, 0.0) for g, (w, _, _) in parts.items()}, keep, stats


def _group_weights(
    grads: PyTree, clip: GroupClipNorms, real: jax.Array
) -> tuple[list[jax.Array], jax.Array, ClipStats]:
    """Per-leaf clip weights for per-group clipping of per-example gradients."""
    leaves = jax.tree.leaves(grads)
    labels = clip.leaf_labels(grads)
    norms = {
        group: per_example_global_norms(
            [x for x, lab in zip(leaves, labels, strict=True) if lab == group]
        )
        for group in sorted(set(labels))
    }
    weights, keep, stats = group_clip_weights(norms, clip, real)
    return [weights[label] for label in labels], keep, stats


def clip_and_sum_unchecked(
    grads: PyTree,
    l2_norm: ClipNorm,
    mask: jax.typing.ArrayLike | None,
    *,
    support: PyTree | None = None,
) -> ClippedSum:
    """:func:`clip_and_sum` without validating `l2_norm` (inf allowed: NOT PRIVATE callers)."""
    b = _per_example.batch_size(grads)
    real = _validation.check_mask(mask, b, jax.tree.map(jnp.shape, grads))
    if support is not None:
        grads = restrict_to_support(grads, support)
    leaves, treedef = jax.tree.flatten(grads)
    if isinstance(l2_norm, GroupClipNorms):
        scales, keep, stats = _group_weights(grads, l2_norm, real)
    else:
        scale, keep, stats = clip_weights(per_example_global_norms(grads), l2_norm, real)
        scales = [scale] * len(leaves)

    def clip_sum(g: jax.Array, scale: jax.Array) -> jax.Array:
        acc = _validation.at_least_float32(g.dtype)
        kept = jnp.where(keep.reshape((b,) + (1,) * (g.ndim - 1)), g, 0).astype(acc)
        # Kept in (at least) float32: rounding the sum back to bf16/fp16 could push one
        # example's contribution above C, and noise must be drawn in float32 too.
        return jnp.tensordot(scale.astype(acc), kept, axes=1)

    summed = [clip_sum(g, w) for g, w in zip(leaves, scales, strict=True)]
    return ClippedSum(jax.tree.unflatten(treedef, summed), stats, sensitivity_of(l2_norm), support)


def clip_per_example(l2_norm: Any) -> optax.GradientTransformationExtraArgs:
    """Clips per-example gradients to global L2 norm <= `l2_norm` and sums them.

    Input updates are per-example gradients with a leading batch axis (e.g. from
    :func:`dpjax.per_example_grads`); the output is their clipped SUM as a
    :class:`ClippedSum` (sensitivity C). Put it first in an `optax.chain`,
    followed by :func:`dpjax.noisy_mean`, which reads C from it (or use
    :func:`dpjax.dp_sgd`). A :class:`ClippedSum` cannot be applied to the
    parameters (`optax.apply_updates` refuses its structure): the noise cannot
    be left out by accident.

    Args:
      l2_norm: the clip norm C, finite and > 0; per-group norms
        (:class:`GroupClipNorms`); or a clip-norm schedule, step -> C_t (any
        optax schedule): each step then clips `g / C_t` at 1 (sensitivity 1)
        and the :class:`ClippedSum` carries `scale = C_t`, which the noise
        stage applies after the noise (noise std sigma * C_t in the end). An
        invalid C_t (not finite, below 1e-6) gives a NaN release.

    Returns:
      An `optax.GradientTransformationExtraArgs`. Its update requires the
      keyword `mask` (boolean `(B,)`, False for padded rows) and accepts
      `support` (see :func:`clip_and_sum`; :func:`dpjax.private_topk` passes
      it). Its state is a :class:`ClipStats` with the counts of the last
      update.

    Raises:
      ValueError: if `l2_norm` is not finite and positive; at trace time if the
        mask is missing or the batch axes or the mask disagree (the message
        lists the shapes).

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> tx = dpjax.clip_per_example(1.0)
      >>> g = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}
      >>> clipped, _ = tx.update(g, tx.init(None), mask=jnp.array([True, True]))
      >>> [round(float(v), 2) for v in clipped.sum["w"]], clipped.sensitivity
      ([0.9, 1.2], 1.0)

    **Privacy:** each real example contributes a vector of norm <= C; padded and
    non-finite rows contribute exactly zero. The L2 sensitivity of the output is
    C under add/remove of one example. C = inf or C <= 0 is refused.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
      https://arxiv.org/abs/1607.00133
    """
    if callable(l2_norm) and not isinstance(l2_norm, GroupClipNorms):
        return _scheduled_clip(l2_norm)
    c = check_clip(l2_norm)

    def init_fn(params: PyTree) -> ClipStats:
        del params
        return ClipStats(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, mask=None, support=None, **extra_args):
        del state, params, extra_args
        clipped = clip_and_sum_unchecked(updates, c, mask, support=support)
        return clipped, clipped.stats

    # The output is a ClippedSum, not the optimizer-ready pytree optax's type names.
    return optax.GradientTransformationExtraArgs(
        init_fn, cast(optax.TransformUpdateExtraArgsFn, update_fn)
    )


class ScheduledClipState(NamedTuple):
    """State of :func:`clip_per_example` with a clip-norm schedule.

    Attributes:
      stats: the last update's :class:`ClipStats` (NOT private).
      count: updates so far (the next step's index).
    """

    stats: ClipStats
    count: jax.Array


def _scheduled_clip(schedule: Callable[[jax.Array], Any]) -> optax.GradientTransformationExtraArgs:
    """Clips at `C_t = schedule(t)`: `g / C_t` clipped at 1 (sensitivity 1), `scale = C_t`."""

    def init_fn(params: PyTree) -> ScheduledClipState:
        del params
        zero = jnp.zeros((), jnp.int32)
        return ScheduledClipState(ClipStats(zero, zero), zero)

    def update_fn(updates, state, params=None, *, mask=None, support=None, **extra_args):
        del params, extra_args
        c = jnp.asarray(schedule(state.count), jnp.float32)
        ok = jnp.isfinite(c) & (c >= _validation.MIN_CLIP_NORM)
        safe = jnp.where(ok, c, 1.0)
        scaled = jax.tree.map(lambda g: g / safe.astype(g.dtype), updates)
        clipped = clip_and_sum_unchecked(scaled, 1.0, mask, support=support)
        # An invalid C_t makes the release NaN (never unclipped or un-noised).
        out = dataclasses.replace(clipped, scale=jnp.where(ok, c, jnp.nan))
        return out, ScheduledClipState(
            clipped.stats, jnp.asarray(optax.safe_increment(state.count))
        )

    return optax.GradientTransformationExtraArgs(
        init_fn, cast(optax.TransformUpdateExtraArgsFn, update_fn)
    )


def not_private_sum() -> optax.GradientTransformationExtraArgs:
    """NOT PRIVATE: sums per-example gradients without clipping (sensitivity inf).

    The clipper of the explicit NOT PRIVATE baseline: same interface as
    :func:`clip_per_example` (per-example gradients and `mask` in, a
    :class:`ClippedSum` out), but its sensitivity is `inf`, which
    :func:`dpjax.noisy_mean` refuses; only
    :func:`dpjax.non_private_mean` accepts it.

    Returns:
      An `optax.GradientTransformationExtraArgs` with :class:`ClipStats` state.

    Warns:
      NotPrivateWarning: always, when built.

    Example:
      >>> import warnings, jax.numpy as jnp, dpjax
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
      ...     tx = dpjax.not_private_sum()
      >>> tx.update(jnp.ones((2, 3)), tx.init(None), mask=jnp.ones(2, bool))[0].sensitivity
      inf

    **Privacy:** NONE. Nothing bounds an example's influence.
    """
    warnings.warn(
        "NOT PRIVATE: not_private_sum does not clip; the sum has no bounded sensitivity.",
        NotPrivateWarning,
        stacklevel=2,
    )

    def init_fn(params: PyTree) -> ClipStats:
        del params
        return ClipStats(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def update_fn(updates, state, params=None, *, mask=None, **extra_args):
        del state, params, extra_args
        summed = clip_and_sum_unchecked(updates, float("inf"), mask)
        return summed, summed.stats

    # The output is a ClippedSum, not the optimizer-ready pytree optax's type names.
    return optax.GradientTransformationExtraArgs(
        init_fn, cast(optax.TransformUpdateExtraArgsFn, update_fn)
    )


def not_private_grads(
    losses_fn: Callable[[PyTree, PyTree], jax.Array],
) -> Callable[[PyTree, PyTree, jax.Array], ClippedSum]:
    """NOT PRIVATE: the gradient of the summed losses of the real rows (sensitivity inf).

    The clipper of the explicit NOT PRIVATE baseline in clipper form (like
    :func:`accumulate_clipped_grads` and :func:`dpjax.ghost.ghost_clipped_grads`):
    one ordinary backward pass, padded rows masked out, no clipping.

    Args:
      losses_fn: `(params, batch) -> (B,)` per-example losses.

    Returns:
      `fn(params, batch, mask) -> ClippedSum` with sensitivity `inf`, which only
      :func:`dpjax.non_private_mean` accepts.

    Warns:
      NotPrivateWarning: always, when built.

    Example:
      >>> import warnings, jax.numpy as jnp, dpjax
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
      ...     grads = dpjax.not_private_grads(lambda w, x: x @ w)
      >>> grads(jnp.zeros(2), jnp.ones((3, 2)), jnp.array([True, True, False])).sum
      Array([2., 2.], dtype=float32)

    **Privacy:** NONE.
    """
    warnings.warn(
        "NOT PRIVATE: not_private_grads does not clip; the sum has no bounded sensitivity.",
        NotPrivateWarning,
        stacklevel=2,
    )

    def fn(params: PyTree, batch: PyTree, mask: jax.Array) -> ClippedSum:
        b = _per_example.batch_size(batch)
        real = _validation.check_mask(mask, b, jax.tree.map(jnp.shape, batch))

        def total(p: PyTree) -> jax.Array:
            return jnp.sum(jnp.where(real, losses_fn(p, batch), 0.0))

        grads = jax.tree.map(
            lambda g: g.astype(_validation.at_least_float32(g.dtype)), jax.grad(total)(params)
        )
        zero = jnp.zeros((), jnp.int32)
        return ClippedSum(grads, ClipStats(zero, zero), float("inf"))

    return fn
