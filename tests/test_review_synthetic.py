"""Review of the release paths of `dpjax.synthetic` (issue 17, section 5), as an attacker would.

Attacks tried on `release_embedding` (DP-MERF) and `release_moments` (per-class DCT moments):
one example added, removed or replaced (rows of NaN, inf, +-1e30; a label moved to another
class, which also moves two class counts) that moves the released `(K, F)` sums by more than
the stated sensitivity; a per-class mean normalized by the true count (an un-noised count); a
reused noise key; a seed in the privacy statement that `dpjax synthesize` writes; a generator
or sampler that receives anything but the release record. Two neighbouring releases share the
noise key, so the difference of their releases is the difference of their clipped sums.
"""

import json
import math

import jax
import numpy as np
import pytest

import dpjax
import dpjax.synthetic._cli as synthetic_cli
from dpjax.data import Dataset, Split
from dpjax.synthetic import (
    DCTBasis,
    GeneratorConfig,
    RandomFourierFeatures,
    ReleasedEmbedding,
    ReleasedMoments,
    release_embedding,
    release_moments,
    synthesize,
)
from dpjax.synthetic import _synthesize as synth_module
from dpjax.training import main

K = 3
RFF = RandomFourierFeatures(input_dim=16, num_frequencies=16, length_scale=2.0, seed=3)
BASIS = DCTBasis(side=4, keep=2)
HOSTILE = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.7]


def _data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 4, 4, 1)).astype(np.float32)
    return x, (np.arange(n) % K).astype(np.int32)


def _embedding(x, y, key=1, sigma=1e-3):
    return release_embedding(
        x, y, num_classes=K, features=RFF, noise_multiplier=sigma,
        tracker=dpjax.PrivacyTracker(math.inf, 1e-5), key=jax.random.key(key), microbatch_size=4,
    )  # fmt: skip


def _moments(x, y, key=1, sigma=1e-3):
    return release_moments(
        x, y, num_classes=K, basis=BASIS, radius=2.0, noise_multiplier=sigma,
        tracker=dpjax.PrivacyTracker(math.inf, 1e-5), key=jax.random.key(key), microbatch_size=4,
    )  # fmt: skip


@pytest.mark.parametrize("release", [_embedding, _moments], ids=["merf", "moments"])
@pytest.mark.parametrize("kind", ["add", "remove", "replace-same-class", "replace-other-class"])
def test_one_example_moves_the_released_sums_by_at_most_its_sensitivity(release, kind):
    """No finding: add/remove <= 1 (the stated sensitivity, the count included); replace-one <= 2.

    A replaced label moves two class rows (and two counts) by at most 1 each: <= sqrt(2). The
    statement claims add/remove only (replace-one is their composition, at most 2). NaN/inf rows
    contribute nothing; +-1e30 rows are clipped (moments) or have norm 1 already (features).
    """
    x, y = _data()
    base = release(x, y).noisy_sums
    for value in HOSTILE:
        row = np.full((1, 4, 4, 1), value, np.float32)
        x2, y2 = x.copy(), y.copy()
        if kind == "add":
            x2, y2 = np.concatenate([x, row]), np.concatenate([y, [1]]).astype(np.int32)
            bound = 1.0
        elif kind == "remove":
            x2, y2 = x[1:], y[1:]
            bound = 1.0
        else:
            x2[4] = row[0]
            if kind == "replace-other-class":
                y2[4] = (y[4] + 1) % K
            bound = math.sqrt(2.0) if kind == "replace-other-class" else 2.0
        other = release(x2, y2).noisy_sums
        assert np.all(np.isfinite(other))
        assert np.linalg.norm(other - base) <= bound * (1 + 1e-4)


def test_class_means_are_normalized_by_the_released_noisy_count():
    """No finding: the per-class mean divides by the count released with the sums (noised)."""
    x, y = _data(30)
    rel = _embedding(x, y, sigma=5.0, key=4)
    c = rel.count_weight
    counts = rel.noisy_sums[:, -1] / c
    assert not np.allclose(counts, np.bincount(y, minlength=K), atol=0.5)  # noised, not true
    want = rel.noisy_sums[:, :-1] / math.sqrt(1 - c * c) / np.maximum(counts, 1.0)[:, None]
    np.testing.assert_allclose(rel.mean_embeddings(), want, rtol=1e-6)
    np.testing.assert_allclose(rel.noisy_counts(), np.maximum(counts, 1.0), rtol=1e-6)


def test_one_key_gives_one_noise_and_the_seed_streams_are_distinct():
    """No finding: the same key repeats its noise, another key does not; in research mode the
    noise, generator and sampler streams and the public feature seed are four different seeds."""
    x, y = _data()
    same = [_moments(x, y, key=9, sigma=1.0).noisy_sums for _ in range(2)]
    other = _moments(x, y, key=10, sigma=1.0).noisy_sums
    np.testing.assert_array_equal(same[0], same[1])
    assert np.linalg.norm(same[0] - other) > 1.0  # sigma = 1 over 3 x 15 coordinates
    seed = 123
    streams = {dpjax.derive_seed(seed, i) for i in (1, 2, 3)} | {synth_module._FEATURE_SEED}
    assert len(streams) == 4  # noise, generator, sampler and the public features: distinct


def _tiny(name="digits", **_):
    x, y = _data(30)
    return Dataset(name, Split(x, y), Split(x[:0], y[:0]), Split(x, y), num_classes=K)


def test_the_privacy_statement_never_holds_the_seed(tmp_path, monkeypatch, capsys):
    """Finding S1, fixed: `dpjax synthesize --seed S` wrote "seed": S into privacy.json.

    `derive_seed(S, 1)` is the noise key's seed: whoever read the statement could regenerate
    the noise and remove it, i.e. read the un-noised per-class sums. Now the statement says
    research mode in words ("seed": "explicit (...)", as the trainer's summary does) and holds
    no seed, in the library and in the CLI's file.
    """
    seed = 918273645
    out = synthesize(_tiny(), target_epsilon=5.0, num_samples=6, seed=seed)
    text = json.dumps(out.statement)
    for secret in (seed, dpjax.derive_seed(seed, 1), dpjax.derive_seed(seed, 2)):
        assert str(secret) not in text
    assert out.statement["research_mode"] is True
    assert out.statement["seed"].startswith("explicit (reproducible research")
    monkeypatch.setattr(synthetic_cli, "load_dataset", _tiny)
    argv = ["synthesize", "--dataset", "digits", "--target-epsilon", "5", "--out", str(tmp_path)]
    assert main([*argv, "--num-samples", "6", "--seed", str(seed), "--json"]) == 0
    written = (tmp_path / "privacy.json").read_text()
    assert str(seed) not in written and str(seed) not in capsys.readouterr().out
    secret_run = synthesize(_tiny(), target_epsilon=5.0, num_samples=6)
    assert secret_run.statement["research_mode"] is False
    assert secret_run.statement["seed"].startswith("secret")


@pytest.mark.standard_promotion  # the generator's Adam promotes its int32 step count
@pytest.mark.parametrize("method", ["gaussian", "merf"])
def test_the_generator_and_the_sampler_receive_the_release_and_public_numbers_only(
    method, monkeypatch
):
    """No finding: synthesize hands the fit and the sampler a release record (or the model made
    from it), a config, seeds and flags; never an array of the data."""
    seen = []

    def spy(name):
        real = getattr(synth_module, name)

        def wrapped(*args, **kw):
            seen.append((name, args, kw))
            return real(*args, **kw)

        return wrapped

    for name in ("fit_class_gaussians", "train_generator", "sample"):
        monkeypatch.setattr(synth_module, name, spy(name))
    tiny = GeneratorConfig(hidden=(8,), steps=2, batch_per_class=2)
    synthesize(_tiny(), target_epsilon=5.0, method=method, num_samples=6, seed=1,
               generator_config=tiny)  # fmt: skip
    assert [s[0] for s in seen] == [
        "fit_class_gaussians" if method == "gaussian" else "train_generator",
        "sample",
    ]
    fit_args = seen[0][1]
    assert isinstance(fit_args[0], ReleasedMoments if method == "gaussian" else ReleasedEmbedding)
    for _, args, kw in seen:
        for value in (*args[1:], *kw.values()):
            assert isinstance(value, int | bool | GeneratorConfig), type(value)
