"""The trainer's `features` option: ScatterNet features computed once, at no privacy cost."""

import pytest

import dpjax
from dpjax.training import TrainConfig, main, train


@pytest.fixture(scope="module")
def tiny():
    return dpjax.load_dataset("synthetic", num_examples=120, input_shape=(8, 8, 1), num_classes=3)


def test_scatternet_features_train_and_spend_only_the_dp_sgd_steps(tiny):
    cfg = TrainConfig(
        dataset="synthetic",
        model="logreg",
        features="scatternet",
        target_epsilon=2.0,
        steps=3,
        batch_size=32,
        eval_every=3,
        seed=0,
    )
    result = train(cfg, dataset=tiny, progress=False)
    s = result.summary
    assert s["features"] == "scatternet" and 0 < s["epsilon"] <= 2.0
    # The features are data-independent: the account holds the DP-SGD steps and nothing else.
    releases = s["accounting_state"]["releases"]
    assert [r["kind"] for r in releases] == ["poisson_gaussian"] and releases[0]["steps"] == 3
    # 8x8 images, J = 2: 2x2 maps of 81 channels feed the linear model.
    assert result.params["linear"]["kernel"].shape[0] == 2 * 2 * 81


def test_the_option_is_validated():
    with pytest.raises(ValueError, match="features='sift' is unknown"):
        TrainConfig(features="sift")
    with pytest.raises(ValueError, match="no images to augment"):
        TrainConfig(features="scatternet", augmult=4)


def test_cli_refuses_an_unknown_features_value(capsys):
    assert main(["train", "--features", "sift"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_passes_features(monkeypatch):
    seen = {}

    def fake_train(config, **kwargs):
        seen["features"] = config.features
        raise ValueError("stop here")

    monkeypatch.setattr("dpjax.training._cli.train", fake_train)
    argv = ["train", "--dataset", "synthetic", "--features", "scatternet", "--no-progress"]
    assert main(argv) == 2
    assert seen == {"features": "scatternet"}
