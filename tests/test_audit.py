"""Statistical privacy audit of one DP-SGD step: neighbouring data sets, a canary, many draws.

The empirical epsilon lower bound (from the best threshold test's false/true positive rates,
with Clopper-Pearson confidence bounds) must stay below the epsilon the accountant claims; a
mechanism with less noise than claimed must be caught.
"""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dpjax

C, SIGMA, DELTA, TRIALS = 1.0, 1.0, 1e-5, 200_000


def _outputs(noise_multiplier):
    """Projections on the canary direction of the privatized sum, for D and D' = D + canary."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 8)).astype(np.float32)
    canary = np.zeros((1, 8), np.float32)
    canary[0, 0] = 100.0  # clipped to C along e_1
    d, d_prime = jnp.asarray(base), jnp.asarray(np.vstack([base, canary]))
    sums = [dpjax.clip_and_sum(g, C, jnp.ones(len(g), bool)) for g in (d, d_prime)]
    tx = dpjax.noisy_mean(noise_multiplier, 5, key=jax.random.key(0))
    state = tx.init(None)
    keys = jax.random.split(jax.random.key(1), TRIALS)

    @jax.jit
    def draws(s):
        def one(k):
            noisy, _ = tx.update(s, (state[0]._replace(key=k), state[1]))
            return noisy[0]

        return jax.vmap(one)(keys)

    return [np.asarray(draws(s), np.float64) for s in sums]


def _empirical_epsilon(out_d, out_dp, delta, alpha=0.01):
    """Largest eps lower bound over thresholds: log((TPR_low - delta) / FPR_high)."""
    n = len(out_d)
    best = 0.0
    for tau in np.quantile(out_d, np.linspace(0.9, 0.99999, 60)):
        fp, tp = int((out_d > tau).sum()), int((out_dp > tau).sum())
        fpr_hi = scipy.stats.beta.ppf(1 - alpha / 2, fp + 1, n - fp) if fp < n else 1.0
        tpr_lo = scipy.stats.beta.ppf(alpha / 2, tp, n - tp + 1) if tp > 0 else 0.0
        if tpr_lo > delta:
            best = max(best, float(np.log((tpr_lo - delta) / fpr_hi)))
    return best


def _claimed_epsilon(sigma):
    accountant = dp_accounting.pld.PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma))
    return accountant.get_epsilon(DELTA)


def test_one_step_leaks_no_more_than_the_accountant_claims():
    out_d, out_dp = _outputs(SIGMA)
    empirical, claimed = _empirical_epsilon(out_d, out_dp, DELTA), _claimed_epsilon(SIGMA)
    assert empirical <= claimed
    assert empirical >= 0.25 * claimed  # the audit has power: it sees most of the leakage


@pytest.mark.parametrize("factor", [0.5])
def test_audit_catches_a_mechanism_with_less_noise_than_claimed(factor):
    out_d, out_dp = _outputs(SIGMA * factor)  # runs sigma*factor while the claim is sigma
    assert _empirical_epsilon(out_d, out_dp, DELTA) > _claimed_epsilon(SIGMA)
