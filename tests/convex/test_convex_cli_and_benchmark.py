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
