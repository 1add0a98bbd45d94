"""Empirical privacy auditing: measured evidence that dpjax leaks no more than it claims.

A consumer of the mechanism (host side, NumPy and SciPy, driving jitted runs).
Three audits, each ending in an epsilon lower bound at 95 % confidence that
must stay below the accountant's epsilon (:func:`check_lower_bound` raises
:class:`PrivacyBugError` when it does not):

* the **distinguishing audit** of one DP step (:func:`distinguishing_audit`):
  many vectorized runs on neighbouring batches with a Dirac canary;
* **membership inference** on trained models (:func:`loss_threshold_scores`,
  :func:`lira_offline_scores`, :func:`membership_audit`), with
  :func:`train_models` to train targets and reference models;
* **one-run auditing** (:func:`one_run_audit`): input-space and Dirac gradient
  canaries, each included with probability 1/2, one training run.

The bounds themselves (:func:`clopper_pearson`, :func:`epsilon_from_rates`,
:func:`epsilon_lower_bound`, :func:`threshold_bound`, :func:`one_run_p_value`,
:func:`one_run_epsilon_lower_bound`) are small functions of counts.
"""

from dpjax.audit._bounds import PrivacyBugError as PrivacyBugError
from dpjax.audit._bounds import ThresholdBound as ThresholdBound
from dpjax.audit._bounds import check_lower_bound as check_lower_bound
from dpjax.audit._bounds import clopper_pearson as clopper_pearson
from dpjax.audit._bounds import epsilon_from_rates as epsilon_from_rates
from dpjax.audit._bounds import epsilon_lower_bound as epsilon_lower_bound
from dpjax.audit._bounds import threshold_bound as threshold_bound
from dpjax.audit._distinguish import DistinguishingAudit as DistinguishingAudit
from dpjax.audit._distinguish import NeighbouringBatches as NeighbouringBatches
from dpjax.audit._distinguish import dirac_canary_batches as dirac_canary_batches
from dpjax.audit._distinguish import distinguishing_audit as distinguishing_audit
from dpjax.audit._distinguish import dp_step as dp_step
from dpjax.audit._membership import MembershipAudit as MembershipAudit
from dpjax.audit._membership import lira_offline_scores as lira_offline_scores
from dpjax.audit._membership import logit_confidence as logit_confidence
from dpjax.audit._membership import loss_threshold_scores as loss_threshold_scores
from dpjax.audit._membership import membership_audit as membership_audit
from dpjax.audit._membership import roc_auc as roc_auc
from dpjax.audit._membership import tpr_at_fpr as tpr_at_fpr
from dpjax.audit._one_run import DiracCanaries as DiracCanaries
from dpjax.audit._one_run import InputCanaries as InputCanaries
from dpjax.audit._one_run import OneRunAudit as OneRunAudit
from dpjax.audit._one_run import dirac_canaries as dirac_canaries
from dpjax.audit._one_run import dirac_canary_scores as dirac_canary_scores
from dpjax.audit._one_run import input_space_canaries as input_space_canaries
from dpjax.audit._one_run import one_run_audit as one_run_audit
from dpjax.audit._one_run import one_run_best_bound as one_run_best_bound
from dpjax.audit._one_run import one_run_epsilon_lower_bound as one_run_epsilon_lower_bound
from dpjax.audit._one_run import one_run_p_value as one_run_p_value
from dpjax.audit._one_run import with_dirac_canaries as with_dirac_canaries
from dpjax.audit._training import TrainedModels as TrainedModels
from dpjax.audit._training import softmax_logits as softmax_logits
from dpjax.audit._training import train_models as train_models
