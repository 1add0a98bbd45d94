"""Faults survived: failed checkpoint writes, SIGTERM, torn logs, a spent budget, hostile inputs."""

import dataclasses
import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import dpjax
import dpjax.models
import dpjax.training
from dpjax import _random
from dpjax.data import Split
from dpjax.training import _checkpoint, _cli


@pytest.fixture(scope="module")
def digits():
    return dpjax.load_dataset("digits", seed=0)


def _cfg(**kw):
    base = dict(
        dataset="digits", model="logreg", batch_size=128, steps=6, lr=0.05, eval_every=3, seed=0
    )
    return dpjax.training.TrainConfig(**(base | kw))


def _fail_on_write(monkeypatch, after_calls=0):
    """Makes the checkpoint's archive writer write half a file, then fail, after `after_calls` good writes."""
    real = np.savez
    calls = []

    def savez(f, **arrays):
        calls.append(1)
        if len(calls) > after_calls:
            f.write(b"PK\x03\x04 half an archive")
            raise OSError(28, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(_checkpoint.np, "savez", savez)


def test_a_failed_checkpoint_write_keeps_the_last_good_one_and_no_temporary_file(
    tmp_path, monkeypatch
):
    path = tmp_path / "run.npz"
    tree = {"w": np.arange(3.0, dtype=np.float32)}
    _checkpoint.save_checkpoint(path, tree, {"step": 1})
    good = path.read_bytes()
    _fail_on_write(monkeypatch)
    with pytest.raises(OSError, match="No space"):
        _checkpoint.save_checkpoint(path, {"w": np.zeros(3, np.float32)}, {"step": 2})
    assert path.read_bytes() == good
    restored, meta = _checkpoint.load_checkpoint(path, tree)
    assert meta == {"step": 1} and np.array_equal(restored["w"], tree["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]


def test_a_run_whose_checkpoint_write_fails_resumes_from_the_last_good_one(
    digits, tmp_path, monkeypatch
):
    ckpt = tmp_path / "run.npz"
    # The checkpoint of step 2 is written, step 4's fails.
    _fail_on_write(monkeypatch, after_calls=1)
    with pytest.raises(OSError):
        dpjax.training.train(
            _cfg(steps=6), dataset=digits, checkpoint=ckpt, checkpoint_every=2, progress=False
        )
    monkeypatch.undo()
    assert _checkpoint.read_metadata(ckpt)["step"] == 2
    result = dpjax.training.train(
        _cfg(steps=6), dataset=digits, checkpoint=ckpt, checkpoint_every=2, progress=False
    )
    s = result.summary
    assert s["steps"] == 6 and s["stop_reason"] == "completed"
    # The account continued from step 2's checkpoint: exactly 6 steps are accounted.
    want = dpjax.compute_epsilon(s["noise_multiplier"], 6, s["sampling_rate"], 1e-5)
    assert s["epsilon"] == pytest.approx(want, rel=1e-9)


def test_sigterm_writes_a_checkpoint_and_the_summary_and_the_run_resumes(digits, tmp_path):
    ckpt, out = tmp_path / "run.npz", tmp_path / "summary.json"
    argv = [
        sys.executable, "-m", "dpjax", "train", "--dataset", "digits", "--model", "logreg",
        "--noise-multiplier", "20", "--target-epsilon", "50", "--steps", "5000",
        "--accountant", "rdp",
        "--batch-size", "128", "--lr", "0.05", "--seed", "0", "--eval-every", "100000",
        "--checkpoint", str(ckpt), "--checkpoint-every", "20", "--json-out", str(out),
        "--no-progress",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # start-up and 20 steps: seconds on an idle machine
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if not ckpt.exists():
        proc.kill()
        pytest.fail(f"no checkpoint before the deadline: {proc.communicate()}")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after" in err
    summary = json.loads(out.read_text())
    steps = _checkpoint.read_metadata(ckpt)["step"]
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == steps >= 20
    # Resume in process: the account continues from the checkpoint's.
    cfg = _cfg(
        noise_multiplier=20.0,
        target_epsilon=50.0,
        steps=steps + 2,
        eval_every=10**5,
        accountant="rdp",
    )
    resumed = dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)
    assert resumed.summary["steps"] == steps + 2
    assert resumed.summary["epsilon"] > summary["epsilon"]
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_every_is_a_cli_flag_and_is_validated(capsys):
    args = _cli._build_parser().parse_args(["train", "--checkpoint-every", "7"])
    assert args.checkpoint_every == 7
    assert _cli._build_parser().parse_args(["train"]).checkpoint_every == 100
    code = _cli.main(["train", "--steps", "1", "--checkpoint-every", "0", "--no-progress"])
    assert code == 2 and "checkpoint_every=0" in capsys.readouterr().err


def test_a_torn_log_line_does_not_swallow_the_next_record(digits, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 3, "epsilon": 0.1}\n{"step": 6, "eps')  # killed mid-write
    dpjax.training.train(_cfg(steps=3), dataset=digits, log_path=log, progress=False)
    lines = log.read_text().splitlines()
    assert lines[1] == '{"step": 6, "eps'
    assert json.loads(lines[2])["step"] == 3 and log.read_text().endswith("\n")


def test_a_budget_already_spent_at_start_takes_no_step(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    cfg = _cfg(
        target_epsilon=0.5, noise_multiplier=4.0, steps=10_000, eval_every=100, accountant="rdp"
    )
    spent = dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)
    assert spent.summary["stop_reason"] == "budget"
    again = dpjax.training.train(cfg, dataset=digits, checkpoint=ckpt, progress=False)
    assert again.summary["stop_reason"] == "budget"
    assert again.summary["steps"] == spent.summary["steps"]
    assert again.summary["epsilon"] == spent.summary["epsilon"] <= 0.5
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(spent.params), strict=True):
        np.testing.assert_array_equal(a, b)


def _with(digits, part="train", x=None, y=None, num_classes=10):
    split = getattr(digits, part)
    new = Split(x=split.x if x is None else x, y=split.y if y is None else y)
    return dataclasses.replace(digits, **{part: new}, num_classes=num_classes)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: _with(d, y=np.where(np.arange(len(d.train)) == 5, 10, d.train.y)), r"\[0, 10\]"),
        (lambda d: _with(d, part="test", y=d.test.y - 1), r"test labels range over \[-1"),
        (lambda d: _with(d, y=d.train.y.astype(np.float32)), "integer class"),
        (lambda d: _with(d, y=np.stack([d.train.y] * 2, 1)), r"shape \(N,\)"),
        (
            lambda d: _with(d, x=np.where(np.arange(len(d.train))[:, None, None, None] == 2,
                                          np.nan, d.train.x).astype(np.float32)),
            "NaN or inf in 1 example",
        ),
        (lambda d: _with(d, part="validation", x=np.full_like(d.validation.x, np.inf)), "NaN or inf"),
    ],
    ids=["label-10-of-10", "negative-test-label", "float-labels", "2d-labels", "nan-input", "inf-input"],
)  # fmt: skip
def test_hostile_data_is_refused_before_any_step(digits, edit, match):
    with pytest.raises(ValueError, match=match):
        dpjax.training.train(_cfg(steps=1), dataset=edit(digits), progress=False)


def test_non_finite_initial_parameters_are_refused(digits):
    model = dpjax.models.make_model("logreg", (8, 8, 1), 10, seed=0)
    params = jax.tree.map(lambda p: p * np.float32(np.nan), model.params)
    bad = model._replace(params=params)
    with pytest.raises(ValueError, match="initial parameters hold NaN"):
        dpjax.training.train(_cfg(steps=1), dataset=digits, model=bad, progress=False)


def test_a_checkpoint_with_non_finite_parameters_is_refused(digits, tmp_path):
    ckpt = tmp_path / "run.npz"
    dpjax.training.train(_cfg(steps=2), dataset=digits, checkpoint=ckpt, progress=False)
    with np.load(ckpt) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["0"] = np.full_like(arrays["0"], np.nan)
    with open(ckpt, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match="non-finite parameters"):
        dpjax.training.train(_cfg(steps=4), dataset=digits, checkpoint=ckpt, progress=False)


def test_nan_gradients_inside_a_step_contribute_nothing_and_are_counted():
    # The mechanism's own rule (documented safe behaviour): a non-finite row adds zero.
    grads = np.ones((4, 3), np.float32)
    grads[1, 0] = np.nan
    grads[2, 2] = np.inf
    clipped = dpjax.clip_and_sum(grads, 1.0, mask=np.ones(4, bool))
    np.testing.assert_allclose(clipped.sum, 2 * np.ones(3) / np.sqrt(3), rtol=1e-6)
    assert int(clipped.stats.num_nonfinite) == 2


def test_secret_seed_never_reaches_the_summary_log_or_stdout(digits, tmp_path, monkeypatch, capsys):
    secret = 0xD1CE_5EED_0BAD_F00D
    monkeypatch.setattr(_random.secrets, "randbits", lambda bits: secret)
    out, log, ckpt = tmp_path / "s.json", tmp_path / "log.jsonl", tmp_path / "run.npz"
    code = _cli.main(
        ["train", "--model", "logreg", "--steps", "3", "--eval-every", "1", "--batch-size", "128",
         "--json-out", str(out), "--log", str(log), "--checkpoint", str(ckpt), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    derived = {dpjax.derive_seed(secret, p) for p in range(5)}
    needles = {str(v) for v in {secret, *derived}} | {hex(v)[2:] for v in {secret, *derived}}
    for word in (secret >> 32, secret & 0xFFFFFFFF):  # the key data's two words
        needles.add(str(word))
    for name, text in {
        "summary": out.read_text(),
        "log": log.read_text(),
        "stdout": captured.out,
        "stderr": captured.err,
    }.items():
        for needle in needles:
            assert needle not in text, (name, needle)
    assert "secret" in json.loads(out.read_text())["seed"]
    # The checkpoint (sensitive, never shared) is where the seed lives, and only there.
    assert _checkpoint.read_metadata(ckpt)["seed"] == secret


def test_the_trainer_and_cli_offer_the_discrete_sampler(digits, capsys):
    result = dpjax.training.train(
        _cfg(steps=2, noise_sampler="discrete"), dataset=digits, progress=False
    )
    assert result.summary["noise_sampler"] == "discrete" and result.summary["steps"] == 2
    with pytest.raises(ValueError, match="noise_sampler='discrete' takes a constant"):
        _cfg(noise_sampler="discrete", noise_schedule="linear:0.5")
    with pytest.raises(ValueError, match="noise_sampler='exact' is unknown"):
        _cfg(noise_sampler="exact")
    assert _cli.main(["train", "--not-private", "--noise-sampler", "discrete"]) == 2
    assert "--noise-sampler" in capsys.readouterr().err
