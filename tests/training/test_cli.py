"""Tests for the `dpjax` command line (dpjax._cli), run in-process."""

import json
import re

import pytest

from dpjax._accounting import calibrate_noise_multiplier, compute_epsilon
from dpjax.training import SUMMARY_FIELDS, main

DELTA = 1e-5


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_epsilon_text_output_matches_compute_epsilon(capsys):
    code, out, err = _run(
        capsys, "epsilon", "--noise-multiplier", "1.1", "--steps", "1000",
        "--sampling-rate", "0.01", "--delta", "1e-5",
    )  # fmt: skip
    assert code == 0 and err == ""
    eps = float(re.search(r"epsilon = (\S+)", out).group(1))
    assert eps == pytest.approx(compute_epsilon(1.1, 1000, 0.01, DELTA), rel=1e-5)
    assert "Poisson sampling" in out


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_epsilon_json_with_phases_matches_compute_epsilon(capsys, accountant):
    code, out, _ = _run(
        capsys, "epsilon", "--noise-multiplier", "2", "1", "--steps", "100", "50",
        "--sampling-rate", "0.02", "--delta", "1e-5", "--accountant", accountant, "--json",
    )  # fmt: skip
    assert code == 0
    record = json.loads(out)
    expected = compute_epsilon([2.0, 1.0], [100, 50], 0.02, DELTA, accountant=accountant)
    assert record["epsilon"] == expected
    assert record["noise_multiplier"] == [2.0, 1.0]
    assert record["steps"] == [100, 50]
    assert (record["delta"], record["sampling_rate"], record["accountant"]) == (
        DELTA,
        0.02,
        accountant,
    )


def test_calibrate_text_and_json_match_calibrate_noise_multiplier(capsys):
    args = ["calibrate", "--target-epsilon", "2", "--sampling-rate", "0.01", "--steps", "1000"]
    args += ["--delta", "1e-5"]
    sigma = calibrate_noise_multiplier(2.0, 0.01, 1000, DELTA)

    code, out, _ = _run(capsys, *args)
    assert code == 0
    assert float(re.search(r"noise_multiplier = (\S+)", out).group(1)) == pytest.approx(
        sigma, rel=1e-5
    )

    code, out, _ = _run(capsys, *args, "--json")
    assert code == 0
    record = json.loads(out)
    assert record["noise_multiplier"] == sigma
    assert record["epsilon"] == compute_epsilon(sigma, 1000, 0.01, DELTA) <= 2.0
    assert record["steps"] == 1000 and record["sampling_rate"] == 0.01


def test_epochs_path_reports_how_steps_were_rounded(capsys):
    code, out, _ = _run(
        capsys, "epsilon", "--noise-multiplier", "1.0", "--dataset-size", "1797",
        "--batch-size", "256", "--epochs", "3", "--delta", "1e-4",
    )  # fmt: skip
    assert code == 0
    assert "21.06 steps, rounded up to 22 steps" in out
    eps = float(re.search(r"epsilon = (\S+)", out).group(1))
    assert eps == pytest.approx(compute_epsilon(1.0, 22, 256 / 1797, 1e-4), rel=1e-5)


def test_calibrate_from_epochs_json(capsys):
    code, out, _ = _run(
        capsys, "calibrate", "--target-epsilon", "3", "--dataset-size", "1797",
        "--batch-size", "256", "--epochs", "30", "--delta", "1e-4", "--json",
    )  # fmt: skip
    assert code == 0
    record = json.loads(out)
    assert record["steps"] == 211
    assert "rounded up to 211 steps" in record["notes"][0]
    assert record["epsilon"] <= 3.0


def _epsilon_argv(**options):
    """`dpjax epsilon` arguments; values with spaces become several values."""
    defaults = {"noise_multiplier": "1", "steps": "10", "sampling_rate": "0.01", "delta": "1e-5"}
    argv = ["epsilon"]
    for key, value in {**defaults, **options}.items():
        argv += ["--" + key.replace("_", "-"), *value.split()]
    return argv


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"delta": "0"}, "delta=0.0"),
        ({"sampling_rate": "1.5"}, "sampling_rate=1.5"),
        ({"steps": "0"}, "steps=0"),
        ({"noise_multiplier": "0"}, "noise_multiplier"),
        ({"noise_multiplier": "1 2"}, "--steps has 1 value(s) but --noise-multiplier has 2"),
        ({"dataset_size": "1000", "delta": "1e-3"}, "delta=0.001 is not below 1/N"),
    ],
)
def test_bad_input_exits_2_with_a_message_naming_the_parameter(capsys, options, fragment):
    code, out, err = _run(capsys, *_epsilon_argv(**options))
    assert code == 2
    assert out == ""
    assert err.startswith("dpjax: error: ")
    assert fragment in err
    assert "Traceback" not in err


def test_mixing_steps_and_epochs_is_refused(capsys):
    code, _, err = _run(
        capsys, "epsilon", "--noise-multiplier", "1", "--steps", "10", "--dataset-size", "100",
        "--batch-size", "10", "--epochs", "1", "--delta", "1e-5",
    )  # fmt: skip
    assert code == 2
    assert "not both" in err


def test_unreachable_calibration_target_exits_2(capsys):
    code, _, err = _run(
        capsys, "calibrate", "--target-epsilon", "0.001", "--sampling-rate", "0.5",
        "--steps", "1000", "--delta", "1e-5", "--accountant", "rdp",
    )  # fmt: skip
    assert code == 2
    assert "unreachable" in err and "smallest" in err


def test_unknown_accountant_is_a_usage_error(capsys):
    code, _, err = _run(
        capsys, "epsilon", "--noise-multiplier", "1", "--steps", "10", "--sampling-rate", "0.1",
        "--delta", "1e-5", "--accountant", "moments",
    )  # fmt: skip
    assert code == 2
    assert "--accountant" in err


# --- dpjax train -------------------------------------------------------------------------------


def test_train_end_to_end_on_digits_writes_the_summary_and_stays_within_budget(tmp_path, capsys):
    out = tmp_path / "run.json"
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--model",
            "logreg",
            "--target-epsilon",
            "1",
            "--steps",
            "20",
            "--batch-size",
            "128",
            "--seed",
            "0",
            "--no-progress",
            "--json-out",
            str(out),
        ]
    )
    assert code == 0
    summary = json.loads(out.read_text())
    assert set(SUMMARY_FIELDS) <= set(summary), set(SUMMARY_FIELDS) - set(summary)
    assert summary["dataset"] == "digits" and summary["model"] == "logreg"
    assert 0 < summary["epsilon"] <= 1.0 and summary["steps"] == 20
    assert summary["test_accuracy"] > 0.3
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "epsilon = " in printed


def test_train_not_private_is_labelled(capsys):
    code = main(["train", "--not-private", "--steps", "5", "--batch-size", "128", "--no-progress"])
    assert code == 0
    assert "NOT PRIVATE" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--dataset", "mnist"], "digits, fashion-mnist, synthetic"),
        (["train", "--model", "vgg"], "logreg, mlp, cnn"),
        (
            ["train", "--target-epsilon", "0.001", "--noise-multiplier", "0.5"],
            "smallest reachable epsilon",
        ),
        (["train", "--json-out", "/nonexistent-dir/x.json"], "json_out="),
        (["train", "--clip-norm", "inf"], "clip_norm=inf"),
    ],
)
def test_train_bad_input_fails_fast_with_a_clear_message(argv, match, capsys):
    assert main(argv + ["--no-progress"]) == 2
    assert re.search(match, capsys.readouterr().err)


# ---- issue 16, item 7: contradictory flags and inputs that used to crash


@pytest.mark.parametrize(
    "flags",
    [
        ["--clip-norm", "0"],
        ["--noise-multiplier", "1.0"],
        ["--target-epsilon", "3"],
    ],
    ids=["clip-norm", "noise-multiplier", "target-epsilon"],
)
def test_not_private_refuses_privacy_flags_it_would_ignore(capsys, flags):
    code, out, err = _run(
        capsys, "train", "--dataset", "digits", "--not-private", "--steps", "1", *flags
    )
    assert code == 2 and "--not-private contradicts" in err and flags[0] in err
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--noise-multiplier", "1e-300", "--steps", "2"], "noise_multiplier"),
        (["train", "--steps", "100000000000000", "--noise-multiplier", "1"], "steps"),
        (["epsilon", "--noise-multiplier", "1e-300", "--sampling-rate", "0.01", "--steps", "10",
          "--delta", "1e-5"], "noise_multiplier"),
    ],
    ids=["tiny-sigma", "huge-steps", "epsilon-tiny-sigma"],
)  # fmt: skip
def test_inputs_that_used_to_crash_exit_2_with_the_parameter_named(capsys, argv, match):
    code, out, err = _run(capsys, *argv, *(["--no-progress"] if argv[0] == "train" else []))
    assert code == 2, (out, err)
    assert err.startswith("dpjax: error:") and match in err and "Traceback" not in err


def test_calibrate_with_a_large_delta_answers_instead_of_a_math_domain_error(capsys):
    code, out, err = _run(
        capsys, "calibrate", "--target-epsilon", "3", "--sampling-rate", "0.01", "--steps", "100",
        "--delta", "0.4", "--json",
    )  # fmt: skip
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out)["epsilon"] <= 3.0
