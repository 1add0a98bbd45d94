"""Prints the latest benchmark results (benchmarks/results/*.json) as Markdown tables.

Usage:
  python benchmarks/report.py > benchmarks/results/REPORT.md
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _machine(data: dict) -> str:
    m = data.get("machine", {})
    when = m.get("timestamp_utc", "?")
    cpu = m.get("processor", m.get("platform", "?"))
    return f"{m.get('cpu_count', '?')}-core {cpu}, {m.get('jax_device', '?')}, {when}"


def _fmt(value, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def speed(out: list[str]) -> None:
    data = _load("speed.json")
    if not data:
        return
    out += [
        f"### Time per step (`speed.py{' --quick' if data.get('quick') else ''}`; {_machine(data)})",
        "",
    ]
    out += [
        "| model | B | framework / mode | median ms | ×non-private | peak RSS MB | RSS ×non-private "
        "| XLA step MB | XLA mem ×non-private |"
    ]
    out += ["|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in data["records"]:
        if "median_ms" not in r:
            continue
        out.append(
            f"| {r['model']} | {r['batch_size']} | {r['framework']} / {r['mode']} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r.get('ms_ratio_vs_nonprivate'), '.2f')} | {_fmt(r.get('peak_rss_mb'), '.0f')} | "
            f"{_fmt(r.get('mem_ratio_vs_nonprivate'), '.2f')} | {_fmt(r.get('xla_step_mb'), '.1f')} | "
            f"{_fmt(r.get('xla_mem_ratio_vs_nonprivate'), '.2f')} |"
        )
    rows = data.get("dpjax_vs_opacus") or []
    if rows:
        out += [
            "",
            "| model | B | best dpjax DP | ms | best Opacus | ms | dpjax / Opacus |",
            "|---|---:|---|---:|---|---:|---:|",
        ]
        for r in rows:
            out.append(
                f"| {r['model']} | {r['batch_size']} | {r['dpjax_best']} | {_fmt(r['dpjax_ms'])} | "
                f"{r['opacus_best']} | {_fmt(r['opacus_ms'])} | {_fmt(r['ms_ratio_dpjax_over_opacus'], '.2f')} |"
            )
    out.append("")


def accounting(out: list[str]) -> None:
    data = _load("accounting.json")
    if not data:
        return
    c = data["config"]
    out += [
        f"### Accounting (`accounting.py`; q = {c['sampling_rate']}, σ = {c['noise_multiplier']}, "
        f"δ = {c['delta']}; {_machine(data)})",
        "",
        "| steps | ε PLD | ε RDP | RDP/PLD | query PLD s | query RDP s | calibrate PLD s | calibrate RDP s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in data["rows"]:
        p, d = r["pld"], r["rdp"]
        out.append(
            f"| {r['steps']:,} | {p['epsilon']:.3f} | {d['epsilon']:.3f} | {d['epsilon'] / p['epsilon']:.2f} | "
            f"{p['query']['median_s']:.3f} | {d['query']['median_s']:.3f} | "
            f"{p['calibration']['median_s']:.2f} | {d['calibration']['median_s']:.2f} |"
        )
    out.append("")


def utility(out: list[str]) -> None:
    points, machines = [], []
    for path in sorted(RESULTS.glob("utility*.json")):
        data = json.loads(path.read_text())
        if data.get("quick"):
            continue
        points += data["points"]
        machines.append(_machine(data))
    if not points:
        return
    out += [
        f"### Privacy–utility (`utility.py`; δ = 1e-5; {machines[-1]})",
        "",
        "| data set | model | ε | test accuracy % | seeds | σ | steps | hyperparameters (tuned on validation) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    seen = set()
    for p in points:
        key = (p["dataset"], p["model"], str(p["epsilon"]))
        if key in seen:
            continue
        seen.add(key)
        std = p.get("test_accuracy_std")
        acc = f"{100 * p['test_accuracy_mean']:.2f}" + (f" ± {100 * std:.2f}" if std else "")
        hp = " ".join(f"{k}={v}" for k, v in p["hyperparameters"].items())
        out.append(
            f"| {p['dataset']} | {p['model']} | {p['epsilon']} | {acc} | {p['n_seeds']} | "
            f"{_fmt(p.get('noise_multiplier'), '.3g')} | {p.get('steps', '–')} | {hp} |"
        )
    out.append("")


def scaling(out: list[str]) -> None:
    data = _load("scaling.json")
    if not data:
        return
    out += [
        f"### Scaling (`scaling.py`; {_machine(data)})",
        "",
        "| sweep | model | B | params | mode | non-private ms | DP ms | DP ×np | RSS ×np | XLA mem ×np |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    base = {}
    for r in data["records"]:
        if r.get("mode") == "non-private" and "median_ms" in r:
            base[(r["sweep"], r["model"], r["batch_size"], r.get("width"))] = r
    for r in data["records"]:
        if r.get("mode") == "non-private" or "median_ms" not in r:
            continue
        b = base.get((r["sweep"], r["model"], r["batch_size"], r.get("width")))
        out.append(
            f"| {r['sweep']} | {r['model']} | {r['batch_size']} | {r['num_params']:,} | {r['mode']} | "
            f"{_fmt(b and b['median_ms'])} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r.get('ms_ratio_vs_nonprivate'), '.2f')} | {_fmt(r.get('mem_ratio_vs_nonprivate'), '.2f')} | "
            f"{_fmt(r.get('xla_mem_ratio_vs_nonprivate'), '.2f')} |"
        )
    out.append("")


def main() -> int:
    out: list[str] = []
    for section in (speed, utility, accounting, scaling):
        section(out)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
