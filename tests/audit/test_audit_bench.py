"""Smoke test of benchmarks/audit.py: part A of the quick plan writes its JSON (and a PNG)."""

import importlib
import json
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
bench = importlib.import_module("audit")


def test_quick_single_step_part_writes_json_and_figure(tmp_path, monkeypatch):
    monkeypatch.setitem(bench.QUICK, "step_runs", 20_000)
    out = tmp_path / "audit.json"
    assert bench.main(["--quick", "--parts", "A", "--out", str(out)]) == 0
    payload = json.loads(out.read_text())
    (row,) = payload["single_step"]
    assert 0.0 <= row["lower_bound"] <= row["claimed_epsilon"]
    assert row["runs_per_side"] == 20_000 and payload["plan"] == "quick"
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # the test extra has no matplotlib
        return
    assert out.with_suffix(".png").stat().st_size > 0
