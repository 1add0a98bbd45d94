"""Membership inference: a loss-threshold attack and offline LiRA, with their AUC and epsilon bound.

Host side. An attack gives every candidate example a score (higher = more
likely a member of the target model's training data); :func:`membership_audit`
reports the ROC AUC, the true positive rate at low false positive rates (the
regime that matters for privacy) and the epsilon lower bound the attack proves
(:func:`dpjax.audit.threshold_bound`).

The epsilon bound from one model treats each candidate as one trial. That is
rigorous when each candidate was made a member independently with probability
1/2 before training (then it is a one-run audit: see
:func:`dpjax.audit.one_run_audit`, which this module's scores feed as well);
for a fixed member/non-member split it is the usual heuristic reading.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from dpjax.audit._bounds import ThresholdBound, threshold_bound


def logit_confidence(logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike) -> np.ndarray:
    """The logit-scaled confidence `log(p_y / (1 - p_y))` of the true label, computed stably.

    Host side. LiRA's statistic: roughly Gaussian across models, unlike `p_y`.

    Args:
      logits: `(..., n, classes)`.
      labels: `(n,)` integer labels.

    Returns:
      `(..., n)` float64.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import logit_confidence
      >>> logit_confidence(np.log([[0.75, 0.25]]), np.array([0])).round(4).tolist()
      [1.0986]
    """
    z = jnp.asarray(logits, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
    correct = jnp.sum(jnp.where(onehot, z, 0.0), axis=-1)
    others = jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, z), axis=-1)
    return np.asarray(correct - others, np.float64)


def loss_threshold_scores(losses: np.typing.ArrayLike) -> np.ndarray:
    """The loss-threshold attack's scores: minus the target model's loss on each candidate.

    Host side. Members tend to have lower loss (Yeom et al. 2018).

    Args:
      losses: `(n,)` per-example losses of the target model.

    Returns:
      `(n,)` float64 scores, higher = member.

    Example:
      >>> from dpjax.audit import loss_threshold_scores
      >>> loss_threshold_scores([0.1, 2.0]).tolist()
      [-0.1, -2.0]

    References:
      Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning:
      Analyzing the Connection to Overfitting", CSF 2018.
    """
    return -np.asarray(losses, np.float64)


def lira_offline_scores(
    target_confidence: np.typing.ArrayLike, reference_confidence: np.typing.ArrayLike
) -> np.ndarray:
    """Offline LiRA scores: how far above its OUT distribution the target's confidence lies.

    Host side. `reference_confidence[k, i]` is the :func:`logit_confidence` of
    reference model k on candidate i, where no reference model was trained on
    any candidate (data disjoint from the target's members). The OUT
    distribution of candidate i is a Gaussian with the reference models' mean
    for i and a variance pooled over all candidates (the "global variance" that
    Carlini et al. recommend for few reference models). The score is the
    standardized distance, a monotone function of the one-sided likelihood test.

    Args:
      target_confidence: `(n,)` logit-scaled confidence of the target model.
      reference_confidence: `(K, n)`, K >= 2 reference models.

    Returns:
      `(n,)` float64 scores, higher = member.

    Raises:
      ValueError: if the shapes disagree or K < 2.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import lira_offline_scores
      >>> ref = np.array([[0.0, 1.0], [2.0, 3.0]])
      >>> lira_offline_scores([3.0, 2.0], ref).round(6).tolist()
      [1.414214, 0.0]

    References:
      Carlini, Chien, Nasr, Song, Terzis & Tramer, "Membership Inference
      Attacks From First Principles", IEEE S&P 2022 (offline LiRA, Section VI).
    """
    target = np.asarray(target_confidence, np.float64)
    ref = np.asarray(reference_confidence, np.float64)
    if ref.ndim != 2 or ref.shape[0] < 2 or target.shape != (ref.shape[1],):
        raise ValueError(
            f"target_confidence {target.shape} must be (n,) and reference_confidence "
            f"{ref.shape} (K, n) with K >= 2 reference models."
        )
    mean = ref.mean(axis=0)
    std = float(np.sqrt(np.mean(ref.var(axis=0, ddof=1)))) + 1e-12
    return (target - mean) / std


def roc_auc(scores_out: np.typing.ArrayLike, scores_in: np.typing.ArrayLike) -> float:
    """The area under the ROC curve: P[in score > out score] (+ half the ties).

    Host side (Mann-Whitney U).

    Args:
      scores_out: scores of non-members.
      scores_in: scores of members.

    Returns:
      The AUC in [0, 1]; 0.5 is chance.

    Example:
      >>> from dpjax.audit import roc_auc
      >>> roc_auc([0.0, 1.0], [2.0, 0.5])
      0.75
    """
    out = np.asarray(scores_out, np.float64).ravel()
    inn = np.asarray(scores_in, np.float64).ravel()
    ranks = scipy.stats.rankdata(np.concatenate([out, inn]))
    u = ranks[len(out) :].sum() - len(inn) * (len(inn) + 1) / 2
    return float(u / (len(out) * len(inn)))


def tpr_at_fpr(
    scores_out: np.typing.ArrayLike, scores_in: np.typing.ArrayLike, fpr: float
) -> float:
    """The true positive rate at the threshold whose false positive rate is at most `fpr`.

    Host side. The threshold is the strictest one letting through at most
    `floor(fpr * n_out)` non-members (none when that is 0).

    Args:
      scores_out: scores of non-members.
      scores_in: scores of members.
      fpr: the false positive rate, in [0, 1].

    Returns:
      The share of members scoring above the threshold.

    Example:
      >>> from dpjax.audit import tpr_at_fpr
      >>> tpr_at_fpr([0.0, 1.0, 2.0, 3.0], [2.5, 3.5, 4.0, 0.5], 0.25)
      0.75
    """
    out = np.sort(np.asarray(scores_out, np.float64).ravel())[::-1]
    inn = np.asarray(scores_in, np.float64).ravel()
    allowed = int(np.floor(fpr * len(out)))
    threshold = out[allowed] if allowed < len(out) else -np.inf  # scores > threshold pass
    return float(np.mean(inn > threshold))


class MembershipAudit(NamedTuple):
    """The result of :func:`membership_audit`.

    Attributes:
      auc: ROC AUC (0.5 = chance).
      tpr_at_0_1pct: TPR at FPR <= 0.1 %.
      tpr_at_1pct: TPR at FPR <= 1 %.
      epsilon: the epsilon lower bound at `bound.confidence`.
      bound: the :class:`dpjax.audit.ThresholdBound` behind it.
      members: members scored.
      non_members: non-members scored.
    """

    auc: float
    tpr_at_0_1pct: float
    tpr_at_1pct: float
    epsilon: float
    bound: ThresholdBound
    members: int
    non_members: int


def membership_audit(
    scores_members: np.typing.ArrayLike,
    scores_non_members: np.typing.ArrayLike,
    delta: float,
    confidence: float = 0.95,
    *,
    seed: int = 0,
) -> MembershipAudit:
    """AUC, TPR at FPR 0.1 % and 1 %, and the epsilon lower bound of a membership attack.

    Host side.

    Args:
      scores_members: attack scores of the target's members.
      scores_non_members: attack scores of non-members (same distribution, unseen).
      delta: the delta of the claim tested.
      confidence: of the epsilon bound, in [0.5, 1).
      seed: seed of the threshold-selection split.

    Returns:
      :class:`MembershipAudit`.

    Raises:
      ValueError: if a set has fewer than 4 scores or a score is not finite.

    Example:
      >>> import numpy as np
      >>> from dpjax.audit import membership_audit
      >>> rng = np.random.default_rng(0)
      >>> result = membership_audit(rng.normal(1, 1, 2000), rng.normal(0, 1, 2000), 1e-5)
      >>> round(result.auc, 1)
      0.8

    **Privacy:** compare `epsilon` with the target's accountant epsilon
    (:func:`dpjax.audit.check_lower_bound`).
    """
    inn = np.asarray(scores_members, np.float64).ravel()
    out = np.asarray(scores_non_members, np.float64).ravel()
    bound = threshold_bound(out, inn, delta, confidence, seed=seed)
    return MembershipAudit(
        auc=roc_auc(out, inn),
        tpr_at_0_1pct=tpr_at_fpr(out, inn, 0.001),
        tpr_at_1pct=tpr_at_fpr(out, inn, 0.01),
        epsilon=bound.epsilon,
        bound=bound,
        members=len(inn),
        non_members=len(out),
    )
