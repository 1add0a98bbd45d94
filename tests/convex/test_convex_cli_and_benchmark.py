"""The ``dpjax convex`` subcommand and a smoke run of benchmarks/convex.py on tiny data."""

import importlib
import json
import pathlib
import sys

import numpy as np
import pytest

from dpjax.data import Dataset, Split
from dpjax.training._cli import main

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _tiny(seed=0, n=24, f=2, k=3):
    rng = np.random.default_rng(seed)

    def split(m):
        y = rng.integers(0, k, size=m).astype(np.int32)
        x = (rng.normal(size=(m, f)) + y[:, None]).astype(np.float32)
        return Split(x, y)

    return Dataset("tiny", split(n), split(12), split(12), num_classes=k)


def test_cli_refuses_bad_input(capsys):
    assert main(["convex", "--model", "nope"]) == 2
    assert "dpjax: error: --model 'nope'" in capsys.readouterr().err
    assert main(["convex", "--dataset", "nope"]) == 2
    assert main(["convex", "--mechanism", "nope", "--target-epsilon", "1"]) == 2


@pytest.mark.slow
def test_cli_trains_on_digits_and_prints_json(capsys):
    assert main(["convex", "--dataset", "digits", "--target-epsilon", "1", "--l2-reg", "0.1",
                 "--data-norm", "2", "--seed", "0", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["epsilon"] <= 1.0 and 0.0 <= summary["test_accuracy"] <= 1.0
    (record,) = summary["records"]
    assert record["kind"] == "gaussian" and record["count"] == 1
    assert record["noise_multiplier"] == pytest.approx(3.73, rel=0.01)


def test_benchmark_runs_each_mechanism_on_tiny_data():
    sys.path.insert(0, str(BENCH))
    convex = importlib.import_module("convex")
    points = convex.run_convex(
        _tiny(), "tiny", [1.0], range(2), {"l2_reg": [0.1], "data_norm": [2.0]}, range(1)
    )
    assert len(points) == len(convex.MECHANISMS)
    for p in points:
        assert max(p["epsilon_spent_per_seed"]) <= 1.0
        assert 0.0 <= p["test_accuracy_mean"] <= 1.0
    goals = convex.goals(points)
    assert goals["digits_eps1_ge_90"]["met"] is False  # no digits point: not met, never claimed


def test_benchmark_private_mean_is_recorded_first_and_composes_within_epsilon():
    sys.path.insert(0, str(BENCH))
    convex = importlib.import_module("convex")
    gaussian = {k: v for k, v in convex.MECHANISMS.items() if v[:3] == (
        "multinomial", "output-perturbation", "gaussian")}  # fmt: skip
    grid = {"l2_reg": [0.1], "data_norm": [2.0], "centre": ["private-mean(ratio=2)"]}
    points = convex.run_convex(_tiny(), "tiny", [1.0], range(2), grid, range(1), gaussian)
    assert len(points) == 2
    for p in points:
        assert [r["kind"] for r in p["records"]] == ["gaussian", "gaussian"]  # mean, then output
        mean_sigma, out_sigma = (r["noise_multiplier"] for r in p["records"])
        assert mean_sigma == pytest.approx(2 * out_sigma, rel=1e-3)  # out: private_fit calibrates
        assert max(p["epsilon_spent_per_seed"]) <= 1.0
    assert {p["neighbours"] for p in points} == {"add-remove", "replace-one"}
    assert points[0]["normalizer"] == 24 and "L / (N lambda)" in points[0]["sensitivity_rule"]
