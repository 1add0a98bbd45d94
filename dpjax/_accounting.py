"""Privacy accounting for DP-SGD: epsilon, noise calibration, step budgets (host side).

Everything here runs on the host with NumPy and ``dp_accounting``; nothing is
jitted. A DP-SGD run is described as *phases* composed in order, each phase
being ``steps`` Poisson-subsampled Gaussian mechanisms with one noise
multiplier. Two accountants are offered:

* ``"pld"`` (default): privacy loss distributions
  (``dp_accounting.pld.PLDAccountant``), pessimistic discretisation, so the
  epsilon is an upper bound; tighter than RDP.
* ``"rdp"``: Renyi DP (``dp_accounting.rdp.RdpAccountant``, default orders);
  fast, looser.

**PLD discretisation.** ``dp_accounting`` rounds privacy losses up onto a grid of
spacing ``value_discretization_interval``. With a fixed spacing the bound gets
loose (up to several times the true epsilon) when the per-step privacy loss is
much smaller than the spacing (large sigma, small q, many steps). dpjax therefore
uses the spacing ``min(1e-3, 0.1 * q / sigma)`` (floor ``1e-8``), the minimum
over the Poisson-subsampled Gaussian phases of the event (``1 / sigma`` for a
plain Gaussian). The grid then scales with the per-step loss, so the cost of a
query depends on the number of steps but not on sigma or q (about 0.05 s at
1e5 steps and 0.1 to 2 s at 1e6 steps on one CPU core), and the estimate stays
within about 0.1 % of a much finer grid. The rounding is always pessimistic, so
every epsilon reported is an upper bound.
:func:`compute_epsilon` equals ``PLDAccountant(value_discretization_interval=
pld_value_discretization_interval(event))`` composed with the same event.

References:
  Abadi et al., "Deep Learning with Differential Privacy", CCS 2016,
  https://arxiv.org/abs/1607.00133.
  Mironov, "Renyi Differential Privacy", CSF 2017, https://arxiv.org/abs/1702.07476.
  Koskela, Jalko, Honkela, "Computing Tight Differential Privacy Guarantees
  Using FFT", AISTATS 2020, https://arxiv.org/abs/1906.03049.
  Doroshenko, Ghazi, Kamath, Kumar, Manurangsi, "Connect the Dots: Tighter
  Discrete Approximations of Privacy Loss Distributions", PETS 2022,
  https://arxiv.org/abs/2207.04380.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import dp_accounting
from dp_accounting import dp_event as _dp_event_module
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from dpjax._validation import (
    check_accountant,
    check_delta,
    check_noise_multiplier,
    check_positive_float,
    check_positive_int,
    check_sampling_rate,
    check_target_epsilon,
)

# PLD grid spacing: clip(FRACTION * q / sigma, MIN, MAX), see the module docstring.
_PLD_INTERVAL_MAX = 1e-3
_PLD_INTERVAL_MIN = 1e-8
_PLD_INTERVAL_FRACTION = 0.1

# Bracket searched by calibrate_noise_multiplier (see its docstring).
SIGMA_MIN = 0.1
SIGMA_MAX = 500.0

# max_steps never searches beyond this many steps.
MAX_STEPS_CAP = 10**9


class BudgetExceededError(RuntimeError):
    """Raised when a step (or event) would take the spent epsilon above the target."""


# --------------------------------------------------------------------------- events


def _phases(noise_multipliers: float | Sequence[float], steps: int | Sequence[int]):
    """Validates and pairs noise multipliers with step counts."""
    sigmas_seq = not isinstance(noise_multipliers, numbers.Real)
    steps_seq = not isinstance(steps, numbers.Integral)
    sigmas = list(noise_multipliers) if sigmas_seq else [noise_multipliers]
    counts = list(steps) if steps_seq else [steps]
    if not sigmas:
        raise ValueError("noise_multipliers=[] is empty; pass one value per phase, e.g. 1.1.")
    if not counts:
        raise ValueError("steps=[] is empty; pass one step count per phase, e.g. 1000.")
    if sigmas_seq and steps_seq and len(sigmas) != len(counts):
        raise ValueError(
            f"noise_multipliers has {len(sigmas)} phases but steps has {len(counts)}; "
            f"pass one step count per noise multiplier (phases are composed in order)."
        )
    if len(sigmas) == 1 and len(counts) > 1:
        sigmas = sigmas * len(counts)
    if len(counts) == 1 and len(sigmas) > 1:
        counts = counts * len(sigmas)
    sigmas = [
        check_noise_multiplier(s, "noise_multipliers" if sigmas_seq else "noise_multiplier")
        for s in sigmas
    ]
    counts = [check_positive_int(t, "steps", "1000") for t in counts]
    return tuple(zip(sigmas, counts, strict=True))


def _phase_event(sigma: float, steps: int, q: float) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


def _compose(events: Sequence[dp_accounting.DpEvent]) -> dp_accounting.DpEvent:
    """One event as is, several flat in a ComposedDpEvent (the one layout dpjax uses)."""
    if len(events) == 1:
        return events[0]
    return dp_accounting.ComposedDpEvent(list(events))


def _append(prior: dp_accounting.DpEvent | None, event: dp_accounting.DpEvent):
    """`prior` followed by `event`, flattened so that equal histories give equal events."""
    if prior is None:
        return event
    if isinstance(prior, dp_accounting.ComposedDpEvent):
        return dp_accounting.ComposedDpEvent([*prior.events, event])
    return dp_accounting.ComposedDpEvent([prior, event])


def dp_sgd_event(
    noise_multipliers: float | Sequence[float],
    steps: int | Sequence[int],
    sampling_rate: float,
) -> dp_accounting.DpEvent:
    """The ``dp_accounting`` event of DP-SGD with Poisson sampling, phases in order.

    Host side. Each phase is
    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), T)``;
    several phases are put, in order, in one ``ComposedDpEvent``.

    Args:
      noise_multipliers: sigma of each phase (a scalar for one phase).
      steps: number of steps T of each phase (a scalar for one phase, or for
        every phase when ``noise_multipliers`` is a sequence).
      sampling_rate: Poisson inclusion probability q = expected batch / N.

    Returns:
      The ``dp_accounting.DpEvent`` of the whole run.

    Raises:
      ValueError: if a sigma is not positive, a step count is not >= 1, q is
        outside (0, 1], or the sequences have different lengths.

    Example:
      >>> event = dp_sgd_event([2.0, 1.0], [100, 50], sampling_rate=0.01)
      >>> type(event).__name__
      'ComposedDpEvent'

    **Privacy**: the event is only a true description of the run if every step
    includes each example independently with probability q (Poisson sampling)
    and adds Gaussian noise of std ``sigma * C`` to the sum of per-example
    gradients clipped to L2 norm C (sensitivity C under add/remove-one).
    """
    q = check_sampling_rate(sampling_rate)
    return _compose([_phase_event(s, t, q) for s, t in _phases(noise_multipliers, steps)])


# ------------------------------------------------------------------ epsilon of an event


def _loss_scales(event: dp_accounting.DpEvent) -> list[float]:
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        inner = event.event
        if isinstance(inner, dp_accounting.GaussianDpEvent) and inner.noise_multiplier > 0:
            return [event.sampling_probability / inner.noise_multiplier]
        return []
    if isinstance(event, dp_accounting.GaussianDpEvent) and event.noise_multiplier > 0:
        return [1.0 / event.noise_multiplier]
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return _loss_scales(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return [s for e in event.events for s in _loss_scales(e)]
    return []


def pld_value_discretization_interval(event: dp_accounting.DpEvent) -> float:
    """The PLD grid spacing dpjax uses for `event` (see the module docstring).

    Host side. ``min(1e-3, 0.1 * min(q / sigma))`` over the Poisson-subsampled
    Gaussian (and Gaussian, q = 1) parts of the event, floored at ``1e-8``.

    Args:
      event: any ``dp_accounting.DpEvent``.

    Returns:
      The ``value_discretization_interval`` passed to ``PLDAccountant``.

    Example:
      >>> pld_value_discretization_interval(dp_sgd_event(1.0, 100, 0.01))
      0.001
    """
    scales = _loss_scales(event)
    interval = _PLD_INTERVAL_MAX
    if scales:
        interval = min(interval, _PLD_INTERVAL_FRACTION * min(scales))
    return max(interval, _PLD_INTERVAL_MIN)


_CACHE: OrderedDict[tuple, float] = OrderedDict()
_CACHE_SIZE = 4096


def _clear_cache() -> None:
    """Forgets memoised epsilons (for benchmarks that time cold queries)."""
    _CACHE.clear()


def _epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str) -> float:
    """Epsilon of an already validated event (memoised on the event's repr)."""
    key = (repr(event), delta, accountant)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    if accountant == "pld":
        acc = PLDAccountant(value_discretization_interval=pld_value_discretization_interval(event))
    else:
        acc = RdpAccountant()
    acc.compose(event)
    eps = float(acc.get_epsilon(delta))
    _CACHE[key] = eps
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return eps


def compute_epsilon(
    noise_multipliers: float | Sequence[float],
    steps: int | Sequence[int],
    sampling_rate: float,
    delta: float,
    *,
    accountant: str = "pld",
    dataset_size: int | None = None,
) -> float:
    """Epsilon spent by DP-SGD with Poisson sampling, phases composed in order.

    Host side. Equals calling ``dp_accounting`` directly on
    ``dp_sgd_event(noise_multipliers, steps, sampling_rate)`` with
    ``RdpAccountant()`` or ``PLDAccountant(value_discretization_interval=
    pld_value_discretization_interval(event))`` (pessimistic rounding, the
    ``dp_accounting`` default), and ``get_epsilon(delta)``. Results are memoised.

    Args:
      noise_multipliers: sigma of each phase (scalar for one phase).
      steps: steps T of each phase (scalar for one phase).
      sampling_rate: Poisson inclusion probability q in (0, 1].
      delta: target delta in (0, 1).
      accountant: ``"pld"`` (default, tighter) or ``"rdp"``.
      dataset_size: if given, delta must be below 1 / dataset_size.

    Returns:
      The epsilon (an upper bound; ``inf`` when no finite epsilon exists).

    Raises:
      ValueError: if an argument is invalid (the message names it and the fix).

    Example:
      >>> round(compute_epsilon(1.0, 1000, 0.01, 1e-5), 2)
      1.83
      >>> compute_epsilon(1.0, 1000, 0.01, 1e-5, accountant="rdp") > 1.83
      True

    References:
      Abadi et al. 2016 (moments accountant); Mironov 2017 (RDP); Koskela et
      al. 2020 and Doroshenko et al. 2022 (PLD). Links in the module docstring.

    **Privacy**: the result is a valid (epsilon, delta) guarantee, for the
    add/remove-one neighbouring relation, only if each step samples every
    example independently with probability q (Poisson sampling, as
    ``dpjax``'s sampler does; shuffling or fixed-size batches are not covered)
    and adds Gaussian noise of std ``sigma * C`` to the sum of per-example
    gradients clipped to L2 norm C, with fresh noise every step. sigma = 0,
    C = inf or an unclipped gradient give no guarantee at all.
    """
    delta = check_delta(delta, dataset_size)
    accountant = check_accountant(accountant)
    event = dp_sgd_event(noise_multipliers, steps, sampling_rate)
    return _epsilon_of_event(event, delta, accountant)


# ----------------------------------------------------------------------- searching


def _interp_log(x0: float, y0: float, x1: float, y1: float, target: float) -> float | None:
    """x in log space where the line through (log x, log y) points meets log(target)."""
    if not all(math.isfinite(v) and v > 0 for v in (x0, y0, x1, y1)) or y0 == y1:
        return None
    lx0, lx1, ly0, ly1 = math.log(x0), math.log(x1), math.log(y0), math.log(y1)
    return math.exp(min(lx0 + (lx1 - lx0) * (math.log(target) - ly0) / (ly1 - ly0), 700.0))


def max_steps(
    noise_multiplier: float,
    sampling_rate: float,
    delta: float,
    target_epsilon: float,
    *,
    accountant: str = "pld",
    prior_event: dp_accounting.DpEvent | None = None,
) -> int:
    """Largest number of steps T whose epsilon stays within the target.

    Host side. Returns the largest T with ``eps(T) <= target_epsilon <
    eps(T + 1)``, where ``eps(T)`` is the epsilon of ``prior_event`` followed by
    T steps at ``noise_multiplier`` (the same event layout as
    :func:`compute_epsilon` and :class:`PrivacyTracker`). Found by an
    exponential search followed by a safeguarded interpolation/bisection on T
    (about 10 to 25 epsilon evaluations). Capped at ``MAX_STEPS_CAP = 10**9``:
    if even that many steps fit, the cap is returned.

    Args:
      noise_multiplier: sigma of the steps.
      sampling_rate: Poisson inclusion probability q in (0, 1].
      delta: target delta in (0, 1).
      target_epsilon: the budget, > 0.
      accountant: ``"pld"`` (default) or ``"rdp"``.
      prior_event: budget already spent (e.g. ``tracker.dp_event()``), or None.

    Returns:
      The number of steps, 0 if even one step exceeds the target.

    Raises:
      ValueError: if an argument is invalid.

    Example:
      >>> t = max_steps(1.0, 0.01, 1e-5, target_epsilon=2.0)
      >>> compute_epsilon(1.0, t, 0.01, 1e-5) <= 2.0 < compute_epsilon(1.0, t + 1, 0.01, 1e-5)
      True

    **Privacy**: same assumptions as :func:`compute_epsilon` (Poisson sampling
    with rate q, Gaussian noise of std ``sigma * C`` on the sum of per-example
    gradients clipped to C, add/remove-one neighbours).
    """
    sigma = check_noise_multiplier(noise_multiplier)
    q = check_sampling_rate(sampling_rate)
    delta = check_delta(delta)
    target = check_target_epsilon(target_epsilon)
    accountant = check_accountant(accountant)

    def eps(t: int) -> float:
        return _epsilon_of_event(_append(prior_event, _phase_event(sigma, t, q)), delta, accountant)

    return _largest_steps(eps, target)


def _largest_steps(eps: Callable[[int], float], target: float) -> int:
    lo, e_lo = 1, eps(1)
    if not e_lo <= target:
        return 0
    # Exponential search, extrapolating with the local log-log slope.
    hi, e_hi = None, math.inf
    prev_t, prev_e = None, None
    while hi is None:
        guess = None
        if prev_t is not None:
            guess = _interp_log(prev_t, prev_e, lo, e_lo, target)
        guess = 4 * lo if guess is None else int(1.5 * guess)
        t = min(max(2 * lo, guess), 1000 * lo, MAX_STEPS_CAP)
        e = eps(t)
        if e <= target:
            prev_t, prev_e, lo, e_lo = lo, e_lo, t, e
            if t == MAX_STEPS_CAP:
                return t
        else:
            hi, e_hi = t, e
    # Safeguarded interpolation: an interpolation step, then, if the bracket
    # did not halve, a bisection step (in log T).
    use_bisection = False
    while hi - lo > 1:
        width = hi - lo
        t = None if use_bisection else _interp_log(lo, e_lo, hi, e_hi, target)
        if t is None:
            t = math.sqrt(lo * hi)
        t = min(max(int(round(t)), lo + 1), hi - 1)
        e = eps(t)
        if e <= target:
            lo, e_lo = t, e
        else:
            hi, e_hi = t, e
        use_bisection = not use_bisection and (hi - lo) * 2 > width
    return lo


def calibrate_noise_multiplier(
    target_epsilon: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    *,
    accountant: str = "pld",
    rtol: float = 0.01,
) -> float:
    """Smallest-ish noise multiplier sigma whose epsilon meets the target.

    Host side. Returns sigma with ``target * (1 - rtol) <= eps(sigma) <=
    target``: it never overshoots (the returned sigma's epsilon has been
    computed and checked). Epsilon decreases with sigma; the search starts at
    sigma = 1, expands geometrically to bracket the target inside
    ``[SIGMA_MIN, SIGMA_MAX] = [0.1, 500]``, then narrows it with Illinois
    regula falsi on (log sigma, log eps) with bisection safeguards (typically 5
    to 10 epsilon evaluations, each memoised). sigma = 500 is far more noise
    than any useful run; sigma = 0.1 already gives epsilon in the hundreds in
    common settings.

    Args:
      target_epsilon: the epsilon to reach, > 0.
      sampling_rate: Poisson inclusion probability q in (0, 1].
      steps: number of steps T, >= 1.
      delta: target delta in (0, 1).
      accountant: ``"pld"`` (default) or ``"rdp"``.
      rtol: relative tolerance below the target, in (0, 1).

    Returns:
      The noise multiplier sigma.

    Raises:
      ValueError: if an argument is invalid; if the target is unreachable even
        at sigma = 500 (the message gives that smallest reachable epsilon); or
        if it is so large that sigma = 0.1 already lands below
        ``target * (1 - rtol)`` (choose sigma directly then).

    Example:
      >>> sigma = calibrate_noise_multiplier(2.0, 0.01, 1000, 1e-5)
      >>> 1.98 <= compute_epsilon(sigma, 1000, 0.01, 1e-5) <= 2.0
      True

    **Privacy**: the guarantee of the returned sigma holds under the
    assumptions of :func:`compute_epsilon` (Poisson sampling with rate q,
    noise std ``sigma * C`` on the clipped sum, add/remove-one neighbours),
    and only for exactly ``steps`` steps at this q; more steps spend more.
    """
    target = check_target_epsilon(target_epsilon)
    q = check_sampling_rate(sampling_rate)
    steps = check_positive_int(steps, "steps", "1000")
    delta = check_delta(delta)
    accountant = check_accountant(accountant)
    if not (isinstance(rtol, numbers.Real) and 0 < rtol < 1):
        raise ValueError(f"rtol={rtol!r} must lie in (0, 1); pass e.g. rtol=0.01.")
    floor = target * (1.0 - rtol)

    def eps(sigma: float) -> float:
        return _epsilon_of_event(_phase_event(sigma, steps, q), delta, accountant)

    # Bracket: lo has eps > target (infeasible), hi has eps <= target (feasible).
    sigma = 1.0
    e = eps(sigma)
    lo = hi = None
    if e > target:
        lo, e_lo = sigma, e
        while hi is None:
            step = e_lo / target * 1.5  # eps ~ 1/sigma for moderate sigma
            sigma = min(lo * min(max(step, 2.0), 100.0), SIGMA_MAX)
            e = eps(sigma)
            if e <= target:
                hi, e_hi = sigma, e
            elif sigma == SIGMA_MAX:
                raise ValueError(
                    f"target_epsilon={target_epsilon!r} is unreachable: even "
                    f"noise_multiplier={SIGMA_MAX:g} gives epsilon={e:.6g} (the smallest "
                    f"reachable) for sampling_rate={q:g}, steps={steps}, delta={delta:g}, "
                    f"accountant={accountant!r}. Pass a larger target_epsilon, fewer steps "
                    f"or a smaller sampling_rate."
                )
            else:
                lo, e_lo = sigma, e
    else:
        hi, e_hi = sigma, e
        while lo is None:
            if e_hi >= floor:
                return hi
            step = target / max(e_hi, 1e-300) * 1.5
            sigma = max(hi / min(max(step, 2.0), 100.0), SIGMA_MIN)
            e = eps(sigma)
            if e > target:
                lo, e_lo = sigma, e
            elif sigma == SIGMA_MIN:
                if e >= floor:
                    return sigma
                raise ValueError(
                    f"target_epsilon={target_epsilon!r} is so large that even "
                    f"noise_multiplier={SIGMA_MIN:g} gives only epsilon={e:.6g}; such a "
                    f"target gives no meaningful privacy. Pass a smaller target_epsilon, or "
                    f"choose noise_multiplier directly and report compute_epsilon(...)."
                )
            else:
                hi, e_hi = sigma, e

    # Illinois regula falsi in log-log space, bisection when it stalls.
    w_lo, w_hi, last = math.log(e_lo / target), math.log(e_hi / target), None
    for _ in range(200):
        if e_hi >= floor:
            return hi
        l_lo, l_hi = math.log(lo), math.log(hi)
        x = None
        if math.isfinite(w_lo) and math.isfinite(w_hi) and w_lo != w_hi:
            x = l_lo + (l_hi - l_lo) * w_lo / (w_lo - w_hi)
        if x is None or not (l_lo < x < l_hi):
            x = 0.5 * (l_lo + l_hi)
        sigma = math.exp(x)
        e = eps(sigma)
        w = math.log(e / target) if e > 0 else -math.inf
        if e > target:
            lo, e_lo, w_lo = sigma, e, w
            if last == "lo":
                w_hi /= 2
            last = "lo"
        else:
            hi, e_hi, w_hi = sigma, e, w
            if last == "hi":
                w_lo /= 2
            last = "hi"
        if hi / lo < 1 + 1e-12:
            break
    # Not reached for continuous epsilon curves; hi is still a safe answer.
    return hi


# ------------------------------------------------------------------ epochs -> steps


def steps_from_epochs(dataset_size: int, batch_size: int, epochs: float) -> tuple[float, int, str]:
    """Sampling rate and step count for a number of epochs at an expected batch size.

    Host side. ``sampling_rate = batch_size / dataset_size`` and
    ``steps = ceil(epochs * dataset_size / batch_size)`` (computed exactly, in
    rationals, taking `epochs` as the decimal it prints as), so the run covers
    at least ``epochs`` epochs in expectation.

    Args:
      dataset_size: number of examples N, >= 1.
      batch_size: expected batch size B, 1 <= B <= N.
      epochs: number of epochs, > 0 (may be fractional).

    Returns:
      ``(sampling_rate, steps, note)`` where ``note`` is a sentence saying how
      the steps were rounded.

    Raises:
      ValueError: if an argument is invalid or ``batch_size > dataset_size``.

    Example:
      >>> q, t, note = steps_from_epochs(1797, 256, 3)
      >>> t
      22
      >>> print(note)  # doctest: +NORMALIZE_WHITESPACE
      3 epochs x 1797/256 = 21.06 steps, rounded up to 22 steps
      (sampling rate q = 256/1797 = 0.1425).

    **Privacy**: with Poisson sampling the batch size is random with mean B;
    the accounting uses q = B / N, not the realised batch sizes.
    """
    n = check_positive_int(dataset_size, "dataset_size", "60000")
    b = check_positive_int(batch_size, "batch_size", "256")
    if b > n:
        raise ValueError(
            f"batch_size={batch_size!r} exceeds dataset_size={dataset_size!r}; the sampling "
            f"rate batch_size / dataset_size must lie in (0, 1]. Pass batch_size <= {n}."
        )
    e = check_positive_float(epochs, "epochs", "3")
    exact = Fraction(repr(e)) * n / b  # the decimal the user typed: 0.1 epochs is 1/10
    steps = math.ceil(exact)
    q = b / n
    e_txt = f"{e:g} epoch{'s' if e != 1 else ''}"
    if exact == steps:
        how = f"{e_txt} x {n}/{b} = {steps} steps exactly"
    else:
        how = f"{e_txt} x {n}/{b} = {float(exact):.2f} steps, rounded up to {steps} steps"
    note = f"{how} (sampling rate q = {b}/{n} = {q:.4g})."
    return q, steps, note


# -------------------------------------------------------------------- event <-> JSON


def _event_to_json(event: dp_accounting.DpEvent) -> dict[str, Any]:
    def conv(value):
        if hasattr(value, "_fields") and "class_name" in value._fields:
            out = {}
            for k, v in value._asdict().items():
                if k == "module_name":
                    continue
                out["type" if k == "class_name" else k] = conv(v)
            return out
        if isinstance(value, (list, tuple)):
            return [conv(v) for v in value]
        return value

    return conv(event.to_named_tuple())


def _event_from_json(data: Any) -> Any:
    if isinstance(data, list):
        return [_event_from_json(v) for v in data]
    if isinstance(data, dict):
        name = data.get("type")
        cls = getattr(_dp_event_module, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, dp_accounting.DpEvent)):
            raise ValueError(f"state_dict holds an unknown DpEvent type {name!r}.")
        return cls(**{k: _event_from_json(v) for k, v in data.items() if k != "type"})
    return data


# ----------------------------------------------------------------------- the tracker


class PrivacyTracker:
    """Keeps the privacy account of a run and refuses steps beyond the budget.

    Host side. Records every step's noise multiplier as run-length phases
    (consecutive steps with the same sigma form one phase) plus any extra
    events, in order, and accounts them with the chosen accountant.

    **Speed.** :meth:`record_step` does not run a full accounting per step.
    The first step of a phase costs one epsilon evaluation; the second step
    computes, once, the phase's step limit ``max_steps(sigma, ..., prior_event=
    <everything before the phase>)``; later steps with the same sigma only
    compare the phase's step count with that cached limit. A sigma that changes
    every step therefore costs one evaluation per step, over a growing event:
    prefer piecewise-constant schedules. :meth:`epsilon_spent` is computed on
    demand and cached until the next change.

    Args:
      target_epsilon: the budget, > 0; ``math.inf`` only tracks (never refuses).
      delta: target delta in (0, 1).
      sampling_rate: Poisson inclusion probability q in (0, 1].
      accountant: ``"pld"`` (default) or ``"rdp"``.
      dataset_size: if given, delta must be below 1 / dataset_size.

    Raises:
      ValueError: if an argument is invalid.

    Example:
      >>> tracker = PrivacyTracker(target_epsilon=1.0, delta=1e-5, sampling_rate=0.01)
      >>> for _ in range(100):
      ...     tracker.record_step(1.0)
      >>> tracker.steps, tracker.phases, round(tracker.epsilon_spent(), 3)
      (100, ((1.0, 100),), 0.718)
      >>> tracker.can_step(0.1)
      False

    **Privacy**: the account is only true if every recorded step really used
    Poisson sampling with rate ``sampling_rate`` and Gaussian noise of std
    ``sigma * C`` on the sum of per-example gradients clipped to C (add/remove-
    one neighbours), and if every step ever run is recorded: record a step
    *before* releasing its update and do not release it if
    :class:`BudgetExceededError` is raised. When resuming from a checkpoint,
    rebuild the tracker with :meth:`from_state_dict`, never a fresh one.
    """

    def __init__(
        self,
        target_epsilon: float,
        delta: float,
        sampling_rate: float,
        *,
        accountant: str = "pld",
        dataset_size: int | None = None,
    ):
        unlimited = isinstance(target_epsilon, numbers.Real) and target_epsilon == math.inf
        self._target = math.inf if unlimited else check_target_epsilon(target_epsilon)
        self._delta = check_delta(delta, dataset_size)
        self._q = check_sampling_rate(sampling_rate)
        self._accountant = check_accountant(accountant)
        self._dataset_size = None if dataset_size is None else int(dataset_size)
        # Entries in order: ["steps", sigma, count] or ["event", label, DpEvent].
        self._entries: list[list[Any]] = []
        self._phase_limit: int | None = None  # max steps of the last phase, if known
        self._eps: float | None = 0.0

    # -- read-only views
    @property
    def target_epsilon(self) -> float:
        """The budget."""
        return self._target

    @property
    def delta(self) -> float:
        """The delta of the guarantee."""
        return self._delta

    @property
    def sampling_rate(self) -> float:
        """The Poisson sampling rate q of every step."""
        return self._q

    @property
    def accountant(self) -> str:
        """``"pld"`` or ``"rdp"``."""
        return self._accountant

    @property
    def steps(self) -> int:
        """Number of DP-SGD steps recorded."""
        return sum(e[2] for e in self._entries if e[0] == "steps")

    @property
    def phases(self) -> tuple[tuple[float, int], ...]:
        """The recorded steps as ``((sigma, steps), ...)`` in order."""
        return tuple((e[1], e[2]) for e in self._entries if e[0] == "steps")

    @property
    def events(self) -> tuple[tuple[str, dp_accounting.DpEvent], ...]:
        """Extra events recorded with :meth:`record_event`, as ``(label, event)``."""
        return tuple((e[1], e[2]) for e in self._entries if e[0] == "event")

    # -- events and epsilon
    def _entry_event(self, entry: list[Any]) -> dp_accounting.DpEvent:
        if entry[0] == "steps":
            return _phase_event(entry[1], entry[2], self._q)
        return entry[2]

    def _event_of(self, entries: Sequence[list[Any]]) -> dp_accounting.DpEvent | None:
        if not entries:
            return None
        return _compose([self._entry_event(e) for e in entries])

    def dp_event(self) -> dp_accounting.DpEvent:
        """Everything recorded so far as one ``dp_accounting`` event (for experts).

        Returns ``NoOpDpEvent()`` before anything is recorded. The layout is
        that of :func:`dp_sgd_event` (extra events in their place), so
        ``compute_epsilon(*zip(*tracker.phases), ...)`` equals
        :meth:`epsilon_spent` when no extra event was recorded.
        """
        return self._event_of(self._entries) or dp_accounting.NoOpDpEvent()

    def _eps_of(self, event: dp_accounting.DpEvent) -> float:
        return _epsilon_of_event(event, self._delta, self._accountant)

    def epsilon_spent(self) -> float:
        """Epsilon spent so far (0.0 before any step), cached until the next change."""
        if self._eps is None:
            self._eps = self._eps_of(self.dp_event()) if self._entries else 0.0
        return self._eps

    def _same_phase(self, sigma: float) -> bool:
        return (
            bool(self._entries)
            and self._entries[-1][0] == "steps"
            and self._entries[-1][1] == sigma
        )

    def _check(self, sigma: float) -> float | None:
        """None if one more step at sigma fits the budget, else the epsilon it would reach."""
        if self._target == math.inf:
            return None
        if self._same_phase(sigma):
            if self._phase_limit is None:
                prior = self._entries[:-1]
                self._phase_limit = _largest_steps(
                    lambda t: self._eps_of(self._event_of([*prior, ["steps", sigma, t]])),
                    self._target,
                )
            count = self._entries[-1][2]
            if count + 1 <= self._phase_limit:
                return None
            entries = [*self._entries[:-1], ["steps", sigma, count + 1]]
        else:
            entries = [*self._entries, ["steps", sigma, 1]]
        eps = self._eps_of(self._event_of(entries))
        return None if eps <= self._target else eps

    def can_step(self, noise_multiplier: float) -> bool:
        """Whether one more step at `noise_multiplier` keeps epsilon within the target."""
        return self._check(check_noise_multiplier(noise_multiplier)) is None

    def record_step(self, noise_multiplier: float) -> None:
        """Records one DP-SGD step, or refuses it if it would exceed the budget.

        Args:
          noise_multiplier: the sigma used by this step.

        Raises:
          ValueError: if `noise_multiplier` is not a positive number.
          BudgetExceededError: if the step would take epsilon above the target;
            nothing is recorded then, and the step must not be released.
        """
        sigma = check_noise_multiplier(noise_multiplier)
        would = self._check(sigma)
        if would is not None:
            raise BudgetExceededError(
                f"privacy budget exhausted: step {self.steps + 1} at noise_multiplier={sigma:g} "
                f"would reach epsilon={would:.6g} > target_epsilon={self._target:g} "
                f"(delta={self._delta:g}, accountant={self._accountant!r}); the step was not "
                f"recorded and must not be released."
            )
        if self._same_phase(sigma):
            self._entries[-1][2] += 1
        else:
            self._entries.append(["steps", sigma, 1])
            self._phase_limit = None
        self._eps = None

    def remaining_steps(self, noise_multiplier: float) -> int:
        """How many more steps at `noise_multiplier` fit within the target (capped at 10**9)."""
        sigma = check_noise_multiplier(noise_multiplier)
        if self._target == math.inf:
            return MAX_STEPS_CAP
        if self._same_phase(sigma):
            if self._phase_limit is None:
                self._check(sigma)
            if self._phase_limit is not None:
                return max(self._phase_limit - self._entries[-1][2], 0)
        return _largest_steps(
            lambda t: self._eps_of(self._event_of([*self._entries, ["steps", sigma, t]])),
            self._target,
        )

    def record_event(self, event: dp_accounting.DpEvent, label: str) -> None:
        """Composes an extra mechanism (e.g. adaptive clipping) into the account.

        Call it *before* running the mechanism.

        Args:
          event: the mechanism's ``dp_accounting.DpEvent`` (for the same
            add/remove-one neighbouring relation).
          label: a short description kept in the state dict.

        Raises:
          ValueError: if `event` is not a ``DpEvent`` or `label` not a string.
          BudgetExceededError: if it would take epsilon above the target;
            nothing is recorded then, and the mechanism must not be run.
        """
        if not isinstance(event, dp_accounting.DpEvent):
            raise ValueError(f"event={event!r} must be a dp_accounting.DpEvent.")
        if not isinstance(label, str):
            raise ValueError(f"label={label!r} must be a string, e.g. label='adaptive clipping'.")
        entries = [*self._entries, ["event", label, event]]
        eps = None if self._target == math.inf else self._eps_of(self._event_of(entries))
        if eps is not None and not eps <= self._target:
            raise BudgetExceededError(
                f"privacy budget exhausted: event {label!r} would reach epsilon={eps:.6g} > "
                f"target_epsilon={self._target:g}; it was not recorded and must not be run."
            )
        self._entries = entries
        self._phase_limit = None
        self._eps = eps

    # -- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; restore it with :meth:`from_state_dict`."""
        entries = []
        for e in self._entries:
            if e[0] == "steps":
                entries.append({"kind": "steps", "noise_multiplier": e[1], "steps": e[2]})
            else:
                entries.append({"kind": "event", "label": e[1], "event": _event_to_json(e[2])})
        return {
            "version": 1,
            "target_epsilon": None if self._target == math.inf else self._target,  # strict JSON
            "delta": self._delta,
            "sampling_rate": self._q,
            "accountant": self._accountant,
            "dataset_size": self._dataset_size,
            "entries": entries,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyTracker:
        """Rebuilds a tracker from :meth:`state_dict`, resuming (never resetting) the account.

        Raises:
          ValueError: if `state` is malformed or holds invalid values.
        """
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError(
                "state must be a dict made by PrivacyTracker.state_dict() (version 1)."
            )
        try:
            return cls._from_state(state)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"state is not a valid PrivacyTracker.state_dict() ({type(err).__name__}: {err})."
            ) from err

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> PrivacyTracker:
        tracker = cls(
            math.inf if state["target_epsilon"] is None else state["target_epsilon"],
            state["delta"],
            state["sampling_rate"],
            accountant=state["accountant"],
            dataset_size=state.get("dataset_size"),
        )
        for e in state["entries"]:
            if e["kind"] == "steps":
                sigma = check_noise_multiplier(e["noise_multiplier"])
                tracker._entries.append(["steps", sigma, check_positive_int(e["steps"], "steps")])
            elif e["kind"] == "event":
                tracker._entries.append(["event", str(e["label"]), _event_from_json(e["event"])])
            else:
                raise ValueError(
                    f"state entry kind {e['kind']!r} is unknown; expected 'steps' or 'event'."
                )
        tracker._eps = None
        return tracker

    def __repr__(self) -> str:
        return (
            f"PrivacyTracker(target_epsilon={self._target:g}, delta={self._delta:g}, "
            f"sampling_rate={self._q:g}, accountant={self._accountant!r}, steps={self.steps})"
        )
