"""Speed and agreement of dpjax's accountants (PLD and RDP) as the number of steps grows.

For q = 0.01, sigma = 1.0, delta = 1e-5 and T = 10^2 ... 10^6 steps, measures

* the time of one cold epsilon query (``dpjax.compute_epsilon``), median/min/max
  over repetitions;
* the time of one cold calibration (``dpjax.calibrate_noise_multiplier``) to
  half the epsilon that PLD gives at sigma = 1 (so the search has work to do; it
  starts at sigma = 1), and the sigma each accountant finds;
* epsilon from both accountants and their ratio ``rdp / pld`` (RDP is the looser
  bound, so the ratio is >= 1; PLD's estimate is pessimistic, an upper bound too).

Usage::

  python benchmarks/accounting.py --quick          # T up to 10^5, well under a minute
  python benchmarks/accounting.py                  # T up to 10^6
  python benchmarks/accounting.py --json-out F.json  # PNG goes next to it

Writes ``benchmarks/results/accounting.json`` and ``accounting.png`` by default.
Everything runs on the host CPU (accounting is NumPy/dp_accounting, never jitted).

Cold means that dpjax's memo of epsilons (and of one-step PLDs) is empty: every
repetition runs in a fresh Python process, which first answers one query at
unrelated parameters (so imports and first-call costs are not timed) and then
times the query; only public ``dpjax`` names are used.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):  # benchmarks/ (common.py) and the repo root (dpjax)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402

Q, SIGMA, DELTA = 0.01, 1.0, 1e-5
ACCOUNTANTS = ("pld", "rdp")
FULL_STEPS = (10**2, 10**3, 10**4, 10**5, 10**6)
QUICK_STEPS = (10**2, 10**3, 10**4, 10**5)
# The untimed first query of every worker: parameters no timed query uses, so the memo
# stays cold for them (the calibration's search starts at sigma = 1, q stays 0.01).
WARM_UP = {"noise_multiplier": 2.0, "steps": 10, "sampling_rate": 0.02}


def worker(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Times each job once, in this (fresh) process; returns ``[{"seconds", "value"}]``.

    A job is ``{"kind": "query" | "calibrate", "accountant", "steps"}`` (plus
    ``"target"`` for a calibration). The jobs of one worker must share no memo
    entry (e.g. one query per accountant), or the later ones would not be cold.
    """
    import dpjax

    for acc in ACCOUNTANTS:  # imports and first-call costs, outside the timings
        dpjax.compute_epsilon(
            WARM_UP["noise_multiplier"],
            WARM_UP["steps"],
            WARM_UP["sampling_rate"],
            DELTA,
            accountant=acc,
        )
    out = []
    for job in jobs:
        acc, steps = job["accountant"], job["steps"]
        t0 = time.perf_counter()
        if job["kind"] == "query":
            value = dpjax.compute_epsilon(SIGMA, steps, Q, DELTA, accountant=acc)
        else:
            value = dpjax.calibrate_noise_multiplier(job["target"], Q, steps, DELTA, accountant=acc)
        out.append({"seconds": time.perf_counter() - t0, "value": value})
    return out


def cold(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs :func:`worker` on ``jobs`` in a fresh Python process (an empty memo)."""
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", json.dumps(jobs)],
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"accounting worker {jobs} failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1][len("RESULT ") :])


def measure(steps: int, repeats: int) -> dict[str, Any]:
    """One row of the table: query/calibration times and epsilons for both accountants."""
    import dpjax

    row: dict[str, Any] = {"steps": steps}
    queries = [
        cold([{"kind": "query", "accountant": acc, "steps": steps} for acc in ACCOUNTANTS])
        for _ in range(repeats)
    ]
    for i, acc in enumerate(ACCOUNTANTS):
        timing = common.summarize([q[i]["seconds"] for q in queries])
        row[acc] = {"epsilon": queries[-1][i]["value"], "query": timing}
    target = 0.5 * row["pld"]["epsilon"]
    row["target_epsilon"] = target
    calibrations = cold(
        [
            {"kind": "calibrate", "accountant": acc, "steps": steps, "target": target}
            for acc in ACCOUNTANTS
        ]
    )
    for acc, result in zip(ACCOUNTANTS, calibrations, strict=True):
        sigma = result["value"]
        row[acc]["calibration"] = common.summarize([result["seconds"]])
        row[acc]["calibrated_sigma"] = sigma
        row[acc]["calibrated_epsilon"] = dpjax.compute_epsilon(
            sigma, steps, Q, DELTA, accountant=acc
        )
    row["epsilon_ratio_rdp_over_pld"] = row["rdp"]["epsilon"] / row["pld"]["epsilon"]
    return row


def plot(rows: list[dict[str, Any]], path: pathlib.Path) -> None:
    """Times (left) and epsilons (right) against the number of steps, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["steps"] for r in rows]
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    for acc, color in zip(ACCOUNTANTS, ("C0", "C1"), strict=True):
        query = [r[acc]["query"]["median_s"] for r in rows]
        calibration = [r[acc]["calibration"]["median_s"] for r in rows]
        ax_t.plot(steps, query, "o-", c=color, label=f"{acc} epsilon query")
        ax_t.plot(steps, calibration, "s--", c=color, label=f"{acc} calibration")
        ax_e.plot(steps, [r[acc]["epsilon"] for r in rows], "o-", c=color, label=acc)
    ax_t.set(xscale="log", yscale="log", xlabel="steps T", ylabel="seconds (cold, median)")
    ax_t.set_title("Accounting time")
    ax_t.legend(fontsize=8)
    ax_e.set(xscale="log", yscale="log", xlabel="steps T", ylabel=f"epsilon at delta={DELTA:g}")
    ax_e.set_title(f"Epsilon, q={Q:g}, sigma={SIGMA:g} (rdp/pld ratio annotated)")
    for r in rows:
        label = f"{r['epsilon_ratio_rdp_over_pld']:.2f}"
        xy = (r["steps"], r["rdp"]["epsilon"])
        ax_e.annotate(label, xy, textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_e.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="steps up to 10^5 only")
    parser.add_argument(
        "--json-out", type=pathlib.Path, default=HERE / "results" / "accounting.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    grid = QUICK_STEPS if args.quick else FULL_STEPS
    rows = []
    for steps in grid:
        row = measure(steps, repeats=3 if steps <= 10**4 else 1)
        rows.append(row)
        pld, rdp = row["pld"], row["rdp"]
        print(
            f"T={steps:>8}  eps pld={pld['epsilon']:9.4f} rdp={rdp['epsilon']:9.4f} "
            f"ratio={row['epsilon_ratio_rdp_over_pld']:.3f}  query pld="
            f"{pld['query']['median_s']:.3f}s rdp={rdp['query']['median_s']:.3f}s  "
            f"calibrate pld={pld['calibration']['median_s']:.2f}s "
            f"(sigma {pld['calibrated_sigma']:.4f}) rdp="
            f"{rdp['calibration']['median_s']:.2f}s (sigma {rdp['calibrated_sigma']:.4f})",
            flush=True,
        )
    payload = {
        "benchmark": "accounting",
        "quick": args.quick,
        "config": {"sampling_rate": Q, "noise_multiplier": SIGMA, "delta": DELTA},
        "warm_up_query": {**WARM_UP, "delta": DELTA},
        "method": (
            "cold queries: every repetition runs in a fresh Python process (dpjax's epsilon "
            "memo empty), timed after one untimed query at unrelated parameters (WARM_UP) so "
            "that imports and first-call costs are not counted; the PLD and RDP query of a "
            "repetition share a process (they share no memo entry), as do the two "
            "calibrations; query repeats 3 for T <= 1e4, else 1; calibration run once to half "
            "the PLD epsilon at sigma=1.0 with rtol=0.01; times in seconds from "
            "time.perf_counter on the host CPU"
        ),
        "machine": common.machine_description(),
        "rows": rows,
    }
    json_path = common.write_json(args.json_out, payload)
    png_path = json_path.with_suffix(".png")
    plot(rows, png_path)
    print(f"wrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
