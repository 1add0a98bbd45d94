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

All of this needs a model that does not mix examples: each example's loss, and
every ghost layer's input in its row, must depend on that example alone.
Before ghost clipping is used, a probe evaluates the model on random
parameters and a small random batch and refuses it if it sees examples mix
(:func:`_check_no_mixing`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

from dpjax import _clipping, _per_example, _validation

PyTree = Any
_TAPE = threading.local()
# Per-example loops work on chunks of examples whose inputs take about this many
# bytes: on CPU a chunk's patches stay in cache (4 MiB: 8x faster than one pass
# over the whole batch for the DP CNN); accelerators want wide chunks.
_CHUNK_BYTES = {"cpu": 4 * 2**20}
_CHUNK_BYTES_ACCELERATOR = 256 * 2**20
_CHUNK: int | None = None  # a fixed number of examples per chunk (tests)
# The mixing probe (`_check_no_mixing`): rows in its random batch (each row has two
# neighbours), and the seed of its random parameters and inputs. These are public
# numbers that never touch the data or the noise, so a fixed seed is right here.
_PROBE_ROWS = 3
_PROBE_SEED = 0
# Compiler options for the probe's small programs, per backend: on CPU, XLA's backend
# optimizations take half of the compile time, and the probe runs a few rows once.
# (XLA takes int values too, though `jax.stages.CompilerOptions` lists only str and bool.)
_PROBE_COMPILER_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"xla_backend_optimization_level": 0}}


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
    losses_fn: Callable[[PyTree, PyTree], jax.Array], *, l2_norm: _clipping.ClipNorm
) -> Callable[..., _clipping.ClippedSum]:
    """Clipped SUM of per-example gradients in one backward pass (book-keeping ghost clipping).

    `losses_fn(params, batch)` returns the vector of per-example losses `(B,)`,
    computed on the whole batch at once, by a model whose every parameter lives
    in a ghost layer: :class:`GhostLinear`, :class:`GhostConv`,
    :class:`GhostEmbed`, :class:`GhostLayerNorm`, :class:`GhostGroupNorm` (NNX), :class:`GhostDense`
    (linen), or the functions :func:`ghost_dense`, :func:`ghost_conv`,
    :func:`ghost_embed`, :func:`ghost_scale_shift`, and that does not mix
    examples. One backward pass gives each layer's output gradients `g`; with
    the recorded inputs they give every example's gradient norm and then each
    layer's clipped sum, with `s_i = min(1, C / ||grad_i||)`. The result equals
    :func:`clip_and_sum` of the per-example gradients.

    Device side: the returned function is jittable. When it is traced (once per
    shapes of `params` and `batch`), it also runs a small probe of `losses_fn`
    on the host (see **Privacy**).

    Args:
      losses_fn: `(params, batch) -> (B,)` per-example losses; row `i` must
        depend on example `i` alone.
      l2_norm: clip norm C, or per-group norms (:class:`dpjax.GroupClipNorms`;
        every ghost layer's parameters must then share one label).

    Returns:
      `fn(params, batch, mask) -> ClippedSum`, jittable: the clipped sum, its
      :class:`ClipStats` and its sensitivity C, as :func:`clip_and_sum` gives
      (same clip weights, :func:`dpjax.clip_weights`); feed it to
      :func:`dpjax.noisy_mean`. `mask` is required: boolean `(B,)`, False for
      padded rows (a :class:`dpjax.Batch`'s `mask`; `jnp.ones(B, bool)` when no
      row is padded).

    Raises:
      ValueError: if `l2_norm` is invalid; at trace time if `mask` is None or
        not `(B,)`, if some parameter is not used by exactly one ghost layer
        (the norms would not bound its gradient), if the batch shapes disagree,
        or if the probe sees the model mix examples (use
        :func:`dpjax.per_example_grads` and :func:`dpjax.clip_and_sum` then).

    Example:
      >>> import flax.nnx as nnx, jax, jax.numpy as jnp, optax, dpjax
      >>> layer = dpjax.ghost.GhostLinear(3, 2, rngs=nnx.Rngs(0))
      >>> graphdef, params = nnx.split(layer)
      >>> def losses(p, batch):
      ...     x, y = batch
      ...     logits = nnx.merge(graphdef, p)(x)
      ...     return optax.softmax_cross_entropy_with_integer_labels(logits, y)
      >>> clipped = dpjax.ghost.ghost_clipped_grads(losses, l2_norm=1.0)
      >>> batch, mask = (jnp.ones((4, 3)), jnp.arange(4) % 2), jnp.ones(4, bool)
      >>> summed = jax.jit(clipped)(params, batch, mask)
      >>> summed.sensitivity, int(summed.stats.num_clipped)
      (1.0, 4)

    **Privacy:** each example contributes `s_i * grad_i`, of norm <= C, exactly
    as with :func:`clip_and_sum`, so replacing one example moves the sum by at
    most 2C (adding or removing one, by at most C) -- provided row `i`'s loss
    and every ghost layer's input in row `i` depend on example `i` alone. Rows
    that are masked out or have a non-finite norm get weight 0: their inputs
    and output gradients are replaced by zeros in every layer's sum, so a NaN
    in one example cannot reach the sum. The mask is required because
    :class:`dpjax.PoissonSampler` pads batches with copies of example 0, which
    must not count as examples. A parameter used twice (weight tying),
    transformed before use, or used outside a ghost layer is refused, since the
    per-layer norms would then not bound the example's whole gradient.

    A model that mixes examples (BatchNorm, `x - x.mean(axis=0)`, a softmax
    over the batch's rows, a loss relative to the batch's mean loss) breaks the
    bound, and the norms it gives are not the examples' gradient norms: one
    example moves every row's gradient. It is refused by a probe, run once per
    trace: with random parameters of the model's shapes and dtypes (not the
    model's own: a zero-initialized model may ignore its input) and a random
    batch of the batch's shapes and dtypes on 3 rows (floats uniform in
    [0, 1), integers in {0, 1}, booleans; the real batch size if the model
    cannot run on 3 rows), it checks that (1) replacing one row (floats
    redrawn, integers and booleans flipped) changes no other row's loss and no
    other row of any ghost layer's input; (2) each row's loss and layer inputs
    are the same when the row is evaluated alone, as a batch of 1 (skipped if
    the model cannot run on 1 row); (3) the gradient of each row's loss
    reaches no other row of any ghost layer's output or floating-point input.
    Values may differ by `sqrt(eps)` of their dtype (3.5e-4 for float32) times
    the largest value compared; integers must be equal. Non-finite probe
    losses, batch dtypes it cannot draw, and a `losses_fn` that closes over
    traced values are refused too. The probe is evidence at one random point,
    not a proof: mixing that shows only for other parameter values, inputs
    (e.g. token ids >= 2, floats outside [0, 1)) or batch sizes, or that is
    weaker than the tolerance, is not seen. If in doubt, use
    :func:`dpjax.per_example_grads` (vmap), which evaluates each example alone.

    Norms and sums are computed in float32; on accelerators whose matmuls
    default to reduced precision (TF32), the norm and the summed gradient
    carry that rounding (relative 1e-3), as every gradient does there; set
    `jax_default_matmul_precision='highest'` for full float32. C is validated
    (finite, >= 1e-6). A batch whose mask is all False (what
    :class:`dpjax.PoissonSampler` gives for an empty draw) gives an exact zero
    sum; a batch with no rows at all (B = 0) is not supported.

    References:
      Goodfellow, "Efficient Per-Example Gradient Computations", 2015.
      Li, Tramer, Liang, Hashimoto, "Large Language Models Can Be Strong
      Differentially Private Learners", ICLR 2022 (ghost norms).
      Bu, Wang, Zha, Karypis, "Differentially Private Optimization on Large
      Model at Small Cost", ICML 2023 (book-keeping: one backward pass).
    """
    c = _clipping.check_clip(l2_norm)
    probed: set = set()  # the shapes and dtypes of (params, batch) the probe has passed

    def fn(
        params: PyTree, batch: PyTree, mask: jax.typing.ArrayLike, support: PyTree = None
    ) -> _clipping.ClippedSum:
        if support is not None:
            raise ValueError(
                "ghost clipping cannot restrict per-example gradients to a support (top-k): it "
                "never forms them, and a layer's norm from its inputs and output gradients is the "
                "norm of the dense gradient. Use dpjax.per_example_grads with "
                "dpjax.clip_per_example (vmap) for sparse updates."
            )
        b = _per_example.batch_size(batch)
        mask = _validation.check_mask(mask, b, jax.tree.map(jnp.shape, batch))
        outs, slots, treedef = _discover(losses_fn, params, batch, b)
        signature = _signature((params, batch))
        if signature not in probed:
            _check_no_mixing(losses_fn, params, batch)
            probed.add(signature)
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
        if isinstance(c, _clipping.GroupClipNorms):
            groups = _layer_groups(c, params, slots)
            sq: dict[str, Any] = {}
            for layer, group in zip(per_layer, groups, strict=True):
                sq[group] = sq.get(group, 0.0) + layer.sq_norms
            by_group, keep, stats = _clipping.group_clip_weights(
                {g: jnp.sqrt(v) for g, v in sq.items()}, c, mask
            )
            layer_weights = [by_group[g] for g in groups]
        else:
            norms = jnp.sqrt(sum(layer.sq_norms for layer in per_layer))
            weights, keep, stats = _clipping.clip_weights(norms, c, mask)
            layer_weights = [weights] * len(per_layer)
        leaves: list = [None] * treedef.num_leaves
        for layer, layer_slots, w in zip(per_layer, slots, layer_weights, strict=True):
            for grad, slot in zip(layer.weighted_sum(w, keep), layer_slots, strict=True):
                if slot is not None:
                    assert grad is not None  # a parameter that is present has a gradient
                    i, shape, dtype = slot
                    leaves[i] = grad.reshape(shape).astype(jnp.promote_types(dtype, jnp.float32))
        return _clipping.ClippedSum(
            jax.tree.unflatten(treedef, leaves), stats, _clipping.sensitivity_of(c)
        )

    return fn


def _layer_groups(clip: _clipping.GroupClipNorms, params: PyTree, slots: list) -> list[str]:
    """The group label of every ghost layer; its parameters must share one."""
    labels = clip.leaf_labels(params)
    groups = []
    for layer_slots in slots:
        names = {labels[slot[0]] for slot in layer_slots if slot is not None}
        if len(names) != 1:
            raise ValueError(
                f"a ghost layer's parameters carry the labels {sorted(names)}; ghost clipping "
                "computes one norm per layer, so per-group clipping needs one label per layer. "
                "Label the layer's kernel and bias alike, or use dpjax.per_example_grads."
            )
        groups.append(names.pop())
    return groups


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
        nothing else, if a layer's first axis is not the batch, or if the losses
        are not `(B,)`.
    """
    traced: list = []
    calls: list = []

    def trace(p, batch_):  # a fresh function each call: no trace cache
        traced.extend(jax.tree.leaves(p))
        with _recording(None) as tape:
            _check_losses(losses_fn(p, batch_), b)
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
        if not isinstance(v, jex_core.Literal) and v in param_vars
    } | {param_vars[v] for v in closed.jaxpr.outvars if v in param_vars}
    position = {id(leaf): i for i, leaf in enumerate(traced)}
    used_ids = [tuple(None if a is None else id(a) for a in c.params) for c in calls]
    used = [position.get(i, -1) for ids in used_ids for i in ids if i is not None]
    if read or sorted(used) != list(range(n)):
        raise ValueError(
            "ghost clipping needs every parameter to be used, unchanged, by exactly one ghost "
            "layer (GhostLinear/GhostConv/GhostEmbed/GhostLayerNorm/GhostGroupNorm/GhostDense or the ghost_* "
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


def _signature(tree: PyTree) -> tuple:
    """The structure, shapes and dtypes of `tree` (hashable; tracers allowed)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves)


def _check_no_mixing(losses_fn: Callable, params: PyTree, batch: PyTree) -> None:
    """Refuses a model whose examples mix, as a probe on random inputs sees it (host side).

    The probe (:func:`_mixing_probe`) computes with concrete random arrays of the
    shapes and dtypes of `params` and `batch` (their values are not read), so it
    runs numerically even while an enclosing `jax.jit` traces them.

    Raises:
      ValueError: naming what the probe saw, and the fix.
    """
    problem = _mixing_probe(losses_fn, params, batch)
    if problem is not None:
        raise ValueError(
            "ghost clipping needs each example's loss, and each ghost layer's input in its row, "
            "to depend on that example alone, but a probe of losses_fn on random parameters and "
            f"a random batch found that {problem}. The model mixes examples or depends on the "
            "batch size (e.g. batch statistics such as x - x.mean(axis=0) or BatchNorm, a "
            "softmax over the batch's rows, a loss relative to the batch's mean loss), so the "
            "ghost norms would not bound one example's contribution to the clipped sum. Use "
            "dpjax.per_example_grads (vmap) with dpjax.clip_and_sum for this model (the "
            "trainer's clipping='vmap'): it evaluates each example alone."
        )


def _mixing_probe(losses_fn: Callable, params: PyTree, batch: PyTree) -> str | None:
    """What a probe on random inputs sees of examples mixing, or None if nothing.

    On random parameters shaped like `params` and a random batch shaped like
    `batch` (`_PROBE_ROWS` rows, or as many as `batch` has if the model cannot
    run on fewer), checks three rows r (first, middle, last):

    1. replacing row r changes no other row's loss or ghost layer input;
    2. row r's loss and ghost layer inputs are the same evaluated alone;
    3. the gradient of row r's loss reaches no other row of any ghost layer's
       output (the taps) or of any floating-point input.

    The model runs in one function, compiled ahead of time for the probe's
    batch and for a batch of 1 and called on concrete NumPy arrays, so it runs
    now even while an enclosing `jax.jit` traces `params` and `batch`; inputs
    are drawn and results compared in NumPy.
    """
    rng = np.random.default_rng(_PROBE_SEED)
    param_leaves, param_def = jax.tree.flatten(params)
    probe_params = jax.tree.unflatten(param_def, [_random_param(rng, p) for p in param_leaves])
    specs, batch_def = jax.tree.flatten(batch)
    dtypes = [jnp.result_type(x) for x in specs]
    for dtype in dtypes:
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
            if dtype != jnp.bool_:
                return f"the batch has a leaf of dtype {dtype}, which the probe cannot draw"
    is_float = [jnp.issubdtype(dtype, jnp.floating) for dtype in dtypes]

    def tap_shapes(n):  # zeros like the ghost layers' outputs on n rows; None if the model fails
        def trace(xs):
            with _recording(None) as tape:
                losses = losses_fn(probe_params, jax.tree.unflatten(batch_def, xs))
            return losses, [call.out for call in tape.calls]

        rows = [
            jax.ShapeDtypeStruct((n, *jnp.shape(x)[1:]), t)
            for x, t in zip(specs, dtypes, strict=True)
        ]
        try:
            losses, outs = jax.eval_shape(trace, rows)
        except Exception:  # any failure: perhaps a model that needs another batch size
            return None
        if losses.shape != (n,) or not jnp.issubdtype(losses.dtype, jnp.floating):
            return None
        return [np.zeros(o.shape, o.dtype) for o in outs], losses.dtype

    def evaluate(p, taps, xs, cotangents):  # losses, layer inputs, grads of cotangents @ losses
        def run(taps, floats):  # the floating-point leaves of the batch are `floats`
            it = iter(floats)
            leaves = [next(it) if f else x for x, f in zip(xs, is_float, strict=True)]
            with _recording(taps) as tape:
                losses = losses_fn(p, jax.tree.unflatten(batch_def, leaves))
            return losses, [call.inputs for call in tape.calls]

        floats = [x for x, f in zip(xs, is_float, strict=True) if f]
        losses, pull, inputs = jax.vjp(run, taps, floats, has_aux=True)
        return losses, inputs, jax.vmap(pull)(cotangents)

    def compiled(taps, xs, cotangents):  # `evaluate` on the probe's parameters, compiled now
        args = (probe_params, taps, xs, cotangents)
        closed = (traced := jax.jit(evaluate).trace(*args)).jaxpr
        if len(closed.in_avals) != len(jax.tree.leaves(args)) or any(
            isinstance(c, jax.core.Tracer) for c in closed.consts
        ):  # values of an enclosing trace, made extra inputs (or constants) of this one
            return None
        options = _PROBE_COMPILER_OPTIONS.get(jax.default_backend())
        return functools.partial(traced.lower().compile(options), probe_params)

    b = _per_example.batch_size(batch)
    n, shapes = _PROBE_ROWS, tap_shapes(_PROBE_ROWS)
    if shapes is None and b != _PROBE_ROWS:  # e.g. a reshape to the batch size
        n, shapes = b, tap_shapes(b)
    if shapes is None:
        return f"losses_fn does not return ({n},) floating-point losses for a batch of {n} rows"
    (taps, dtype), rows = shapes, sorted({0, n // 2, n - 1})
    xs = [_random_rows(rng, (n, *jnp.shape(x)[1:]), t) for x, t in zip(specs, dtypes, strict=True)]
    cotangents = np.eye(n, dtype=dtype)[rows]
    run = compiled(taps, xs, cotangents)
    if run is None:
        return (
            "losses_fn closes over values traced by an enclosing transformation, so it cannot "
            "be evaluated on concrete inputs (pass such values in the parameters or the batch)"
        )
    losses, inputs, (tap_grads, float_grads) = _to_host(run(taps, xs, cotangents))
    if not np.all(np.isfinite(losses)):
        return f"the losses {losses} are not finite, so mixing cannot be ruled out"
    single = tap_shapes(1) if n > 1 else None  # None if the model cannot run on one row
    if single is not None:
        taps_1, one = single[0], np.ones((1, 1), dtype)
        run_alone = compiled(taps_1, [x[:1] for x in xs], one)
        assert run_alone is not None  # the same closure as `run`, which compiled
    for k, r in enumerate(rows):
        others = np.arange(n) != r
        # 1. Replace row r: nothing else may move.
        losses_r, inputs_r, _ = _to_host(run(taps, _replace_row(rng, xs, r), cotangents))
        if len(inputs_r) != len(inputs):
            return f"the number of ghost layer calls changed when row {r} was replaced"
        if (o := _row_that_differs(losses, losses_r, others)) is not None:
            return (
                f"row {o}'s loss changed from {float(losses[o]):.6g} to "
                f"{float(losses_r[o]):.6g} when only row {r} of the batch was replaced"
            )
        for i, (x, x_r) in enumerate(zip(inputs, inputs_r, strict=True)):
            if (o := _row_that_differs(x, x_r, others)) is not None:
                return f"row {o} of ghost layer {i}'s input changed when only row {r} was replaced"
        # 2. Row r alone, as a batch of one, must give the same values.
        if single is not None:
            losses_1, inputs_1, _ = _to_host(run_alone(taps_1, [x[r : r + 1] for x in xs], one))
            if len(inputs_1) != len(inputs):
                return f"the number of ghost layer calls differs when row {r} is alone"
            if _row_that_differs(losses, _set_row(losses, r, losses_1[0]), ~others) is not None:
                return (
                    f"row {r}'s loss is {float(losses[r]):.6g} in a batch of {n} but "
                    f"{float(losses_1[0]):.6g} evaluated alone (a batch of 1)"
                )
            for i, (x, x_1) in enumerate(zip(inputs, inputs_1, strict=True)):
                if x_1.shape != (1, *x.shape[1:]) or (
                    _row_that_differs(x, _set_row(x, r, x_1[0]), ~others) is not None
                ):
                    return f"row {r} of ghost layer {i}'s input differs when the row is alone"
        # 3. The gradient of row r's loss stays in row r.
        for i, g in enumerate(tap_grads):
            if (o := _row_that_differs(g[k], np.zeros_like(g[k]), others)) is not None:
                return f"the gradient of row {r}'s loss reaches row {o} of ghost layer {i}'s output"
        for i, g in enumerate(float_grads):
            if (o := _row_that_differs(g[k], np.zeros_like(g[k]), others)) is not None:
                return (
                    f"the gradient of row {r}'s loss reaches row {o} of floating-point batch "
                    f"input {i}"
                )
    return None


def _to_host(tree: PyTree) -> PyTree:
    """Every leaf as a NumPy array."""
    return jax.tree.map(np.asarray, tree)


def _set_row(x: np.ndarray, r: int, row: np.ndarray) -> np.ndarray:
    """A copy of `x` with row `r` set to `row`."""
    out = x.copy()
    out[r] = row
    return out


def _random_param(rng: np.random.Generator, like: jax.Array) -> np.ndarray:
    """Normal with variance 1/fan-in (the last axis is the output) of `like`'s shape and dtype."""
    shape, dtype = jnp.shape(like), jnp.result_type(like)
    if not jnp.issubdtype(dtype, jnp.floating):
        return np.zeros(shape, dtype)
    return (rng.standard_normal(shape) / np.sqrt(max(1, math.prod(shape[:-1])))).astype(dtype)


def _random_rows(rng: np.random.Generator, shape: tuple, dtype: Any) -> np.ndarray:
    """Floats uniform in [0, 1), integers in {0, 1}, or booleans."""
    if jnp.issubdtype(dtype, jnp.floating):
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)  # booleans too


def _replace_row(rng: np.random.Generator, xs: Sequence[np.ndarray], r: int) -> list[np.ndarray]:
    """`xs` with row `r` replaced: floats redrawn, integers `1 - x` (0 <-> 1), booleans negated."""
    out = []
    for x in xs:
        y = x.copy()
        if jnp.issubdtype(x.dtype, jnp.floating):
            y[r] = _random_rows(rng, x.shape[1:], x.dtype)
        else:
            y[r] = ~x[r] if x.dtype == np.bool_ else 1 - x[r]
        out.append(y)
    return out


def _row_that_differs(a: np.ndarray, b: np.ndarray, rows: np.ndarray) -> int | None:
    """The first row in `rows` (boolean `(n,)`) where `a` and `b` differ, or None (host side).

    Floating-point values may differ by `sqrt(eps)` of their dtype (3.5e-4 for
    float32) times the largest finite `|a|` or `|b|`: a batch of 1, or other
    values in other rows, may change the order of a sum. Integers must be
    equal; NaN differs from everything.
    """
    if a.shape != b.shape:
        return int(np.argmax(rows))
    if jnp.issubdtype(a.dtype, jnp.inexact):
        rtol = float(jnp.finfo(a.dtype).eps) ** 0.5
        a, b = (v.astype(np.complex128 if np.iscomplexobj(v) else np.float64) for v in (a, b))
        size = np.abs(np.concatenate([a.ravel(), b.ravel()]))
        with np.errstate(invalid="ignore"):  # inf - inf
            same = (a == b) | (np.abs(a - b) <= rtol * np.max(size[np.isfinite(size)], initial=0))
    else:
        same = a == b
    differs = rows & ~same.reshape(len(same), math.prod(same.shape[1:])).all(axis=1)
    return int(np.argmax(differs)) if differs.any() else None


def is_ghost_compatible(losses_fn: Callable, params: PyTree, batch: PyTree) -> bool:
    """Whether :func:`ghost_clipped_grads` can handle this model (host side).

    Traces `losses_fn` once on the shapes of `params` and `batch`, then runs
    the mixing probe described in :func:`ghost_clipped_grads` (random
    parameters and a random batch of those shapes and dtypes; the values of
    `params` and `batch` are not used).

    Args:
      losses_fn: `(params, batch) -> (B,)` per-example losses.
      params: the parameters (only shapes and dtypes are used).
      batch: an example batch (only shapes and dtypes are used).

    Returns:
      True if every parameter is used, unchanged, by exactly one ghost layer and
      nothing else, every ghost layer keeps the examples on its first axis, and
      the probe saw no mixing of examples: no row's loss or ghost layer input
      moved when another row was replaced, none changed when its row was
      evaluated alone, and no row's loss had a gradient in another row.

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> graphdef, params = nnx.split(dpjax.ghost.GhostLinear(3, 2, rngs=nnx.Rngs(0)))
      >>> losses = lambda p, x: nnx.merge(graphdef, p)(x).sum(axis=1)
      >>> dpjax.ghost.is_ghost_compatible(losses, params, jnp.ones((4, 3)))
      True
      >>> centred = lambda p, x: losses(p, x - x.mean(axis=0, keepdims=True))  # mixes rows
      >>> dpjax.ghost.is_ghost_compatible(centred, params, jnp.ones((4, 3)))
      False

    **Privacy:** True is evidence, not a proof, that the model does not mix
    examples; see :func:`ghost_clipped_grads` for what the probe checks and
    what it cannot see. :func:`ghost_clipped_grads` runs the same checks
    itself, so calling this first is never required for safety.
    """
    try:
        _discover(losses_fn, params, batch, _per_example.batch_size(batch))
        _check_no_mixing(losses_fn, params, batch)
    except ValueError:
        return False
    return True
