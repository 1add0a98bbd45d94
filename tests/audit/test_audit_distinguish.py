"""The distinguishing audit catches broken mechanisms, each built by hand from dpjax's pieces.

Every mechanism below releases one step's noisy mean on the same neighbouring batches (a Dirac
canary of norm 100 at clip norm C = 1) and claims what dpjax's accountant says for one Gaussian
release with sigma calibrated to epsilon = 2 (delta = 1e-5); each has one bug that makes it leak
more (too little noise outright: tests/test_audit.py). The audit's 95 % lower bound must exceed
the claim, so check_lower_bound raises.
"""

import jax
import jax.numpy as jnp
import pytest

import dpjax
from dpjax import audit

DELTA, C, BATCH, DIM, RUNS = 1e-5, 1.0, 8, 2, 200_000
SIGMA = dpjax.calibrate_noise_multiplier(2.0, 1.0, 1, DELTA)  # one release at epsilon 2
CLAIMED = dpjax.compute_epsilon(SIGMA, 1, 1.0, DELTA)


def _noise(stddev, key, value):
    tx = dpjax.add_gaussian_noise(stddev, key)
    return tx.update(value, tx.init(None))[0]


def noise_split_per_device(grads, mask, key, devices=4):
    # Each device clips and noises its shard with std sigma*C/devices, as if stds added up;
    # the psum of independent noises has std sigma*C/sqrt(devices).
    def device(g, m, k):
        return _noise(SIGMA * C / devices, k, dpjax.clip_and_sum(g, C, m).sum)

    shards = jax.vmap(device)(
        grads.reshape(devices, -1, DIM), mask.reshape(devices, -1), jax.random.split(key, devices)
    )
    return shards.sum(axis=0) / BATCH


def noise_per_microbatch(grads, mask, key, microbatches=4):
    # Noise added inside the accumulation loop, to every microbatch's clipped sum, scaled down
    # by the microbatch count: the total noise has std sigma*C/sqrt(microbatches).
    def body(total, part):
        g, m, k = part
        return total + _noise(SIGMA * C / microbatches, k, dpjax.clip_and_sum(g, C, m).sum), None

    parts = (
        grads.reshape(microbatches, -1, DIM),
        mask.reshape(microbatches, -1),
        jax.random.split(key, microbatches),
    )
    total, _ = jax.lax.scan(body, jnp.zeros(DIM), parts)
    return total / BATCH


def missed_clip(grads, mask, key):
    # The noise is calibrated to C, but the sum was never clipped.
    summed = jnp.sum(jnp.where(mask[:, None], grads, 0.0), axis=0)
    return _noise(SIGMA * C, key, summed) / BATCH


@pytest.mark.parametrize("mechanism", [noise_split_per_device, noise_per_microbatch, missed_clip])
def test_distinguishing_audit_catches_a_broken_mechanism(mechanism):
    batches = audit.dirac_canary_batches(DIM, BATCH)
    result = audit.distinguishing_audit(
        mechanism, batches, runs=RUNS, delta=DELTA, key=jax.random.key(1)
    )
    with pytest.raises(audit.PrivacyBugError, match="privacy bug"):
        audit.check_lower_bound(result.epsilon, CLAIMED, mechanism.__name__)


def test_distinguishing_audit_validates_its_arguments():
    batches = audit.dirac_canary_batches(DIM, BATCH)
    step = audit.dp_step(C, SIGMA, BATCH)
    with pytest.raises(ValueError, match="runs=4"):
        audit.distinguishing_audit(step, batches, runs=4, delta=DELTA, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key=None"):
        audit.distinguishing_audit(step, batches, runs=100, delta=DELTA, key=None)
    with pytest.raises(ValueError, match="noise_multiplier"):
        audit.dp_step(C, 0.0, BATCH)
