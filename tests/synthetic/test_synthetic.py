"""dpjax.synthetic: one accounted release, generators that never see the data, honest samples."""

import dataclasses
import inspect
import json
import math
import typing

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import dpjax
from dpjax.data import Dataset, Split
from dpjax.synthetic import (
    ClassGaussians,
    DCTBasis,
    Generator,
    GeneratorConfig,
    RandomFourierFeatures,
    ReleasedEmbedding,
    ReleasedMoments,
    calibrate_release_noise,
    fit_class_gaussians,
    release_embedding,
    release_moments,
    sample,
    synthesize,
    train_generator,
)

K = 2
RFF = RandomFourierFeatures(input_dim=16, num_frequencies=16, length_scale=2.0, seed=3)
BASIS = DCTBasis(side=4, keep=2)
TINY_GEN = GeneratorConfig(hidden=(8,), steps=3, batch_per_class=4)


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 4, 4, 1)).astype(np.float32)
    y = (np.arange(n) % K).astype(np.int32)
    return x, y


def _unlimited():
    return dpjax.PrivacyTracker(math.inf, 1e-5)


class _Spy:
    """Array-like private data that checks, at every read, that the release was recorded."""

    def __init__(self, array, tracker):
        self.array, self.tracker, self.reads = array, tracker, 0
        self.shape, self.dtype = array.shape, array.dtype

    def __array__(self, dtype=None, copy=None):
        assert len(self.tracker.releases) == 1, "data read before the release was recorded"
        self.reads += 1
        return np.asarray(self.array, dtype)


def _embedding(x, y, tracker=None, sigma=1.0, key=0):
    return release_embedding(
        x, y, num_classes=K, features=RFF, noise_multiplier=sigma,
        tracker=tracker or _unlimited(), key=jax.random.key(key), microbatch_size=4,
    )  # fmt: skip


def _moments(x, y, tracker=None, sigma=1.0, key=0):
    return release_moments(
        x, y, num_classes=K, basis=BASIS, radius=2.0, noise_multiplier=sigma,
        tracker=tracker or _unlimited(), key=jax.random.key(key), microbatch_size=4,
    )  # fmt: skip


RELEASES = [_embedding, _moments]


# -- the accountant sees every access to real data
@pytest.mark.parametrize("release", RELEASES)
def test_release_records_one_gaussian_release_before_reading_the_data(release):
    tracker = dpjax.PrivacyTracker(10.0, 1e-5)
    x, y = _data()
    spy_x, spy_y = _Spy(x, tracker), _Spy(y, tracker)
    rel = release(spy_x, spy_y, tracker=tracker, sigma=0.6)
    assert tracker.releases == (dpjax.GaussianRelease(noise_multiplier=0.6),)
    assert spy_x.reads >= 1 and spy_y.reads >= 1
    assert rel.noise_multiplier == 0.6


@pytest.mark.parametrize("release", RELEASES)
def test_release_beyond_the_budget_is_refused_without_reading_the_data(release):
    tracker = dpjax.PrivacyTracker(1.0, 1e-5)
    x, y = _data()
    spy_x = _Spy(x, tracker)
    with pytest.raises(dpjax.BudgetExceededError):
        release(spy_x, y, tracker=tracker, sigma=0.5)
    assert spy_x.reads == 0 and tracker.releases == ()


def test_synthesize_spends_exactly_one_release_within_the_target():
    x, y = _data(40)
    ds = Dataset("tiny", Split(x, y), Split(x[:0], y[:0]), Split(x, y), num_classes=K)
    out = synthesize(ds, target_epsilon=3.0, num_samples=10, seed=0)
    assert len(out.tracker.releases) == 1
    assert isinstance(out.tracker.releases[0], dpjax.GaussianRelease)
    assert 2.9 <= out.statement["epsilon"] <= 3.0
    json.dumps(out.statement)  # the statement is JSON
    assert dpjax.PrivacyTracker.from_state_dict(out.statement["accountant"]).releases == (
        out.tracker.releases
    )


def test_calibrated_sigma_meets_the_target_from_below():
    sigma = calibrate_release_noise(10.0, 1e-5)
    eps = dpjax.compute_epsilon(sigma, 1, 1.0, 1e-5)
    assert 9.8 <= eps <= 10.0


# -- noise and sensitivity
def _exact_embedding(x, y, c=0.1):
    phi = np.asarray(RFF(x)) * math.sqrt(1 - c * c)
    rows = np.concatenate([phi, np.full((len(x), 1), c)], axis=1)
    return np.stack([rows[y == k].sum(0) for k in range(K)])


def test_embedding_noise_is_gaussian_with_std_sigma():
    x, y = _data(20)
    sigma = 3.0
    rel = _embedding(x, y, sigma=sigma, key=7)
    residual = (rel.noisy_sums - _exact_embedding(x, y)).ravel() / sigma
    assert residual.size == K * (2 * RFF.num_frequencies + 1)
    assert stats.kstest(residual, "norm").pvalue > 1e-3


@settings(max_examples=4, deadline=None)
@given(
    extra=st.one_of(
        st.floats(0.0, 1.0),
        st.sampled_from([1e6, -1e6, float("nan"), float("inf")]),
    ),
    label=st.integers(0, K - 1),
)
def test_one_example_moves_the_released_sums_by_at_most_one(extra, label):
    # Same noise key on both neighbours: the difference of the releases is the difference of
    # the clipped sums, which must be at most the sensitivity 1 whatever the example holds.
    x, y = _data(8)
    x2 = np.concatenate([x, np.full((1, 4, 4, 1), extra, np.float32)])
    y2 = np.concatenate([y, [label]]).astype(np.int32)
    for release in RELEASES:
        a = release(x, y, sigma=1e-3, key=1).noisy_sums
        b = release(x2, y2, sigma=1e-3, key=1).noisy_sums
        assert np.all(np.isfinite(b))
        assert np.linalg.norm(b - a) <= 1.0 + 1e-4


# -- the generator's training is structural post-processing
@pytest.mark.parametrize(
    ("fit", "record"),
    [(train_generator, ReleasedEmbedding), (fit_class_gaussians, ReleasedMoments)],
)
def test_fitting_takes_only_a_release_record(fit, record):
    hints = typing.get_type_hints(fit)
    params = list(inspect.signature(fit).parameters)
    assert hints[params[0]] is record
    # Nothing else it takes could carry data: a config, a seed, a flag.
    assert set(params[1:]) <= {"config", "seed", "progress"}
    x, y = _data()
    with pytest.raises(TypeError):
        fit(x)  # real data is refused
    with pytest.raises(TypeError):  # and a record cannot be forged from arrays
        record(**{f.name: x for f in dataclasses.fields(record) if f.name != "_token"})


@pytest.mark.parametrize("release", RELEASES)
def test_a_release_holds_no_per_example_array(release):
    x, y = _data(12)
    rel = release(x, y)
    for f in dataclasses.fields(rel):
        value = getattr(rel, f.name)
        if isinstance(value, np.ndarray):
            assert value.shape[0] == K and not value.flags.writeable


def test_generator_training_and_sampling_are_deterministic_given_release_and_seed():
    x, y = _data()
    rel = _embedding(x, y)
    g1 = train_generator(rel, TINY_GEN, seed=5)
    g2 = train_generator(rel, TINY_GEN, seed=5)
    for a, b in zip(jax.tree.leaves(g1.params), jax.tree.leaves(g2.params), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sample(g1, 9, seed=1)[0], sample(g2, 9, seed=1)[0])
    g3 = train_generator(rel, TINY_GEN, seed=6)
    assert not np.array_equal(g1.params[0]["w"], g3.params[0]["w"])


def test_research_mode_run_is_reproducible_from_its_seed():
    x, y = _data(40)
    ds = Dataset("tiny", Split(x, y), Split(x[:0], y[:0]), Split(x, y), num_classes=K)
    a = synthesize(ds, target_epsilon=5.0, num_samples=8, seed=11)
    b = synthesize(ds, target_epsilon=5.0, num_samples=8, seed=11)
    c = synthesize(ds, target_epsilon=5.0, num_samples=8, seed=12)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    assert a.statement["research_mode"] and a.statement["seed"].startswith("explicit")


# -- samples
@pytest.mark.parametrize("kind", ["merf", "gaussian"])
def test_samples_have_the_right_shapes_dtypes_and_labels(kind):
    x, y = _data(20)
    if kind == "merf":
        model: Generator | ClassGaussians = train_generator(_embedding(x, y), TINY_GEN, seed=0)
    else:
        model = fit_class_gaussians(_moments(x, y))
    xs, ys = sample(model, 11, seed=0)
    assert xs.shape == (11, 4, 4, 1) and xs.dtype == np.float32
    assert ys.shape == (11,) and ys.dtype == np.int32
    assert np.all((xs >= 0) & (xs <= 1))
    assert set(np.unique(ys)) <= set(range(K))
    counts = np.bincount(ys, minlength=K)
    assert np.all(np.abs(counts - 11 * model.class_probs) < 1)


def test_class_gaussians_recover_well_separated_classes_at_small_noise():
    rng = np.random.default_rng(0)
    y = (np.arange(400) % K).astype(np.int32)
    # Image norms (0.8 and 1.8) stay below the radius 2: no clipping bias.
    x = np.where(y[:, None, None, None] == 0, 0.2, 0.45) + 0.02 * rng.normal(size=(400, 4, 4, 1))
    model = fit_class_gaussians(_moments(x.astype(np.float32), y, sigma=0.5))
    xs, ys = sample(model, 200, seed=0)
    means = [xs[ys == k].mean() for k in range(K)]
    assert abs(means[0] - 0.2) < 0.05 and abs(means[1] - 0.45) < 0.05


def test_invalid_arguments_name_the_parameter():
    x, y = _data()
    with pytest.raises(ValueError, match="num_frequencies"):
        RandomFourierFeatures(input_dim=4, num_frequencies=0, length_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="keep"):
        DCTBasis(side=4, keep=5)
    with pytest.raises(ValueError, match="noise_multiplier"):
        _embedding(x, y, sigma=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        release_embedding(
            x, y + 5, num_classes=K, features=RFF, noise_multiplier=1.0,
            tracker=_unlimited(), key=jax.random.key(0),
        )  # fmt: skip
