"""Smoke test of benchmarks/federated.py: a tiny run, the goal check, and the quick plan's size."""

import dataclasses
import importlib.util
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # for its `common` import
_spec = importlib.util.spec_from_file_location("bench_federated", ROOT / "benchmarks/federated.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_federated"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)


def test_a_tiny_central_run_reports_accuracy_and_user_level_epsilon():
    from dpjax.federated import federated_data

    plan = dataclasses.replace(bench.QUICK, users=20, clients_per_round=5, rounds=2, eval_every=1)
    fed = federated_data("digits", num_users=plan.users, seed=0)
    run = bench.run_one(plan, fed, "central", 3.0, seed=0)
    assert run["epsilon_spent"] <= 3.0 and len(run["epsilon_after_each_round"]) == 2
    assert 0.0 <= run["final_test_accuracy"] <= 1.0 and len(run["curve"]) == 2


def test_the_goal_is_checked_against_the_not_private_baseline():
    runs = [
        {"mode": bench.NOT_PRIVATE, "target_epsilon": None, "final_test_accuracy": 0.80},
        {"mode": "central", "target_epsilon": 3.0, "final_test_accuracy": 0.74},
    ]
    goal = bench.summarize(runs)["goal_central_eps3_within_5_points"]
    assert not goal["met"] and abs(goal["gap_points"] - 6.0) < 1e-9


def test_quick_plan_is_small_and_writes_under_quick():
    q = bench.QUICK
    assert q.users * q.rounds * q.seeds <= 500 and q.dataset == "digits"
    assert bench.QUICK_JSON.parent.name == "quick"
    full = bench.Plan()
    assert full.users == 1000 and full.epsilons == (1.0, 3.0, 8.0) and full.seeds == 3
