"""Step time of every ``speed.py`` path at two commits, measured in one run.

Checks out both revisions as git worktrees (committed snapshots: uncommitted
changes are not measured), then runs each tree's own ``benchmarks/speed.py``
(default ``--quick``) alternately, ``before, after, after, before, ...``, for
``--rounds`` rounds. Each run imports its own tree's ``dpjax``
(``PYTHONPATH=<tree>``, working directory ``<tree>``; checked before timing).
Every run writes its JSON to a temporary folder, so the published results are
never touched.

For every configuration (each ``speed.py`` record, each piece of the dpjax step
breakdown, each noise-sampler contender) the output holds the median ms of each
run per side, the median of those medians, the ratio after/before of the medians
of medians, and the per-round ratios (after/before of the same round) as a
measure of the noise. Configurations present on one side only are listed apart.

Usage::

  python benchmarks/compare_commits.py --before 1c2b6b1 --after HEAD --rounds 3
  # -> benchmarks/results/restructure_speed.json, and a Markdown table on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402  (benchmarks/common.py: the machine description)

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def add_worktree(path: pathlib.Path, sha: str) -> None:
    """A detached worktree of ``sha`` at ``path``; replaces a worktree already there."""
    git("worktree", "prune")
    registered = {
        line.split(" ", 1)[1]
        for line in git("worktree", "list", "--porcelain").splitlines()
        if line.startswith("worktree ")
    }
    if str(path) in registered:
        git("worktree", "remove", "--force", str(path))
    elif path.exists():
        raise SystemExit(f"{path} exists and is not a git worktree of {REPO}; remove it first")
    git("worktree", "add", "--detach", str(path), sha)


def remove_worktree(path: pathlib.Path) -> None:
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
        check=False,
        capture_output=True,
    )
    git("worktree", "prune")


def tree_env(tree: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONWARNINGS": "ignore"}


def check_import(tree: pathlib.Path) -> str:
    """Path of the ``dpjax`` a run in ``tree`` imports; it must lie inside ``tree``."""
    out = subprocess.run(
        [sys.executable, "-c", "import dpjax; print(dpjax.__file__)"],
        cwd=tree,
        env=tree_env(tree),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not pathlib.Path(out).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"a run in {tree} imports dpjax from {out}, not from its own tree")
    return out


def run_speed(
    tree: pathlib.Path, speed_args: list[str], json_out: pathlib.Path, log: pathlib.Path
) -> dict[str, Any]:
    """Runs ``tree``'s ``benchmarks/speed.py`` writing to ``json_out``; returns its JSON."""
    cmd = [sys.executable, str(tree / "benchmarks" / "speed.py"), *speed_args]
    cmd += ["--json-out", str(json_out)]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=tree, env=tree_env(tree), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed (exit {proc.returncode}); see {log}")
    return json.loads(json_out.read_text())


def medians_by_config(payload: dict[str, Any]) -> dict[str, float]:
    """Median ms per configuration in one ``speed.py`` JSON."""
    out: dict[str, float] = {}
    for r in payload.get("records", []):
        if "median_ms" in r:
            out[f"{r['framework']} / {r['mode']}, {r['model']} B={r['batch_size']}"] = r[
                "median_ms"
            ]
    breakdown = payload.get("dpjax_breakdown") or {}
    for piece, ms in (breakdown.get("median_ms_by_piece") or {}).items():
        where = f"{breakdown.get('model', 'cnn')} B={breakdown.get('batch_size', 256)}"
        out[f"breakdown {piece}, {where}"] = ms
    for row in (payload.get("noise_sampler") or {}).get("rows", []):
        n = row["coordinates"]
        out[f"noise draw jax.random.normal, {n:.0e} coords"] = row["jax_random_normal_median_ms"]
        out[f"noise draw dpjax, {n:.0e} coords"] = row["dpjax_median_ms"]
    return out


def summarize(
    before: list[dict[str, float]], after: list[dict[str, float]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(configurations on both sides, configurations on one side only)."""
    names = list(dict.fromkeys(k for run in before + after for k in run))
    both, one = {}, {}
    for name in names:
        b = [run[name] for run in before if name in run]
        a = [run[name] for run in after if name in run]
        if b and a:
            mb, ma = statistics.median(b), statistics.median(a)
            both[name] = {
                "before_ms": b,
                "after_ms": a,
                "before_median_ms": mb,
                "after_median_ms": ma,
                "ratio_after_over_before": ma / mb,
                "round_ratios": [y / x for x, y in zip(b, a, strict=False)],
            }
        else:
            side = "before" if b else "after"
            one[name] = {"side": side, f"{side}_ms": b or a}
    return both, one


def markdown(both: dict[str, Any], one: dict[str, Any]) -> str:
    lines = [
        "| configuration | before ms | after ms | after/before | per-round after/before |",
        "|---|---:|---:|---:|---|",
    ]
    for name, s in both.items():
        rounds = ", ".join(f"{r:.2f}" for r in s["round_ratios"])
        lines.append(
            f"| {name} | {s['before_median_ms']:.2f} | {s['after_median_ms']:.2f} "
            f"| {s['ratio_after_over_before']:.2f} | {rounds} |"
        )
    for name, s in one.items():
        ms = statistics.median(s[f"{s['side']}_ms"])
        cells = f"{ms:.2f} | -" if s["side"] == "before" else f"- | {ms:.2f}"
        lines.append(f"| {name} ({s['side']} only) | {cells} | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision measured first")
    parser.add_argument("--after", default="HEAD", help="git revision to compare (default HEAD)")
    parser.add_argument("--rounds", type=int, default=3, help="speed.py runs per side")
    parser.add_argument(
        "--out", type=pathlib.Path, default=HERE / "results" / "restructure_speed.json"
    )
    parser.add_argument(
        "--speed-args", default="--quick", help="arguments for speed.py (default: --quick)"
    )
    parser.add_argument(
        "--before-dir", type=pathlib.Path, default=pathlib.Path("/tmp/before_dpjax")
    )
    parser.add_argument("--after-dir", type=pathlib.Path, default=pathlib.Path("/tmp/after_dpjax"))
    parser.add_argument(
        "--keep-worktrees", action="store_true", help="do not remove them at the end"
    )
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    machine = common.machine_description()
    machine["loadavg_start"] = os.getloadavg()
    shas = {"before": git("rev-parse", args.before), "after": git("rev-parse", args.after)}
    trees = {"before": args.before_dir.resolve(), "after": args.after_dir.resolve()}
    speed_args = shlex.split(args.speed_args)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    run_log: list[dict[str, Any]] = []
    try:
        for side in ("before", "after"):
            add_worktree(trees[side], shas[side])
            print(
                f"{side}: {shas[side][:10]} at {trees[side]}, dpjax from {check_import(trees[side])}"
            )
        with tempfile.TemporaryDirectory(prefix="compare_commits_") as tmp:
            for r in range(args.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in order:
                    t0 = time.perf_counter()
                    stem = pathlib.Path(tmp) / f"{side}_{r}"
                    payload = run_speed(
                        trees[side],
                        speed_args,
                        stem.with_suffix(".json"),
                        stem.with_suffix(".log"),
                    )
                    runs[side].append(medians_by_config(payload))
                    wall = time.perf_counter() - t0
                    run_log.append({"round": r, "side": side, "wall_s": wall})
                    print(f"round {r + 1}/{args.rounds} {side}: {wall:.0f} s", flush=True)
    finally:
        if not args.keep_worktrees:
            for tree in trees.values():
                remove_worktree(tree)

    both, one = summarize(runs["before"], runs["after"])
    machine["loadavg_end"] = os.getloadavg()
    payload = {
        "benchmark": "compare_commits",
        "command": shlex.join(["python", "benchmarks/compare_commits.py", *(argv or sys.argv[1:])]),
        "speed_args": speed_args,
        "before": {"rev": args.before, "sha": shas["before"]},
        "after": {"rev": args.after, "sha": shas["after"]},
        "rounds": args.rounds,
        "order": "round r runs before then after for even r, after then before for odd r",
        "machine": machine,
        "method": (
            "each side runs its own tree's benchmarks/speed.py with PYTHONPATH and cwd set to "
            "that tree; per configuration: the median ms/step of each run, the median of those "
            "medians per side, ratio_after_over_before of the medians of medians, and "
            "round_ratios (after/before within each round) as a measure of the noise"
        ),
        "configurations": both,
        "one_side_only": one,
        "runs": run_log,
        "wall_s": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print()
    print(markdown(both, one))
    print(f"\nwrote {args.out} in {payload['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
