"""Speed and agreement of dpjax's accountants (PLD and RDP) as the number of steps grows.

For q = 0.01, sigma = 1.0, delta = 1e-5 and T = 10^2 ... 10^6 steps, measures

* the time of one cold epsilon query (``dpjax.compute_epsilon``; the memo is
  cleared before every repetition), median/min/max over repetitions;
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
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):  # benchmarks/ (common.py) and the repo root (dpjax)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402

from dpjax import _accounting  # noqa: E402

Q, SIGMA, DELTA = 0.01, 1.0, 1e-5
ACCOUNTANTS = ("pld", "rdp")
FULL_STEPS = (10**2, 10**3, 10**4, 10**5, 10**6)
QUICK_STEPS = (10**2, 10**3, 10**4, 10**5)


def _cold(fn):
    def run():
        _accounting._clear_cache()
        return fn()

    return run


def measure(steps: int, repeats: int) -> dict[str, Any]:
    """One row of the table: query/calibration times and epsilons for both accountants."""
    row: dict[str, Any] = {"steps": steps}
    for acc in ACCOUNTANTS:
        timing, eps = common.time_call(
            _cold(
                lambda acc=acc: _accounting.compute_epsilon(SIGMA, steps, Q, DELTA, accountant=acc)
            ),
            repeats,
        )
        row[acc] = {"epsilon": eps, "query": timing}
    event = _accounting.dp_sgd_event(SIGMA, steps, Q)
    row["pld"]["value_discretization_interval"] = _accounting.pld_value_discretization_interval(
        event
    )
    target = 0.5 * row["pld"]["epsilon"]
    row["target_epsilon"] = target
    for acc in ACCOUNTANTS:
        timing, sigma = common.time_call(
            _cold(
                lambda acc=acc: _accounting.calibrate_noise_multiplier(
                    target, Q, steps, DELTA, accountant=acc
                )
            ),
            1,
        )
        row[acc]["calibration"] = timing
        row[acc]["calibrated_sigma"] = sigma
        row[acc]["calibrated_epsilon"] = _accounting.compute_epsilon(
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
    args = parser.parse_args(argv)

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
        "method": (
            "cold queries (dpjax's epsilon memo cleared before each repetition); query repeats "
            "3 for T <= 1e4, else 1; calibration run once to half the PLD epsilon at sigma=1.0 "
            "with rtol=0.01; times in seconds from time.perf_counter on the host CPU"
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
