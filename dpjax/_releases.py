"""Typed records of what was released: the accountant's vocabulary (host side).

Every release of information computed from private data (a DP-SGD step, an
output perturbation, a federated round, a private statistic, a tuning run) is
ONE immutable record, told to the accountant BEFORE it happens
(:meth:`dpjax.PrivacyTracker.record`). A record knows its `dp_accounting`
event, so releases compose exactly through dp-accounting (PLD or RDP); a pure-ε
mechanism that has no event composes by the rule stated in
:class:`PureEpsilonRelease`. Records round-trip through JSON, so an account
survives a checkpoint.

Adding a mechanism means adding one record type here: a frozen dataclass with
`dp_event()`, `pure_epsilon` and a `kind` registered in `_KINDS`.

References:
  Mironov, "Renyi Differential Privacy", CSF 2017.
  Koskela, Jalko, Honkela, "Computing Tight Differential Privacy Guarantees
  Using FFT", AISTATS 2020.
  Dwork & Roth, "The Algorithmic Foundations of Differential Privacy", 2014
  (basic composition, Theorem 3.16).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import dp_accounting
from dp_accounting import dp_event as _dp_event_module

from dpjax import _validation


@dataclasses.dataclass(frozen=True)
class Release:
    """Base of every release record (a frozen dataclass).

    Attributes:
      kind: the record's name in JSON (a class constant).
    """

    kind: ClassVar[str] = "release"

    def dp_event(self) -> dp_accounting.DpEvent | None:
        """The `dp_accounting` event of this release, or None if it has none."""
        raise NotImplementedError

    @property
    def pure_epsilon(self) -> float:
        """The epsilon of a release composed by the pure-epsilon rule (0 if it has an event)."""
        return 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :func:`release_from_json` inverts it."""
        return {"kind": self.kind} | {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self)
        }


@dataclasses.dataclass(frozen=True)
class PoissonGaussianSteps(Release):
    """`steps` DP-SGD steps: Poisson sampling at rate q, Gaussian noise sigma times the sensitivity.

    Args:
      noise_multiplier: sigma (noise std over the sum's L2 sensitivity), > 0.
      sampling_rate: the Poisson inclusion probability q in (0, 1].
      steps: how many such steps, >= 1.

    Raises:
      ValueError: for an invalid value (named, with the fix).

    Example:
      >>> import dpjax
      >>> r = dpjax.PoissonGaussianSteps(noise_multiplier=1.1, sampling_rate=0.01, steps=100)
      >>> type(r.dp_event()).__name__
      'SelfComposedDpEvent'

    **Privacy:** true only if every one of the steps included each example
    independently with probability q and added N(0, (sigma*C)^2) to a sum of
    sensitivity C, with fresh noise each step.
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int = 1
    kind: ClassVar[str] = "poisson_gaussian"

    def __post_init__(self):
        object.__setattr__(
            self, "noise_multiplier", _validation.check_noise_multiplier(self.noise_multiplier)
        )
        object.__setattr__(
            self, "sampling_rate", _validation.check_sampling_rate(self.sampling_rate)
        )
        object.__setattr__(self, "steps", _validation.check_steps(self.steps))

    def dp_event(self) -> dp_accounting.DpEvent:
        """`SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps)`."""
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                self.sampling_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
            ),
            self.steps,
        )


@dataclasses.dataclass(frozen=True)
class GaussianRelease(Release):
    """`count` releases of the Gaussian mechanism on the whole data (no subsampling).

    E.g. output perturbation of a convex model, a noisy statistic, or a
    federated round in which every client takes part.

    Args:
      noise_multiplier: noise std over the L2 sensitivity of the released value, > 0.
      count: how many such releases, >= 1.

    Raises:
      ValueError: for an invalid value.

    Example:
      >>> import dpjax
      >>> dpjax.GaussianRelease(noise_multiplier=2.0).dp_event()
      GaussianDpEvent(noise_multiplier=2.0)

    **Privacy:** true only if the noise std is `noise_multiplier` times the L2
    sensitivity under adding or removing one example (or user).
    """

    noise_multiplier: float
    count: int = 1
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self):
        object.__setattr__(
            self, "noise_multiplier", _validation.check_noise_multiplier(self.noise_multiplier)
        )
        object.__setattr__(self, "count", _validation.check_steps(self.count, "count"))

    def dp_event(self) -> dp_accounting.DpEvent:
        """The Gaussian event, self-composed `count` times."""
        event = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        return event if self.count == 1 else dp_accounting.SelfComposedDpEvent(event, self.count)


@dataclasses.dataclass(frozen=True)
class LaplaceRelease(Release):
    """`count` releases of the Laplace mechanism: scale b = noise_multiplier * L1 sensitivity.

    Each is (1 / noise_multiplier, 0)-DP; composed exactly through dp-accounting
    (`LaplaceDpEvent`), which is tighter than adding the epsilons.

    Args:
      noise_multiplier: Laplace scale over the L1 sensitivity, > 0.
      count: how many such releases, >= 1.

    Raises:
      ValueError: for an invalid value.

    Example:
      >>> import dpjax
      >>> dpjax.LaplaceRelease(noise_multiplier=2.0).dp_event()
      LaplaceDpEvent(noise_multiplier=2.0)

    **Privacy:** true only if the scale is `noise_multiplier` times the L1
    sensitivity of the released value (1 for a count).
    """

    noise_multiplier: float
    count: int = 1
    kind: ClassVar[str] = "laplace"

    def __post_init__(self):
        object.__setattr__(
            self, "noise_multiplier", _validation.check_noise_multiplier(self.noise_multiplier)
        )
        object.__setattr__(self, "count", _validation.check_steps(self.count, "count"))

    def dp_event(self) -> dp_accounting.DpEvent:
        """The Laplace event, self-composed `count` times."""
        event = dp_accounting.LaplaceDpEvent(self.noise_multiplier)
        return event if self.count == 1 else dp_accounting.SelfComposedDpEvent(event, self.count)


@dataclasses.dataclass(frozen=True)
class PureEpsilonRelease(Release):
    """`count` releases of any (epsilon, 0)-DP mechanism that has no dp-accounting event.

    E.g. the exponential mechanism, or a mechanism analysed only by its
    epsilon. **Composition rule:** the account of everything else is computed
    exactly at delta; then the pure epsilons are ADDED: if the rest is
    (eps_rest, delta)-DP, the whole is (eps_rest + count * epsilon, delta)-DP
    (basic sequential composition, Dwork & Roth 2014, Thm 3.16). It is valid for
    any mechanisms and adaptive choices, and loose when there are many pure-
    epsilon releases (prefer a record with an event when one exists).

    Args:
      epsilon: the epsilon of one release, finite and > 0.
      count: how many such releases, >= 1.
      label: a short description kept in the account.

    Raises:
      ValueError: for an invalid value.

    Example:
      >>> import dpjax
      >>> r = dpjax.PureEpsilonRelease(epsilon=0.1, count=3, label="exponential mechanism")
      >>> round(r.pure_epsilon, 6), r.dp_event() is None
      (0.3, True)

    **Privacy:** true only if each release is (epsilon, 0)-DP for the same
    neighbouring relation as the rest of the account.
    """

    epsilon: float
    count: int = 1
    label: str = ""
    kind: ClassVar[str] = "pure_epsilon"

    def __post_init__(self):
        object.__setattr__(
            self, "epsilon", _validation.check_target_epsilon(self.epsilon, "epsilon")
        )
        object.__setattr__(self, "count", _validation.check_steps(self.count, "count"))
        if not isinstance(self.label, str):
            raise ValueError(f"label={self.label!r} must be a string, e.g. label='selection'.")

    def dp_event(self) -> None:
        """None: composed by the pure-epsilon rule instead."""
        return None

    @property
    def pure_epsilon(self) -> float:
        """`count * epsilon`."""
        return self.count * self.epsilon


@dataclasses.dataclass(frozen=True)
class EventRelease(Release):
    """Any `dp_accounting.DpEvent`, with a label (e.g. adaptive clipping's noisy count).

    Args:
      event: the mechanism's event, for the same neighbouring relation.
      label: a short description kept in the account.

    Raises:
      ValueError: if `event` is not a `DpEvent` or `label` not a string.

    Example:
      >>> import dp_accounting, dpjax
      >>> r = dpjax.EventRelease(dp_accounting.GaussianDpEvent(10.0), label="quantile")
      >>> r.dp_event()
      GaussianDpEvent(noise_multiplier=10.0)
    """

    event: dp_accounting.DpEvent
    label: str = ""
    kind: ClassVar[str] = "event"

    def __post_init__(self):
        if not isinstance(self.event, dp_accounting.DpEvent):
            raise ValueError(f"event={self.event!r} must be a dp_accounting.DpEvent.")
        if not isinstance(self.label, str):
            raise ValueError(
                f"label={self.label!r} must be a string, e.g. label='adaptive clipping'."
            )

    def dp_event(self) -> dp_accounting.DpEvent:
        """The event as given."""
        return self.event

    def to_json(self) -> dict[str, Any]:
        """The event as nested JSON (its class name and fields)."""
        return {"kind": self.kind, "label": self.label, "event": _event_to_json(self.event)}


_KINDS: dict[str, type[Release]] = {
    cls.kind: cls
    for cls in (
        PoissonGaussianSteps,
        GaussianRelease,
        LaplaceRelease,
        PureEpsilonRelease,
        EventRelease,
    )
}


def release_from_json(data: Any) -> Release:
    """Rebuilds a record from :meth:`Release.to_json` (host side).

    Raises:
      ValueError: if `data` is not a valid record (unknown kind, missing or bad fields).
    """
    if not isinstance(data, dict) or data.get("kind") not in _KINDS:
        raise ValueError(
            f"{data!r} is not a release record; expected a dict whose 'kind' is one of "
            f"{sorted(_KINDS)}."
        )
    cls = _KINDS[data["kind"]]
    fields = {k: v for k, v in data.items() if k != "kind"}
    if cls is EventRelease and "event" in fields:
        fields["event"] = _event_from_json(fields["event"])
    try:
        return cls(**fields)
    except TypeError as err:
        raise ValueError(f"{data!r} is not a valid {cls.__name__} record: {err}.") from err


def merge(previous: Release, new: Release) -> Release | None:
    """`previous` and `new` as one record when they are the same mechanism in a row, else None.

    Consecutive identical DP-SGD steps become one record with the steps added,
    so an account of a long run stays short.
    """
    if isinstance(previous, PoissonGaussianSteps) and isinstance(new, PoissonGaussianSteps):
        if (previous.noise_multiplier, previous.sampling_rate) == (
            new.noise_multiplier,
            new.sampling_rate,
        ):
            return dataclasses.replace(previous, steps=previous.steps + new.steps)
    return None


def _event_to_json(event: dp_accounting.DpEvent) -> dict[str, Any]:
    def conv(value):
        if hasattr(value, "_fields") and "class_name" in value._fields:
            out = {}
            for k, v in value._asdict().items():
                if k == "module_name":
                    continue
                out["type" if k == "class_name" else k] = conv(v)
            return out
        if isinstance(value, list | tuple):
            return [conv(v) for v in value]
        return value

    out: dict[str, Any] = conv(event.to_named_tuple())
    return out


def _event_from_json(data: Any) -> dp_accounting.DpEvent:
    """The DpEvent of :func:`_event_to_json`'s output; ValueError for anything else."""
    if not isinstance(data, dict):
        raise ValueError(f"the account holds {data!r} where a DpEvent (a dict) was expected.")
    name = data.get("type")
    cls = getattr(_dp_event_module, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, dp_accounting.DpEvent)):
        raise ValueError(f"the account holds an unknown DpEvent type {name!r}.")
    fields = {k: _event_field_from_json(v) for k, v in data.items() if k != "type"}
    for field in getattr(cls, "__attrs_attrs__", ()):  # the annotated int fields must be ints
        value = fields.get(field.name)
        if field.type is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(
                f"the account holds a {name} with {field.name}={value!r}; expected an int."
            )
    event = cls(**fields)
    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and event.sampling_probability > 1:
        raise ValueError(
            f"the account holds sampling_probability={event.sampling_probability!r} > 1."
        )
    return event


def _event_field_from_json(value: Any) -> Any:
    """A DpEvent field: an event, a list of fields, or a finite number >= 0."""
    if isinstance(value, dict):
        return _event_from_json(value)
    if isinstance(value, list):
        return [_event_field_from_json(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"the account holds the event field value {value!r}; expected >= 0.")
        return value
    raise ValueError(f"the account holds the event field value {value!r}; expected a number >= 0.")


def total_pure_epsilon(releases: tuple[Release, ...]) -> float:
    """The sum of the pure epsilons of `releases` (the pure-epsilon rule)."""
    return math.fsum(r.pure_epsilon for r in releases)
