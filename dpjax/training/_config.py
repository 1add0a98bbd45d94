"""What a training run is: its configuration and its plan, both validated once (host side)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import dpjax
from dpjax import _validation
from dpjax.data import DATASET_NAMES
from dpjax.models import MODEL_NAMES
from dpjax.training import _levers

OPTIMIZERS = ("adam", "sgd", "momentum")
CLIPPING_MODES = ("auto", "vmap", "ghost")
NOISE_SAMPLERS = ("float", "discrete")
FEATURES = ("none", "scatternet")
MAX_STEPS = 2**31 - 1
"""Most steps a run may take: the noise counter is an int32, and a saturated counter would
reuse one noise key for every later step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated when built).

    The defaults are the configuration tuned on the digits VALIDATION split at
    epsilon = 3 (see benchmarks/utility.py).

    Attributes:
      dataset: one of `dpjax.data.DATASET_NAMES`.
      model: one of `dpjax.models.MODEL_NAMES`.
      target_epsilon: the privacy budget; training stops before the step that
        would exceed it. With `noise_multiplier=None`, sigma is calibrated so the
        whole run spends (just under) this budget.
      delta: the delta of (epsilon, delta)-DP; must be below 1/N.
      noise_multiplier: sigma; None calibrates it from `target_epsilon`.
      clip_norm: per-example clip norm C.
      batch_size: EXPECTED batch size; the sampling rate is `batch_size / N`.
      epochs: training length in epochs (steps = ceil(epochs * N / batch_size)).
      steps: training length in steps (overrides `epochs`).
      lr: learning rate.
      optimizer: one of `OPTIMIZERS`.
      seed: an integer in [0, 2**64) that seeds the model init, the sampler and
        the noise (independent 64-bit streams derived with
        `numpy.random.SeedSequence`). None (default) draws a secret 64-bit seed
        from the OS (`secrets`); it is never written to the summary or the log,
        only to the (sensitive) checkpoint. An explicit seed is for
        reproducible research: whoever knows it can regenerate the noise.
      microbatch_size: physical batch; None lets the sampler choose.
      eval_every: evaluate every this many steps (and at the end).
      accountant: 'pld' or 'rdp'.
      clipping: how per-example gradients are clipped: 'vmap' (materialize them
        with `jax.vmap`; any model), 'ghost' (book-keeping ghost clipping, one
        backward pass and no per-example gradients: every parameter must be in
        a `GhostLinear`/`GhostConv` layer, as in the 'logreg', 'mlp' and 'cnn'
        models), or 'auto' (ghost when possible). Both give the same clipped
        sum.
      not_private: NOT PRIVATE baseline: no clipping, no noise, no accounting.
        Refused together with any of the four levers below.
      noise_schedule: the noise multiplier over the run: "constant" (default),
        "linear:R" (sigma decays linearly to R times its start at the last
        step) or "exponential:R" (geometric interpolation, sigma_t = sigma_0 *
        R**(t / (T - 1))), R = sigma_end / sigma_start > 0. With
        `noise_multiplier=None` the schedule's shape is scaled so the run
        spends (just under) `target_epsilon`; else it starts at
        `noise_multiplier`. Each sigma_t is rounded DOWN onto a 5 % grid
        (:class:`dpjax.NoiseSchedule`), and the rounded value is both used and
        accounted. **Privacy:** accounted exactly, step by step: step t adds
        noise of std sigma_t * C and records `PoissonGaussianSteps(sigma_t, q)`.
      clip_groups: per-layer clipping: "none" (default: one global clip norm),
        "equal" (each of the G layers clipped to C / sqrt(G)) or "by-size"
        (C_g**2 proportional to the layer's parameter count). A layer is a
        parameter's path without its last key. **Privacy:** the clipped sum's
        sensitivity is sqrt(sum_g C_g**2) = clip_norm, so the noise and the
        account are those of global clipping at clip_norm.
      ema_decay: None (default) or a decay in [0, 1): keep an exponential
        moving average of the parameters (warmed up as in De et al. 2022:
        decay_t = min(ema_decay, (1 + t) / (10 + t))), evaluate on it and
        return it. **Privacy:** post-processing of the released parameters:
        no privacy cost.
      augmult: augmentation multiplicity K; 0 or 1 (default 0) is off. With
        K >= 2 each example's loss is the mean over K random augmentations of
        it (shifts by up to 2 pixels; horizontal flips for fashion-mnist
        only), for image inputs `(N, H, W, C)` on the 'vmap' clipping path
        ('auto' picks it; 'ghost' is refused). **Privacy:** the augmentations
        live inside the example's own loss, before clipping: the sensitivity
        and the privacy cost are unchanged.
      features: "none" (default) or "scatternet": train on the scattering
        transform of the images (J = 2, L = 8; 28x28 -> 7x7x81) with
        per-example GroupNorm (27 groups), :func:`dpjax.features.scatternet_dataset`,
        computed once before training; use a model that takes any input shape
        ('logreg', 'mlp', 'gn-cnn'). **Privacy:** a fixed function of each
        example, independent of the rest of the data: no privacy cost.
      noise_sampler: "float" (default: dpjax's float32 Gaussian on device) or
        "discrete": the floating-point-attack-resistant Gaussian,
        `dpjax.gaussian_mechanism(..., sampler="discrete")` (the sum rounded to a
        fixed-point grid, exact discrete Gaussian noise from the OS CSPRNG on the
        host, about 5 us per parameter and step; constant noise only).
        **Privacy:** accounted as the same `PoissonGaussianSteps(sigma, q)`, under
        the assumption stated in `gaussian_mechanism`; the rounding is accounted
        (the noise is about 1 % larger).
    """

    dataset: str = "digits"
    model: str = "mlp"
    target_epsilon: float | None = 3.0
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    batch_size: int = 256
    epochs: float | None = 60.0
    steps: int | None = None
    lr: float = 0.01
    optimizer: str = "adam"
    seed: int | None = None
    microbatch_size: int | None = None
    eval_every: int = 50
    accountant: str = "pld"
    clipping: str = "auto"
    not_private: bool = False
    noise_schedule: str = "constant"
    clip_groups: str = "none"
    ema_decay: float | None = None
    augmult: int = 0
    features: str = "none"
    noise_sampler: str = "float"

    def __post_init__(self):
        if self.dataset not in DATASET_NAMES:
            raise ValueError(
                f"dataset={self.dataset!r} is unknown; pass one of {', '.join(DATASET_NAMES)}."
            )
        if self.model not in MODEL_NAMES:
            raise ValueError(
                f"model={self.model!r} is unknown; pass one of {', '.join(MODEL_NAMES)}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r} is unknown; pass one of {', '.join(OPTIMIZERS)}."
            )
        _validation.check_positive_int(self.batch_size, "batch_size", "256")
        _validation.check_positive_float(self.lr, "lr", "1e-3")
        _validation.check_positive_int(self.eval_every, "eval_every", "50")
        _validation.check_accountant(self.accountant)
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(
                f"clipping={self.clipping!r} is unknown; pass one of {', '.join(CLIPPING_MODES)}."
            )
        if self.steps is not None:
            _validation.check_positive_int(self.steps, "steps", "1000")
        elif self.epochs is None:
            raise ValueError("epochs=None and steps=None: pass one of them, e.g. epochs=10.")
        else:
            _validation.check_positive_float(self.epochs, "epochs", "10")
        if self.microbatch_size is not None:
            _validation.check_positive_int(self.microbatch_size, "microbatch_size", "64")
        if self.seed is not None:
            _validation.check_seed(self.seed)
        if self.steps is not None and self.steps > MAX_STEPS:
            raise ValueError(
                f"steps={self.steps!r} exceeds {MAX_STEPS} (2**31 - 1), the most steps whose noise "
                "keys dpjax can keep distinct; pass fewer steps."
            )
        if self.noise_sampler not in NOISE_SAMPLERS:
            raise ValueError(
                f"noise_sampler={self.noise_sampler!r} is unknown; pass one of "
                f"{', '.join(NOISE_SAMPLERS)}."
            )
        if self.noise_sampler == "discrete" and (
            self.noise_schedule != "constant" or self.not_private
        ):
            raise ValueError(
                "noise_sampler='discrete' takes a constant noise multiplier in a private run; "
                f"got noise_schedule={self.noise_schedule!r}, not_private={self.not_private!r}. "
                "Pass noise_schedule='constant', or noise_sampler='float'."
            )
        if not isinstance(self.not_private, bool):
            raise ValueError(
                f"not_private={self.not_private!r} must be True or False (a bool, not "
                f"{type(self.not_private).__name__}: the string 'false' is truthy and would "
                "silently train WITHOUT privacy); pass not_private=False for a private run."
            )
        self._check_levers()
        if self.features not in FEATURES:
            raise ValueError(
                f"features={self.features!r} is unknown; pass one of {', '.join(FEATURES)}."
            )
        if self.features != "none" and self.augmult >= 2:
            raise ValueError(
                f"features={self.features!r} with augmult={self.augmult}: the features are "
                "computed once, before training, so there are no images to augment; pass "
                "augmult=0."
            )
        if self.not_private:
            if self.noise_multiplier is not None:
                raise ValueError(
                    f"not_private=True contradicts noise_multiplier={self.noise_multiplier!r}: a "
                    "NOT PRIVATE run adds no noise. Pass noise_multiplier=None with "
                    "not_private=True, or drop not_private for a private run."
                )
            return
        _validation.check_clip_norm(self.clip_norm, "clip_norm")
        _validation.check_delta(self.delta)
        if self.noise_multiplier is not None:
            _validation.check_noise_multiplier(self.noise_multiplier)
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError(
                "target_epsilon=None and noise_multiplier=None: pass a budget (e.g. target_epsilon=3.0) "
                "or a noise multiplier, or not_private=True for a NOT PRIVATE baseline."
            )
        if self.target_epsilon is not None:
            _validation.check_target_epsilon(self.target_epsilon)

    def _check_levers(self) -> None:
        """Validates noise_schedule, clip_groups, ema_decay and augmult, and their combinations."""
        _levers.parse_noise_schedule(self.noise_schedule)
        if self.clip_groups not in _levers.CLIP_GROUPS:
            raise ValueError(
                f"clip_groups={self.clip_groups!r} is unknown; pass one of "
                f"{', '.join(_levers.CLIP_GROUPS)}, e.g. clip_groups='equal'."
            )
        if self.ema_decay is not None and not (
            isinstance(self.ema_decay, numbers.Real)
            and not isinstance(self.ema_decay, bool)
            and 0.0 <= self.ema_decay < 1.0
        ):
            raise ValueError(
                f"ema_decay={self.ema_decay!r} must be a number in [0, 1) (1 would never move "
                "from the initial parameters); pass e.g. ema_decay=0.999, or None for no averaging."
            )
        if self.ema_decay is not None:
            object.__setattr__(self, "ema_decay", float(self.ema_decay))  # JSON-ready
        object.__setattr__(
            self, "augmult", _validation.check_nonnegative_int(self.augmult, "augmult", "4")
        )
        if self.augmult >= 2 and self.clipping == "ghost":
            raise ValueError(
                f"augmult={self.augmult} with clipping='ghost': ghost clipping computes one norm "
                "per row, but augmentation multiplicity needs one per EXAMPLE (the mean over its "
                "augmentations); pass clipping='vmap' (or 'auto', which picks it)."
            )
        if self.not_private:
            levers = {
                "noise_schedule": (self.noise_schedule, "constant"),
                "clip_groups": (self.clip_groups, "none"),
                "ema_decay": (self.ema_decay, None),
                "augmult": (self.augmult, 0),
            }
            for name, (value, off) in levers.items():
                if value != off and not (name == "augmult" and value == 1):  # 1 is off too
                    raise ValueError(
                        f"not_private=True contradicts {name}={value!r}: the levers that keep "
                        f"accuracy under privacy belong to private runs. Pass {name}={off!r} with "
                        "not_private=True, or drop not_private for a private run."
                    )


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run will do and spend, computed BEFORE it starts from public quantities only.

    Attributes:
      sampling_rate: the Poisson rate q = batch_size / N.
      steps: the planned number of steps.
      steps_note: how the steps were derived (e.g. the rounding of epochs).
      noise_multiplier: sigma (0.0 for the NOT PRIVATE baseline).
      planned_epsilon: epsilon after `min(steps, max_steps)` steps (inf when NOT PRIVATE).
      max_steps: steps the budget allows at this sigma (this schedule).
      noise_schedule: the :class:`dpjax.NoiseSchedule` of a non-constant
        `noise_schedule` (then `noise_multiplier` is its sigma at step 0, for
        display), None for the constant one.
    """

    sampling_rate: float
    steps: int
    steps_note: str
    noise_multiplier: float
    planned_epsilon: float
    max_steps: int
    noise_schedule: dpjax.NoiseSchedule | None = None

    @property
    def phases(self) -> tuple[tuple[float, int], ...]:
        """The planned noise multipliers as `((sigma, steps), ...)` (empty when NOT PRIVATE)."""
        if self.noise_schedule is not None:
            return self.noise_schedule.phases
        return () if self.noise_multiplier == 0.0 else ((self.noise_multiplier, self.steps),)


def plan_run(config: TrainConfig, dataset_size: int) -> RunPlan:
    """Computes what a run will do and spend BEFORE it starts (host side).

    Args:
      config: the run's configuration.
      dataset_size: N, the number of training examples.

    Returns:
      A :class:`RunPlan`.

    Raises:
      ValueError: if delta >= 1/N, if the batch size exceeds N, or if the budget
        is too small for a single step (the message gives the smallest reachable
        epsilon).

    **Privacy:** the plan is computed from public quantities only (N, q, sigma,
    T, delta), never from the data. A non-constant `noise_schedule` is
    planned as a :class:`dpjax.NoiseSchedule` (calibrated with
    :func:`dpjax.calibrate_noise_schedule` when `noise_multiplier` is None,
    else starting at it) and accounted phase by phase.
    """
    if config.batch_size > dataset_size:
        raise ValueError(
            f"batch_size={config.batch_size} exceeds the training set size {dataset_size}; pass a smaller batch_size."
        )
    q = config.batch_size / dataset_size
    if config.steps is not None:
        steps, note = config.steps, f"{config.steps} steps as given"
    else:
        assert config.epochs is not None  # TrainConfig requires one of them
        _, steps, note = dpjax.steps_from_epochs(dataset_size, config.batch_size, config.epochs)
    if config.not_private:
        return RunPlan(q, steps, note, 0.0, math.inf, steps)
    _validation.check_delta(config.delta, dataset_size)
    shape = _levers.noise_schedule_shape(config.noise_schedule, steps)
    if shape is not None:
        return _plan_schedule(config, q, steps, note, shape)
    sigma = config.noise_multiplier
    if sigma is None:
        assert config.target_epsilon is not None  # TrainConfig requires one of them
        sigma = dpjax.calibrate_noise_multiplier(
            config.target_epsilon, q, steps, config.delta, accountant=config.accountant
        )
    max_steps = steps
    if config.target_epsilon is not None:
        max_steps = dpjax.max_steps(
            sigma, q, config.delta, config.target_epsilon, accountant=config.accountant
        )
        if max_steps < 1:
            smallest = dpjax.compute_epsilon(
                sigma, 1, q, config.delta, accountant=config.accountant
            )
            raise ValueError(
                f"target_epsilon={config.target_epsilon} is too small for even one step at "
                f"noise_multiplier={sigma:.4g}, sampling_rate={q:.4g}: the smallest reachable epsilon is "
                f"{smallest:.4g}. Raise target_epsilon, or raise noise_multiplier / lower batch_size."
            )
    run_steps = min(steps, max_steps)
    eps = dpjax.compute_epsilon(sigma, run_steps, q, config.delta, accountant=config.accountant)
    return RunPlan(q, steps, note, sigma, eps, max_steps)


def _plan_schedule(
    config: TrainConfig, q: float, steps: int, note: str, shape: Callable[[Any], Any]
) -> RunPlan:
    """The plan of a run whose sigma follows a schedule (calibrated, or starting at sigma)."""

    def eps(schedule: dpjax.NoiseSchedule) -> float:
        return schedule.epsilon(q, config.delta, accountant=config.accountant)

    if config.noise_multiplier is None:
        assert config.target_epsilon is not None  # TrainConfig requires one of them
        schedule = dpjax.calibrate_noise_schedule(
            shape, config.target_epsilon, q, steps, config.delta, accountant=config.accountant
        )
    else:
        schedule = dpjax.NoiseSchedule.from_schedule(shape, steps, scale=config.noise_multiplier)
    full = eps(schedule)
    max_steps = steps
    if config.target_epsilon is not None and full > config.target_epsilon:
        max_steps = _levers.schedule_max_steps(schedule, eps, config.target_epsilon)
        if max_steps < 1:
            smallest = eps(_levers.schedule_prefix(schedule, 1))
            raise ValueError(
                f"target_epsilon={config.target_epsilon} is too small for even one step at "
                f"noise_multiplier={schedule.at(0):.4g} (noise_schedule={config.noise_schedule!r}), "
                f"sampling_rate={q:.4g}: the smallest reachable epsilon is {smallest:.4g}. Raise "
                "target_epsilon, or raise noise_multiplier / lower batch_size."
            )
    planned = full if max_steps >= steps else eps(_levers.schedule_prefix(schedule, max_steps))
    return RunPlan(q, steps, note, schedule.at(0), planned, max_steps, schedule)
