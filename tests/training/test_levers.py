"""The levers that keep accuracy under privacy: sigma schedules, per-layer clipping, EMA, augmult."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
import dpjax.training
from dpjax.training import _checkpoint, _levers, _trainer, main

DELTA = 1e-5


@pytest.fixture(scope="module")
def digits():
    return dpjax.load_dataset("digits", seed=0)


def _cfg(**kw):
    base = dict(
        dataset="digits", model="logreg", batch_size=128, steps=6, lr=0.05, eval_every=100, seed=0
    )
    return dpjax.training.TrainConfig(**(base | kw))


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


# ---- validation


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(noise_schedule="cosine"), r"noise_schedule='cosine' is unknown.*linear:R"),
        (dict(noise_schedule="linear"), r"noise_schedule='linear' is unknown"),
        (dict(noise_schedule="linear:0"), r"noise_schedule='linear:0' has R='0'.*> 0"),
        (dict(noise_schedule="exponential:-1"), r"noise_schedule='exponential:-1'.*> 0"),
        (dict(noise_schedule="linear:abc"), r"noise_schedule='linear:abc'.*finite number"),
        (dict(noise_schedule="linear:inf"), r"noise_schedule='linear:inf'.*finite number"),
        (dict(noise_schedule=0.5), r"noise_schedule=0.5 must be a string"),
        (dict(clip_groups="per-layer"), r"clip_groups='per-layer' is unknown.*by-size"),
        (dict(ema_decay=1.0), r"ema_decay=1.0 must be a number in \[0, 1\)"),
        (dict(ema_decay=-0.1), r"ema_decay=-0.1"),
        (dict(ema_decay=True), r"ema_decay=True"),
        (dict(augmult=-1), r"augmult=-1 must be an integer >= 0"),
        (dict(augmult=2.5), r"augmult=2.5"),
        (dict(augmult=2, clipping="ghost"), r"augmult=2 with clipping='ghost'.*clipping='vmap'"),
        (dict(not_private=True, noise_schedule="linear:0.5"), r"contradicts noise_schedule="),
        (dict(not_private=True, clip_groups="equal"), r"contradicts clip_groups='equal'"),
        (dict(not_private=True, ema_decay=0.9), r"contradicts ema_decay=0.9"),
        (dict(not_private=True, augmult=4), r"contradicts augmult=4"),
    ],
)
def test_bad_lever_values_are_refused_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_levers_that_are_off_are_accepted_everywhere():
    cfg = _cfg(not_private=True, augmult=1, noise_schedule="constant", clip_groups="none")
    assert cfg.not_private and cfg.augmult == 1
    assert _cfg(augmult=4, clipping="auto").augmult == 4  # auto picks vmap


# ---- noise schedule


def test_schedule_noises_and_records_sigma_t_at_every_step(digits, tmp_path):
    out = tmp_path / "s.json"
    cfg = _cfg(
        steps=20, noise_multiplier=2.0, target_epsilon=None, noise_schedule="exponential:0.5"
    )
    result = dpjax.training.train(cfg, dataset=digits, json_out=out, progress=False)
    q = 128 / len(digits.train)
    plan = dpjax.training.plan_run(cfg, len(digits.train))
    schedule = plan.noise_schedule
    assert isinstance(schedule, dpjax.NoiseSchedule) and schedule.steps == 20
    # The schedule starts at the given sigma and ends at R times it (each rounded down <= 5 %).
    assert plan.noise_multiplier == schedule.at(0) and 2.0 / 1.05 <= schedule.at(0) <= 2.0
    assert 1.0 / 1.05 <= schedule.at(19) <= 1.0 and len(schedule.phases) > 5
    # The tracker recorded sigma_t at every step, in order.
    tracker = dpjax.PrivacyTracker.from_state_dict(result.summary["accounting_state"])
    recorded = [sigma for sigma, count in tracker.phases for _ in range(count)]
    assert recorded == [schedule.at(t) for t in range(20)]
    assert result.summary["epsilon"] == pytest.approx(schedule.epsilon(q, DELTA), rel=1e-9)
    summary = json.loads(out.read_text())
    assert summary["noise_phases"] == [list(p) for p in schedule.phases]
    assert summary["noise_multiplier"] == schedule.at(0)


def test_calibrated_schedule_spends_just_under_the_target(digits):
    cfg = _cfg(steps=10, target_epsilon=2.0, noise_schedule="linear:0.5", accountant="rdp")
    plan = dpjax.training.plan_run(cfg, len(digits.train))
    q = plan.sampling_rate
    schedule = plan.noise_schedule
    assert schedule is not None and schedule.at(0) > schedule.at(9)
    want = dpjax.calibrate_noise_schedule(
        _levers.noise_schedule_shape("linear:0.5", 10), 2.0, q, 10, DELTA, accountant="rdp"
    )
    assert schedule == want
    result = dpjax.training.train(cfg, dataset=digits, progress=False)
    eps = result.summary["epsilon"]
    assert 0.99 * 2.0 <= eps <= 2.0 and result.summary["steps"] == 10
    assert eps == pytest.approx(schedule.epsilon(q, DELTA, accountant="rdp"), rel=1e-9)


def test_constant_schedule_is_exactly_the_run_without_one(digits):
    default = dpjax.training.train(_cfg(target_epsilon=2.0), dataset=digits, progress=False)
    constant = dpjax.training.train(
        _cfg(target_epsilon=2.0, noise_schedule="constant"), dataset=digits, progress=False
    )
    _assert_trees_equal(default.params, constant.params)
    plan = dpjax.training.plan_run(_cfg(target_epsilon=2.0), len(digits.train))
    sigma = dpjax.calibrate_noise_multiplier(2.0, plan.sampling_rate, 6, DELTA)
    assert plan.noise_schedule is None and plan.noise_multiplier == sigma
    assert constant.summary["noise_multiplier"] == sigma
    assert constant.summary["noise_phases"] == [[sigma, 6]]


def test_the_noise_std_at_step_t_is_sigma_t_times_the_clip_norm(digits):
    cfg = _cfg(steps=4, noise_multiplier=2.0, target_epsilon=None, noise_schedule="linear:0.25")
    plan = dpjax.training.plan_run(cfg, len(digits.train))
    assert plan.noise_schedule is not None
    key = jax.random.key(7)
    scheduled = _trainer._noisy_mean(cfg, plan, key)  # what the trainer chains with its optimizer
    unit = dpjax.noisy_mean(1.0, cfg.batch_size, key)  # same key: the same standard normals
    c = 0.3
    clipped = dpjax.clip_and_sum(jnp.zeros((1, 20_000)), c, mask=jnp.ones(1, bool))
    s_state, u_state = scheduled.init(None), unit.init(None)
    for t in range(4):
        noise, s_state = scheduled.update(clipped, s_state)
        z, u_state = unit.update(clipped, u_state)
        z = np.asarray(z) * cfg.batch_size / c  # N(0, 1) draws of step t
        assert abs(np.std(z) - 1.0) < 0.03
        np.testing.assert_allclose(
            np.asarray(noise) * cfg.batch_size, plan.noise_schedule.at(t) * c * z, rtol=1e-5
        )
    # Past the schedule's last step the noise stage gives NaN, never an un-noised value.
    noise, _ = scheduled.update(clipped, s_state)
    assert np.isnan(np.asarray(noise)).all()


def test_schedule_resumes_where_it_stopped(digits, tmp_path, monkeypatch):
    cfg = _cfg(steps=8, noise_multiplier=2.0, target_epsilon=None, noise_schedule="linear:0.5")
    whole = dpjax.training.train(cfg, dataset=digits, progress=False)
    real_sample = dpjax.PoissonSampler.sample

    def interrupted(self, t):  # Ctrl-C when step 5 starts
        if t == 5:
            raise KeyboardInterrupt
        return real_sample(self, t)

    ckpt = tmp_path / "run.npz"
    monkeypatch.setattr(dpjax.PoissonSampler, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)
    monkeypatch.setattr(dpjax.PoissonSampler, "sample", real_sample)
    resumed = dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)
    # Same sigma_t, batches and noise at every step: the noise counter and t agree.
    _assert_trees_equal(whole.params, resumed.params)
    assert resumed.summary["accounting_state"] == whole.summary["accounting_state"]


def test_schedule_with_a_budget_stops_before_the_step_that_would_exceed_it(digits):
    cfg = _cfg(
        steps=30, noise_multiplier=2.0, target_epsilon=1.0, noise_schedule="linear:0.5",
        accountant="rdp",
    )  # fmt: skip
    plan = dpjax.training.plan_run(cfg, len(digits.train))
    assert plan.noise_schedule is not None and 1 <= plan.max_steps < 30
    result = dpjax.training.train(cfg, dataset=digits, progress=False)
    assert result.summary["steps"] == plan.max_steps
    assert result.summary["stop_reason"] == "budget" and result.summary["epsilon"] <= 1.0
    assert result.summary["epsilon"] == pytest.approx(plan.planned_epsilon, rel=1e-9)
    more = _levers.schedule_prefix(plan.noise_schedule, plan.max_steps + 1)
    assert more.epsilon(plan.sampling_rate, DELTA, accountant="rdp") > 1.0


# ---- per-layer clipping


def test_layer_labels_cover_every_parameter_and_group_norms_keep_the_sensitivity():
    params = dpjax.make_model("mlp", (8, 8, 1), 10, seed=0).params
    labels = _levers.layer_labels(params)
    assert jax.tree.structure(labels) == jax.tree.structure(params)
    assert sorted(set(jax.tree.leaves(labels))) == ["head", "layers/0"]
    equal = _levers.group_clip_norms("equal", 2.0, params)
    assert isinstance(equal, dpjax.GroupClipNorms)
    assert equal.norms == pytest.approx({"head": 2.0 / 2**0.5, "layers/0": 2.0 / 2**0.5})
    assert equal.leaf_labels(params) == jax.tree.leaves(labels)  # every leaf has a norm
    by_size = _levers.group_clip_norms("by-size", 2.0, params)
    assert isinstance(by_size, dpjax.GroupClipNorms)
    sizes = {"head": 256 * 10 + 10, "layers/0": 64 * 256 + 256}
    for g, n in sizes.items():
        assert by_size.norms[g] ** 2 == pytest.approx(4.0 * n / sum(sizes.values()), rel=1e-12)
    for clip in (equal, by_size):
        assert clip.sensitivity == pytest.approx(2.0, rel=1e-12)
    assert _levers.group_clip_norms("none", 2.0, params) == 2.0


@pytest.mark.parametrize("clipping", ["vmap", "ghost"])
def test_group_clipped_sum_has_sensitivity_clip_norm_and_each_layer_within_its_norm(
    digits, clipping
):
    cfg = _cfg(model="mlp", clip_groups="equal", clip_norm=0.01, clipping=clipping)
    model = dpjax.make_model("mlp", (8, 8, 1), 10, seed=0)
    clip = _levers.group_clip_norms("equal", 0.01, model.params)
    name, clipper = _trainer._clipper(
        cfg, model, _trainer.classification_loss, digits.train, 4, clip=clip
    )
    assert name == clipping
    batch = (jnp.asarray(digits.train.x[:4]), jnp.asarray(digits.train.y[:4]))
    one = jnp.array([True, False, False, False])  # one example: its clipped contribution
    clipped = jax.jit(clipper)(model.params, batch, one)
    assert clipped.sensitivity == pytest.approx(0.01, rel=1e-12)
    assert int(clipped.stats.num_clipped) == 1  # the example's layers exceed C_g = 0.0071
    labels = jax.tree.leaves(_levers.layer_labels(model.params))
    sq = {}
    for label, g in zip(labels, jax.tree.leaves(clipped.sum), strict=True):
        sq[label] = sq.get(label, 0.0) + float(jnp.sum(jnp.square(g)))
    for label, value in sq.items():
        assert value**0.5 == pytest.approx(clip.norms[label], rel=1e-4)  # clipped to C_g exactly
    assert sum(sq.values()) ** 0.5 <= 0.01 * (1 + 1e-5)


def test_ghost_and_vmap_give_the_same_parameters_with_equal_groups(digits):
    runs = {
        clipping: dpjax.training.train(
            _cfg(
                model="mlp",
                steps=2,
                optimizer="sgd",
                lr=0.5,
                clip_groups="equal",
                clipping=clipping,
                noise_multiplier=1.0,
                target_epsilon=None,
            ),
            dataset=digits,
            progress=False,
        )  # fmt: skip
        for clipping in ("ghost", "vmap")
    }
    assert runs["ghost"].summary["clipping"] == "ghost"
    assert runs["vmap"].summary["clip_norms"] == pytest.approx(
        {"head": 2**-0.5, "layers/0": 2**-0.5}
    )
    for a, b in zip(
        jax.tree.leaves(runs["ghost"].params), jax.tree.leaves(runs["vmap"].params), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


# ---- parameter averaging


def _checkpoint_params(path, n_leaves):
    """The parameters (first leaves) and the EMA (last leaves) a checkpoint holds."""
    with np.load(path) as data:
        arrays = {int(k.rsplit(":", 1)[-1]): data[k] for k in data.files if k[0].isdigit()}
    total = max(arrays) + 1
    return [arrays[i] for i in range(n_leaves)], [
        arrays[total - n_leaves + i] for i in range(n_leaves)
    ]


def test_ema_is_the_warmed_up_average_of_the_steps_and_resumes_bit_exactly(digits, tmp_path):
    model = dpjax.make_model("logreg", (8, 8, 1), 10, seed=0)
    cfg = lambda steps: _cfg(  # noqa: E731
        steps=steps, noise_multiplier=1.0, target_epsilon=None, ema_decay=0.9
    )
    whole = dpjax.training.train(cfg(3), dataset=digits, model=model, progress=False)
    assert whole.summary["evaluated_params"] == "ema" and whole.summary["ema_decay"] == 0.9

    # The same run one step at a time, through its checkpoint.
    ckpt = tmp_path / "run.npz"
    n = len(jax.tree.leaves(model.params))
    params, emas = [jax.tree.leaves(model.params)], []
    for steps in (1, 2, 3):
        last = dpjax.training.train(
            cfg(steps), dataset=digits, model=model, checkpoint=ckpt, progress=False
        )
        p, e = _checkpoint_params(ckpt, n)
        params.append(p)
        emas.append(e)
    _assert_trees_equal(whole.params, last.params)  # resume is bit-exact, EMA included

    # ema_{t+1} = d_t ema_t + (1 - d_t) params_{t+1}, d_t = min(0.9, (1 + t) / (10 + t)).
    ema = [np.asarray(x, np.float64) for x in params[0]]
    for t in range(3):
        d = min(0.9, (1 + t) / (10 + t))
        ema = [
            d * e + (1 - d) * np.asarray(p, np.float64)
            for e, p in zip(ema, params[t + 1], strict=True)
        ]
        for got, want in zip(emas[t], ema, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(jax.tree.leaves(whole.params), ema, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Validation and test are computed on the average.
    evaluator = _trainer._Evaluator(model.apply, _trainer.classification_loss, classification=True)
    assert whole.summary["test_accuracy"] == evaluator(whole.params, digits.test)[0]


def test_resume_refuses_other_levers_and_reads_checkpoints_written_before_them(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    cfg = lambda **kw: _cfg(noise_multiplier=2.0, target_epsilon=None, **kw)  # noqa: E731
    dpjax.training.train(cfg(steps=1), dataset=digits, checkpoint=ckpt, progress=False)
    for kw in (dict(clip_groups="equal"), dict(ema_decay=0.9), dict(augmult=2)):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=rf"different run.*{name}"):
            dpjax.training.train(
                _cfg(steps=2, **kw), dataset=digits, checkpoint=ckpt, progress=False
            )
    # A checkpoint written before the levers existed has none of their fields: read as "off".
    with np.load(ckpt) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays[_checkpoint.META_KEY].tobytes().decode())
    for name in ("clip_groups", "augmult", "ema_decay"):
        del meta["fingerprint"][name]
    arrays[_checkpoint.META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    resumed = dpjax.training.train(cfg(steps=2), dataset=digits, checkpoint=ckpt, progress=False)
    assert resumed.summary["steps"] == 2


# ---- augmentation multiplicity


def test_augmult_loss_is_the_mean_over_the_k_augmentations(digits):
    model = dpjax.make_model("logreg", (8, 8, 1), 10, seed=0)
    k = 3
    one_loss = _levers.augmult_loss(model.apply, _trainer.classification_loss, k, flip=False)
    x, y = jnp.asarray(digits.train.x[5]), jnp.asarray(digits.train.y[5])
    key_data = jax.random.key_data(jax.random.fold_in(dpjax.key_from_seed(11), 5))
    got = one_loss(model.params, (x, y, key_data))

    keys = jax.random.split(jax.random.wrap_key_data(key_data, impl="threefry2x32"), k)
    views = [np.asarray(_levers.augment(x, key, flip=False)) for key in keys]
    losses = [
        float(_trainer.classification_loss(model.apply(model.params, v[None])[0], y)) for v in views
    ]
    assert float(got) == pytest.approx(np.mean(losses), rel=1e-6)
    # Each view is x shifted by at most 2 pixels with zero padding (no flip on digits).
    padded = np.pad(np.asarray(x), ((2, 2), (2, 2), (0, 0)))
    shifts = [padded[i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
    for v in views:
        assert any(np.array_equal(v, s) for s in shifts)
    assert len({v.tobytes() for v in views}) > 1  # the K views differ


def test_augmult_trains_on_digits_and_with_identity_views_is_the_plain_run(digits, monkeypatch):
    cfg = _cfg(model="mlp", steps=12, lr=0.01, eval_every=6, target_epsilon=8.0, augmult=2)
    result = dpjax.training.train(cfg, dataset=digits, progress=False)
    s = result.summary
    assert s["augmult"] == 2 and s["clipping"] == "vmap"  # 'auto' picked vmap
    assert 0 < s["epsilon"] <= 8.0
    first, last = (h["validation_loss"] for h in (result.history[0], result.history[-1]))
    assert last < first < np.log(10) + 0.1  # it learns (chance is log 10)

    # With the augmentation replaced by the identity, K copies of an example average to its own
    # loss: the run equals the plain vmap run (same batches, same noise).
    monkeypatch.setattr(_levers, "augment", lambda x, key, flip: x)
    same = dpjax.training.train(cfg, dataset=digits, progress=False)
    plain = dpjax.training.train(_cfg(**(cfg.__dict__ | dict(augmult=0, clipping="vmap"))),
                                 dataset=digits, progress=False)  # fmt: skip
    for a, b in zip(jax.tree.leaves(same.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_augmult_on_inputs_that_are_not_images_is_refused():
    rng = np.random.default_rng(0)
    split = lambda n: dpjax.data.Split(  # noqa: E731
        x=rng.normal(size=(n, 6)).astype(np.float32), y=rng.integers(0, 2, n)
    )
    data = dpjax.data.Dataset(
        name="tabular", train=split(300), validation=split(50), test=split(50), num_classes=2
    )
    with pytest.raises(ValueError, match=r"augmult=2 augments images.*\(6,\).*augmult=0"):
        dpjax.training.train(_cfg(augmult=2, batch_size=32), dataset=data, progress=False)


# ---- the command line


def test_cli_trains_with_every_lever_and_prints_them(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(
        ["train", "--model", "mlp", "--steps", "4", "--batch-size", "128", "--seed", "0",
         "--noise-multiplier", "2", "--noise-schedule", "exponential:0.5",
         "--clip-groups", "equal", "--ema-decay", "0.9", "--augmult", "2",
         "--no-progress", "--json-out", str(out)]
    )  # fmt: skip
    assert code == 0
    s = json.loads(out.read_text())
    assert s["noise_schedule"] == "exponential:0.5" and len(s["noise_phases"]) == 4
    assert s["clip_groups"] == "equal" and sorted(s["clip_norms"]) == ["head", "layers/0"]
    assert s["ema_decay"] == 0.9 and s["evaluated_params"] == "ema"
    assert s["augmult"] == 2 and s["clipping"] == "vmap"
    printed = capsys.readouterr().out
    assert "levers: noise schedule exponential:0.5 (sigma 2 -> 0.962 in 4 phases)" in printed
    assert "clip groups equal (2 layers), parameter EMA decay 0.9" in printed
    assert "augmult 2" in printed


def test_cli_help_documents_the_levers(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--noise-schedule", "--clip-groups", "--ema-decay", "--augmult"):
        assert flag in text


@pytest.mark.parametrize(
    "flags",
    [
        ["--noise-schedule", "linear:0.5"],
        ["--clip-groups", "equal"],
        ["--ema-decay", "0.99"],
        ["--augmult", "4"],
    ],
    ids=["noise-schedule", "clip-groups", "ema-decay", "augmult"],
)
def test_cli_not_private_refuses_every_lever(capsys, flags):
    code = main(["train", "--not-private", "--steps", "1", "--no-progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "--not-private contradicts" in err and flags[0] in err


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--noise-schedule", "linear:-1"], "noise_schedule='linear:-1'"),
        (["--ema-decay", "1"], "ema_decay=1.0"),
        (["--augmult", "-2"], "augmult=-2"),
        (["--augmult", "2", "--clipping", "ghost"], "clipping='vmap'"),
    ],
)
def test_cli_bad_lever_values_exit_2_naming_the_field(capsys, flags, match):
    assert main(["train", "--steps", "1", "--no-progress", *flags]) == 2
    assert match in capsys.readouterr().err
