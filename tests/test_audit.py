"""Statistical privacy audit of one DP step (dpjax.audit): neighbouring batches, a canary, many runs.

The 95 % epsilon lower bound of dpjax's own step (clip -> noise -> mean) must stay below the
epsilon the accountant claims for it, and come close to it; a step with less noise than claimed
must be caught. Broken mechanisms of other kinds: tests/audit/test_audit_distinguish.py.
"""

import jax
import pytest

import dpjax
from dpjax import audit

C, DELTA, BATCH, RUNS = 1.0, 1e-5, 8, 1_000_000
SIGMA = dpjax.calibrate_noise_multiplier(2.0, 1.0, 1, DELTA)  # one Gaussian release at epsilon 2
CLAIMED = dpjax.compute_epsilon(SIGMA, 1, 1.0, DELTA)


def _audit(noise_multiplier):
    return audit.distinguishing_audit(
        audit.dp_step(C, noise_multiplier, BATCH),
        audit.dirac_canary_batches(4, BATCH),
        runs=RUNS,
        delta=DELTA,
        key=jax.random.key(0),
    )


def test_one_step_leaks_no_more_than_the_accountant_claims():
    result = _audit(SIGMA)
    audit.check_lower_bound(result.epsilon, CLAIMED, "the single-step audit")
    assert result.epsilon >= 0.5 * CLAIMED  # tight: 10**6 runs reach half of the claim


@pytest.mark.parametrize("factor", [0.5])
def test_audit_catches_a_mechanism_with_less_noise_than_claimed(factor):
    result = _audit(SIGMA * factor)  # runs sigma*factor while the claim is sigma
    with pytest.raises(audit.PrivacyBugError):
        audit.check_lower_bound(result.epsilon, CLAIMED)
