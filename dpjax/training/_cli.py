"""The ``dpjax`` command line: private training and privacy accounting (host side).

Examples::

    dpjax train --dataset digits --target-epsilon 3
    dpjax train --dataset fashion-mnist --model cnn --target-epsilon 3 --noise-schedule linear:0.5 \
        --clip-groups equal --ema-decay 0.999 --augmult 4
    dpjax epsilon --noise-multiplier 1.1 --steps 1000 --sampling-rate 0.01 --delta 1e-5
    dpjax epsilon --noise-multiplier 2 1 --steps 100 50 --sampling-rate 0.01 --delta 1e-5
    dpjax epsilon --unit user --noise-multiplier 1 --steps 50 --sampling-rate 0.1 --delta 1e-5
    dpjax calibrate --target-epsilon 3 --dataset-size 60000 --batch-size 256 --epochs 10 \\
        --delta 1e-5 --json

Invalid input prints ``dpjax: error: <message>`` on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import dpjax
from dpjax._validation import check_delta
from dpjax.data import DATASET_NAMES
from dpjax.models import MODEL_NAMES
from dpjax.training._config import (
    CLIPPING_MODES,
    FEATURES,
    NOISE_SAMPLERS,
    OPTIMIZERS,
    TrainConfig,
)
from dpjax.training._levers import CLIP_GROUPS, NOISE_SCHEDULES
from dpjax.training._trainer import train

# Subcommands of consumer subpackages: each module has ``add_parser(subparsers)``, which adds one
# subcommand and sets ``func`` (``args -> exit status``) on it.
_CONSUMER_COMMANDS: tuple[str, ...] = (
    "dpjax.convex._cli",
    "dpjax.synthetic._cli",
    "dpjax.federated._cli",
)

_PRIVACY_NOTE = (
    "Assumes Poisson sampling with rate q and Gaussian noise of std sigma*C added to the "
    "sum of per-example gradients clipped to L2 norm C (add/remove-one neighbours)."
)
_USER_NOTE = (
    "User level (--unit user): assumes Poisson sampling of the users with rate q = expected "
    "clients per round / users, one step per round, each user's whole update clipped to L2 norm C "
    "and Gaussian noise of std sigma*C added once per round to the sum (add/remove one user's "
    "data), as dpjax.federated.CentralDP; q = 1 (every user every round) is not amplified."
)


def _note(args: argparse.Namespace) -> str:
    """The assumptions behind the number, for the neighbouring unit asked for."""
    return _USER_NOTE if args.unit == "user" else _PRIVACY_NOTE


def _add_common_args(parser: argparse.ArgumentParser, *, phases: bool) -> None:
    """Options shared by the accounting subcommands (run shape, delta, output)."""
    nargs: dict[str, Any] = {"nargs": "+"} if phases else {}
    each = " (one value per phase)" if phases else ""
    shape = parser.add_argument_group(
        "run shape", "give --sampling-rate and --steps, or --dataset-size, --batch-size, --epochs"
    )
    shape.add_argument("--sampling-rate", type=float, help="Poisson sampling rate q in (0, 1]")
    shape.add_argument("--steps", type=int, **nargs, help="number of steps" + each)
    shape.add_argument(
        "--dataset-size", type=int, help="number of examples N (also enforces delta < 1/N)"
    )
    shape.add_argument("--batch-size", type=int, help="expected batch size B (q = B/N)")
    shape.add_argument(
        "--epochs", type=float, **nargs, help="epochs, steps = ceil(epochs*N/B)" + each
    )
    parser.add_argument("--delta", type=float, required=True, help="target delta in (0, 1/N)")
    parser.add_argument(
        "--accountant", choices=("pld", "rdp"), default="pld", help="accountant (default: pld)"
    )
    parser.add_argument(
        "--unit",
        choices=("example", "user"),
        default="example",
        help="the neighbouring unit: example (DP-SGD) or user (federated rounds: --sampling-rate "
        "CLIENTS/USERS and --steps ROUNDS, or --dataset-size USERS --batch-size CLIENTS); the "
        "computation is the same, the guarantee's unit differs (default: example)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _add_epsilon_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "epsilon",
        help="epsilon spent by a DP-SGD run",
        description="Epsilon of DP-SGD with Poisson sampling; several values are phases "
        "composed in order. " + _PRIVACY_NOTE,
    )
    parser.add_argument(
        "--noise-multiplier",
        type=float,
        nargs="+",
        required=True,
        help="noise multiplier sigma of each phase",
    )
    _add_common_args(parser, phases=True)
    parser.set_defaults(func=_run_epsilon)


def _add_calibrate_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="noise multiplier for a target epsilon",
        description="Noise multiplier whose epsilon is at most the target (within 1%%). "
        + _PRIVACY_NOTE,
    )
    parser.add_argument("--target-epsilon", type=float, required=True, help="epsilon to reach")
    _add_common_args(parser, phases=False)
    parser.set_defaults(func=_run_calibrate)


def _add_train_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with DP-SGD on a real data set",
        description="Private training end to end: Poisson batches, per-example clipping, Gaussian "
        "noise, accounting; prints test accuracy and the epsilon spent. " + _PRIVACY_NOTE,
    )
    d = TrainConfig()  # the CLI's defaults are the trainer's
    parser.add_argument("--dataset", default=d.dataset, help=f"one of {', '.join(DATASET_NAMES)}")
    parser.add_argument("--model", default=d.model, help=f"one of {', '.join(MODEL_NAMES)}")
    parser.add_argument(
        "--target-epsilon",
        type=float,
        default=None,
        help=f"privacy budget (default {d.target_epsilon:g})",
    )
    parser.add_argument(
        "--delta", type=float, default=d.delta, help="delta, below 1/N (default %(default)s)"
    )
    parser.add_argument(
        "--noise-multiplier", type=float, help="sigma (default: calibrated from --target-epsilon)"
    )
    parser.add_argument(
        "--clip-norm",
        type=float,
        default=None,
        help=f"per-example clip norm C (default {d.clip_norm:g})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="EXPECTED batch size, q = B/N (default %(default)s)",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None, help=f"epochs (default {d.epochs:g})")
    length.add_argument("--steps", type=int, help="steps (instead of --epochs)")
    parser.add_argument(
        "--lr", type=float, default=d.lr, help="learning rate (default %(default)s)"
    )
    parser.add_argument("--optimizer", default=d.optimizer, help=f"one of {', '.join(OPTIMIZERS)}")
    parser.add_argument("--microbatch-size", type=int, help="physical batch (default: automatic)")
    parser.add_argument(
        "--seed", type=int, help="seed (default: a secret one; a known seed reveals the noise)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=d.eval_every, help="evaluate every N steps"
    )
    parser.add_argument("--accountant", choices=("pld", "rdp"), default="pld")
    parser.add_argument(
        "--clipping",
        choices=CLIPPING_MODES,
        default=d.clipping,
        help="per-example clipping: vmap, ghost (one backward pass; models built from ghost layers: "
        "logreg, mlp, cnn, linen-mlp) or auto (ghost when possible; the default)",
    )
    levers = parser.add_argument_group(
        "levers that keep accuracy under privacy",
        "each is accounted exactly; none may be combined with --not-private",
    )
    levers.add_argument(
        "--noise-schedule",
        default=None,
        metavar="SCHEDULE",
        help=f"noise multiplier over the run: {', '.join(NOISE_SCHEDULES)}, R = sigma_end / "
        "sigma_start > 0 (e.g. linear:0.5 halves sigma linearly by the last step; exponential "
        "interpolates geometrically). Starts at --noise-multiplier if given, else is scaled to "
        "spend --target-epsilon. Accounted step by step (default: constant)",
    )
    levers.add_argument(
        "--clip-groups",
        choices=CLIP_GROUPS,
        default=None,
        help="per-layer clipping: equal (each of G layers clipped to C/sqrt(G)) or by-size "
        "(C_g^2 proportional to the layer's size); the sensitivity sqrt(sum C_g^2) stays "
        "--clip-norm (default: none, one global norm)",
    )
    levers.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        help="keep an exponential moving average of the parameters with this decay in [0, 1) "
        "(warm-up min(decay, (1+t)/(10+t))), evaluate and return it; post-processing, no "
        "privacy cost (default: off)",
    )
    levers.add_argument(
        "--augmult",
        type=int,
        default=None,
        help="augmentation multiplicity K: each example's loss is the mean over K random "
        "shifts (and flips for fashion-mnist) of it, before clipping; images only, vmap "
        "clipping; no privacy cost (default: 0, off)",
    )
    parser.add_argument(
        "--features",
        choices=FEATURES,
        default=d.features,
        help="scatternet: train on the scattering transform of the images (J=2, L=8, then "
        "per-example GroupNorm with 27 groups), computed once; data-independent, no privacy "
        "cost; use --model logreg, mlp or gn-cnn (default: none)",
    )
    parser.add_argument("--json-out", help="write the JSON summary here")
    parser.add_argument("--log", help="write one JSON line per evaluation here")
    parser.add_argument(
        "--checkpoint", help="checkpoint file (.npz); if it exists the run resumes from it"
    )
    parser.add_argument(
        "--noise-sampler",
        choices=NOISE_SAMPLERS,
        default=None,
        help="float (default: dpjax's float32 Gaussian) or discrete: exact discrete Gaussian on a "
        "fixed-point grid from the OS CSPRNG, resists floating-point attacks (host side, about "
        "5 us per parameter and step; constant noise only)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=100,
        metavar="N",
        help="write the checkpoint every N steps (also at the end, on Ctrl-C and on SIGTERM; "
        "atomically, so a failed write keeps the last good one) (default %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--not-private",
        action="store_true",
        help="NOT PRIVATE baseline: no clipping, no noise, no guarantee",
    )
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    if args.not_private:
        given = [
            flag
            for flag, value, off in (
                ("--target-epsilon", args.target_epsilon, ()),
                ("--noise-multiplier", args.noise_multiplier, ()),
                ("--clip-norm", args.clip_norm, ()),
                ("--noise-schedule", args.noise_schedule, ("constant",)),
                ("--clip-groups", args.clip_groups, ("none",)),
                ("--ema-decay", args.ema_decay, ()),
                ("--augmult", args.augmult, (0, 1)),
                ("--noise-sampler", args.noise_sampler, ("float",)),
            )
            if value is not None and value not in off
        ]
        if given:
            raise ValueError(
                f"--not-private contradicts {', '.join(given)}: a NOT PRIVATE run neither clips, "
                "adds noise nor spends a budget (and the levers belong to private runs). Drop "
                "those flags for the baseline, or drop --not-private for a private run."
            )
    config = TrainConfig(
        dataset=args.dataset,
        model=args.model,
        target_epsilon=None
        if args.not_private
        else (TrainConfig.target_epsilon if args.target_epsilon is None else args.target_epsilon),
        delta=args.delta,
        noise_multiplier=args.noise_multiplier,
        clip_norm=TrainConfig.clip_norm if args.clip_norm is None else args.clip_norm,
        batch_size=args.batch_size,
        epochs=args.epochs
        if args.epochs is not None or args.steps is not None
        else TrainConfig.epochs,
        steps=args.steps,
        lr=args.lr,
        optimizer=args.optimizer,
        seed=args.seed,
        microbatch_size=args.microbatch_size,
        eval_every=args.eval_every,
        accountant=args.accountant,
        clipping=args.clipping,
        not_private=args.not_private,
        noise_schedule=args.noise_schedule or TrainConfig.noise_schedule,
        clip_groups=args.clip_groups or TrainConfig.clip_groups,
        ema_decay=args.ema_decay,
        augmult=TrainConfig.augmult if args.augmult is None else args.augmult,
        noise_sampler=args.noise_sampler or TrainConfig.noise_sampler,
        features=args.features,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", dpjax.NotPrivateWarning
            )  # the label is printed below instead
            result = train(
                config,
                json_out=args.json_out,
                log_path=args.log,
                checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every,
                progress=not args.no_progress,
            )
    except KeyboardInterrupt as interrupt:
        print(f"dpjax: interrupted: {interrupt}", file=sys.stderr)
        if args.json_out:
            print(f"dpjax: the summary of what was spent is in {args.json_out}", file=sys.stderr)
        return 130
    s = result.summary
    if not s["private"]:
        print("NOT PRIVATE baseline: no clipping, no noise, no differential-privacy guarantee.")
        print(
            f"{s['dataset']} / {s['model']}: test accuracy {s['test_accuracy']:.4f} after {s['steps']} steps"
        )
    else:
        print(
            f"{s['dataset']} / {s['model']}: test accuracy {s['test_accuracy']:.4f} "
            f"(validation {s['validation_accuracy']:.4f}) after {s['steps']} steps"
        )
        print(
            f"privacy spent: epsilon = {s['epsilon']:.4f} (target {s['target_epsilon']:g}), "
            f"delta = {s['delta']:g}, noise multiplier {s['noise_multiplier']:.4g}, "
            f"sampling rate {s['sampling_rate']:.4g}, clip norm {s['clip_norm']:g}, {s['accountant']} accountant"
        )
        print(_levers_line(s))
        if s["stop_reason"] == "budget":
            print(f"stopped before step {s['steps'] + 1}: it would have exceeded the budget")
    print(
        "(accuracies are computed from the data without noise: for the data owner, not for release)"
    )
    print(f"{s['steps_note'].rstrip('.')}; wall time {s['wall_seconds']:.1f} s on {s['device']}")
    if args.json_out:
        print(f"summary written to {args.json_out}")
    return 0


def _levers_line(s: dict[str, Any]) -> str:
    """The levers of a private run's summary, in one line."""
    phases = s["noise_phases"]
    if s["noise_schedule"] == "constant":
        schedule = "constant"
    else:
        schedule = (
            f"{s['noise_schedule']} (sigma {phases[0][0]:.4g} -> {phases[-1][0]:.4g} in "
            f"{len(phases)} phases)"
        )
    groups = s["clip_groups"]
    if s["clip_norms"]:
        groups += f" ({len(s['clip_norms'])} layers)"
    ema = "off" if s["ema_decay"] is None else f"decay {s['ema_decay']:g}"
    return (
        f"levers: noise schedule {schedule}, clip groups {groups}, parameter EMA {ema} "
        f"(evaluated: {s['evaluated_params']} parameters), augmult "
        f"{s['augmult'] if s['augmult'] else 'off'}"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpjax",
        description="Differentially private training in JAX: training and privacy accounting.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_epsilon_parser(subparsers)
    _add_calibrate_parser(subparsers)
    _add_train_parser(subparsers)
    for module in _CONSUMER_COMMANDS:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple) else [value]


def _run_shape(args: argparse.Namespace, n_phases: int) -> tuple[float, list[int], list[str]]:
    """Sampling rate, steps per phase and rounding notes from the run-shape options."""
    steps, epochs = _as_list(args.steps), _as_list(args.epochs)
    from_epochs = args.batch_size is not None or epochs is not None
    if from_epochs:
        if args.sampling_rate is not None or steps is not None:
            raise ValueError(
                "give either --sampling-rate and --steps, or --dataset-size, --batch-size and "
                "--epochs, not both."
            )
        if args.dataset_size is None or args.batch_size is None or epochs is None:
            missing = [
                flag
                for flag, value in (
                    ("--dataset-size", args.dataset_size),
                    ("--batch-size", args.batch_size),
                    ("--epochs", epochs),
                )
                if value is None
            ]
            raise ValueError(
                "--dataset-size, --batch-size and --epochs go together; missing "
                + ", ".join(missing)
                + "."
            )
        if len(epochs) != n_phases:
            raise ValueError(
                f"--epochs has {len(epochs)} value(s) but --noise-multiplier has {n_phases}; "
                f"give one --epochs value per phase."
            )
        q, counts, notes = 0.0, [], []
        for e in epochs:
            q, t, note = dpjax.steps_from_epochs(args.dataset_size, args.batch_size, e)
            counts.append(t)
            notes.append(note)
        return q, counts, notes
    if args.sampling_rate is None or steps is None:
        raise ValueError(
            "--sampling-rate and --steps are required (or --dataset-size, --batch-size and "
            "--epochs)."
        )
    if len(steps) != n_phases:
        raise ValueError(
            f"--steps has {len(steps)} value(s) but --noise-multiplier has {n_phases}; "
            f"give one --steps value per phase (phases are composed in order)."
        )
    return args.sampling_rate, steps, []


def _shape_record(args: argparse.Namespace) -> dict[str, Any]:
    record = {"dataset_size": args.dataset_size}
    if args.batch_size is not None:
        record["batch_size"] = args.batch_size
        record["epochs"] = args.epochs
    return record


def _run_epsilon(args: argparse.Namespace) -> int:
    sigmas = list(args.noise_multiplier)
    q, steps, notes = _run_shape(args, len(sigmas))
    check_delta(args.delta, args.dataset_size)
    eps = dpjax.compute_epsilon(
        sigmas, steps, q, args.delta, accountant=args.accountant, dataset_size=args.dataset_size
    )
    if args.json:
        record = {
            "epsilon": eps,
            "delta": args.delta,
            "sampling_rate": q,
            "noise_multiplier": sigmas,
            "steps": steps,
            "accountant": args.accountant,
            **_shape_record(args),
            "notes": notes,
            "unit": args.unit,
        }
        print(json.dumps(record))
        return 0
    unit = ", user-level" if args.unit == "user" else ""
    print(f"epsilon = {eps:.6g} at delta = {args.delta:g} (accountant: {args.accountant}{unit})")
    for i, (s, t) in enumerate(zip(sigmas, steps, strict=True)):
        label = f"phase {i + 1}: " if len(sigmas) > 1 else ""
        print(f"  {label}{t} steps at noise multiplier {s:g}, sampling rate q = {q:.6g}")
    for note in notes:
        print(f"  steps: {note}")
    print(f"  {_note(args)}")
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    q, (steps,), notes = _run_shape(args, 1)
    check_delta(args.delta, args.dataset_size)
    sigma = dpjax.calibrate_noise_multiplier(
        args.target_epsilon, q, steps, args.delta, accountant=args.accountant
    )
    eps = dpjax.compute_epsilon(sigma, steps, q, args.delta, accountant=args.accountant)
    if args.json:
        record = {
            "noise_multiplier": sigma,
            "epsilon": eps,
            "target_epsilon": args.target_epsilon,
            "delta": args.delta,
            "sampling_rate": q,
            "steps": steps,
            "accountant": args.accountant,
            **_shape_record(args),
            "notes": notes,
            "unit": args.unit,
        }
        print(json.dumps(record))
        return 0
    print(
        f"noise_multiplier = {sigma:.6g} gives epsilon = {eps:.6g} <= target "
        f"{args.target_epsilon:g} at delta = {args.delta:g} (accountant: {args.accountant})"
    )
    print(f"  {steps} steps, sampling rate q = {q:.6g}")
    for note in notes:
        print(f"  steps: {note}")
    print(f"  {_note(args)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``dpjax`` command line.

    Args:
      argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
      The exit status: 0 on success, 2 on invalid input (the message goes to
      stderr as ``dpjax: error: <message>``).

    Example:
      >>> main(["epsilon", "--noise-multiplier", "1", "--steps", "1000",
      ...       "--sampling-rate", "0.01", "--delta", "1e-5", "--json"])  # doctest: +ELLIPSIS
      {"epsilon": 1.82...}
      0
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed usage and the error.
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.func(args)
    except ValueError as err:
        print(f"dpjax: error: {err}", file=sys.stderr)
        return 2
    except (ArithmeticError, MemoryError) as err:  # a bug if reached: inputs are validated first
        print(
            f"dpjax: error: {type(err).__name__} ({err}) for these inputs; nothing was trained "
            "or released. Check the values' ranges (e.g. --noise-multiplier, --steps) and "
            "report this input as a bug.",
            file=sys.stderr,
        )
        return 2
