"""``dpjax synthesize``: a private synthetic data set with its privacy statement (host side).

Example::

    dpjax synthesize --dataset fashion-mnist --target-epsilon 10 --out synth/
    dpjax synthesize --dataset digits --target-epsilon 10 --method vae --out synth_vae/

writes ``synth/samples.npz`` (``x``, ``y``), ``synth/samples.png`` (a grid per
class; needs matplotlib, from the ``bench`` extra) and ``synth/privacy.json``
(epsilon, delta, mechanism, what the guarantee covers, the accountant's state).
``--method vae`` trains a conditional VAE with DP-SGD (the budget is spent on its
steps) and samples its released decoder. ``--evaluate`` adds TSTR accuracy and
the FID-like ScatterNet score on the real test split (diagnostics, not private).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

from dpjax.data import DATASET_NAMES, load_dataset
from dpjax.synthetic._evaluate import tstr_accuracy
from dpjax.synthetic._fidelity import fidelity_features, frechet_distance
from dpjax.synthetic._synthesize import METHODS, sample_grid_png, synthesize
from dpjax.synthetic._vae import default_vae_config, synthesize_vae

CLI_METHODS = (*METHODS, "vae")
"""The release-statistics methods of :func:`synthesize`, and ``"vae"`` (:func:`synthesize_vae`)."""

FID_IMAGES = 10_000  # at most this many images per side of the FID-like score (evenly strided)


def _fid(real: np.ndarray, synthetic: np.ndarray, progress: bool) -> float:
    """The FID-like score on at most :data:`FID_IMAGES` images a side, a bar over its two halves."""
    sets = [real, synthetic]
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415 (only when asked)

        sets = tqdm(sets, desc="FID-like score: ScatterNet features", unit="set")
    real_f, synthetic_f = (fidelity_features(x, max_images=FID_IMAGES) for x in sets)
    return frechet_distance(real_f, synthetic_f)


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
            "One accounted Gaussian release of the training split and a generator fitted to it "
            "alone (gaussian, merf), or a conditional VAE trained with DP-SGD whose decoder is "
            "the release (vae); samples (.npz), a sample grid (.png, if matplotlib is installed) "
            "and a JSON privacy statement."
        ),
    )
    parser.add_argument("--dataset", required=True, choices=[n for n in DATASET_NAMES])
    parser.add_argument("--target-epsilon", type=float, required=True, help="epsilon, > 0")
    parser.add_argument("--delta", type=float, default=1e-5, help="delta in (0, 1/N)")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--method", choices=CLI_METHODS, default="gaussian")
    parser.add_argument(
        "--vae-steps",
        type=int,
        help="vae only: DP-SGD steps (default: dpjax.synthetic.default_vae_config); sigma is "
        "calibrated to them",
    )
    parser.add_argument("--num-samples", type=int, help="default: the training split's size")
    parser.add_argument(
        "--seed", type=int, help="research mode: reproducible noise (never for sensitive data)"
    )
    parser.add_argument("--data-dir", help="where to look for data files first")
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="also report TSTR accuracy and the FID-like ScatterNet score on the real test "
        "split (diagnostics, not private)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``dpjax synthesize``; returns the exit status."""
    dataset = load_dataset(args.dataset, data_dir=args.data_dir)
    progress = not args.no_progress and not args.json
    if args.vae_steps is not None and args.method != "vae":
        raise ValueError(f"--vae-steps={args.vae_steps} needs --method vae; drop it or pass it.")
    common = {
        "target_epsilon": args.target_epsilon,
        "delta": args.delta,
        "num_samples": args.num_samples,
        "seed": args.seed,
        "progress": progress,
    }
    if args.method == "vae":
        config = default_vae_config(int(dataset.input_shape[0]), len(dataset.train))
        if args.vae_steps is not None:
            config = dataclasses.replace(config, steps=args.vae_steps)
        out = synthesize_vae(dataset, config=config, **common)
    else:
        out = synthesize(dataset, method=args.method, **common)
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
        summary["scatternet_fid_not_private"] = _fid(dataset.test.x, out.x, progress)
    if args.method == "vae":
        spent_on = f"{out.statement['steps']} DP-SGD steps"
    else:
        spent_on = "one release"
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"epsilon spent {summary['epsilon']:.4g} (delta={summary['delta']:g}, {spent_on}); "
            f"{summary['num_samples']} samples in {samples}; statement in {statement}"
            + (f"; grid in {grid}" if grid else "")
        )
        if args.evaluate:
            print(
                f"TSTR accuracy (real test split, not private): {summary['tstr_accuracy_not_private']:.4f}"
            )
            print(
                "FID-like score (ScatterNet features, not comparable to Inception FID; real test "
                f"split, not private): {summary['scatternet_fid_not_private']:.4g}"
            )
    return 0
