"""Private features on Fashion-MNIST: ScatterNet + linear / CNN, small samples, eps curve, tuning.

Tramer & Boneh (ICLR 2021) report, at (epsilon = 3, delta = 1e-5): ScatterNet +
linear 89.7 %, ScatterNet + CNN 89.0 %, end-to-end CNN 86.0 %. This benchmark
trains the same recipes through the dpjax trainer (``dpjax.training.train``) on
scattering features (J = 2, L = 8: 28x28 -> 7x7x81, ``dpjax.features``), then
per-example GroupNorm with 27 groups (a fixed function of each example: no
privacy cost). The features are computed once and cached (git-ignored) under
``benchmarks/results/runs/features/``; every finished run is cached there too.

Parts (``--parts``):

* ``tune``: ScatterNet + linear at epsilon = 3 on the VALIDATION split (seed 0),
  over a small grid (every configuration tried is in the JSON);
* ``record``: the chosen configuration, ``--seeds`` seeds, test accuracy;
* ``private-tuning``: the end-to-end row: Papernot & Steinke's private
  selection (``dpjax.features.private_tuning``) over the same grid, each run's
  validation score released with Gaussian noise, the total epsilon (tuning
  included) = 3;
* ``curve``: ScatterNet + linear for epsilon in {0.5, 1, 2, 3, 8};
* ``cnn``: ScatterNet + CNN (the zoo's ``scatter-cnn``, Tramer & Boneh's CNN for
  scattering inputs, clipped by ghost clipping) at epsilon = 3: ``SCAT_CNN_GRID``
  (8 configurations) on the VALIDATION split (seed 0), then ``--cnn-seeds`` seeds
  of the chosen one;
* ``cnn-curve``: that CNN for epsilon in {0.5, 1, 2, 3, 8}, ``--curve-seeds`` seeds;
* ``subsets``: 1k, 5k, 10k and all 55k training examples at epsilon = 3,
  end-to-end CNN vs ScatterNet + linear vs dpjax.convex output perturbation.

The validation split is 5,000 of the 60,000 training images, so N = 55,000
(Tramer & Boneh train on 60,000). Seeds are public (reproducible research).

Usage::

  python benchmarks/features.py --quick                 # < 1 min -> results/quick/
  nice -n 5 python benchmarks/features.py --parts tune record --seeds 3
  python benchmarks/features.py --cache only            # JSON + PNG from cached runs
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

import dpjax  # noqa: E402
from dpjax.data import Dataset, Split, load_dataset  # noqa: E402
from dpjax.features import (  # noqa: E402
    group_normalize,
    private_tuning,
    scatternet_features,
    tuning_epsilon,
    tuning_release,
)
from dpjax.training import TrainConfig, train  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "runs" / "features"
PUBLISHED = {  # Tramer & Boneh 2021, Table 1 / Figure 1 (epsilon = 3)
    "scatternet_linear": 0.897,
    "scatternet_cnn": 0.890,
    "end_to_end_cnn": 0.860,
}
# The recipe of Tramer & Boneh for ScatterNet + linear on Fashion-MNIST.
RECIPE = {
    "model": "logreg",
    "batch_size": 8192,
    "epochs": 40.0,
    "optimizer": "momentum",
    "lr": 4.0,
    "clip_norm": 0.1,
    "ema_decay": None,
}
GRID = [  # the validation grid of the tune part (and the private-tuning candidates);
    # one batch size and length, so every candidate is the same DP mechanism
    {},
    {"ema_decay": 0.99},
    {"lr": 2.0, "ema_decay": 0.99},
    {"lr": 8.0, "ema_decay": 0.99},
]
TUNE_EXTRA = [  # tried on validation after the grid (longer, larger steps); not a tuning candidate
    {"lr": 8.0, "epochs": 60.0, "ema_decay": 0.99},
]
CNN_RECIPE = {  # end-to-end DP CNN: the recipe of benchmarks/utility.py
    "model": "cnn",
    "batch_size": 2048,
    "epochs": 40.0,
    "optimizer": "momentum",
    "lr": 4.0,
    "clip_norm": 0.1,
    "ema_decay": 0.999,
}
SCAT_CNN_RECIPE = {
    "model": "scatter-cnn",
    "batch_size": 8192,
    "epochs": 40.0,
    "optimizer": "momentum",
    "lr": 4.0,
    "clip_norm": 0.1,
    "ema_decay": 0.99,
}
SCAT_CNN_GRID = [  # validation, seed 0 (the first four, then four around the best of them)
    {},
    {"batch_size": 2048},
    {"lr": 8.0},
    {"lr": 2.0},
    {"batch_size": 2048, "lr": 8.0},
    {"batch_size": 2048, "epochs": 60.0},
    {"batch_size": 1024, "lr": 2.0},
    {"batch_size": 4096},
]


# ------------------------------------------------------------------------------- data


def _features_dataset(raw: Dataset, quick: bool) -> Dataset:
    """ScatterNet features of every split, cached on disk, group-normalized (27 groups)."""
    path = RUNS / ("fmnist_scattering_J2_L8" + ("_quick" if quick else "") + ".npz")
    if path.exists():
        cached = np.load(path)
        feats = {k: cached[k] for k in ("train", "validation", "test")}
    else:
        t0 = time.perf_counter()
        feats = {k: scatternet_features(getattr(raw, k).x) for k in ("train", "validation", "test")}
        print(f"scattering features computed in {time.perf_counter() - t0:.0f} s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **feats)

    def split(name: str) -> Split:
        x = np.asarray(group_normalize(feats[name], groups=27))
        return Split(x=x, y=getattr(raw, name).y)

    return Dataset(
        "fashion-mnist-scatternet",
        split("train"),
        split("validation"),
        split("test"),
        num_classes=10,
        source=raw.source + " -> ScatterNet(J=2, L=8) -> GroupNorm(27)",
    )


def _subset(data: Dataset, n: int) -> Dataset:
    """The first n training examples (the split is a seeded permutation, so this is random)."""
    if n >= len(data.train):
        return data
    train_split = Split(x=data.train.x[:n], y=data.train.y[:n])
    return dataclasses.replace(data, train=train_split)


# ------------------------------------------------------------------------------- runs


def _key(run: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(run, sort_keys=True).encode()).hexdigest()[:16]


def run_one(run: dict[str, Any], datasets: dict[str, Dataset], cache: str) -> dict[str, Any] | None:
    """Trains one configuration (or reads it from the cache) and returns its summary."""
    path = RUNS / f"{_key(run)}.json"
    if path.exists() and cache != "off":
        return json.loads(path.read_text())
    if cache == "only":
        return None
    data = datasets[run["features"]]
    if run.get("subset"):
        data = _subset(data, run["subset"])
    # The features were computed here (cached): the trainer gets them as its dataset.
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"features", "dataset"}
    cfg = TrainConfig(
        dataset="fashion-mnist",
        **{k: v for k, v in run.items() if k in fields},
        eval_every=10**6,
    )
    t0 = time.perf_counter()
    result = train(cfg, dataset=data, progress=False)
    s = result.summary
    out = {
        "run": run,
        "test_accuracy": s["test_accuracy"],
        "validation_accuracy": s["validation_accuracy"],
        "epsilon": s["epsilon"],
        "noise_multiplier": s["noise_multiplier"],
        "steps": s["steps"],
        "dataset_size": s["dataset_size"],
        "clipping": s.get("clipping"),
        "wall_seconds": time.perf_counter() - t0,
    }
    print(json.dumps(out), flush=True)
    common.write_json(path, out)
    return out


def _run(features: str, eps: float | None, seed: int, base: dict[str, Any], **extra: Any) -> dict:
    return {"features": features, "target_epsilon": eps, "seed": seed, **base, **extra}


def _stats(values: list[float]) -> dict[str, float | int]:
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(values)}


# ------------------------------------------------------------------------------- parts


def part_tune(args, datasets) -> dict[str, Any]:
    rows = []
    for extra in GRID + TUNE_EXTRA:
        r = run_one(_run("scatternet", 3.0, 0, RECIPE | extra, **args.scale), datasets, args.cache)
        if r is not None:
            rows.append({"config": RECIPE | extra, **r})
    best = max(rows, key=lambda r: r["validation_accuracy"]) if rows else None
    return {
        "configs_tried": len(GRID) + len(TUNE_EXTRA),
        "selection": "highest validation accuracy, seed 0",
        "rows": rows,
        "chosen": best and best["config"],
    }


def _seeded_runs(args, datasets, recipe: dict[str, Any], seeds: int) -> dict[str, Any]:
    """ScatterNet runs of `recipe` at epsilon = 3 for seeds 0..seeds-1, with their test statistics."""
    runs = [
        run_one(_run("scatternet", 3.0, s, recipe, **args.scale), datasets, args.cache)
        for s in range(seeds)
    ]
    done = [r for r in runs if r is not None]
    return {
        "config": recipe,
        "runs": done,
        "test_accuracy": _stats([r["test_accuracy"] for r in done]),
    }


def part_record(args, datasets, chosen) -> dict[str, Any]:
    part = _seeded_runs(args, datasets, chosen, args.seeds)
    return part | {
        "epsilon": max((r["epsilon"] for r in part["runs"]), default=math.nan),
        "goal_90_5_met": bool(part["runs"]) and part["test_accuracy"]["mean"] >= 0.905,
        "published": PUBLISHED["scatternet_linear"],
    }


def part_private_tuning(args, datasets) -> dict[str, Any]:
    """Papernot & Steinke's selection over GRID, its cost inside a total epsilon of 3.

    Every candidate has the recipe's batch size and epochs, so every run is the
    same mechanism: T DP-SGD steps at one sigma, then its validation score (a
    count of sensitivity 1) released with Gaussian noise of std `sigma_val`.
    Sigma is the smallest on a bisection such that the whole selection (K
    geometric with E[K] = `mean`) spends epsilon <= 3 under the RDP accountant.
    """
    import dp_accounting

    data = datasets["scatternet"]
    mean, shape, sigma_val, target, delta = 2.0, 1.0, 20.0, 3.0, 1e-5
    n, n_val = len(data.train), len(data.validation)
    cfg0 = RECIPE | args.scale
    q = cfg0["batch_size"] / n
    _, steps, _ = dpjax.steps_from_epochs(n, cfg0["batch_size"], cfg0["epochs"])

    def record(sigma: float):
        run_event = dp_accounting.ComposedDpEvent(
            [dpjax.dp_sgd_event(sigma, steps, q), dp_accounting.GaussianDpEvent(sigma_val)]
        )
        return tuning_release(run_event, mean=mean, shape=shape)

    lo, hi = 0.5, 50.0
    for _ in range(
        args.bisection_steps
    ):  # bisection: the smallest sigma whose selection fits epsilon = 3
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if tuning_epsilon(record(mid), delta) <= target else (mid, hi)
    sigma = round(hi, 4)
    tracker = dpjax.PrivacyTracker(target, delta, accountant="rdp")
    rng = np.random.default_rng(1234)  # public benchmark seed (K and the candidates' draws)

    tried: list[int] = []

    def one_run(seed: int) -> tuple[float, dict[str, Any]]:
        # private_tuning hands each run a fresh seed; this public benchmark keeps its own training
        # seeds 100, 101, ... (its cache keys) and draws the candidate from its public `rng`.
        del seed
        i = len(tried)
        tried.append(i)
        cfg = GRID[int(rng.integers(len(GRID)))]
        run = _run(
            "scatternet",
            None,
            100 + i,
            RECIPE | cfg,
            noise_multiplier=sigma,
            steps=steps,
            **{k: v for k, v in args.scale.items() if k != "epochs"},
        )
        r = run_one(run, datasets, args.cache)
        if r is None:
            return -math.inf, {"config": cfg, "missing": True}
        # The run's score: validation correct count + N(0, sigma_val^2) (sensitivity 1).
        noisy = r["validation_accuracy"] * n_val + float(rng.normal(0.0, sigma_val))
        return noisy / n_val, {"config": cfg, "noisy_validation_accuracy": noisy / n_val, **r}

    outcome = private_tuning(one_run, record(sigma), tracker, rng=rng)
    best = outcome.best
    return {
        "distribution": {"name": "geometric (truncated negative binomial, eta=1)", "mean": mean},
        "candidates": len(GRID),
        "noise_multiplier_per_run": sigma,
        "steps_per_run": steps,
        "validation_noise_multiplier": sigma_val,
        "runs": outcome.count,
        "results": [r for _, r in outcome.results],
        "chosen": best and best[1]["config"],
        "test_accuracy": best[1].get("test_accuracy") if best else None,
        "epsilon_total_including_tuning": tracker.epsilon_spent(),
        "note": "K, the candidates and every run's result are listed here because this is a "
        "benchmark on public data with a public seed; a real selection draws K with "
        "dpjax.secret_seed() and releases only the best run.",
    }


def part_curve(args, datasets, chosen) -> dict[str, Any]:
    """`chosen` (ScatterNet features) at every epsilon, ``--curve-seeds`` seeds each."""
    rows = []
    for eps in args.epsilons:
        runs = [
            run_one(_run("scatternet", eps, s, chosen, **args.scale), datasets, args.cache)
            for s in range(args.curve_seeds)
        ]
        done = [r for r in runs if r is not None]
        rows.append({"epsilon": eps, "test_accuracy": _stats([r["test_accuracy"] for r in done])})
    return {"method": "scatternet_linear", "config": chosen, "rows": rows}


def part_cnn(args, datasets) -> dict[str, Any]:
    """ScatterNet + CNN: the grid on validation (seed 0), then the chosen config's seeds."""
    tried = []
    for extra in SCAT_CNN_GRID:
        config = SCAT_CNN_RECIPE | extra
        r = run_one(_run("scatternet", 3.0, 0, config, **args.scale), datasets, args.cache)
        if r is not None:
            tried.append({"config": config, **r})
    best = max(tried, key=lambda r: r["validation_accuracy"]) if tried else None
    chosen = best["config"] if best else SCAT_CNN_RECIPE
    part = _seeded_runs(args, datasets, chosen, args.cnn_seeds)
    return part | {
        "configs_tried": len(SCAT_CNN_GRID),
        "selection": "highest validation accuracy, seed 0",
        "tuning": tried,
        "published": PUBLISHED["scatternet_cnn"],
    }


def part_cnn_curve(args, datasets, chosen) -> dict[str, Any]:
    part = part_curve(args, datasets, chosen)
    return part | {"method": "scatternet_cnn"}


def part_subsets(args, datasets, chosen) -> dict[str, Any]:
    rows = []
    for n in args.subsets:
        for name, feats, recipe in (
            ("scatternet_linear", "scatternet", chosen),
            ("end_to_end_cnn", "raw", CNN_RECIPE),
        ):
            batch = min(recipe["batch_size"], max(64, n // 8))
            cfg = recipe | {"batch_size": batch}
            r = run_one(_run(feats, 3.0, 0, cfg, subset=n, **args.scale), datasets, args.cache)
            if r is not None:
                rows.append({"n": n, "method": name, "batch_size": batch, **r})
        rows.append({"n": n, **_convex_subset_row(datasets["raw"], n)})
    return {
        "rows": rows,
        "note": "batch = min(recipe batch, max(64, n // 8)); one seed. convex: Gaussian output "
        f"perturbation, multinomial logistic regression on the raw pixels / 255, {CONVEX_SUBSET} "
        "(chosen on the full training set by benchmarks/convex.py, not per subset), 3 noise seeds",
    }


CONVEX_SUBSET = {"l2_reg": 0.01, "data_norm": 4.0}


def _convex_subset_row(data: Dataset, n: int) -> dict[str, Any]:
    """Gaussian output perturbation (dpjax.convex) on the first n training examples at eps = 3."""
    from dpjax.convex import DPLogisticRegression

    sub = _subset(data, n)
    start = time.perf_counter()
    accs = []
    for seed in range(3):
        model = DPLogisticRegression(
            epsilon=3.0, delta=1e-5, classes=list(range(10)), random_state=1000 + seed,
            **CONVEX_SUBSET,
        )  # fmt: skip
        model.fit(sub.train.x.reshape(len(sub.train), -1), sub.train.y)
        accs.append(model.score(data.test.x.reshape(len(data.test), -1), data.test.y))
    return {
        "method": "convex_output_perturbation",
        "test_accuracy": float(np.mean(accs)),
        "test_accuracy_std": float(np.std(accs)),
        "epsilon": 3.0,
        "wall_seconds": time.perf_counter() - start,
    }


# ------------------------------------------------------------------------------- main


def _end_to_end_cnn_curve() -> list[tuple[float, float, float]]:
    """(epsilon, mean, std) of the end-to-end DP CNN from benchmarks/results/utility.json."""
    path = RESULTS / "utility.json"
    if not path.exists():
        return []
    points = json.loads(path.read_text()).get("points", [])
    return sorted(
        (float(p["target_epsilon"]), p["test_accuracy_mean"], p["test_accuracy_std"])
        for p in points
        if p.get("dataset") == "fashion-mnist"
        and p.get("model") == "cnn"
        and isinstance(p.get("target_epsilon"), int | float)
    )


def _figure(report: dict[str, Any], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    curve = report["parts"].get("curve")
    ax = axes[0]
    if curve:
        xs = [r["epsilon"] for r in curve["rows"] if r["test_accuracy"]["n"]]
        ms = [r["test_accuracy"]["mean"] for r in curve["rows"] if r["test_accuracy"]["n"]]
        ss = [r["test_accuracy"]["std"] for r in curve["rows"] if r["test_accuracy"]["n"]]
        ax.errorbar(xs, ms, yerr=ss, marker="o", label="dpjax ScatterNet + linear")
    for name, label in (("cnn-curve", "dpjax ScatterNet + CNN"),):
        rows = [r for r in report["parts"].get(name, {}).get("rows", []) if r["test_accuracy"]["n"]]
        if rows:
            ax.errorbar(
                [r["epsilon"] for r in rows],
                [r["test_accuracy"]["mean"] for r in rows],
                yerr=[r["test_accuracy"]["std"] for r in rows],
                marker="^",
                label=label,
            )
    end_to_end = _end_to_end_cnn_curve()
    if end_to_end:
        ax.errorbar(*zip(*end_to_end, strict=True), marker="v", label="dpjax end-to-end CNN")
    for name, acc in PUBLISHED.items():
        ax.scatter([3.0], [acc], marker="x", label=f"published {name} (T&B 2021)")
    record = report["parts"].get("record")
    if record and record["test_accuracy"]["n"]:
        acc = record["test_accuracy"]
        ax.errorbar(
            [3.0],
            [acc["mean"]],
            yerr=[acc["std"]],
            marker="s",
            color="k",
            label=f"dpjax record config ({acc['n']} seeds)",
        )
    tuned = report["parts"].get("private-tuning")
    if tuned and tuned.get("test_accuracy") is not None:
        ax.scatter(
            [tuned["epsilon_total_including_tuning"]],
            [tuned["test_accuracy"]],
            marker="*",
            s=120,
            color="r",
            label="dpjax, tuning cost included",
        )
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (delta = 1e-5)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    subsets = report["parts"].get("subsets")
    ax = axes[1]
    if subsets:
        for method in ("scatternet_linear", "end_to_end_cnn", "convex_output_perturbation"):
            rows = [r for r in subsets["rows"] if r["method"] == method]
            ax.plot([r["n"] for r in rows], [r["test_accuracy"] for r in rows], "o-", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("training examples (epsilon = 3)")
        ax.legend(fontsize=7)
    common.save_figure(fig, path, "Fashion-MNIST: private features (dpjax)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny plan -> results/quick/")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["tune", "record", "private-tuning", "curve", "cnn", "cnn-curve", "subsets"],
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--curve-seeds", type=int, default=1)
    parser.add_argument("--cnn-seeds", type=int, default=1)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.5, 1.0, 2.0, 3.0, 8.0])
    parser.add_argument("--subsets", type=int, nargs="+", default=[1000, 5000, 10000, 55000])
    parser.add_argument("--cache", choices=("on", "off", "only"), default="on")
    args = parser.parse_args(argv)
    args.scale, args.bisection_steps = {}, 14
    raw = load_dataset("fashion-mnist", seed=0)
    out = RESULTS / "features.json"
    if args.quick:  # a tiny plan: 2,000 / 500 / 500 examples, 2 epochs, one seed
        global RUNS
        RUNS = RESULTS / "quick" / "runs_features"
        raw = dataclasses.replace(
            raw,
            train=Split(x=raw.train.x[:2000], y=raw.train.y[:2000]),
            validation=Split(x=raw.validation.x[:500], y=raw.validation.y[:500]),
            test=Split(x=raw.test.x[:500], y=raw.test.y[:500]),
        )
        args.seeds, args.epsilons, args.subsets = 1, [3.0], [1000]
        args.scale = {"batch_size": 512, "epochs": 2.0}
        args.bisection_steps = 4
        args.parts = [p for p in args.parts if p in ("tune", "record", "subsets", "private-tuning")]
        out = RESULTS / "quick" / "features.json"
    datasets = {"raw": raw, "scatternet": _features_dataset(raw, args.quick)}
    parts: dict[str, Any] = {}
    chosen = RECIPE | GRID[1]
    previous_parts = (
        json.loads(out.read_text()).get("parts", {}) if out.exists() and not args.quick else {}
    )
    if "tune" not in args.parts and out.exists() and not args.quick:  # the recipe of the record
        chosen = previous_parts.get("record", {}).get("config", chosen)
    if "tune" in args.parts:
        parts["tune"] = part_tune(args, datasets)
        chosen = parts["tune"]["chosen"] or chosen
    if "record" in args.parts:
        parts["record"] = part_record(args, datasets, chosen)
    if "private-tuning" in args.parts:
        parts["private-tuning"] = part_private_tuning(args, datasets)
    if "curve" in args.parts:
        parts["curve"] = part_curve(args, datasets, chosen)
    if "cnn" in args.parts:
        parts["cnn"] = part_cnn(args, datasets)
    if "cnn-curve" in args.parts:
        cnn_chosen = (parts.get("cnn") or previous_parts.get("cnn") or {}).get("config")
        parts["cnn-curve"] = part_cnn_curve(args, datasets, cnn_chosen or SCAT_CNN_RECIPE)
    if "subsets" in args.parts:
        parts["subsets"] = part_subsets(args, datasets, chosen)
    report = {
        "benchmark": "features",
        "machine": common.machine_description(),
        "dataset": "fashion-mnist (55,000 train / 5,000 validation / 10,000 test)",
        "delta": 1e-5,
        "quick": args.quick,
        "published": PUBLISHED,
        "parts": parts,
    }
    report["parts"] = previous_parts | parts  # keep the parts of earlier invocations
    common.write_json(out, report)
    try:
        _figure(report, out.with_suffix(".png"))
    except ImportError:  # matplotlib is in the bench extra only
        print("matplotlib missing: no PNG", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
