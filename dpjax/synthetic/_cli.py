"""``dpjax synthesize``: a private synthetic data set with its privacy statement (host side).

Example::

    dpjax synthesize --dataset fashion-mnist --target-epsilon 10 --out synth/

writes ``synth/samples.npz`` (``x``, ``y``), ``synth/samples.png`` (a grid per
class; needs matplotlib, from the ``bench`` extra) and ``synth/privacy.json``
(epsilon, delta, mechanism, what the guarantee covers, the accountant's state).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dpjax.data import DATASET_NAMES, load_dataset
from dpjax.synthetic._evaluate import tstr_accuracy
from dpjax.synthetic._synthesize import METHODS, sample_grid_png, synthesize


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds the ``synthesize`` subcommand.

    Example:
      >>> import argparse
      >>> from dpjax.synthetic._cli import add_parser
      >>> sub = argparse.ArgumentParser().add_subparsers()
      >>> add_parser(sub)
    """
    parser = subparsers.add_parser(
        "synthesize",
        help="spend a privacy budget once on a release, write labelled synthetic samples",
        description=(
            "One accounted Gaussian release of the training split, a generator fitted to it "
            "alone, samples (.npz), a sample grid (.png, if matplotlib is installed) and a JSON "
            "privacy statement."
        ),
    )
    parser.add_argument("--dataset", required=True, choices=[n for n in DATASET_NAMES])
    parser.add_argument("--target-epsilon", type=float, required=True, help="epsilon, > 0")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta in (0, 1/N)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--method", choices=METHODS, default="gaussian")
    parser.add_argument("--num-samples", type=int, help="default: the training split's size")
    parser.add_argument(
        "--seed", type=int, help="research mode: reproducible noise (never for sensitive data)"
    )
    parser.add_argument("--data-dir", help="where to look for data files first")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="also report TSTR accuracy on the real test split (a diagnostic, not private)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``dpjax synthesize``; returns the exit status."""
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    out = synthesize(
        dataset,
        target_epsilon=args.target_epsilon,
        delta=args.delta,
        method=args.method,
        num_samples=args.num_samples,
        seed=args.seed,
        progress=not args.no_progress and not args.json,
    )
    os.makedirs(args.out, exist_ok=True)
    samples = os.path.join(args.out, "samples.npz")
    np.savez_compressed(samples, x=out.x, y=out.y)
    grid = os.path.join(args.out, "samples.png")
    if not sample_grid_png(out.x, out.y, grid):
        grid = None
        print("dpjax: matplotlib is not installed (bench extra): no sample grid", file=sys.stderr)
    statement = os.path.join(args.out, "privacy.json")
    with open(statement, "w") as f:
        json.dump(out.statement, f, indent=2)
    summary = {
        "samples": samples,
        "grid": grid,
        "privacy_statement": statement,
        "epsilon": out.statement["epsilon"],
        "delta": out.statement["delta"],
        "method": args.method,
        "num_samples": int(out.x.shape[0]),
        "seconds": out.seconds,
    }
    if args.evaluate:
        k = int(dataset.num_classes or 0)
        summary["tstr_accuracy_not_private"] = tstr_accuracy(
            out.x, out.y, dataset.test.x, dataset.test.y, k
        )
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"epsilon spent {summary['epsilon']:.4g} (delta={summary['delta']:g}, one release); "
            f"{summary['num_samples']} samples in {samples}; statement in {statement}"
            + (f"; grid in {grid}" if grid else "")
        )
        if args.evaluate:
            print(
                f"TSTR accuracy (real test split, not private): {summary['tstr_accuracy_not_private']:.4f}"
            )
    return 0
