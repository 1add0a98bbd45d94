"""Private convex models (dpjax.convex) against dpjax's DP-SGD and diffprivlib.

For digits and Fashion-MNIST (raw pixels, scaled by the format's maximum: 16 and
255, data-independent), at epsilon in {0.5, 1, 3, 8}, delta = 1e-5, over seeds:

* each mechanism of :func:`dpjax.convex.private_fit` (output perturbation with
  Gaussian or L2-Laplace noise on multinomial logistic regression; objective
  perturbation and approximate minima perturbation on one-vs-rest logistic
  regression);
* dpjax's DP-SGD (``dpjax.training.train``, model ``"logreg"``, the same linear
  softmax model);
* diffprivlib's ``LogisticRegression`` when a Python with it is given
  (``--diffprivlib-python``; it needs scikit-learn < 1.7, so it runs in a separate
  virtual environment on the same arrays).

Hyperparameters (l2_reg, data_norm; for DP-SGD lr and batch size; for diffprivlib
data_norm) are chosen on the validation split (mean validation accuracy over the
tuning seeds), never on test; the JSON lists every configuration tried. The
tuning's own privacy cost is NOT included in the reported epsilon (standard in
the literature compared against; Papernot & Steinke 2022).

Usage::

    python benchmarks/convex.py              # the plan in the JSON (about 20 min, 2 cores)
    python benchmarks/convex.py --quick      # < 1 min, written to results/quick/
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any

_path = pathlib.Path(__file__).resolve().parent
if str(_path) not in sys.path:
    sys.path.insert(0, str(_path))

import common  # noqa: E402

RESULTS = _path / "results"
DELTA = 1e-5
EPSILONS = (0.5, 1.0, 3.0, 8.0)
# name: (loss, mechanism, noise)
MECHANISMS = {
    "output-perturbation (Gaussian)": ("multinomial", "output-perturbation", "gaussian"),
    "output-perturbation (L2-Laplace, pure eps)": ("multinomial", "output-perturbation", "laplace"),
    "objective-perturbation (pure eps, OvR)": ("logistic", "objective-perturbation", "laplace"),
    "approximate-minima (Gaussian output, OvR)": ("logistic", "approximate-minima", "gaussian"),
    "approximate-minima (pure eps, OvR)": ("logistic", "approximate-minima", "laplace"),
}
GRIDS = {
    "digits": {"l2_reg": [1e-3, 1e-2, 1e-1, 1.0], "data_norm": [1.0, 2.0, 4.0]},
    "fashion-mnist": {"l2_reg": [1e-4, 1e-3, 1e-2], "data_norm": [3.0, 6.0]},
}
# DP-SGD on the logreg model. digits: utility.json's validation-tuned choice per epsilon
# (12 configurations tried there). fashion-mnist: tuned here on validation.
DPSGD_DIGITS = {
    0.5: {"optimizer": "adam", "lr": 0.03, "batch_size": 64, "epochs": 20},
    1.0: {"optimizer": "adam", "lr": 0.03, "batch_size": 256, "epochs": 60},
    3.0: {"optimizer": "adam", "lr": 0.01, "batch_size": 64, "epochs": 60},
    8.0: {"optimizer": "adam", "lr": 0.03, "batch_size": 64, "epochs": 60},
}
DPSGD_FMNIST_GRID = [
    {"optimizer": "adam", "lr": 3e-3, "batch_size": 1024, "epochs": 10},
    {"optimizer": "adam", "lr": 1e-2, "batch_size": 1024, "epochs": 10},
]
# The reduced Fashion-MNIST plan (--reduced): what fit in the time on a shared 2-core machine.
REDUCED = {
    "grid": {"l2_reg": [1e-3, 3e-3, 1e-2], "data_norm": [4.0]},
    "mechanisms": ["output-perturbation (Gaussian)", "output-perturbation (L2-Laplace, pure eps)"],
    "dpsgd": [{"optimizer": "adam", "lr": 1e-2, "batch_size": 1024, "epochs": 5}],
    "dpsgd_epsilons": (0.5, 1.0),
    "dpsgd_seeds": 1,
}
TOL_FRACTION = 0.05  # solver tolerance 0.05 L / n: +5 % sensitivity, reachable in float32

_DIFFPRIVLIB_SCRIPT = r"""
import json, sys, warnings
import numpy as np
from diffprivlib.models import LogisticRegression
import diffprivlib, sklearn
d = np.load(sys.argv[1]); plan = json.loads(sys.argv[2])
out = {"versions": {"diffprivlib": diffprivlib.__version__, "scikit-learn": sklearn.__version__},
       "runs": []}
for eps, norm, seed in plan:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(epsilon=eps, data_norm=norm, random_state=seed, max_iter=200,
                                 bounds=None)
        clf.fit(d["xtr"], d["ytr"])
    out["runs"].append({"epsilon": eps, "data_norm": norm, "seed": seed,
                        "val": float(clf.score(d["xva"], d["yva"])),
                        "test": float(clf.score(d["xte"], d["yte"]))})
print(json.dumps(out))
"""


def _flat(split) -> Any:
    return split.x.reshape(len(split), -1)


def _accuracy(problem, params, split) -> float:
    import numpy as np

    feats, _ = problem.prepare(_flat(split))
    scores = np.asarray(feats) @ params
    return float(np.mean(scores.argmax(axis=1) == split.y))


def run_convex(
    data, name: str, eps_list, seeds, grid, tune_seeds, mechanisms=MECHANISMS
) -> list[dict[str, Any]]:
    """Every mechanism: tune (l2_reg, data_norm) on validation, then test over `seeds`."""
    import dpjax
    from dpjax.convex import ConvexProblem, private_fit

    points = []
    warm: dict[tuple, Any] = {}
    for label, (loss, mechanism, noise) in mechanisms.items():
        if name == "fashion-mnist" and loss != "multinomial":
            continue  # OvR pure-eps mechanisms: see the JSON's skipped note
        for eps in eps_list:
            start = time.perf_counter()
            trials = []
            for l2_reg, data_norm in itertools.product(grid["l2_reg"], grid["data_norm"]):
                problem = ConvexProblem(loss, l2_reg, data_norm, num_classes=data.num_classes)
                n = len(data.train)
                tol = TOL_FRACTION * problem.lipschitz / n

                def fit(
                    seed, problem=problem, tol=tol, l2_reg=l2_reg, data_norm=data_norm,
                    mechanism=mechanism, noise=noise, eps=eps, loss=loss,
                ):  # fmt: skip
                    return private_fit(
                        problem,
                        _flat(data.train),
                        data.train.y,
                        mechanism=mechanism,
                        noise=noise,
                        epsilon=eps,
                        delta=DELTA,
                        key=dpjax.key_from_seed(1000 * seed + 17),
                        tol=tol,
                        max_iter=1000,
                        # Warm start at the last RELEASED fit of the same problem (post-processing;
                        # iterations only: the point always ends within tol / lambda of the optimum).
                        init=warm.get((loss, l2_reg, data_norm)),
                    )

                val, fits = [], {}
                for seed in tune_seeds:
                    try:
                        fits[seed] = fit(seed)
                        warm[(loss, l2_reg, data_norm)] = fits[seed].params
                        val.append(_accuracy(problem, fits[seed].params, data.validation))
                    except Exception as err:  # a refused fit is a result
                        val.append(float("nan"))
                        print(f"    {label} eps={eps} {l2_reg} {data_norm}: {err}", flush=True)
                trials.append(
                    {
                        "l2_reg": l2_reg,
                        "data_norm": data_norm,
                        "validation_accuracy": statistics.fmean(val),
                        "problem": problem,
                        "fits": fits,
                        "fit": fit,
                    }
                )
            ok = [t for t in trials if not math.isnan(t["validation_accuracy"])]
            best = max(ok, key=lambda t: t["validation_accuracy"])
            tests, vals, spent = [], [], []
            for seed in seeds:
                f = best["fits"][seed] if seed in best["fits"] else best["fit"](seed)
                tests.append(_accuracy(best["problem"], f.params, data.test))
                vals.append(_accuracy(best["problem"], f.params, data.validation))
                tracker = dpjax.PrivacyTracker(math.inf, DELTA)
                for r in f.records:
                    tracker.record(r)
                spent.append(tracker.epsilon_spent())
            point = {
                "dataset": name,
                "method": label,
                "loss": loss,
                "mechanism": mechanism,
                "noise": noise,
                "epsilon": eps,
                "delta": DELTA if noise == "gaussian" or mechanism == "approximate-minima" else 0.0,
                "test_accuracy_mean": statistics.fmean(tests),
                "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "test_accuracy_per_seed": tests,
                "validation_accuracy_per_seed": vals,
                "epsilon_spent_per_seed": spent,
                "seeds": list(seeds),
                "hyperparameters": {"l2_reg": best["l2_reg"], "data_norm": best["data_norm"]},
                "hyperparameter_source": f"validation accuracy, mean over seeds {list(tune_seeds)}"
                f" ({len(trials)} configurations tried)",
                "tuning": [
                    {k: t[k] for k in ("l2_reg", "data_norm", "validation_accuracy")}
                    for t in trials
                ],
                "records": [r.to_json() for r in f.records],
                "wall_seconds": time.perf_counter() - start,
            }
            points.append(point)
            print(
                f"  {name} {label:<45} eps={eps:<4g} lambda={best['l2_reg']:g} "
                f"R={best['data_norm']:g} test={point['test_accuracy_mean']:.4f}"
                f"+-{point['test_accuracy_std']:.4f} ({point['wall_seconds']:.0f}s)",
                flush=True,
            )
    return points


def _dpsgd(data, name: str, eps: float, hp: dict[str, Any], seed: int) -> dict[str, Any]:
    import dpjax
    import dpjax.training

    config = dpjax.training.TrainConfig(
        dataset=name,
        model="logreg",
        target_epsilon=eps,
        delta=DELTA,
        clip_norm=1.0,
        batch_size=hp["batch_size"],
        epochs=hp["epochs"],
        lr=hp["lr"],
        optimizer=hp["optimizer"],
        seed=seed,
        eval_every=10**9,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        return dict(dpjax.training.train(config, dataset=data, progress=False).summary)


def run_dpsgd(data, name: str, eps_list, seeds, tune_seeds) -> list[dict[str, Any]]:
    """dpjax DP-SGD on logreg: digits with utility.json's tuned choice, fashion-mnist tuned here."""
    points = []
    for eps in eps_list:
        start = time.perf_counter()
        if name == "digits":
            candidates, source = (
                [DPSGD_DIGITS[eps]],
                ("benchmarks/results/utility.json's validation-tuned choice (12 configurations)"),
            )
        else:
            candidates = DPSGD_FMNIST_GRID
            source = f"validation accuracy, seeds {list(tune_seeds)} ({len(candidates)} tried)"
        runs: dict[int, dict[int, dict]] = {}
        for i, hp in enumerate(candidates):
            if len(candidates) > 1:
                runs[i] = {s: _dpsgd(data, name, eps, hp, s) for s in tune_seeds}
        if len(candidates) > 1:
            best = max(
                runs,
                key=lambda i: statistics.fmean(r["validation_accuracy"] for r in runs[i].values()),
            )
        else:
            best, runs[0] = 0, {}
        summaries = [
            runs[best].get(s) or _dpsgd(data, name, eps, candidates[best], s) for s in seeds
        ]
        tests = [s["test_accuracy"] for s in summaries]
        points.append(
            {
                "dataset": name,
                "method": "dpjax DP-SGD (logreg)",
                "epsilon": eps,
                "delta": DELTA,
                "test_accuracy_mean": statistics.fmean(tests),
                "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "test_accuracy_per_seed": tests,
                "validation_accuracy_per_seed": [s["validation_accuracy"] for s in summaries],
                "epsilon_spent_per_seed": [s["epsilon"] for s in summaries],
                "seeds": list(seeds),
                "hyperparameters": candidates[best] | {"clip_norm": 1.0},
                "hyperparameter_source": source,
                "noise_multiplier": summaries[0]["noise_multiplier"],
                "steps": summaries[0]["steps"],
                "wall_seconds": time.perf_counter() - start,
            }
        )
        print(
            f"  {name} {'dpjax DP-SGD (logreg)':<45} eps={eps:<4g} "
            f"test={points[-1]['test_accuracy_mean']:.4f}+-{points[-1]['test_accuracy_std']:.4f}"
            f" ({points[-1]['wall_seconds']:.0f}s)",
            flush=True,
        )
    return points


def run_diffprivlib(python: str, data, name, eps_list, seeds, norms) -> tuple[list, dict]:
    """diffprivlib's LogisticRegression in another interpreter, on the same arrays."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(
            path,
            xtr=_flat(data.train), ytr=data.train.y, xva=_flat(data.validation),
            yva=data.validation.y, xte=_flat(data.test), yte=data.test.y,
        )  # fmt: skip
        plan = [[e, r, s] for e in eps_list for r in norms for s in seeds]
        out = subprocess.run(
            [python, "-c", _DIFFPRIVLIB_SCRIPT, path, json.dumps(plan)],
            capture_output=True,
            text=True,
            check=True,
        )
    result = json.loads(out.stdout)
    points = []
    for eps in eps_list:
        runs = [r for r in result["runs"] if r["epsilon"] == eps]
        by_norm = {r: [x for x in runs if x["data_norm"] == r] for r in norms}
        best = max(norms, key=lambda r: statistics.fmean(x["val"] for x in by_norm[r]))
        tests = [x["test"] for x in by_norm[best]]
        points.append(
            {
                "dataset": name,
                "method": "diffprivlib LogisticRegression",
                "epsilon": eps,
                "delta": 0.0,
                "test_accuracy_mean": statistics.fmean(tests),
                "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "test_accuracy_per_seed": tests,
                "seeds": list(seeds),
                "hyperparameters": {"data_norm": best, "C": 1.0},
                "hyperparameter_source": f"validation accuracy, mean over the seeds "
                f"({len(norms)} data_norm values tried)",
            }
        )
        print(
            f"  {name} {'diffprivlib LogisticRegression':<45} eps={eps:<4g} data_norm={best} "
            f"test={points[-1]['test_accuracy_mean']:.4f}",
            flush=True,
        )
    return points, result["versions"]


def dpsgd_digits_from_utility() -> list[dict[str, Any]]:
    """dpjax's DP-SGD logreg points on digits as measured by benchmarks/utility.py (3 seeds)."""
    path = RESULTS / "utility.json"
    if not path.exists():
        return []
    points = []
    for p in json.loads(path.read_text())["points"]:
        if p["dataset"] == "digits" and p["model"] == "logreg" and p["target_epsilon"] in EPSILONS:
            points.append(
                {k: p[k] for k in p if k.startswith("test_accuracy") or k in ("hyperparameters",)}
                | {
                    "dataset": "digits",
                    "method": "dpjax DP-SGD (logreg)",
                    "epsilon": p["target_epsilon"],
                    "delta": p["delta"],
                    "seeds": p.get("seeds"),
                    "source": "benchmarks/results/utility.json (same model, split and delta; "
                    "hyperparameters tuned on validation there, 12 configurations)",
                }
            )
    return points


def plot(points: list[dict[str, Any]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({p["dataset"] for p in points})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for method in dict.fromkeys(p["method"] for p in points if p["dataset"] == ds):
            pts = sorted((p for p in points if p["dataset"] == ds and p["method"] == method),
                         key=lambda p: p["epsilon"])  # fmt: skip
            ax.errorbar(
                [p["epsilon"] for p in pts],
                [p["test_accuracy_mean"] for p in pts],
                yerr=[p["test_accuracy_std"] for p in pts],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (delta = 1e-5 where Gaussian)")
        ax.set_ylabel("test accuracy")
        ax.set_title(ds)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    common.save_figure(fig, path, "dpjax.convex vs DP-SGD vs diffprivlib (raw pixels)")


def goals(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals, met or not, from the measured points."""

    def get(ds, method, eps):
        for p in points:
            if p["dataset"] == ds and p["method"] == method and p["epsilon"] == eps:
                return p["test_accuracy_mean"]
        return None

    convex = [m for m in MECHANISMS]
    out: dict[str, Any] = {}
    best1 = max((a for m in convex if (a := get("digits", m, 1.0)) is not None), default=None)
    out["digits_eps1_ge_90"] = {"best_convex": best1, "met": best1 is not None and best1 >= 0.90}
    for ds in ("digits", "fashion-mnist"):
        for eps in (0.5, 1.0):
            sgd = get(ds, "dpjax DP-SGD (logreg)", eps)
            best = max((a for m in convex if (a := get(ds, m, eps)) is not None), default=None)
            out[f"{ds}_eps{eps:g}_beats_dpsgd"] = {
                "best_convex": best,
                "dpsgd": sgd,
                "met": None if best is None or sgd is None else best > sgd,
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny plan, results/quick/")
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--tune-seeds", type=int, default=5, help="noise seeds per configuration")
    parser.add_argument("--fmnist-dpsgd-seeds", type=int, default=3)
    parser.add_argument("--no-dpsgd", action="store_true")
    parser.add_argument("--diffprivlib-python", help="a Python with diffprivlib installed")
    parser.add_argument("--out", help="JSON path (default results/convex.json)")
    parser.add_argument("--merge", nargs="+", help="combine these result JSONs into --out")
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="the reduced Fashion-MNIST plan that fits a shared 2-core machine (see REDUCED)",
    )
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(pathlib.Path(p).read_text()) for p in args.merge]
        merged = parts[0] | {
            "points": [pt for part in parts for pt in part["points"]],
            "merged_from": args.merge,
            "wall_seconds_total": sum(part["wall_seconds_total"] for part in parts),
            "notes": {k: v for part in parts for k, v in part["notes"].items()},
        }
        for part in parts:
            if isinstance(part["diffprivlib"], dict):
                merged["diffprivlib"] = part["diffprivlib"]
        if not any(
            p["dataset"] == "digits" and p["method"].startswith("dpjax DP-SGD")
            for p in merged["points"]
        ):
            merged["points"] += dpsgd_digits_from_utility()
        merged["goals"] = goals(merged["points"])
        out = pathlib.Path(args.out or RESULTS / "convex.json")
        common.write_json(out, merged)
        plot(merged["points"], out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
        return 0

    import dpjax
    from dpjax.data import load_dataset

    start = time.perf_counter()
    eps_list = (1.0,) if args.quick else EPSILONS
    seeds = range(1 if args.quick else args.seeds)
    # Tuning draws its noise from seeds disjoint from the reported ones (no winner's curse).
    tune_seeds = (
        range(100, 101) if args.quick or args.reduced else range(100, 100 + args.tune_seeds)
    )
    points: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    for name in ["digits"] if args.quick else args.datasets:
        data = load_dataset(name, seed=0)
        grid = {"l2_reg": [1e-1], "data_norm": [2.0]} if args.quick else GRIDS[name]
        mechanisms = MECHANISMS
        if args.quick:  # the two Gaussian mechanisms
            mechanisms = {k: v for k, v in MECHANISMS.items() if v[2] == "gaussian"}
        if args.reduced:
            grid = REDUCED["grid"]
            mechanisms = {k: MECHANISMS[k] for k in REDUCED["mechanisms"]}
            global DPSGD_FMNIST_GRID
            DPSGD_FMNIST_GRID = REDUCED["dpsgd"]
        points += run_convex(data, name, eps_list, seeds, grid, tune_seeds, mechanisms)
        if not args.no_dpsgd and not args.quick:
            sgd_seeds = seeds if name == "digits" else range(args.fmnist_dpsgd_seeds)
            sgd_eps = eps_list if name == "digits" else (0.5, 1.0)
            if args.reduced:
                sgd_seeds, sgd_eps = range(REDUCED["dpsgd_seeds"]), REDUCED["dpsgd_epsilons"]
            points += run_dpsgd(data, name, sgd_eps, sgd_seeds, range(1))
        if args.diffprivlib_python and not args.quick:
            dpl_seeds = seeds if name == "digits" else range(2)
            dpl_eps = eps_list if name == "digits" else (0.5, 1.0)
            norms = [2.0, 4.0, 8.0] if name == "digits" else [4.0, 8.0]
            pts, versions = run_diffprivlib(
                args.diffprivlib_python, data, name, dpl_eps, dpl_seeds, norms
            )
            points += pts
    if args.reduced:
        notes["fashion-mnist"] = (
            f"REDUCED plan (the machine: 2 cores shared by 7 agents, load average ~20): {REDUCED}; "
            f"{args.seeds} seeds for the convex mechanisms, tuned on validation with one noise "
            "seed disjoint from the reported ones; "
            "objective perturbation and approximate minima not run on Fashion-MNIST; DP-SGD "
            "NOT tuned (one configuration, one seed): indicative only; diffprivlib not run."
        )
    elif not args.quick and "fashion-mnist" in args.datasets:
        notes["fashion-mnist"] = (
            "objective perturbation and approximate minima (pure-eps one-vs-rest, 10 releases of "
            "785-dimensional L2-Laplace noise at eps/10 each) were not run on Fashion-MNIST (time); "
            "DP-SGD ran at eps 0.5 and 1 only, with "
            f"{args.fmnist_dpsgd_seeds} seeds; diffprivlib at eps 0.5 and 1 with 2 seeds."
        )
    payload = {
        "benchmark": "convex",
        "description": __doc__.split("\n\n")[0],
        "quick": args.quick,
        "delta": DELTA,
        "neighbours": "replace-one (output perturbation: 2 L / (n lambda), the same bound under "
        "add/remove since the objective is the mean over the rows given; objective perturbation and "
        "approximate minima are replace-one only)",
        "features": "raw pixels / format maximum (16 digits, 255 Fashion-MNIST), flattened; "
        "each row clipped to data_norm, a constant 1 appended after clipping",
        "solver_tolerance": f"gradient norm <= {TOL_FRACTION} L / n, which adds 2 tol / lambda "
        f"({100 * TOL_FRACTION:g} % of 2 L / (n lambda)) to the output sensitivity; L-BFGS, then a "
        "public fixed number of accelerated steps if it misses tol; warm-started at the previous "
        "RELEASED fit of the same problem (post-processing; iterations only)",
        "tuning_privacy_cost": "NOT included in the reported epsilon (as in utility.json)",
        "grids": GRIDS,
        "dpsgd_fashion_mnist_grid": DPSGD_FMNIST_GRID,
        "diffprivlib": versions or "not run (needs scikit-learn < 1.7; pass --diffprivlib-python)",
        "notes": notes,
        "machine": common.machine_description(),
        "dpjax_version": dpjax.__version__,
        "points": points,
        "goals": goals(points),
        "wall_seconds_total": time.perf_counter() - start,
    }
    out = pathlib.Path(args.out) if args.out else (
        RESULTS / "quick" / "convex.json" if args.quick else RESULTS / "convex.json"
    )  # fmt: skip
    common.write_json(out, payload)
    plot(points, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
