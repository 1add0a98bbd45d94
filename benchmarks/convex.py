"""Private convex models (dpjax.convex) against dpjax's DP-SGD and diffprivlib.

For digits and Fashion-MNIST (raw pixels, scaled by the format's maximum: 16 and
255, data-independent), at epsilon in {0.5, 1, 3, 8}, delta = 1e-5, over seeds:

* each mechanism of :func:`dpjax.convex.private_fit` (output perturbation with
  Gaussian or L2-Laplace noise on multinomial logistic regression, under
  add/remove neighbours with a public normalizer N = the training split's size,
  sensitivity ``L / (N lambda)``, and under replace-one, ``2 L / (n lambda)``;
  objective perturbation and approximate minima perturbation on one-vs-rest
  logistic regression, replace-one);
* dpjax's DP-SGD (``dpjax.training.train``, model ``"logreg"``, the same linear
  softmax model);
* diffprivlib's ``LogisticRegression`` when a Python with it is given
  (``--diffprivlib-python``; it needs scikit-learn < 1.7, so it runs in a separate
  virtual environment on the same arrays).

Hyperparameters (l2_reg, data_norm, fit_intercept and the centre subtracted from
the pixels: none, the public constant 0.5, or a privately released mean, recorded
in the same account; for DP-SGD lr and batch size; for diffprivlib data_norm) are
chosen on the validation split (mean validation accuracy over the tuning seeds),
never on test; the JSON lists every configuration tried and their number. The
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
# name: (loss, mechanism, noise, neighbours, public normalizer N = the training split's size)
MECHANISMS = {
    "output-perturbation (Gaussian, add/remove, public N)": (
        "multinomial", "output-perturbation", "gaussian", "add-remove", True,
    ),
    "output-perturbation (Gaussian, replace-one)": (
        "multinomial", "output-perturbation", "gaussian", "replace-one", False,
    ),
    "output-perturbation (L2-Laplace, pure eps, add/remove, public N)": (
        "multinomial", "output-perturbation", "laplace", "add-remove", True,
    ),
    "output-perturbation (L2-Laplace, pure eps, replace-one)": (
        "multinomial", "output-perturbation", "laplace", "replace-one", False,
    ),
    "objective-perturbation (pure eps, OvR, replace-one)": (
        "logistic", "objective-perturbation", "laplace", "replace-one", False,
    ),
    "approximate-minima (Gaussian output, OvR, replace-one)": (
        "logistic", "approximate-minima", "gaussian", "replace-one", False,
    ),
    "approximate-minima (pure eps, OvR, replace-one)": (
        "logistic", "approximate-minima", "laplace", "replace-one", False,
    ),
}  # fmt: skip
# Hyperparameters tuned on validation. centre: what is subtracted from every feature before
# clipping: "none"; "0.5" (the midpoint of the [0, 1] pixel range, a public constant: [0, 1]
# mapped to [-0.5, 0.5]); "private-mean" (the training mean of rows clipped to MEAN_NORM,
# released by the Gaussian mechanism and recorded in the same tracker, Gaussian rows only).
GRIDS = {
    "digits": {
        "l2_reg": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 100.0],
        "data_norm": [0.25, 0.5, 1.0, 2.0, 4.0],
        "fit_intercept": [True, False],
        "centre": ["none", "0.5", "private-mean(ratio=2)", "private-mean(ratio=4)",
                   "private-mean(ratio=8)"],
    },
    "fashion-mnist": {
        "l2_reg": [1e-3, 1e-2, 1e-1, 1.0, 10.0],
        "data_norm": [4.0, 8.0],
        "fit_intercept": [True, False],
        "centre": ["none", "0.5", "private-mean(ratio=4)"],
    },
}  # fmt: skip
# The objective-based OvR mechanisms (pure eps, 10 releases): a smaller grid (they stayed
# near chance in every earlier run).
GRIDS_OVR = {
    "digits": {
        "l2_reg": [1e-3, 1e-2, 1e-1, 1.0, 10.0],
        "data_norm": [1.0, 2.0, 4.0],
        "fit_intercept": [True, False],
        "centre": ["none", "0.5"],
    },
    "fashion-mnist": {"l2_reg": [1e-4, 1e-3, 1e-2], "data_norm": [3.0, 6.0]},
}
# The private mean: rows clipped to MEAN_NORM (half the largest norm of an image in [0, 1]:
# sqrt(d) / 2, public), sum / N released with noise multiplier `ratio` times the output's
# (a tuned knob: "private-mean(ratio=4)"), so the two Gaussian releases compose like one of
# std sigma_eff with sigma_out = sigma_eff * sqrt(1 + 1 / ratio**2): 3 % more output noise
# for ratio 4.
MEAN_NORM = {"digits": 4.0, "fashion-mnist": 14.0}
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
# The reduced Fashion-MNIST plan (--reduced): what fits in the time on a shared 2-core machine.
REDUCED = {
    "grid": {
        "l2_reg": [1e-3, 3e-3, 1e-2, 1e-1, 1.0],
        "data_norm": [4.0, 8.0],
        "fit_intercept": [False],
        "centre": ["none", "private-mean(ratio=4)"],
    },
    "mechanisms": [
        "output-perturbation (Gaussian, add/remove, public N)",
        "output-perturbation (Gaussian, replace-one)",
        "output-perturbation (L2-Laplace, pure eps, add/remove, public N)",
    ],
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


def _accuracy(problem, params, split, centre=0.0) -> float:
    import numpy as np

    feats, _ = problem.prepare(_flat(split) - centre)
    scores = np.asarray(feats) @ params
    return float(np.mean(scores.argmax(axis=1) == split.y))


def _configs(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the grid (fit_intercept True and centre "none" when not given)."""
    full = {"fit_intercept": [True], "centre": ["none"]} | grid
    keys = ("l2_reg", "data_norm", "fit_intercept", "centre")
    values = itertools.product(*(full[k] for k in keys))
    return [dict(zip(keys, v, strict=True)) for v in values]


def split_gaussian(epsilon: float, delta: float, ratio: float) -> tuple[float, float]:
    """(sigma_mean, epsilon_out): a mean release and an output release that compose to epsilon.

    Two Gaussian releases of noise multipliers s1, s2 compose like one of
    ``(s1**-2 + s2**-2)**-0.5``; with ``s_mean = ratio * s_out`` that is the
    single release's sigma when ``s_out = sigma * sqrt(1 + 1 / ratio**2)`` (times 1.002 for
    the accountant's discretisation). epsilon_out is the epsilon of s_out alone, which
    private_fit calibrates to; the tracker checks the composition (it refuses an overrun).
    """
    import dpjax
    from dpjax.convex import calibrate_gaussian

    sigma = calibrate_gaussian(epsilon, delta)
    s_out = 1.002 * sigma * math.sqrt(1.0 + ratio**-2)
    probe = dpjax.PrivacyTracker(math.inf, delta)
    probe.record(dpjax.GaussianRelease(s_out))
    return ratio * s_out, probe.epsilon_spent()


def private_mean(problem, x, clip: float, sigma: float, key, tracker):
    """The mean of the rows clipped to `clip`, plus Gaussian noise; recorded BEFORE it is computed.

    Divides by the problem's normalizer (its public N, else the number of rows n). L2
    sensitivity: ``clip / N`` under add/remove with a public N (one term of the sum), else
    ``2 clip / N`` (replace-one; or a moving n). Non-finite rows count as zero rows.
    """
    import numpy as np

    import dpjax
    from dpjax.convex import gaussian_noise

    x = np.asarray(x, np.float64)
    n = x.shape[0]
    big_n = problem.normalizer_for(n)
    factor = 1.0 if problem.normalizer is not None and problem.neighbours == "add-remove" else 2.0
    tracker.record(dpjax.GaussianRelease(sigma))  # before anything is computed from the data
    x = np.where(np.all(np.isfinite(x), axis=1, keepdims=True), x, 0.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x * np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    noise = np.asarray(gaussian_noise((x.shape[1],), sigma * factor * clip / big_n, key))
    return (x.sum(axis=0) / big_n + noise).astype(np.float32)


def run_convex(
    data, name: str, eps_list, seeds, grid, tune_seeds, mechanisms=MECHANISMS, grid_ovr=None
) -> list[dict[str, Any]]:
    """Every mechanism: tune the grid on validation, then test over `seeds`."""

    import dpjax
    from dpjax.convex import ConvexProblem, private_fit

    points = []
    warm: dict[tuple, Any] = {}
    n = len(data.train)
    x_train = _flat(data.train)
    mean_norm = MEAN_NORM.get(name, math.sqrt(x_train.shape[1]) / 2.0)
    for label, (loss, mechanism, noise, neighbours, public_n) in mechanisms.items():
        if name == "fashion-mnist" and loss != "multinomial":
            continue  # OvR pure-eps mechanisms: see the JSON's skipped note
        configs = _configs(grid if loss == "multinomial" or grid_ovr is None else grid_ovr)
        if noise != "gaussian" or mechanism != "output-perturbation":  # the mean is Gaussian
            configs = [c for c in configs if not c["centre"].startswith("private-mean")]
        for eps in eps_list:
            start = time.perf_counter()
            trials = []
            for cfg in configs:
                problem = ConvexProblem(
                    loss, cfg["l2_reg"], cfg["data_norm"], cfg["fit_intercept"],
                    num_classes=data.num_classes, neighbours=neighbours,
                    normalizer=n if public_n else None,
                )  # fmt: skip
                tol = TOL_FRACTION * problem.lipschitz / problem.normalizer_for(n)
                wkey = (label, tuple(cfg.values()))

                def fit(seed, problem=problem, tol=tol, cfg=cfg, wkey=wkey, eps=eps,
                        mechanism=mechanism, noise=noise):  # fmt: skip
                    """(released params, centre vector, records) of one seed."""
                    fit_eps, centre, prior = eps, 0.0, ()
                    tracker = dpjax.PrivacyTracker(eps, DELTA)
                    if cfg["centre"] == "0.5":
                        centre = 0.5
                    elif cfg["centre"].startswith("private-mean"):
                        ratio = float(cfg["centre"].partition("ratio=")[2].rstrip(")") or 4.0)
                        sigma_mean, fit_eps = split_gaussian(eps, DELTA, ratio)
                        centre = private_mean(
                            problem, x_train, mean_norm, sigma_mean,
                            dpjax.key_from_seed(1000 * seed + 29), tracker,
                        )  # fmt: skip
                        prior = tracker.releases
                    f = private_fit(
                        problem,
                        x_train - centre,
                        data.train.y,
                        mechanism=mechanism,
                        noise=noise,
                        epsilon=fit_eps,
                        delta=DELTA,
                        key=dpjax.key_from_seed(1000 * seed + 17),
                        tracker=tracker,  # target eps: refuses if the records exceed it
                        tol=tol,
                        max_iter=1000,
                        # Warm start at the last RELEASED fit of the same problem (post-processing;
                        # iterations only: the point always ends within tol / lambda of the optimum).
                        init=warm.get(wkey),
                    )
                    warm[wkey] = f.params
                    return f, centre, prior + f.records

                val, fits = [], {}
                for seed in tune_seeds:
                    try:
                        fits[seed] = fit(seed)
                        val.append(
                            _accuracy(problem, fits[seed][0].params, data.validation, fits[seed][1])
                        )
                    except Exception as err:  # a refused fit is a result
                        val.append(float("nan"))
                        print(f"    {label} eps={eps} {cfg}: {err}", flush=True)
                trials.append(
                    cfg | {"validation_accuracy": statistics.fmean(val), "problem": problem,
                           "fits": fits, "fit": fit}
                )  # fmt: skip
            ok = [t for t in trials if not math.isnan(t["validation_accuracy"])]
            best = max(ok, key=lambda t: t["validation_accuracy"])
            tests, vals, spent = [], [], []
            for seed in seeds:
                f, centre, records = (
                    best["fits"][seed] if seed in best["fits"] else best["fit"](seed)
                )
                tests.append(_accuracy(best["problem"], f.params, data.test, centre))
                vals.append(_accuracy(best["problem"], f.params, data.validation, centre))
                tracker = dpjax.PrivacyTracker(math.inf, DELTA)
                for r in records:
                    tracker.record(r)
                spent.append(tracker.epsilon_spent())
            keys = ("l2_reg", "data_norm", "fit_intercept", "centre")
            point = {
                "dataset": name,
                "method": label,
                "loss": loss,
                "mechanism": mechanism,
                "noise": noise,
                "neighbours": neighbours,
                "normalizer": n if public_n else None,
                "sensitivity_rule": f.sensitivity_rule,
                "epsilon": eps,
                "delta": DELTA if noise == "gaussian" or mechanism == "approximate-minima" else 0.0,
                "test_accuracy_mean": statistics.fmean(tests),
                "test_accuracy_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                "test_accuracy_per_seed": tests,
                "validation_accuracy_per_seed": vals,
                "epsilon_spent_per_seed": spent,
                "seeds": list(seeds),
                "hyperparameters": {k: best[k] for k in keys},
                "hyperparameter_source": f"validation accuracy, mean over seeds {list(tune_seeds)}"
                f" ({len(trials)} configurations tried)",
                "configurations_tried": len(trials),
                "tuning": [{k: t[k] for k in (*keys, "validation_accuracy")} for t in trials],
                "records": [r.to_json() for r in records],
                "wall_seconds": time.perf_counter() - start,
            }
            points.append(point)
            hp = " ".join(f"{k}={best[k]}" for k in keys)
            print(
                f"  {name} {label:<58} eps={eps:<4g} {hp} test={point['test_accuracy_mean']:.4f}"
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
    grids_run: dict[str, Any] = {}
    for name in ["digits"] if args.quick else args.datasets:
        data = load_dataset(name, seed=0)
        grid = GRIDS[name]
        grid_ovr = GRIDS_OVR[name]
        mechanisms = MECHANISMS
        if args.quick:  # the Gaussian mechanisms, one configuration (and the private mean)
            grid = {
                "l2_reg": [1.0],
                "data_norm": [2.0],
                "centre": ["none", "private-mean(ratio=4)"],
            }
            grid_ovr = {"l2_reg": [1e-1], "data_norm": [2.0]}
            mechanisms = {k: v for k, v in MECHANISMS.items() if v[2] == "gaussian"}
        if args.reduced:
            grid = REDUCED["grid"]
            mechanisms = {k: MECHANISMS[k] for k in REDUCED["mechanisms"]}
            global DPSGD_FMNIST_GRID
            DPSGD_FMNIST_GRID = REDUCED["dpsgd"]
        points += run_convex(
            data, name, eps_list, seeds, grid, tune_seeds, mechanisms, grid_ovr=grid_ovr
        )
        grids_run[name] = {"multinomial": grid, "one-vs-rest": grid_ovr}
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
        "neighbours": "each row's method says it. 'add/remove, public N': output perturbation "
        "with ConvexProblem(normalizer=N), N = the training split's size (public, as dpjax treats "
        "the data set size; fixed before the fit), objective (1/N) sum loss + (lambda/2)||theta||^2, "
        "sensitivity L / (N lambda): the relation of dpjax's DP-SGD, so the two compose. "
        "'replace-one': the objective is the mean over the rows given, sensitivity 2 L / (n lambda) "
        "(the same bound holds for add/remove then); objective perturbation and approximate minima "
        "are replace-one only",
        "features": "raw pixels / format maximum (16 digits, 255 Fashion-MNIST), flattened; minus "
        "the centre (grid: 'none'; '0.5', a public constant; 'private-mean', the training mean of "
        f"rows clipped to MEAN_NORM={MEAN_NORM} released by the Gaussian mechanism with "
        "'ratio' times the output's noise multiplier and recorded in the same "
        "tracker, the output's epsilon lowered so that both compose to the row's epsilon; the "
        "records are in each point); each row clipped to data_norm, then a constant 1 appended "
        "if fit_intercept",
        "solver_tolerance": f"gradient norm <= {TOL_FRACTION} L / N (N the objective's "
        "normalizer), which adds 2 tol / lambda "
        f"({100 * TOL_FRACTION:g} % of 2 L / (N lambda)) to the output sensitivity; L-BFGS, then a "
        "public fixed number of accelerated steps if it misses tol; warm-started at the previous "
        "RELEASED fit of the same problem (post-processing; iterations only)",
        "tuning_privacy_cost": "NOT included in the reported epsilon (as in utility.json)",
        "grids": grids_run,
        "configurations_tried": {
            f"{p['dataset']} {p['method']} eps={p['epsilon']:g}": p["configurations_tried"]
            for p in points
            if "configurations_tried" in p
        },
        "dpsgd_fashion_mnist_grid": DPSGD_FMNIST_GRID,
        "diffprivlib": versions
        or "not run: it needs scikit-learn < 1.7, not installable here (pass --diffprivlib-python "
        "with a separate environment); no diffprivlib rows have been measured by this benchmark",
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
