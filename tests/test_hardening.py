"""Smoke test of benchmarks/long_run.py (tiny plan): RSS samples against steps, a safe log."""

import importlib
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
long_run = importlib.import_module("long_run")


@pytest.mark.standard_promotion  # the trainer runs adam (int32 step count promoted implicitly)
def test_long_run_samples_rss_against_steps_and_checks_the_log():
    record = long_run.run(steps=20, eval_every=5, checkpoint_every=10, sample_s=0.05)
    assert record["steps"] == 20 and record["samples"][-1]["step"] == 20
    assert all(s["rss_mb"] > 0 for s in record["samples"])
    assert record["log"] == {
        "lines": 4,
        "all_json": True,
        "steps_increasing": True,
        "last_step": 20,
    }


def test_growth_is_the_slope_over_the_second_half_per_10k_steps():
    samples = [{"step": s, "rss_mb": 100.0 + 0.001 * s} for s in range(0, 10_001, 1000)]
    assert abs(long_run.growth_mb_per_10k(samples) - 10.0) < 1e-9
    flat = [{"step": s, "rss_mb": 100.0} for s in range(0, 10_001, 1000)]
    assert long_run.growth_mb_per_10k(flat) == 0.0
