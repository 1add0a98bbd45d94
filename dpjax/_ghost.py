"""Book-keeping ghost clipping: per-example clipping in ONE backward pass.

A dense layer `y = x W + b` gives example i the kernel gradient `x_i^T g_i`
(`g_i` the gradient of its loss at `y_i`); a convolution is a dense layer over
its input patches, so the same holds with `x_i` the patch matrix. Each
example's squared gradient norm therefore follows from `x_i` and `g_i` alone:
`||x_i||^2 ||g_i||^2` for one row, `sum_{t,t'} (x_it . x_it') (g_it . g_it')`
(the "ghost norm") or `||x_i^T g_i||^2` for many rows, whichever is cheaper.
Once the clip factors `s_i = min(1, C / ||grad_i||)` are known, the clipped
sum of kernel gradients is `x^T (s * g)`: one matmul, the same work as an
ordinary weight gradient. So a DP step costs one forward pass, one backward
pass for the layer outputs, and the norms; no second backward pass and no
`B x num_params` array.

How the outputs' gradients get out: while :func:`ghost_clipped_grads` traces
the model, every :func:`ghost_dense` / :func:`ghost_conv` layer adds a zero
"tap" to its output and records its input; the gradient with respect to the
taps is exactly `g`. Outside that trace the layers are plain dense and
convolution layers.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
from jax import lax

from dpjax import _clipping, _per_example, _validation

PyTree = Any
_TAPE = threading.local()


class _Call(NamedTuple):
    """One ghost layer call: its input, parameters and output, and how to read them."""

    inputs: jax.Array  # the layer's input, `(B, ...)`
    to_rows: Callable[[jax.Array], jax.Array]  # inputs -> `(B, T, K)`: tokens or patches
    kernel_grad: Callable[[jax.Array, jax.Array], jax.Array]  # (inputs, out grads) -> d kernel
    kernel: jax.Array  # `(..., d_out)`; flattens to `(K, d_out)` in the order of `rows`
    bias: jax.Array | None
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


def _tapped(out, inputs, to_rows, kernel_grad, kernel, bias) -> jax.Array:
    tape = getattr(_TAPE, "tape", None)
    if tape is None:
        return out
    return tape.tap(_Call(inputs, to_rows, kernel_grad, kernel, bias, out))


def ghost_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """`x @ kernel + bias` over the last axis of `x`, ghost-clipping aware.

    Args:
      x: `(B, ..., d_in)`, the leading axis indexing examples.
      kernel: `(d_in, d_out)`.
      bias: `(d_out,)` or None.

    Returns:
      `(B, ..., d_out)`.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> dpjax.ghost_dense(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)).shape
      (2, 4)

    **Privacy:** inside :func:`ghost_clipped_grads` the layer's `kernel` and
    `bias` gradients are clipped per example; the first axis of `x` must
    therefore index examples, and the layer must not mix them.
    """
    out = jnp.matmul(x, kernel)
    if bias is not None:
        out = out + bias.reshape((1,) * (out.ndim - 1) + (-1,))
    return _tapped(
        out,
        x,
        lambda v: v.reshape(v.shape[0], -1, v.shape[-1]),
        lambda v, g: jnp.einsum("...i,...o->io", v, g),
        kernel,
        bias,
    )


def ghost_conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[int] | Sequence[tuple[int, int]] = "SAME",
    kernel_dilation: int | Sequence[int] = 1,
) -> jax.Array:
    """Channels-last convolution (`lax.conv_general_dilated`), ghost-clipping aware.

    Args:
      x: `(B, *spatial, c_in)`, the leading axis indexing examples.
      kernel: `(*window, c_in, c_out)` (the `flax` layout).
      bias: `(c_out,)` or None.
      strides: one int, or one per spatial axis.
      padding: 'SAME', 'VALID', one int, one int per spatial axis, or one
        `(low, high)` pair per spatial axis.
      kernel_dilation: one int, or one per spatial axis.

    Returns:
      `(B, *out_spatial, c_out)`.

    Raises:
      ValueError: if the shapes or options do not fit together.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> dpjax.ghost_conv(jnp.ones((2, 8, 8, 1)), jnp.ones((3, 3, 1, 4)), strides=2).shape
      (2, 4, 4, 4)

    **Privacy:** inside :func:`ghost_clipped_grads` the layer's `kernel` and
    `bias` gradients are clipped per example (from the input patches and the
    output gradients, Rochette et al. 2019); the first axis of `x` must index
    examples.

    References:
      Rochette, Manoel, Tramel, "Efficient Per-Example Gradient Computations
      in Convolutional Neural Networks", 2019, https://arxiv.org/abs/1912.06015.
    """
    n = kernel.ndim - 2
    if n < 1 or x.ndim != n + 2 or x.shape[-1] != kernel.shape[-2]:
        raise ValueError(
            f"ghost_conv got x of shape {x.shape} and kernel of shape {kernel.shape}; pass x as "
            "(B, *spatial, c_in) and kernel as (*window, c_in, c_out) with the same c_in."
        )
    window = kernel.shape[:n]
    strides_, dilation = (
        _per_axis(strides, n, "strides"),
        _per_axis(kernel_dilation, n, "kernel_dilation"),
    )
    pads = _explicit_padding(padding, x.shape[1:-1], window, strides_, dilation)

    def conv(v, k):
        return lax.conv_general_dilated(
            v,
            k,
            strides_,
            pads,
            rhs_dilation=dilation,
            dimension_numbers=lax.conv_dimension_numbers(v.shape, k.shape, _conv_layout(n)),
        )

    def kernel_grad(v, g):  # the ordinary weight gradient: XLA's backward-filter convolution
        return jax.vjp(lambda k: conv(v, k), jnp.zeros(kernel.shape, v.dtype))[1](g)[0]

    out = conv(x, kernel)
    if bias is not None:
        out = out + bias.reshape((1,) * (out.ndim - 1) + (-1,))
    out_spatial = out.shape[1:-1]
    return _tapped(
        out,
        x,
        lambda v: _patches(v, window, strides_, pads, dilation, out_spatial),
        kernel_grad,
        kernel,
        bias,
    )


def _as_tuple(value) -> tuple:
    return (1,) if value is None else (value,) if isinstance(value, int) else tuple(value)


def _conv_layout(n: int) -> tuple[str, str, str]:
    spatial = "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


def _per_axis(value, n: int, name: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ValueError(f"{name}={value!r} is invalid; pass a positive int or {n} positive ints.")
    return values


def _explicit_padding(padding, spatial, window, strides, dilation) -> list[tuple[int, int]]:
    n = len(window)
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"padding={padding!r} is not supported by ghost_conv; pass 'SAME', 'VALID' or "
                "explicit pads (pad the input yourself for circular or reflect padding)."
            )
        dilated = [(k - 1) * d + 1 for k, d in zip(window, dilation, strict=True)]
        return [tuple(p) for p in lax.padtype_to_pads(spatial, dilated, strides, padding.upper())]
    if isinstance(padding, int):
        return [(padding, padding)] * n
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != n or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding={padding!r} is invalid; pass {n} ints or {n} (low, high) pairs.")
    return pads


def _patches(x, window, strides, pads, dilation, out_spatial) -> jax.Array:
    """`(B, prod(out_spatial), prod(window) * c_in)` by strided slicing (no arithmetic)."""
    xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    b, c = x.shape[0], x.shape[-1]
    slices = []
    for offset in itertools.product(*(range(k) for k in window)):
        lows = [o * d for o, d in zip(offset, dilation, strict=True)]
        highs = [lo + (m - 1) * s + 1 for lo, m, s in zip(lows, out_spatial, strides, strict=True)]
        slices.append(lax.slice(xp, [0, *lows, 0], [b, *highs, c], (1, *strides, 1)))
    return jnp.stack(slices, axis=-2).reshape(b, math.prod(out_spatial), len(slices) * c)


class GhostLinear(nnx.Linear):
    """`nnx.Linear` whose gradients :func:`ghost_clipped_grads` can clip per example.

    Same parameters, initialisation and result as `nnx.Linear` (no
    dtype/precision options: it computes in the parameters' dtype).

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> dpjax.GhostLinear(3, 2, rngs=nnx.Rngs(0))(jnp.ones((5, 3))).shape
      (5, 2)
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:  # type: ignore[override]
        bias = self.bias[...] if self.bias is not None else None
        return ghost_dense(inputs, self.kernel[...], bias)


class GhostConv(nnx.Conv):
    """`nnx.Conv` whose gradients :func:`ghost_clipped_grads` can clip per example.

    Same parameters, initialisation and result as `nnx.Conv` for inputs with
    one batch axis, with 'SAME', 'VALID' or explicit zero padding, any strides
    and kernel dilation. It computes in the parameters' dtype.

    Raises:
      ValueError: if an option it does not support is passed (input dilation,
        feature groups, a kernel mask, circular/causal/reflect padding, dtype).

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> dpjax.GhostConv(1, 4, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1))).shape
      (2, 8, 8, 4)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsupported = {
            "input_dilation": any(d != 1 for d in _as_tuple(self.input_dilation)),
            "feature_group_count": self.feature_group_count != 1,
            "mask": self.mask is not None,
            "dtype": self.dtype is not None,
            "padding": isinstance(self.padding, str)
            and self.padding.upper() not in ("SAME", "VALID"),
        }
        bad = [name for name, is_bad in unsupported.items() if is_bad]
        if bad:
            raise ValueError(
                f"GhostConv does not support {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}; "
                "leave them at their defaults or use nnx.Conv with clipping='vmap'."
            )

    def __call__(self, inputs: jax.Array) -> jax.Array:  # type: ignore[override]
        bias = self.bias[...] if self.bias is not None else None
        return ghost_conv(
            inputs,
            self.kernel[...],
            bias,
            strides=1 if self.strides is None else self.strides,
            padding=self.padding,
            kernel_dilation=1 if self.kernel_dilation is None else self.kernel_dilation,
        )


class GhostDense(nn.Dense):
    """`flax.linen.Dense` whose gradients :func:`ghost_clipped_grads` can clip per example.

    Same parameter names, shapes and initialisers as `nn.Dense` (no
    dtype/precision options: it computes in the parameters' dtype).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> layer = dpjax.GhostDense(2)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((1, 3)))
      >>> layer.apply(variables, jnp.ones((5, 3))).shape
      (5, 2)
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:  # type: ignore[override]
        kernel = self.param(
            "kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features), self.param_dtype
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        return ghost_dense(inputs, kernel, bias)


def ghost_clipped_grads(
    losses_fn: Callable[[PyTree, PyTree], jax.Array], *, l2_norm: float
) -> Callable[[PyTree, PyTree, jax.Array | None], tuple[PyTree, _clipping.ClipStats]]:
    """Clipped SUM of per-example gradients in one backward pass (book-keeping ghost clipping).

    `losses_fn(params, batch)` returns the vector of per-example losses `(B,)`,
    computed on the whole batch at once, by a model whose every parameter lives
    in a ghost layer (:class:`GhostLinear`, :class:`GhostConv`,
    :class:`GhostDense`, :func:`ghost_dense`, :func:`ghost_conv`). One
    backward pass gives each layer's output gradients `g`; with the recorded
    inputs `x` they give every example's gradient norm and then each layer's
    clipped sum `x^T (s * g)`, `s_i = min(1, C / ||grad_i||)`. The result
    equals :func:`clip_and_sum` of the per-example gradients.

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
    (no BatchNorm).

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
        layers, treedef = _discover(losses_fn, params, batch)

        calls: list[_Call] = []

        def tapped_loss(taps):
            with _recording(taps) as tape:
                loss = jnp.sum(jnp.where(mask, losses_fn(params, batch), 0.0))
            calls.extend(tape.calls)
            return loss, [call.inputs for call in tape.calls]

        taps = [jnp.zeros(out.shape, out.dtype) for out, _, _ in layers]
        loss, vjp_fn, inputs = jax.vjp(tapped_loss, taps, has_aux=True)
        (outs,) = vjp_fn(jnp.ones_like(loss))
        per_layer = [
            _LayerGrads(call, x.astype(jnp.float32), g.astype(jnp.float32), bias_i is not None)
            for call, x, g, (_, _, bias_i) in zip(calls, inputs, outs, layers, strict=True)
        ]
        norms = jnp.sqrt(sum(layer.sq_norms for layer in per_layer))
        keep = jnp.isfinite(norms) & mask
        weights = jnp.where(
            keep, jnp.minimum(1.0, c / jnp.maximum(jnp.where(keep, norms, 1.0), 1e-30)), 0.0
        )
        leaves: list = [None] * treedef.num_leaves
        for layer, (_, (ki, kshape, kdtype), bias_i) in zip(per_layer, layers, strict=True):
            dkernel, dbias = layer.weighted_sum(weights, keep)
            leaves[ki] = dkernel.reshape(kshape).astype(jnp.promote_types(kdtype, jnp.float32))
            if bias_i is not None:
                bi, bdtype = bias_i
                leaves[bi] = dbias.astype(jnp.promote_types(bdtype, jnp.float32))
        stats = _clipping.ClipStats(
            num_nonfinite=jnp.sum(mask & ~jnp.isfinite(norms)).astype(jnp.int32),
            num_clipped=jnp.sum(keep & (norms > c)).astype(jnp.int32),
        )
        return jax.tree.unflatten(treedef, leaves), stats

    return fn


_CHUNK = 64  # examples per step of the per-example loops: their patches stay in cache


class _LayerGrads:
    """One layer's per-example gradient norms and weighted gradient sum.

    `x` is the layer's input and `g` the gradient at its output, each with the
    examples on the first axis. With `rows_i` the `T x K` tokens or patches
    of example i and `g_i` its `T x O` output gradients, the kernel gradient
    is `rows_i^T g_i` and the bias gradient `sum_t g_it`. The norms:

    * `T = 1`: `||rows_i||^2 ||g_i||^2`;
    * `K * O <= T * (K + O)`: the per-example kernel gradients are no bigger
      than `rows_i` and `g_i`, so they are materialized once (book-keeping),
      and the weighted sum reads them;
    * otherwise the ghost norm `sum_{t,t'} (rows_i rows_i^T)_{tt'} (g_i g_i^T)_{tt'}`,
      and the weighted sum is the layer's ordinary weight gradient at `w * g`.

    Per-example work runs in chunks of `_CHUNK` examples (`lax.map`), so that
    no `B x T x K` patch array is ever materialized.
    """

    def __init__(self, call: _Call, x: jax.Array, g: jax.Array, has_bias: bool):
        b = x.shape[0]
        self.call, self.x, self.g = call, x, g
        gs = g.reshape(b, -1, g.shape[-1])
        t, o = gs.shape[1], gs.shape[2]
        k = jax.eval_shape(call.to_rows, x[:1]).shape[2]
        self.bias = jnp.sum(gs, axis=1) if has_bias else None  # (B, O)
        self.per_example = None
        if t == 1:
            sq = jnp.sum(call.to_rows(x)[:, 0] ** 2, axis=1) * jnp.sum(gs[:, 0] ** 2, axis=1)
        elif k * o <= t * (k + o):

            def one(example):
                xi, gi = example
                pe = call.to_rows(xi[None])[0].T @ gi
                return jnp.sum(pe**2), pe

            sq, self.per_example = lax.map(one, (x, gs), batch_size=min(b, _CHUNK))
        else:

            def one(example):
                xi, gi = example
                rows = call.to_rows(xi[None])[0]
                return jnp.sum((rows @ rows.T) * (gi @ gi.T))

            sq = lax.map(one, (x, gs), batch_size=min(b, _CHUNK))
        self.sq_norms = sq if self.bias is None else sq + jnp.sum(self.bias**2, axis=1)

    def weighted_sum(self, w: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """`(sum_i w_i kernel_grad_i, sum_i w_i bias_grad_i)` over the rows in `keep`.

        Rows outside `keep` add exactly 0, even if their inputs or gradients
        are not finite.
        """

        def rows(v):
            return jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0.0)

        dbias = None if self.bias is None else jnp.einsum("b,bo->o", w, rows(self.bias))
        if self.per_example is not None:
            return jnp.einsum("b,bko->ko", w, rows(self.per_example)), dbias
        g = rows(self.g * w.reshape((-1,) + (1,) * (self.g.ndim - 1)))
        return self.call.kernel_grad(rows(self.x), g), dbias


def _discover(losses_fn: Callable, params: PyTree, batch: PyTree) -> tuple[list, Any]:
    """Traces `losses_fn` once (shapes only) and maps each ghost layer call to its parameters.

    Every parameter leaf must reach exactly one ghost layer as its kernel or bias,
    unchanged (the same traced array): then the per-layer norms add up to each
    example's whole gradient norm. A parameter used elsewhere, transformed first,
    or used twice (weight tying) fails the check.

    Returns:
      `([(output, (kernel_leaf, kernel_shape, dtype), (bias_leaf, dtype) | None)],
      treedef)`, one entry per ghost layer call, in call order.

    Raises:
      ValueError: unless every parameter is used by exactly one ghost layer.
    """
    traced: list = []
    used_ids: list = []

    def trace(p, b):  # a fresh function each call: no trace cache
        traced.extend(jax.tree.leaves(p))
        with _recording(None) as tape:
            losses_fn(p, b)
        used_ids.extend((id(c.kernel), None if c.bias is None else id(c.bias)) for c in tape.calls)
        return [call.out for call in tape.calls]

    outs = jax.eval_shape(trace, params, batch)
    position = {id(leaf): i for i, leaf in enumerate(traced)}
    used = [i for pair in used_ids for i in pair if i is not None]
    if sorted(used) != sorted(position):
        raise ValueError(
            "ghost clipping needs every parameter to be used, unchanged, by exactly one ghost "
            f"layer (GhostLinear/GhostConv/GhostDense/ghost_dense/ghost_conv); the ghost layers "
            f"used {len(used)} arrays but the model has {len(traced)} parameters of shapes "
            f"{[tuple(p.shape) for p in traced]}. Use dpjax.per_example_grads (vmap) for this "
            "model, or build it from ghost layers."
        )
    treedef = jax.tree.structure(params)
    leaves = jax.tree.leaves(params)
    layers = []
    for out, (kid, bid) in zip(outs, used_ids, strict=True):
        k = position[kid]
        kernel = (k, leaves[k].shape, leaves[k].dtype)
        bias = None if bid is None else (position[bid], leaves[position[bid]].dtype)
        layers.append((out, kernel, bias))
    return layers, treedef


def is_ghost_compatible(losses_fn: Callable, params: PyTree, batch: PyTree) -> bool:
    """Whether :func:`ghost_clipped_grads` can handle this model (host side, traces once).

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> graphdef, params = nnx.split(dpjax.GhostLinear(3, 2, rngs=nnx.Rngs(0)))
      >>> losses = lambda p, x: nnx.merge(graphdef, p)(x).sum(axis=1)
      >>> dpjax.is_ghost_compatible(losses, params, jnp.ones((4, 3)))
      True
    """
    try:
        _discover(losses_fn, params, batch)
    except ValueError:
        return False
    return True
