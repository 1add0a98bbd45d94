"""Output perturbation, objective perturbation and approximate minima perturbation (host side).

One entry point, :func:`private_fit`, solves a :class:`~dpjax.convex.ConvexProblem`
privately by the named mechanism and returns a :class:`PrivateFit`. Every release
is recorded in a :class:`dpjax.PrivacyTracker` BEFORE the noise is drawn:
Gaussian noise as :class:`dpjax.GaussianRelease` (composes exactly with DP-SGD
steps through dp-accounting), L2-Laplace noise as
:class:`dpjax.PureEpsilonRelease` (added by basic composition, the rule stated
there).

**Neighbouring data sets.** Replace one example, or (output perturbation only)
add or remove one. By default J is the mean over the rows given, so an added or
removed row moves its normalizer n too, and the output sensitivity is
``2 L / (n lambda)`` under both relations; the number of rows n is then treated
as public, as dpjax treats the data set size. With a public normalizer N
(``ConvexProblem(..., normalizer=N)``) J divides by N whatever the data, and
the output sensitivity is ``L / (N lambda)`` under add/remove (the relation of
dpjax's DP-SGD), ``2 L / (N lambda)`` under replace-one
(:meth:`ConvexProblem.sensitivity`). Objective perturbation and approximate
minima perturbation are analysed for replace-one only (the regularizer's weight
``N lambda`` in ``N J`` equal on both neighbours, and one loss term replaced).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import _validation
from dpjax.convex._noise import gaussian_noise, l2_laplace_noise
from dpjax.convex._problems import ConvexProblem, solve

MECHANISMS = ("output-perturbation", "objective-perturbation", "approximate-minima")
"""The mechanisms :func:`private_fit` runs."""

NOISES = ("gaussian", "laplace")
"""``"gaussian"``: (epsilon, delta)-DP, recorded as GaussianRelease; ``"laplace"``:
pure epsilon-DP by the L2-Laplace (gamma-norm) distribution, recorded as
PureEpsilonRelease."""

TOL_FRACTION = 0.01
"""Default solver tolerance ``tol = TOL_FRACTION * L / N`` (N the objective's
normalizer): the solver's point is within ``tol / lambda`` of the minimizer, which
adds ``2 tol / lambda`` (1 % of ``2 L / (N lambda)``) to the output's sensitivity."""


@dataclasses.dataclass(frozen=True)
class PrivateFit:
    """A private solution and what it cost.

    Attributes:
      params: the released parameter matrix, shape (d', columns) (noise added).
      mechanism: one of :data:`MECHANISMS`.
      noise: one of :data:`NOISES`.
      epsilon: the epsilon of this fit (its records compose to at most this).
      delta: the delta at which `epsilon` holds (0.0 for pure epsilon).
      records: the release records, in the order recorded.
      sensitivity: L2 sensitivity of each noised block (a column for OvR, the
        whole matrix otherwise); for objective perturbation, of the linear term's
        gradient difference (2 L).
      noise_scale: the Gaussian std or the L2-Laplace scale of each block.
      l2_reg: the regularization used (the problem's plus any extra the mechanism
        needs).
      tol: the solver's tolerance (public): its point is within ``tol / l2_reg``
        of the minimizer.
      n: the number of examples (public by dpjax's convention when `normalizer`
        is None, since the noise then follows it).
      neighbours: the neighbouring relation the guarantee is for.
      normalizer: the public N the objective divided by, or None (divided by n).
      sensitivity_rule: the relation and bound used, in words
        (:meth:`ConvexProblem.sensitivity_rule`), e.g. ``"add-remove, public fixed
        normalizer N = 1000: L / (N lambda)"``.

    Nothing here but `params` depends on the data. Until the issue 17 review the
    fit also held ``grad_norm`` and ``iterations``, the solver's gradient norm and
    iteration count on the private data, un-noised (and the CLI printed them).
    """

    params: np.ndarray
    mechanism: str
    noise: str
    epsilon: float
    delta: float
    records: tuple[dpjax.Release, ...]
    sensitivity: float
    noise_scale: float
    l2_reg: float
    tol: float
    n: int
    neighbours: str = "replace-one"
    normalizer: int | None = None
    sensitivity_rule: str = ""

    def summary(self) -> dict[str, Any]:
        """The fit's metadata as a JSON-serialisable dict (no parameters)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["params"]
        out["records"] = [r.to_json() for r in self.records]
        return out


def calibrate_gaussian(epsilon: float, delta: float, count: int = 1) -> float:
    """The noise multiplier of `count` Gaussian releases that together spend at most `epsilon`.

    Host side. Starts from :func:`dpjax.calibrate_noise_multiplier` (sampling rate
    1) and checks the result in a fresh :class:`dpjax.PrivacyTracker` with
    ``GaussianRelease(sigma, count)``, raising sigma by 0.2 % until it fits.

    Args:
      epsilon: the budget, > 0.
      delta: in (0, 1).
      count: the number of releases, >= 1.

    Returns:
      sigma.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> from dpjax.convex import calibrate_gaussian
      >>> round(calibrate_gaussian(1.0, 1e-5), 2)
      3.73
    """
    return _calibrate_gaussian(
        _validation.check_target_epsilon(epsilon, "epsilon"),
        _validation.check_delta(delta),
        _validation.check_steps(count, "count"),
    )


@functools.lru_cache(maxsize=256)
def _calibrate_gaussian(epsilon: float, delta: float, count: int) -> float:
    """:func:`calibrate_gaussian` for validated arguments, memoised."""
    sigma = dpjax.calibrate_noise_multiplier(epsilon, 1.0, count, delta)
    return dpjax.fitting_noise_multiplier(
        lambda s: dpjax.GaussianRelease(s, count), sigma, epsilon, delta, factor=1.002, tries=200
    )


def _split_pure(epsilon: float, count: int) -> float:
    """The largest e with ``count * e <= epsilon`` in floating point (basic composition)."""
    e = epsilon / count
    while math.fsum([e] * count) > epsilon:
        e = math.nextafter(e, 0.0)
    return e


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}; pass e.g. {choices[0]!r}.")
    return value


def private_fit(
    problem: ConvexProblem,
    x: Any,
    y: Any,
    *,
    mechanism: str = "output-perturbation",
    noise: str = "gaussian",
    epsilon: float,
    delta: float | None = None,
    key: jax.Array,
    tracker: dpjax.PrivacyTracker | None = None,
    tol: float | None = None,
    max_iter: int = 500,
    output_fraction: float = 0.1,
    jacobian_fraction: float = 0.5,
    init: Any = None,
) -> PrivateFit:
    """Solves `problem` on (x, y) with a differentially private mechanism.

    Host side. The rows of `x` are clipped to ``problem.data_norm`` first
    (:meth:`ConvexProblem.prepare`).

    Notation: N the objective's normalizer (``problem.normalizer``, else the
    number n of rows), ``Delta_J = problem.sensitivity(n)`` (``2 L / (N lambda)``,
    or ``L / (N lambda)`` for add/remove with a public normalizer), ``G =
    problem.gradient_difference = 2 L``, ``r = problem.hessian_rank = 2``,
    beta the smoothness, K the OvR columns (each gets ``epsilon / K``).

    * ``"output-perturbation"`` (Chaudhuri et al. 2011, Alg. 1; every loss;
      replace-one or add/remove neighbours): solve to within ``tol / lambda``
      of the minimizer (:func:`dpjax.convex._problems.solve`, for any data),
      add noise of L2 sensitivity ``Delta = Delta_J + 2 tol / lambda``. Gaussian:
      ``GaussianRelease(sigma, count)``, count = K for OvR (K columns of
      sensitivity Delta each), 1 otherwise (the multinomial matrix is one block,
      ``L = sqrt(2) R``). Laplace: L2-Laplace noise of scale ``Delta / eps_block``
      per block, ``PureEpsilonRelease(epsilon / K, count=K)``.
    * ``"objective-perturbation"`` (Chaudhuri et al. 2011, Alg. 2; binary
      logistic and smoothed hinge, OvR for K > 2; pure epsilon only;
      replace-one neighbours): per column
      ``eps_1 = eps_c - r log(1 + beta / (n lambda))``; if ``eps_1 < eps_c / 2`` the
      regularization is raised to ``beta / (n (e^{eps_c/(2r)} - 1))`` and
      ``eps_1 = eps_c / 2``; minimize ``J(theta) + <b, theta> / n`` with b of density
      ``~ exp(-eps_1 ||b|| / G)``. The guarantee is for the EXACT minimizer; the
      solver's point is within ``tol / lambda`` of it (use ``"approximate-minima"``
      for a guarantee that covers the solver's error).
    * ``"approximate-minima"`` (Iyengar et al. 2019; binary losses, OvR;
      replace-one neighbours): per
      column ``eps_c = eps_obj + eps_out`` (``eps_out = output_fraction * eps_c``),
      ``eps_obj = eps_1 + eps_2`` (``eps_2 = jacobian_fraction * eps_obj``); the
      regularization is raised to ``lambda_tot >= beta / (N (e^{eps_2/r} - 1))``,
      the objective perturbed as above with ``eps_1``, solved only to within
      ``tol / lambda_tot`` (their gamma is tol), then noise of sensitivity ``2 tol / lambda_tot``
      is added (given the exact perturbed minimizer, both neighbours' solver
      points lie within ``tol / lambda_tot`` of it): L2-Laplace with ``eps_out`` (all
      pure), or Gaussian (``"gaussian"``: the objective stage is pure, the output
      stage a ``GaussianRelease`` calibrated to the remaining budget at `delta`).

    Args:
      problem: the model (loss, lambda, data_norm, classes).
      x: features (n, d); NaN/inf are refused.
      y: integer labels in [0, K) (classification) or real targets (ridge).
      mechanism: one of :data:`MECHANISMS`.
      noise: one of :data:`NOISES`.
      epsilon: this fit's budget, > 0.
      delta: for Gaussian noise, in (0, 1) (default: the tracker's delta).
      key: a fresh PRNG key (``dpjax.secret_key()``), used for nothing else.
      tracker: the account to record in (it may already hold DP-SGD steps); a new
        one with target `epsilon` when None. Its refusal
        (:class:`dpjax.BudgetExceededError`) stops the fit before any noise.
      tol: the solver's tolerance (gradient norm of J; per column for OvR):
        its point is within ``tol / lambda`` of the minimizer; default
        ``TOL_FRACTION * L / N``.
      max_iter: L-BFGS iterations at most (>= 0) before the fixed accelerated
        steps take over (:func:`dpjax.convex._problems.solve`); 0 runs those alone.
      output_fraction: approximate minima only, in (0, 1).
      jacobian_fraction: approximate minima only, in (0, 1).
      init: a warm start for L-BFGS, shape (d', columns) (e.g. a previous
        solution on the same data); it changes only the running time and which
        point of the ``tol / lambda`` ball is returned, never a bound.

    Returns:
      A :class:`PrivateFit`.

    Raises:
      ValueError: for invalid input (named), an unsupported combination
        (objective perturbation or approximate minima with add/remove
        neighbours), or delta missing for Gaussian noise. Never because of the
        data's values (a non-finite row is zeroed, :meth:`ConvexProblem.prepare`),
        except labels outside [0, K), a schema error of the caller's.
      dpjax.BudgetExceededError: if the tracker refuses the release (before the
        solver runs).

    Example:
      >>> import numpy as np, jax
      >>> from dpjax.convex import ConvexProblem, private_fit
      >>> rng = np.random.default_rng(0)
      >>> x = rng.normal(size=(200, 3)).astype(np.float32); y = (x[:, 0] > 0).astype(int)
      >>> p = ConvexProblem("logistic", l2_reg=0.1, data_norm=2.0)
      >>> fit = private_fit(p, x, y, epsilon=1.0, delta=1e-5, key=jax.random.key(0))
      >>> fit.params.shape, fit.records
      ((4, 1), (GaussianRelease(noise_multiplier=3.73...),))

      A public data set size bound N with add/remove neighbours (the relation of
      dpjax's DP-SGD) halves the sensitivity:

      >>> q = ConvexProblem("logistic", l2_reg=0.1, data_norm=2.0,
      ...                   neighbours="add-remove", normalizer=200)
      >>> fit2 = private_fit(q, x, y, epsilon=1.0, delta=1e-5, key=jax.random.key(1))
      >>> fit2.sensitivity < fit.sensitivity / 1.9, fit2.sensitivity_rule
      (True, 'add-remove, public fixed normalizer N = 200: L / (N lambda)')

    **Privacy:** (epsilon, delta)-DP (or epsilon-DP for Laplace noise) under the
    neighbouring relation of the module docstring, with the constants of
    :class:`ConvexProblem` (true because every row is clipped, a non-finite row
    zeroed, and L, beta come from ``data_norm``/``label_range`` only). The
    records are made before the solver runs and the noise is drawn; a refused
    fit computes nothing. Nothing observable but the released parameters
    depends on the data: no exception, warning, iteration count or gradient
    norm (until the issue 17 review, ``ConvergenceError`` and ``grad_norm`` /
    ``iterations`` did). Edge cases: lambda = 0 and epsilon <= 0 are refused.
    Not covered: the running time (L-BFGS stops early; ``max_iter=0`` makes it
    data-independent), float rounding of the solver (float32), and, without a
    normalizer, the noise scale's dependence on n (public by convention). With
    ``problem.normalizer = N`` (chosen without looking at the data) the noise
    depends on public constants only and the guarantee holds whatever the
    number of rows n (n != N changes utility only; see :class:`ConvexProblem`).

    References:
      Chaudhuri, Monteleoni & Sarwate, "Differentially Private Empirical Risk
      Minimization", JMLR 2011.
      Kifer, Smith & Thakurta, "Private Convex Empirical Risk Minimization and
      High-dimensional Regression", COLT 2012.
      Iyengar, Near, Song, Thakkar, Thakurta & Wang, "Towards Practical
      Differentially Private Convex Optimization", IEEE S&P 2019.
    """
    if not isinstance(problem, ConvexProblem):
        raise ValueError(f"problem={problem!r} must be a dpjax.convex.ConvexProblem.")
    mechanism = _check_choice(mechanism, MECHANISMS, "mechanism")
    noise = _check_choice(noise, NOISES, "noise")
    epsilon = _validation.check_target_epsilon(epsilon, "epsilon")
    key = _validation.check_key(key)
    max_iter = _validation.check_nonnegative_int(max_iter, "max_iter", "500")
    if noise == "gaussian":
        if delta is None:
            if tracker is None:
                raise ValueError("delta=None: Gaussian noise needs a delta, e.g. delta=1e-5.")
            delta = tracker.delta
        delta = _validation.check_delta(delta)
    if mechanism != "output-perturbation":
        if problem.neighbours != "replace-one":
            raise ValueError(
                f"mechanism={mechanism!r} with neighbours={problem.neighbours!r}: dpjax analyses "
                "it for replace-one only (G = 2 L, Hessian rank 2). Without a normalizer it "
                "holds n, and the regularizer's weight n * l2_reg, equal on both neighbours, "
                "which adding or removing a row changes (the implied noise then moves by "
                "l2_reg * theta, unbounded). Pass ConvexProblem(..., neighbours='replace-one'), "
                "or use mechanism='output-perturbation' (valid for both relations)."
            )
        if problem.loss not in ConvexProblem.binary_losses:
            raise ValueError(
                f"mechanism={mechanism!r} supports the binary losses {ConvexProblem.binary_losses} "
                f"(one-vs-rest for K > 2), not loss={problem.loss!r}: its analysis needs a "
                "Lipschitz loss of rank-one Hessian. Use mechanism='output-perturbation'."
            )
        if mechanism == "objective-perturbation" and noise == "gaussian":
            raise ValueError(
                "objective perturbation with Gaussian noise is not offered: it is not the Gaussian "
                "mechanism (the shift depends on the output), so dpjax.GaussianRelease would "
                "overstate its guarantee and the tracker has no (epsilon, delta) record. Use "
                "noise='laplace', or mechanism='approximate-minima' / 'output-perturbation'."
            )
    for name, frac in (
        ("output_fraction", output_fraction),
        ("jacobian_fraction", jacobian_fraction),
    ):
        if not _validation._is_real(frac) or not 0.0 < frac < 1.0:
            raise ValueError(f"{name}={frac!r} must lie in (0, 1); pass e.g. {name}=0.1.")

    xs, ts = problem.prepare(x, y)
    assert ts is not None  # y was given
    n = int(xs.shape[0])
    big_n = problem.normalizer_for(n)  # J's normalizer: the public N, else n
    lip = problem.lipschitz
    tol = (
        TOL_FRACTION * lip / big_n if tol is None else _validation.check_positive_float(tol, "tol")
    )
    relation = (problem.neighbours, problem.normalizer, problem.sensitivity_rule())
    cols = problem.num_outputs
    blocks = cols if problem.one_vs_rest else 1  # independently noised blocks
    block_shape = (xs.shape[1], 1) if problem.one_vs_rest else (xs.shape[1], cols)
    if tracker is None:
        tracker = dpjax.PrivacyTracker(epsilon, 1e-10 if delta is None else float(delta))
    keys = jax.random.split(key, 2 * blocks)

    def noise_blocks(scale: float, which: int, gaussian: bool) -> np.ndarray:
        draw = gaussian_noise if gaussian else l2_laplace_noise
        parts = [draw(block_shape, scale, keys[which * blocks + b]) for b in range(blocks)]
        return np.concatenate([np.asarray(p) for p in parts], axis=1)

    if mechanism == "output-perturbation":
        sens = problem.sensitivity(n) + 2.0 * tol / problem.l2_reg
        if noise == "gaussian":
            sigma = calibrate_gaussian(epsilon, float(delta or 0.0), blocks)
            records: tuple[dpjax.Release, ...] = (dpjax.GaussianRelease(sigma, blocks),)
            scale = sigma * sens
        else:
            eps_b = _split_pure(epsilon, blocks)
            records = (
                dpjax.PureEpsilonRelease(
                    eps_b, blocks, label=f"output perturbation ({problem.sensitivity_rule()})"
                ),
            )
            scale = sens / eps_b
        _record_all(tracker, records)  # before the solver sees the data
        sol = solve(problem, xs, ts, tol=tol, max_iter=max_iter, init=init)
        params = np.asarray(sol.params) + noise_blocks(scale, 0, noise == "gaussian")
        return PrivateFit(
            params, mechanism, noise, epsilon, float(delta or 0.0) if noise == "gaussian" else 0.0,
            records, sens, scale, problem.l2_reg, tol, n, *relation,
        )  # fmt: skip

    beta = problem.smoothness
    eps_c = _split_pure(epsilon, blocks)  # each block's (column's) epsilon
    if mechanism == "objective-perturbation":
        eps_out = 0.0
        rank = problem.hessian_rank  # 2: the Jacobian term is rank * log(1 + beta / (n reg))
        eps_1 = eps_c - rank * math.log1p(beta / (big_n * problem.l2_reg))
        reg = problem.l2_reg
        if eps_1 < eps_c / 2.0:  # Chaudhuri et al.'s Alg. 2: more regularization, half the budget
            reg = beta / (big_n * math.expm1(eps_c / (2.0 * rank)))
            eps_1 = eps_c / 2.0
        records = (dpjax.PureEpsilonRelease(eps_c, blocks, label="objective perturbation"),)
    else:
        eps_obj = _split_pure(epsilon * (1.0 - output_fraction), blocks)
        eps_2 = jacobian_fraction * eps_obj
        eps_1 = eps_obj - eps_2
        # (expm1 capped: beyond e^700 the term is 0 in float64 anyway; math.expm1 would raise)
        jac = math.expm1(min(eps_2 / problem.hessian_rank, 700.0))
        reg = max(problem.l2_reg, beta / (big_n * jac))
        eps_out = eps_c - eps_obj
        if noise == "laplace":
            records = (
                dpjax.PureEpsilonRelease(eps_c, blocks, label="approximate minima perturbation"),
            )
        else:  # the objective stage is pure; the output stage Gaussian, in the remaining budget
            rest = (epsilon - math.fsum([eps_obj] * blocks)) * (1.0 - 1e-9)
            records = (
                dpjax.PureEpsilonRelease(eps_obj, blocks, label="approximate minima: objective"),
                dpjax.GaussianRelease(
                    calibrate_gaussian(rest, float(delta or 0.0), blocks), blocks
                ),
            )
    _record_all(tracker, records)
    grad_diff = problem.gradient_difference  # 2 L: replace-one
    b = noise_blocks(grad_diff / eps_1, 0, False)  # density ~ exp(-eps_1 ||b|| / grad_diff)
    sol = solve(
        problem,
        xs,
        ts,
        tol=tol,
        max_iter=max_iter,
        extra_reg=reg - problem.l2_reg,
        linear=jnp.asarray(b),
        init=init,
    )
    params = np.asarray(sol.params)
    sens, scale = grad_diff, grad_diff / eps_1
    if mechanism == "approximate-minima":
        sens_out = 2.0 * tol / reg
        if noise == "laplace":
            scale_out = sens_out / eps_out
        else:
            scale_out = records[-1].noise_multiplier * sens_out  # type: ignore[attr-defined]
        params = params + noise_blocks(scale_out, 1, noise == "gaussian")
        sens, scale = sens_out, scale_out
    return PrivateFit(
        params, mechanism, noise, epsilon, float(delta or 0.0) if noise == "gaussian" else 0.0,
        records, sens, scale, reg, tol, n, *relation,
    )  # fmt: skip


def _record_all(tracker: dpjax.PrivacyTracker, records: tuple[dpjax.Release, ...]) -> None:
    """Records all of `records` or none: checked together first (BudgetExceededError)."""
    probe = dpjax.PrivacyTracker.from_state_dict(tracker.state_dict())
    for r in records:
        probe.record(r)  # raises before anything is recorded in `tracker`
    for r in records:
        tracker.record(r)
