"""Empirical privacy audits of dpjax (``dpjax.audit``): epsilon lower bounds against the claimed epsilon.

Three audits, each giving a 95 % epsilon lower bound that must stay below the
accountant's epsilon (the run fails loudly, "privacy bug", if one does not):

* **A. the single DP step** (``distinguishing_audit``): dpjax's clip -> noise ->
  mean on two neighbouring batches (a Dirac canary of norm 100 at C = 1), many
  runs vectorized over keys, sigma calibrated to each epsilon for ONE Gaussian
  release at delta = 1e-5. The goal: at epsilon = 2 the bound reaches at least
  half the claim.
* **B. membership inference** on scikit-learn's real digits: a target model on
  N members and K reference models on data disjoint from them and from the
  non-member candidates (one-hidden-layer tanh MLP, DP-SGD via ``dp_sgd``, or
  NOT PRIVATE); the loss-threshold attack and offline LiRA; AUC, TPR at FPR 0.1 %
  and 1 %, and the epsilon bound (threshold chosen on half the candidates).
* **C. one-run auditing** (Steinke, Nasr & Jagielski 2023): white-box Dirac
  gradient canaries (m of them, each in with probability 1/2) on a full-batch
  DP-SGD run, and input-space canaries (mislabelled digits from a pool disjoint
  from the training set); the bound next to the best one m canaries can give.

Seeds are public (public data, research runs).

Usage::

  python benchmarks/audit.py --quick     # tiny plan, < 1 min -> results/quick/audit.json
  python benchmarks/audit.py             # the full plan (about 10-15 min on 2 shared cores)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402

DELTA = 1e-5
DEFAULT_JSON = HERE / "results" / "audit.json"
QUICK_JSON = HERE / "results" / "quick" / "audit.json"

FULL = {
    "step_epsilons": [0.5, 1.0, 2.0, 4.0, 8.0],
    "step_runs": 2_000_000,
    "mia_epsilons": [1.0, 2.0, 4.0, 8.0],
    "mia_members": 200,
    "mia_references": 8,
    "mia_steps": 300,
    "mia_batch": 100,
    "mia_hidden": 32,
    "mia_lr": 1.0,
    "one_run_epsilons": [1.0, 2.0, 4.0, 8.0],
    "dirac_canaries": 5000,
    "dirac_hidden": 128,
    "dirac_steps": 100,
    "input_canaries": 500,
    "input_steps": 300,
    "input_batch": 300,
}
QUICK = {
    **FULL,
    "step_epsilons": [2.0],
    "step_runs": 100_000,
    "mia_epsilons": [2.0],
    "mia_members": 40,
    "mia_references": 2,
    "mia_steps": 10,
    "mia_batch": 20,
    "one_run_epsilons": [2.0],
    "dirac_canaries": 200,
    "dirac_hidden": 0,
    "dirac_steps": 5,
    "input_canaries": 50,
    "input_steps": 5,
}


def _digits() -> tuple[Any, Any, Any]:
    import numpy as np

    import dpjax

    data = dpjax.load_dataset("digits", seed=0)
    splits = (data.train, data.validation, data.test)
    x = np.concatenate([s.x for s in splits]).reshape(-1, 64)
    y = np.concatenate([s.y for s in splits])
    return data, x, y


def part_a(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinguishing audit of one DP step at each epsilon."""
    import jax

    import dpjax
    from dpjax import audit

    rows = []
    batches = audit.dirac_canary_batches(4, 8)
    for eps in plan["step_epsilons"]:
        sigma = dpjax.calibrate_noise_multiplier(eps, 1.0, 1, DELTA)
        claimed = dpjax.compute_epsilon(sigma, 1, 1.0, DELTA)
        result = audit.distinguishing_audit(
            audit.dp_step(1.0, sigma, 8),
            batches,
            runs=plan["step_runs"],
            delta=DELTA,
            key=jax.random.key(0),
        )
        audit.check_lower_bound(result.epsilon, claimed, f"the single-step audit at eps={eps}")
        rows.append(
            {
                "target_epsilon": eps,
                "claimed_epsilon": claimed,
                "noise_multiplier": sigma,
                "lower_bound": result.epsilon,
                "ratio": result.epsilon / claimed,
                "runs_per_side": result.runs,
                "seconds": result.seconds,
                "false_positives": result.bound.false_positives,
                "true_positives": result.bound.true_positives,
                "evaluated_per_side": result.bound.negatives,
            }
        )
        print(f"A eps={eps}: lower bound {result.epsilon:.3f} of {claimed:.3f} "
              f"({result.runs} runs/side, {result.seconds:.1f} s)", flush=True)  # fmt: skip
    return rows


def part_b(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Loss-threshold and offline LiRA membership inference, NOT PRIVATE and DP."""
    import numpy as np

    import dpjax
    from dpjax import audit

    _, x, y = _digits()
    n, k = plan["mia_members"], plan["mia_references"]
    perm = np.random.default_rng(0).permutation(len(x))
    members, outs, pool = perm[:n], perm[n : 2 * n], perm[2 * n :]
    rows_mask = np.zeros((k + 1, len(x)), bool)
    rows_mask[0, members] = True
    rng = np.random.default_rng(1)
    for j in range(k):
        rows_mask[j + 1, rng.choice(pool, n, replace=False)] = True
    candidates = np.r_[members, outs]
    rows = []
    for eps in [None, *plan["mia_epsilons"]]:
        start = time.perf_counter()
        common_args = dict(
            num_classes=10,
            steps=plan["mia_steps"],
            expected_batch_size=plan["mia_batch"],
            learning_rate=plan["mia_lr"],
            hidden=plan["mia_hidden"],
            seed=1,
        )
        if eps is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
                models = audit.train_models(x, y, rows_mask, not_private=True, **common_args)
        else:
            models = audit.train_models(x, y, rows_mask, target_epsilon=eps, **common_args)
        logits = np.asarray(models.logits(x[candidates]))
        losses = models.losses(x[candidates], y[candidates])
        confidence = audit.logit_confidence(logits, y[candidates])
        accuracy = float(np.mean(np.argmax(logits[0, n:], -1) == y[outs]))
        scores = {
            "loss_threshold": audit.loss_threshold_scores(losses[0]),
            "lira_offline": audit.lira_offline_scores(confidence[0], confidence[1:]),
        }
        for attack, s in scores.items():
            result = audit.membership_audit(s[:n], s[n:], DELTA)
            if eps is not None:
                audit.check_lower_bound(result.epsilon, models.epsilon, f"{attack} at eps={eps}")
            rows.append(
                {
                    "model": models.label,
                    "target_epsilon": eps,
                    "claimed_epsilon": models.epsilon,
                    "attack": attack,
                    "auc": result.auc,
                    "tpr_at_fpr_0.1%": result.tpr_at_0_1pct,
                    "tpr_at_fpr_1%": result.tpr_at_1pct,
                    "lower_bound": result.epsilon,
                    "non_member_accuracy": accuracy,
                    "members": n,
                    "reference_models": k,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(f"B {models.label} eps={eps} {attack}: AUC {result.auc:.3f}, "
                  f"TPR@0.1% {result.tpr_at_0_1pct:.3f}, TPR@1% {result.tpr_at_1pct:.3f}, "
                  f"bound {result.epsilon:.3f} (non-member acc {accuracy:.3f})", flush=True)  # fmt: skip
    return rows


def part_c(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """One-run audits: white-box Dirac canaries and input-space (mislabelled) canaries."""
    import jax
    import numpy as np

    from dpjax import audit

    data, _, _ = _digits()
    x_train, y_train = data.train.x.reshape(-1, 64), data.train.y
    pool_x = np.concatenate([data.validation.x, data.test.x]).reshape(-1, 64)
    pool_y = np.concatenate([data.validation.y, data.test.y])
    hidden = plan["dirac_hidden"]
    shapes = (
        {"w1": np.zeros((64, hidden)), "b1": np.zeros(hidden), "w2": np.zeros((hidden, 10)),
         "b2": np.zeros(10)} if hidden else {"w": np.zeros((64, 10)), "b": np.zeros(10)}
    )  # fmt: skip
    dirac = audit.dirac_canaries(shapes, plan["dirac_canaries"], 1.0, seed=3)
    inputs = audit.input_space_canaries(pool_x, pool_y, plan["input_canaries"], 10, seed=4)
    x_in = np.concatenate([x_train, inputs.x])
    y_in = np.concatenate([y_train, inputs.y])
    rows = []
    for eps in plan["one_run_epsilons"]:
        start = time.perf_counter()
        models = audit.train_models(
            x_train, y_train, np.ones((1, len(x_train)), bool), num_classes=10,
            steps=plan["dirac_steps"], expected_batch_size=len(x_train), learning_rate=0.5,
            hidden=hidden, target_epsilon=eps, canaries=dirac, seed=5,
        )  # fmt: skip
        first = jax.tree.map(lambda a: a[0], models.initial_params)
        last = jax.tree.map(lambda a: a[0], models.params)
        result = audit.one_run_audit(
            audit.dirac_canary_scores(first, last, dirac), dirac.included, DELTA
        )
        audit.check_lower_bound(result.epsilon, models.epsilon, f"white-box one-run at eps={eps}")
        rows.append(_one_run_row("white-box Dirac", eps, models, result, start))
        start = time.perf_counter()
        members = np.r_[np.ones(len(x_train), bool), inputs.included][None]  # canaries in w.p. 1/2
        models = audit.train_models(
            x_in, y_in, members, num_classes=10, steps=plan["input_steps"],
            expected_batch_size=plan["input_batch"], learning_rate=1.0, hidden=32,
            target_epsilon=eps, seed=6,
        )  # fmt: skip
        losses = models.losses(inputs.x, inputs.y)[0]
        result = audit.one_run_audit(audit.loss_threshold_scores(losses), inputs.included, DELTA)
        audit.check_lower_bound(result.epsilon, models.epsilon, f"input-space one-run at eps={eps}")
        rows.append(_one_run_row("input-space mislabelled", eps, models, result, start))
    return rows


def _one_run_row(kind: str, eps: float, models: Any, result: Any, start: float) -> dict[str, Any]:
    print(f"C {kind} eps={eps}: bound {result.epsilon:.3f} (best possible with "
          f"{result.canaries} canaries {result.best_possible:.3f}; {result.correct}/"
          f"{result.guesses} right)", flush=True)  # fmt: skip
    return {
        "canaries_kind": kind,
        "target_epsilon": eps,
        "claimed_epsilon": models.epsilon,
        "noise_multiplier": models.noise_multiplier,
        "steps": models.steps,
        "sampling_rate": models.sampling_rate,
        "canaries": result.canaries,
        "guesses": result.guesses,
        "correct": result.correct,
        "lower_bound": result.epsilon,
        "best_possible": result.best_possible,
        "seconds": time.perf_counter() - start,
    }


def plot(payload: dict[str, Any], path: pathlib.Path) -> None:
    """Lower bound against the claimed epsilon, one panel per audit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax in axes:
        ax.plot([0, 8.5], [0, 8.5], "k--", lw=1, label="lower bound = claimed eps")
        ax.set_xlabel("claimed epsilon (accountant, delta = 1e-5)")
        ax.set_ylabel("95 % epsilon lower bound")
    a = payload["single_step"]
    axes[0].plot([r["claimed_epsilon"] for r in a], [r["lower_bound"] for r in a], "o-",
                 label=f"one DP step, {a[0]['runs_per_side']:,} runs/side" if a else "")  # fmt: skip
    axes[0].set_title("A. distinguishing audit of one step")
    b = [r for r in payload["membership"] if r["model"] == "DP"]
    for attack in ("loss_threshold", "lira_offline"):
        rows = [r for r in b if r["attack"] == attack]
        axes[1].plot([r["claimed_epsilon"] for r in rows], [r["lower_bound"] for r in rows],
                     "o-", label=attack)  # fmt: skip
    np_rows = [r for r in payload["membership"] if r["model"] != "DP"]
    for r in np_rows:
        axes[1].axhline(r["lower_bound"], ls=":", lw=1, color="gray")
    axes[1].set_title("B. membership inference (dotted: NOT PRIVATE)")
    c = payload["one_run"]
    for kind in sorted({r["canaries_kind"] for r in c}):
        rows = [r for r in c if r["canaries_kind"] == kind]
        xs = [r["claimed_epsilon"] for r in rows]
        line = axes[2].plot(xs, [r["lower_bound"] for r in rows], "o-", label=kind)[0]
        axes[2].plot(xs, [r["best_possible"] for r in rows], ":", color=line.get_color(),
                     label=f"best possible, m={rows[0]['canaries']}")  # fmt: skip
    axes[2].set_title("C. one-run audits")
    for ax in axes:
        ax.legend(fontsize=7)
    common.save_figure(fig, path, "dpjax.audit: empirical lower bounds never exceed the claim")


def main(argv: list[str] | None = None) -> int:
    """Runs the plan and writes JSON + PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny plan (< 1 min), results/quick/")
    parser.add_argument("--parts", nargs="+", choices=("A", "B", "C"), default=["A", "B", "C"])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="JSON path")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (QUICK_JSON if args.quick else DEFAULT_JSON)
    start = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "audit",
        "plan": "quick" if args.quick else "full",
        "settings": plan,
        "delta": DELTA,
        "confidence": 0.95,
        "machine": common.machine_description(),
        "single_step": part_a(plan) if "A" in args.parts else [],
        "membership": part_b(plan) if "B" in args.parts else [],
        "one_run": part_c(plan) if "C" in args.parts else [],
    }
    payload["wall_seconds"] = time.perf_counter() - start
    payload["privacy_bugs_found"] = 0  # any bound above its claim raised before this line
    common.write_json(out, payload)
    if not args.no_plot:
        try:
            plot(payload, out.with_suffix(".png"))
        except ImportError:  # matplotlib is in the bench extra only
            print("matplotlib missing: no PNG", flush=True)
    print(f"wrote {out} in {payload['wall_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
