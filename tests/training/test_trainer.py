"""The end-to-end trainer: budget stop, refusals, labels, logs, interruption."""

import json
import math

import flax.nnx as nnx
import jax
import numpy as np
import optax
import pytest

import dpjax
import dpjax.training
from dpjax import _random
from dpjax.training import SUMMARY_FIELDS, _checkpoint, _resume, _trainer


@pytest.fixture(scope="module")
def digits():
    return dpjax.load_dataset("digits", seed=0)


@pytest.fixture
def interrupt_at(monkeypatch):
    """Makes the sampler raise KeyboardInterrupt (as Ctrl-C would) when asked for `step`."""
    real_sample = dpjax.PoissonSampler.sample

    def arm(step):
        def sample(self, t):
            if t == step:
                raise KeyboardInterrupt
            return real_sample(self, t)

        monkeypatch.setattr(dpjax.PoissonSampler, "sample", sample)
        return lambda: monkeypatch.setattr(dpjax.PoissonSampler, "sample", real_sample)

    return arm


def _cfg(**kw):
    base = dict(
        dataset="digits", model="logreg", batch_size=128, steps=6, lr=0.05, eval_every=3, seed=0
    )
    return dpjax.training.TrainConfig(**(base | kw))


def test_private_run_reports_the_summary_fields_and_spends_at_most_the_target(digits, tmp_path):
    out, log = tmp_path / "summary.json", tmp_path / "log.jsonl"
    result = dpjax.training.train(
        _cfg(target_epsilon=2.0), dataset=digits, json_out=out, log_path=log, progress=False
    )
    summary = json.loads(out.read_text())
    assert set(SUMMARY_FIELDS) <= set(summary), set(SUMMARY_FIELDS) - set(summary)
    assert summary["private"] is True and summary["epsilon"] <= 2.0
    assert summary["sampling_rate"] == pytest.approx(128 / len(digits.train))
    # Calibrated sigma spends (just under) the whole budget over the planned steps.
    assert summary["epsilon"] >= 2.0 * 0.99
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["step"] for x in lines] == [3, 6]
    assert result.history[-1]["validation_accuracy"] == summary["validation_accuracy"]


def test_trainer_stops_exactly_before_the_step_that_would_exceed_the_budget(digits):
    sigma, q, delta, target = 1.5, 128 / len(digits.train), 1e-5, 1.5
    allowed = dpjax.max_steps(sigma, q, delta, target)
    assert 1 <= allowed < 50
    result = dpjax.training.train(
        _cfg(target_epsilon=target, noise_multiplier=sigma, steps=50, eval_every=100),
        dataset=digits,
        progress=False,
    )
    assert result.summary["steps"] == allowed
    assert result.summary["stop_reason"] == "budget"
    assert result.summary["epsilon"] <= target
    assert dpjax.compute_epsilon(sigma, allowed + 1, q, delta) > target


def test_target_too_small_for_one_step_reports_the_smallest_reachable_epsilon(digits):
    with pytest.raises(
        ValueError, match=r"too small for even one step.*smallest reachable epsilon"
    ):
        dpjax.training.train(
            _cfg(target_epsilon=1e-3, noise_multiplier=0.5), dataset=digits, progress=False
        )


def test_microbatching_does_not_change_the_result(digits):
    a = dpjax.training.train(_cfg(target_epsilon=3.0), dataset=digits, progress=False)
    b = dpjax.training.train(
        _cfg(target_epsilon=3.0, microbatch_size=16), dataset=digits, progress=False
    )
    assert b.summary["microbatch_size"] == 16
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)


def test_same_seed_reproduces_a_run_exactly(digits):
    a = dpjax.training.train(_cfg(), dataset=digits, progress=False)
    b = dpjax.training.train(_cfg(), dataset=digits, progress=False)
    c = dpjax.training.train(_cfg(seed=1), dataset=digits, progress=False)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(c.params)[0])


@pytest.mark.parametrize("model", ["mlp", "linen-mlp"])
def test_nnx_and_linen_models_both_learn(digits, model):
    result = dpjax.training.train(
        _cfg(model=model, steps=40, lr=0.01, target_epsilon=8.0, eval_every=40),
        dataset=digits,
        progress=False,
    )
    assert result.summary["test_accuracy"] > 0.5  # chance is 0.1


class _WithBatchNorm(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(64, 10, rngs=rngs)
        self.norm = nnx.BatchNorm(10, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.dense(x.reshape(x.shape[0], -1)))


def test_batchnorm_model_is_refused_naming_the_layer(digits):
    with pytest.raises(ValueError, match=r"norm.*BatchNorm"):
        model = dpjax.models.functional(_WithBatchNorm(nnx.Rngs(0)))
        dpjax.training.train(_cfg(), dataset=digits, model=model, progress=False)


def test_not_private_baseline_is_labelled_everywhere(digits, tmp_path):
    out = tmp_path / "s.json"
    with pytest.warns(dpjax.NotPrivateWarning, match="NOT PRIVATE"):
        result = dpjax.training.train(
            _cfg(not_private=True), dataset=digits, json_out=out, progress=False
        )
    summary = json.loads(out.read_text())
    assert summary["label"] == "NOT PRIVATE" and summary["private"] is False
    assert summary["epsilon"] is None and math.isinf(result.summary["epsilon"])


def test_unwritable_json_out_fails_before_any_training(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(_trainer, "load_dataset", boom)
    with pytest.raises(ValueError, match="json_out="):
        dpjax.training.train(_cfg(), json_out=tmp_path / "missing-dir" / "s.json", progress=False)


def test_ctrl_c_still_writes_what_was_spent(digits, tmp_path, interrupt_at):
    interrupt_at(3)
    out = tmp_path / "s.json"
    with pytest.raises(KeyboardInterrupt):
        dpjax.training.train(_cfg(steps=10), dataset=digits, json_out=out, progress=False)
    summary = json.loads(out.read_text())
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == 3
    # Exactly the three steps that ran are accounted.
    q = 128 / len(digits.train)
    want = dpjax.compute_epsilon(summary["noise_multiplier"], 3, q, 1e-5)
    assert summary["epsilon"] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(dataset="mnist"), r"dataset='mnist'.*digits, fashion-mnist, synthetic"),
        (dict(model="resnet"), r"model='resnet'.*logreg"),
        (dict(optimizer="lion"), r"optimizer='lion'"),
        (dict(clip_norm=0.0), r"clip_norm=0.0"),
        (dict(noise_multiplier=0.0), r"noise_multiplier=0.0.*NOT PRIVATE"),
        (dict(delta=1.0), r"delta=1.0"),
        (dict(target_epsilon=None, noise_multiplier=None), r"target_epsilon=None"),
    ],
)
def test_bad_configuration_is_refused_when_built(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_delta_not_below_one_over_n_is_refused(digits):
    with pytest.raises(ValueError, match=r"delta=0.01 is not below 1/N"):
        dpjax.training.train(_cfg(delta=1e-2), dataset=digits, progress=False)


def test_default_seed_is_secret_and_unrecorded(digits):
    a = dpjax.training.train(
        dpjax.training.TrainConfig(dataset="digits", steps=2, batch_size=128, eval_every=2),
        dataset=digits,
        progress=False,
    )
    b = dpjax.training.train(
        dpjax.training.TrainConfig(dataset="digits", steps=2, batch_size=128, eval_every=2),
        dataset=digits,
        progress=False,
    )
    assert "secret" in a.summary["seed"]
    assert not np.allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(b.params)[0])


def test_model_noise_and_sampler_seeds_are_independent_streams():
    seeds = {_random.derive_seed(0, p) for p in range(3)} | {
        _random.derive_seed(1, p) for p in range(3)
    }
    assert len(seeds) == 6 and all(0 <= s < 2**64 for s in seeds)
    # The streams use all 64 bits: a 32- or 63-bit range would leave the top bits empty.
    draws = [_random.derive_seed(s, 1) for s in range(200)]
    assert max(draws) >= 2**63 and len({d >> 32 for d in draws}) == 200


def test_resume_continues_the_run_and_the_budget_never_resets(digits, tmp_path, interrupt_at):
    cfg = _cfg(steps=10, eval_every=100, target_epsilon=2.0)
    whole = dpjax.training.train(cfg, dataset=digits, progress=False)

    ckpt = tmp_path / "run.npz"
    disarm = interrupt_at(4)
    with pytest.raises(KeyboardInterrupt):
        dpjax.training.train(
            cfg, dataset=digits, checkpoint=ckpt, checkpoint_every=3, progress=False
        )
    disarm()
    resumed = dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)

    # Same batches and same noise as the uninterrupted run: no key or batch replayed.
    for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert resumed.summary["steps"] == 10
    # The account continued from the checkpoint: exactly the steps that ran, once each.
    assert resumed.summary["epsilon"] == pytest.approx(whole.summary["epsilon"], rel=1e-9)
    tracker = dpjax.PrivacyTracker.from_state_dict(resumed.summary["accounting_state"])
    assert tracker.steps == 10


def test_resume_refuses_a_checkpoint_from_different_settings(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(_cfg(steps=3), dataset=digits, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match=r"different run.*clip_norm"):
        dpjax.training.train(
            _cfg(steps=6, clip_norm=2.0), dataset=digits, checkpoint=ckpt, progress=False
        )


def test_a_finished_run_resumed_with_more_steps_spends_more_not_again(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    sigma = 2.0
    first = dpjax.training.train(
        _cfg(steps=5, noise_multiplier=sigma, target_epsilon=None),
        dataset=digits,
        checkpoint=ckpt,
        progress=False,
    )
    more = dpjax.training.train(
        _cfg(steps=8, noise_multiplier=sigma, target_epsilon=None),
        dataset=digits,
        checkpoint=ckpt,
        progress=False,
    )
    q = 128 / len(digits.train)
    assert first.summary["epsilon"] == pytest.approx(
        dpjax.compute_epsilon(sigma, 5, q, 1e-5), rel=1e-6
    )
    assert more.summary["epsilon"] == pytest.approx(
        dpjax.compute_epsilon(sigma, 8, q, 1e-5), rel=1e-6
    )


def test_resume_refuses_different_training_data(digits, tmp_path):
    # Another N means another sampling rate: the account would be told the wrong q.
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(_cfg(steps=2), dataset=digits, checkpoint=ckpt, progress=False)
    smaller = dpjax.load_dataset("digits", seed=0, validation_size=900)
    with pytest.raises(ValueError, match=r"different run.*dataset_size"):
        dpjax.training.train(_cfg(steps=4), dataset=smaller, checkpoint=ckpt, progress=False)


def test_resume_refuses_a_different_budget(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(
        _cfg(steps=2, target_epsilon=1.0), dataset=digits, checkpoint=ckpt, progress=False
    )
    with pytest.raises(ValueError, match=r"different run.*target_epsilon"):
        dpjax.training.train(
            _cfg(steps=4, target_epsilon=5.0), dataset=digits, checkpoint=ckpt, progress=False
        )


# ---- issue 16: keys, secrets in outputs, checkpoints that are trusted blindly


def test_master_seeds_whose_noise_seeds_share_their_low_32_bits_give_different_noise_keys():
    # 5355 and 114463 derived noise seeds equal in their low 32 bits under the old 63-bit
    # derivation, and jax.random.key(int) kept only those bits: the two runs had one noise.
    keys = [
        np.asarray(jax.random.key_data(_random.key_from_seed(_random.derive_seed(s, 1))))
        for s in (5355, 114463)
    ]
    assert not np.array_equal(*keys)
    # Seeds that differ only above bit 32 give different keys (jax.random.key would not).
    a, b = (np.asarray(jax.random.key_data(_random.key_from_seed(s))) for s in (7, 7 + 2**40))
    assert not np.array_equal(a, b)


def test_trainer_noise_key_carries_64_bits_of_the_seed(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(
        _cfg(steps=1, seed=2**63 + 12345), dataset=digits, checkpoint=ckpt, progress=False
    )
    meta = _checkpoint.read_metadata(ckpt)
    want = _random.key_from_seed(_random.derive_seed(meta["seed"], 1))
    with np.load(ckpt) as data:
        keys = [data[name] for name in data.files if name.startswith("key:")]
    assert len(keys) == 1
    np.testing.assert_array_equal(keys[0], jax.random.key_data(want))
    assert keys[0][0] != 0  # the high word is used (it is 0 for every jax.random.key(int < 2**32))


def test_explicit_seed_never_reaches_the_summary_or_the_log(digits, tmp_path):
    seed = 918273645546372819
    out, log = tmp_path / "s.json", tmp_path / "log.jsonl"
    dpjax.training.train(
        _cfg(seed=seed), dataset=digits, json_out=out, log_path=log, progress=False
    )
    for text in (out.read_text(), log.read_text()):
        assert str(seed) not in text
    assert "explicit" in json.loads(out.read_text())["seed"]


def test_checkpoint_fingerprints_the_data_with_a_keyed_hash_only(digits, tmp_path):
    import hashlib

    ckpt = tmp_path / "run.npz"
    dpjax.training.train(_cfg(steps=1), dataset=digits, checkpoint=ckpt, progress=False)
    text = json.dumps(_checkpoint.read_metadata(ckpt))
    plain = hashlib.sha256()
    for array in (digits.train.x, digits.train.y):
        plain.update(str((array.dtype, array.shape)).encode())
        plain.update(np.ascontiguousarray(array).tobytes())
    assert plain.hexdigest() not in text and "train_sha256" not in text
    # The summary says the seed is in the checkpoint, and the checkpoint is sensitive.
    assert "sensitive" in _resume.seed_note(None, ckpt)


def _rewrite_metadata(path, edit):
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays[_checkpoint.META_KEY].tobytes().decode())
    edit(meta)
    arrays[_checkpoint.META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _rewrite_array(path, select, edit):
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    (name,) = [n for n in arrays if select(n)]
    arrays[name] = edit(arrays[name])
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["accounting"].update(target_epsilon=None), "another budget"),
        (lambda m: m.update(accounting=None), "no privacy account"),
        (lambda m: m["accounting"]["releases"].clear(), "inconsistent"),
        (lambda m: m.update(step=m["step"] - 1), "inconsistent"),
        (lambda m: m.update(seed=m["seed"] + 1), "different run|noise key"),
        (lambda m: m.update(version=1), "version"),
        (lambda m: m.pop("seed"), "seed"),
    ],
    ids=["budget-emptied", "account-removed", "entries-cleared", "step", "seed", "old", "no-seed"],
)
def test_resume_refuses_a_tampered_or_inconsistent_checkpoint(digits, tmp_path, edit, match):
    ckpt = tmp_path / "run.npz"
    cfg = _cfg(steps=3, target_epsilon=3.0)
    dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)
    _rewrite_metadata(ckpt, edit)
    with pytest.raises(ValueError, match=match):
        dpjax.training.train(
            _cfg(steps=6, target_epsilon=3.0, seed=None),
            dataset=digits,
            checkpoint=ckpt,
            progress=False,
        )


def test_resume_refuses_a_zeroed_noise_key(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(_cfg(steps=3), dataset=digits, checkpoint=ckpt, progress=False)
    _rewrite_array(ckpt, lambda n: n.startswith("key:"), np.zeros_like)
    with pytest.raises(ValueError, match="noise key"):
        dpjax.training.train(_cfg(steps=6), dataset=digits, checkpoint=ckpt, progress=False)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip file", b"PK\x03\x04truncated", "pickle"],
    ids=["empty", "garbage", "truncated-zip", "pickled"],
)
def test_malformed_checkpoint_is_a_clear_value_error(digits, tmp_path, content):
    ckpt = tmp_path / "run.npz"
    if content == "pickle":
        with open(ckpt, "wb") as f:
            np.savez(f, **{"0": np.array([object()], dtype=object)})
    else:
        ckpt.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable dpjax checkpoint"):
        dpjax.training.train(_cfg(steps=2), dataset=digits, checkpoint=ckpt, progress=False)


def test_truncated_checkpoint_is_a_clear_value_error(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(_cfg(steps=2), dataset=digits, checkpoint=ckpt, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable dpjax checkpoint"):
        dpjax.training.train(_cfg(steps=4), dataset=digits, checkpoint=ckpt, progress=False)


def test_steps_beyond_the_int32_noise_counter_are_refused():
    with pytest.raises(ValueError, match=r"steps=.*2\*\*31"):
        _cfg(steps=2**31)


def test_not_private_with_a_noise_multiplier_is_refused():
    with pytest.raises(ValueError, match="not_private=True contradicts noise_multiplier"):
        _cfg(not_private=True, noise_multiplier=1.0)


# ---- a trainer for any objective (architecture issue)


def _regression_data(n=900, d=6, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x @ w + 0.1 * rng.normal(size=n)).astype(np.float32)
    part = lambda a, b: dpjax.data.Split(x=x[a:b], y=y[a:b])  # noqa: E731
    return dpjax.data.Dataset(
        name="linear regression", train=part(0, 600), validation=part(600, 750), test=part(750, n)
    )


def test_trainer_fits_a_regression_with_a_user_loss_on_plain_arrays():
    data = _regression_data()
    model = dpjax.models.functional(dpjax.ghost.GhostLinear(6, 1, rngs=nnx.Rngs(0)))

    def squared_error(prediction, target):  # ONE example: prediction (1,), target ()
        return (prediction[0] - target) ** 2

    cfg = dpjax.training.TrainConfig(
        dataset="synthetic", steps=150, batch_size=100, lr=0.05, target_epsilon=8.0,
        clip_norm=5.0, eval_every=50, seed=0,
    )  # fmt: skip
    result = dpjax.training.train(
        cfg, dataset=data, model=model, loss=squared_error, progress=False
    )
    s = result.summary
    baseline = float(np.mean(data.test.y**2))  # predicting 0
    assert s["test_loss"] < 0.2 * baseline, (s["test_loss"], baseline)
    assert s["test_accuracy"] is None or math.isnan(s["test_accuracy"])  # not a classifier
    assert s["clipping"] == "ghost" and 0 < s["epsilon"] <= 8.0


def test_the_trainers_step_is_the_public_pieces():
    # The same run built by hand from public names gives the same parameters.
    data = _regression_data(n=400)
    model = dpjax.models.functional(nnx.Linear(6, 1, rngs=nnx.Rngs(0)))  # not ghost: vmap path

    def loss(prediction, target):
        return (prediction[0] - target) ** 2

    cfg = dpjax.training.TrainConfig(
        dataset="synthetic", steps=3, batch_size=64, lr=0.1, noise_multiplier=1.0,
        target_epsilon=None, clip_norm=1.0, optimizer="sgd", eval_every=3, seed=123,
    )  # fmt: skip
    got = dpjax.training.train(cfg, dataset=data, model=model, loss=loss, progress=False)
    n = len(data.train)
    sampler = dpjax.PoissonSampler(n, expected_batch_size=64, seed=dpjax.derive_seed(123, 2))
    grads = dpjax.per_example_grads(lambda p, ex: loss(model.apply(p, ex[0][None])[0], ex[1]))
    clipper = dpjax.accumulate_clipped_grads(
        grads, l2_norm=1.0, microbatch_size=sampler.microbatch_size
    )
    key = dpjax.key_from_seed(dpjax.derive_seed(123, 1))
    tx = optax.chain(dpjax.noisy_mean(1.0, 64, key), optax.sgd(0.1))
    update = jax.jit(dpjax.private_update(clipper, tx))
    params, state = model.params, tx.init(model.params)
    for t in range(3):
        b = sampler.sample(t)
        params, state = update(
            params, state, (data.train.x[b.indices], data.train.y[b.indices]), b.mask
        )
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_run_plan_is_a_typed_record():
    plan = dpjax.training.plan_run(_cfg(steps=10, target_epsilon=2.0), 1000)
    assert isinstance(plan, dpjax.training.RunPlan)
    assert plan.steps == 10 and plan.sampling_rate == 128 / 1000 and plan.planned_epsilon <= 2.0
