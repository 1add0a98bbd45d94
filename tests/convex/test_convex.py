"""dpjax.convex: sensitivity, noise calibration, clipping, tolerance, records, estimators."""

import math

import dp_accounting
import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.base import clone

import dpjax
from dpjax.convex import (
    ConvergenceError,
    ConvexProblem,
    DPLinearSVC,
    DPLogisticRegression,
    DPRidgeRegression,
    calibrate_gaussian,
    gaussian_noise,
    l2_laplace_noise,
    private_fit,
)
from dpjax.convex._noise import _l2_laplace
from dpjax.convex._problems import solve

# One shape for every solve (one compilation per loss): N rows of D features without an
# intercept, or of F = D - 1 features with one.
N, D = 24, 3
F = D - 1


def _data(seed, n=N, d=F, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.normal(size=(n, d))).astype(np.float32)
    y = (rng.uniform(size=n) < 0.5).astype(np.int32)
    return x, y


def _exact(problem, x, y, tol):
    xs, ts = problem.prepare(x, y)
    return np.asarray(solve(problem, xs, ts, tol=tol, max_iter=2000).params)


# -- the sensitivity bound, by solving on neighbouring data sets
@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**31),
    l2_reg=st.floats(0.05, 2.0),
    data_norm=st.floats(0.5, 4.0),
    loss=st.sampled_from(["logistic", "huber_svm"]),
)
def test_neighbouring_minimizers_are_within_the_sensitivity(seed, l2_reg, data_norm, loss):
    x, y = _data(seed, d=D)
    rng = np.random.default_rng(seed + 1)
    tol = 1e-5
    # replace-one: row 0 replaced by an arbitrary (large) row with the other label
    p = ConvexProblem(loss, l2_reg, data_norm, fit_intercept=False, neighbours="replace-one")
    x2, y2 = x.copy(), y.copy()
    x2[0], y2[0] = 10.0 * rng.normal(size=D), 1 - y[0]
    dist = np.linalg.norm(_exact(p, x, y, tol) - _exact(p, x2, y2, tol))
    assert dist <= p.sensitivity(N) + 2 * tol / l2_reg
    assert p.sensitivity(N) == pytest.approx(2 * p.lipschitz / (N * l2_reg))
    # add/remove: row 0 really removed (J is the mean over the rows given, so n moves too);
    # a zero row (no intercept) is removal with the normalizer held fixed, also covered
    q = ConvexProblem(loss, l2_reg, data_norm, fit_intercept=False, neighbours="add-remove")
    x3 = x.copy()
    x3[0] = 0.0
    full = _exact(q, x, y, tol)
    for other in (_exact(q, x[1:], y[1:], tol), _exact(q, x3, y, tol)):
        assert np.linalg.norm(full - other) <= q.sensitivity(N) + 2 * tol / l2_reg
    assert q.sensitivity(N) == pytest.approx(2 * q.lipschitz / (N * l2_reg)) == p.sensitivity(N)


@settings(max_examples=25)
@given(
    seed=st.integers(0, 2**31),
    l2_reg=st.floats(0.01, 2.0),
    data_norm=st.floats(0.5, 4.0),
    intercept=st.booleans(),
)
def test_ridge_neighbours_are_within_the_sensitivity(seed, l2_reg, data_norm, intercept):
    x, _ = _data(seed, d=D)
    rng = np.random.default_rng(seed + 1)
    y = rng.uniform(-3, 3, size=N).astype(np.float32)  # clipped to the label range
    p = ConvexProblem("ridge", l2_reg, data_norm, intercept, label_range=(-1.0, 1.0),
                      neighbours="replace-one")  # fmt: skip
    x2, y2 = x.copy(), y.copy()
    x2[3], y2[3] = 50.0 * rng.normal(size=D), -y[3]
    dist = np.linalg.norm(_exact(p, x, y, 1.0) - _exact(p, x2, y2, 1.0))
    assert dist <= p.sensitivity(N) * (1 + 1e-4)


def test_multinomial_neighbours_are_within_the_sensitivity():
    rng = np.random.default_rng(0)
    x = (2 * rng.normal(size=(N, D))).astype(np.float32)
    y = rng.integers(0, 3, size=N)  # no intercept: the (N, D) shape of the other solves
    p = ConvexProblem("multinomial", 0.1, 1.5, False, num_classes=3, neighbours="replace-one")
    worst = 0.0
    for i in range(2):
        x2, y2 = x.copy(), y.copy()
        x2[i], y2[i] = -x[i] * 5, (y[i] + 1) % 3
        worst = max(worst, np.linalg.norm(_exact(p, x, y, 1e-5) - _exact(p, x2, y2, 1e-5)))
    assert 0 < worst <= p.sensitivity(N) + 2e-5 / 0.1
    assert p.lipschitz == pytest.approx(math.sqrt(2) * 1.5)


# -- noise calibration, statistically
def test_l2_laplace_noise_has_gamma_radius_and_uniform_direction():
    scale, draws = 0.7, 400
    keys = jax.random.split(jax.random.key(1), draws)
    b = np.asarray(jax.vmap(lambda k: _l2_laplace((D, 1), jax.numpy.float32(scale), k))(keys))
    b = b[:, :, 0]
    assert np.asarray(l2_laplace_noise((D, 1), scale, keys[0])).shape == (D, 1)
    radius = np.linalg.norm(b, axis=1)
    assert stats.kstest(radius, stats.gamma(a=3, scale=scale).cdf).pvalue > 1e-3
    # on the 2-sphere, one coordinate of a uniform direction is uniform on [-1, 1]
    assert stats.kstest(b[:, 2] / radius, stats.uniform(-1, 2).cdf).pvalue > 1e-3


def test_gaussian_output_perturbation_noise_has_std_sigma_times_sensitivity():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(50, 199)).astype(np.float32)
    y = rng.uniform(-1, 1, size=50).astype(np.float32)
    p = ConvexProblem("ridge", 0.5, 2.0, label_range=(-1.0, 1.0))
    fit = private_fit(p, x, y, epsilon=2.0, delta=1e-5, key=jax.random.key(3))
    sigma = calibrate_gaussian(2.0, 1e-5)
    assert fit.sensitivity == pytest.approx(p.sensitivity(50) + 2 * (0.01 * p.lipschitz / 50) / 0.5)
    assert fit.noise_scale == pytest.approx(sigma * fit.sensitivity)
    z = (fit.params - _exact(p, x, y, 1.0))[:, 0] / fit.noise_scale
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert 0.85 < np.std(z) < 1.15


def test_gaussian_noise_uses_the_core_sampler_with_the_given_std():
    z = np.asarray(gaussian_noise((20000,), 3.0, jax.random.key(0))) / 3.0
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_calibrated_gaussian_spends_at_most_epsilon():
    for count in (1, 10):
        sigma = calibrate_gaussian(1.0, 1e-5, count)
        t = dpjax.PrivacyTracker(math.inf, 1e-5)
        t.record(dpjax.GaussianRelease(sigma, count))
        assert 0.98 <= t.epsilon_spent() <= 1.0


# -- clipping, tolerance
def test_features_are_clipped_to_data_norm_before_fitting():
    x, y = _data(0)
    p = ConvexProblem("logistic", 0.1, 1.0)
    feats, _ = p.prepare(x * 100.0)
    assert np.all(np.linalg.norm(np.asarray(feats)[:, :-1], axis=1) <= 1.0 + 1e-5)
    assert np.all(np.asarray(feats)[:, -1] == 1.0)  # the intercept after clipping
    x_big = x.copy()
    x_big[0] *= 1000.0  # a row far beyond data_norm moves nothing more once clipped
    a = private_fit(p, x * 10, y, epsilon=1.0, delta=1e-5, key=jax.random.key(0))
    b = private_fit(p, x_big * 10, y, epsilon=1.0, delta=1e-5, key=jax.random.key(0))
    np.testing.assert_allclose(a.params, b.params, atol=1e-5)


@pytest.mark.parametrize("max_iter", [0, 1, 500])
def test_the_solver_is_within_tol_over_lambda_whatever_its_iterations(max_iter):
    # L-BFGS cut short (max_iter=1) or not run (0): the fixed accelerated steps reach the ball.
    x, y = _data(0)
    p = ConvexProblem("logistic", 0.1, 2.0)
    xs, ts = p.prepare(x, y)
    exact = np.asarray(solve(p, xs, ts, tol=1e-7, max_iter=2000).params)
    sol = solve(p, xs, ts, tol=1e-3, max_iter=max_iter)
    assert sol.distance == pytest.approx(1e-3 / 0.1)
    assert np.linalg.norm(np.asarray(sol.params) - exact) <= sol.distance
    assert ConvergenceError.__doc__ and "no longer raised" in ConvergenceError.__doc__
    warm = solve(p, xs, ts, tol=1e-3, max_iter=max_iter, init=sol.params)
    assert np.linalg.norm(np.asarray(warm.params) - exact) <= warm.distance
    with pytest.raises(ValueError, match="init has shape"):
        private_fit(p, x, y, epsilon=1.0, delta=1e-5, key=jax.random.key(0), init=np.zeros(2))


# -- records and accounting
@pytest.mark.parametrize(
    "mechanism, noise, kinds",
    [
        ("output-perturbation", "gaussian", ["gaussian"]),
        ("output-perturbation", "laplace", ["pure_epsilon"]),
        ("objective-perturbation", "laplace", ["pure_epsilon"]),
        ("approximate-minima", "laplace", ["pure_epsilon"]),
        ("approximate-minima", "gaussian", ["pure_epsilon", "gaussian"]),
    ],
)
def test_each_mechanism_records_its_release_before_noise(mechanism, noise, kinds):
    x, y = _data(0)
    p = ConvexProblem("logistic", 0.1, 2.0)
    tracker = dpjax.PrivacyTracker(1.0, 1e-5)
    fit = private_fit(p, x, y, mechanism=mechanism, noise=noise, epsilon=1.0, delta=1e-5,
                      key=jax.random.key(0), tracker=tracker)  # fmt: skip
    assert [r.kind for r in tracker.releases] == kinds
    assert fit.records == tracker.releases
    assert 0.98 <= tracker.epsilon_spent() <= 1.0
    with pytest.raises(dpjax.BudgetExceededError):  # the budget is spent: refused before noise
        private_fit(p, x, y, mechanism=mechanism, noise=noise, epsilon=0.5, delta=1e-5,
                    key=jax.random.key(1), tracker=tracker)  # fmt: skip
    assert [r.kind for r in tracker.releases] == kinds


def test_one_vs_rest_accounts_k_releases():
    x, _ = _data(0)
    y = np.arange(N) % 3
    p = ConvexProblem("logistic", 0.1, 2.0, num_classes=3)
    fit = private_fit(p, x, y, epsilon=1.0, delta=1e-5, key=jax.random.key(0))
    assert fit.params.shape == (D, 3)
    assert fit.records == (dpjax.GaussianRelease(calibrate_gaussian(1.0, 1e-5, 3), 3),)
    fit = private_fit(p, x, y, noise="laplace", epsilon=1.0, key=jax.random.key(0))
    assert fit.records[0].count == 3 and fit.records[0].pure_epsilon <= 1.0


def test_gaussian_release_composes_with_dp_sgd_steps_exactly():
    steps = dpjax.PoissonGaussianSteps(1.1, 0.01, 500)
    release = dpjax.GaussianRelease(calibrate_gaussian(1.0, 1e-5))
    tracker = dpjax.PrivacyTracker(math.inf, 1e-5, accountant="rdp")
    tracker.record(steps)
    tracker.record(release)
    direct = dp_accounting.rdp.RdpAccountant()
    direct.compose(dp_accounting.ComposedDpEvent([steps.dp_event(), release.dp_event()]))
    assert tracker.epsilon_spent() == pytest.approx(direct.get_epsilon(1e-5), rel=1e-6)
    pld = dpjax.PrivacyTracker(math.inf, 1e-5)
    pld.record(steps)
    pld.record(release)
    exact = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    exact.compose(dp_accounting.ComposedDpEvent([steps.dp_event(), release.dp_event()]))
    assert pld.epsilon_spent() == pytest.approx(exact.get_epsilon(1e-5), rel=1e-2)


def test_pure_epsilon_releases_add_to_the_rest():
    gauss = dpjax.GaussianRelease(calibrate_gaussian(1.0, 1e-5))
    alone = dpjax.PrivacyTracker(math.inf, 1e-5)
    alone.record(gauss)
    both = dpjax.PrivacyTracker(math.inf, 1e-5)
    both.record(gauss)
    both.record(dpjax.PureEpsilonRelease(0.1, 3, label="output perturbation"))
    assert both.epsilon_spent() == pytest.approx(alone.epsilon_spent() + 0.3)


# -- the estimators
def test_logistic_regression_estimator_api():
    x, _ = _data(0)
    y = np.arange(N) % 3
    clf = DPLogisticRegression(epsilon=2.0, l2_reg=0.1, data_norm=2.0, classes=[0, 1, 2],
                               random_state=0)  # fmt: skip
    assert clf.get_params()["epsilon"] == 2.0
    assert clf.set_params(epsilon=3.0) is clf and clf.epsilon == 3.0
    assert clone(clf).get_params() == clf.get_params()
    clf.fit(x, y)
    proba = clf.predict_proba(x)
    assert proba.shape == (N, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert set(clf.predict(x)) <= {0, 1, 2}
    assert 0.0 <= clf.score(x, y) <= 1.0
    assert clf.coef_.shape == (3, F) and clf.intercept_.shape == (3,)
    assert clf.tracker_.epsilon_spent() <= 3.0
    ovr = DPLogisticRegression(epsilon=2.0, l2_reg=0.1, data_norm=2.0, classes=[0, 1, 2],
                               multi_class="ovr", random_state=0).fit(x, y)  # fmt: skip
    assert ovr.fit_.records[0].count == 3
    np.testing.assert_allclose(ovr.predict_proba(x).sum(axis=1), 1.0, rtol=1e-5)


def test_estimators_refuse_bad_input():
    x, y = _data(0)
    clf = DPLogisticRegression(classes=[0, 1], random_state=0)
    bad = x.copy()
    bad[2, 1] = np.nan  # not refused (a data-dependent event): zeroed, intercept included
    np.testing.assert_array_equal(
        ConvexProblem("logistic", 0.1, 1.0).prepare(bad)[0][2], np.zeros(F + 1, np.float32)
    )
    assert np.all(np.isfinite(clf.fit(bad, y).coef_))
    with pytest.raises(ValueError, match="one class"):
        DPLogisticRegression(classes=[1], random_state=0).fit(x, np.ones(N, int))
    with pytest.raises(ValueError, match="epsilon"):
        DPLogisticRegression(epsilon=0.0, classes=[0, 1], random_state=0).fit(x, y)
    with pytest.raises(ValueError, match="l2_reg"):
        DPLogisticRegression(l2_reg=0.0, classes=[0, 1], random_state=0).fit(x, y)
    with pytest.raises(ValueError, match="outside classes"):
        DPLogisticRegression(classes=[0, 5], random_state=0).fit(x, y)
    with pytest.warns(dpjax.NotPrivateWarning, match="classes=None"):
        DPLogisticRegression(random_state=0).fit(x, y)
    with pytest.raises(ValueError, match="label_range"):
        DPRidgeRegression(label_range=(1.0, 1.0), random_state=0).fit(x, y.astype(float))
    with pytest.raises(ValueError, match="not offered"):
        private_fit(ConvexProblem("logistic", 0.1, 1.0), x, y, mechanism="objective-perturbation",
                    epsilon=1.0, delta=1e-5, key=jax.random.key(0))  # fmt: skip
    with pytest.raises(ValueError, match="output-perturbation"):
        private_fit(ConvexProblem("multinomial", 0.1, 1.0, num_classes=3), x, y,
                    mechanism="approximate-minima", noise="laplace", epsilon=1.0,
                    key=jax.random.key(0))  # fmt: skip


def test_svm_and_ridge_estimators_fit_and_score():
    x, y = _data(0)
    svm = DPLinearSVC(epsilon=5.0, l2_reg=0.1, data_norm=2.0, classes=[0, 1], random_state=0)
    assert svm.fit(x, y).decision_function(x).shape == (N,)
    rng = np.random.default_rng(0)
    xr = rng.uniform(-1, 1, size=(N, F))
    ridge = DPRidgeRegression(epsilon=5.0, l2_reg=0.1, data_norm=2.0, label_range=(-2.0, 2.0),
                              random_state=0).fit(xr, xr[:, 0])  # fmt: skip
    assert ridge.predict(xr).shape == (N,) and np.isfinite(ridge.score(xr, xr[:, 0]))
    assert ridge.fit_.records == (dpjax.GaussianRelease(calibrate_gaussian(5.0, 1e-5)),)
