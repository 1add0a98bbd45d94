"""`dpjax synthesize` writes samples, a grid and a privacy statement; the benchmark's plan runs."""

import importlib.util
import json
import pathlib

import numpy as np

import dpjax.synthetic._cli as synthetic_cli
from dpjax.data import Dataset, Split
from dpjax.training import main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny(name="digits", **_):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (40, 4, 4, 1)).astype(np.float32)
    y = (np.arange(40) % 2).astype(np.int32)
    return Dataset(name, Split(x, y), Split(x[:0], y[:0]), Split(x, y), num_classes=2)


def test_synthesize_cli_writes_samples_grid_and_statement(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synthetic_cli, "load_dataset", _tiny)
    out = tmp_path / "synth"
    argv = ["synthesize", "--dataset", "digits", "--target-epsilon", "10", "--out", str(out)]
    status = main([*argv, "--num-samples", "20", "--seed", "0", "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (20, 4, 4, 1) and data["y"].dtype == np.int32
    statement = json.loads((out / "privacy.json").read_text())
    assert statement["releases_of_real_data"] == 1 and statement["epsilon"] <= 10.0
    assert statement["accountant"]["releases"][0]["kind"] == "gaussian"
    assert {"mechanism", "covers", "delta"} <= set(statement)
    assert summary["grid"] is None or (out / "samples.png").exists()
    assert summary["num_samples"] == 20


def test_benchmark_quick_plan_runs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "bench_synthetic", ROOT / "benchmarks/synthetic.py"
    )
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "load_dataset", _tiny)
    monkeypatch.setattr(bench, "QUICK", [("digits", "gaussian", 10.0, [0], 20, None)])
    result = bench.run(quick=True, out_dir=tmp_path)
    assert result["runs"][0]["releases_of_real_data"] == 1
    assert 0.0 <= result["summary"][0]["tstr_accuracy_mean"] <= 1.0
