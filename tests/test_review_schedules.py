"""Review of the sigma-schedule release paths (issue 17, section 5), as an attacker would.

Attacks tried: a noise stage whose device-side std is below the sigma the accountant is told
(float32 rounding of sigma, of the sensitivity and of their product), a schedule whose device
table disagrees with its accounted phases, and a tracker that is told less than what ran.

The device std is read back exactly: step 0 of a noise stage draws the standard normals z from
`fold_in(key, 0)` (documented), and on a zero sum a stage of std s returns float32(s * z)
coordinate by coordinate, which pins s down to one float32.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
from dpjax import _noise

D = 256  # coordinates: enough to pin the device std to one float32


def _zero_sum(sensitivity: float) -> dpjax.ClippedSum:
    return dpjax.clip_and_sum(jnp.zeros((1, D)), sensitivity, mask=jnp.ones(1, bool))


def _normals(key: jax.Array) -> np.ndarray:
    """The standard normals of step 0 (documented: step t draws from `fold_in(key, t)`)."""
    (z,) = _noise._normals_like(jax.random.fold_in(key, 0), [jnp.zeros(D, jnp.float32)])
    return np.asarray(z, np.float32)


def _device_std(out: jax.Array, z: np.ndarray, guess: float) -> Fraction:
    """The float32 s with float32(s * z) == out for every coordinate, as an exact fraction."""
    out = np.asarray(out, np.float32)
    s = np.float32(guess)
    for _ in range(64):
        s = np.nextafter(s, np.float32(0))
    for _ in range(129):
        if np.array_equal(s * z, out):
            return Fraction(float(s))
        s = np.nextafter(s, np.float32(np.inf))
    raise AssertionError(f"no float32 within 64 ulps of {guess} reproduces the noise")


def _accounted_std(sigma: float, sensitivity: float) -> Fraction:
    return Fraction(sigma) * Fraction(sensitivity)


def test_constant_sigma_device_std_is_at_least_the_accounted_std():
    key = jax.random.key(3)
    z = _normals(key)
    sigma, c = 0.7, 1.0  # float32(0.7) < 0.7
    tx = dpjax.gaussian_mechanism(sigma, key=key)
    out, _ = tx.update(_zero_sum(c), tx.init(None))
    assert _device_std(out, z, sigma * c) >= _accounted_std(sigma, c)


def test_schedule_device_std_is_at_least_the_accounted_std():
    key = jax.random.key(4)
    z = _normals(key)
    schedule = dpjax.NoiseSchedule(((0.7, 2),))
    (release,) = schedule.releases(0.01)
    c = 3.0
    tx = dpjax.gaussian_mechanism(schedule, key=key)
    out, _ = tx.update(_zero_sum(c), tx.init(None))
    assert _device_std(out, z, release.noise_multiplier * c) >= _accounted_std(
        release.noise_multiplier, c
    )


def test_online_sigma_device_std_is_at_least_the_recorded_std():
    key = jax.random.key(5)
    z = _normals(key)
    recorded = 0.7  # what the caller records: PoissonGaussianSteps(0.7, q)
    tx = dpjax.gaussian_mechanism(dpjax.OnlineNoise(0.5), key=key)
    out = jax.jit(lambda s: tx.update(_zero_sum(1.0), tx.init(None), noise_multiplier=s)[0])(
        recorded
    )
    assert _device_std(out, z, recorded) >= _accounted_std(recorded, 1.0)


def test_schedule_table_on_device_equals_the_accounted_phases():
    """No finding: step t is noised with exactly the sigma its phase is accounted with."""
    schedule = dpjax.NoiseSchedule.from_values(np.linspace(2.0, 0.6, 40), resolution=0.05)
    releases = schedule.releases(0.02)
    accounted = [r.noise_multiplier for r in releases for _ in range(r.steps)]
    device = np.asarray(jax.vmap(schedule.on_device)(jnp.arange(schedule.steps + 3)))
    host = [schedule.at(t) for t in range(schedule.steps)]
    assert accounted == host == [float(np.float32(s)) for s in host]  # float32 values
    np.testing.assert_array_equal(device[: schedule.steps], np.asarray(host, np.float32))
    assert np.isnan(device[schedule.steps :]).all()  # past the end: NaN, never un-noised
    assert all(
        float(np.float32(s)) <= v for s, v in zip(host, np.linspace(2.0, 0.6, 40), strict=True)
    )


def test_schedule_noise_past_the_end_is_nan_and_reserve_records_nothing():
    """No finding: past its last step the stage releases NaN; `reserve` spends nothing."""
    schedule = dpjax.NoiseSchedule(((1.5, 1),))
    tx = dpjax.gaussian_mechanism(schedule, key=jax.random.key(0))
    state = tx.init(None)
    first, state = tx.update(_zero_sum(1.0), state)
    second, _ = tx.update(_zero_sum(1.0), state)
    assert bool(jnp.isfinite(first).all()) and bool(jnp.isnan(second).all())
    tracker = dpjax.PrivacyTracker(3.0, 1e-5, sampling_rate=0.01)
    assert tracker.reserve(list(schedule.releases(0.01)))
    assert tracker.releases == () and tracker.epsilon_spent() == 0.0


def test_a_release_off_the_reserved_schedule_is_still_charged():
    """No finding: after `reserve`, an extra release breaks the prefix and is paid for."""
    q = 0.01
    tracker = dpjax.PrivacyTracker(1.0, 1e-5, sampling_rate=q)
    steps = tracker.remaining_steps(1.0)
    assert tracker.reserve(list(dpjax.NoiseSchedule(((1.0, steps),)).releases(q)))
    tracker.record(dpjax.GaussianRelease(20.0))  # off the reserved path
    with pytest.raises(dpjax.BudgetExceededError):
        for _ in range(steps):
            tracker.record(dpjax.PoissonGaussianSteps(1.0, q))
    assert tracker.epsilon_spent() <= 1.0
