"""Image classifiers for private training, and their uniform functional form.

Every model maps a batch of NHWC images ``x`` of shape ``(B, H, W, C)`` to
logits of shape ``(B, num_classes)``; dense models flatten inside. Flax NNX
modules are first-class; flax.linen modules are supported through
:func:`functional`, which turns either kind into a :class:`FunctionalModel`
``(apply, params)`` whose ``apply(params, x)`` is pure, jittable and
vmappable, as the per-example gradient code needs.

No model here mixes examples: BatchNorm is refused (:func:`check_no_batchnorm`)
and the normalising CNN uses GroupNorm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from dpjax import _validation
from dpjax.ghost import GhostConv, GhostDense, GhostGroupNorm, GhostLinear

MODEL_NAMES = ("logreg", "mlp", "cnn", "gn-cnn", "scatter-cnn", "linen-mlp", "linen-cnn")

# The 28x28 DP CNN: (features, kernel, stride, padding) of its two convolutions.
# Padding 2 on the first follows Tramer & Boneh's code (MNIST_CNN); TF Privacy's
# and Opacus' "SAME" (3) gives 14x14 instead of 13x13 after it, but the same
# 4x4x32 features, the same layers and the same 26,010 parameters.
_DPCNN_CONV1 = (16, (8, 8), 2, ((2, 2), (2, 2)))
_DPCNN_CONV2 = (32, (4, 4), 2, "VALID")
_DPCNN_HIDDEN = 32
_DPCNN_FEATURES = 4 * 4 * 32


class FunctionalModel(NamedTuple):
    """A model as a pure function and its trainable parameters.

    Attributes:
      apply: ``apply(params, x) -> logits`` for images ``x`` of shape
        ``(B, H, W, C)``; pure, so it works under ``jax.jit``, ``jax.grad`` and
        ``jax.vmap`` (per example: ``apply(params, xi[None])[0]``).
      params: The trainable parameters, a pytree of nested dicts of arrays
        (for NNX, ``nnx.to_pure_dict`` of the ``nnx.Param`` state; for linen,
        the ``"params"`` collection).
    """

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any


def _flatten(x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


def _check_classes(num_classes: int) -> int:
    num_classes = _validation.check_positive_int(num_classes, "num_classes", "10")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2; pass e.g. num_classes=10.")
    return num_classes


class LogisticRegression(nnx.Module):
    """Multinomial logistic regression: one dense layer on the flattened image.

    Args:
      input_shape: Shape ``(H, W, C)`` of one image.
      num_classes: Number of classes (logits).
      rngs: Random streams for the initialiser (LeCun normal kernel, zero bias).

    Raises:
      ValueError: for a malformed ``input_shape`` or ``num_classes < 2``.

    Example:
      >>> model = LogisticRegression((8, 8, 1), 10, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((3, 8, 8, 1))).shape
      (3, 10)
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, *, rngs: nnx.Rngs):
        input_shape = _validation.check_input_shape(input_shape)
        self.linear = GhostLinear(math.prod(input_shape), _check_classes(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(_flatten(x))


class MLP(nnx.Module):
    """Multi-layer perceptron with tanh activations on the flattened image.

    tanh rather than ReLU: bounded activations keep gradient norms from
    exploding, so less signal is lost to clipping (Papernot et al., 2021).

    Args:
      input_shape: Shape ``(H, W, C)`` of one image.
      num_classes: Number of classes (logits).
      hidden: Widths of the hidden layers.
      rngs: Random streams for the initialisers.

    Raises:
      ValueError: for a malformed ``input_shape``, ``num_classes < 2`` or a
        hidden width < 1.

    Example:
      >>> model = MLP((8, 8, 1), 10, hidden=(32,), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((3, 8, 8, 1))).shape
      (3, 10)

    References:
      Papernot, Thakurta, Song, Chien, Erlingsson, "Tempered Sigmoid
      Activations for Deep Learning with Differential Privacy", AAAI 2021,
      https://arxiv.org/abs/2007.14191
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256,),
        *,
        rngs: nnx.Rngs,
    ):
        input_shape = _validation.check_input_shape(input_shape)
        widths = [math.prod(input_shape)]
        widths += [_validation.check_positive_int(h, "hidden", "(256,)") for h in hidden]
        self.layers = nnx.List(
            [GhostLinear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:], strict=True)]
        )
        self.head = GhostLinear(widths[-1], _check_classes(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = _flatten(x)
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return self.head(x)


def _check_dpcnn_input(x: jax.Array) -> None:
    if x.ndim != 4 or x.shape[1:3] != (28, 28):
        raise ValueError(
            f"the DP CNN takes 28x28 images of shape (B, 28, 28, C); got x.shape={x.shape}. "
            f"Use 'gn-cnn' (any size) or 'mlp' for other inputs."
        )


class DPCNN(nnx.Module):
    """The standard CNN of DP-SGD papers for 28x28 images (MNIST, Fashion-MNIST).

    Layers, with the shapes for a 28x28x1 input::

      conv 16 @ 8x8, stride 2, padding 2  -> 13x13x16, tanh
      max-pool 2x2, stride 1              -> 12x12x16
      conv 32 @ 4x4, stride 2, VALID      ->  5x5x32,  tanh
      max-pool 2x2, stride 1              ->  4x4x32
      flatten -> dense 32, tanh -> dense num_classes

    26,010 parameters for 1 channel and 10 classes. The layers are
    :class:`dpjax.GhostConv` and :class:`dpjax.GhostLinear` (``nnx.Conv`` and
    ``nnx.Linear`` with the same parameters), so the trainer clips it by
    book-keeping ghost clipping, in one backward pass. The max-pools are
    written as the max of four shifted views (the same function as
    ``nnx.max_pool``, with a gradient that is twice as fast on CPU).

    Args:
      num_classes: Number of classes (logits).
      in_channels: Channels of the input images.
      rngs: Random streams for the initialisers.

    Raises:
      ValueError: at call time, if the images are not 28x28.

    Example:
      >>> model = DPCNN(rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 28, 28, 1))).shape
      (2, 10)

    References:
      Papernot, Thakurta, Song, Chien, Erlingsson, "Tempered Sigmoid
      Activations for Deep Learning with Differential Privacy", AAAI 2021,
      https://arxiv.org/abs/2007.14191 (Table 1).
      Tramer, Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021, https://arxiv.org/abs/2011.11660;
      code: https://github.com/ftramer/Handcrafted-DP (models.py, MNIST_CNN).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, rngs: nnx.Rngs):
        in_channels = _validation.check_positive_int(in_channels, "in_channels", "1")
        (f1, k1, s1, p1), (f2, k2, s2, p2) = _DPCNN_CONV1, _DPCNN_CONV2
        self.conv1 = GhostConv(in_channels, f1, k1, s1, padding=p1, rngs=rngs)
        self.conv2 = GhostConv(f1, f2, k2, s2, padding=p2, rngs=rngs)
        self.fc1 = GhostLinear(_DPCNN_FEATURES, _DPCNN_HIDDEN, rngs=rngs)
        self.fc2 = GhostLinear(_DPCNN_HIDDEN, _check_classes(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_dpcnn_input(x)
        x = _max_pool_2x2_stride_1(jnp.tanh(self.conv1(x)))
        x = _max_pool_2x2_stride_1(jnp.tanh(self.conv2(x)))
        return self.fc2(jnp.tanh(self.fc1(_flatten(x))))


def _max_pool_2x2_stride_1(x: jax.Array) -> jax.Array:
    """`nnx.max_pool(x, (2, 2), strides=(1, 1))` as the max of four shifted views.

    The same values; its gradient is elementwise, where `max_pool`'s is XLA's
    `select_and_scatter`, which made up about half of the DP CNN's training
    step on CPU (13 vs 26 ms at batch 256). At exact ties the gradient is split
    evenly instead of going to the first maximum (both are subgradients).
    """
    top = jnp.maximum(x[:, :-1, :-1], x[:, :-1, 1:])
    return jnp.maximum(top, jnp.maximum(x[:, 1:, :-1], x[:, 1:, 1:]))


class GroupNormCNN(nnx.Module):
    """A small CNN with GroupNorm, for images of any size.

    conv 32 @ 3x3 -> GroupNorm(8 groups) -> tanh -> conv 64 @ 3x3 stride 2 ->
    GroupNorm(8 groups) -> tanh -> global average pool -> dense num_classes.
    19,658 parameters for 1 channel and 10 classes.

    GroupNorm normalises each example with its own statistics, so examples
    stay independent and per-example clipping bounds each one's influence;
    it is the DP-safe replacement for BatchNorm. Built from ghost layers
    (:class:`dpjax.ghost.GhostConv`, :class:`dpjax.ghost.GhostGroupNorm`,
    :class:`dpjax.ghost.GhostLinear`: the flax layers' parameters and
    results), so the trainer's ``clipping='auto'`` clips it by ghost clipping.

    Args:
      num_classes: Number of classes (logits).
      in_channels: Channels of the input images.
      rngs: Random streams for the initialisers.

    Example:
      >>> model = GroupNormCNN(10, 1, rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 8, 8, 1))).shape
      (2, 10)

    References:
      Wu, He, "Group Normalization", ECCV 2018, https://arxiv.org/abs/1803.08494.
      Tramer, Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021, https://arxiv.org/abs/2011.11660.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, rngs: nnx.Rngs):
        in_channels = _validation.check_positive_int(in_channels, "in_channels", "1")
        self.conv1 = GhostConv(in_channels, 32, (3, 3), rngs=rngs)
        self.norm1 = GhostGroupNorm(32, num_groups=8, rngs=rngs)
        self.conv2 = GhostConv(32, 64, (3, 3), 2, rngs=rngs)
        self.norm2 = GhostGroupNorm(64, num_groups=8, rngs=rngs)
        self.head = GhostLinear(64, _check_classes(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(self.norm1(self.conv1(x)))
        x = jnp.tanh(self.norm2(self.conv2(x)))
        return self.head(jnp.mean(x, axis=(1, 2)))


class ScatterCNN(nnx.Module):
    """The small CNN that Tramer & Boneh (2021) train on ScatterNet features.

    conv 16 @ 3x3 stride 2 (padding 1) -> tanh -> conv 32 @ 3x3 (padding 1)
    -> tanh -> flatten -> dense 32 -> tanh -> dense num_classes. On the
    7x7x81 scattering of a 28x28 image: a 4x4x32 map, 33,066 parameters for 10
    classes. No normalisation layer: the features arrive normalised per example
    (:func:`dpjax.features.scatternet_dataset`). Built from ghost layers, so
    the trainer's ``clipping='auto'`` clips it by ghost clipping.

    Args:
      num_classes: Number of classes (logits).
      input_shape: ``(H, W, C)`` of one input (the flatten size follows it).
      rngs: Random streams for the initialisers.

    Example:
      >>> model = ScatterCNN(10, (7, 7, 81), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 7, 7, 81))).shape
      (2, 10)

    References:
      Tramer, Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021, https://arxiv.org/abs/2011.11660
      (their ``MNIST_CNN`` for scattering inputs).
    """

    def __init__(self, num_classes: int, input_shape: Sequence[int], *, rngs: nnx.Rngs):
        height, width, channels = _validation.check_input_shape(input_shape)
        self.conv1 = GhostConv(channels, 16, (3, 3), 2, padding=((1, 1), (1, 1)), rngs=rngs)
        self.conv2 = GhostConv(16, 32, (3, 3), 1, padding=((1, 1), (1, 1)), rngs=rngs)
        flat = -(-height // 2) * -(-width // 2) * 32
        self.fc1 = GhostLinear(flat, 32, rngs=rngs)
        self.fc2 = GhostLinear(32, _check_classes(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.tanh(self.conv2(jnp.tanh(self.conv1(x))))
        return self.fc2(jnp.tanh(self.fc1(x.reshape(x.shape[0], -1))))


class LinenMLP(nn.Module):
    """flax.linen version of :class:`MLP` (tanh hidden layers on the flattened image).

    Attributes:
      num_classes: Number of classes (logits).
      hidden: Widths of the hidden layers.

    Example:
      >>> module = LinenMLP(num_classes=10, hidden=(32,))
      >>> fm = functional(module, sample_input=jnp.zeros((1, 8, 8, 1)), key=jax.random.key(0))
      >>> fm.apply(fm.params, jnp.zeros((3, 8, 8, 1))).shape
      (3, 10)
    """

    num_classes: int
    hidden: Sequence[int] = (256,)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _flatten(x)
        for width in self.hidden:
            x = jnp.tanh(GhostDense(width)(x))
        return GhostDense(self.num_classes)(x)


class LinenCNN(nn.Module):
    """flax.linen version of :class:`DPCNN` (same layers, 28x28 images only).

    Attributes:
      num_classes: Number of classes (logits).

    Example:
      >>> module = LinenCNN(num_classes=10)
      >>> fm = functional(module, sample_input=jnp.zeros((1, 28, 28, 1)), key=jax.random.key(0))
      >>> fm.apply(fm.params, jnp.zeros((2, 28, 28, 1))).shape
      (2, 10)

    References:
      See :class:`DPCNN`.
    """

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_dpcnn_input(x)
        (f1, k1, s1, p1), (f2, k2, s2, p2) = _DPCNN_CONV1, _DPCNN_CONV2
        x = _max_pool_2x2_stride_1(jnp.tanh(nn.Conv(f1, k1, s1, padding=p1)(x)))
        x = _max_pool_2x2_stride_1(jnp.tanh(nn.Conv(f2, k2, s2, padding=p2)(x)))
        x = jnp.tanh(nn.Dense(_DPCNN_HIDDEN)(_flatten(x)))
        return nn.Dense(self.num_classes)(x)


def _nnx_path(path: tuple[Any, ...]) -> str:
    return "/".join(str(p) for p in path) or "<root>"


def _keystr(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _batchnorm_error(offenders: list[str]) -> ValueError:
    return ValueError(
        f"BatchNorm found at {', '.join(offenders)}. BatchNorm normalises each example with "
        f"statistics of the whole batch, so one example's output and gradient depend on the "
        f"others and per-example clipping no longer bounds any one example's influence: the "
        f"accountant's guarantee would not hold. Replace it with GroupNorm or LayerNorm "
        f"(nnx.GroupNorm / nn.GroupNorm normalise each example on its own), or use "
        f"dpjax's 'gn-cnn'."
    )


def _linen_offenders(module: nn.Module, sample_input: jax.typing.ArrayLike) -> list[str]:
    """Paths of linen BatchNorm layers and batch_stats, found by tracing ``init``."""
    offenders: list[str] = []

    def interceptor(method, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            where = f"{'/'.join(context.module.path) or '<root>'} (nn.BatchNorm)"
            if where not in offenders:
                offenders.append(where)
        return method(*args, **kwargs)

    def init():
        with nn.intercept_methods(interceptor):
            # Shapes only: eval_shape runs no computation, so the key is never used for values.
            return module.init(jax.random.key(0), sample_input)

    variables = jax.eval_shape(init)
    if "batch_stats" in variables and not offenders:
        for path, _ in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]:
            offenders.append(f"batch_stats/{_keystr(path)}")
    return offenders


def check_no_batchnorm(
    model: nnx.Module | nn.Module | FunctionalModel | Any,
    *,
    sample_input: jax.typing.ArrayLike | None = None,
) -> None:
    """Raises if a model normalises with batch statistics (BatchNorm).

    Host side. Looks for ``nnx.BatchNorm`` modules and ``nnx.BatchStat``
    variables in an NNX module; for a linen module traces ``init`` on
    ``sample_input`` (shapes only) and looks for ``nn.BatchNorm`` layers and a
    ``batch_stats`` collection. For a :class:`FunctionalModel` or a params
    pytree it can only read the names in the tree (``batch_stats``,
    ``BatchNorm``); :func:`functional` checks the module itself before it
    builds a FunctionalModel, so those built by dpjax are already checked.

    Args:
      model: An NNX module, a linen module, a FunctionalModel or a params pytree.
      sample_input: A batch of inputs, required for a linen module (linen
        builds its layers only when called).

    Raises:
      ValueError: naming each offending layer path (e.g. ``layers/2
        (nnx.BatchNorm)``), or if a linen module comes without
        ``sample_input``.

    **Privacy**: DP-SGD's sensitivity argument needs each example's gradient
    to depend on that example alone, so that clipping it to norm C bounds
    what adding or removing the example can change. BatchNorm's batch mean
    and variance make every example's gradient depend on the whole batch;
    GroupNorm and LayerNorm do not.

    Example:
      >>> check_no_batchnorm(DPCNN(rngs=nnx.Rngs(0)))  # passes silently
      >>> class Bad(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.norm = nnx.BatchNorm(4, rngs=rngs)
      >>> check_no_batchnorm(Bad(nnx.Rngs(0)))
      Traceback (most recent call last):
      ...
      ValueError: BatchNorm found at norm (nnx.BatchNorm). ...
    """
    offenders: list[str] = []
    if isinstance(model, nnx.Module):
        nodes = list(nnx.iter_graph(model))
        batchnorms = [path for path, node in nodes if isinstance(node, nnx.BatchNorm)]
        offenders += [f"{_nnx_path(path)} (nnx.BatchNorm)" for path in batchnorms]
        # Batch statistics kept by any other (custom) layer.
        offenders += [
            f"{_nnx_path(path)} (nnx.BatchStat)"
            for path, node in nodes
            if isinstance(node, nnx.BatchStat)
            and not any(path[: len(bn)] == bn for bn in batchnorms)
        ]
    elif isinstance(model, nn.Module):
        if sample_input is None:
            raise ValueError(
                f"check_no_batchnorm({type(model).__name__}(...)) got sample_input=None; a "
                f"linen module builds its layers only when called, so pass a batch, e.g. "
                f"sample_input=jnp.zeros((1, 28, 28, 1))."
            )
        offenders = _linen_offenders(model, sample_input)
    else:
        params = model.params if isinstance(model, FunctionalModel) else model
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
            where = _keystr(path)
            lowered = where.lower()
            if "batch_stats" in lowered or "batchnorm" in lowered:
                offenders.append(where)
    if offenders:
        raise _batchnorm_error(offenders)


def functional(
    model: nnx.Module | nn.Module,
    *,
    sample_input: jax.typing.ArrayLike | None = None,
    key: jax.Array | None = None,
) -> FunctionalModel:
    """Turns an NNX or linen module into a pure ``(apply, params)`` pair.

    Host side (the returned ``apply`` is device side: pure and jittable).
    For NNX, ``nnx.split(model, nnx.Param, ...)`` separates the parameters
    (returned as a pure dict) from the rest of the state, which ``apply``
    captures as constants. For linen, ``module.init(key, sample_input)`` makes
    the variables; ``"params"`` is trained and other collections are
    captured as constants. The module is checked with
    :func:`check_no_batchnorm` first.

    Args:
      model: An ``nnx.Module`` or a ``flax.linen.Module``.
      sample_input: A batch of inputs ``(B, H, W, C)``; linen only.
      key: A PRNG key for linen's initialisers, ``jax.random.key(seed)``;
        linen only.

    Returns:
      The :class:`FunctionalModel`.

    Raises:
      ValueError: if ``model`` is neither kind, holds BatchNorm, holds an
        NNX random stream (it would replay the same key on every call), or a
        linen module comes without ``sample_input`` or ``key``.

    **Privacy**: ``apply`` processes examples independently (BatchNorm is
    refused), so ``jax.vmap(lambda p, xi: apply(p, xi[None])[0], in_axes=(None, 0))``
    gives each example's own output and per-example gradients are exact.

    Example:
      >>> fm = functional(MLP((8, 8, 1), 10, hidden=(16,), rngs=nnx.Rngs(0)))
      >>> x = jnp.ones((4, 8, 8, 1))
      >>> per_example = jax.vmap(lambda p, xi: fm.apply(p, xi[None])[0], in_axes=(None, 0))
      >>> per_example(fm.params, x).shape
      (4, 10)
    """
    if isinstance(model, nnx.Module):
        if sample_input is not None or key is not None:
            raise ValueError(
                "sample_input and key are for linen modules; an nnx.Module is already "
                "initialised, so pass neither."
            )
        check_no_batchnorm(model)
        graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
        rng_paths = [
            _keystr(path)
            for path, leaf in jax.tree_util.tree_flatten_with_path(
                rest, is_leaf=lambda v: isinstance(v, nnx.RngState)
            )[0]
            if isinstance(leaf, nnx.RngState)
        ]
        if rng_paths:
            raise ValueError(
                f"{type(model).__name__} holds random streams at {', '.join(rng_paths)}; "
                f"functional() would freeze them, replaying the same key on every call. "
                f"Build the model without stored nnx.Rngs (e.g. no Dropout)."
            )
        params = nnx.to_pure_dict(param_state)

        def apply_nnx(params: Any, x: jax.Array) -> jax.Array:
            return nnx.merge(graphdef, params, rest, copy=True)(x)

        return FunctionalModel(apply=apply_nnx, params=params)

    if isinstance(model, nn.Module):
        if sample_input is None:
            raise ValueError(
                f"functional({type(model).__name__}(...)) needs sample_input, a batch of inputs "
                f"to initialise a linen module; pass e.g. sample_input=jnp.zeros((1, 28, 28, 1))."
            )
        key = _validation.check_key(key)
        check_no_batchnorm(model, sample_input=sample_input)
        variables = dict(model.init(key, sample_input))
        params = variables.pop("params", {})
        module = model

        def apply_linen(params: Any, x: jax.Array) -> jax.Array:
            return cast(jax.Array, module.apply({"params": params, **variables}, x))

        return FunctionalModel(apply=apply_linen, params=params)

    raise ValueError(
        f"model={type(model).__name__} is neither an nnx.Module nor a flax.linen.Module; "
        f"pass one of those (e.g. dpjax.models.DPCNN(rngs=nnx.Rngs(0)))."
    )


def make_model(
    name: str, input_shape: Sequence[int], num_classes: int, *, seed: int
) -> FunctionalModel:
    """Builds a model by name and returns it in functional form.

    Host side.

    * ``"logreg"``: :class:`LogisticRegression`.
    * ``"mlp"``: :class:`MLP` with one hidden layer of 256 tanh units.
    * ``"cnn"``: :class:`DPCNN` (28x28 inputs only).
    * ``"gn-cnn"``: :class:`GroupNormCNN` (any input size).
    * ``"scatter-cnn"``: :class:`ScatterCNN` (for ScatterNet features).
    * ``"linen-mlp"``: :class:`LinenMLP` (256 tanh units).
    * ``"linen-cnn"``: :class:`LinenCNN` (28x28 inputs only).

    Args:
      name: One of :data:`MODEL_NAMES`.
      input_shape: Shape ``(H, W, C)`` of one image.
      num_classes: Number of classes.
      seed: Seeds the initialisers (``nnx.Rngs(seed)`` or ``jax.random.key(seed)``).

    Returns:
      The :class:`FunctionalModel`, checked by :func:`check_no_batchnorm`.

    Raises:
      ValueError: for an unknown ``name``, a malformed ``input_shape``,
        ``num_classes < 2``, a negative ``seed``, or a CNN asked for non-28x28
        images.

    Example:
      >>> fm = make_model("mlp", (8, 8, 1), 10, seed=0)
      >>> fm.apply(fm.params, jnp.zeros((5, 8, 8, 1))).shape
      (5, 10)
    """
    if name not in MODEL_NAMES:
        raise ValueError(
            f"name={name!r} is not a known model; pass one of "
            f"{', '.join(repr(n) for n in MODEL_NAMES)}."
        )
    input_shape = _validation.check_input_shape(input_shape)
    num_classes = _check_classes(num_classes)
    seed = _validation.check_nonnegative_int(seed, "seed")
    height, width, channels = input_shape
    if name in ("cnn", "linen-cnn") and (height, width) != (28, 28):
        raise ValueError(
            f"name={name!r} is the published 28x28 DP CNN but input_shape={input_shape}; "
            f"use name='gn-cnn' (any size) or 'mlp' for these images."
        )
    if name.startswith("linen-"):
        module = (
            LinenMLP(num_classes=num_classes)
            if name == "linen-mlp"
            else LinenCNN(num_classes=num_classes)
        )
        sample_input = jnp.zeros((1, *input_shape), jnp.float32)
        return functional(module, sample_input=sample_input, key=jax.random.key(seed))
    rngs = nnx.Rngs(seed)
    if name == "logreg":
        model = LogisticRegression(input_shape, num_classes, rngs=rngs)
    elif name == "mlp":
        model = MLP(input_shape, num_classes, rngs=rngs)
    elif name == "cnn":
        model = DPCNN(num_classes, channels, rngs=rngs)
    elif name == "scatter-cnn":
        model = ScatterCNN(num_classes, input_shape, rngs=rngs)
    else:
        model = GroupNormCNN(num_classes, channels, rngs=rngs)
    return functional(model)
