"""A >= 10M-parameter transformer, DP-SGD with ghost clipping and microbatch accumulation.

Issue 11, section 5: one logical step at a logical batch of >= 4096 examples,
cut into microbatches that `dpjax.accumulate_microbatches` runs one at a time
under `lax.scan`, each clipped in ONE backward pass by
`dpjax.ghost.ghost_clipped_grads`; the accumulated `ClippedSum` gets one noise
draw (`dpjax.noisy_mean`) and Adam. The baseline is the non-private step on the
same model, batch and microbatches (mean gradients accumulated the same way).

The model is the speed benchmark's transformer block (``speed.transformer_init``:
token + position embedding, pre-LN attention, MLP, mean-pooled head), every
parameter in a dpjax ghost layer, widened to >= 10M parameters.

Both steps are compiled first, then timed in alternation (non-private, DP,
non-private, DP, ...) in one process, so the machine's load hits both; reported
are the medians, the DP / non-private ratio, XLA's step memory (arguments +
outputs + temporaries) and the peak RSS of the process. The FLOP count of the
step (6 x params x tokens) gives each mode's useful GFLOP/s: the DP step's distance from the
non-private one is the distance from the floor the non-private rate sets on this machine.

Opacus's ghost clipping on the same model is compared only where torch and
opacus are installed (the ``torch`` extra); otherwise the JSON says so.

Usage::

  python benchmarks/big_model.py --quick     # a small model, < 1 min -> results/quick/
  python benchmarks/big_model.py             # results/big_model.json + .png
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import speed  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
FULL = {
    "spec": {"vocab": 1000, "seq_len": 16, "dim": 1024, "heads": 16, "num_classes": 10},
    "batch_size": 4096,
    "microbatch": 256,
    "repeats": 5,
}
QUICK = {
    "spec": {"vocab": 100, "seq_len": 8, "dim": 32, "heads": 4, "num_classes": 10},
    "batch_size": 64,
    "microbatch": 16,
    "repeats": 2,
}
DP = {"l2_norm": 1.0, "noise_multiplier": 1.0, "learning_rate": 1e-4}


def make_steps(spec: dict[str, Any], batch_size: int, microbatch: int):
    """``{mode: (step, tx)}`` for "non-private" and "dp-ghost"; ``step(params, state, x, y, mask)``."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    import dpjax
    from dpjax import ghost

    apply = functools.partial(speed.transformer_apply, heads=spec["heads"])
    k = batch_size // microbatch

    def losses(params, batch):
        x, y = batch
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y)

    adam = optax.adam(DP["learning_rate"])

    def non_private(params, state, x, y, mask):
        del mask
        split = jax.tree.map(lambda a: a.reshape((k, microbatch) + a.shape[1:]), (x, y))

        def body(acc, micro):
            g = jax.grad(lambda p: losses(p, micro).sum())(params)
            return jax.tree.map(jnp.add, acc, g), None

        total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), split)
        grads = jax.tree.map(lambda g: g / batch_size, total)
        updates, state = adam.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    clipper = dpjax.accumulate_microbatches(
        ghost.ghost_clipped_grads(losses, l2_norm=DP["l2_norm"]), microbatch_size=microbatch
    )
    tx = optax.chain(
        dpjax.noisy_mean(DP["noise_multiplier"], batch_size, key=jax.random.key(42)), adam
    )
    update = dpjax.private_update(clipper, tx)

    def dp_ghost(params, state, x, y, mask):
        return update(params, state, (x, y), mask)

    return {"non-private": (non_private, adam), "dp-ghost": (dp_ghost, tx)}


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, list):
            cost = cost[0]
        value = float(cost.get("flops", 0.0))
    except (AttributeError, NotImplementedError, TypeError, IndexError):
        return None
    return value if value > 0 else None


def run(plan: dict[str, Any]) -> dict[str, Any]:
    """Compiles both steps, then times them in alternation; returns the JSON record."""
    import jax
    import jax.numpy as jnp

    spec, b, m = plan["spec"], plan["batch_size"], plan["microbatch"]
    params = speed.transformer_init(jax.random.key(0), **spec)
    x, y = speed.jax_inputs("transformer", spec, b)
    mask = jnp.ones((b,), bool)
    n_params = speed.num_params(params)
    print(f"transformer: {n_params / 1e6:.2f}M parameters; batch {b} = {b // m} x {m}", flush=True)
    compiled, args, record = {}, {}, {}
    for mode, (step, tx) in make_steps(spec, b, m).items():
        jitted = jax.jit(step, donate_argnums=(0, 1))
        state = tx.init(params)
        start = time.perf_counter()
        compiled[mode] = jitted.lower(params, state, x, y, mask).compile()
        record[mode] = {
            "compile_s": time.perf_counter() - start,
            "xla_step_mb": speed._xla_step_mb(compiled[mode]),
            "xla_flops": _flops(compiled[mode]),
            "times_s": [],
        }
        args[mode] = [jax.tree.map(lambda a: a.copy(), params), state]
        out = compiled[mode](*args[mode], x, y, mask)  # warm-up step
        jax.block_until_ready(out)
        args[mode] = list(out)
        print(f"{mode}: compiled in {record[mode]['compile_s']:.1f} s", flush=True)
    speed.reset_peak_rss()
    for r in range(plan["repeats"]):
        for mode in compiled:  # alternate: the machine's load hits both
            start = time.perf_counter()
            out = compiled[mode](*args[mode], x, y, mask)
            jax.block_until_ready(out)
            record[mode]["times_s"].append(time.perf_counter() - start)
            args[mode] = list(out)
            print(f"repeat {r + 1}: {mode} {record[mode]['times_s'][-1]:.2f} s", flush=True)
    for mode in record:
        record[mode]["median_s"] = statistics.median(record[mode]["times_s"])
    base, dp = record["non-private"], record["dp-ghost"]
    tokens = b * spec["seq_len"]
    # The useful work of one logical step: forward + backward, ~6 FLOPs per parameter per token
    # (XLA's cost analysis counts a lax.scan body once, not once per microbatch).
    flops = 6.0 * n_params * tokens
    for mode in record:
        record[mode]["useful_gflops_per_s"] = flops / record[mode]["median_s"] / 1e9
    return {
        "parameters": n_params,
        "logical_batch": b,
        "microbatch": m,
        "tokens_per_step": tokens,
        "records": record,
        "dp_over_non_private_time": dp["median_s"] / base["median_s"],
        "dp_over_non_private_xla_memory": (
            dp["xla_step_mb"] / base["xla_step_mb"]
            if dp["xla_step_mb"] and base["xla_step_mb"]
            else None
        ),
        "useful_flops_per_step": flops,
        "flops_note": "6 x params x tokens; xla_flops is XLA's count with a scan body counted once",
        "peak_rss_mb": speed._rss_mb(),
    }


def _figure(report: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = report["result"]["records"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    modes = list(rec)
    axes[0].bar(modes, [rec[m]["median_s"] for m in modes], color=["#888", "#1f77b4"])
    axes[0].set_ylabel("seconds per logical step")
    axes[1].bar(modes, [rec[m]["xla_step_mb"] or 0 for m in modes], color=["#888", "#1f77b4"])
    axes[1].set_ylabel("XLA step memory (MiB)")
    r = report["result"]
    title = (
        f"{r['parameters'] / 1e6:.1f}M-param transformer, batch {r['logical_batch']} "
        f"(x{r['microbatch']}): DP/non-private {r['dp_over_non_private_time']:.2f}x"
    )
    common.save_figure(fig, path, title)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (smoke test)")
    parser.add_argument("--out", type=pathlib.Path, help="JSON path (default results/)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS) / "big_model.json"
    start = time.perf_counter()
    result = run(plan)
    torch_ok = importlib.util.find_spec("torch") and importlib.util.find_spec("opacus")
    report = {
        "benchmark": "big_model",
        "machine": common.machine_description(),
        "plan": plan,
        "dp": DP,
        "result": result,
        "opacus": (
            "not run by this script yet"
            if torch_ok
            else "torch/opacus not installed (the torch extra): no Opacus ghost comparison"
        ),
        "wall_seconds": time.perf_counter() - start,
    }
    common.write_json(out, report)
    try:
        _figure(report, out.with_suffix(".png"))
    except ImportError:  # matplotlib is in the bench extra only
        print("matplotlib missing: no PNG", flush=True)
    print(
        f"DP / non-private: {result['dp_over_non_private_time']:.2f}x time, "
        f"{result['dp_over_non_private_xla_memory'] or float('nan'):.2f}x XLA memory; wrote {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
