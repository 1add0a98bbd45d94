"""Book-keeping ghost clipping: per-example clipping in ONE backward pass.

A dense layer `y = x W + b` gives example i the kernel gradient `x_i^T g_i`
(`g_i` the gradient of its loss at `y_i`); a convolution is a dense layer over
its input patches; an embedding is a dense layer over one-hot tokens; a
LayerNorm's scale and shift are elementwise. In every case each example's
gradient norm follows from the layer's input `x_i` and output gradient `g_i`
alone, and once the clip factors `s_i = min(1, C / ||grad_i||)` are known the
clipped sum of the layer's gradients is the layer's ordinary weight gradient
at `s * g` (or a weighted sum of small per-example gradients). So a DP step
costs one forward pass, one backward pass for the layers' output gradients,
and the norms: no second backward pass and no `B x num_params` array.

How the output gradients get out: while :func:`ghost_clipped_grads` traces
the model, every ghost layer (see `dpjax._ghost_layers`) adds a zero "tap" to
its output and records its input and parameters here; the gradient with
respect to the taps is exactly `g`. Outside that trace the layers are plain
layers.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from dpjax import _clipping, _per_example, _validation

PyTree = Any
_TAPE = threading.local()
# Per-example loops work on chunks of examples whose inputs take about this many
# bytes: on CPU a chunk's patches stay in cache (4 MiB: 8x faster than one pass
# over the whole batch for the DP CNN); accelerators want wide chunks.
_CHUNK_BYTES = {"cpu": 4 * 2**20}
_CHUNK_BYTES_ACCELERATOR = 256 * 2**20
_CHUNK: int | None = None  # a fixed number of examples per chunk (tests)


class LayerGrads(Protocol):
    """What a ghost layer computes from its input `x` and output gradient `g`."""

    sq_norms: jax.Array  # (B,): each example's squared gradient norm for this layer's parameters

    def weighted_sum(self, w: jax.Array, keep: jax.Array) -> tuple[jax.Array | None, ...]:
        """`sum_i w_i grad_i` per parameter, over the rows in `keep` (others add exactly 0)."""
        ...


class _Call(NamedTuple):
    """One ghost layer call."""

    inputs: jax.Array  # the layer's input, `(B, ...)`
    params: tuple[jax.Array | None, ...]  # as used, e.g. (kernel, bias); None if absent
    grads: Callable[[jax.Array, jax.Array], LayerGrads]  # (inputs, output grads) -> LayerGrads
    out: jax.Array  # the layer's output (before the tap)


class _Tape:
    """Adds one zero tap per ghost layer call and records what each layer used."""

    def __init__(self, taps: Sequence[jax.Array] | None):
        self.taps, self.calls = taps, []

    def tap(self, call: _Call) -> jax.Array:
        i = len(self.calls)
        self.calls.append(call)
        if self.taps is None:  # discovery: shapes only
            return call.out
        return call.out + self.taps[i]


@contextlib.contextmanager
def _recording(taps: Sequence[jax.Array] | None) -> Iterator[_Tape]:
    previous = getattr(_TAPE, "tape", None)
    _TAPE.tape = _Tape(taps)
    try:
        yield _TAPE.tape
    finally:
        _TAPE.tape = previous


def layer_params(*params: jax.Array | None) -> tuple[jax.Array | None, ...]:
    """The parameters a ghost layer computes with.

    They are the parameters themselves, except while :func:`_discover` traces the
    model: then they are zeros of the same shape that do not depend on them, so
    any other use of a parameter shows in the traced program and is refused.
    """
    tape = getattr(_TAPE, "tape", None)
    if tape is None or tape.taps is not None:
        return params
    return tuple(None if p is None else jnp.zeros(p.shape, p.dtype) for p in params)


def record_layer(
    out: jax.Array,
    inputs: jax.Array,
    params: tuple[jax.Array | None, ...],
    grads: Callable[[jax.Array, jax.Array], LayerGrads],
) -> jax.Array:
    """Called by every ghost layer with its output; returns the output (tapped when tracing)."""
    tape = getattr(_TAPE, "tape", None)
    return out if tape is None else tape.tap(_Call(inputs, params, grads, out))


def per_example_map(fn: Callable, xs: PyTree, bytes_per_example: int) -> Any:
    """`lax.map` of a one-example function over the leading axis, a chunk of examples at a time.

    A chunk holds about `_CHUNK_BYTES` (per backend) of the examples' working
    data, `bytes_per_example` each.
    """
    b = jax.tree.leaves(xs)[0].shape[0]
    budget = _CHUNK_BYTES.get(jax.default_backend(), _CHUNK_BYTES_ACCELERATOR)
    chunk = _CHUNK or budget // max(1, bytes_per_example)
    return lax.map(fn, xs, batch_size=max(1, min(b, chunk)))


def keep_rows(keep: jax.Array, v: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """`v` (times the per-row weights `w`) with the rows outside `keep` set to 0, NaN/inf too."""
    column = (-1,) + (1,) * (v.ndim - 1)
    v = v if w is None else v * w.reshape(column)
    return jnp.where(keep.reshape(column), v, jnp.zeros((), v.dtype))


def ghost_clipped_grads(
    losses_fn: Callable[[PyTree, PyTree], jax.Array], *, l2_norm: float
) -> Callable[[PyTree, PyTree, jax.Array | None], tuple[PyTree, _clipping.ClipStats]]:
    """Clipped SUM of per-example gradients in one backward pass (book-keeping ghost clipping).

    `losses_fn(params, batch)` returns the vector of per-example losses `(B,)`,
    computed on the whole batch at once, by a model whose every parameter lives
    in a ghost layer: :class:`GhostLinear`, :class:`GhostConv`,
    :class:`GhostEmbed`, :class:`GhostLayerNorm` (NNX), :class:`GhostDense`
    (linen), or the functions :func:`ghost_dense`, :func:`ghost_conv`,
    :func:`ghost_embed`, :func:`ghost_scale_shift`. One backward pass gives each
    layer's output gradients `g`; with the recorded inputs they give every
    example's gradient norm and then each layer's clipped sum, with
    `s_i = min(1, C / ||grad_i||)`. The result equals :func:`clip_and_sum` of
    the per-example gradients.

    Args:
      losses_fn: `(params, batch) -> (B,)` per-example losses.
      l2_norm: clip norm C.

    Returns:
      `fn(params, batch, mask) -> (clipped_sum, ClipStats)`, jittable; feed the
      sum to :func:`dpjax.noisy_mean`.

    Raises:
      ValueError: if `l2_norm` is invalid; at trace time if some parameter is not
        used by exactly one ghost layer (the norms would not bound its
        gradient), or if the batch or mask shapes disagree.

    Example:
      >>> import flax.nnx as nnx, jax, jax.numpy as jnp, optax, dpjax
      >>> layer = dpjax.GhostLinear(3, 2, rngs=nnx.Rngs(0))
      >>> graphdef, params = nnx.split(layer)
      >>> def losses(p, batch):
      ...     x, y = batch
      ...     logits = nnx.merge(graphdef, p)(x)
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y)
      >>> clipped = dpjax.ghost_clipped_grads(losses, l2_norm=1.0)
      >>> s, stats = jax.jit(clipped)(params, (jnp.ones((4, 3)), jnp.arange(4) % 2), None)

    **Privacy:** each example contributes `s_i * grad_i`, of norm <= C, exactly
    as with :func:`clip_and_sum`. Rows that are masked out or have a non-finite
    norm get weight 0: their inputs and output gradients are replaced by zeros
    in every layer's sum, so a NaN in one example cannot reach the sum. A
    parameter used twice (weight tying), transformed before use, or used
    outside a ghost layer is refused, since the per-layer norms would then not
    bound the example's whole gradient. The layers must not mix examples
    (no BatchNorm). Norms and sums are computed in float32; on accelerators
    whose matmuls default to reduced precision (TF32), the norm and the summed
    gradient carry that rounding (relative 1e-3), as every gradient does there;
    set `jax_default_matmul_precision='highest'` for full float32.

    References:
      Goodfellow, "Efficient Per-Example Gradient Computations", 2015.
      Li, Tramer, Liang, Hashimoto, "Large Language Models Can Be Strong
      Differentially Private Learners", ICLR 2022 (ghost norms).
      Bu, Wang, Zha, Karypis, "Differentially Private Optimization on Large
      Model at Small Cost", ICML 2023 (book-keeping: one backward pass).
    """
    c = _validation.check_clip_norm(l2_norm)

    def fn(
        params: PyTree, batch: PyTree, mask: jax.Array | None
    ) -> tuple[PyTree, _clipping.ClipStats]:
        b = _per_example.batch_size(batch)
        mask = jnp.ones((b,), bool) if mask is None else jnp.asarray(mask, bool)
        if mask.shape != (b,):
            raise ValueError(
                f"mask has shape {mask.shape} but the batch has {b} rows; pass shape ({b},)."
            )
        outs, slots, treedef = _discover(losses_fn, params, batch, b)
        calls: list[_Call] = []

        def tapped_loss(taps):
            with _recording(taps) as tape:
                loss = jnp.sum(jnp.where(mask, _check_losses(losses_fn(params, batch), b), 0.0))
            calls.extend(tape.calls)
            return loss, [call.inputs for call in tape.calls]

        taps = [jnp.zeros(out.shape, out.dtype) for out in outs]
        loss, vjp_fn, inputs = jax.vjp(tapped_loss, taps, has_aux=True)
        (out_grads,) = vjp_fn(jnp.ones_like(loss))
        per_layer = [
            call.grads(x, g.astype(jnp.float32))  # each rule casts its inputs (tokens stay ints)
            for call, x, g in zip(calls, inputs, out_grads, strict=True)
        ]
        norms = jnp.sqrt(sum(layer.sq_norms for layer in per_layer))
        keep = jnp.isfinite(norms) & mask
        weights = jnp.where(
            keep, jnp.minimum(1.0, c / jnp.maximum(jnp.where(keep, norms, 1.0), 1e-30)), 0.0
        )
        leaves: list = [None] * treedef.num_leaves
        for layer, layer_slots in zip(per_layer, slots, strict=True):
            for grad, slot in zip(layer.weighted_sum(weights, keep), layer_slots, strict=True):
                if slot is not None:
                    i, shape, dtype = slot
                    leaves[i] = grad.reshape(shape).astype(jnp.promote_types(dtype, jnp.float32))
        stats = _clipping.ClipStats(
            num_nonfinite=jnp.sum(mask & ~jnp.isfinite(norms)).astype(jnp.int32),
            num_clipped=jnp.sum(keep & (norms > c)).astype(jnp.int32),
        )
        return jax.tree.unflatten(treedef, leaves), stats

    return fn


def _check_losses(losses: jax.Array, b: int) -> jax.Array:
    if jnp.shape(losses) != (b,):
        raise ValueError(
            f"losses_fn returned shape {jnp.shape(losses)}; ghost clipping needs one loss per "
            f"example, shape ({b},)."
        )
    return losses


def _discover(losses_fn: Callable, params: PyTree, batch: PyTree, b: int) -> tuple[list, list, Any]:
    """Traces `losses_fn` once (shapes only) and maps each ghost layer call to its parameters.

    Every parameter leaf must reach exactly one ghost layer, unchanged (the
    same traced array), and nothing else: then the per-layer norms add up to
    each example's whole gradient norm. While tracing, ghost layers compute
    with stand-ins (:func:`layer_params`), so a parameter that the traced
    program still reads is used outside a ghost layer. Every layer's input and
    output must have the examples on their first axis.

    Returns:
      `(outputs, slots, treedef)`: per ghost layer call, in call order, its
      output shape and, per parameter slot, `(leaf index, shape, dtype)` or None.

    Raises:
      ValueError: unless every parameter is used by exactly one ghost layer and
        nothing else, or if a layer's first axis is not the batch.
    """
    traced: list = []
    calls: list = []

    def trace(p, batch_):  # a fresh function each call: no trace cache
        traced.extend(jax.tree.leaves(p))
        with _recording(None) as tape:
            losses_fn(p, batch_)
        calls.extend(tape.calls)
        return [call.out for call in tape.calls]

    closed, outs = jax.make_jaxpr(trace, return_shape=True)(params, batch)
    n = len(traced)
    leaves = jax.tree.leaves(params)
    shapes = [tuple(p.shape) for p in leaves]
    param_vars = {v: i for i, v in enumerate(closed.jaxpr.invars[:n])}
    read = {
        param_vars[v]
        for eqn in closed.jaxpr.eqns
        for v in eqn.invars
        if not isinstance(v, jax.extend.core.Literal) and v in param_vars
    } | {param_vars[v] for v in closed.jaxpr.outvars if v in param_vars}
    position = {id(leaf): i for i, leaf in enumerate(traced)}
    used_ids = [tuple(None if a is None else id(a) for a in c.params) for c in calls]
    used = [position.get(i, -1) for ids in used_ids for i in ids if i is not None]
    if read or sorted(used) != list(range(n)):
        raise ValueError(
            "ghost clipping needs every parameter to be used, unchanged, by exactly one ghost "
            "layer (GhostLinear/GhostConv/GhostEmbed/GhostLayerNorm/GhostDense or the ghost_* "
            f"functions) and nowhere else; the ghost layers used {len(used)} arrays (and the "
            f"model reads parameters of shapes {[shapes[i] for i in sorted(read)]} outside them) "
            f"but the model has {n} parameters of shapes {shapes}. Use "
            "dpjax.per_example_grads (vmap) for this model, or build it from ghost layers."
        )
    for i, call in enumerate(calls):
        if jnp.shape(call.inputs)[:1] != (b,) or jnp.shape(call.out)[:1] != (b,):
            raise ValueError(
                f"ghost layer {i} has input shape {jnp.shape(call.inputs)} and output shape "
                f"{jnp.shape(call.out)}, but the batch has {b} examples; every ghost layer must "
                "keep the examples on its first axis (do not broadcast or flatten them)."
            )
    slots = [
        tuple(
            None if a is None else (position[a], shapes[position[a]], leaves[position[a]].dtype)
            for a in ids
        )
        for ids in used_ids
    ]
    return outs, slots, jax.tree.structure(params)


def is_ghost_compatible(losses_fn: Callable, params: PyTree, batch: PyTree) -> bool:
    """Whether :func:`ghost_clipped_grads` can handle this model (host side, traces once).

    Args:
      losses_fn: `(params, batch) -> (B,)` per-example losses.
      params: the parameters.
      batch: an example batch (only shapes are used).

    Returns:
      True if every parameter is used, unchanged, by exactly one ghost layer and
      nothing else, and every ghost layer keeps the examples on its first axis.

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> graphdef, params = nnx.split(dpjax.GhostLinear(3, 2, rngs=nnx.Rngs(0)))
      >>> losses = lambda p, x: nnx.merge(graphdef, p)(x).sum(axis=1)
      >>> dpjax.is_ghost_compatible(losses, params, jnp.ones((4, 3)))
      True
    """
    try:
        _discover(losses_fn, params, batch, _per_example.batch_size(batch))
    except ValueError:
        return False
    return True
