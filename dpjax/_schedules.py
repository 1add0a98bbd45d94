"""Noise-multiplier schedules: sigma_t per step, accounted exactly (host side, used on device).

A :class:`NoiseSchedule` is the table of the noise multipliers a run uses,
stored as phases of equal sigma. The SAME record drives the noise stage
(:func:`dpjax.gaussian_mechanism` and :func:`dpjax.noisy_mean` accept it in
place of a number: step t draws noise with std `sigma_t * sensitivity`) and the
accountant (:meth:`NoiseSchedule.releases`, one
:class:`dpjax.PoissonGaussianSteps` per phase), so what is accounted is what
ran. Any optax-style schedule (a function of the step) becomes one with
:meth:`NoiseSchedule.from_schedule`; :func:`calibrate_noise_schedule` keeps its
shape and scales it to a target epsilon.

The schedule's shape is rounded DOWN onto a geometric grid (relative spacing
`resolution`, 5 % by default), then scaled, then rounded down to a float32
value: at most 5 % less noise than the schedule asked (and the accounted sigma
is the rounded one, so what runs is what is accounted), and few distinct
phases, which keeps the PLD accountant fast.

References:
  Lee & Kifer, "Concentrated Differentially Private Gradient Descent with
  Adaptive per-Iteration Privacy Budget", KDD 2018 (decaying noise).
  Yu, Zhang, Chen, Yin, Liu, "Differentially Private Model Publishing for Deep
  Learning", IEEE S&P 2019 (noise schedules).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _accounting, _releases, _validation


def _round_down(sigmas: np.ndarray, resolution: float) -> np.ndarray:
    """`sigmas` rounded down onto the grid (1 + resolution)**k, then down to float32 values."""
    sigmas = np.asarray(sigmas, np.float64)
    if resolution > 0:
        base = 1.0 + resolution
        k = np.floor(np.log(sigmas) / math.log(base))
        k = np.where(base**k > sigmas, k - 1, k)
        sigmas = base**k
    down = sigmas.astype(np.float32)
    down = np.where(down.astype(np.float64) > sigmas, np.nextafter(down, np.float32(0)), down)
    return down.astype(np.float64)


def _tabulate(schedule: Callable[[int], float], steps: int) -> np.ndarray:
    """`schedule(t)` for t < steps, as float64 (vectorized when the schedule is jnp code)."""
    try:
        values = jax.vmap(cast(Any, schedule))(jnp.arange(steps))
    except Exception:  # a Python schedule with control flow: evaluate step by step
        values = [schedule(t) for t in range(steps)]
    values = np.asarray(values, np.float64).reshape(-1)
    if values.shape != (steps,):
        raise ValueError(f"the schedule returned {values.shape[0]} values for {steps} steps.")
    return values


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """The noise multiplier of every step, as phases `((sigma, steps), ...)` in order.

    Args:
      phases: `(sigma, steps)` pairs; each sigma is rounded down to a float32
        (the value the device uses) and consecutive equal sigmas are merged.

    Raises:
      ValueError: if `phases` is empty, a sigma is not a valid noise multiplier
        or a step count is not in [1, 10**9].

    Example:
      >>> import dpjax
      >>> s = dpjax.NoiseSchedule(((2.0, 10), (1.0, 5)))
      >>> s.steps, s.at(9), s.at(10)
      (15, 2.0, 1.0)

    **Privacy:** a run is accounted exactly by :meth:`releases` only if step t
    (counted from 0, one noise draw per step) noised with :meth:`at`(t); the
    noise stage does so by its own step counter, and returns NaN (never an
    un-noised value) past the last step.
    """

    phases: tuple[tuple[float, int], ...]

    def __post_init__(self):
        if not self.phases:
            raise ValueError("phases=() is empty; pass ((sigma, steps), ...), e.g. ((1.1, 1000),).")
        merged: list[list] = []
        for i, phase in enumerate(self.phases):
            if not (isinstance(phase, Sequence) and len(phase) == 2):
                raise ValueError(f"phases[{i}]={phase!r} must be a pair (sigma, steps).")
            sigma = float(
                _round_down(
                    np.array([_validation.check_noise_multiplier(phase[0], f"phases[{i}][0]")]),
                    0.0,
                )[0]
            )
            steps = _validation.check_steps(phase[1], f"phases[{i}][1]")
            if merged and merged[-1][0] == sigma:
                merged[-1][1] += steps
            else:
                merged.append([sigma, steps])
        object.__setattr__(self, "phases", tuple((s, t) for s, t in merged))
        _validation.check_steps(self.steps, "the schedule's total steps")

    @classmethod
    def from_schedule(
        cls,
        schedule: Callable[[int], float],
        steps: int,
        *,
        scale: float = 1.0,
        resolution: float = 0.05,
    ) -> NoiseSchedule:
        """Tabulates `scale * schedule(t)` for t < steps, rounded down onto the grid.

        Args:
          schedule: step -> sigma (e.g. `optax.linear_schedule(2.0, 1.0, 1000)`).
          steps: the run's number of steps T.
          scale: multiplies every value (what :func:`calibrate_noise_schedule` tunes).
          resolution: relative grid spacing in [0, 0.5]; 0 keeps every float32 value.

        Raises:
          ValueError: for invalid arguments, or a schedule value that is not a
            valid noise multiplier (named with its step).
        """
        t_max = _validation.check_steps(steps)
        if t_max > 10**7:
            raise ValueError(
                f"steps={steps} is too many to tabulate a schedule step by step; pass phases "
                "to NoiseSchedule directly."
            )
        return cls.from_values(_tabulate(schedule, t_max), scale=scale, resolution=resolution)

    @classmethod
    def from_values(
        cls, values: Sequence[float] | np.ndarray, *, scale: float = 1.0, resolution: float = 0.05
    ) -> NoiseSchedule:
        """Like :meth:`from_schedule`, from the tabulated values `sigma_0, ..., sigma_{T-1}`."""
        if not (isinstance(resolution, (int, float)) and 0 <= resolution <= 0.5):
            raise ValueError(f"resolution={resolution!r} must lie in [0, 0.5]; e.g. 0.01.")
        scale = _validation.check_positive_float(scale, "scale", "1.0")
        values = np.asarray(values, np.float64).reshape(-1)
        bad = ~(np.isfinite(values * scale) & (values > 0))
        if values.size == 0 or bad.any():
            t = int(np.argmax(bad)) if values.size else 0
            raise ValueError(
                f"the schedule gives sigma={values[t] * scale if values.size else None!r} at step "
                f"{t}; every step needs a finite noise multiplier > 0 (sigma = 0 is no privacy)."
            )
        # The SHAPE goes on the grid, then the scale multiplies it: epsilon is then continuous in
        # the scale (calibration lands within its tolerance) and equal grid values stay merged.
        sigmas = _round_down(_round_down(values, float(resolution)) * scale, 0.0)
        starts = np.flatnonzero(np.r_[True, sigmas[1:] != sigmas[:-1]])
        counts = np.diff(np.r_[starts, sigmas.size])
        return cls(tuple((float(sigmas[i]), int(c)) for i, c in zip(starts, counts, strict=True)))

    @property
    def steps(self) -> int:
        """The number of steps T the schedule covers."""
        return sum(t for _, t in self.phases)

    def at(self, step: int) -> float:
        """sigma at `step` (from 0).

        Raises:
          ValueError: if `step` is outside [0, steps).
        """
        step = _validation.check_nonnegative_int(step, "step")
        for sigma, count in self.phases:
            if step < count:
                return sigma
            step -= count
        raise ValueError(f"step is past the schedule's {self.steps} steps; extend the schedule.")

    def releases(self, sampling_rate: float) -> tuple[_releases.PoissonGaussianSteps, ...]:
        """One :class:`dpjax.PoissonGaussianSteps` per phase: the whole run's account."""
        return tuple(_releases.PoissonGaussianSteps(s, sampling_rate, t) for s, t in self.phases)

    def epsilon(self, sampling_rate: float, delta: float, *, accountant: str = "pld") -> float:
        """The epsilon of the whole schedule (:func:`dpjax.compute_epsilon` of its phases)."""
        sigmas, counts = zip(*self.phases, strict=True)
        return _accounting.compute_epsilon(
            list(sigmas), list(counts), sampling_rate, delta, accountant=accountant
        )

    def on_device(self, count: jax.Array) -> jax.Array:
        """sigma at step `count` as a float32 array, NaN past the last step (jittable)."""
        ends = jnp.asarray(np.cumsum([t for _, t in self.phases]), jnp.int32)
        sigmas = jnp.asarray([s for s, _ in self.phases], jnp.float32)
        index = jnp.searchsorted(ends, count, side="right")
        inside = index < len(self.phases)
        return jnp.where(inside, sigmas[jnp.minimum(index, len(self.phases) - 1)], jnp.nan)


@dataclasses.dataclass(frozen=True)
class OnlineNoise:
    """A noise multiplier chosen on the host at every step, from released quantities only.

    Pass it as the noise multiplier of :func:`dpjax.gaussian_mechanism` /
    :func:`dpjax.noisy_mean`; each update then takes the step's sigma as the
    keyword `noise_multiplier=` (a float, traced under `jit`, so changing it
    does not recompile). The caller records the SAME sigma with the tracker
    before releasing the step (`tracker.record(PoissonGaussianSteps(sigma, q))`),
    which stops the run hard when the budget is spent. A sigma below `minimum`
    (or not finite) gives a NaN update, never an under-noised one.

    Args:
      minimum: the smallest sigma the run may use, a valid noise multiplier.

    Raises:
      ValueError: if `minimum` is not a valid noise multiplier.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> tx = dpjax.gaussian_mechanism(dpjax.OnlineNoise(0.5), key=jax.random.key(0))
      >>> clipped = dpjax.clip_and_sum(jnp.zeros((2, 3)), 1.0, mask=jnp.ones(2, bool))
      >>> out, _ = tx.update(clipped, tx.init(None), noise_multiplier=0.1)
      >>> bool(jnp.isnan(out).all())
      True

    **Privacy:** sigma must be a function of public or already-released
    values (a noisy training loss, metrics on data declared public), and the
    accountant must be told each step's sigma: then each step is the sampled
    Gaussian mechanism at that sigma, and the composition is exact.

    References:
      Yu, Zhang, Chen, Yin, Liu, "Differentially Private Model Publishing for
      Deep Learning", IEEE S&P 2019 (noise adapted on public validation data).
    """

    minimum: float

    def __post_init__(self):
        object.__setattr__(
            self, "minimum", _validation.check_noise_multiplier(self.minimum, "minimum")
        )

    def on_device(self, sigma: Any) -> jax.Array:
        """`sigma` as float32, NaN if it is below `minimum` or not finite (jittable)."""
        if sigma is None:
            raise ValueError(
                "this noise stage uses dpjax.OnlineNoise: pass the step's sigma to update as "
                "noise_multiplier=sigma (and record the same sigma with the tracker)."
            )
        value = jnp.asarray(sigma, jnp.float32)
        ok = jnp.isfinite(value) & (value >= jnp.float32(self.minimum))
        return jnp.where(ok, value, jnp.nan)


class PlateauNoise:
    """Adaptive noise: multiply sigma by `factor` when a public metric stops improving.

    Host side, for :class:`OnlineNoise`. Feed :meth:`observe` a value computed
    from released quantities only (the loss of the released parameters on data
    declared public, or a noisy training loss that was itself accounted);
    :attr:`sigma` is the noise multiplier of the next step, never below
    `minimum`. Spending is not planned ahead: a smaller sigma spends more per
    step, and the tracker stops the run hard at the target epsilon.

    Args:
      initial: the first sigma.
      minimum: the floor (also :class:`OnlineNoise`'s minimum).
      factor: the decay in (0, 1).
      patience: observations without improvement before a decay, >= 1.

    Raises:
      ValueError: for invalid arguments.

    Example:
      >>> import dpjax
      >>> policy = dpjax.PlateauNoise(2.0, minimum=1.0, factor=0.5, patience=1)
      >>> [policy.observe(loss) for loss in (0.9, 0.8, 0.8, 0.8, 0.8)]
      [2.0, 2.0, 1.0, 1.0, 1.0]

    **Privacy:** sigma is a function of the observed values; they must be
    public or already released (and accounted), or the choice of sigma leaks.

    References:
      Yu, Zhang, Chen, Yin, Liu, "Differentially Private Model Publishing for
      Deep Learning", IEEE S&P 2019.
    """

    def __init__(self, initial: float, *, minimum: float, factor: float = 0.8, patience: int = 3):
        self.sigma = _validation.check_noise_multiplier(initial, "initial")
        self.minimum = _validation.check_noise_multiplier(minimum, "minimum")
        if self.minimum > self.sigma:
            raise ValueError(f"minimum={minimum!r} exceeds initial={initial!r}; lower minimum.")
        if not (isinstance(factor, (int, float)) and 0.0 < factor < 1.0):
            raise ValueError(f"factor={factor!r} must lie in (0, 1); e.g. factor=0.8.")
        self.factor = float(factor)
        self.patience = _validation.check_positive_int(patience, "patience", "3")
        self._best = math.inf
        self._stale = 0

    def observe(self, metric: float) -> float:
        """Takes one public value (lower is better); returns sigma for the next step."""
        value = float(metric)
        if value < self._best:
            self._best, self._stale = value, 0
        else:
            self._stale += 1
            if self._stale >= self.patience:
                self.sigma = max(self.minimum, self.sigma * self.factor)
                self._stale = 0
        return self.sigma


def calibrate_noise_schedule(
    schedule: Callable[[int], float],
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: str = "pld",
    rtol: float = 0.01,
    resolution: float = 0.05,
) -> NoiseSchedule:
    """Scales a schedule's shape so that the whole run spends the target epsilon.

    Host side. Finds `scale` with `target * (1 - rtol) <= eps <= target` for
    :meth:`NoiseSchedule.from_schedule`(schedule, steps, scale=scale), by the
    same search as :func:`dpjax.calibrate_noise_multiplier` (never over).

    Args:
      schedule: the shape, step -> relative sigma (e.g.
        `optax.linear_schedule(1.0, 0.5, steps)` for a linear decay to half).
      target_epsilon: the epsilon to spend, > 0.
      sampling_rate: Poisson rate q.
      steps: T.
      delta: target delta.
      accountant: "pld" (default) or "rdp".
      rtol: relative tolerance below the target.
      resolution: the grid of :meth:`NoiseSchedule.from_schedule`.

    Returns:
      The calibrated :class:`NoiseSchedule`.

    Raises:
      ValueError: for invalid arguments or an unreachable target.

    Example:
      >>> import optax, dpjax
      >>> s = dpjax.calibrate_noise_schedule(optax.linear_schedule(1.0, 0.5, 100), 2.0,
      ...                                    0.05, 100, 1e-5)
      >>> 1.98 <= s.epsilon(0.05, 1e-5) <= 2.0, s.at(0) > s.at(99)
      (True, True)

    **Privacy:** as for :func:`dpjax.compute_epsilon`, with the schedule's own
    sigma at every step.
    """
    target = _validation.check_target_epsilon(target_epsilon)
    q = _validation.check_sampling_rate(sampling_rate)
    t_max = _validation.check_steps(steps)
    delta = _validation.check_delta(delta)
    accountant = _validation.check_accountant(accountant)
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"rtol={rtol!r} must lie in (0, 1); pass e.g. rtol=0.01.")
    values = _tabulate(schedule, t_max)
    NoiseSchedule.from_values(values, resolution=0.0)  # validates the shape

    def build(scale: float) -> NoiseSchedule:
        return NoiseSchedule.from_values(values, scale=scale, resolution=resolution)

    def eps(scale: float) -> float:
        return build(scale).epsilon(q, delta, accountant=accountant)

    context = f"the schedule's shape, sampling_rate={q:g}, steps={t_max}, delta={delta:g}"
    return build(_accounting.search_noise_multiplier(eps, target, rtol, context))
