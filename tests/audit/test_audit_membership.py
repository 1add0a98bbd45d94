"""Membership inference: the loss-threshold attack and offline LiRA on small digits models."""

import warnings

import numpy as np
import pytest
import sklearn.metrics

import dpjax
from dpjax import audit

DELTA = 1e-5


def test_auc_and_tpr_at_fpr_match_their_definitions():
    rng = np.random.default_rng(0)
    out, inn = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    labels = np.r_[np.zeros(300), np.ones(200)]
    expected = sklearn.metrics.roc_auc_score(labels, np.r_[out, inn])
    assert audit.roc_auc(out, inn) == pytest.approx(expected)
    fpr, tpr, _ = sklearn.metrics.roc_curve(labels, np.r_[out, inn])
    assert audit.tpr_at_fpr(out, inn, 0.01) == pytest.approx(tpr[fpr <= 0.01].max())


def test_lira_offline_standardizes_against_the_reference_models():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (8, 100)) + np.arange(100)  # per-example OUT means differ
    target = np.arange(100) + np.r_[np.full(50, 3.0), np.zeros(50)]  # members shifted up
    scores = audit.lira_offline_scores(target, reference)
    assert scores[:50].mean() > 2.0 and abs(scores[50:].mean()) < 0.5
    with pytest.raises(ValueError, match="K >= 2"):
        audit.lira_offline_scores(target, reference[:1])


def test_logit_confidence_is_the_log_odds_of_the_label():
    p = np.array([[0.7, 0.2, 0.1]])
    assert audit.logit_confidence(np.log(p), np.array([1]))[0] == pytest.approx(np.log(0.2 / 0.8))


@pytest.fixture(scope="module")
def split():
    data = dpjax.load_dataset("digits", seed=0)
    x = np.concatenate([data.train.x, data.test.x]).reshape(-1, 64)
    y = np.concatenate([data.train.y, data.test.y])
    perm = np.random.default_rng(0).permutation(len(x))
    members, outs, pool = perm[:60], perm[60:120], perm[120:]
    rows = np.zeros((5, len(x)), bool)
    rows[0, members] = True  # the target; four reference models on data disjoint from it
    for k, start in enumerate(range(0, 240, 60), start=1):
        rows[k, pool[start : start + 60]] = True
    return x, y, rows, np.r_[members, outs]


def _attacks(models, x, y, candidates):
    losses = models.losses(x[candidates], y[candidates])
    confidence = audit.logit_confidence(models.logits(x[candidates]), y[candidates])
    scores = {
        "loss": audit.loss_threshold_scores(losses[0]),
        "lira": audit.lira_offline_scores(confidence[0], confidence[1:]),
    }
    return {name: audit.membership_audit(s[:60], s[60:], DELTA) for name, s in scores.items()}


def test_attacks_find_membership_in_a_non_private_model_and_stay_below_a_dp_models_epsilon(split):
    x, y, rows, candidates = split
    common = dict(num_classes=10, steps=60, expected_batch_size=60, learning_rate=1.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
        overfit = audit.train_models(x, y, rows, not_private=True, **common)
    found = _attacks(overfit, x, y, candidates)
    assert found["lira"].auc > 0.6 and found["loss"].auc > 0.55
    private = audit.train_models(x, y, rows, target_epsilon=2.0, **common)
    assert private.epsilon <= 2.0
    for name, result in _attacks(private, x, y, candidates).items():
        audit.check_lower_bound(result.epsilon, private.epsilon, f"the {name} attack")


def test_train_models_refuses_unequal_member_counts_and_warns_when_not_private(split):
    x, y, rows, _ = split
    bad = rows.copy()
    bad[1, np.flatnonzero(~bad[1])[0]] = True
    with pytest.raises(ValueError, match="same number of members"):
        audit.train_models(x, y, bad, num_classes=10, steps=1, expected_batch_size=10,
                           learning_rate=0.1, target_epsilon=1.0, seed=0)  # fmt: skip
    with pytest.raises(ValueError, match="target_epsilon=None"):
        audit.train_models(x, y, rows, num_classes=10, steps=1, expected_batch_size=10,
                           learning_rate=0.1, seed=0)  # fmt: skip
    with pytest.warns(dpjax.NotPrivateWarning):
        audit.train_models(x, y, rows[:1], num_classes=10, steps=1, expected_batch_size=10,
                           learning_rate=0.1, seed=0, not_private=True)  # fmt: skip
