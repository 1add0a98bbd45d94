"""``dpjax federated``: a DP federated-averaging simulation from the command line (host side)."""

from __future__ import annotations

import argparse
import json
import math
import warnings
from typing import Any

import jax.numpy as jnp
import optax

import dpjax
from dpjax.federated._client import LocalSGD
from dpjax.federated._data import federated_data
from dpjax.federated._model import mlp_classifier
from dpjax.federated._privacy import (
    CentralDP,
    LocalDP,
    NotPrivateFedAvg,
    calibrate_local_noise,
)
from dpjax.federated._simulation import FederatedSimulation

MODES = ("central", "adaptive", "local", "not-private")
SERVER_OPTIMIZERS = {"fedavg": optax.sgd, "fedadam": optax.adam, "fedyogi": optax.yogi}


def add_parser(subparsers: Any) -> None:
    """Adds the ``federated`` subcommand.

    Args:
      subparsers: the ``dpjax`` parser's subparsers.

    Example:
      >>> import argparse
      >>> parser = argparse.ArgumentParser()
      >>> add_parser(parser.add_subparsers())
      >>> parser.parse_args(["federated", "--rounds", "2"]).rounds
      2
    """
    parser = subparsers.add_parser(
        "federated",
        help="simulate DP federated averaging with user-level accounting",
        description="Poisson-sampled clients run local SGD; their updates are clipped to C and "
        "noised once per round at the server (central), on each client (local), or not at all "
        "(not-private). Epsilon is user-level (add/remove one user's whole data) and printed "
        "after every round. For the account alone, `dpjax epsilon --unit user "
        "--sampling-rate CLIENTS/USERS --steps ROUNDS` is the same computation.",
    )
    parser.add_argument(
        "--dataset", default="digits", choices=("digits", "fashion-mnist", "synthetic")
    )
    parser.add_argument("--users", type=int, default=100, help="number of users")
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    parser.add_argument("--clients-per-round", type=float, default=20, help="expected clients")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--mode", choices=MODES, default="central")
    parser.add_argument("--target-epsilon", type=float, help="calibrate sigma to this epsilon")
    parser.add_argument("--noise-multiplier", type=float, help="sigma (instead of a target)")
    parser.add_argument("--l2-norm", type=float, default=0.5, help="client clip norm C")
    parser.add_argument("--delta", type=float, help="default 1 / users**1.1")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--local-lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--server", choices=tuple(SERVER_OPTIMIZERS), default="fedavg")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of the noise, the client sampling and the data split (default: a secret one "
        "for the noise and the sampling, 0 for the split; a known seed reveals the noise)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _mode(args: argparse.Namespace, delta: float, q: float) -> Any:
    if args.mode == "not-private":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
            return NotPrivateFedAvg()
    sigma = args.noise_multiplier
    if (sigma is None) == (args.target_epsilon is None):
        raise ValueError(
            "give exactly one of --target-epsilon and --noise-multiplier for a private mode "
            f"(got {args.target_epsilon!r} and {sigma!r}), or --mode not-private."
        )
    if args.mode == "local":
        if sigma is None:
            sigma = calibrate_local_noise(args.target_epsilon, args.rounds, delta)
        return LocalDP(args.l2_norm, sigma)
    if sigma is None:
        sigma = dpjax.calibrate_noise_multiplier(args.target_epsilon, q, args.rounds, delta)
    return CentralDP(args.l2_norm, sigma, adaptive=args.mode == "adaptive")


def run(args: argparse.Namespace) -> int:
    """Runs the simulation described by `args`; returns 0.

    Raises:
      ValueError: for invalid options.

    **Privacy:** the noise key and the client sampler's seed come from
    :func:`dpjax.secret_seed` unless `--seed` is given (a known seed reveals
    the noise: reproducible research on public data only); neither is printed.
    `--mode not-private` is labelled NOT PRIVATE and reports no epsilon.
    """
    if args.rounds < 1:
        raise ValueError(f"--rounds={args.rounds} must be >= 1.")
    # The split is public (seed 0 unless --seed); the noise key and the client sampler come from
    # a SECRET seed unless --seed is given: a known seed reveals the noise (issue 17, section 5).
    split_seed = 0 if args.seed is None else args.seed
    seed = dpjax.secret_seed() if args.seed is None else args.seed
    fed = federated_data(args.dataset, num_users=args.users, alpha=args.alpha, seed=split_seed)
    delta = args.delta if args.delta is not None else 1.0 / args.users**1.1
    q = args.clients_per_round / args.users
    mode = _mode(args, delta, q)
    params, loss_fn, predict = mlp_classifier(fed.train.x.shape[1], fed.num_classes)
    sim = FederatedSimulation(
        fed,
        LocalSGD(loss_fn, args.local_lr, epochs=args.local_epochs, batch_size=args.batch_size),
        mode,
        SERVER_OPTIMIZERS[args.server](args.server_lr),
        clients_per_round=args.clients_per_round,
        key=dpjax.key_from_seed(dpjax.derive_seed(seed, 7)),
        seed=seed,
        delta=delta,
        target_epsilon=args.target_epsilon or math.inf,
    )
    w = sim.init(params)
    if args.mode == "not-private" and not args.json:
        print("NOT PRIVATE baseline: no clipping, no noise, no differential-privacy guarantee.")
    history = []
    for _ in range(args.rounds):
        w, result = sim.round(w)
        history.append(result.epsilon)
        if not args.json:
            print(f"round {result.round + 1}: epsilon spent {result.epsilon:.4g}")
    logits = predict(w, jnp.asarray(fed.test.x))
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=1) == jnp.asarray(fed.test.y)))
    record = {
        "mode": args.mode,
        "epsilon": history[-1],
        "delta": delta,
        "noise_multiplier": getattr(mode, "noise_multiplier", None),
        "sampling_rate": q,
        "rounds": args.rounds,
        "unit": "user",
        "test_accuracy": accuracy,
        "data": repr(fed),
    }
    if args.json:
        print(json.dumps({k: (None if v == math.inf else v) for k, v in record.items()}))
    else:
        print(
            f"test accuracy {accuracy:.4f}; user-level epsilon spent {history[-1]:.4g} at "
            f"delta {delta:.3g} ({args.mode})"
        )
    return 0
