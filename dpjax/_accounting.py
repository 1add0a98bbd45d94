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
pld_value_discretization_interval(event))`` composed with the same event, asked
for epsilon at the delta left after the noise-tail term below.

**Noise-tail term.** dpjax's Gaussian sampler equals an exact Gaussian except
with probability ``NOISE_TAIL_MASS = 2**-124`` per coordinate and step (its tail is
cut at 12.95 sigma, see :mod:`dpjax._noise`). A run that is (eps, delta_exact)-DP
with exact Gaussians is then (eps, delta_exact + (1 + e^eps) * T * d * 2**-124)-DP,
T being the number of Gaussian releases (steps) and d = ``MAX_NOISE_COORDINATES =
2**40`` the most coordinates a step may noise (:func:`noise_tail_delta`). Every
epsilon dpjax reports is certified for the stated delta with this term included:
it is the accountant's epsilon at ``delta - noise_tail_delta(T, eps)`` (rounded
down), checked at the returned eps. For any useful run the term is below 1e-20
and no reported number moves; above roughly eps = 26 (T = 10**9) to 47 (T = 1)
the term alone exceeds delta = 1e-5 and the epsilon is ``inf``. Float rounding of
the noise (the low-bit attack of Mironov 2012) is a separate issue, not covered.

**Limits.** A query is refused with a ``ValueError`` rather than allowed to
exhaust memory: more than ``MAX_STEPS_CAP = 10**9`` steps in total; a noise
multiplier below ``PLD_MIN_NOISE_MULTIPLIER = 0.05`` with PLD (its one-step grid
alone has about 8e5 points and takes seconds; 0.01 takes minutes) or below
``RDP_MIN_NOISE_MULTIPLIER = 1e-6`` with RDP (1e-300 divides by zero; RDP works
down to about 1e-100, but any such sigma spends an epsilon far beyond the
noise-tail limit above and is a units mistake); a PLD whose one-step grid would have
more than 2**22 points or whose composition would have more than 2**24 (about
1.4 GB and 7 s measured; use ``accountant="rdp"``, which has no such limit).

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

import functools
import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, cast

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.pld import common as _pld_common
from dp_accounting.pld import privacy_loss_distribution as _pld
from dp_accounting.pld import privacy_loss_mechanism as _pl_mechanism
from dp_accounting.rdp import RdpAccountant

from dpjax._noise import MAX_NOISE_COORDINATES, NOISE_TAIL_MASS
from dpjax._validation import (
    check_accountant,
    check_delta,
    check_noise_multiplier,
    check_nonnegative_int,
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

# max_steps never searches beyond this many steps; no query accounts more.
MAX_STEPS_CAP = 10**9

# Smallest noise multipliers accounted (see "Limits" in the module docstring).
PLD_MIN_NOISE_MULTIPLIER = 0.05
RDP_MIN_NOISE_MULTIPLIER = 1e-6

# PLD grid points allowed: one step's PMFs (remove + add), and the whole composition.
_PLD_MAX_STEP_POINTS = 2**22
_PLD_MAX_POINTS = 2**24


class _AccountingLimitError(ValueError):
    """A query beyond the accountant's step or memory limits (a step-count search treats it
    as over budget: the count cannot be certified)."""


# --------------------------------------------------------------------------- events


def _phases(noise_multipliers: float | Sequence[float], steps: int | Sequence[int]):
    """Validates and pairs noise multipliers with step counts."""
    sigmas_seq = not isinstance(noise_multipliers, numbers.Real)
    steps_seq = not isinstance(steps, numbers.Integral)
    sigmas: list[Any] = list(cast(Any, noise_multipliers)) if sigmas_seq else [noise_multipliers]
    counts: list[Any] = list(cast(Any, steps)) if steps_seq else [steps]
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


# ------------------------------------------------------ noise-tail term and limits


def noise_tail_delta(
    steps: int, epsilon: float, num_coordinates: int = MAX_NOISE_COORDINATES
) -> float:
    """The delta that the cut tail of dpjax's noise sampler adds to a guarantee.

    Host side. ``(1 + e^epsilon) * steps * num_coordinates * NOISE_TAIL_MASS``
    with ``NOISE_TAIL_MASS = 2**-124`` (:mod:`dpjax._noise`), rounded up; ``inf``
    when ``e^epsilon`` overflows. The accountant charges it at every query (see
    the module docstring).

    Args:
      steps: the number T of noised releases (DP-SGD steps), an integer >= 0.
      epsilon: the epsilon of the guarantee, >= 0 (``inf`` allowed).
      num_coordinates: d, the most coordinates one step noises; default
        ``MAX_NOISE_COORDINATES = 2**40``, which :func:`dpjax.add_gaussian_noise`
        enforces.

    Returns:
      The term to add to delta.

    Raises:
      ValueError: if an argument is out of range.

    Example:
      >>> noise_tail_delta(1000, 2.0)  # (1 + e^2) * 1000 * 2**40 * 2**-124
      4.33...e-22

    **Privacy**: if each noise coordinate differs from an exact Gaussian only on
    an event of probability eta (the coupling of :data:`dpjax._noise.NOISE_TAIL_MASS`),
    every one of the T * d coordinates of a run agrees with it except with
    probability T * d * eta, so for neighbours D, D' and any set S of outputs,
    ``P'[M(D) in S] <= P[M(D) in S] + T d eta <= e^eps P[M(D') in S] + delta +
    T d eta <= e^eps P'[M(D') in S] + delta + (1 + e^eps) T d eta``, where P is
    the run with exact Gaussians (assumed (eps, delta)-DP) and P' the real one.
    """
    t = check_nonnegative_int(steps, "steps", "1000")
    d = check_positive_int(num_coordinates, "num_coordinates", "2**40")
    if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not epsilon >= 0:
        raise ValueError(f"epsilon={epsilon!r} must be a number >= 0; pass e.g. epsilon=1.0.")
    if t == 0:
        return 0.0
    if epsilon > 700.0:
        return math.inf
    # The factor covers the float rounding of the products (relative 1e-15 at most).
    return (1.0 + math.exp(epsilon)) * t * d * NOISE_TAIL_MASS * (1.0 + 2.0**-40)


def _delta_left(delta: float, tail: float) -> float:
    """The largest float b >= 0 with b + tail <= delta in exact arithmetic (0.0 if none)."""
    left = delta - tail
    exact = Fraction(delta) - Fraction(tail)
    while left > 0.0 and Fraction(left) > exact:
        left = math.nextafter(left, 0.0)
    return max(left, 0.0)


def _certified_epsilon(get_epsilon: Callable[[float], float], delta: float, steps: int) -> float:
    """An epsilon e with ``get_epsilon(delta - noise_tail_delta(steps, e)) <= e``, or inf.

    `get_epsilon` is the accountant's epsilon for a delta (non-increasing in delta);
    its delta at e is then at most ``delta - noise_tail_delta(steps, e)``, so (e,
    delta) holds with the tail included. Starts at ``get_epsilon(delta)`` (a lower
    bound on the answer) and iterates; one or two evaluations in practice.
    """
    eps = float(get_epsilon(delta))
    for _ in range(64):
        if not math.isfinite(eps):
            return math.inf
        tail = noise_tail_delta(steps, eps)
        if not tail < delta:
            return math.inf
        left = _delta_left(delta, tail)
        if left <= 0.0:
            return math.inf
        again = float(get_epsilon(left))
        if again <= eps:
            return eps
        eps = again
    return math.inf


def _leaves(event: dp_accounting.DpEvent, count: int = 1):
    """Yields ``(event, count)`` for every non-composite event, counts multiplied out."""
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        yield from _leaves(event.event, count * event.count)
    elif isinstance(event, dp_accounting.ComposedDpEvent):
        for e in event.events:
            yield from _leaves(e, count)
    else:
        yield event, count


def _gaussian_noise_multiplier(event: dp_accounting.DpEvent) -> float | None:
    """Sigma of a (Poisson-sampled) Gaussian event, None for any other event."""
    if isinstance(event, dp_accounting.PoissonSampledDpEvent):
        event = event.event
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return event.noise_multiplier
    return None


def _check_limits(event: dp_accounting.DpEvent, accountant: str) -> int:
    """Checks the sigma floor and the step cap; returns the number of releases T.

    T counts every release except no-ops (each may have used dpjax's sampler;
    counting a Laplace release too only overcharges the tail term).
    """
    floor, name = (
        (PLD_MIN_NOISE_MULTIPLIER, "PLD_MIN_NOISE_MULTIPLIER")
        if accountant == "pld"
        else (RDP_MIN_NOISE_MULTIPLIER, "RDP_MIN_NOISE_MULTIPLIER")
    )
    releases = 0
    for leaf, count in _leaves(event):
        if isinstance(leaf, (dp_accounting.NoOpDpEvent, dp_accounting.NonPrivateDpEvent)):
            continue
        releases += count
        sigma = _gaussian_noise_multiplier(leaf)
        if sigma is not None and 0 < sigma < floor:
            why = (
                "one step's privacy-loss grid alone would take seconds to minutes and "
                "gigabytes, for an epsilon in the hundreds (a step at sigma = 0.05, q = 1 "
                "spends epsilon ~ 280 at delta = 1e-5)"
                if accountant == "pld"
                else "one step at such sigma spends an astronomically large epsilon, and "
                "sigma = 1e-300 divides by zero in the RDP formulas; this is usually a "
                "units mistake"
            )
            raise ValueError(
                f"noise_multiplier={sigma!r} is below {name} = {floor:g} for "
                f"accountant={accountant!r}: {why}. Pass noise_multiplier >= {floor:g} "
                f"(dpjax.calibrate_noise_multiplier finds one for a target epsilon)"
                + (", or accountant='rdp'." if accountant == "pld" else ".")
            )
    if releases > MAX_STEPS_CAP:
        raise _AccountingLimitError(
            f"steps={releases} exceeds MAX_STEPS_CAP = 10**9 steps per query (the PLD of "
            f"1e14 steps would need terabytes). Account at most 10**9 steps; no useful run "
            f"takes more."
        )
    return releases


def _step_points(sigma: float, q: float, interval: float) -> int:
    """Grid points of one step's PLD (remove and, if q < 1, add PMFs), from its loss bounds."""
    adjacencies = [_pl_mechanism.AdjacencyType.REMOVE]
    if q < 1.0:
        adjacencies.append(_pl_mechanism.AdjacencyType.ADD)
    points = 0.0
    for adjacency in adjacencies:
        bounds = _pl_mechanism.GaussianPrivacyLoss(
            sigma, sampling_prob=q, adjacency_type=adjacency
        ).connect_dots_bounds()
        upper, lower = bounds.epsilon_upper, bounds.epsilon_lower
        if upper is None or lower is None:
            return _PLD_MAX_POINTS + 1
        points += (upper - lower) / interval + 2
    return math.ceil(points) if math.isfinite(points) else _PLD_MAX_POINTS + 1


def _too_large(points: float, what: str) -> _AccountingLimitError:
    return _AccountingLimitError(
        f"{what} would need about {points:.3g} privacy-loss grid points, more than the PLD "
        f"accountant's limit (2**22 for one step, 2**24 = 1.7e7 in all, about 1.4 GB). Pass "
        f"accountant='rdp' (no such limit), fewer steps or a larger noise_multiplier."
    )


@functools.lru_cache(maxsize=8)
def _step_pld(sigma: float, q: float, interval: float) -> _pld.PrivacyLossDistribution:
    """One Poisson-subsampled Gaussian step's PLD, as ``PLDAccountant`` builds it (cached)."""
    points = _step_points(sigma, q, interval)
    if points > _PLD_MAX_STEP_POINTS:
        raise _too_large(points, f"one step at noise_multiplier={sigma!r}, sampling_rate={q!r}")
    return _pld.from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=interval,
        sampling_prob=q,
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


def _composed_points(step: _pld.PrivacyLossDistribution, count: int) -> int:
    """Grid points of ``step.self_compose(count)``: dp_accounting's own truncation bounds.

    Reads dp_accounting's private PMF fields (tested against dp-accounting 0.6.0).
    """
    pmfs = [step._pmf_remove] if step._symmetric else [step._pmf_remove, step._pmf_add]
    points = 0
    for pmf in pmfs:
        probs = pmf.to_dense_pmf()._probs
        lo, hi = _pld_common.compute_self_convolve_bounds(cast(Any, probs), count, 1e-15)
        points += hi - lo + 1
    return points


class _BoundedPLDAccountant(PLDAccountant):
    """``PLDAccountant`` that refuses compositions too large for memory.

    Poisson-subsampled Gaussian phases are composed with the same calls, in the
    same order, as ``PLDAccountant`` (so the epsilons are equal), reusing cached
    one-step PLDs and predicting each composition's size first. Every other event
    goes to ``PLDAccountant`` (plain Gaussian events after a size check).
    """

    def __init__(self, value_discretization_interval: float):
        super().__init__(value_discretization_interval=value_discretization_interval)
        self._interval = value_discretization_interval
        self._points = 1

    def _maybe_compose(self, event, count, do_compose):
        sigma = _gaussian_noise_multiplier(event)
        if do_compose and sigma is not None and sigma > 0:
            if isinstance(event, dp_accounting.PoissonSampledDpEvent):
                q = event.sampling_probability
                if q > 0:
                    step = _step_pld(sigma, q, self._interval)
                    self._points += _composed_points(step, count)
                    if self._points > _PLD_MAX_POINTS:
                        raise _too_large(
                            self._points,
                            f"steps={count} at noise_multiplier={sigma!r}, sampling_rate={q!r}",
                        )
                    self._pld = self._pld.compose(step.self_compose(count))
                    return None
            else:  # PLDAccountant composes count Gaussians as one of std sigma / sqrt(count)
                points = _step_points(sigma / math.sqrt(count), 1.0, self._interval)
                self._points += points
                if points > _PLD_MAX_STEP_POINTS or self._points > _PLD_MAX_POINTS:
                    raise _too_large(
                        points, f"{count} Gaussian releases at noise_multiplier={sigma!r}"
                    )
        return super()._maybe_compose(event, count, do_compose)


# ------------------------------------------------------------------ epsilon of an event

_CACHE: OrderedDict[tuple, float] = OrderedDict()
_CACHE_SIZE = 4096


def _clear_cache() -> None:
    """Forgets memoised epsilons (for benchmarks that time cold queries)."""
    _CACHE.clear()
    _step_pld.cache_clear()


def _epsilon_of_event(event: dp_accounting.DpEvent, delta: float, accountant: str) -> float:
    """Certified epsilon of an already validated event (memoised on the event's repr).

    The accountant's epsilon at the delta left after :func:`noise_tail_delta`
    (module docstring), within the limits of the module docstring.

    Raises:
      ValueError: if a noise multiplier is below the accountant's floor, or the
        query exceeds the step or memory limits.
    """
    key = (repr(event), delta, accountant)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    releases = _check_limits(event, accountant)
    if accountant == "pld":
        acc = _BoundedPLDAccountant(pld_value_discretization_interval(event))
    else:
        acc = RdpAccountant()
    acc.compose(event)
    eps = _certified_epsilon(acc.get_epsilon, delta, releases)
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
    ``dp_accounting`` default), and ``get_epsilon(delta')`` at the delta left
    after the noise-tail term, ``delta' = delta - noise_tail_delta(T, eps)``
    rounded down (T the total steps; module docstring). Results are memoised.

    Args:
      noise_multipliers: sigma of each phase (scalar for one phase).
      steps: steps T of each phase (scalar for one phase).
      sampling_rate: Poisson inclusion probability q in (0, 1].
      delta: target delta in (0, 1).
      accountant: ``"pld"`` (default, tighter) or ``"rdp"``.
      dataset_size: if given, delta must be below 1 / dataset_size.

    Returns:
      The epsilon (an upper bound; ``inf`` when no finite epsilon can be
      certified, e.g. when the noise-tail term alone exceeds delta).

    Raises:
      ValueError: if an argument is invalid (the message names it and the fix),
        a noise multiplier is below ``PLD_MIN_NOISE_MULTIPLIER = 0.05`` (PLD) or
        ``RDP_MIN_NOISE_MULTIPLIER = 1e-6`` (RDP), the steps exceed
        ``MAX_STEPS_CAP = 10**9``, or the PLD would exceed its memory limit.

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
    gradients clipped to L2 norm C, with fresh noise every step, drawn by
    dpjax's sampler (:func:`dpjax.add_gaussian_noise`; its cut tail is charged
    for at most 2**40 coordinates per step) or an exact Gaussian. sigma = 0,
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
    :func:`compute_epsilon` and :class:`dpjax.PrivacyTracker`). Found by an
    exponential search followed by a safeguarded interpolation/bisection on T
    (about 10 to 25 epsilon evaluations). Capped at ``MAX_STEPS_CAP = 10**9``
    steps in all (``prior_event`` included): if even that many steps fit, the
    cap is returned. A step count the PLD accountant cannot account within its
    memory limit (module docstring) counts as over the target.

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
      ValueError: if an argument is invalid, the noise multiplier is below the
        accountant's floor, or (without ``prior_event``) one step already has no
        finite certified epsilon (the noise-tail term, module docstring).

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

    if prior_event is None and eps(1) == math.inf:
        raise ValueError(
            f"noise_multiplier={sigma!r} at sampling_rate={q!r} spends, in ONE step, more than "
            f"any epsilon dpjax can certify at delta={delta!r} (beyond it the noise-tail term "
            f"(1 + e^eps) * steps * 2**40 * 2**-124 exceeds delta, see noise_tail_delta), so no "
            f"target_epsilon allows a step. Pass a larger noise_multiplier (e.g. from "
            f"dpjax.calibrate_noise_multiplier)."
        )
    return _largest_steps(eps, target)


def _largest_steps(eps: Callable[[int], float], target: float) -> int:
    def bounded(t: int) -> float:  # a count beyond the accountant's limits cannot be certified
        try:
            return eps(t)
        except _AccountingLimitError:
            return math.inf

    return _search_steps(bounded, target)


def _search_steps(eps: Callable[[int], float], target: float) -> int:
    lo, e_lo = 1, eps(1)
    if not e_lo <= target:
        return 0
    # Exponential search, extrapolating with the local log-log slope.
    hi, e_hi = None, math.inf
    prev_t: int | None = None
    prev_e = math.nan
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
        at sigma = 500 (the message gives that smallest reachable epsilon); if
        it is so large that sigma = 0.1 already lands below
        ``target * (1 - rtol)`` (choose sigma directly then), or above the
        largest epsilon certifiable with the noise-tail term (module docstring).

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
    ceiling = _largest_certifiable_epsilon(steps, delta)
    if floor >= ceiling:
        raise ValueError(
            f"target_epsilon={target_epsilon!r} is so large that no noise multiplier reaches "
            f"it: above epsilon = {ceiling:.4g} the noise-tail term (1 + e^eps) * steps * 2**40 "
            f"* 2**-124 alone exceeds delta={delta!r} for steps={steps} (see noise_tail_delta), "
            f"and no epsilon near the target gives meaningful privacy. Pass a smaller "
            f"target_epsilon."
        )

    def eps(sigma: float) -> float:
        return _epsilon_of_event(_phase_event(sigma, steps, q), delta, accountant)

    context = f"sampling_rate={q:g}, steps={steps}, delta={delta:g}, accountant={accountant!r}"
    return search_noise_multiplier(eps, target_epsilon, rtol, context)


def search_noise_multiplier(
    eps: Callable[[float], float], target_epsilon: float, rtol: float, context: str
) -> float:
    """The sigma (or schedule scale) in [0.1, 500] with target(1 - rtol) <= eps(sigma) <= target.

    Host side; `eps` must be non-increasing. Brackets geometrically from 1, then
    Illinois regula falsi on (log sigma, log eps) with bisection safeguards.

    Raises:
      ValueError: if the target is unreachable within [0.1, 500] (the message
        gives the epsilon reached and `context`).
    """
    target = float(target_epsilon)
    floor = target * (1.0 - rtol)
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
                    f"reachable) for {context}. Pass a larger target_epsilon, fewer steps "
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
                if e == 0.0:
                    raise ValueError(
                        f"delta is so large that even noise_multiplier={SIGMA_MIN:g} "
                        f"spends epsilon=0 ({context}): a delta "
                        f"that large is no guarantee. Pass a delta well below 1/dataset_size, "
                        f"e.g. delta=1e-5."
                    )
                raise ValueError(
                    f"target_epsilon={target_epsilon!r} is so large that even "
                    f"noise_multiplier={SIGMA_MIN:g} gives only epsilon={e:.6g}; such a "
                    f"target gives no meaningful privacy. Pass a smaller target_epsilon, or "
                    f"choose noise_multiplier directly and report compute_epsilon(...)."
                )
            else:
                hi, e_hi = sigma, e

    # Illinois regula falsi in log-log space, bisection when it stalls.
    w_lo, w_hi, last = _log_ratio(e_lo, target), _log_ratio(e_hi, target), None
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
        w = _log_ratio(e, target)
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
    # Reached only next to the noise-tail cliff, where epsilon jumps to inf; hi is safe.
    return hi


def _log_ratio(e: float, target: float) -> float:
    """log(e / target), -inf for e = 0 (an epsilon of 0 happens for large delta)."""
    return math.log(e / target) if e > 0 else -math.inf


def _largest_certifiable_epsilon(steps: int, delta: float) -> float:
    """The epsilon above which noise_tail_delta(steps, epsilon) alone exceeds delta."""
    ratio = delta / noise_tail_delta(steps, 0.0) * 2.0  # noise_tail_delta(., 0) = 2 T d eta
    return math.log(ratio - 1.0) if ratio > 1.0 else 0.0


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


# ----------------------------------------------------------- epsilon of typed release records


def compose_events(events: Sequence[dp_accounting.DpEvent | None]) -> dp_accounting.DpEvent:
    """The events (None skipped) composed in order; `NoOpDpEvent()` when there are none."""
    present = [e for e in events if e is not None]
    return _compose(present) if present else dp_accounting.NoOpDpEvent()


def epsilon_of_releases(releases: Sequence[Any], delta: float, accountant: str) -> float:
    """Epsilon of release records (:mod:`dpjax._releases`) composed in order (host side).

    The records with a `dp_accounting` event compose exactly (PLD or RDP, the
    noise-tail term of :func:`noise_tail_delta` included); the pure-epsilon
    records are then added (basic composition; see
    :class:`dpjax.PureEpsilonRelease`).

    Args:
      releases: the records, already validated.
      delta: the delta of the guarantee, already validated.
      accountant: `"pld"` or `"rdp"`.

    Returns:
      The epsilon (0.0 for no release).
    """
    events = [r.dp_event() for r in releases]
    pure = math.fsum(r.pure_epsilon for r in releases)
    if not any(e is not None for e in events):
        return pure
    return _epsilon_of_event(compose_events(events), delta, accountant) + pure


def largest_count(eps: Callable[[int], float], target: float) -> int:
    """The largest count T >= 0 with `eps(T) <= target` (eps non-decreasing in T), capped at 10**9."""
    return _largest_steps(eps, target)
