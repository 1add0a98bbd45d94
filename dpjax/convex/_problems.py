"""Convex problems: losses, their stated constants, feature clipping and the solver.

A :class:`ConvexProblem` is L2-regularized empirical risk minimization

    J_D(theta) = (1/N) sum_i loss(theta; x_i, y_i) + (l2_reg / 2) ||theta||^2

over clipped feature vectors, with N the number of rows given (the default) or a
public ``normalizer`` held fixed whatever the data. Its Lipschitz constant L
and smoothness beta are computed from the stated ``data_norm`` (and
``label_range`` for ridge), never from the data. The solver (optax L-BFGS, or an
exact solve for ridge) returns a point within ``tol / lambda`` of the minimizer
whatever the data: when L-BFGS misses the gradient-norm tolerance, a fixed
number of accelerated gradient steps, computed from public constants only,
reaches it. Nothing here raises, warns or stops early in a way a caller can
observe because of the data's values (issue 17, section 5).
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


NEIGHBOURS = ("replace-one", "add-remove")
"""The neighbouring relations: replace one example, or add or remove one. By default
J is the mean over the rows given, so adding or removing a row moves its normalizer
n too, and both relations have the output sensitivity ``2 L / (n lambda)``. With a
public ``normalizer`` N (held fixed), add/remove has ``L / (N lambda)`` and
replace-one ``2 L / (N lambda)`` (see :meth:`ConvexProblem.sensitivity`)."""


class ConvergenceError(RuntimeError):
    """Kept for compatibility: no longer raised.

    Until the issue 17 review, :func:`solve` raised it when L-BFGS missed its
    tolerance, after optimizing on the private data: an unaccounted, data-dependent
    event. The solver now always returns a point within ``tol / lambda`` of the
    minimizer (:func:`solve`), so there is nothing to raise.
    """


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
    minimizer, of any number of rows, lies in the ball ``||theta|| <= B /
    sqrt(l2_reg)`` (as ``J(theta*) <= J(0) <= B^2 / 2``), where the loss is
    L-Lipschitz (*).

    Args:
      loss: one of :data:`LOSSES`.
      l2_reg: lambda > 0 (strong convexity; lambda = 0 is refused).
      data_norm: the clip norm of the feature vectors, > 0, chosen WITHOUT looking
        at the data (e.g. ``sqrt(d)`` for features in [0, 1]).
      fit_intercept: append a constant feature 1 after clipping.
      num_classes: K >= 2 for classification; 1 for ridge.
      huber_h: the smoothing width h of the smoothed hinge, > 0.
      label_range: ``(lo, hi)`` for ridge, lo < hi.
      neighbours: ``"replace-one"`` (default) or ``"add-remove"``. Without a
        normalizer output perturbation has the same sensitivity under both
        (:meth:`sensitivity`: J is the mean over the rows given, so an added or
        removed row moves the normalizer n too), so its records compose with
        DP-SGD steps (add/remove). Objective perturbation and approximate minima
        perturbation need ``"replace-one"``: their analysis holds the
        regularizer's weight ``N lambda`` in ``N J`` and the number of loss
        terms' difference (one replaced) as stated.
      normalizer: None (default: N = n, the number of rows given) or a public
        integer N >= 1, the data set size bound, chosen WITHOUT looking at the
        data: J is then ``(1/N) sum_i loss_i + (lambda/2)||theta||^2`` whatever the
        number n of rows, and output perturbation's sensitivity under
        ``"add-remove"`` halves to ``L / (N lambda)`` (:meth:`sensitivity`).
        Classification losses only (ridge's Lipschitz ball grows with n / N).

    Raises:
      ValueError: for an invalid value (named, with the fix).

    Example:
      >>> from dpjax.convex import ConvexProblem
      >>> p = ConvexProblem("multinomial", l2_reg=0.01, data_norm=3.0, num_classes=10,
      ...                   fit_intercept=False)
      >>> round(p.lipschitz, 4), p.smoothness
      (4.2426, 4.5)
      >>> q = ConvexProblem("logistic", l2_reg=0.1, data_norm=1.0, fit_intercept=False,
      ...                   neighbours="add-remove", normalizer=1000)
      >>> q.sensitivity() == q.lipschitz / (1000 * 0.1)  # half of 2 L / (N lambda)
      True

    **Privacy:** the constants are true only for rows passed through
    :meth:`prepare` (clipped; a non-finite row zeroed); they never depend on the
    data. Before the issue 17 review, ``"add-remove"`` (then the default) stated
    ``L / (n lambda)``, true only for a normalizer held fixed; one row really
    added moved a smoothed-hinge minimizer by ``2 L / ((n + 1) lambda)``, 1.8 times
    that at n = 10.

    **Privacy (normalizer):** N must be chosen WITHOUT looking at the data (a
    published data set size, a registry's count, an upper bound fixed by
    design): a normalizer read from the data would make the sensitivity, and the
    noise, data-dependent. The bound ``L / (N lambda)`` (add/remove) or
    ``2 L / (N lambda)`` (replace-one) holds for ANY number n of rows, equal to N
    or not, because the objective divides by N whatever n is (one row changes
    one term ``loss / N``). n != N only changes utility: for n < N the data term
    has less weight against the regularizer (the fit shrinks towards 0), for
    n > N more; the solver's work grows with n / N (the running time, outside
    the guarantee). The released noise no longer depends on n, so n need not be
    public. Every record is valid for dpjax's add/remove accounting (with a
    normalizer, replace-one noise of ``2 L / (N lambda)`` is twice what
    add/remove needs).

    References:
      Chaudhuri, Monteleoni & Sarwate, "Differentially Private Empirical Risk
      Minimization", JMLR 2011 (Lemma 7, Corollary 8: output perturbation of an
      objective normalized by a fixed n).
    """

    loss: str
    l2_reg: float
    data_norm: float
    fit_intercept: bool = True
    num_classes: int = 2
    huber_h: float = 0.5
    label_range: tuple[float, float] | None = None
    neighbours: str = "replace-one"
    normalizer: int | None = None
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
                f"neighbours={self.neighbours!r} is not one of {NEIGHBOURS}; pass 'replace-one'."
            )
        if self.normalizer is not None:
            nz = self.normalizer
            if isinstance(nz, bool) or not isinstance(nz, int | np.integer) or nz < 1:
                raise ValueError(
                    f"normalizer={nz!r} must be None or a public integer N >= 1 (the data set "
                    "size bound, chosen without looking at the data); pass e.g. "
                    "normalizer=60000, or normalizer=None to divide by the number of rows."
                )
            if self.loss == "ridge":
                raise ValueError(
                    f"normalizer={nz!r} with loss='ridge': ridge's Lipschitz constant holds on "
                    "the ball ||theta|| <= B / sqrt(l2_reg), which grows with n / N when the "
                    "normalizer is fixed. Pass normalizer=None for ridge."
                )
            object.__setattr__(self, "normalizer", int(nz))
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
        """``2 L``: the bound on ``||grad loss(z) - grad loss(z')||`` for replace-one.

        The G of objective perturbation (which needs ``neighbours="replace-one"``).
        """
        return 2.0 * self.lipschitz

    @property
    def hessian_rank(self) -> int:
        """2: the rank of the Hessian difference of replace-one neighbours (binary GLMs)."""
        return 2

    @property
    def loss_at_zero(self) -> float:
        """The per-example loss at theta = 0 (every score 0): a public constant."""
        if self.loss == "logistic":
            return math.log(2.0)
        if self.loss == "multinomial":
            return math.log(self.num_classes)
        if self.loss == "huber_svm":
            h = self.huber_h
            return 1.0 if h < 1.0 else (1.0 + h) ** 2 / (4.0 * h)
        return self.label_bound**2 / 2.0

    def normalizer_for(self, n: int) -> int:
        """N, the objective's normalizer for a data set of n rows: ``normalizer``, else n.

        Args:
          n: the number of rows given, >= 1.

        Returns:
          The public ``normalizer`` if the problem has one (whatever n is), else n.

        Raises:
          ValueError: if n is not a positive integer.

        Example:
          >>> from dpjax.convex import ConvexProblem
          >>> ConvexProblem("logistic", 0.1, 1.0, normalizer=500).normalizer_for(480)
          500
          >>> ConvexProblem("logistic", 0.1, 1.0).normalizer_for(480)
          480

        **Privacy:** with a normalizer the result never depends on n (see the
        class docstring's privacy paragraph on n != N).
        """
        n = _validation.check_positive_int(n, "n")
        return n if self.normalizer is None else self.normalizer

    def sensitivity(self, n: int | None = None) -> float:
        """The L2 distance bound between neighbours' minimizers of J.

        ====================  ======================  ======================
        normalizer            replace-one             add-remove
        ====================  ======================  ======================
        None (N = n, moves)   ``2 L / (n lambda)``    ``2 L / (n lambda)``
        N (public, fixed)     ``2 L / (N lambda)``    ``L / (N lambda)``
        ====================  ======================  ======================

        Fixed normalizer N: neighbours' objectives differ by one term
        ``loss_z / N`` (add/remove: gradient norm at most ``L / N``) or by
        ``(loss_z' - loss_z) / N`` (replace-one: at most ``2 L / N``), and
        lambda-strong convexity turns a gradient difference g into a distance
        ``g / lambda`` (Chaudhuri et al. 2011, Lemma 7). This holds for ANY
        number n of rows: n need not equal N, and it need not be public.

        Moving normalizer (the default, J the mean over the rows given): with
        ``D' = D + z`` (n + 1 rows), ``grad J_D'(theta_D) = (lambda theta_D + grad
        loss_z(theta_D)) / (n + 1)``, and ``||lambda theta_D|| = ||mean grad loss||
        <= L``: the minimizers are at most ``2 L / ((n + 1) lambda)`` apart, so a
        data set of n rows is within ``2 L / (n lambda)`` of both its neighbours
        (n - 1 and n + 1 rows). The bound ``L / (n lambda)`` this method returned
        for add/remove before the issue 17 review holds only for a normalizer
        held fixed, which the code then never did (``normalizer`` now does).
        For one binary problem, one OvR column, the whole multinomial matrix, or
        ridge (whose minimizers, of any number of rows, lie in the ball of
        radius ``B / sqrt(lambda)`` where ``L`` holds).

        Args:
          n: the number of rows of the released data set, >= 1; required without
            a normalizer, ignored (may be None) with one.

        Returns:
          The sensitivity (see the table).

        Raises:
          ValueError: if n is needed and not a positive integer.

        Example:
          >>> from dpjax.convex import ConvexProblem
          >>> p = ConvexProblem("logistic", l2_reg=0.5, data_norm=1.0, fit_intercept=False)
          >>> p.sensitivity(10) == 2 * p.lipschitz / (10 * 0.5)
          True

        **Privacy:** without a normalizer the noise scale follows n, the number
        of rows, which dpjax then treats as public (as it does the data set size
        for DP-SGD): two neighbours of n and n + 1 rows get noise stds that
        differ by a factor ``(n + 1) / n``, a difference the accountant does not
        charge. With a normalizer the sensitivity is a function of public
        constants only.

        References:
          Chaudhuri, Monteleoni & Sarwate, "Differentially Private Empirical Risk
          Minimization", JMLR 2011 (Lemma 7, Corollary 8).
        """
        if self.normalizer is None:
            if n is None:
                raise ValueError(
                    "n=None: without a normalizer the sensitivity needs the number of rows; "
                    "pass sensitivity(n), or construct the problem with normalizer=N."
                )
            big_n = self.normalizer_for(n)
            return self.gradient_difference / (big_n * self.l2_reg)
        factor = 1.0 if self.neighbours == "add-remove" else 2.0
        return factor * self.lipschitz / (self.normalizer * self.l2_reg)

    def sensitivity_rule(self) -> str:
        """The neighbouring relation and the bound :meth:`sensitivity` uses, in words."""
        if self.normalizer is None:
            return (
                f"{self.neighbours}, normalizer n = the number of rows given (moves under "
                "add/remove): 2 L / (n lambda)"
            )
        bound = "L" if self.neighbours == "add-remove" else "2 L"
        return (
            f"{self.neighbours}, public fixed normalizer N = {self.normalizer}: "
            f"{bound} / (N lambda)"
        )

    # -- data
    def prepare(self, x: Any, y: Any | None = None) -> tuple[jax.Array, jax.Array | None]:
        """Clips the rows of `x` to ``data_norm``, appends the intercept, encodes `y`.

        Host side. Returns ``(features (n, d'), targets)``: for binary losses
        targets in {-1, +1} of shape (n, num_outputs) (OvR: +1 for the column's
        class); for multinomial integer labels (n,); for ridge clipped, centred
        labels (n, 1). A row whose features (or, for ridge, label) hold NaN or
        inf becomes an all-zero row, intercept included: its loss is then
        constant, so it adds exactly 0 to every gradient and Hessian (it still
        counts in n). Norms are computed in float64, so a finite row of 1e30 is
        scaled to ``data_norm``, not zeroed by an overflow.

        Raises:
          ValueError: for bad shapes or dtypes, or labels outside [0, num_classes)
            (the declared schema, checked as a caller's error).

        **Privacy:** every augmented row has norm at most ``R``, whatever the
        input (NaN, inf, 1e30). Until the issue 17 review a non-finite row was
        refused with a ValueError before anything was recorded: whether the data
        held such a row was observable, unaccounted.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"X has shape {x.shape}; expected (n_samples, n_features), n >= 1.")
        x = x.astype(np.float64)
        bad = ~np.all(np.isfinite(x), axis=1)  # rows that clipping cannot bound: zeroed
        x[bad] = 0.0
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = (x * np.minimum(1.0, self.data_norm / np.maximum(norms, 1e-300))).astype(np.float32)
        if self.fit_intercept:
            x = np.concatenate([x, np.ones((x.shape[0], 1), np.float32)], axis=1)
        if y is None:
            x[bad] = 0.0
            return jnp.asarray(x), None
        labels = np.asarray(y)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"y has shape {labels.shape}; expected ({x.shape[0]},).")
        if self.loss == "ridge":
            assert self.label_range is not None  # checked at construction
            lo, hi = self.label_range
            labels = labels.astype(np.float64)
            bad |= ~np.isfinite(labels)
            x[bad] = 0.0
            yc = np.clip(np.where(bad, (lo + hi) / 2.0, labels), lo, hi) - (lo + hi) / 2.0
            return jnp.asarray(x), jnp.asarray(yc[:, None], jnp.float32)
        x[bad] = 0.0
        feats = jnp.asarray(x)
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


def objective(problem: ConvexProblem, x: jax.Array, t: jax.Array, reg: Any, linear=None, norm=None):
    """``theta -> (1/N) sum_i loss_i(theta) + (reg/2)||theta||^2 + <linear, theta> / N``.

    Device side; `reg` is the total L2 coefficient (``l2_reg`` plus any extra);
    `norm` is N (the rows' count when None; :meth:`ConvexProblem.normalizer_for`).

    Columns of an OvR problem are independent: the sum over columns is minimized
    column by column.
    """
    n = x.shape[0] if norm is None else norm

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
      distance: ``tol / reg``, the public bound on the distance from params to the
        exact minimizer (per column for OvR), the same for every data set.
    """

    params: jax.Array
    distance: float


def fixed_iterations(
    problem: ConvexProblem, reg: float, tol: float, linear: bool, ratio: float = 1.0
) -> int:
    """The number of accelerated gradient steps that reach ``tol / reg``, from public constants.

    Host side. Nesterov's method for an alpha-strongly convex, beta-smooth f
    (alpha = `reg`, ``beta = problem.smoothness + reg``, ``kappa = beta / alpha``),
    started at the minimizer x0 of the regularizer and linear term, reaches
    ``f(y) - f* <= (1 + kappa) F0 exp(-T / sqrt(kappa))`` after T steps (Bubeck
    2015, Theorem 3.18, with ``||x0 - x*||**2 <= 2 F0 / alpha``), and
    ``||y - x*||**2 <= 2 (f(y) - f*) / alpha``. ``F0 >= f(x0) - f*`` is
    ``G0**2 / (2 alpha)`` with ``G0 = L`` (at x0 the gradient is the mean loss
    gradient), or, without a linear term (x0 = 0, every loss >= 0), at most the
    loss at 0 (:attr:`ConvexProblem.loss_at_zero`). So
    ``T = ceil(sqrt(kappa) log(2 alpha (1 + kappa) F0 / tol**2))`` gives
    ``||y - x*|| <= tol / alpha``, for a binary problem, each OvR column, or the
    multinomial matrix. With a fixed normalizer N and n > N rows, the data term
    ``(1/N) sum_i loss_i`` is up to ``ratio = n / N`` times the mean: beta, L and the
    loss at 0 are multiplied by ``max(1, ratio)``.

    Args:
      problem: the model (its loss, L, beta).
      reg: the objective's total L2 coefficient alpha, > 0.
      tol: the target, a gradient-norm scale: the distance is ``tol / reg``.
      linear: whether the objective has a linear (noise) term.
      ratio: n / N, the rows over the normalizer (1 without a normalizer).

    Returns:
      T >= 0, a function of public numbers only.

    Example:
      >>> from dpjax.convex import ConvexProblem
      >>> from dpjax.convex._problems import fixed_iterations
      >>> p = ConvexProblem("logistic", l2_reg=0.1, data_norm=1.0, fit_intercept=False)
      >>> fixed_iterations(p, 0.1, 1e-4, linear=False)
      34

    **Privacy:** T depends on ``(loss, data_norm, l2_reg, tol, classes)``, on
    whether there is a linear term and on n / N when n > N (the running time
    only, outside dpjax's guarantee), never on the data's values or the noise.

    References:
      Bubeck, "Convex Optimization: Algorithms and Complexity", Foundations and
      Trends in Machine Learning, 2015 (Theorem 3.18).
    """
    alpha = _validation.check_positive_float(reg, "reg")
    tol = _validation.check_positive_float(tol, "tol")
    scale = max(1.0, _validation.check_positive_float(ratio, "ratio"))
    kappa = (scale * problem.smoothness + alpha) / alpha
    f0 = (scale * problem.lipschitz) ** 2 / (2.0 * alpha)
    if not linear:
        f0 = min(f0, scale * problem.loss_at_zero)
    steps = math.sqrt(kappa) * math.log(2.0 * alpha * (1.0 + kappa) * f0 / tol**2)
    return max(0, math.ceil(steps))


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
    """A point within ``tol / reg`` of the minimizer of :func:`objective`, for any data.

    Host-side driver of jitted loops. Ridge: an exact linear solve. Otherwise
    optax L-BFGS (at most `max_iter` iterations, from `init` if given, else x0,
    the minimizer of the regularizer and linear term); its point is kept if
    every column's gradient norm is at most `tol` (then it is within ``tol / reg``
    of the minimizer, by strong convexity). If not, :func:`fixed_iterations` steps
    of Nesterov's accelerated gradient from x0, a number computed from public
    constants only, reach ``tol / reg``. ``reg = l2_reg + extra_reg``. The
    objective's normalizer is ``problem.normalizer_for(n)`` (N if the problem has
    a public normalizer, else the number n of rows).

    Args:
      problem: the model.
      x: prepared features (n, d').
      t: prepared targets.
      tol: the tolerance, > 0 (gradient-norm scale; the distance is ``tol / reg``).
      max_iter: L-BFGS iterations at most, >= 0; 0 runs the fixed accelerated
        steps alone, whose running time is then data-independent too.
      extra_reg: added to ``problem.l2_reg`` (>= 0).
      linear: a linear term (the objective adds ``<linear, theta> / N``).
      init: a warm start for L-BFGS only, shape (d', columns).

    Returns:
      The :class:`Solution` (params and the public distance bound).

    Raises:
      ValueError: for an invalid argument (never for the data's values).

    Example:
      >>> import numpy as np
      >>> from dpjax.convex import ConvexProblem
      >>> from dpjax.convex._problems import solve
      >>> p = ConvexProblem("logistic", l2_reg=0.1, data_norm=1.0)
      >>> x, t = p.prepare(np.eye(3), np.array([0, 1, 1]))
      >>> sol = solve(p, x, t, tol=1e-4, max_iter=0)  # the fixed steps alone
      >>> sol.params.shape, round(sol.distance, 6)
      ((4, 1), 0.001)

    **Privacy:** nothing here depends on the data except the returned point
    (and the running time, when L-BFGS runs: timing is outside dpjax's
    guarantee). Until the issue 17 review a missed tolerance raised
    :class:`ConvergenceError`, a data-dependent event the accountant was not
    told about. The bound is for exact arithmetic; float32 rounding of the
    solver is not covered.
    """
    tol = _validation.check_positive_float(tol, "tol", "1e-6")
    max_iter = _validation.check_nonnegative_int(max_iter, "max_iter", "500")
    reg_f = problem.l2_reg + float(extra_reg)
    n = int(x.shape[0])
    big_n = problem.normalizer_for(n)  # J's normalizer N (n without a public normalizer)
    norm = jnp.float32(big_n)
    theta0 = problem.init_params(x.shape[1])
    lin = jnp.zeros_like(theta0) if linear is None else jnp.asarray(linear, jnp.float32)
    if linear is not None:
        theta0 = -lin / jnp.float32(big_n * reg_f)  # the minimizer of the regularizer + linear
    start = theta0
    if init is not None:
        if np.shape(init) != theta0.shape:
            raise ValueError(f"init has shape {np.shape(init)}; expected {theta0.shape}.")
        start = jnp.asarray(init, jnp.float32)
    # What the objective reads from the problem (loss, classes, h): one compilation serves
    # every lambda, data_norm, intercept and neighbouring relation of a loss and shape.
    spec = ConvexProblem(
        problem.loss, 1.0, 1.0, False, problem.num_classes, problem.huber_h, (-1.0, 1.0)
    )
    reg = jnp.float32(reg_f)
    if problem.loss == "ridge":
        return Solution(params=_ridge_solve(x, t, lin, reg, norm), distance=tol / reg_f)
    if max_iter > 0:
        params = _lbfgs_loop(
            spec, jnp.int32(max_iter), x, t, lin, reg, start, jnp.float32(0.5 * tol), norm
        )
        grad_norm = np.asarray(_grad_norms(spec, x, t, lin, reg, params, norm), np.float64)
        if np.all(grad_norm <= tol):  # within tol / reg of the minimizer: keep it
            return Solution(params=params, distance=tol / reg_f)
    ratio = max(1.0, n / big_n)  # the data term is up to n / N times a mean
    steps = fixed_iterations(problem, reg_f, tol, linear is not None, ratio)
    beta = ratio * problem.smoothness
    root = math.sqrt((beta + reg_f) / reg_f)
    params = _accelerated(
        spec, x, t, lin, reg, theta0,
        jnp.float32(1.0 / (beta + reg_f)),
        jnp.float32((root - 1.0) / (root + 1.0)),
        jnp.int32(steps), norm,
    )  # fmt: skip
    return Solution(params=params, distance=tol / reg_f)


@jax.jit(static_argnums=0)
def _accelerated(problem, x, t, linear, reg, theta0, step, momentum, steps, norm=None):
    """Nesterov's constant-momentum scheme (Bubeck 2015, eq. 3.17): `steps` steps, no stop."""
    grad = jax.grad(objective(problem, x, t, reg, linear, norm))

    def body(_, carry):
        xk, yk = carry
        y_next = xk - step * grad(xk)
        return (1.0 + momentum) * y_next - momentum * yk, y_next

    _, y = jax.lax.fori_loop(0, steps, body, (theta0, theta0))
    return y


@jax.jit
def _ridge_solve(x, t, linear, reg, n=None):
    n = x.shape[0] if n is None else n
    gram = x.T @ x / n + reg * jnp.eye(x.shape[1], dtype=x.dtype)
    return jnp.linalg.solve(gram, x.T @ t / n - linear / n)


@jax.jit(static_argnums=0)
def _grad_norms(problem, x, t, linear, reg, params, norm=None):
    """Per column (OvR, binary, ridge) or of the whole matrix (multinomial)."""
    grads = jax.grad(objective(problem, x, t, reg, linear, norm))(params)
    if problem.loss == "multinomial":
        return jnp.linalg.norm(grads)[None]
    return jnp.linalg.norm(grads, axis=0)


@jax.jit(static_argnums=0)
def _lbfgs_loop(problem, max_iter, x, t, linear, reg, theta0, tol, norm=None):
    """L-BFGS until the gradient norm is below `tol` or `max_iter` (traced) iterations."""
    fun = objective(problem, x, t, reg, linear, norm)
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
    params, _, _ = jax.lax.while_loop(cont, step, init)
    return params
