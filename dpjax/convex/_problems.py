"""Convex problems: losses, their stated constants, feature clipping and the solver.

A :class:`ConvexProblem` is L2-regularized empirical risk minimization

    J_D(theta) = (1/n) sum_i loss(theta; x_i, y_i) + (l2_reg / 2) ||theta||^2

over clipped feature vectors. Its Lipschitz constant L and smoothness beta are
computed from the stated ``data_norm`` (and ``label_range`` for ridge), never from
the data. The solver (optax L-BFGS, or an exact solve for ridge) must reach a
stated gradient-norm tolerance; otherwise :class:`ConvergenceError` is raised and
nothing is released.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import _validation

LOSSES = ("logistic", "multinomial", "huber_svm", "ridge")
"""The losses: binary logistic (one-vs-rest for K > 2), multinomial logistic
(softmax cross-entropy on the full parameter matrix), smoothed-hinge SVM
(one-vs-rest for K > 2) and ridge (squared error)."""


NEIGHBOURS = ("add-remove", "replace-one")
"""The neighbouring relations: add or remove one example (the normalizer n public),
or replace one."""


class ConvergenceError(RuntimeError):
    """The solver did not reach the stated gradient-norm tolerance; nothing was released."""


@dataclasses.dataclass(frozen=True)
class ConvexProblem:
    """An L2-regularized convex ERM problem whose constants come from stated bounds only.

    Host side. Each feature vector is clipped to L2 norm ``data_norm`` (rows with
    a larger norm are scaled down, never dropped); with ``fit_intercept`` a
    constant feature 1 is appended AFTER clipping, so every augmented row has
    norm at most ``R = sqrt(data_norm**2 + 1)`` (``R = data_norm`` without
    intercept). The intercept is regularized like the weights (strong convexity
    needs it). The constants, per example and in the full parameter:

    ============  ======================  ==================  ==========================
    loss          Lipschitz L             smoothness beta     Hessian rank per example
    ============  ======================  ==================  ==========================
    logistic      R                       R^2 / 4             1
    huber_svm     R                       R^2 / (2 h)         1
    multinomial   sqrt(2) R               R^2 / 2             K - 1
    ridge         R B (1 + R/sqrt(l2))    R^2                 1 (*)
    ============  ======================  ==================  ==========================

    multinomial: the gradient in W (d x K) is ``x (p - e_y)^T`` with Frobenius
    norm ``||x|| ||p - e_y|| <= sqrt(2) R``. ridge: labels are clipped to
    ``label_range = (lo, hi)`` and centred, so ``|y| <= B = (hi - lo) / 2``; every
    minimizer lies in the ball ``||theta|| <= B / sqrt(l2_reg)`` (as
    ``J(theta*) <= J(0) <= B^2 / 2``), where the loss is L-Lipschitz; (*) for
    add/remove, :meth:`sensitivity` widens the ball for n + 1 rows.

    Args:
      loss: one of :data:`LOSSES`.
      l2_reg: lambda > 0 (strong convexity; lambda = 0 is refused).
      data_norm: the clip norm of the feature vectors, > 0, chosen WITHOUT looking
        at the data (e.g. ``sqrt(d)`` for features in [0, 1]).
      fit_intercept: append a constant feature 1 after clipping.
      num_classes: K >= 2 for classification; 1 for ridge.
      huber_h: the smoothing width h of the smoothed hinge, > 0.
      label_range: ``(lo, hi)`` for ridge, lo < hi.
      neighbours: ``"add-remove"`` (one example added or removed, the normalizer n
        public and fixed: the relation of dpjax's DP-SGD accounting, so the
        records compose with DP-SGD steps) or ``"replace-one"`` (twice the
        sensitivity).

    Raises:
      ValueError: for an invalid value (named, with the fix).

    Example:
      >>> from dpjax.convex import ConvexProblem
      >>> p = ConvexProblem("multinomial", l2_reg=0.01, data_norm=3.0, num_classes=10,
      ...                   fit_intercept=False)
      >>> round(p.lipschitz, 4), p.smoothness
      (4.2426, 4.5)

    **Privacy:** the constants are true only for rows passed through
    :meth:`prepare` (clipped); they never depend on the data.
    """

    loss: str
    l2_reg: float
    data_norm: float
    fit_intercept: bool = True
    num_classes: int = 2
    huber_h: float = 0.5
    label_range: tuple[float, float] | None = None
    neighbours: str = "add-remove"
    binary_losses: ClassVar[tuple[str, ...]] = ("logistic", "huber_svm")

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not one of {LOSSES}; pass e.g. 'logistic'.")
        if not _validation._is_real(self.l2_reg) or not self.l2_reg > 0:
            raise ValueError(
                f"l2_reg={self.l2_reg!r} must be > 0: the sensitivity 2L/(n lambda) needs a "
                "lambda-strongly convex objective. Pass e.g. l2_reg=1e-3."
            )
        object.__setattr__(
            self, "l2_reg", _validation.check_positive_float(self.l2_reg, "l2_reg", "1e-3")
        )
        object.__setattr__(
            self,
            "data_norm",
            _validation.check_positive_float(self.data_norm, "data_norm", "1.0"),
        )
        object.__setattr__(
            self, "huber_h", _validation.check_positive_float(self.huber_h, "huber_h", "0.5")
        )
        if self.neighbours not in NEIGHBOURS:
            raise ValueError(
                f"neighbours={self.neighbours!r} is not one of {NEIGHBOURS}; pass 'add-remove'."
            )
        if self.loss == "ridge":
            lr = self.label_range
            if (
                lr is None
                or len(lr) != 2
                or not all(_validation._is_real(v) and math.isfinite(v) for v in lr)
                or not lr[0] < lr[1]
            ):
                raise ValueError(
                    f"label_range={lr!r}: ridge needs a stated finite label range (lo, hi) with "
                    "lo < hi, chosen without looking at the labels; e.g. label_range=(-1.0, 1.0)."
                )
            object.__setattr__(self, "label_range", (float(lr[0]), float(lr[1])))
            object.__setattr__(self, "num_classes", 1)
        else:
            k = self.num_classes
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
                raise ValueError(
                    f"num_classes={k!r} must be an integer >= 2 for {self.loss!r}; the data "
                    "needs at least two classes."
                )
            object.__setattr__(self, "num_classes", int(k))

    # -- stated constants
    @property
    def row_norm(self) -> float:
        """R: the bound on every augmented (clipped, intercept-appended) row's norm."""
        return math.sqrt(self.data_norm**2 + 1.0) if self.fit_intercept else self.data_norm

    @property
    def label_bound(self) -> float:
        """B: the bound on the centred ridge labels (0 for classification)."""
        if self.label_range is None:
            return 0.0
        return (self.label_range[1] - self.label_range[0]) / 2.0

    @property
    def lipschitz(self) -> float:
        """L: the per-example gradient norm bound, in the full parameter (see the table)."""
        r = self.row_norm
        if self.loss == "multinomial":
            return math.sqrt(2.0) * r
        if self.loss == "ridge":
            b = self.label_bound
            return r * b * (1.0 + r / math.sqrt(self.l2_reg))
        return r

    @property
    def smoothness(self) -> float:
        """beta: the bound on the per-example Hessian's largest eigenvalue."""
        r2 = self.row_norm**2
        return {
            "logistic": r2 / 4.0,
            "huber_svm": r2 / (2.0 * self.huber_h),
            "multinomial": r2 / 2.0,
            "ridge": r2,
        }[self.loss]

    @property
    def one_vs_rest(self) -> bool:
        """Whether the model is K separate binary problems (binary losses with K > 2)."""
        return self.loss in self.binary_losses and self.num_classes > 2

    @property
    def num_outputs(self) -> int:
        """Columns of the parameter matrix (1 for binary and ridge, K otherwise)."""
        if self.loss == "ridge" or (self.loss in self.binary_losses and self.num_classes == 2):
            return 1
        return self.num_classes

    @property
    def gradient_difference(self) -> float:
        """The bound on ``||grad loss(z) - grad loss(z')||`` between neighbours' differing terms.

        ``L`` for add/remove (one term appears), ``2 L`` for replace-one.
        """
        return self.lipschitz * (1.0 if self.neighbours == "add-remove" else 2.0)

    @property
    def hessian_rank(self) -> int:
        """The rank of the Hessian difference between neighbours (binary GLMs: 1 or 2)."""
        return 1 if self.neighbours == "add-remove" else 2

    def sensitivity(self, n: int) -> float:
        """The L2 distance bound between the minimizers of J on neighbouring data sets.

        ``2 L / (n lambda)`` for replace-one; ``L / (n lambda)`` for add/remove-one with
        the normalizer n of J held fixed (n public, as dpjax's DP-SGD treats the
        data set size). By lambda-strong convexity: the objectives differ by one
        term of gradient norm at most ``gradient_difference / n`` (Chaudhuri et al.
        2011, Lemma 7). For one binary problem, one OvR column, the whole
        multinomial matrix, or ridge (whose Lipschitz ball, for a neighbour of up
        to n + 1 rows, has radius ``B sqrt((n + 1) / (n lambda))``).

        Args:
          n: the number of examples (the objective's normalizer), >= 1.

        Returns:
          The sensitivity.

        Raises:
          ValueError: if n is not a positive integer.
        """
        n = _validation.check_positive_int(n, "n")
        grad_diff = self.gradient_difference
        if self.loss == "ridge":
            r, b = self.row_norm, self.label_bound
            lip = r * b * (1.0 + r * math.sqrt((n + 1) / (n * self.l2_reg)))
            grad_diff = lip * (1.0 if self.neighbours == "add-remove" else 2.0)
        return grad_diff / (n * self.l2_reg)

    # -- data
    def prepare(self, x: Any, y: Any | None = None) -> tuple[jax.Array, jax.Array | None]:
        """Clips the rows of `x` to ``data_norm``, appends the intercept, encodes `y`.

        Returns ``(features (n, d'), targets)``: for binary losses targets in
        {-1, +1} of shape (n, num_outputs) (OvR: +1 for the column's class); for
        multinomial integer labels (n,); for ridge clipped, centred labels (n, 1).

        Raises:
          ValueError: for non-finite features, labels out of range, or bad shapes.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"X has shape {x.shape}; expected (n_samples, n_features), n >= 1.")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError(
                "X contains NaN or infinite values; impute them first (with a rule that does "
                "not look at other rows) - clipping cannot bound a non-finite row."
            )
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x * np.minimum(1.0, self.data_norm / np.maximum(norms, 1e-30)).astype(np.float32)
        if self.fit_intercept:
            x = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], axis=1)
        feats = jnp.asarray(x)
        if y is None:
            return feats, None
        labels = np.asarray(y)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"y has shape {labels.shape}; expected ({x.shape[0]},).")
        if self.loss == "ridge":
            assert self.label_range is not None  # checked at construction
            lo, hi = self.label_range
            labels = labels.astype(np.float32)
            if not np.all(np.isfinite(labels)):
                raise ValueError("y contains NaN or infinite values.")
            yc = np.clip(labels, lo, hi) - (lo + hi) / 2.0
            return feats, jnp.asarray(yc[:, None], jnp.float32)
        if (
            not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
            or labels.max() >= self.num_classes
        ):
            raise ValueError(
                f"y must hold integer class indices in [0, {self.num_classes}); got dtype "
                f"{labels.dtype} and range [{labels.min()}, {labels.max()}]."
            )
        if self.loss == "multinomial":
            return feats, jnp.asarray(labels, jnp.int32)
        if self.num_classes == 2:
            signs = np.where(labels == 1, 1.0, -1.0)[:, None]
        else:
            signs = np.where(labels[:, None] == np.arange(self.num_classes)[None, :], 1.0, -1.0)
        return feats, jnp.asarray(signs, jnp.float32)

    def init_params(self, num_features: int) -> jax.Array:
        """Zeros of shape (num_features, num_outputs)."""
        return jnp.zeros((num_features, self.num_outputs), jnp.float32)


def example_losses(problem: ConvexProblem, theta: jax.Array, x: jax.Array, t: jax.Array):
    """Per-example losses, shape (n,) for multinomial, (n, columns) otherwise (device side)."""
    scores = x @ theta  # (n, columns)
    if problem.loss == "multinomial":
        logz = jax.nn.logsumexp(scores, axis=1)
        return logz - jnp.take_along_axis(scores, t[:, None], axis=1)[:, 0]
    if problem.loss == "ridge":
        return 0.5 * (scores - t) ** 2
    z = scores * t
    if problem.loss == "logistic":
        return jax.nn.softplus(-z)
    h = problem.huber_h
    return jnp.where(
        z > 1.0 + h,
        0.0,
        jnp.where(z < 1.0 - h, 1.0 - z, (1.0 + h - z) ** 2 / (4.0 * h)),
    )


def objective(problem: ConvexProblem, x: jax.Array, t: jax.Array, reg: Any, linear=None):
    """``theta -> (1/n) sum_i loss_i(theta) + (reg/2)||theta||^2 + <linear, theta> / n``.

    Device side; `reg` is the total L2 coefficient (``l2_reg`` plus any extra).

    Columns of an OvR problem are independent: the sum over columns is minimized
    column by column.
    """
    n = x.shape[0]

    def fun(theta):
        value = jnp.sum(example_losses(problem, theta, x, t)) / n
        value = value + 0.5 * reg * jnp.sum(theta**2)
        if linear is not None:
            value = value + jnp.sum(linear * theta) / n
        return value

    return fun


@dataclasses.dataclass(frozen=True)
class Solution:
    """A solver result.

    Attributes:
      params: the parameter matrix (d', columns).
      grad_norm: the L2 norm of the objective's gradient at params, per column.
      iterations: solver iterations (0 for the exact ridge solve).
    """

    params: jax.Array
    grad_norm: np.ndarray
    iterations: int


def solve(
    problem: ConvexProblem,
    x: jax.Array,
    t: jax.Array,
    *,
    tol: float,
    max_iter: int = 500,
    extra_reg: float = 0.0,
    linear: jax.Array | None = None,
    init: jax.Array | None = None,
) -> Solution:
    """Minimizes :func:`objective` to gradient norm <= `tol` per column, or raises.

    Host-side driver of a jitted optax L-BFGS loop (an exact linear solve for
    ridge). The gradient norm is recomputed at the returned point. `init` (a
    warm start, e.g. a previous solution) changes only the iterations: every
    guarantee rests on the gradient norm at the returned point.

    Raises:
      ConvergenceError: if some column's gradient norm exceeds `tol` (nothing
        may be released then).
    """
    tol = _validation.check_positive_float(tol, "tol", "1e-6")
    theta0 = problem.init_params(x.shape[1])
    if init is not None:
        if np.shape(init) != theta0.shape:
            raise ValueError(f"init has shape {np.shape(init)}; expected {theta0.shape}.")
        theta0 = jnp.asarray(init, jnp.float32)
    lin = jnp.zeros_like(theta0) if linear is None else jnp.asarray(linear, jnp.float32)
    # What the objective reads from the problem (loss, classes, h): one compilation serves
    # every lambda, data_norm, intercept and neighbouring relation of a loss and shape.
    spec = ConvexProblem(
        problem.loss, 1.0, 1.0, False, problem.num_classes, problem.huber_h, (-1.0, 1.0)
    )
    reg = jnp.float32(problem.l2_reg + extra_reg)
    if problem.loss == "ridge":
        params, iters = _ridge_solve(x, t, lin, reg), 0
    else:
        params, count = _lbfgs_loop(
            spec, max_iter, x, t, lin, reg, theta0, jnp.float32(0.5 * tol)
        )  # the loop stops below tol so that the recomputed gradient norm meets it
        iters = int(count)
    grad_norm = np.asarray(_grad_norms(spec, x, t, lin, reg, params), np.float64)
    if not np.all(grad_norm <= tol):
        raise ConvergenceError(
            f"the solver stopped at gradient norm {float(np.max(grad_norm)):.3g} > tol={tol:.3g} "
            f"after {iters} iterations; nothing was released. Raise max_iter, raise l2_reg "
            "(better conditioning), or use mechanism='approximate-minima' with a larger tol."
        )
    return Solution(params=params, grad_norm=grad_norm, iterations=int(iters))


@jax.jit
def _ridge_solve(x, t, linear, reg):
    n = x.shape[0]
    gram = x.T @ x / n + reg * jnp.eye(x.shape[1], dtype=x.dtype)
    return jnp.linalg.solve(gram, x.T @ t / n - linear / n)


@jax.jit(static_argnums=0)
def _grad_norms(problem, x, t, linear, reg, params):
    """Per column (OvR, binary, ridge) or of the whole matrix (multinomial)."""
    grads = jax.grad(objective(problem, x, t, reg, linear))(params)
    if problem.loss == "multinomial":
        return jnp.linalg.norm(grads)[None]
    return jnp.linalg.norm(grads, axis=0)


@jax.jit(static_argnums=(0, 1))
def _lbfgs_loop(problem, max_iter, x, t, linear, reg, theta0, tol):
    fun = objective(problem, x, t, reg, linear)
    opt = optax.lbfgs(memory_size=20)  # zoom line search (strong Wolfe)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def err(grad):
        if problem.one_vs_rest:
            return jnp.max(jnp.linalg.norm(grad, axis=0))
        return jnp.linalg.norm(grad)

    def step(carry):
        params, state, _ = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        params = optax.apply_updates(params, updates)
        return params, state, err(optax.tree.get(state, "grad"))

    def cont(carry):
        _, state, e = carry
        count = optax.tree.get(state, "count")
        return (count == 0) | ((count < max_iter) & (e > tol))

    state = opt.init(theta0)
    init = (theta0, state, jnp.array(jnp.inf, jnp.float32))
    params, state, _ = jax.lax.while_loop(cont, step, init)
    return params, optax.tree.get(state, "count")
