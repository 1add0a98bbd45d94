"""Smoke tests of the benchmarks (tiny shapes): speed.py, scaling.py, accounting.py, strategies.py."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import math
import pathlib
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dpjax
from dpjax import ghost

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
speed = importlib.import_module("speed")
scaling = importlib.import_module("scaling")
accounting = importlib.import_module("accounting")
strategies = importlib.import_module("strategies")
multidevice = importlib.import_module("multidevice")

TINY = {
    "mlp": {"input_shape": (28, 28, 1), "num_classes": 10, "hidden": (8,)},
    "transformer": {"vocab": 50, "seq_len": 4, "dim": 8, "heads": 2, "num_classes": 3},
}


CASES = [(*fm, "mlp") for fm in speed.JAX_MODES] + [("dpjax", "ghost", "transformer")]


@pytest.mark.parametrize(("framework", "mode", "model"), CASES)
def test_jax_step_runs_jitted_and_changes_params(framework, mode, model):
    spec = TINY[model]
    apply, params = speed.jax_model(model, spec)
    x, y = speed.jax_inputs(model, spec, 8)
    step, tx = speed.make_jax_step(framework, mode, apply, 8, microbatch=4)
    _, times, (new_params, _), step_mb, flops, _ = speed.time_compiled(
        step, (params, tx.init(params), x, y, jnp.ones(8, bool)), steps=2, warmup=0, carry=True
    )
    assert len(times) == 2 and all(t > 0 for t in times)
    assert step_mb is not None and step_mb > 0
    # At least the forward matmuls and the weight gradients of the batch: 2 * 2 * B * weights.
    weights = sum(v.size for v in jax.tree.leaves(params) if jnp.ndim(v) == 2)
    assert flops is not None and flops >= 4 * 8 * weights, (flops, weights)
    moved = jax.tree.map(lambda a, b: jnp.any(a != b), params, new_params)
    assert any(jax.tree.leaves(moved))
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(new_params))


def test_dp_paths_take_the_same_step_from_the_same_noise_key():
    # dp_sgd (optax form), microbatch and ghost (private_update) clip to the same sum and
    # draw the same noise (same key, same count): one mechanism, three clippers.
    spec = TINY["mlp"]
    apply, params = speed.jax_model("mlp", spec)
    x, y = speed.jax_inputs("mlp", spec, 8)
    mask = jnp.ones(8, bool)
    new = {}
    for mode in ("dp_sgd", "microbatch", "ghost"):
        step, tx = speed.make_jax_step("dpjax", mode, apply, 8, microbatch=4)
        new[mode], _ = jax.jit(step)(params, tx.init(params), x, y, mask)
    for mode in ("microbatch", "ghost"):
        for a, b in zip(jax.tree.leaves(new[mode]), jax.tree.leaves(new["dp_sgd"]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)


def test_transformer_is_per_example_independent():
    spec = TINY["transformer"]
    apply, params = speed.jax_model("transformer", spec)
    x, _ = speed.jax_inputs("transformer", spec, 4)
    full = apply(params, x)
    one = apply(params, x[1:2])
    assert full.shape == (4, 3)
    assert jnp.allclose(full[1], one[0], atol=1e-5)


def test_transformer_ghost_clipping_equals_vmap_clipping():
    spec = TINY["transformer"]
    apply, params = speed.jax_model("transformer", spec)
    x, y = speed.jax_inputs("transformer", spec, 6)

    def losses(p, batch):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, batch[0]), batch[1])

    def one(p, example):
        return losses(p, (example[0][None], example[1][None]))[0]

    real = jnp.ones(6, bool)
    got = jax.jit(ghost.ghost_clipped_grads(losses, l2_norm=0.01))(params, (x, y), real).sum
    want = jax.jit(
        lambda p, b: dpjax.clip_and_sum(dpjax.per_example_grads(one)(p, b), 0.01, real).sum
    )(params, (x, y))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_xla_flops_count_a_matmul_exactly_and_floors_follow():
    a, b = jnp.ones((32, 64)), jnp.ones((64, 16))
    compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    assert speed._xla_flops(compiled) == 2 * 32 * 64 * 16
    assert speed._xla_loops(compiled) == 0
    scan = jax.jit(lambda x: jax.lax.scan(lambda c, m: (c + m @ m, None), x[0], x)[0])
    assert speed._xla_loops(scan.lower(jnp.ones((3, 8, 8))).compile()) == 1
    recs = [
        {"framework": "dpjax", "mode": "ghost", "xla_flops": 4e9, "median_ms": 20.0},
        {"framework": "dpjax", "mode": "non-private", "xla_flops": None, "median_ms": 5.0},
    ]
    speed.add_floors(recs, peak_gflops=400.0)
    assert recs[0]["floor_ms"] == pytest.approx(10.0) and recs[0]["floor_fraction"] == 0.5
    assert "floor_ms" not in recs[1]


def test_peak_rate_is_measured():
    rec = speed.run_peak({"sizes": [64], "steps": 2})
    assert rec["peak_gflops"] > 0 and rec["rows"][0]["n"] == 64


def test_ratios_use_the_same_family_baseline():
    recs = [
        {"framework": "dpjax", "mode": "non-private", "model": "m", "batch_size": 4,
         "median_ms": 2.0, "peak_rss_mb": 100.0},
        {"framework": "optax", "mode": "contrib_dp", "model": "m", "batch_size": 4,
         "median_ms": 6.0, "peak_rss_mb": 150.0},
        {"framework": "opacus", "mode": "hooks", "model": "m", "batch_size": 4,
         "median_ms": 9.0, "peak_rss_mb": 300.0},
        {"framework": "pytorch", "mode": "non-private", "model": "m", "batch_size": 4,
         "median_ms": 3.0, "peak_rss_mb": 200.0},
        {"framework": "dpjax", "mode": "dp_sgd", "model": "m", "batch_size": 4,
         "median_ms": 4.5, "peak_rss_mb": 120.0},
    ]  # fmt: skip
    speed.add_ratios(recs)
    assert recs[1]["ms_ratio_vs_nonprivate"] == 3.0
    assert recs[2]["ms_ratio_vs_nonprivate"] == 3.0
    assert recs[2]["mem_ratio_vs_nonprivate"] == 1.5
    [row] = speed.dpjax_vs_opacus(recs)
    assert row["dpjax_best"] == "dp_sgd" and row["ms_ratio_dpjax_over_opacus"] == 0.5


def test_scaling_param_count_formula_matches_the_model():
    _, params = speed.jax_model("mlp", {**TINY["mlp"], "hidden": (16, 16)})
    assert speed.num_params(params) == scaling.mlp_params(16)


def test_torch_models_have_the_jax_param_counts():
    pytest.importorskip("torch")
    import _torch_baselines

    for model, spec in {**speed.SPECS, **TINY}.items():
        _, params = speed.jax_model(model, spec)
        net = _torch_baselines._build_model(model, spec)
        assert sum(p.numel() for p in net.parameters()) == speed.num_params(params), model


def test_noise_sampler_record_times_both_samplers():
    rec = speed.run_noise_sampler({"sizes": [1000], "steps": 2})
    [row] = rec["rows"]
    assert row["coordinates"] == 1000 and row["calls_timed"] == 2
    assert row["jax_random_normal_median_ms"] > 0 and row["dpjax_median_ms"] > 0
    assert (
        row["ratio_dpjax_over_normal"]
        == row["dpjax_median_ms"] / row["jax_random_normal_median_ms"]
    )


def test_accounting_worker_answers_cold_queries_and_calibrations():
    eps = dpjax.compute_epsilon(accounting.SIGMA, 20, accounting.Q, accounting.DELTA)
    query, calibration = accounting.worker(
        [
            {"kind": "query", "accountant": "pld", "steps": 20},
            {"kind": "calibrate", "accountant": "rdp", "steps": 20, "target": eps},
        ]
    )
    assert query["value"] == eps and query["seconds"] > 0
    rdp_eps = dpjax.compute_epsilon(
        calibration["value"], 20, accounting.Q, accounting.DELTA, accountant="rdp"
    )
    assert 0.98 * eps <= rdp_eps <= eps


def _private_dpjax_names(path: pathlib.Path) -> list[str]:
    """Every `dpjax._x` a file imports or reads as an attribute (ARCHITECTURE.md rule 5)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("dpjax.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dpjax"):
            found += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in ("dpjax", "ghost", "models", "data", "training"):
                found.append(f"{node.value.id}.{node.attr}")

    def private(part: str) -> bool:
        return part.startswith("_") and not part.startswith("__")  # dunders are public

    return sorted({name for name in found if any(private(p) for p in name.split(".")[1:])})


def test_benchmarks_use_only_public_dpjax_names():
    scripts = sorted(BENCH.glob("*.py"))
    assert {p.name for p in scripts} >= {"speed.py", "accounting.py", "utility.py"}
    offenders = {p.name: _private_dpjax_names(p) for p in scripts}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_private_name_check_catches_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from dpjax import _noise\nimport dpjax\ndpjax._accounting._clear_cache()\n"
        "print(dpjax.__version__)\n"
    )
    assert _private_dpjax_names(bad) == ["dpjax._accounting", "dpjax._noise"]


def test_quick_plans_are_small():
    assert (
        math.prod((len(speed.QUICK["grid"]), len(speed.JAX_MODES) + len(speed.TORCH_MODES))) <= 28
    )
    assert speed.QUICK["steps"] >= 20 and scaling.QUICK["steps"] >= 20


def test_strategies_quick_plan_is_small_and_the_full_plan_is_the_issues():
    a, b = strategies.QUICK_LINEAR, strategies.QUICK_CNN
    assert a.features * a.batch_size * a.steps <= 10**6 and a.seeds == 1 and len(a.lrs) == 1
    assert a.train_size is not None and a.train_size <= 5000
    assert b.steps is not None and b.steps <= 5 and b.seeds == 1 and b.subsample <= 1000
    assert not b.singles and b.combine == "all"  # two runs: dense and every lever together
    assert strategies.QUICK_JSON.parent.name == "quick"  # never the published results
    full = strategies.LinearPlan()
    assert full.features >= 10_000 and full.epsilon == 1.0 and full.seeds == 3
    assert set(full.sources) == {"ema", "warmup", "random"} and len(full.fractions) >= 4
    assert strategies.CnnPlan().epsilons == (1.0, 3.0)
    assert "strategies" in importlib.import_module("run_all").BENCHMARKS


def test_strategies_linear_methods_train_within_the_budget():
    rng = np.random.default_rng(0)

    def split(n):
        return SimpleNamespace(
            x=rng.uniform(size=(n, 28, 28, 1)).astype(np.float32),
            y=rng.integers(0, 10, n).astype(np.int32),
        )

    data = SimpleNamespace(train=split(256), validation=split(16), test=split(16))
    plan = dataclasses.replace(
        strategies.QUICK_LINEAR, features=32, batch_size=32, steps=3, train_size=None
    )
    case = strategies.LinearCase(plan, data)
    for method in strategies.linear_methods(plan):
        rec = case._train(method, lr=0.1, seed=0)
        assert rec["finite_params"], method
        assert 0.0 <= rec["test_accuracy"] <= 1.0
        if method.kind == "not-private":
            assert rec["epsilon"] is None
        else:
            assert 0.5 * plan.epsilon < rec["epsilon"] <= plan.epsilon, method


def test_multidevice_times_the_three_steps_and_the_dp_step_is_dpjaxs():
    cfg = {"quick": True, "models": ["mlp"], "batch_size": 8, "steps": 1, "warmup": 0}
    records = multidevice.run_device_count(cfg | {"devices": 1})
    assert sorted(r["mode"] for r in records) == sorted(multidevice.MODES)
    assert all(r["median_s"] > 0 and r["devices"] == 1 for r in records)
    (ratio,) = multidevice.add_ratios(records)
    assert ratio["dp_over_non_private"] > 0 and 0.0 <= ratio["allreduce_share_estimate"] < 1.0
    assert ratio["dp_speedup_vs_one_device"] == 1.0


def test_big_model_quick_times_ghost_accumulation_against_non_private(tmp_path):
    big_model = importlib.import_module("big_model")
    out = tmp_path / "big_model.json"
    assert big_model.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    result = report["result"]
    assert result["logical_batch"] == 4 * result["microbatch"]
    for mode in ("non-private", "dp-ghost"):
        assert len(result["records"][mode]["times_s"]) == big_model.QUICK["repeats"]
    assert result["dp_over_non_private_time"] > 0
