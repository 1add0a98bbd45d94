"""Smoke test of benchmarks/features.py --quick: every part runs and writes JSON + PNG (tiny)."""

import importlib
import importlib.util
import json
import pathlib
import sys
from types import SimpleNamespace

import numpy as np

import dpjax

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
features_bench = importlib.import_module("features")


def test_quick_plan_writes_json_and_png(tmp_path, monkeypatch):
    data = dpjax.load_dataset("synthetic", num_examples=3000, input_shape=(28, 28, 1))
    trained = []

    def fake_features(images):  # the real transform is tested in test_scattering.py
        return np.zeros((len(images), 7, 7, 81), np.float32)

    def fake_train(config, dataset, progress):
        trained.append(config)
        summary = {
            "test_accuracy": 0.5,
            "validation_accuracy": 0.4 + 0.01 * len(trained),
            "epsilon": config.target_epsilon or 1.0,
            "noise_multiplier": config.noise_multiplier or 1.0,
            "steps": 2,
            "dataset_size": len(dataset.train),
        }
        return SimpleNamespace(summary=summary)

    monkeypatch.setattr(features_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(features_bench, "load_dataset", lambda name, seed: data)
    monkeypatch.setattr(features_bench, "scatternet_features", fake_features)
    monkeypatch.setattr(features_bench, "train", fake_train)
    monkeypatch.setattr(features_bench, "group_normalize", lambda x, groups: x)
    assert features_bench.main(["--quick"]) == 0
    report = json.loads((tmp_path / "quick" / "features.json").read_text())
    assert set(report["parts"]) == {"tune", "record", "private-tuning", "subsets"}
    tune = report["parts"]["tune"]
    assert tune["configs_tried"] == len(features_bench.GRID) + len(features_bench.TUNE_EXTRA)
    tuning = report["parts"]["private-tuning"]
    assert tuning["epsilon_total_including_tuning"] <= 3.0 and tuning["runs"] >= 1
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra draws the figure
        assert (tmp_path / "quick" / "features.png").stat().st_size > 0
    assert all(c.features == "none" for c in trained)  # the benchmark passes features itself
