"""A small functional classifier for federated benchmarks and examples (device side)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validation

PyTree = Any


def mlp_classifier(
    input_dim: int, num_classes: int, hidden: Sequence[int] = (), seed: int = 0
) -> tuple[PyTree, Callable[..., jax.Array], Callable[..., jax.Array]]:
    """A multilayer perceptron (tanh; no hidden layer: multinomial logistic regression).

    Args:
      input_dim: features per example.
      num_classes: number of labels.
      hidden: hidden layer widths.
      seed: the initialization seed (public).

    Returns:
      `(params, loss_fn, predict)`: a list of `{"w", "b"}` dicts;
      `loss_fn(params, x, y)` the cross-entropy of ONE example; `predict(params,
      x)` the logits of a batch.

    Raises:
      ValueError: for an invalid size.

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.federated import mlp_classifier
      >>> params, loss_fn, predict = mlp_classifier(4, 3, hidden=(8,))
      >>> round(float(loss_fn(params, jnp.zeros(4), 0)), 3) > 0, predict(params, jnp.ones((2, 4))).shape
      (True, (2, 3))
    """
    sizes = [_validation.check_positive_int(input_dim, "input_dim", "784")]
    sizes += [_validation.check_positive_int(h, "hidden", "128") for h in hidden]
    sizes += [_validation.check_positive_int(num_classes, "num_classes", "10")]
    rng = np.random.default_rng(seed)
    params = [
        {
            "w": jnp.asarray(rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)),
            "b": jnp.zeros(b, jnp.float32),
        }
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]

    def predict(p: PyTree, x: jax.Array) -> jax.Array:
        h = x
        for i, layer in enumerate(p):
            h = h @ layer["w"] + layer["b"][None]
            if i < len(p) - 1:
                h = jnp.tanh(h)
        return h

    def loss_fn(p: PyTree, x: jax.Array, y: jax.Array) -> jax.Array:
        logits = predict(p, x[None])[0]
        return jax.nn.logsumexp(logits) - logits[y]

    return params, loss_fn, predict
