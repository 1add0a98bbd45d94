"""Ghost clipping for dense layers: per-example norms without per-example gradients.

For a dense layer y = x W + b, example i's gradient is `x_i^T g_i` (g_i the
gradient of its loss at y_i), so its squared norm is computable from `x_i` and
`g_i` alone: `||x_i||^2 ||g_i||^2` for one token, or
`sum_{t,t'} (x_it . x_it') (g_it . g_it')` for a sequence. The clipped sum is
then ONE ordinary backward pass of `sum_i s_i L_i` with
`s_i = min(1, C / ||grad_i||)`. No `B x num_params` array is ever built.

How the norms get out: a dense layer written with :func:`ghost_dense` takes a
zero "probe" of shape `(B,)` while :func:`ghost_clipped_grads` traces the
model, and its custom VJP returns the per-example squared norms as the probe's
"gradient". Outside that trace, :func:`ghost_dense` is a plain dense layer.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp

from dpjax import _clipping, _per_example, _validation

PyTree = Any
_TAPE = threading.local()


class _Tape:
    """Hands out one probe per ghost_dense call and records what each layer used."""

    def __init__(self, probes: jax.Array | None):
        self.probes, self.calls = probes, []

    def probe(self, x: jax.Array, kernel: jax.Array, bias: jax.Array | None) -> jax.Array:
        i = len(self.calls)
        self.calls.append((kernel, bias))
        if self.probes is None:  # discovery: shapes only
            return jnp.zeros((x.shape[0],), jnp.float32)
        return self.probes[i]


@contextlib.contextmanager
def _recording(probes: jax.Array | None) -> Iterator[_Tape]:
    previous = getattr(_TAPE, "tape", None)
    _TAPE.tape = _Tape(probes)
    try:
        yield _TAPE.tape
    finally:
        _TAPE.tape = previous


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

    **Privacy:** inside :func:`ghost_clipped_grads` the layer reports each
    example's squared gradient norm for `kernel` and `bias`; the first axis of
    `x` must therefore index examples, and the layer must not mix them.
    """
    tape = getattr(_TAPE, "tape", None)
    b = jnp.zeros(kernel.shape[-1], kernel.dtype) if bias is None else bias
    if tape is None:
        return _dense(x, kernel, b)
    return _probed_dense(x, kernel, b, tape.probe(x, kernel, bias), bias is not None)


def _dense(x, kernel, bias):
    y = jnp.matmul(x, kernel)
    return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _probed_dense(x, kernel, bias, probe, has_bias):
    del probe, has_bias
    return _dense(x, kernel, bias)


def _probed_fwd(x, kernel, bias, probe, has_bias):
    del has_bias
    return _dense(x, kernel, bias), (x, kernel, probe)


def _probed_bwd(has_bias, res, g):
    x, kernel, probe = res
    b = x.shape[0]
    xs = x.reshape(b, -1, x.shape[-1]).astype(jnp.float32)
    gs = g.reshape(b, -1, g.shape[-1]).astype(jnp.float32)
    t, d_in, d_out = xs.shape[1], xs.shape[2], gs.shape[2]
    if t == 1:
        sq_kernel = jnp.sum(xs[:, 0] ** 2, axis=1) * jnp.sum(gs[:, 0] ** 2, axis=1)
    elif t * t * (d_in + d_out) < t * d_in * d_out:  # ghost norm: Gram matrices
        sq_kernel = jnp.einsum("bst,bst->b", xs @ xs.transpose(0, 2, 1), gs @ gs.transpose(0, 2, 1))
    else:  # materialize one example's kernel gradient at a time inside the einsum
        sq_kernel = jnp.sum(jnp.einsum("bti,bto->bio", xs, gs) ** 2, axis=(1, 2))
    sq_bias = jnp.sum(jnp.sum(gs, axis=1) ** 2, axis=1) if has_bias else 0.0
    dx = jnp.matmul(g, kernel.T).astype(x.dtype)
    dkernel = jnp.einsum("...i,...o->io", x, g).astype(kernel.dtype)
    dbias = jnp.sum(g.reshape(-1, g.shape[-1]), axis=0).astype(kernel.dtype)
    return dx, dkernel, dbias, (sq_kernel + sq_bias).astype(probe.dtype)


_probed_dense.defvjp(_probed_fwd, _probed_bwd)


class GhostLinear(nnx.Linear):
    """`nnx.Linear` whose per-example gradient norms :func:`ghost_clipped_grads` can read.

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


class GhostDense(nn.Dense):
    """`flax.linen.Dense` whose per-example gradient norms :func:`ghost_clipped_grads` can read.

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
    """Clipped SUM of per-example gradients by ghost clipping (two backward passes).

    `losses_fn(params, batch)` returns the vector of per-example losses `(B,)`,
    computed on the whole batch at once, by a model whose every parameter lives
    in a :func:`ghost_dense` / :class:`GhostLinear` layer. Pass 1 takes the
    gradient with respect to the layers' probes (the per-example squared norms);
    pass 2 the gradient of `sum_i s_i L_i` with `s_i = min(1, C / ||grad_i||)`.
    The result equals :func:`clip_and_sum` of the per-example gradients.

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
    norm get weight 0 and their float inputs are zeroed before pass 2, so a NaN
    in one example cannot reach the sum (this assumes the model is finite on an
    all-zero input). A parameter used twice (weight tying) or used outside a
    ghost layer is refused, since the per-layer norms would then not bound the
    example's whole gradient.

    References:
      Goodfellow, "Efficient Per-Example Gradient Computations", 2015.
      Li et al., "Large Language Models Can Be Strong Differentially Private
      Learners", ICLR 2022 (ghost clipping).
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
        num_layers = _check_coverage(losses_fn, params, batch)

        def probed_loss(probes):
            with _recording(probes):
                return jnp.sum(jnp.where(mask, losses_fn(params, batch), 0.0))

        sq = jax.grad(probed_loss)(jnp.zeros((num_layers, b), jnp.float32))
        norms = jnp.sqrt(jnp.sum(sq, axis=0))
        keep = jnp.isfinite(norms) & mask
        scale = jnp.where(
            keep, jnp.minimum(1.0, c / jnp.maximum(jnp.where(keep, norms, 1.0), 1e-30)), 0.0
        )
        clean = jax.tree.map(lambda v: _zero_rows(v, keep), batch)

        def weighted_loss(p):
            return jnp.sum(jax.lax.stop_gradient(scale) * jnp.where(keep, losses_fn(p, clean), 0.0))

        summed = jax.tree.map(
            lambda g: g.astype(jnp.promote_types(g.dtype, jnp.float32)),
            jax.grad(weighted_loss)(params),
        )
        stats = _clipping.ClipStats(
            num_nonfinite=jnp.sum(mask & ~jnp.isfinite(norms)).astype(jnp.int32),
            num_clipped=jnp.sum(keep & (norms > c)).astype(jnp.int32),
        )
        return summed, stats

    return fn


def _zero_rows(v: jax.Array, keep: jax.Array) -> jax.Array:
    if not jnp.issubdtype(v.dtype, jnp.inexact):
        return v
    return jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, jnp.zeros_like(v))


def _check_coverage(losses_fn: Callable, params: PyTree, batch: PyTree) -> int:
    """Traces `losses_fn` once (shapes only); returns the number of ghost layer calls.

    Every parameter leaf must reach exactly one ghost layer as its kernel or bias,
    unchanged (the same traced array): then the per-layer norms add up to each
    example's whole gradient norm. A parameter used elsewhere, transformed first,
    or used twice (weight tying) fails the check.

    Raises:
      ValueError: unless every parameter is used by exactly one ghost layer.
    """
    traced: list = []

    def trace(p, b):
        traced.extend(jax.tree.leaves(p))
        return losses_fn(p, b)

    with _recording(None) as tape:
        jax.eval_shape(trace, params, batch)  # a fresh function each call: no trace cache
    used = [id(a) for kernel, bias in tape.calls for a in (kernel, bias) if a is not None]
    if sorted(used) != sorted(id(leaf) for leaf in traced):
        shapes = [
            tuple(a.shape) for kernel, bias in tape.calls for a in (kernel, bias) if a is not None
        ]
        raise ValueError(
            "ghost clipping needs every parameter to be used, unchanged, by exactly one "
            f"ghost_dense/GhostLinear/GhostDense layer; the ghost layers used {len(used)} arrays of "
            f"shapes {shapes} but the model has {len(traced)} parameters of shapes "
            f"{[tuple(p.shape) for p in traced]}. Use dpjax.per_example_grads (vmap) for this model, "
            "or build it from ghost layers."
        )
    return len(tape.calls)


def is_ghost_compatible(losses_fn: Callable, params: PyTree, batch: PyTree) -> bool:
    """Whether :func:`ghost_clipped_grads` can handle this model (host side, traces once)."""
    try:
        _check_coverage(losses_fn, params, batch)
    except ValueError:
        return False
    return True
