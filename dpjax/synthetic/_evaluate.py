"""Train on synthetic, test on real (TSTR) with a classifier fixed before looking at any data.

Host loop around jitted full-batch steps. The classifier and ALL its
hyperparameters are the constants of :class:`TSTRConfig`, chosen in advance: no
choice is made on the real test set (which would inflate the score and break
the guarantee; Gong et al., DPImageBench, 2025).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validation


@dataclasses.dataclass(frozen=True)
class TSTRConfig:
    """The downstream classifier: multinomial logistic regression, fixed hyperparameters.

    Args:
      steps: full-batch Adam steps, >= 1.
      learning_rate: Adam's step size, > 0.
      weight_decay: L2 penalty on the weights, > 0.

    Example:
      >>> from dpjax.synthetic import TSTRConfig
      >>> TSTRConfig().steps
      500
    """

    steps: int = 500
    learning_rate: float = 0.01
    weight_decay: float = 1e-4

    def __post_init__(self):
        _validation.check_positive_int(self.steps, "steps", "500")
        _validation.check_positive_float(self.learning_rate, "learning_rate", "0.01")
        _validation.check_positive_float(self.weight_decay, "weight_decay", "1e-4")


def fit_classifier(
    x: Any, y: Any, num_classes: int, config: TSTRConfig = TSTRConfig()
) -> dict[str, jax.Array]:
    """Fits the fixed logistic regression to (synthetic) data; deterministic (zero init).

    Args:
      x: `(N, ...)` inputs, flattened.
      y: `(N,)` integer labels.
      num_classes: K.
      config: the :class:`TSTRConfig`.

    Returns:
      ``{"w": (d, K), "b": (K,)}``.

    Example:
      >>> import numpy as np
      >>> from dpjax.synthetic import TSTRConfig, fit_classifier
      >>> clf = fit_classifier(np.eye(2, dtype=np.float32), np.array([0, 1]), 2, TSTRConfig(steps=5))
      >>> clf["w"].shape
      (2, 2)
    """
    k = _validation.check_positive_int(num_classes, "num_classes", "10")
    xs = jnp.asarray(np.asarray(x, np.float32).reshape(len(x), -1))
    ys = jnp.asarray(np.asarray(y, np.int32))
    params = {"w": jnp.zeros((xs.shape[1], k), jnp.float32), "b": jnp.zeros((k,), jnp.float32)}
    opt = optax.adam(config.learning_rate)

    def loss(p: dict[str, jax.Array]) -> jax.Array:
        logits = xs @ p["w"] + p["b"][None, :]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()
        return ce + config.weight_decay * jnp.sum(jnp.square(p["w"]))

    @jax.jit
    def run(p: dict[str, jax.Array]) -> dict[str, jax.Array]:
        def body(carry: Any, _: None) -> tuple[Any, None]:
            p, s = carry
            u, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), None, length=config.steps)
        return p

    return run(params)


def accuracy(classifier: dict[str, jax.Array], x: Any, y: Any) -> float:
    """The classifier's accuracy on `(x, y)`.

    Example:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dpjax.synthetic import accuracy
      >>> accuracy({"w": jnp.eye(2), "b": jnp.zeros(2)}, np.eye(2), np.array([0, 1]))
      1.0
    """
    xs = jnp.asarray(np.asarray(x, np.float32).reshape(len(x), -1))
    logits = xs @ classifier["w"] + classifier["b"][None, :]
    return float(jnp.mean(jnp.argmax(logits, axis=1) == jnp.asarray(y)))


def tstr_accuracy(
    synthetic_x: Any,
    synthetic_y: Any,
    test_x: Any,
    test_y: Any,
    num_classes: int,
    config: TSTRConfig = TSTRConfig(),
) -> float:
    """Train on synthetic, test on real: the fixed classifier's accuracy on the real test set.

    The test set is read once, for the final number; nothing is chosen on it.

    Args:
      synthetic_x: `(M, ...)` synthetic inputs.
      synthetic_y: `(M,)` their labels.
      test_x: `(N, ...)` real test inputs.
      test_y: `(N,)` real test labels.
      num_classes: K.
      config: the :class:`TSTRConfig` (fixed in advance).

    Returns:
      The accuracy, in [0, 1].

    Example:
      >>> import numpy as np
      >>> from dpjax.synthetic import tstr_accuracy
      >>> x = np.eye(2, dtype=np.float32)
      >>> tstr_accuracy(x, np.array([0, 1]), x, np.array([0, 1]), 2)
      1.0

    **Privacy:** the accuracy is computed from the real test set without noise;
    it is a diagnostic for the data owner, not covered by the guarantee.

    References:
      Esteban, Hyland, Ratsch, "Real-valued (Medical) Time Series Generation with
      Recurrent Conditional GANs", 2017 (TSTR).
    """
    clf = fit_classifier(synthetic_x, synthetic_y, num_classes, config)
    return accuracy(clf, test_x, test_y)
