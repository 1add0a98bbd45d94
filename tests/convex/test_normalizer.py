"""dpjax.convex with a public normalizer N: add/remove sensitivity L / (N lambda), records, checks."""

import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dpjax
from dpjax.convex import ConvexProblem, DPLogisticRegression, private_fit
from dpjax.convex._problems import objective, solve

ROWS, D = 24, 3  # the shapes of tests/convex/test_convex.py (compilations shared)


def _exact(problem, x, y, tol=1e-6, max_iter=2000):
    xs, ts = problem.prepare(x, y)
    return np.asarray(solve(problem, xs, ts, tol=tol, max_iter=max_iter).params)


# -- the bound, by solving on neighbouring data sets (one row added or removed, N fixed)
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    l2_reg=st.floats(0.05, 2.0),
    data_norm=st.floats(0.5, 4.0),
    loss=st.sampled_from(["logistic", "huber_svm", "multinomial"]),
    normalizer=st.integers(10, 60),
    intercept=st.booleans(),
)
def test_add_remove_minimizers_are_within_l_over_n_lambda(
    seed, l2_reg, data_norm, loss, normalizer, intercept
):
    rng = np.random.default_rng(seed)
    k = 3 if loss == "multinomial" else 2
    d = D - 1 if intercept else D
    x = (2.0 * rng.normal(size=(ROWS, d))).astype(np.float32)
    y = rng.integers(0, k, size=ROWS).astype(np.int32)
    x[0] = 10.0 * rng.normal(size=d)  # a hostile row (clipped to data_norm), then removed
    p = ConvexProblem(loss, l2_reg, data_norm, intercept, num_classes=k,
                      neighbours="add-remove", normalizer=normalizer)  # fmt: skip
    tol = 1e-6
    dist = np.linalg.norm(_exact(p, x, y, tol) - _exact(p, x[1:], y[1:], tol))
    bound = p.lipschitz / (normalizer * l2_reg)
    assert p.sensitivity() == pytest.approx(bound)
    assert p.sensitivity(ROWS) == p.sensitivity(7)  # n plays no part with a normalizer
    # the solver's points are each within tol / lambda of their minimizers (float32 slack)
    assert dist <= bound + 2 * tol / l2_reg + 1e-5


def _crafted(n=ROWS, lam=4.0):
    """n rows x = 1, y = +1 and an added row x = 1, y = -1 (1-D smoothed hinge, no intercept).

    Every margin stays in the hinge's linear part (|theta| <= 1 / lam < 1 - h), where each
    gradient has norm exactly L = 1: adding the row moves a FIXED-normalizer minimizer by
    exactly L / (N lam), and a mean's minimizer by 2 L / ((n + 1) lam), almost twice that.
    """
    x = np.ones((n + 1, 1), np.float32)
    y = np.ones(n + 1, np.int32)
    y[-1] = 0
    return x, y, lam


def test_the_bound_is_reached_with_a_fixed_normalizer_and_exceeded_with_a_moving_one():
    x, y, lam = _crafted()
    fixed = ConvexProblem("huber_svm", lam, 1.0, False, neighbours="add-remove", normalizer=ROWS)
    dist = np.linalg.norm(_exact(fixed, x, y) - _exact(fixed, x[:-1], y[:-1]))
    bound = fixed.sensitivity()
    assert bound == pytest.approx(1.0 / (ROWS * lam))
    assert 0.99 * bound <= dist <= bound * (1 + 1e-3)  # tight: the test can fail both ways
    # J as the mean over the rows given (normalizer None): L / (n lambda) would be violated,
    # which is why that case keeps 2 L / (n lambda)
    moving = ConvexProblem("huber_svm", lam, 1.0, False, neighbours="add-remove")
    dist_moving = np.linalg.norm(_exact(moving, x, y) - _exact(moving, x[:-1], y[:-1]))
    assert dist_moving == pytest.approx(2.0 / ((ROWS + 1) * lam), rel=1e-3)
    assert dist_moving > 1.8 * moving.lipschitz / (ROWS * lam)
    assert dist_moving <= moving.sensitivity(ROWS)


def test_replace_one_with_a_normalizer_keeps_two_l_over_n_lambda():
    x, y, lam = _crafted()
    p = ConvexProblem("huber_svm", lam, 1.0, False, normalizer=ROWS)  # replace-one
    assert p.sensitivity() == pytest.approx(2.0 / (ROWS * lam))
    x2, y2 = x[:-1].copy(), y[:-1].copy()
    x2[0], y2[0] = 1.0, 0  # one row replaced by the opposite label: 2 L / (N lambda), tight
    dist = np.linalg.norm(_exact(p, x[:-1], y[:-1]) - _exact(p, x2, y2))
    assert 0.99 * p.sensitivity() <= dist <= p.sensitivity() * (1 + 1e-3)


@pytest.mark.parametrize("rows", [12, 48])  # n below and above N
def test_the_solver_minimizes_the_n_normalized_objective_whatever_n(rows):
    rng = np.random.default_rng(rows)
    x = (2.0 * rng.normal(size=(rows, D))).astype(np.float32)
    y = rng.integers(0, 2, size=rows).astype(np.int32)
    p = ConvexProblem("logistic", 0.05, 2.0, False, normalizer=ROWS)
    xs, ts = p.prepare(x, y)
    tol = 1e-4
    for max_iter in (0, 500):  # the public fixed steps alone (n > N: scaled beta), or L-BFGS
        sol = solve(p, xs, ts, tol=tol, max_iter=max_iter)
        grad = jax.grad(objective(p, xs, ts, p.l2_reg, norm=float(ROWS)))(sol.params)
        # the gradient of (1/N) sum loss + (lambda/2)||theta||^2, N fixed, is within tol
        assert np.linalg.norm(np.asarray(grad)) <= tol * (1 + 1e-2)
    mean_fit = _exact(ConvexProblem("logistic", 0.05, 2.0, False), x, y)
    assert np.linalg.norm(np.asarray(sol.params) - mean_fit) > 10 * tol / 0.05  # N was used


# -- the fit, its records and what it says about the relation
def test_output_perturbation_with_a_normalizer_records_what_ran():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, D - 1)).astype(np.float32)
    y = rng.integers(0, 2, size=ROWS).astype(np.int32)
    big_n = 100
    p = ConvexProblem("logistic", 0.5, 1.0, neighbours="add-remove", normalizer=big_n)
    tracker = dpjax.PrivacyTracker(2.0, 1e-5)
    fit = private_fit(p, x, y, epsilon=1.0, delta=1e-5, key=jax.random.key(0), tracker=tracker)
    tol = 0.01 * p.lipschitz / big_n  # TOL_FRACTION * L / N
    assert fit.tol == pytest.approx(tol)
    assert fit.sensitivity == pytest.approx(p.lipschitz / (big_n * 0.5) + 2 * tol / 0.5)
    assert (fit.neighbours, fit.normalizer, fit.n) == ("add-remove", big_n, ROWS)
    assert fit.sensitivity_rule == "add-remove, public fixed normalizer N = 100: L / (N lambda)"
    assert (
        fit.records == tracker.releases == (dpjax.GaussianRelease(fit.records[0].noise_multiplier),)
    )
    summary = json.loads(json.dumps(fit.summary()))
    assert summary["sensitivity_rule"] == fit.sensitivity_rule
    assert summary["normalizer"] == big_n
    lap = private_fit(p, x, y, noise="laplace", epsilon=1.0, key=jax.random.key(1))
    assert "add-remove, public fixed normalizer N = 100" in lap.records[0].label
    # without a normalizer the rule says the normalizer moves
    q = ConvexProblem("logistic", 0.5, 1.0, neighbours="add-remove")
    plain = private_fit(q, x, y, epsilon=1.0, delta=1e-5, key=jax.random.key(2))
    assert plain.normalizer is None and "moves" in plain.sensitivity_rule
    assert plain.sensitivity == pytest.approx(2 * q.lipschitz / (ROWS * 0.5) * 1.01)


def test_objective_mechanisms_use_n_and_still_refuse_add_remove():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(ROWS, D - 1)).astype(np.float32)
    y = rng.integers(0, 2, size=ROWS).astype(np.int32)
    kw = {"epsilon": 1.0, "key": jax.random.key(0), "noise": "laplace"}
    p = ConvexProblem("logistic", 1e-3, 1.0, normalizer=10 * ROWS)  # replace-one
    fit = private_fit(p, x, y, mechanism="objective-perturbation", **kw)
    # Chaudhuri et al.'s Alg. 2 with N: eps_1 < eps / 2 here, so reg = beta / (N (e^{eps/4} - 1))
    assert fit.l2_reg == pytest.approx(p.smoothness / (10 * ROWS * np.expm1(1.0 / 4)))
    assert fit.normalizer == 10 * ROWS
    with pytest.raises(ValueError, match="replace-one"):
        private_fit(
            ConvexProblem("logistic", 0.1, 1.0, neighbours="add-remove", normalizer=ROWS),
            x, y, mechanism="approximate-minima", **kw,
        )  # fmt: skip


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "100", float("nan")])
def test_the_normalizer_is_validated_at_construction(bad):
    with pytest.raises(ValueError, match=r"normalizer=.*integer N >= 1.*pass e\.g\."):
        ConvexProblem("logistic", 0.1, 1.0, normalizer=bad)


def test_the_normalizer_is_refused_for_ridge_and_needed_without_n():
    with pytest.raises(ValueError, match="normalizer=100 with loss='ridge'"):
        ConvexProblem("ridge", 0.1, 1.0, label_range=(-1.0, 1.0), normalizer=100)
    with pytest.raises(ValueError, match="n=None"):
        ConvexProblem("logistic", 0.1, 1.0).sensitivity()
    assert ConvexProblem("logistic", 0.1, 1.0, normalizer=np.int64(7)).normalizer == 7


def test_the_estimator_passes_the_normalizer_through():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] > 0).astype(int)
    clf = DPLogisticRegression(epsilon=2.0, l2_reg=0.05, data_norm=3.0, classes=[0, 1],
                               random_state=0, neighbours="add-remove", normalizer=300)  # fmt: skip
    clf.fit(X, y)
    assert clf.get_params()["normalizer"] == 300
    assert clf.fit_.sensitivity_rule.startswith("add-remove, public fixed normalizer N = 300")
    assert clf.score(X, y) > 0.8
