"""Runs every benchmark, one after another, and writes their JSON and PNG under results/.

Usage:
  python benchmarks/run_all.py --quick     # every benchmark at a small size (< 10 min, 2-core CPU),
                                           # written under results/quick/
  python benchmarks/run_all.py             # the full size behind the published numbers

Benchmarks run in separate processes so that one's memory and compiled code do not
skew another's timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("accounting", "speed", "scaling", "utility", "strategies")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, under 10 minutes on 2 cores"
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    args = parser.parse_args(argv)
    timings, failures = {}, []
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if args.quick:  # quick numbers never overwrite the published ones
            cmd += ["--quick", "--json-out", str(HERE / "results" / "quick" / f"{name}.json")]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"== {name}: exit {code} after {timings[name]} s", flush=True)
        if code:
            failures.append(name)
    print(
        json.dumps(
            {"quick": args.quick, "seconds": timings, "total_seconds": sum(timings.values())}
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
