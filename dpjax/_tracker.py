"""The privacy tracker: an account of typed releases, checked BEFORE each release (host side).

Every release (a DP-SGD step, an output perturbation, a federated round, a
private statistic) is one record of :mod:`dpjax._releases`. The tracker
composes them in order (exactly through dp-accounting; pure-epsilon records by
the rule stated in :class:`dpjax.PureEpsilonRelease`) and refuses a release
that would take the spent epsilon above the target, before it happens. Its
state round-trips through JSON, so a resumed run continues the account.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import dp_accounting

from dpjax import _accounting, _releases, _validation
from dpjax._releases import EventRelease, PoissonGaussianSteps, Release

_STATE_VERSION = 2


class BudgetExceededError(RuntimeError):
    """Raised when a release would take the spent epsilon above the target."""


class PrivacyTracker:
    """Keeps the privacy account of a run and refuses releases beyond the budget.

    Host side. Records typed releases (:class:`dpjax.PoissonGaussianSteps`,
    :class:`dpjax.GaussianRelease`, :class:`dpjax.LaplaceRelease`,
    :class:`dpjax.PureEpsilonRelease`, :class:`dpjax.EventRelease`) in order;
    consecutive identical DP-SGD steps are kept as one record.

    **Speed.** Recording one more DP-SGD step like the last does not run a full
    accounting: the first step of a phase costs one epsilon evaluation, the
    second computes, once, how many such steps the budget allows after what
    came before; later steps only compare a count.

    Args:
      target_epsilon: the budget, > 0; `math.inf` only tracks (never refuses).
      delta: the delta of the guarantee, in (0, 1) (below 1/N when
        `dataset_size` is given).
      sampling_rate: the Poisson rate q of the DP-SGD steps that
        :meth:`record_step` records; None if only other releases are recorded.
      accountant: `"pld"` (default, tighter) or `"rdp"`.
      dataset_size: N, if known.

    Raises:
      ValueError: if an argument is invalid.

    Example:
      >>> import dpjax
      >>> tracker = dpjax.PrivacyTracker(target_epsilon=1.0, delta=1e-5, sampling_rate=0.01)
      >>> for _ in range(100):
      ...     tracker.record_step(1.0)
      >>> tracker.record(dpjax.LaplaceRelease(noise_multiplier=20.0))  # a count, eps 0.05
      >>> tracker.steps, round(tracker.epsilon_spent(), 3)
      (100, 0.733)
      >>> tracker.can_step(0.1)
      False

    **Privacy:** the account is only true if every release really ran as its
    record says (for DP-SGD steps: Poisson sampling at rate q, Gaussian noise
    of std sigma * C on a sum of sensitivity C, fresh noise), and if every
    release is recorded BEFORE its result leaves: a refused release
    (:class:`BudgetExceededError`) must not be released. When resuming, rebuild
    the tracker with :meth:`from_state_dict`, never a fresh one.
    """

    def __init__(
        self,
        target_epsilon: float,
        delta: float,
        sampling_rate: float | None = None,
        *,
        accountant: str = "pld",
        dataset_size: int | None = None,
    ):
        unlimited = isinstance(target_epsilon, numbers.Real) and target_epsilon == math.inf
        self._target = math.inf if unlimited else _validation.check_target_epsilon(target_epsilon)
        self._delta = _validation.check_delta(delta, dataset_size)
        self._q = None if sampling_rate is None else _validation.check_sampling_rate(sampling_rate)
        self._accountant = _validation.check_accountant(accountant)
        self._dataset_size = None if dataset_size is None else int(dataset_size)
        self._releases: tuple[Release, ...] = ()
        self._phase_limit: int | None = None  # steps the last DP-SGD record may reach, if known
        self._phase_limit_rdp: int | None = None  # the same limit by RDP (a lower one), if known
        self._reserved: tuple[Release, ...] | None = None  # a checked future (see `reserve`)
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
    def sampling_rate(self) -> float | None:
        """The Poisson rate q of the steps :meth:`record_step` records."""
        return self._q

    @property
    def accountant(self) -> str:
        """`"pld"` or `"rdp"`."""
        return self._accountant

    @property
    def releases(self) -> tuple[Release, ...]:
        """Everything recorded, in order (consecutive identical steps merged)."""
        return self._releases

    @property
    def steps(self) -> int:
        """Number of DP-SGD steps recorded."""
        return sum(r.steps for r in self._releases if isinstance(r, PoissonGaussianSteps))

    @property
    def phases(self) -> tuple[tuple[float, int], ...]:
        """The recorded DP-SGD steps as `((sigma, steps), ...)` in order."""
        return tuple(
            (r.noise_multiplier, r.steps)
            for r in self._releases
            if isinstance(r, PoissonGaussianSteps)
        )

    @property
    def events(self) -> tuple[tuple[str, dp_accounting.DpEvent], ...]:
        """The :class:`dpjax.EventRelease` records, as `(label, event)`."""
        return tuple((r.label, r.event) for r in self._releases if isinstance(r, EventRelease))

    # -- epsilon
    def dp_event(self) -> dp_accounting.DpEvent:
        """The releases that have a dp-accounting event, composed in order (for experts).

        Pure-epsilon records have none (see :class:`dpjax.PureEpsilonRelease`).
        """
        return _accounting.compose_events([r.dp_event() for r in self._releases])

    def _epsilon(self, releases: tuple[Release, ...]) -> float:
        try:
            return _accounting.epsilon_of_releases(releases, self._delta, self._accountant)
        except dp_accounting.UnsupportedEventError as err:
            raise ValueError(
                f"accountant={self._accountant!r} cannot compose these releases ({err}); use "
                "supported dp_accounting events, or the other accountant."
            ) from err

    def epsilon_spent(self) -> float:
        """Epsilon spent so far (0.0 before any release), cached until the next change."""
        if self._eps is None:
            self._eps = self._epsilon(self._releases)
        return self._eps

    def _appended(self, release: Release) -> tuple[Release, ...]:
        return _appended_to(self._releases, release)

    def _check(self, release: Release) -> float | None:
        """None if `release` fits the budget, else the epsilon it would reach."""
        if self._target == math.inf:
            return None
        after = self._appended(release)
        if self._reserved is not None and _is_prefix(after, self._reserved):
            return None  # a prefix of a run already checked to fit (epsilon grows with releases)
        last = after[-1]
        # The last DP-SGD record grew by this release (same sigma and q): its phase limit applies.
        phase = (
            last
            if len(after) == len(self._releases) and isinstance(last, PoissonGaussianSteps)
            else None
        )
        if phase is not None:
            known = [t for t in (self._phase_limit, self._phase_limit_rdp) if t is not None]
            if any(phase.steps <= int(t) for t in known):
                return None  # within a known limit of this phase: no epsilon to compute
        if self._accountant == "pld":
            if phase is None:
                if self._rdp_fits(after):
                    return None  # RDP's epsilon is also a valid bound: below the target, it fits
            elif self._phase_limit_rdp is None:
                # Once per phase: how far RDP (an upper bound as valid as PLD's) lets it go.
                prior = self._releases[:-1]
                self._phase_limit_rdp = _accounting.largest_count(
                    lambda t: self._rdp_epsilon((*prior, dataclasses.replace(phase, steps=t))),
                    self._target,
                )
                if phase.steps <= int(self._phase_limit_rdp):
                    return None
        if phase is not None:
            if self._phase_limit is None:
                prior = self._releases[:-1]
                self._phase_limit = _accounting.largest_count(
                    lambda t: self._epsilon((*prior, dataclasses.replace(phase, steps=t))),
                    self._target,
                )
            if phase.steps <= int(self._phase_limit):
                return None
        eps = self._epsilon(after)
        return None if eps <= self._target else eps

    def _rdp_epsilon(self, releases: tuple[Release, ...]) -> float:
        """The RDP epsilon of `releases` (inf where RDP cannot compose them).

        A fast upper bound as valid as PLD's: PLD composes every phase again when a
        new sigma appears (a sigma schedule), RDP composes in microseconds at small
        q. Far from the budget it settles the check; near it, or for releases RDP
        cannot compose, the exact PLD check decides.
        """
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # RDP orders that fail to converge are dropped (still a bound)
        try:
            return _accounting.epsilon_of_releases(releases, self._delta, "rdp")
        except (ValueError, dp_accounting.UnsupportedEventError):
            return math.inf
        finally:
            absl.setLevel(level)

    def _rdp_fits(self, releases: tuple[Release, ...]) -> bool:
        """A fast sufficient check: the RDP epsilon fits the target."""
        return self._rdp_epsilon(releases) <= self._target

    def reserve(self, releases: Sequence[Release]) -> bool:
        """Checks once that `releases`, after what is recorded, fit the budget.

        Nothing is recorded. If they fit, every later :meth:`record` that follows
        them (a prefix of them) is accepted without recomputing epsilon: a planned
        noise schedule is then checked once instead of at every new sigma. A
        release off the reserved path is checked as usual.

        Args:
          releases: the planned releases, in order (e.g. `NoiseSchedule.releases(q)`).

        Returns:
          Whether they fit (if not, nothing is reserved and every record is
          checked on its own).

        Raises:
          ValueError: if an element is not a release record.
        """
        future = self._releases
        for release in releases:
            future = _appended_to(future, _check_release(release))
        fits = self._target == math.inf or self._epsilon(future) <= self._target
        self._reserved = future if fits else None
        return fits

    def can_record(self, release: Release) -> bool:
        """Whether `release` keeps epsilon within the target."""
        return self._check(_check_release(release)) is None

    def record(self, release: Release) -> None:
        """Records a release BEFORE it happens, or refuses it if it would exceed the budget.

        Args:
          release: the record of what is about to be released.

        Raises:
          ValueError: if `release` is not a release record.
          BudgetExceededError: if it would take epsilon above the target;
            nothing is recorded then, and the release must not happen.
        """
        release = _check_release(release)
        would = self._check(release)
        if would is not None:
            raise BudgetExceededError(
                f"privacy budget exhausted: {release!r} would reach epsilon={would:.6g} > "
                f"target_epsilon={self._target:g} (delta={self._delta:g}, "
                f"accountant={self._accountant!r}); it was not recorded and must not be released."
            )
        after = self._appended(release)
        if len(after) != len(self._releases):
            self._phase_limit = self._phase_limit_rdp = None
        self._releases = after
        self._eps = None

    # -- DP-SGD steps at this tracker's sampling rate
    def _step(self, noise_multiplier: float) -> PoissonGaussianSteps:
        if self._q is None:
            raise ValueError(
                "this tracker has no sampling_rate; pass PrivacyTracker(..., sampling_rate=q) to "
                "record DP-SGD steps, or record(dpjax.PoissonGaussianSteps(sigma, q))."
            )
        return PoissonGaussianSteps(noise_multiplier, self._q)

    def can_step(self, noise_multiplier: float) -> bool:
        """Whether one more DP-SGD step at `noise_multiplier` keeps epsilon within the target."""
        return self.can_record(self._step(noise_multiplier))

    def record_step(self, noise_multiplier: float) -> None:
        """Records one DP-SGD step at this tracker's rate: `record(PoissonGaussianSteps(sigma, q))`.

        Raises:
          ValueError: if `noise_multiplier` is not a positive number.
          BudgetExceededError: if the step would exceed the budget (not recorded).
        """
        self.record(self._step(noise_multiplier))

    def remaining_steps(self, noise_multiplier: float) -> int:
        """How many more DP-SGD steps at `noise_multiplier` fit the target (capped at 10**9)."""
        step = self._step(noise_multiplier)
        if self._target == math.inf:
            return _validation.MAX_STEPS
        return _accounting.largest_count(
            lambda t: self._epsilon(self._appended(dataclasses.replace(step, steps=t))),
            self._target,
        )

    def record_event(self, event: dp_accounting.DpEvent, label: str) -> None:
        """Records any `dp_accounting` event: `record(EventRelease(event, label))`.

        Raises:
          ValueError: if `event` is not a `DpEvent` or `label` not a string.
          BudgetExceededError: if it would exceed the budget (not recorded).
        """
        self.record(EventRelease(event, label))

    # -- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; restore it with :meth:`from_state_dict`."""
        return {
            "version": _STATE_VERSION,
            "target_epsilon": None if self._target == math.inf else self._target,  # strict JSON
            "delta": self._delta,
            "sampling_rate": self._q,
            "accountant": self._accountant,
            "dataset_size": self._dataset_size,
            "releases": [r.to_json() for r in self._releases],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyTracker:
        """Rebuilds a tracker from :meth:`state_dict`, resuming (never resetting) the account.

        Reads this version's state and the first version's (`"entries"`).

        Raises:
          ValueError: if `state` is malformed or holds invalid values.
        """
        if not isinstance(state, dict) or state.get("version") not in (1, _STATE_VERSION):
            raise ValueError(
                f"state must be a dict made by PrivacyTracker.state_dict() (version "
                f"{_STATE_VERSION}); got {type(state).__name__} with version "
                f"{state.get('version') if isinstance(state, dict) else None!r}."
            )
        try:
            tracker = cls(
                math.inf if state["target_epsilon"] is None else state["target_epsilon"],
                state["delta"],
                state["sampling_rate"],
                accountant=state["accountant"],
                dataset_size=state.get("dataset_size"),
            )
            items = state["entries"] if state["version"] == 1 else state["releases"]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise ValueError(f"its records {items!r} must be a list of dicts")
            if state["version"] == 1:
                records = [_v1_release(e, tracker._q) for e in items]
            else:
                records = [_releases.release_from_json(r) for r in items]
            for record in records:
                tracker._releases = tracker._appended(record)
            tracker._eps = None
            tracker.epsilon_spent()  # every record within the accountant's limits, checked now
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(
                f"state is not a valid PrivacyTracker.state_dict() ({type(err).__name__}: {err})."
            ) from err
        return tracker

    def __repr__(self) -> str:
        return (
            f"PrivacyTracker(target_epsilon={self._target:g}, delta={self._delta:g}, "
            f"sampling_rate={self._q}, accountant={self._accountant!r}, steps={self.steps}, "
            f"releases={len(self._releases)})"
        )


def fitting_noise_multiplier(
    release_of: Callable[[float], Release],
    sigma: float,
    target_epsilon: float,
    delta: float,
    *,
    factor: float = 1.001,
    tries: int = 1000,
) -> float:
    """The first of `sigma`, `sigma * factor`, ... whose release a fresh tracker accepts.

    Host side. Calibration (:func:`dpjax.calibrate_noise_multiplier`) can land a
    hair under what the tracker's own accountant accepts; a consumer that
    calibrates a release nudges sigma up until `PrivacyTracker(target_epsilon,
    delta).can_record(release_of(sigma))`, so the release it then records is
    never refused.

    Args:
      release_of: sigma -> the release record (e.g. `dpjax.GaussianRelease`).
      sigma: the calibrated starting point.
      target_epsilon: the budget.
      delta: the delta.
      factor: the step (> 1).
      tries: the most steps.

    Returns:
      sigma, at least the starting one.

    Raises:
      ValueError: if no sigma fits within `tries` steps.

    Example:
      >>> import dpjax
      >>> sigma = dpjax.calibrate_noise_multiplier(1.0, 1.0, 1, 1e-5)
      >>> fitted = dpjax.fitting_noise_multiplier(dpjax.GaussianRelease, sigma, 1.0, 1e-5)
      >>> dpjax.PrivacyTracker(1.0, 1e-5).can_record(dpjax.GaussianRelease(fitted))
      True

    **Privacy:** a larger sigma only spends less; the tracker still checks the
    record when it is made.
    """
    tracker = PrivacyTracker(target_epsilon, delta)
    for _ in range(tries):
        if tracker.can_record(release_of(sigma)):
            return float(sigma)
        sigma *= factor
    raise ValueError(f"no noise multiplier found for epsilon={target_epsilon}, delta={delta}.")


def _appended_to(releases: tuple[Release, ...], release: Release) -> tuple[Release, ...]:
    """`releases` followed by `release`, merged into the last record when they are alike."""
    if releases:
        merged = _releases.merge(releases[-1], release)
        if merged is not None:
            return (*releases[:-1], merged)
    return (*releases, release)


def _is_prefix(releases: tuple[Release, ...], path: tuple[Release, ...]) -> bool:
    """Whether `releases` is a prefix of `path` (the last record may hold fewer steps)."""
    if not releases or len(releases) > len(path):
        return False
    head, last = releases[:-1], releases[-1]
    if head != path[: len(head)]:
        return False
    target = path[len(head)]
    if last == target:
        return True
    return (
        isinstance(last, PoissonGaussianSteps)
        and isinstance(target, PoissonGaussianSteps)
        and dataclasses.replace(last, steps=target.steps) == target
        and last.steps <= target.steps
    )


def _check_release(release: object) -> Release:
    if not isinstance(release, Release):
        raise ValueError(
            f"release={release!r} is not a release record; pass e.g. "
            "dpjax.PoissonGaussianSteps(sigma, q), dpjax.GaussianRelease(sigma), "
            "dpjax.LaplaceRelease(b) or dpjax.EventRelease(event, label)."
        )
    return release


def _v1_release(entry: dict[str, Any], q: float | None) -> Release:
    """A record of the first state format (`{"kind": "steps" | "event", ...}`)."""
    if entry["kind"] == "steps":
        if q is None:
            raise ValueError("a version-1 state with steps needs its sampling_rate.")
        return PoissonGaussianSteps(entry["noise_multiplier"], q, entry["steps"])
    if entry["kind"] == "event":
        return _releases.release_from_json(
            {"kind": "event", "label": entry["label"], "event": entry["event"]}
        )
    raise ValueError(f"state entry kind {entry['kind']!r} is unknown; expected 'steps' or 'event'.")
