"""Federated learning with user-level DP: central DP-FedAvg vs local DP vs NOT PRIVATE FedAvg.

Data: Fashion-MNIST's 60,000 training images split into 1,000 users, non-IID by
label with a Dirichlet(alpha = 0.5) prior (unequal sizes); the 10,000 test
images for accuracy. Model: multinomial logistic regression on the 784 pixels
(7,850 parameters), small enough for a shared 2-core CPU. Each round Poisson-
samples users with q = clients / users; each runs ``LOCAL_EPOCHS`` epoch of SGD
(batch 16, lr 0.1) on at most ``MAX_EXAMPLES`` of its examples (a public cap);
the server averages (FedAvg: SGD with lr 1 on the pseudo-gradient).

* central DP-FedAvg: each client update clipped to C, N(0, (sigma C)^2) once on
  the sum, divided by the expected clients; sigma calibrated so that the
  rounds cost the user-level epsilon at delta = 1 / users**1.1;
* local DP: each client clips to C and adds N(0, (sigma 2C)^2) itself; sigma
  calibrated so that ``LOCAL_PARTICIPATIONS`` messages cost epsilon for the
  client (a client stops taking part after that many);
* NOT PRIVATE FedAvg (no clipping, no noise, no guarantee).

Seeds are public (reproducible research on public data); a real deployment
draws them with ``dpjax.secret_seed()``. Hyperparameters were set once on a
quick run, not tuned on the test set; their tuning is not accounted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import statistics
import sys
import time
import warnings
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402

DEFAULT_JSON = HERE / "results" / "federated.json"
QUICK_JSON = HERE / "results" / "quick" / "federated.json"
NOT_PRIVATE = "NOT PRIVATE"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one benchmark run measures."""

    dataset: str = "fashion-mnist"
    users: int = 1000
    alpha: float = 0.5
    clients_per_round: int = 100
    rounds: int = 50
    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    seeds: int = 3
    l2_norm: float = 0.5
    local_lr: float = 0.1
    local_epochs: int = 1
    batch_size: int = 16
    max_examples: int = 128
    eval_every: int = 5
    timing_clients: tuple[int, ...] = (10, 50, 100, 200, 400)
    timing_rounds: int = 4


QUICK = Plan(
    dataset="digits",
    users=50,
    clients_per_round=10,
    rounds=4,
    epsilons=(3.0,),
    seeds=1,
    eval_every=2,
    timing_clients=(5, 10),
    timing_rounds=2,
)


def _accuracy(predict: Any, params: Any, x: Any, y: Any) -> float:
    import jax.numpy as jnp

    return float(jnp.mean(jnp.argmax(predict(params, x), axis=1) == jnp.asarray(y)))


def _mode(kind: str, eps: float | None, plan: Plan, delta: float) -> tuple[Any, dict[str, Any]]:
    import dpjax
    from dpjax.federated import CentralDP, LocalDP, NotPrivateFedAvg, calibrate_local_noise

    q = plan.clients_per_round / plan.users
    if kind == "central":
        assert eps is not None
        sigma = dpjax.calibrate_noise_multiplier(eps, q, plan.rounds, delta)
        return CentralDP(plan.l2_norm, sigma), {"noise_multiplier": sigma}
    if kind == "local":
        assert eps is not None
        participations = _local_participations(q, plan.rounds)
        sigma = calibrate_local_noise(eps, participations, delta)
        info = {"noise_multiplier": sigma, "participations_per_client": participations}
        return LocalDP(plan.l2_norm, sigma), info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        return NotPrivateFedAvg(), {}


def _local_participations(q: float, rounds: int) -> int:
    """Messages a local-DP client may send: mean + 3 std of its Binomial(rounds, q) count."""
    mean = q * rounds
    return max(1, min(rounds, math.ceil(mean + 3 * math.sqrt(mean * (1 - q)))))


def run_one(plan: Plan, fed: Any, kind: str, eps: float | None, seed: int) -> dict[str, Any]:
    """One training run; returns accuracy against rounds and the user-level epsilon."""
    import jax
    import jax.numpy as jnp
    import optax

    import dpjax
    from dpjax.federated import FederatedSimulation, LocalSGD, mlp_classifier

    delta = 1.0 / plan.users**1.1
    mode, info = _mode(kind, eps, plan, delta)
    params, loss_fn, predict = mlp_classifier(fed.train.x.shape[1], fed.num_classes, seed=seed)
    sim = FederatedSimulation(
        fed,
        LocalSGD(loss_fn, plan.local_lr, epochs=plan.local_epochs, batch_size=plan.batch_size),
        mode,
        optax.sgd(1.0),
        clients_per_round=plan.clients_per_round,
        key=dpjax.key_from_seed(dpjax.derive_seed(seed, 7)),
        seed=seed,
        delta=delta,
        target_epsilon=eps if eps is not None else math.inf,
        max_examples=plan.max_examples,
    )
    w = sim.init(params)
    x_test, y_test = jnp.asarray(fed.test.x), fed.test.y
    curve, seconds, epsilons = [], [], []
    for r in range(plan.rounds):
        w, result = sim.round(w)
        seconds.append(result.seconds)
        epsilons.append(result.epsilon)
        if (r + 1) % plan.eval_every == 0 or r + 1 == plan.rounds:
            curve.append({"round": r + 1, "test_accuracy": _accuracy(predict, w, x_test, y_test)})
    jax.clear_caches()
    return {
        "mode": kind if kind != "not_private" else NOT_PRIVATE,
        "target_epsilon": eps,
        "seed": seed,
        "delta": delta,
        "epsilon_spent": epsilons[-1],
        "epsilon_after_each_round": epsilons,
        "curve": curve,
        "final_test_accuracy": curve[-1]["test_accuracy"],
        "seconds_per_round_median_after_first": statistics.median(seconds[1:] or seconds),
        **info,
    }


def time_rounds(plan: Plan, fed: Any) -> list[dict[str, Any]]:
    """Seconds per central-DP round against the expected clients per round (after compile)."""
    import jax
    import optax

    import dpjax
    from dpjax.federated import CentralDP, FederatedSimulation, LocalSGD, mlp_classifier

    rows = []
    for clients in plan.timing_clients:
        params, loss_fn, _ = mlp_classifier(fed.train.x.shape[1], fed.num_classes)
        sim = FederatedSimulation(
            fed,
            LocalSGD(loss_fn, plan.local_lr, epochs=plan.local_epochs, batch_size=plan.batch_size),
            CentralDP(plan.l2_norm, 1.0),
            optax.sgd(1.0),
            clients_per_round=clients,
            key=dpjax.key_from_seed(1),
            seed=0,
            max_examples=plan.max_examples,
        )
        w = sim.init(params)
        times = []
        for _ in range(plan.timing_rounds + 1):
            w, result = sim.round(w)
            times.append(result.seconds)
        rows.append(
            {
                "clients_per_round": clients,
                "first_round_seconds_with_compile": times[0],
                "seconds_per_round_median": statistics.median(times[1:]),
            }
        )
        jax.clear_caches()
    return rows


def _figure(results: list[dict[str, Any]], timing: list[dict[str, Any]], path: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["mode"], r["target_epsilon"]), []).append(r)
    for (mode, eps), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        rounds = [p["round"] for p in runs[0]["curve"]]
        accs = [
            statistics.mean(run["curve"][i]["test_accuracy"] for run in runs)
            for i in range(len(rounds))
        ]
        label = mode if eps is None else f"{mode} eps={eps:g}"
        ax.plot(rounds, accs, marker="o", ms=3, label=label, ls="--" if mode == "local" else "-")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over seeds)")
    ax.legend(fontsize=7)
    bx.plot(
        [t["clients_per_round"] for t in timing],
        [t["seconds_per_round_median"] for t in timing],
        marker="o",
    )
    bx.set_xlabel("expected clients per round")
    bx.set_ylabel("seconds per round (central DP)")
    common.save_figure(fig, path, "dpjax.federated: user-level DP on a non-IID split")


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std of the final accuracy per (mode, epsilon); the central-DP gap at eps=3."""
    table: dict[str, Any] = {}
    for r in results:
        key = (
            r["mode"] if r["target_epsilon"] is None else f"{r['mode']} eps={r['target_epsilon']:g}"
        )
        table.setdefault(key, []).append(r["final_test_accuracy"])
    out = {
        k: {"mean": statistics.mean(v), "std": statistics.pstdev(v), "runs": len(v)}
        for k, v in table.items()
    }
    if NOT_PRIVATE in out and "central eps=3" in out:
        gap = out[NOT_PRIVATE]["mean"] - out["central eps=3"]["mean"]
        out["goal_central_eps3_within_5_points"] = {"gap_points": 100 * gap, "met": gap <= 0.05}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a < 1 min plan (digits, 50 users)")
    parser.add_argument("--rounds", type=int, help="override the plan's rounds")
    parser.add_argument("--seeds", type=int, help="override the number of seeds")
    parser.add_argument("--no-local", action="store_true", help="skip the local-DP runs")
    parser.add_argument("--out", type=pathlib.Path, help="JSON path (PNG next to it)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    if args.seeds:
        plan = dataclasses.replace(plan, seeds=args.seeds)
    out = args.out or (QUICK_JSON if args.quick else DEFAULT_JSON)

    from dpjax.federated import federated_data

    fed = federated_data(plan.dataset, num_users=plan.users, alpha=plan.alpha, seed=0)
    start = time.perf_counter()
    results = []
    kinds: list[tuple[str, float | None]] = [("not_private", None)]
    kinds += [("central", e) for e in plan.epsilons]
    if not args.no_local:
        kinds += [("local", e) for e in plan.epsilons]
    for seed in range(plan.seeds):  # contenders alternate within each seed
        for kind, eps in kinds:
            r = run_one(plan, fed, kind, eps, seed)
            print(
                f"seed {seed} {r['mode']:>11} eps={eps} -> acc {r['final_test_accuracy']:.4f} "
                f"(epsilon spent {r['epsilon_spent']:.3g}, {r['seconds_per_round_median_after_first']:.3f} s/round)",
                flush=True,
            )
            results.append(r)
    timing = time_rounds(plan, fed)
    payload = {
        "benchmark": "federated",
        "plan": dataclasses.asdict(plan),
        "data": repr(fed),
        "model": "multinomial logistic regression on the 784 pixels (7,850 parameters)",
        "reduced": "50 rounds, linear model, clients capped at 128 examples (CPU budget); "
        "the issue asks for 1,000 users, 3 seeds, eps in {1,3,8}: those are kept",
        "summary": summarize(results),
        "runs": results,
        "time_per_round": timing,
        "wall_seconds": time.perf_counter() - start,
        "machine": common.machine_description(),
    }
    common.write_json(out, payload)
    _figure(results, timing, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    for k, v in payload["summary"].items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
