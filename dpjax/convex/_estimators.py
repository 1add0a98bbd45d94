"""scikit-learn-style private estimators over :func:`dpjax.convex.private_fit` (host side)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

import dpjax
from dpjax.convex._mechanisms import PrivateFit, private_fit
from dpjax.convex._problems import ConvexProblem


def _key(random_state: Any):
    """A secret key for None; ``key_from_seed(int)`` (reproducible, NOT secret) otherwise."""
    if random_state is None:
        return dpjax.secret_key()
    return dpjax.key_from_seed(random_state)


class _DPClassifier(ClassifierMixin, BaseEstimator):
    """Shared fit/predict of the private linear classifiers."""

    # Set by the subclasses' __init__ (scikit-learn's convention: one attribute per parameter).
    epsilon: float
    delta: float
    l2_reg: float
    data_norm: float
    mechanism: str
    noise: str
    fit_intercept: bool
    classes: Any
    tol: float | None
    max_iter: int
    random_state: int | None
    tracker: dpjax.PrivacyTracker | None
    neighbours: str
    normalizer: int | None

    def _problem(self, num_classes: int) -> ConvexProblem:
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> Any:
        """Fits privately; the release is recorded in ``self.tracker`` (or a new tracker).

        Args:
          X: features (n, d), finite.
          y: labels, each one of ``classes`` (or of the labels found in y, with a
            :class:`dpjax.NotPrivateWarning`, when ``classes`` is None).

        Returns:
          self.

        Raises:
          ValueError: for a single class, labels outside ``classes``, epsilon <= 0,
            l2_reg <= 0, or another invalid parameter (a NaN/inf feature row is
            zeroed, not refused: see :meth:`dpjax.convex.ConvexProblem.prepare`).
          dpjax.BudgetExceededError: if the tracker refuses the release.
        """
        y = np.asarray(y)
        if self.classes is None:
            warnings.warn(
                "classes=None: the set of labels is read from y without noise (it is released "
                "through classes_); pass classes=[...] chosen without looking at the data.",
                dpjax.NotPrivateWarning,
                stacklevel=2,
            )
            classes = np.unique(y)
        else:
            classes = np.asarray(self.classes)
            if len(np.unique(classes)) != len(classes):
                raise ValueError(f"classes={self.classes!r} has repeated entries.")
        if len(classes) < 2:
            raise ValueError(
                f"only one class ({classes.tolist()}) : a classifier needs at least two classes."
            )
        index = np.searchsorted(np.sort(classes), y)
        classes = np.sort(classes)
        index = np.clip(index, 0, len(classes) - 1)
        if y.ndim != 1 or not np.all(classes[index] == y):
            raise ValueError(f"y holds labels outside classes={classes.tolist()}.")
        problem = self._problem(len(classes))
        self.tracker_ = self.tracker
        if self.tracker_ is None:
            delta = self.delta if self.noise == "gaussian" else 1e-10
            self.tracker_ = dpjax.PrivacyTracker(self.epsilon, delta)
        self.fit_: PrivateFit = private_fit(
            problem,
            X,
            index.astype(np.int32),
            mechanism=self.mechanism,
            noise=self.noise,
            epsilon=self.epsilon,
            delta=self.delta if self.noise == "gaussian" else None,
            key=_key(self.random_state),
            tracker=self.tracker_,
            tol=self.tol,
            max_iter=self.max_iter,
        )
        params = self.fit_.params  # (d', columns)
        if self.fit_intercept:
            self.coef_, self.intercept_ = params[:-1].T, params[-1]
        else:
            self.coef_, self.intercept_ = params.T, np.zeros(params.shape[1], params.dtype)
        self.classes_ = classes
        self.problem_ = problem
        self.n_features_in_ = self.coef_.shape[1]
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores (n,) for two classes, (n, K) otherwise, on clipped rows (post-processing)."""
        feats, _ = self.problem_.prepare(X)
        d = self.n_features_in_
        scores = np.asarray(feats[:, :d]) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """The class of the largest score."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]


class DPLogisticRegression(_DPClassifier):
    """Differentially private L2-regularized logistic regression (scikit-learn API).

    Minimizes ``(1/n) sum_i loss + (l2_reg/2) ||theta||^2`` (the intercept is
    regularized too) over rows clipped to ``data_norm``, then privatizes by
    ``mechanism`` (see :func:`dpjax.convex.private_fit`). Unlike diffprivlib, a
    missing norm bound is never computed from the data: rows are ALWAYS clipped
    to ``data_norm`` (default 1.0; choose it without looking at the data, e.g.
    ``sqrt(d)`` for features in [0, 1], or tune it on public/validation data).

    Args:
      epsilon: the budget of the fit, > 0.
      delta: for Gaussian noise, in (0, 1).
      l2_reg: lambda > 0 (lambda = 0 is refused: strong convexity is needed).
      data_norm: the clip norm of each feature vector, > 0.
      multi_class: ``"multinomial"`` (softmax on the full matrix, one release of
        sensitivity ``2 sqrt(2) R / (n lambda)``) or ``"ovr"`` (K binary fits, K
        releases composed in the tracker). Binary problems use one logistic column.
      mechanism: ``"output-perturbation"`` (default), ``"objective-perturbation"``
        or ``"approximate-minima"`` (the last two need ``multi_class="ovr"`` for K > 2).
      noise: ``"gaussian"`` or ``"laplace"`` (pure epsilon).
      fit_intercept: append a constant feature 1 after clipping.
      classes: the labels, chosen without looking at y (None reads them from y
        with a :class:`dpjax.NotPrivateWarning`).
      tol: the solver's tolerance (default ``0.01 L / n``): its point is within
        ``tol / l2_reg`` of the minimizer, for any data.
      max_iter: L-BFGS iterations at most before fixed accelerated steps take
        over (0: those alone).
      random_state: None for a secret key (:func:`dpjax.secret_key`); an int
        gives a reproducible, NOT secret key (research on public data only).
      tracker: a :class:`dpjax.PrivacyTracker` to record in (e.g. shared with
        DP-SGD); None for a new one with target ``epsilon``.
      neighbours: ``"replace-one"`` (default) or ``"add-remove"`` (output
        perturbation only); see :class:`dpjax.convex.ConvexProblem`.
      normalizer: None (divide by the number of rows) or a public data set size
        bound N chosen without looking at the data; with ``"add-remove"`` it
        halves the sensitivity to ``L / (N lambda)``.

    Attributes:
      coef_, intercept_, classes_: as in scikit-learn.
      fit_: the :class:`dpjax.convex.PrivateFit` (records, sensitivity, noise).
      tracker_: the tracker the fit was recorded in.

    Example:
      >>> import numpy as np
      >>> from dpjax.convex import DPLogisticRegression
      >>> rng = np.random.default_rng(0)
      >>> X = rng.normal(size=(300, 2)); y = (X[:, 0] > 0).astype(int)
      >>> clf = DPLogisticRegression(epsilon=2.0, l2_reg=0.05, data_norm=3.0,
      ...                            classes=[0, 1], random_state=0).fit(X, y)
      >>> clf.score(X, y) > 0.8, clf.tracker_.epsilon_spent() <= 2.0
      (True, True)

    **Privacy:** (epsilon, delta)-DP (Gaussian) or epsilon-DP (Laplace) for the
    released coefficients, under ``neighbours`` (add/remove for output
    perturbation only; n public unless a ``normalizer`` N, chosen without looking
    at the data, is given); see :func:`dpjax.convex.private_fit`.
    ``classes_`` is data-independent only when ``classes`` is given. ``fit_``
    holds the public numbers of the fit and nothing else from the data.
    Predictions are post-processing.
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        l2_reg: float = 0.01,
        data_norm: float = 1.0,
        multi_class: str = "multinomial",
        mechanism: str = "output-perturbation",
        noise: str = "gaussian",
        fit_intercept: bool = True,
        classes: Any = None,
        tol: float | None = None,
        max_iter: int = 500,
        random_state: int | None = None,
        tracker: dpjax.PrivacyTracker | None = None,
        neighbours: str = "replace-one",
        normalizer: int | None = None,
    ):
        self.neighbours = neighbours
        self.normalizer = normalizer
        self.epsilon = epsilon
        self.delta = delta
        self.l2_reg = l2_reg
        self.data_norm = data_norm
        self.multi_class = multi_class
        self.mechanism = mechanism
        self.noise = noise
        self.fit_intercept = fit_intercept
        self.classes = classes
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.tracker = tracker

    def _problem(self, num_classes: int) -> ConvexProblem:
        if self.multi_class not in ("multinomial", "ovr"):
            raise ValueError(f"multi_class={self.multi_class!r} must be 'multinomial' or 'ovr'.")
        multinomial = self.multi_class == "multinomial" and num_classes > 2
        return ConvexProblem(
            "multinomial" if multinomial else "logistic",
            l2_reg=self.l2_reg,
            data_norm=self.data_norm,
            fit_intercept=self.fit_intercept,
            num_classes=num_classes,
            neighbours=self.neighbours,
            normalizer=self.normalizer,
        )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (n, K): softmax (multinomial), or normalized sigmoids (OvR)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-scores))
            return np.stack([1.0 - p, p], axis=1)
        if self.problem_.loss == "multinomial":
            z = np.exp(scores - scores.max(axis=1, keepdims=True))
        else:
            z = 1.0 / (1.0 + np.exp(-scores))
        return z / z.sum(axis=1, keepdims=True)


class DPLinearSVC(_DPClassifier):
    """Differentially private linear SVM with a smoothed (Huber) hinge, one-vs-rest.

    The loss is 0 for margins above ``1 + h``, ``1 - z`` below ``1 - h``, and
    quadratic in between (Chaudhuri et al. 2011), so it is R-Lipschitz and
    ``R^2/(2h)``-smooth. Same parameters as :class:`DPLogisticRegression`, with
    ``huber_h`` instead of ``multi_class``; no ``predict_proba``.

    Args:
      epsilon: the budget, > 0.
      delta: for Gaussian noise.
      l2_reg: lambda > 0.
      data_norm: the clip norm of each feature vector.
      huber_h: the smoothing width h > 0.
      mechanism: see :func:`dpjax.convex.private_fit`.
      noise: ``"gaussian"`` or ``"laplace"``.
      fit_intercept: append a constant feature 1 after clipping.
      classes: the labels (None reads them from y, with a warning).
      tol: solver tolerance.
      max_iter: L-BFGS iterations at most (then fixed accelerated steps).
      random_state: None (secret key) or an int (reproducible, not secret).
      tracker: a :class:`dpjax.PrivacyTracker` to record in.
      neighbours: ``"replace-one"`` or ``"add-remove"`` (output perturbation only).
      normalizer: None or a public data set size bound N (see
        :class:`DPLogisticRegression`).

    Example:
      >>> import numpy as np
      >>> from dpjax.convex import DPLinearSVC
      >>> rng = np.random.default_rng(0)
      >>> X = rng.normal(size=(300, 2)); y = (X[:, 1] > 0).astype(int)
      >>> svm = DPLinearSVC(epsilon=2.0, l2_reg=0.05, data_norm=3.0, classes=[0, 1],
      ...                   noise="laplace", random_state=0).fit(X, y)
      >>> svm.score(X, y) > 0.8, svm.fit_.records[0].epsilon
      (True, 2.0)

    **Privacy:** as :class:`DPLogisticRegression`.
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        l2_reg: float = 0.01,
        data_norm: float = 1.0,
        huber_h: float = 0.5,
        mechanism: str = "output-perturbation",
        noise: str = "gaussian",
        fit_intercept: bool = True,
        classes: Any = None,
        tol: float | None = None,
        max_iter: int = 500,
        random_state: int | None = None,
        tracker: dpjax.PrivacyTracker | None = None,
        neighbours: str = "replace-one",
        normalizer: int | None = None,
    ):
        self.neighbours = neighbours
        self.normalizer = normalizer
        self.epsilon = epsilon
        self.delta = delta
        self.l2_reg = l2_reg
        self.data_norm = data_norm
        self.huber_h = huber_h
        self.mechanism = mechanism
        self.noise = noise
        self.fit_intercept = fit_intercept
        self.classes = classes
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.tracker = tracker

    def _problem(self, num_classes: int) -> ConvexProblem:
        return ConvexProblem(
            "huber_svm",
            l2_reg=self.l2_reg,
            data_norm=self.data_norm,
            fit_intercept=self.fit_intercept,
            num_classes=num_classes,
            huber_h=self.huber_h,
            neighbours=self.neighbours,
            normalizer=self.normalizer,
        )


class DPRidgeRegression(RegressorMixin, BaseEstimator):
    """Differentially private ridge regression by output perturbation.

    Labels are clipped to ``label_range`` and centred; the exact solve of
    ``(1/n)||X theta - y||^2 / 2 + (l2_reg/2)||theta||^2`` is perturbed with
    sensitivity ``2 L / (n lambda)`` (replace-one and add/remove), ``L = R B (1 +
    R / sqrt(lambda))`` (see :class:`dpjax.convex.ConvexProblem`).

    Args:
      epsilon: the budget, > 0.
      delta: for Gaussian noise.
      l2_reg: lambda > 0.
      data_norm: the clip norm of each feature vector.
      label_range: ``(lo, hi)``, chosen without looking at y.
      noise: ``"gaussian"`` or ``"laplace"``.
      fit_intercept: append a constant feature 1 after clipping.
      random_state: None (secret key) or an int (reproducible, not secret).
      tracker: a :class:`dpjax.PrivacyTracker` to record in.

    Example:
      >>> import numpy as np
      >>> from dpjax.convex import DPRidgeRegression
      >>> rng = np.random.default_rng(0)
      >>> X = rng.uniform(-1, 1, size=(2000, 2)); y = X @ np.array([0.5, -0.3])
      >>> reg = DPRidgeRegression(epsilon=3.0, l2_reg=0.1, data_norm=1.5,
      ...                         label_range=(-1.0, 1.0), random_state=0).fit(X, y)
      >>> reg.score(X, y) > 0.5
      True

    **Privacy:** (epsilon, delta)-DP (Gaussian) or epsilon-DP (Laplace) for the
    coefficients; see :func:`dpjax.convex.private_fit`.
    """

    def __init__(
        self,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        l2_reg: float = 0.01,
        data_norm: float = 1.0,
        label_range: tuple[float, float] = (-1.0, 1.0),
        noise: str = "gaussian",
        fit_intercept: bool = True,
        random_state: int | None = None,
        tracker: dpjax.PrivacyTracker | None = None,
    ):
        self.epsilon = epsilon
        self.delta = delta
        self.l2_reg = l2_reg
        self.data_norm = data_norm
        self.label_range = label_range
        self.noise = noise
        self.fit_intercept = fit_intercept
        self.random_state = random_state
        self.tracker = tracker

    def fit(self, X: Any, y: Any) -> DPRidgeRegression:
        """Fits privately (see the class docstring); returns self.

        Raises:
          ValueError: for an invalid parameter (a NaN/inf row is zeroed).
          dpjax.BudgetExceededError: if the tracker refuses the release.
        """
        problem = ConvexProblem(
            "ridge",
            l2_reg=self.l2_reg,
            data_norm=self.data_norm,
            fit_intercept=self.fit_intercept,
            label_range=tuple(self.label_range),  # type: ignore[arg-type]
        )
        self.tracker_ = self.tracker
        if self.tracker_ is None:
            delta = self.delta if self.noise == "gaussian" else 1e-10
            self.tracker_ = dpjax.PrivacyTracker(self.epsilon, delta)
        self.fit_ = private_fit(
            problem,
            X,
            y,
            noise=self.noise,
            epsilon=self.epsilon,
            delta=self.delta if self.noise == "gaussian" else None,
            key=_key(self.random_state),
            tracker=self.tracker_,
        )
        params = self.fit_.params[:, 0]
        mid = (problem.label_range[0] + problem.label_range[1]) / 2.0  # type: ignore[index]
        if self.fit_intercept:
            self.coef_, self.intercept_ = params[:-1], float(params[-1]) + mid
        else:
            self.coef_, self.intercept_ = params, mid
        self.problem_ = problem
        self.n_features_in_ = len(self.coef_)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predictions on clipped rows (post-processing)."""
        feats, _ = self.problem_.prepare(X)
        return np.asarray(feats[:, : self.n_features_in_]) @ self.coef_ + self.intercept_
