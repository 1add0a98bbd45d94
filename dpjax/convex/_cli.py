"""The ``dpjax convex`` subcommand: a private convex model on a real data set (host side).

Example::

    dpjax convex --dataset digits --model logreg --mechanism output-perturbation \\
        --target-epsilon 1 --json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import jax
import numpy as np

import dpjax
from dpjax.convex._mechanisms import MECHANISMS, NOISES, private_fit
from dpjax.convex._problems import ConvexProblem
from dpjax.data import DATASET_NAMES, load_dataset

MODELS = {"logreg": "multinomial", "logreg-ovr": "logistic", "svm": "huber_svm"}
"""``--model`` names and their losses (multinomial logistic, OvR logistic, OvR smoothed hinge)."""


def add_parser(subparsers: Any) -> None:
    """Adds the ``convex`` subcommand to the ``dpjax`` command line.

    Args:
      subparsers: the object returned by ``ArgumentParser.add_subparsers``.

    Example:
      >>> import argparse
      >>> from dpjax.convex._cli import add_parser
      >>> sub = argparse.ArgumentParser(prog="dpjax").add_subparsers()
      >>> add_parser(sub)
    """
    parser = subparsers.add_parser(
        "convex",
        help="a private convex model (output/objective perturbation), no DP-SGD",
        description="Trains L2-regularized logistic regression or a smoothed-hinge SVM to a "
        "gradient-norm tolerance and privatizes it by output, objective or approximate minima "
        "perturbation; prints test accuracy and the epsilon spent. Rows are clipped to "
        "--data-norm (never computed from the data); neighbours: replace one example (output "
        "perturbation: or add/remove one), the data set size public unless --normalizer gives "
        "a public bound N. --seed is research mode: "
        "the JSON says so but never holds the seed.",
    )
    parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASET_NAMES)}")
    parser.add_argument("--model", default="logreg", help=f"one of {', '.join(MODELS)}")
    parser.add_argument(
        "--mechanism", default="output-perturbation", help=f"one of {', '.join(MECHANISMS)}"
    )
    parser.add_argument("--noise", default="gaussian", help=f"one of {', '.join(NOISES)}")
    parser.add_argument("--target-epsilon", type=float, default=1.0, help="budget (default 1)")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta (default 1e-5)")
    parser.add_argument(
        "--l2-reg", type=float, default=None, help="lambda > 0 (default 1e-3 digits, 1e-4 else)"
    )
    parser.add_argument(
        "--data-norm",
        type=float,
        default=None,
        help="clip norm of the pixel vectors in [0, 1] (default 4 digits, 8 else)",
    )
    parser.add_argument(
        "--neighbours",
        default="replace-one",
        help="replace-one (default) or add-remove (output perturbation only; DP-SGD's relation)",
    )
    parser.add_argument(
        "--normalizer",
        type=int,
        default=None,
        help="a public data set size bound N, chosen without looking at the data: the "
        "objective divides by N (add-remove sensitivity L / (N lambda), half the default)",
    )
    parser.add_argument("--seed", type=int, default=None, help="noise seed (default: secret)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--json-out", help="write the JSON summary here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``dpjax convex``; returns the exit status.

    **Privacy:** the JSON summary holds the released parameters' public numbers
    (records, sensitivity, noise scale, n) and the un-noised accuracies (labelled
    as such); never a seed or key (``"seed"`` says in words whether it was explicit
    or secret, as the trainer's summary does). Until the issue 17 review it held
    the seed's value (with ``--seed``: whoever read it could regenerate the noise
    and subtract it) and the solver's ``grad_norm`` and ``iterations`` on the
    private data.

    Raises:
      ValueError: for invalid input (the CLI prints ``dpjax: error: ...``).
    """
    if args.model not in MODELS:
        raise ValueError(f"--model {args.model!r} is not one of {', '.join(MODELS)}.")
    if args.dataset not in DATASET_NAMES:
        raise ValueError(f"--dataset {args.dataset!r} is not one of {', '.join(DATASET_NAMES)}.")
    start = time.perf_counter()
    ds = load_dataset(args.dataset, seed=0)
    small = args.dataset == "digits"
    l2_reg = args.l2_reg if args.l2_reg is not None else (1e-3 if small else 1e-4)
    data_norm = args.data_norm if args.data_norm is not None else (4.0 if small else 8.0)
    problem = ConvexProblem(
        MODELS[args.model],
        l2_reg=l2_reg,
        data_norm=data_norm,
        num_classes=int(ds.num_classes or 2),
        neighbours=args.neighbours,
        normalizer=args.normalizer,
    )
    flat = lambda split: split.x.reshape(len(split), -1)  # noqa: E731
    tracker = dpjax.PrivacyTracker(args.target_epsilon, args.delta, dataset_size=len(ds.train))
    key = dpjax.secret_key() if args.seed is None else dpjax.key_from_seed(args.seed)
    fit = private_fit(
        problem,
        flat(ds.train),
        ds.train.y,
        mechanism=args.mechanism,
        noise=args.noise,
        epsilon=args.target_epsilon,
        delta=args.delta if args.noise == "gaussian" else None,
        key=key,
        tracker=tracker,
    )

    def accuracy(split) -> float:
        if len(split) == 0:
            return math.nan
        feats, _ = problem.prepare(flat(split))
        scores = np.asarray(feats) @ fit.params
        pred = (scores[:, 0] > 0).astype(int) if scores.shape[1] == 1 else scores.argmax(1)
        return float(np.mean(pred == split.y))

    summary = {
        "command": "convex",
        "private": True,
        "dataset": args.dataset,
        "model": args.model,
        "loss": problem.loss,
        "test_accuracy": accuracy(ds.test),
        "validation_accuracy": accuracy(ds.validation),
        "epsilon": tracker.epsilon_spent(),
        "target_epsilon": args.target_epsilon,
        "delta": args.delta,
        "accountant": tracker.accountant,
        "l2_reg": l2_reg,
        "data_norm": data_norm,
        "lipschitz": problem.lipschitz,
        "n": fit.n,
        "research_mode": args.seed is not None,
        # what the trainer's summary says too: never the value (key_from_seed(seed) is the key)
        "seed": (
            "secret (drawn from the OS; not recorded)"
            if args.seed is None
            else "explicit (reproducible research; not recorded: whoever knows it can "
            "regenerate the noise)"
        ),
        "wall_seconds": time.perf_counter() - start,
        "device": jax.devices()[0].device_kind,
        "accuracy_note": "accuracies are computed from the data without noise: for the data "
        "owner, not for release",
    } | fit.summary()
    summary["epsilon"] = tracker.epsilon_spent()
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{args.dataset} / {args.model} ({args.mechanism}, {args.noise} noise): test accuracy "
        f"{summary['test_accuracy']:.4f} (validation {summary['validation_accuracy']:.4f})"
    )
    print(
        f"privacy spent: epsilon = {summary['epsilon']:.4f} (target {args.target_epsilon:g}), "
        f"delta = {args.delta:g}; l2_reg {l2_reg:g}, data_norm {data_norm:g}, "
        f"sensitivity {fit.sensitivity:.4g} ({fit.sensitivity_rule}), "
        f"noise scale {fit.noise_scale:.4g}"
    )
    print(
        "(accuracies are computed from the data without noise: for the data owner, not for release)"
    )
    print(f"wall time {summary['wall_seconds']:.1f} s on {summary['device']}")
    return 0
