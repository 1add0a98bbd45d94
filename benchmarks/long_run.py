"""Long runs: the trainer's resident memory (RSS) against steps, and its log appended safely.

One private run of a tiny model (logistic regression on digits) through the public
trainer, `dpjax.training.train`, with a JSON-lines log and a checkpoint written every
`--checkpoint-every` steps. A thread samples the process's RSS (psutil) every
`--sample-seconds` and reads the last step the log reports, so the curve is RSS
against steps without touching the trainer. Memory is "flat" when the growth over the
second half of the run, per 10**4 steps, is below `--flat-mb-per-10k-steps`.

Usage::

  nice -n 5 python benchmarks/long_run.py                # 10**5 steps (state the count used)
  nice -n 5 python benchmarks/long_run.py --quick        # 600 steps, < 1 min

Writes benchmarks/results/long_run.json and .png (quick: benchmarks/results/quick/).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import threading
import time
from typing import Any

import common

HERE = pathlib.Path(__file__).resolve().parent
FULL_STEPS = 100_000


def _last_step(log: pathlib.Path) -> int:
    """The step of the log's last complete line (0 before the first evaluation)."""
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def check_log(log: pathlib.Path) -> dict[str, Any]:
    """Every line of the log is one JSON object, steps strictly increasing."""
    lines = log.read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    ok = all(a < b for a, b in zip(steps, steps[1:], strict=False))
    return {"lines": len(lines), "all_json": True, "steps_increasing": ok, "last_step": steps[-1]}


def growth_mb_per_10k(samples: list[dict[str, float]]) -> float | None:
    """Least-squares slope of RSS against steps over the second half of the run, per 10**4 steps."""
    last = max((s["step"] for s in samples), default=0)
    tail = [s for s in samples if s["step"] >= last / 2]
    if len(tail) < 3 or tail[-1]["step"] == tail[0]["step"]:
        return None
    n = len(tail)
    mx = sum(s["step"] for s in tail) / n
    my = sum(s["rss_mb"] for s in tail) / n
    sxx = sum((s["step"] - mx) ** 2 for s in tail)
    sxy = sum((s["step"] - mx) * (s["rss_mb"] - my) for s in tail)
    return 1e4 * sxy / sxx


def run(
    steps: int, eval_every: int, checkpoint_every: int, sample_s: float, accountant: str = "pld"
) -> dict[str, Any]:
    import psutil

    import dpjax.training

    proc = psutil.Process()
    samples: list[dict[str, float]] = []
    done = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        log = pathlib.Path(tmp) / "log.jsonl"
        ckpt = pathlib.Path(tmp) / "run.npz"
        start = time.perf_counter()

        def sample() -> None:
            while not done.wait(sample_s):
                samples.append(
                    {
                        "seconds": time.perf_counter() - start,
                        "step": _last_step(log),
                        "rss_mb": proc.memory_info().rss / 2**20,
                    }
                )

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        config = dpjax.training.TrainConfig(
            dataset="digits",
            model="logreg",
            target_epsilon=None,
            noise_multiplier=1.0,
            batch_size=64,
            steps=steps,
            lr=0.05,
            eval_every=eval_every,
            accountant=accountant,
            seed=0,  # reproducible research on public data: the seed is not secret here
        )
        result = dpjax.training.train(
            config,
            log_path=log,
            checkpoint=ckpt,
            checkpoint_every=checkpoint_every,
            progress=False,
        )
        done.set()
        thread.join()
        samples.append(
            {
                "seconds": time.perf_counter() - start,
                "step": result.summary["steps"],
                "rss_mb": proc.memory_info().rss / 2**20,
            }
        )
        log_check = check_log(log)
    rss = [s["rss_mb"] for s in samples]
    return {
        "steps": result.summary["steps"],
        "epsilon": result.summary["epsilon"],
        "test_accuracy": result.summary["test_accuracy"],
        "wall_seconds": result.summary["wall_seconds"],
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        "samples": samples,
        "rss_mb_first": rss[0],
        "rss_mb_max": max(rss),
        "rss_mb_last": rss[-1],
        "growth_mb_per_10k_steps_second_half": growth_mb_per_10k(samples),
        "log": log_check,
    }


def plot(record: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [s["step"] for s in record["samples"]]
    ax.plot(steps, [s["rss_mb"] for s in record["samples"]], ".-", ms=3)
    ax.set_xlabel("training step")
    ax.set_ylabel("resident memory (MiB)")
    ax.grid(alpha=0.3)
    growth = record["growth_mb_per_10k_steps_second_half"]
    common.save_figure(
        fig,
        path,
        f"dpjax trainer, logreg on digits, {record['steps']} steps: RSS against steps "
        f"(second-half growth {growth if growth is None else round(growth, 3)} MiB / 10k steps)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="600 steps (< 1 min)")
    parser.add_argument("--steps", type=int, default=None, help=f"default {FULL_STEPS}")
    parser.add_argument("--sample-seconds", type=float, default=None)
    parser.add_argument("--flat-mb-per-10k-steps", type=float, default=1.0)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld")
    args = parser.parse_args(argv)
    steps = args.steps or (600 if args.quick else FULL_STEPS)
    eval_every = max(1, steps // 100)
    out = args.out or (HERE / "results" / ("quick" if args.quick else "") / "long_run.json")
    record = run(
        steps,
        eval_every,
        max(1, steps // 10),
        args.sample_seconds or (0.5 if args.quick else 2.0),
        args.accountant,
    )
    growth = record["growth_mb_per_10k_steps_second_half"]
    record |= {
        "benchmark": "long_run",
        "accountant": args.accountant,
        "quick": args.quick,
        "full_size_steps": FULL_STEPS,
        "reduced": steps < FULL_STEPS,
        "flat_threshold_mb_per_10k_steps": args.flat_mb_per_10k_steps,
        "flat": growth is not None and growth < args.flat_mb_per_10k_steps,
        "machine": common.machine_description(),
        "method": "RSS of this process (psutil) sampled by a thread; step = last line of the "
        "trainer's JSON-lines log; growth = least-squares slope of RSS on steps over the second "
        "half (after compilation and allocator warm-up)",
    }
    common.write_json(out, record)
    plot(record, out.with_suffix(".png"))
    print(
        f"{record['steps']} steps in {record['wall_seconds']:.0f} s: RSS {record['rss_mb_first']:.0f}"
        f" -> {record['rss_mb_last']:.0f} MiB (max {record['rss_mb_max']:.0f}); second-half growth "
        f"{growth} MiB per 10k steps; log {record['log']}; wrote {out}"
    )


if __name__ == "__main__":
    main()
