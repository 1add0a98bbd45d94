"""How a dpjax DP-SGD step scales with batch size and with parameter count.

Two sweeps, each comparing ``dpjax / dp_sgd`` (per-example gradients of the
whole batch -> ``dpjax.dp_sgd(optax.adam)``) and ``dpjax / ghost`` (book-keeping
ghost clipping, one backward pass) with ``dpjax / non-private`` (``jax.grad`` of
the mean loss + ``optax.adam``):

* batch size, for the standard DP CNN (28x28x1);
* parameter count, for an MLP with two tanh hidden layers of width w, at a
  fixed batch size.

Timing and memory follow ``benchmarks/speed.py`` (one fresh subprocess per
configuration, median over the timed steps, ``ru_maxrss`` for the peak RSS,
the accelerator peak on a GPU); see its docstring.

Usage::

  python benchmarks/scaling.py --quick   # under ~2 minutes on 2 CPU cores
  python benchmarks/scaling.py           # wider sweeps
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
import speed  # noqa: E402  (benchmarks/speed.py: the workers and their timing)

MODES = ("non-private", "dp_sgd", "ghost")
QUICK = {
    "steps": 20,
    "warmup": 3,
    "batch_sizes": (16, 64, 256),
    "widths": (64, 256, 1024),
    "width_batch": 64,
}
FULL = {
    "steps": 30,
    "warmup": 5,
    "batch_sizes": (16, 32, 64, 128, 256, 512, 1024),
    "widths": (32, 128, 512, 1024, 2048),
    "width_batch": 128,
}


def mlp_params(width: int, input_size: int = 28 * 28, num_classes: int = 10) -> int:
    """Parameter count of the two-hidden-layer MLP of the width sweep."""
    return (input_size + 1) * width + (width + 1) * width + (width + 1) * num_classes


def sweep(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Runs both sweeps, one subprocess per (sweep point, mode); returns the records."""
    script = HERE / "speed.py"
    points = [("batch_size", "cnn", b, None) for b in plan["batch_sizes"]]
    points += [("width", "mlp", plan["width_batch"], w) for w in plan["widths"]]
    records = []
    for axis, model, b, width in points:
        for mode in MODES:
            if mode == "ghost" and model not in speed.GHOST_MODELS:
                continue
            cfg = {
                "framework": "dpjax",
                "mode": mode,
                "model": model,
                "batch_size": b,
                "steps": plan["steps"],
                "warmup": plan["warmup"],
            }
            if width is not None:
                cfg["spec"] = {"hidden": [width, width]}
            rec = {"sweep": axis, "width": width, **speed.run_in_subprocess(cfg, script)}
            records.append(rec)
            print(
                f"  {axis}: {model} B={b} w={width} {mode}: "
                f"{rec.get('median_ms', float('nan')):.2f} ms {rec.get('error', '')}",
                flush=True,
            )
    speed.add_ratios(records, key=("sweep", "model", "batch_size", "width"))
    return records


def plot(records: list[dict[str, Any]], path: pathlib.Path) -> None:
    """2x2 panels: ms/step and peak RSS against batch size and against parameter count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for col, (axis, xkey, xlabel) in enumerate(
        (
            ("batch_size", "batch_size", "batch size (DP CNN)"),
            ("width", "num_params", "parameters (MLP)"),
        )
    ):
        for mode, style in zip(MODES, ("o--", "s-", "^-"), strict=True):
            rs = sorted(
                (
                    r
                    for r in records
                    if r["sweep"] == axis and r["mode"] == mode and "median_ms" in r
                ),
                key=lambda r: r[xkey],
            )
            xs = [r[xkey] for r in rs]
            axes[0, col].plot(xs, [r["median_ms"] for r in rs], style, label=mode)
            axes[1, col].plot(xs, [r["peak_rss_mb"] for r in rs], style, label=mode)
        for row, ylabel in enumerate(("median ms / step", "peak RSS (MB)")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_yscale("log" if row == 0 else "linear")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3, which="both")
    common.save_figure(fig, path, "dpjax DP-SGD step vs non-private step", dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 batch sizes, 3 widths, 20 steps")
    parser.add_argument("--json-out", type=pathlib.Path, default=HERE / "results" / "scaling.json")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    records = sweep(plan)
    payload = {
        "benchmark": "scaling",
        "quick": args.quick,
        "machine": common.machine_description(),
        "dp": speed.DP,
        "plan": plan,
        "memory_method": speed.MEMORY_METHOD,
        "timing_method": speed.TIMING_METHOD,
        "records": records,
        "wall_s": time.perf_counter() - t_start,
    }
    common.write_json(args.json_out, payload)
    plot(records, args.json_out.with_suffix(".png"))
    print(
        f"{'sweep':10} {'model':5} {'B':>5} {'params':>9} {'mode':12} {'median ms':>10} "
        f"{'x np':>6} {'peak MB':>8} {'mem x np':>8}"
    )
    for r in records:
        if "median_ms" not in r:
            print(
                f"{r['sweep']:10} {r['model']:5} {r['batch_size']:>5} {r['mode']:12} "
                f"{r.get('error')}"
            )
            continue
        print(
            f"{r['sweep']:10} {r['model']:5} {r['batch_size']:>5} {r['num_params']:>9} "
            f"{r['mode']:12} "
            f"{r['median_ms']:>10.2f} {r.get('ms_ratio_vs_nonprivate', float('nan')):>6.2f} "
            f"{r['peak_rss_mb']:>8.0f} {r.get('mem_ratio_vs_nonprivate', float('nan')):>8.2f}"
        )
    print(
        f"wrote {args.json_out} and {args.json_out.with_suffix('.png')} "
        f"in {payload['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
