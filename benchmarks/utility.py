"""Privacy-utility curves: test accuracy against epsilon for dpjax's DP-SGD trainer.

For each (dataset, model) and each epsilon in {0.5, 1, 2, 3, 8, inf} at
delta = 1e-5, trains with ``dpjax.training.train`` (Poisson sampling, PLD accountant,
noise multiplier calibrated so the run spends the whole budget) and reports the
test accuracy of the final model as mean +- std over seeds. ``inf`` is the NOT
PRIVATE baseline (``not_private=True``: no clipping, no noise, no guarantee).

Protocol.

* Hyperparameters are chosen on VALIDATION accuracy only (seed 0), never on
  the test accuracy. The grids are in ``GRIDS`` and every configuration tried
  is written to the JSON (``tuning``), so the tuning budget is on record.
  Digits runs take seconds, so digits is tuned per epsilon. A Fashion-MNIST
  CNN run takes 9-27 minutes on 2 (shared) CPU cores, so its private grid is
  searched once, at epsilon = 3, and the winner is used at every epsilon.
* The chosen configuration is then trained with seeds 0, 1, ... (the seed
  drives the model initialisation, the Poisson sampler and the noise); the data
  split is fixed (``load_dataset(..., seed=0)``), so no seed's test set overlaps
  the validation set used for tuning.
* **The reported epsilon does not include the privacy cost of the
  hyperparameter search.** Tuning on the private data itself leaks (Papernot &
  Steinke, "Hyperparameter Tuning with Renyi Differential Privacy", ICLR 2022);
  like the published results we compare against, we leave that cost out.

Published reference points (drawn on the plot): Tramer & Boneh, "Differentially
Private Learning Needs Better Features (or Much More Data)", ICLR 2021, at
(epsilon = 3, delta = 1e-5) on Fashion-MNIST: end-to-end CNN 86.0 %,
ScatterNet + linear 89.7 %. Their CNN recipe (github.com/ftramer/Handcrafted-DP,
README and cnns.py): batch 2048, SGD with momentum 0.9, lr 4, clip 0.1, 40
epochs, noise calibrated with RDP over 60,000 examples (sigma 2.15); dpjax's
PLD accountant over 55,000 training examples gives sigma 1.88 for the same
budget. Their code evaluates the test set after every epoch (cnns.py); ours
reports the accuracy of the final model only.

Every finished run is cached as dpjax's JSON summary in
``benchmarks/results/utility_runs/`` (with its evaluation log) and reused when
the same configuration is asked for again; ``--cache fresh`` ignores the cache and
``--cache only`` assembles the JSON and PNG from finished runs without training.

Usage::

  python benchmarks/utility.py --quick      # digits, eps in {1, 3, inf}, 1 seed, stored configs
  python benchmarks/utility.py              # everything (Fashion-MNIST: hours on 2 CPU cores)
  python benchmarks/utility.py --datasets digits --seeds 3
  python benchmarks/utility.py --datasets fashion-mnist --seeds 1 --epsilons 1 8
  python benchmarks/utility.py --cache only # JSON + PNG from the finished runs, no training
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pathlib
import statistics
import sys
import time
import warnings
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):  # benchmarks/ (sibling modules) and the repo root (dpjax)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402  (benchmarks/common.py: machine description, JSON writing)

DELTA = 1e-5
EPSILONS = (0.5, 1.0, 2.0, 3.0, 8.0, math.inf)
QUICK_EPSILONS = (1.0, 3.0, math.inf)
NOT_PRIVATE = "NOT PRIVATE"
DEFAULT_JSON = HERE / "results" / "utility.json"
QUICK_JSON = (
    HERE / "results" / "quick" / "utility.json"
)  # --quick never overwrites the full results
CACHE_DIR = HERE / "results" / "utility_runs"

# (dataset, model) pairs of the curves.
TASKS = {"digits": ("logreg", "mlp"), "fashion-mnist": ("cnn",)}

# eps at which a (dataset, model) is tuned; None = tune at every eps.
TUNE_AT = {"digits": None, "fashion-mnist": 3.0}


def _grid(**axes) -> list[dict[str, Any]]:
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


# Hyperparameter grids, searched on validation accuracy (seed 0). "private" grids
# serve every finite eps; "not_private" the NOT PRIVATE baseline (no clip norm).
GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "digits": {
        "private": _grid(
            optimizer=["adam"],
            lr=[3e-3, 1e-2, 3e-2],
            clip_norm=[1.0],
            batch_size=[64, 256],
            epochs=[20, 60],
        ),
        "not_private": _grid(
            optimizer=["adam"], lr=[3e-3, 1e-2, 3e-2], batch_size=[64, 256], epochs=[20, 60]
        ),
    },
    "fashion-mnist": {
        # Tramer & Boneh's recipe first, then tweaks chosen from its validation accuracy.
        "private": [
            {
                "optimizer": "momentum",
                "lr": 4.0,
                "clip_norm": 0.1,
                "batch_size": 2048,
                "epochs": 40,
            },
        ],
        "not_private": [
            {"optimizer": "adam", "lr": 1e-3, "batch_size": 256, "epochs": 20},
        ],
    },
}


def _hp(optimizer: str, lr: float, batch_size: int, epochs: float, clip_norm=None) -> dict:
    hp = {"optimizer": optimizer, "lr": lr, "batch_size": batch_size, "epochs": epochs}
    return hp if clip_norm is None else hp | {"clip_norm": clip_norm}


# The configurations the last full tuning chose (``--quick`` and ``--no-tune``
# use them; Fashion-MNIST's private entry serves every finite eps). Keys:
# (dataset, model, eps); eps = inf is NOT PRIVATE.
BEST: dict[tuple[str, str, float], dict[str, Any]] = {
    ("digits", "logreg", 0.5): _hp("adam", 0.03, 64, 20, clip_norm=1.0),
    ("digits", "logreg", 1.0): _hp("adam", 0.03, 256, 60, clip_norm=1.0),
    ("digits", "logreg", 2.0): _hp("adam", 0.03, 64, 20, clip_norm=1.0),
    ("digits", "logreg", 3.0): _hp("adam", 0.01, 64, 60, clip_norm=1.0),
    ("digits", "logreg", 8.0): _hp("adam", 0.03, 64, 60, clip_norm=1.0),
    ("digits", "logreg", math.inf): _hp("adam", 0.01, 64, 60),
    ("digits", "mlp", 0.5): _hp("adam", 0.01, 64, 20, clip_norm=1.0),
    ("digits", "mlp", 1.0): _hp("adam", 0.01, 256, 60, clip_norm=1.0),
    ("digits", "mlp", 2.0): _hp("adam", 0.01, 256, 60, clip_norm=1.0),
    ("digits", "mlp", 3.0): _hp("adam", 0.01, 256, 60, clip_norm=1.0),
    ("digits", "mlp", 8.0): _hp("adam", 0.003, 64, 60, clip_norm=1.0),
    ("digits", "mlp", math.inf): _hp("adam", 0.003, 64, 60),
    ("fashion-mnist", "cnn", 3.0): _hp("momentum", 4.0, 2048, 40, clip_norm=0.1),
    ("fashion-mnist", "cnn", math.inf): _hp("adam", 0.001, 256, 20),
}


# Published points drawn on the plot and stored in the JSON.
PUBLISHED = [
    {
        "source": "Tramer & Boneh, ICLR 2021",
        "dataset": "fashion-mnist",
        "epsilon": 3.0,
        "delta": 1e-5,
        "model": model,
        "test_accuracy": acc,
    }
    for model, acc in (("end-to-end CNN", 0.860), ("ScatterNet + linear", 0.897))
]


def eps_label(eps: float) -> str:
    return NOT_PRIVATE if math.isinf(eps) else f"{eps:g}"


def run_key(dataset: str, model: str, eps: float, hp: dict[str, Any], seed: int) -> str:
    """File stem of a run in the cache; every field that changes the run is in it."""
    clip = "" if math.isinf(eps) else f"_C{hp['clip_norm']:g}"
    return (
        f"{dataset}_{model}_eps{'inf' if math.isinf(eps) else f'{eps:g}'}_d{DELTA:g}_"
        f"{hp['optimizer']}_lr{hp['lr']:g}{clip}_B{hp['batch_size']}_E{hp['epochs']:g}_s{seed}"
    )


def train_once(
    data, dataset: str, model: str, eps: float, hp: dict[str, Any], seed: int, *, cache: str
) -> dict[str, Any] | None:
    """One training run, or its cached summary. Returns dpjax's summary dict.

    ``cache``: "use" (reuse a finished run), "fresh" (always train) or "only"
    (never train: None when the run is not cached).
    """
    import dpjax
    import dpjax.training

    key = run_key(dataset, model, eps, hp, seed)
    summary_path, log_path = CACHE_DIR / f"{key}.json", CACHE_DIR / f"{key}.jsonl"
    if summary_path.exists() and cache != "fresh":
        summary = json.loads(summary_path.read_text())
        if summary.get("stop_reason") != "interrupted" and summary.get("test_accuracy") is not None:
            summary["benchmark_seed"] = seed  # the summary on disk never records it
            summary["cached"] = True
            return summary
    if cache == "only":
        return None
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    private = not math.isinf(eps)
    config = dpjax.training.TrainConfig(
        dataset=dataset,
        model=model,
        target_epsilon=eps if private else None,
        delta=DELTA,
        clip_norm=hp.get("clip_norm", 1.0),
        batch_size=hp["batch_size"],
        epochs=hp["epochs"],
        lr=hp["lr"],
        optimizer=hp["optimizer"],
        seed=seed,
        eval_every=max(1, math.ceil(hp["epochs"] * len(data.train) / hp["batch_size"] / 10)),
        not_private=not private,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        result = dpjax.training.train(
            config, dataset=data, json_out=summary_path, log_path=log_path, progress=False
        )
    # The summary never records a seed (summaries get published); a benchmark's seeds are
    # public by design (research runs on public data), so it keeps its own.
    summary = dict(result.summary) | {"benchmark_seed": seed}
    summary["cached"] = False
    return summary


def _print_run(tag: str, summary: dict[str, Any]) -> None:
    eps = summary.get("epsilon")
    seed = summary.get("benchmark_seed", summary.get("seed"))
    print(
        f"  {tag:<7} lr={summary['lr']:<6g} C={summary['clip_norm']} B={summary['batch_size']:<5} "
        f"E={summary['epochs']:<4g} seed={seed} sigma={summary['noise_multiplier']:.3f} "
        f"eps={'inf' if eps is None else f'{eps:.3f}'} steps={summary['steps']:<5} "
        f"val={summary['validation_accuracy']:.4f} test={summary['test_accuracy']:.4f} "
        f"{summary['wall_seconds']:.1f}s{' (cached)' if summary.get('cached') else ''}",
        flush=True,
    )


def tune(
    data, dataset: str, model: str, eps: float, *, cache: str
) -> tuple[dict[str, Any] | None, list]:
    """Searches the grid on validation accuracy (seed 0); returns (best hp, every trial)."""
    trials = []
    for hp in GRIDS[dataset]["not_private" if math.isinf(eps) else "private"]:
        summary = train_once(data, dataset, model, eps, hp, seed=0, cache=cache)
        if summary is None:
            continue
        _print_run("tune", summary)
        trials.append(
            {
                "hyperparameters": hp,
                "validation_accuracy": summary["validation_accuracy"],
                "noise_multiplier": summary["noise_multiplier"],
                "steps": summary["steps"],
                "wall_seconds": summary["wall_seconds"],
                "cached": summary["cached"],
            }
        )
    if not trials:
        return None, trials
    best = max(trials, key=lambda t: t["validation_accuracy"])  # the first wins ties
    return dict(best["hyperparameters"]), trials


def curve_point(
    data, dataset: str, model: str, eps: float, *, seeds: int, tuning: bool, cache: str
) -> dict[str, Any] | None:
    """Tunes (or takes the stored config), then trains `seeds` seeds; one JSON entry.

    With ``cache="only"`` the point holds the seeds found in the cache (None if none).
    """
    tune_at = TUNE_AT[dataset]
    trials: list = []
    if math.isinf(eps) or tune_at is None:
        tuned_at = eps
    else:
        tuned_at = tune_at
    if tuning:
        hp, trials = tune(data, dataset, model, tuned_at, cache=cache)
        if hp is None:
            return None
        source = f"tuned on validation accuracy at eps={eps_label(tuned_at)} ({len(trials)} config(s) tried)"
    else:
        hp = BEST.get((dataset, model, eps)) or BEST[(dataset, model, tuned_at)]
        source = "stored best configuration (BEST in benchmarks/utility.py)"
    runs = []
    for seed in range(seeds):
        summary = train_once(data, dataset, model, eps, hp, seed=seed, cache=cache)
        if summary is not None:
            _print_run("report", summary)
            runs.append(summary)
    if not runs:
        return None
    accs = [r["test_accuracy"] for r in runs]
    return {
        "dataset": dataset,
        "model": model,
        "epsilon": eps_label(eps),
        "target_epsilon": None if math.isinf(eps) else eps,
        "delta": None if math.isinf(eps) else DELTA,
        "test_accuracy_mean": statistics.fmean(accs),
        "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else None,
        "n_seeds": len(accs),
        "test_accuracy_per_seed": accs,
        "validation_accuracy_per_seed": [r["validation_accuracy"] for r in runs],
        "epsilon_spent_per_seed": [r["epsilon"] for r in runs],
        "hyperparameters": hp,
        "hyperparameter_source": source,
        "noise_multiplier": runs[0]["noise_multiplier"],
        "sampling_rate": runs[0]["sampling_rate"],
        "steps": runs[0]["steps"],
        "seeds": [r.get("benchmark_seed", r.get("seed")) for r in runs],
        "wall_seconds_per_seed": [r["wall_seconds"] for r in runs],
        "tuning": {"eps": eps_label(tuned_at), "configs_tried": len(trials), "trials": trials}
        if trials
        else None,
        "note": "1 seed: no error bar" if len(accs) == 1 else None,
    }


def plot(points: list[dict[str, Any]], path: pathlib.Path) -> None:
    """One panel per dataset: test accuracy against eps, error bars, published references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(p["dataset"] for p in points))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2), squeeze=False)
    finite = sorted({p["target_epsilon"] for p in points if p["target_epsilon"] is not None})
    inf_x = (max(finite) if finite else 8.0) * 2.5  # where NOT PRIVATE sits on the log axis
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for i, model in enumerate(
            dict.fromkeys(p["model"] for p in points if p["dataset"] == dataset)
        ):
            pts = sorted(
                (p for p in points if p["dataset"] == dataset and p["model"] == model),
                key=lambda p: p["target_epsilon"] if p["target_epsilon"] is not None else math.inf,
            )
            seeds = sorted({p["n_seeds"] for p in pts})
            label = f"dpjax {model} ({'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''})"
            # The private points are joined by a line; NOT PRIVATE stands apart (a square).
            for private, marker, ls in ((True, "o", "-"), (False, "s", "none")):
                part = [p for p in pts if (p["target_epsilon"] is not None) == private]
                if not part:
                    continue
                ax.errorbar(
                    [p["target_epsilon"] if private else inf_x for p in part],
                    [100 * p["test_accuracy_mean"] for p in part],
                    yerr=[100 * (p["test_accuracy_std"] or 0.0) for p in part],
                    marker=marker,
                    linestyle=ls,
                    capsize=3,
                    color=f"C{i}",
                    label=label if private or len(part) == len(pts) else None,
                )
        styles = (("*", 140, "k"), ("D", 50, "0.4"))
        for ref, (marker, size, color) in zip(PUBLISHED, styles, strict=True):
            if ref["dataset"] == dataset:
                ax.scatter(
                    [ref["epsilon"]],
                    [100 * ref["test_accuracy"]],
                    marker=marker,
                    s=size,
                    color=color,
                    zorder=5,
                    label=f"Tramer & Boneh 2021: {ref['model']} ({100 * ref['test_accuracy']:.1f} %)",
                )
        ax.set_xscale("log")
        ticks = finite + [inf_x]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in finite] + [NOT_PRIVATE], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(f"epsilon (delta = {DELTA:g})")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.margins(y=0.12)
        ax.legend(fontsize=7, loc="best")
    common.save_figure(
        fig, path, "dpjax privacy-utility (tuning cost not included in epsilon)", dpi=130
    )


def print_table(points: list[dict[str, Any]]) -> None:
    print(
        f"\n{'dataset':<14} {'model':<7} {'eps':<12} {'test acc (%)':<16} {'seeds':<5} "
        f"{'sigma':<7} {'steps':<6} hyperparameters"
    )
    for p in points:
        std = p["test_accuracy_std"]
        acc = f"{100 * p['test_accuracy_mean']:.2f}" + (
            f" +- {100 * std:.2f}" if std is not None else ""
        )
        hp = " ".join(f"{k}={v}" for k, v in p["hyperparameters"].items())
        print(
            f"{p['dataset']:<14} {p['model']:<7} {p['epsilon']:<12} {acc:<16} {p['n_seeds']:<5} "
            f"{p['noise_multiplier']:<7.3f} {p['steps']:<6} {hp}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits only, eps in {1, 3, inf}, 1 seed, stored configs (no tuning)",
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(TASKS), default=None)
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per point (default 3; 1 with --quick)"
    )
    parser.add_argument(
        "--epsilons",
        nargs="+",
        type=float,
        default=None,
        help="subset of eps values (inf = NOT PRIVATE)",
    )
    parser.add_argument("--no-tune", action="store_true", help="use the stored BEST configurations")
    parser.add_argument(
        "--cache",
        choices=("use", "fresh", "only"),
        default="use",
        help="reuse finished runs (use), retrain everything (fresh), or only assemble the "
        "JSON/PNG from finished runs without training (only)",
    )
    parser.add_argument(
        "--json-out",
        type=pathlib.Path,
        default=None,
        help="JSON path, the PNG goes next to it (default results/utility.json, "
        "results/quick/utility.json with --quick)",
    )
    args = parser.parse_args(argv)

    datasets = args.datasets or (["digits"] if args.quick else list(TASKS))
    epsilons = (
        tuple(args.epsilons) if args.epsilons else (QUICK_EPSILONS if args.quick else EPSILONS)
    )
    seeds = args.seeds or (1 if args.quick else 3)
    tuning = not (args.quick or args.no_tune)
    json_out = args.json_out or (QUICK_JSON if args.quick else DEFAULT_JSON)

    import dpjax
    import dpjax.data

    start = time.perf_counter()
    points = []
    for dataset in datasets:
        data = dpjax.data.load_dataset(dataset, seed=0)
        for model in TASKS[dataset]:
            for eps in epsilons:
                print(f"{dataset} / {model} / eps={eps_label(eps)}", flush=True)
                point = curve_point(
                    data, dataset, model, eps, seeds=seeds, tuning=tuning, cache=args.cache
                )
                if point is not None:
                    points.append(point)
    print_table(points)
    payload = {
        "benchmark": "utility",
        "description": "test accuracy of the final model vs epsilon; hyperparameters chosen on "
        "validation accuracy (seed 0); mean +- std over training seeds, fixed data split",
        "delta": DELTA,
        "accountant": "pld",
        "tuning_privacy_cost": "NOT included in the reported epsilon (Papernot & Steinke, "
        "ICLR 2022); standard in the literature compared against",
        "published_reference": PUBLISHED,
        "quick": args.quick,
        "seeds": seeds,
        "machine": common.machine_description(),
        "dpjax_version": dpjax.__version__,
        "cache": args.cache,
        "wall_seconds_total": time.perf_counter() - start,
        "wall_seconds_note": "wall_seconds_total is this invocation's; runs reused from "
        "results/utility_runs/ keep their own wall_seconds_per_seed",
        "points": points,
    }
    common.write_json(json_out, payload)
    png = json_out.with_suffix(".png")
    plot(points, png)
    print(f"\nwrote {json_out} and {png} ({payload['wall_seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
