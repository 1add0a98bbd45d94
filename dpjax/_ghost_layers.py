"""Ghost layers: dense, convolution, embedding and scale/shift layers whose
gradients :func:`dpjax.ghost_clipped_grads` clips per example in one backward pass.

Each layer is a plain layer outside that function's trace. Inside it, the
layer reports its input, parameters and a rule that turns (input, output
gradient) into per-example gradient norms and a weighted gradient sum:

* dense `x W + b` and convolution (a dense layer over input patches, cut by
  strided slicing): `grad_i = rows_i^T g_i`. Small kernels materialize the
  per-example gradients once (book-keeping), large ones use ghost norms
  `sum_{t,t'} (rows rows^T)_{tt'} (g g^T)_{tt'}` and the layer's own weight
  gradient at `w * g`;
* embedding: `||grad_i||^2 = sum_{t,t'} [tok_t = tok_t'] g_t . g_t'`;
* scale/shift (LayerNorm's affine part, positional embeddings): the
  per-example gradients are no bigger than an activation and are materialized.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, cast

import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
from jax import lax

from dpjax._ghost import keep_rows, layer_params, per_example_map, record_layer

# ----------------------------------------------------------------------------- dense and conv


class _MatmulGrads:
    """Per-example norms and weighted sums for `out = rows @ kernel (+ bias)`.

    `rows_i` (`T x K`, tokens or patches) and `g_i` (`T x O`): the kernel
    gradient is `rows_i^T g_i`, the bias gradient `sum_t g_it`.

    * `T = 1`: `||rows_i||^2 ||g_i||^2`; weighted sum: the layer's weight gradient.
    * `K * O <= T * (K + O)`: the per-example kernel gradients are no bigger
      than `rows_i` and `g_i`; they are materialized once and both the norms and
      the weighted sum read them (book-keeping).
    * otherwise the ghost norm; weighted sum: the layer's weight gradient at `w * g`.
    """

    def __init__(self, x, g, *, to_rows, kernel_grad, has_bias: bool):
        x = x.astype(jnp.float32)  # integer inputs too: their squares must not wrap around
        gs = g.reshape(g.shape[0], -1, g.shape[-1])
        t, o = gs.shape[1], gs.shape[2]
        k = jax.eval_shape(to_rows, x[:1]).shape[2]
        self.x, self.g, self.kernel_grad = x, g, kernel_grad
        self.bias = jnp.sum(gs, axis=1) if has_bias else None  # (B, O)
        self.per_example = None
        if t == 1:
            sq = jnp.sum(to_rows(x)[:, 0] ** 2, axis=1) * jnp.sum(gs[:, 0] ** 2, axis=1)
        elif k * o <= t * (k + o):

            def one(example):
                xi, gi = example
                grad = to_rows(xi[None])[0].T @ gi
                return jnp.sum(grad**2), grad

            sq, self.per_example = per_example_map(one, (x, gs), 4 * (t * (k + o) + k * o))
        else:

            def one_bound(example):
                xi, gi = example
                rows = to_rows(xi[None])[0]
                norms = jnp.linalg.norm(rows, axis=1), jnp.linalg.norm(gi, axis=1)
                grams = _matmul(rows, rows.T), _matmul(gi, gi.T)
                return _gram_upper_bound(*grams, *norms, k, o)

            sq = per_example_map(one_bound, (x, gs), 4 * (t * (k + o) + 2 * t * t))
        self.sq_norms = sq if self.bias is None else sq + jnp.sum(self.bias**2, axis=1)

    def weighted_sum(self, w, keep):
        dbias = None if self.bias is None else w @ keep_rows(keep, self.bias)
        if self.per_example is not None:
            return jnp.einsum("b,bko->ko", w, keep_rows(keep, self.per_example)), dbias
        return self.kernel_grad(keep_rows(keep, self.x), keep_rows(keep, self.g, w)), dbias


def _matmul(a, b):
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


_F32_UNIT = 2.0**-24


def _gram_upper_bound(a, g, a_norms, g_norms, k: int, o: int) -> jax.Array:
    """An upper bound on the squared norm `sum(A * G)` from its float32 value.

    `A` is the `T x T` Gram matrix of the rows (dot products of length `k`, row
    norms `a_norms`) or, with `a_norms` None, an exact 0/1 token-equality
    matrix; `G` the Gram matrix of the output gradients (length `o`, row norms
    `g_norms`). Rounding in the dot products and the sum can cancel the true
    value away (two nearly opposite tokens), so the computed value gets the
    standard first-order error bound, with u = 2^-24 and a factor 2 of margin:
    `(k+2) u sum |a_t||a_t'| |G| + (o+2) u sum |A| |g_t||g_t'| + (T^2+2) u sum |A G|`
    (plus the second-order term). Typical overestimate: about 1e-4 of the norm.
    """
    t2 = a.shape[0] ** 2
    g_outer = g_norms[:, None] * g_norms[None, :]
    err = (o + 2) * jnp.sum(jnp.abs(a) * g_outer) + (t2 + 2) * jnp.sum(jnp.abs(a * g))
    if a_norms is not None:
        a_outer = a_norms[:, None] * a_norms[None, :]
        err = err + (k + 2) * jnp.sum(a_outer * jnp.abs(g))
        err = err + (k + 2) * (o + 2) * _F32_UNIT * jnp.sum(a_outer * g_outer)
    return jnp.maximum(jnp.sum(a * g), 0.0) + 2.0 * _F32_UNIT * err


def _dense_rows(v):
    return v.reshape(v.shape[0], -1, v.shape[-1])


def _dense_kernel_grad(v, g):
    return jnp.einsum("...i,...o->io", v, g)


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
      >>> dpjax.ghost.ghost_dense(jnp.ones((2, 3)), jnp.ones((3, 4)), jnp.zeros(4)).shape
      (2, 4)

    **Privacy:** inside :func:`ghost_clipped_grads` the layer's `kernel` and
    `bias` gradients are clipped per example; the first axis of `x` must
    therefore index examples, and the layer must not mix them.
    """
    k, b = layer_params(kernel, bias)
    assert k is not None  # a dense layer always has a kernel
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        x = jnp.asarray(x, k.dtype)  # integer inputs (pixels, counts) enter as the kernel's dtype
    out = jnp.matmul(x, k)
    if b is not None:
        out = out + b.reshape((1,) * (out.ndim - 1) + (-1,))

    def grads(v, g):
        return _MatmulGrads(
            v, g, to_rows=_dense_rows, kernel_grad=_dense_kernel_grad, has_bias=bias is not None
        )

    return record_layer(out, x, (kernel, bias), grads)


def ghost_conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: int | Sequence[int] = 1,
    padding: str | int | Sequence[int | tuple[int, int]] = "SAME",
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
      >>> dpjax.ghost.ghost_conv(jnp.ones((2, 8, 8, 1)), jnp.ones((3, 3, 1, 4)), strides=2).shape
      (2, 4, 4, 4)

    **Privacy:** inside :func:`ghost_clipped_grads` the layer's `kernel` and
    `bias` gradients are clipped per example (from the input patches and the
    output gradients, Rochette et al. 2019); the first axis of `x` must index
    examples.

    References:
      Rochette, Manoel, Tramel, "Efficient Per-Example Gradient Computations
      in Convolutional Neural Networks", 2019, https://arxiv.org/abs/1912.06015.
    """
    spec = _ConvSpec.build(x.shape, kernel.shape, strides, padding, kernel_dilation)
    k, b = layer_params(kernel, bias)
    out = spec.apply(x, k)
    if b is not None:
        out = out + b.reshape((1,) * (out.ndim - 1) + (-1,))

    def kernel_grad(v, g):  # the ordinary weight gradient: XLA's backward-filter convolution
        return jax.vjp(lambda k: spec.apply(v, k), jnp.zeros(kernel.shape, v.dtype))[1](g)[0]

    def grads(v, g):
        return _MatmulGrads(
            v, g, to_rows=spec.rows, kernel_grad=kernel_grad, has_bias=bias is not None
        )

    return record_layer(out, x, (kernel, bias), grads)


class _ConvSpec:
    """A channels-last convolution with explicit padding, and its patch rows."""

    def __init__(self, window, strides, pads, dilation, out_spatial):
        self.window, self.strides, self.pads = window, strides, pads
        self.dilation, self.out_spatial = dilation, out_spatial

    @classmethod
    def build(cls, x_shape, kernel_shape, strides, padding, dilation) -> _ConvSpec:
        n = len(kernel_shape) - 2
        if n < 1 or len(x_shape) != n + 2 or x_shape[-1] != kernel_shape[-2]:
            raise ValueError(
                f"ghost_conv got x of shape {tuple(x_shape)} and kernel of shape "
                f"{tuple(kernel_shape)}; pass x as (B, *spatial, c_in) and kernel as "
                "(*window, c_in, c_out) with the same c_in."
            )
        window = tuple(kernel_shape[:n])
        strides, dilation = (
            _per_axis(strides, n, "strides"),
            _per_axis(dilation, n, "kernel_dilation"),
        )
        pads = _explicit_padding(padding, x_shape[1:-1], window, strides, dilation)
        out_spatial = tuple(
            (size + lo + hi - (k - 1) * d - 1) // s + 1
            for size, (lo, hi), k, d, s in zip(
                x_shape[1:-1], pads, window, dilation, strides, strict=True
            )
        )
        return cls(window, strides, pads, dilation, out_spatial)

    def apply(self, x, kernel):
        n = len(self.window)
        spatial = "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
        layout = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        return lax.conv_general_dilated(
            x,
            kernel,
            self.strides,
            self.pads,
            rhs_dilation=self.dilation,
            dimension_numbers=lax.conv_dimension_numbers(x.shape, kernel.shape, layout),
        )

    def rows(self, x):
        """`(B, prod(out_spatial), prod(window) * c_in)` by strided slicing (no arithmetic)."""
        xp = jnp.pad(x, [(0, 0), *self.pads, (0, 0)])
        b, c = x.shape[0], x.shape[-1]
        slices = []
        for offset in itertools.product(*(range(k) for k in self.window)):
            lows = [o * d for o, d in zip(offset, self.dilation, strict=True)]
            highs = [
                lo + (m - 1) * s + 1
                for lo, m, s in zip(lows, self.out_spatial, self.strides, strict=True)
            ]
            slices.append(lax.slice(xp, [0, *lows, 0], [b, *highs, c], (1, *self.strides, 1)))
        return jnp.stack(slices, axis=-2).reshape(b, math.prod(self.out_spatial), len(slices) * c)


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
        return [
            (lo, hi) for lo, hi in lax.padtype_to_pads(spatial, dilated, strides, padding.upper())
        ]
    if isinstance(padding, int):
        return [(padding, padding)] * n
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    if len(pads) != n or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding={padding!r} is invalid; pass {n} ints or {n} (low, high) pairs.")
    return pads


# ----------------------------------------------------------------------------- embedding


class _EmbedGrads:
    """`out = table[tokens]`: `||grad_i||^2 = sum_{t,t'} [tok_t = tok_t'] g_t . g_t'`."""

    def __init__(self, tokens, g, *, num_rows: int, table_grad):
        b = tokens.shape[0]
        toks = tokens.reshape(b, -1)
        toks = jnp.where(toks < 0, toks + num_rows, toks)  # the row jnp.take reads
        gs = g.reshape(b, toks.shape[1], -1)
        self.tokens, self.g, self.table_grad = tokens, g, table_grad

        t, d = gs.shape[1], gs.shape[2]

        def one(example):
            ti, gi = example
            same = (ti[:, None] == ti[None, :]).astype(jnp.float32)
            g_norms = jnp.linalg.norm(gi, axis=1)
            return _gram_upper_bound(same, _matmul(gi, gi.T), None, g_norms, 0, d)

        self.sq_norms = per_example_map(one, (toks, gs), 4 * (t * d + 2 * t * t))

    def weighted_sum(self, w, keep):
        return (self.table_grad(self.tokens, keep_rows(keep, self.g, w)),)


def ghost_embed(tokens: jax.Array, table: jax.Array) -> jax.Array:
    """`table[tokens]` (`jnp.take` along axis 0), ghost-clipping aware.

    Args:
      tokens: integer array `(B, ...)`, the leading axis indexing examples.
      table: `(num_embeddings, features)`.

    Returns:
      `(B, ..., features)`.

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> dpjax.ghost.ghost_embed(jnp.array([[0, 2, 2]]), jnp.eye(3)).shape
      (1, 3, 3)

    **Privacy:** inside :func:`ghost_clipped_grads` the table's gradient is
    clipped per example: a token repeated in one example counts with all its
    occurrences (`sum_{t,t'} [tok_t = tok_t'] g_t . g_t'`).

    References:
      Li, Tramer, Liang, Hashimoto, "Large Language Models Can Be Strong
      Differentially Private Learners", ICLR 2022 (ghost clipping of embeddings).
    """
    (used_table,) = layer_params(table)
    assert used_table is not None  # `table` is an array, so its used version is too
    out = jnp.take(used_table, tokens, axis=0)

    def table_grad(t, g):
        return jax.vjp(lambda tb: jnp.take(tb, t, axis=0), jnp.zeros(table.shape, g.dtype))[1](g)[0]

    def grads(t, g):
        return _EmbedGrads(t, g, num_rows=table.shape[0], table_grad=table_grad)

    return record_layer(out, tokens, (table,), grads)


# ----------------------------------------------------------------------------- scale and shift


class _ScaleShiftGrads:
    """`out = x * scale + shift`, parameters broadcast over the leading axes of `x`."""

    def __init__(self, x, g, *, param_ndim: int, has_scale: bool, has_shift: bool):
        x = x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim - param_ndim))
        self.grads = (
            jnp.sum(g * x, axis=axes) if has_scale else None,  # (B, *param_shape)
            jnp.sum(g, axis=axes) if has_shift else None,
        )
        self.sq_norms = cast(  # an array: ghost_scale_shift requires scale or shift
            jax.Array,
            sum(jnp.sum(p**2, axis=tuple(range(1, p.ndim))) for p in self.grads if p is not None),
        )

    def weighted_sum(self, w, keep):
        return tuple(
            None if p is None else jnp.tensordot(w, keep_rows(keep, p), axes=1) for p in self.grads
        )


def ghost_scale_shift(
    x: jax.Array, scale: jax.Array | None = None, shift: jax.Array | None = None
) -> jax.Array:
    """`x * scale + shift`, the parameters broadcast over the leading axes of `x`.

    The affine part of a LayerNorm (parameters `(features,)`) or a learned
    positional embedding added to `(B, T, features)` activations (`shift` of
    shape `(T, features)`).

    Args:
      x: `(B, ..., *param_shape)`, the leading axis indexing examples.
      scale: None, or an array matching the trailing axes of `x`.
      shift: None, or an array of the same shape as `scale`.

    Returns:
      An array shaped like `x`.

    Raises:
      ValueError: if both are None, or their shapes do not match the trailing
        axes of `x` (or leave no batch axis).

    Example:
      >>> import jax.numpy as jnp, dpjax
      >>> dpjax.ghost.ghost_scale_shift(jnp.ones((2, 4, 3)), jnp.full(3, 2.0), jnp.zeros(3))[0, 0]
      Array([2., 2., 2.], dtype=float32)

    **Privacy:** inside :func:`ghost_clipped_grads` the per-example gradients
    of `scale` and `shift` (each no bigger than one activation) are
    materialized and clipped with the rest.
    """
    params = [p for p in (scale, shift) if p is not None]
    shape: tuple[int, ...] = params[0].shape if params else ()  # () only if `fits` is False
    fits = bool(params) and all(p.shape == shape for p in params)
    if not fits or len(shape) >= x.ndim or x.shape[x.ndim - len(shape) :] != shape:
        raise ValueError(
            f"ghost_scale_shift got x of shape {x.shape}, scale of shape "
            f"{None if scale is None else scale.shape} and shift of shape "
            f"{None if shift is None else shift.shape}; pass at least one, both shaped like the "
            "trailing axes of x (which keeps its leading example axis)."
        )
    lead = (1,) * (x.ndim - len(shape))
    used_scale, used_shift = layer_params(scale, shift)
    out = x
    if used_scale is not None:
        out = out * used_scale.reshape(lead + shape)
    if used_shift is not None:
        out = out + used_shift.reshape(lead + shape)

    def grads(v, g):
        return _ScaleShiftGrads(
            v, g, param_ndim=len(shape), has_scale=scale is not None, has_shift=shift is not None
        )

    return record_layer(out, x, (scale, shift), grads)


# ----------------------------------------------------------------------------- modules


class GhostLinear(nnx.Linear):
    """`nnx.Linear` whose gradients :func:`ghost_clipped_grads` can clip per example.

    Same parameters, initialisation and result as `nnx.Linear` (no
    dtype/precision options: it computes in the parameters' dtype).

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> dpjax.ghost.GhostLinear(3, 2, rngs=nnx.Rngs(0))(jnp.ones((5, 3))).shape
      (5, 2)
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:  # type: ignore[override]
        bias = self.bias[...] if self.bias is not None else None
        return ghost_dense(inputs, self.kernel[...], bias)


def _refuse(layer: str, options: dict[str, Any]) -> None:
    bad = [f"{name}={value!r}" for name, (value, is_bad) in options.items() if is_bad]
    if bad:
        raise ValueError(
            f"{layer} does not support {', '.join(bad)}; leave them at their defaults or use the "
            "plain flax layer with clipping='vmap'."
        )


def _as_tuple(value) -> tuple:
    return (1,) if value is None else (value,) if isinstance(value, int) else tuple(value)


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
      >>> dpjax.ghost.GhostConv(1, 4, (3, 3), rngs=nnx.Rngs(0))(jnp.ones((2, 8, 8, 1))).shape
      (2, 8, 8, 4)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pad = self.padding
        _refuse(
            "GhostConv",
            {
                "input_dilation": (
                    self.input_dilation,
                    any(d != 1 for d in _as_tuple(self.input_dilation)),
                ),
                "feature_group_count": (self.feature_group_count, self.feature_group_count != 1),
                "mask": (self.mask, self.mask is not None),
                "dtype": (self.dtype, self.dtype is not None),
                "padding": (pad, isinstance(pad, str) and pad.upper() not in ("SAME", "VALID")),
            },
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


class GhostEmbed(nnx.Embed):
    """`nnx.Embed` whose gradients :func:`ghost_clipped_grads` can clip per example.

    Same parameter, initialisation and lookup as `nnx.Embed` (`jnp.take`); the
    `attend` method is not a ghost layer (its use of the table would be refused).

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> dpjax.ghost.GhostEmbed(10, 4, rngs=nnx.Rngs(0))(jnp.array([[1, 2, 3]])).shape
      (1, 3, 4)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        dtype = self.dtype
        _refuse("GhostEmbed", {"dtype": (dtype, dtype not in (None, self.param_dtype))})

    def __call__(self, inputs: jax.Array) -> jax.Array:  # type: ignore[override]
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError(f"GhostEmbed needs integer tokens, got dtype {inputs.dtype}.")
        return ghost_embed(inputs, self.embedding[...])


class GhostLayerNorm(nnx.LayerNorm):
    """`nnx.LayerNorm` (over the last axis) whose gradients :func:`ghost_clipped_grads` can clip.

    Same parameters and result as `nnx.LayerNorm` with the default
    `reduction_axes=-1`, `feature_axes=-1`. Each example is normalised with its
    own statistics, so it does not mix examples (unlike BatchNorm).

    Raises:
      ValueError: for other reduction/feature axes, a dtype, or `axis_name`.

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> dpjax.ghost.GhostLayerNorm(4, rngs=nnx.Rngs(0))(jnp.arange(8.0).reshape(2, 4)).shape
      (2, 4)
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        axes = {"reduction_axes": self.reduction_axes, "feature_axes": self.feature_axes}
        _refuse(
            "GhostLayerNorm",
            {name: (v, _as_tuple(v) != (-1,)) for name, v in axes.items()}
            | {
                "dtype": (self.dtype, self.dtype is not None),
                "axis_name": (self.axis_name, self.axis_name is not None),
            },
        )

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:  # type: ignore[override]
        if mask is not None:
            raise ValueError("GhostLayerNorm does not support mask=; leave it None.")
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        normed = (x - mean) * lax.rsqrt(var + self.epsilon)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        if scale is None and bias is None:
            return normed
        return ghost_scale_shift(normed, scale, bias)


class GhostGroupNorm(nnx.GroupNorm):
    """`nnx.GroupNorm` (channels last) whose gradients :func:`ghost_clipped_grads` can clip.

    Same parameters and result as `nnx.GroupNorm` with the default reduction
    axes: each example's channels are split into `num_groups` groups and every
    group is normalised over all of the example's other axes (spatial positions)
    and its own channels, then scaled and shifted per channel. Each example is
    normalised with its own statistics, so it does not mix examples (unlike
    BatchNorm).

    Raises:
      ValueError: for `reduction_axes`, a dtype, `axis_name`, or an input
        without an example axis and a channel axis.

    Example:
      >>> import flax.nnx as nnx, jax.numpy as jnp, dpjax
      >>> norm = dpjax.ghost.GhostGroupNorm(4, num_groups=2, rngs=nnx.Rngs(0))
      >>> norm(jnp.arange(24.0).reshape(2, 3, 4)).shape
      (2, 3, 4)

    **Privacy:** the per-example gradients of `scale` and `bias` (one number
    per channel each) are materialized and clipped with the rest of the
    example's gradient, as :func:`ghost_scale_shift` does.

    References:
      Wu, He, "Group Normalization", ECCV 2018, https://arxiv.org/abs/1803.08494.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _refuse(
            "GhostGroupNorm",
            {
                "reduction_axes": (self.reduction_axes, self.reduction_axes is not None),
                "dtype": (self.dtype, self.dtype is not None),
                "axis_name": (self.axis_name, self.axis_name is not None),
            },
        )

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:  # type: ignore[override]
        if mask is not None:
            raise ValueError("GhostGroupNorm does not support mask=; leave it None.")
        if x.ndim < 2:
            raise ValueError(
                f"GhostGroupNorm got x of shape {x.shape}; pass (batch, ..., channels)."
            )
        grouped = x.reshape(*x.shape[:-1], self.num_groups, self.group_size)
        axes = (*range(1, x.ndim - 1), x.ndim)  # the example's positions and the group's channels
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=axes, keepdims=True)
        normed = ((grouped - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        if scale is None and bias is None:
            return normed
        return ghost_scale_shift(normed, scale, bias)


class GhostDense(nn.Dense):
    """`flax.linen.Dense` whose gradients :func:`ghost_clipped_grads` can clip per example.

    Same parameter names, shapes and initialisers as `nn.Dense` (no
    dtype/precision options: it computes in the parameters' dtype).

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> layer = dpjax.ghost.GhostDense(2)
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
