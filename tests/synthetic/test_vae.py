"""The DP-SGD conditional VAE: every step accounted first, a release holding the decoder alone,
sampling from that record only; and the FID-like ScatterNet score."""

import dataclasses
import inspect
import json
import math
import typing

import jax
import numpy as np
import pytest

import dpjax
from dpjax.data import Dataset, Split, load_dataset
from dpjax.synthetic import (
    ReleasedDecoder,
    VAEConfig,
    calibrate_decoder_noise,
    fidelity_features,
    frechet_distance,
    release_decoder,
    sample_decoder,
    scatternet_fid,
    synthesize_vae,
)

K = 2
N = 16
# N = 16, q = 1/2: the sampler's default microbatch (8 + 4 sd, rounded up to 8) is 16, so the
# ghost and vmap paths see the same padded batches.
TINY = VAEConfig(latent_dim=2, hidden=(8,), steps=3, expected_batch_size=8, microbatch_size=16)


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 4, 4, 1)).astype(np.float32)
    y = (np.arange(n) % K).astype(np.int32)
    return x, y


def _release(x, y, tracker=None, config=TINY, sigma=0.9, seed=0):
    return release_decoder(
        x, y, num_classes=K, config=config, noise_multiplier=sigma,
        tracker=tracker or dpjax.PrivacyTracker(math.inf, 1e-5), key=jax.random.key(seed),
        sampler_seed=seed + 1, seed=seed + 2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def released():
    return _release(*_data())


class _Spy:
    """Array-like private data that checks, at every read, that the training was recorded."""

    def __init__(self, array, tracker):
        self.array, self.tracker, self.reads = array, tracker, 0
        self.shape, self.dtype = array.shape, array.dtype

    def __len__(self):  # the size N is public in DP-SGD's account (q = batch / N)
        return len(self.array)

    def __array__(self, dtype=None, copy=None):
        assert len(self.tracker.releases) == 1, "data read before the DP-SGD steps were recorded"
        self.reads += 1
        return np.asarray(self.array, dtype)


# -- the accountant sees every access to real data
def test_training_is_recorded_as_its_dp_sgd_steps_before_the_data_is_read():
    tracker = dpjax.PrivacyTracker(50.0, 1e-5)
    x, y = _data()
    spy_x, spy_y = _Spy(x, tracker), _Spy(y, tracker)
    rel = _release(spy_x, spy_y, tracker, sigma=0.9)
    q = TINY.expected_batch_size / N
    assert tracker.releases == (dpjax.PoissonGaussianSteps(0.9, q, TINY.steps),)
    assert spy_x.reads >= 1 and spy_y.reads >= 1
    assert (rel.noise_multiplier, rel.sampling_rate, rel.steps) == (0.9, q, TINY.steps)


def test_training_beyond_the_budget_is_refused_without_reading_the_data():
    tracker = dpjax.PrivacyTracker(1.0, 1e-5)
    x, y = _data()
    spy_x = _Spy(x, tracker)
    with pytest.raises(dpjax.BudgetExceededError):
        _release(spy_x, y, tracker, sigma=0.5)
    assert spy_x.reads == 0 and tracker.releases == ()


def test_the_record_equals_what_ran_steps_rate_and_sigma(monkeypatch):
    # Count what the mechanism's own pieces were asked to do, and compare with the record.
    ran = {"batches": [], "noisy_mean": []}

    class CountingSampler(dpjax.PoissonSampler):
        def sample(self, step):
            ran["batches"].append((self.sampling_rate, step))
            return super().sample(step)

    real_noisy_mean = dpjax.noisy_mean

    def spy_noisy_mean(sigma, n, key):
        ran["noisy_mean"].append((sigma, n))
        return real_noisy_mean(sigma, n, key)

    monkeypatch.setattr(dpjax, "PoissonSampler", CountingSampler)
    monkeypatch.setattr(dpjax, "noisy_mean", spy_noisy_mean)
    tracker = dpjax.PrivacyTracker(math.inf, 1e-5)
    config = dataclasses.replace(TINY, steps=5, learning_rate=0.01)  # a step compiled afresh
    _release(*_data(), tracker, config=config, sigma=1.3)
    (record,) = tracker.releases
    assert isinstance(record, dpjax.PoissonGaussianSteps)
    assert [step for _, step in ran["batches"]] == list(range(record.steps)) == list(range(5))
    assert {rate for rate, _ in ran["batches"]} == {record.sampling_rate}
    # The noise stage is built (for the state, and when the step is traced) with the record's sigma.
    assert set(ran["noisy_mean"]) == {(record.noise_multiplier, config.expected_batch_size)}


def test_calibrated_sigma_meets_the_target_from_below():
    sigma = calibrate_decoder_noise(3.0, 1e-5, dataset_size=1000, config=TINY)
    eps = dpjax.compute_epsilon(sigma, TINY.steps, TINY.expected_batch_size / 1000, 1e-5)
    assert 2.9 <= eps <= 3.0


def test_ghost_and_vmap_clipping_release_the_same_decoder():
    x, y = _data()
    ghost = _release(x, y, config=TINY)
    vmap = _release(x, y, config=dataclasses.replace(TINY, clipping="vmap"))
    for a, b in zip(jax.tree.leaves(ghost.params), jax.tree.leaves(vmap.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- after the release, nothing but the record: structural
def test_the_release_holds_the_dp_trained_decoder_and_public_numbers_only(released):
    rel = released
    arrays = [
        f.name for f in dataclasses.fields(rel) if isinstance(getattr(rel, f.name), np.ndarray)
    ]
    assert arrays == []  # no noisy statistic, no data-shaped array: only the weights below
    sizes = [TINY.latent_dim, *TINY.hidden, 16]  # every layer also reads the one-hot label
    assert len(rel.params) == len(sizes) - 1
    for layer, fan_in, fan_out in zip(rel.params, sizes[:-1], sizes[1:], strict=True):
        assert set(layer) == {"w", "b"}
        assert layer["w"].shape == (fan_in + K, fan_out) and layer["b"].shape == (fan_out,)
        assert all(v.dtype == np.float32 and not v.flags.writeable for v in layer.values())
    public = {f.name: getattr(rel, f.name) for f in dataclasses.fields(rel)}
    public.pop("params"), public.pop("_token")
    assert all(isinstance(v, int | float | tuple | VAEConfig) for v in public.values()), public
    np.testing.assert_array_equal(rel.class_probs, [0.5, 0.5])  # uniform, not the data's counts


def test_sampling_takes_only_the_release_record(released):
    hints = typing.get_type_hints(sample_decoder)
    params = list(inspect.signature(sample_decoder).parameters)
    assert hints[params[0]] is ReleasedDecoder
    assert set(params[1:]) <= {"num_samples", "seed", "batch_size"}  # nothing that holds data
    x, y = _data()
    with pytest.raises(TypeError):
        sample_decoder(x, 4, seed=0)  # real data is refused
    fields = {
        f.name: getattr(released, f.name)
        for f in dataclasses.fields(released)
        if f.name != "_token"
    }
    with pytest.raises(TypeError):  # and a record cannot be forged from weights
        ReleasedDecoder(**fields)


def test_samples_have_the_right_shapes_dtypes_and_labels(released):
    rel = released
    xs, ys = sample_decoder(rel, 11, seed=0, batch_size=4)
    assert xs.shape == (11, 4, 4, 1) and xs.dtype == np.float32
    assert ys.shape == (11,) and ys.dtype == np.int32
    assert np.all((xs >= 0) & (xs <= 1))
    assert np.all(np.abs(np.bincount(ys, minlength=K) - 11 / K) < 1)
    again, _ = sample_decoder(rel, 11, seed=0, batch_size=4)
    np.testing.assert_array_equal(xs, again)
    assert not np.array_equal(xs, sample_decoder(rel, 11, seed=1)[0])


def test_the_decoder_learns_two_well_separated_classes():
    y = (np.arange(400) % K).astype(np.int32)
    x = np.where(y[:, None, None, None] == 0, 0.1, 0.9) * np.ones((400, 4, 4, 1))
    config = VAEConfig(
        latent_dim=2, hidden=(16,), steps=150, expected_batch_size=100, learning_rate=0.02
    )
    rel = _release(x.astype(np.float32), y, config=config, sigma=0.5)
    xs, ys = sample_decoder(rel, 200, seed=0)
    means = [float(xs[ys == k].mean()) for k in range(K)]
    assert abs(means[0] - 0.1) < 0.1 and abs(means[1] - 0.9) < 0.1, means


def test_research_mode_run_is_reproducible_from_its_seed():
    x, y = _data(40)
    ds = Dataset("tiny", Split(x, y), Split(x[:0], y[:0]), Split(x, y), num_classes=K)
    runs = [
        synthesize_vae(ds, target_epsilon=5.0, num_samples=8, seed=s, config=TINY)
        for s in (11, 11, 12)
    ]
    a, b, c = runs
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, c.x)
    st = a.statement
    assert st["research_mode"] and st["method"] == "vae"
    assert st["seed"].startswith("explicit")
    secrets = {11, *(dpjax.derive_seed(11, purpose) for purpose in range(1, 5))}
    assert not secrets & set(_numbers(st))  # never the seed or a stream derived from it
    assert 4.85 <= st["epsilon"] <= 5.0 and st["releases_of_real_data"] == 1
    assert "encoder" in st["parameters_that_saw_real_data"]
    json.dumps(st)
    restored = dpjax.PrivacyTracker.from_state_dict(st["accountant"]).releases
    assert (
        restored
        == a.tracker.releases
        == (dpjax.PoissonGaussianSteps(st["noise_multiplier"], TINY.expected_batch_size / 40, 3),)
    )


def _numbers(tree):
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, list | tuple):
        for item in tree:
            yield from _numbers(item)
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield tree


def test_invalid_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="clipping"):
        VAEConfig(clipping="fast")
    with pytest.raises(ValueError, match="expected_batch_size"):
        _release(*_data(), config=dataclasses.replace(TINY, expected_batch_size=N + 1))
    with pytest.raises(ValueError, match="num_classes"):
        _release(_data()[0], _data()[1] + 5)


# -- the FID-like score (ScatterNet features)
def test_frechet_distance_is_zero_on_itself_positive_when_shifted_and_symmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 5)), rng.normal(size=(200, 5)) * 1.5 + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + 0.5) == pytest.approx(5 * 0.25, rel=1e-6)  # the mean term
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # N(0, I) against N(0.3, 1.5^2 I) in 5 dimensions: 5 (0.3^2 + (1.5 - 1)^2) = 1.7.
    assert frechet_distance(a, b) == pytest.approx(1.7, abs=0.5)


def test_scatternet_fid_ranks_real_images_above_noise_and_shifts():
    data = load_dataset("digits", seed=0)
    real, other = data.test.x[:300], data.train.x[:300]  # one size: one compiled transform
    noise = np.random.default_rng(0).uniform(size=other.shape).astype(np.float32)
    assert scatternet_fid(real, real) == pytest.approx(0.0, abs=1e-9)
    assert scatternet_fid(real, other) == pytest.approx(scatternet_fid(other, real), rel=1e-6)
    close = scatternet_fid(real, other)
    assert 0.0 < close < scatternet_fid(real, np.clip(other + 0.2, 0, 1))
    assert close < scatternet_fid(real, noise)
    assert fidelity_features(real[:3]).shape == (3, 4 * 81)


# -- dpjax synthesize --method vae
def test_synthesize_cli_trains_the_vae_and_writes_samples_statement_and_scores(
    tmp_path, monkeypatch, capsys
):
    import dpjax.synthetic._cli as synthetic_cli
    from dpjax.training import main

    def tiny(name="digits", **_):
        x, y = _data(40)
        x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 8x8: the ScatterNet's smallest maps
        return Dataset(name, Split(x, y), Split(x[:0], y[:0]), Split(x, y), num_classes=K)

    monkeypatch.setattr(synthetic_cli, "load_dataset", tiny)
    out = tmp_path / "vae"
    argv = ["synthesize", "--dataset", "digits", "--target-epsilon", "10", "--out", str(out)]
    extra = ["--method", "vae", "--vae-steps", "4", "--num-samples", "20", "--seed", "0"]
    assert main([*argv, *extra, "--evaluate", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (20, 8, 8, 1) and data["y"].dtype == np.int32
    statement = json.loads((out / "privacy.json").read_text())
    assert statement["method"] == "vae" and statement["steps"] == 4
    assert statement["accountant"]["releases"][0]["kind"] == "poisson_gaussian"
    assert statement["epsilon"] <= 10.0
    assert 0.0 <= summary["tstr_accuracy_not_private"] <= 1.0
    assert summary["scatternet_fid_not_private"] >= 0.0
    assert main([*argv, "--vae-steps", "4"]) == 2  # only with --method vae
