"""Data-parallel DP-SGD against the device count: throughput, DP/non-private, all-reduce share.

For each device count D (1, 2, 4, ... up to the devices present) and each model,
the same global batch is sharded over a `data_mesh` of D devices and three steps
are timed side by side, in alternation, in one process:

* ``non-private``: `jax.grad` of the mean loss, Adam (XLA partitions it over the
  sharded batch and all-reduces the gradient);
* ``dp``: `dpjax.distributed.data_parallel(ghost_clipped_grads)` (each device
  clips its rows, `psum` of the clipped sums), then ONE noise draw
  (`dpjax.noisy_mean`) and Adam: the step dpjax trains with;
* ``dp-local``: the same per-device work with the `psum` replaced by a local
  sum (a wrong result, timed only): ``1 - t(dp-local) / t(dp)`` estimates the
  share of the DP step spent in the all-reduce.

Reported: examples per second, the DP/non-private ratio, the all-reduce share,
and XLA's step memory. On CPU the D "devices" are
`--xla_force_host_platform_device_count` partitions of the same cores, so each
device count runs in its own subprocess and throughput cannot grow with D there:
the CPU rows check that the script runs and show the overhead of sharding. On a
GPU or TPU host the devices are real and the script runs unchanged.

Usage::

  python benchmarks/multidevice.py --quick        # tiny, < 1 min -> results/quick/
  python benchmarks/multidevice.py                # results/multidevice.json + .png
  python benchmarks/multidevice.py --devices 1 2 4 8 --models cnn --batch-size 1024
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any

import common
import speed

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "multidevice.json"
QUICK_JSON = HERE / "results" / "quick" / "multidevice.json"
MODES = ("non-private", "dp", "dp-local")
SPECS = speed.SPECS  # the models of benchmarks/speed.py
TINY = {
    "mlp": {"input_shape": (28, 28, 1), "num_classes": 10, "hidden": (8,)},
    "cnn": {"input_shape": (28, 28, 1), "num_classes": 10},
    "transformer": {"vocab": 50, "seq_len": 4, "dim": 8, "heads": 2, "num_classes": 3},
}


def _steps(apply, batch_size: int, mesh):
    """``{mode: step(params, state, x, y, mask) -> (params, state)}`` on `mesh`."""
    import jax
    import optax

    import dpjax
    import dpjax.distributed as dd
    from dpjax import ghost

    c, sigma, lr = speed.DP["l2_norm"], speed.DP["noise_multiplier"], speed.DP["learning_rate"]

    def losses(params, batch):
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, batch[0]), batch[1])

    clipper = ghost.ghost_clipped_grads(losses, l2_norm=c)
    key = jax.random.key(42)
    dp_tx = optax.chain(dpjax.noisy_mean(sigma, batch_size, key=key), optax.adam(lr))
    dp = dpjax.private_update(dd.data_parallel(clipper, mesh), dp_tx)

    def local_only(params, batch, mask):  # the same per-device work, no all-reduce (timing only)
        from jax.sharding import PartitionSpec as P

        def body(p, b, m):
            clipped = clipper(p, b, m)
            return jax.tree.map(lambda v: v[None], (clipped.sum, clipped.stats))

        summed, stats = jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(), P("data"), P("data")),
            out_specs=P("data"),
            check_vma=False,
        )(params, batch, mask)
        first = lambda v: v[0]  # noqa: E731 (device 0's sum: a wrong value, timed only)
        return dpjax.ClippedSum(jax.tree.map(first, summed), jax.tree.map(first, stats), c)

    local = dpjax.private_update(local_only, dp_tx)
    np_tx = optax.adam(lr)

    def non_private(params, state, x, y, mask):
        del mask
        loss = lambda p: losses(p, (x, y)).mean()  # noqa: E731
        updates, state = np_tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    return {
        "non-private": (non_private, np_tx),
        "dp": (lambda p, s, x, y, m: dp(p, s, (x, y), m), dp_tx),
        "dp-local": (lambda p, s, x, y, m: local(p, s, (x, y), m), dp_tx),
    }


def run_device_count(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every model at one device count, in this process; returns one record per (model, mode)."""
    import jax
    import jax.numpy as jnp

    import dpjax.distributed as dd

    devices = jax.devices()[: cfg["devices"]]
    if len(devices) < cfg["devices"]:
        raise SystemExit(f"asked for {cfg['devices']} devices, found {len(jax.devices())}")
    mesh = dd.data_mesh(devices)
    records = []
    for model in cfg["models"]:
        spec = (TINY if cfg["quick"] else SPECS)[model]
        apply, params = speed.jax_model(model, spec)
        x, y = speed.jax_inputs(model, spec, cfg["batch_size"])
        (x, y), mask = dd.shard_batch((x, y), jnp.ones(cfg["batch_size"], bool), mesh)
        steps = _steps(apply, cfg["batch_size"], mesh)
        compiled, times, mem = {}, {m: [] for m in MODES}, {}
        for mode, (step, tx) in steps.items():
            args = (dd.replicate(params, mesh), dd.replicate(tx.init(params), mesh), x, y, mask)
            jitted = jax.jit(step)
            compiled[mode] = (jitted.lower(*args).compile(), list(args))
            mem[mode] = speed._xla_step_mb(compiled[mode][0])
            for _ in range(cfg["warmup"]):
                jax.block_until_ready(compiled[mode][0](*compiled[mode][1]))
        for _ in range(cfg["steps"]):  # alternate the contenders
            for mode in MODES:
                fn, args = compiled[mode]
                t0 = time.perf_counter()
                out = fn(*args)
                jax.block_until_ready(out)
                times[mode].append(time.perf_counter() - t0)
                args[0], args[1] = out
        for mode in MODES:
            s = common.summarize(times[mode])
            records.append(
                {
                    "model": model,
                    "mode": mode,
                    "devices": cfg["devices"],
                    "platform": devices[0].platform,
                    "batch_size": cfg["batch_size"],
                    "median_s": s["median_s"],
                    "examples_per_s": cfg["batch_size"] / s["median_s"],
                    "xla_step_mb": mem[mode],
                    "times_s": times[mode],
                }
            )
    return records


def _subprocess(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={cfg['devices']}")
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"worker for {cfg['devices']} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, devices): DP/non-private time, all-reduce share, memory ratio, speed-up."""
    rows = []
    keys = sorted({(r["model"], r["devices"]) for r in records})
    by = {(r["model"], r["devices"], r["mode"]): r for r in records}
    for model, d in keys:
        dp, npv, loc = (by[(model, d, m)] for m in ("dp", "non-private", "dp-local"))
        one = by.get((model, 1, "dp"))
        rows.append(
            {
                "model": model,
                "devices": d,
                "dp_over_non_private": dp["median_s"] / npv["median_s"],
                "allreduce_share_estimate": max(0.0, 1.0 - loc["median_s"] / dp["median_s"]),
                "dp_memory_over_non_private": (
                    dp["xla_step_mb"] / npv["xla_step_mb"]
                    if dp["xla_step_mb"] and npv["xla_step_mb"]
                    else None
                ),
                "dp_speedup_vs_one_device": one["median_s"] / dp["median_s"] if one else None,
            }
        )
    return rows


def plot(records: list[dict[str, Any]], ratios: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for model in sorted({r["model"] for r in records}):
        for mode, style in (("dp", "-o"), ("non-private", "--s")):
            rs = sorted(
                (r for r in records if r["model"] == model and r["mode"] == mode),
                key=lambda r: r["devices"],
            )
            ax1.plot(
                [r["devices"] for r in rs],
                [r["examples_per_s"] for r in rs],
                style,
                label=f"{model} {mode}",
            )
        rr = sorted((r for r in ratios if r["model"] == model), key=lambda r: r["devices"])
        ax2.plot(
            [r["devices"] for r in rr],
            [r["dp_over_non_private"] for r in rr],
            "-o",
            label=f"{model}: DP / non-private",
        )
        ax2.plot(
            [r["devices"] for r in rr],
            [r["allreduce_share_estimate"] for r in rr],
            ":x",
            label=f"{model}: all-reduce share (est.)",
        )
    ax1.set(xlabel="devices", ylabel="examples / s", xscale="log", yscale="log")
    ax2.axhline(1.1, color="grey", lw=0.8, ls="--")
    ax2.set(xlabel="devices", ylabel="ratio", xscale="log")
    for ax in (ax1, ax2):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    platform = records[0]["platform"] if records else "?"
    common.save_figure(fig, path, f"dpjax data-parallel DP-SGD ({platform})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--devices", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", choices=sorted(TINY), default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--json-out", type=pathlib.Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # a subprocess with its own device count (CPU)
        print(json.dumps(run_device_count(json.loads(args.worker))))
        return
    import jax

    platform = jax.devices()[0].platform
    present = jax.device_count()
    counts = args.devices or (
        [1, 2, 4] if platform == "cpu" else [d for d in (1, 2, 4, 8, 16) if d <= present]
    )
    cfg = {
        "quick": args.quick,
        "models": args.models or (["mlp"] if args.quick else ["mlp", "cnn"]),
        "batch_size": args.batch_size or (32 if args.quick else 1024),
        "steps": args.steps or (3 if args.quick else 10),
        "warmup": 1 if args.quick else 2,
    }
    records = []
    for d in counts:
        print(f"{d} device(s) ...", flush=True)
        one = cfg | {"devices": d}
        records += _subprocess(one) if platform == "cpu" else run_device_count(one)
    ratios = add_ratios(records)
    for r in ratios:
        print(
            f"{r['model']:12s} D={r['devices']:2d}  DP/non-private {r['dp_over_non_private']:.2f}x"
            f"  all-reduce share ~{r['allreduce_share_estimate']:.0%}"
            + (
                f"  speed-up {r['dp_speedup_vs_one_device']:.2f}x"
                if r["dp_speedup_vs_one_device"]
                else ""
            )
        )
    out = args.json_out or (QUICK_JSON if args.quick else DEFAULT_JSON)
    payload = {
        "benchmark": "multidevice",
        "description": __doc__.split("\n")[0],
        "platform": platform,
        "cpu_note": "on CPU the devices are partitions of the same cores "
        "(--xla_force_host_platform_device_count): throughput cannot scale with D"
        if platform == "cpu"
        else None,
        "config": cfg | {"device_counts": counts},
        "machine": common.machine_description(),
        "ratios": ratios,
        "records": records,
    }
    common.write_json(out, payload)
    plot(records, ratios, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
