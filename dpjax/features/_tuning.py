"""Private hyperparameter selection (Papernot & Steinke 2022), accounted as one record (host side).

Run a private training procedure a RANDOM number of times K (each run draws
its hyperparameters from a fixed, data-independent distribution, trains with
DP and scores itself privately), and release only the best run. If one run is
(lambda, epsilon(lambda))-RDP, the whole selection is RDP with the bound of
Papernot & Steinke (Theorem 2 for the truncated negative binomial family,
Theorem 6 for Poisson). dp-accounting implements that bound as
`RepeatAndSelectDpEvent`; here it becomes one :class:`dpjax.EventRelease`
recorded in the :class:`dpjax.PrivacyTracker` (accountant "rdp") before the
first run starts, so the reported epsilon is end to end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import dp_event

import dpjax

POISSON = math.inf
"""The `shape` of the Poisson distribution of the number of runs."""


def _check_distribution(mean: float, shape: float) -> tuple[float, float]:
    if not (isinstance(mean, (int, float)) and math.isfinite(mean) and mean >= 1):
        raise ValueError(
            f"mean={mean!r} is the expected number of runs and must be a finite number >= 1; "
            "pass e.g. mean=3."
        )
    if not (isinstance(shape, (int, float)) and (shape == math.inf or 0 <= shape < math.inf)):
        raise ValueError(
            f"shape={shape!r} must be >= 0: 0 (logarithmic), 1 (geometric), any other "
            "positive number (truncated negative binomial) or math.inf (Poisson)."
        )
    return float(mean), float(shape)


def tuning_release(
    run_event: dp_accounting.DpEvent, *, mean: float, shape: float = 1.0
) -> dpjax.EventRelease:
    """The record of a private selection: a random number of runs of `run_event`, the best released.

    Args:
      run_event: the `dp_accounting` event of ONE run (its training and its
        private score), the same for every run; e.g. `dpjax.dp_sgd_event(sigma,
        q, steps)` composed with the score's Gaussian release.
      mean: E[K], the expected number of runs, >= 1.
      shape: the distribution of K: 0 logarithmic, 1 geometric (default),
        eta in (0, inf) truncated negative binomial, `POISSON` (math.inf).

    Returns:
      `dpjax.EventRelease(RepeatAndSelectDpEvent(run_event, mean, shape))`;
      compose it with `PrivacyTracker(..., accountant="rdp")` (the PLD
      accountant has no such event).

    Raises:
      ValueError: for a bad mean or shape, or a `run_event` that is not a DpEvent.

    Example:
      >>> import dp_accounting, dpjax
      >>> from dpjax.features import tuning_release
      >>> r = tuning_release(dp_accounting.GaussianDpEvent(5.0), mean=3.0)
      >>> tracker = dpjax.PrivacyTracker(target_epsilon=10.0, delta=1e-5, accountant="rdp")
      >>> tracker.record(r)
      >>> round(tracker.epsilon_spent(), 3)
      1.399

    **Privacy:** true only if (1) the number of runs K is drawn from this
    distribution with SECRET randomness and never released; (2) every run is
    the same randomized procedure (its hyperparameters drawn independently of
    the data from one fixed distribution) and satisfies `run_event`'s
    guarantee, its score included (a score computed on private data without
    noise is a release: add noise and put it in `run_event`); (3) only the best
    run's output (and its score) is released, nothing of the others.

    References:
      Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential
      Privacy", ICLR 2022, https://arxiv.org/abs/2110.03620 (Theorems 2 and 6).
    """
    if not isinstance(run_event, dp_accounting.DpEvent):
        raise ValueError(f"run_event={run_event!r} must be a dp_accounting.DpEvent.")
    mean, shape = _check_distribution(mean, shape)
    event = dp_event.RepeatAndSelectDpEvent(run_event, mean, shape)
    name = "Poisson" if shape == math.inf else f"truncated negative binomial, eta={shape:g}"
    return dpjax.EventRelease(event, label=f"private tuning: E[K]={mean:g} runs ({name})")


def tuning_epsilon(release: dpjax.EventRelease, delta: float) -> float:
    """The epsilon at `delta` of a :func:`tuning_release` alone (RDP accountant).

    Example:
      >>> import dp_accounting
      >>> from dpjax.features import tuning_epsilon, tuning_release
      >>> single = tuning_epsilon(tuning_release(dp_accounting.GaussianDpEvent(5.0), mean=1.0), 1e-5)
      >>> single < tuning_epsilon(tuning_release(dp_accounting.GaussianDpEvent(5.0), mean=3.0), 1e-5)
      True
    """
    tracker = dpjax.PrivacyTracker(math.inf, delta, accountant="rdp")
    tracker.record(release)
    return tracker.epsilon_spent()


def sample_number_of_runs(mean: float, shape: float, rng: np.random.Generator) -> int:
    """Draws K, the number of runs (host side): truncated negative binomial or Poisson.

    Truncated negative binomial (Papernot & Steinke, Definition 1), with gamma
    solved from the mean: P[K = k] proportional to
    `(1 - gamma)**k * prod_{l < k} (l + eta) / (l + 1)` for k >= 1 (eta = 0:
    logarithmic; eta = 1: geometric). Poisson: K ~ Poisson(mean), K = 0 allowed
    (then nothing is released).

    Args:
      mean: E[K] >= 1.
      shape: eta >= 0, or `POISSON`.
      rng: a NumPy generator seeded SECRETLY (e.g. `dpjax.secret_seed()`).

    Returns:
      K >= 0 (>= 1 unless Poisson).

    Example:
      >>> import numpy as np
      >>> from dpjax.features import sample_number_of_runs
      >>> rng = np.random.default_rng(0)
      >>> draws = [sample_number_of_runs(3.0, 1.0, rng) for _ in range(4000)]
      >>> min(draws) >= 1, bool(abs(np.mean(draws) - 3.0) < 0.2)
      (True, True)
    """
    mean, shape = _check_distribution(mean, shape)
    if shape == math.inf:
        return int(rng.poisson(mean))
    if mean == 1.0:
        return 1
    gamma = _gamma(mean, shape)
    if shape == 0.0:
        return int(rng.logseries(1.0 - gamma))
    while True:  # negative binomial (failures before eta successes at rate gamma), K >= 1
        k = int(rng.negative_binomial(shape, gamma))
        if k >= 1:
            return k


def _gamma(mean: float, shape: float) -> float:
    """gamma of the truncated negative binomial with this mean (Papernot & Steinke, Def. 1)."""

    def tnb_mean(g: float) -> float:
        if shape == 1.0:
            return 1.0 / g
        if shape == 0.0:
            return (1.0 / g - 1.0) / math.log(1.0 / g)
        return shape * (1.0 - g) / (g * (1.0 - g**shape))

    lo, hi = 0.0, 1.0
    for _ in range(200):  # the mean decreases in gamma
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tnb_mean(mid) > mean else (lo, mid)
    return hi


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """The outcome of :func:`private_tuning`.

    Attributes:
      best: `(score, output)` of the best run, or None when K = 0 (Poisson).
        The only thing that may be released.
      count: K, the number of runs. SECRET: never release it.
      results: every run's `(score, output)`. SECRET: for the data owner's eyes.

    **Privacy:** `repr` (so a log line, a notebook cell or an f-string) shows
    `best` only, and `json.dumps` refuses the object: K and the other runs'
    scores never leave by accident (issue 17, section 5: as a NamedTuple it
    printed them, and `json.dumps` wrote them as a list).
    """

    best: tuple[float, Any] | None
    count: int = dataclasses.field(repr=False)
    results: list[tuple[float, Any]] = dataclasses.field(repr=False)


def _seed_stream(rng: np.random.Generator) -> np.random.Generator:
    """A generator of the runs' seeds, apart from `rng` (spawning leaves `rng`'s draws as they were)."""
    try:
        return rng.spawn(1)[0]
    except TypeError:  # a bit generator without a SeedSequence: seed the child from `rng`
        return np.random.default_rng(int(rng.integers(0, 2**63)))


def private_tuning(
    run: Callable[[int], tuple[float, Any]],
    release: dpjax.EventRelease,
    tracker: dpjax.PrivacyTracker,
    *,
    rng: np.random.Generator | None = None,
) -> TuningResult:
    """Runs a private procedure K times (K random) and keeps the best run (Papernot & Steinke 2022).

    The record `release` (from :func:`tuning_release`) is told to `tracker`
    BEFORE the first run; then K is drawn from its distribution and `run` is
    called K times, each time with a fresh, independent 64-bit seed.

    Args:
      run: `run(seed) -> (score, output)`: draws its hyperparameters from a
        fixed data-independent distribution (e.g. with
        `np.random.default_rng(seed)`), trains privately, and returns a
        PRIVATE score (higher is better) with its output. `seed` is drawn
        independently for every run (from a stream spawned off `rng`), never
        the run's position: a run that derives its hyperparameters from its
        argument is still one of K i.i.d. runs.
      release: the :func:`tuning_release` of one run's event.
      tracker: a :class:`dpjax.PrivacyTracker` with `accountant="rdp"`.
      rng: the generator of K; default seeded from `dpjax.secret_seed()`.
        A public seed is for reproducible research only.

    Returns:
      A :class:`TuningResult`; release only `best`.

    Raises:
      ValueError: if `release` is not a tuning record or the tracker's
        accountant is not "rdp".
      dpjax.BudgetExceededError: if the selection does not fit the budget
        (then nothing ran).

    Example:
      >>> import dp_accounting, dpjax, numpy as np
      >>> from dpjax.features import private_tuning, tuning_release
      >>> tracker = dpjax.PrivacyTracker(target_epsilon=5.0, delta=1e-5, accountant="rdp")
      >>> record = tuning_release(dp_accounting.GaussianDpEvent(5.0), mean=2.0)
      >>> def run(seed):  # stands in for: draw a learning rate, train with DP, score privately
      ...     lr = float(np.random.default_rng(seed).choice([0.1, 0.3, 1.0]))
      ...     return -abs(lr - 0.3), {"lr": lr}
      >>> out = private_tuning(run, record, tracker, rng=np.random.default_rng(0))
      >>> out.best[1]["lr"] in (0.1, 0.3, 1.0), tracker.releases == (record,)
      (True, True)

    **Privacy:** see :func:`tuning_release`; the tracker holds the whole
    selection as one record (not the runs' own records: do not also record
    the runs in it). The runs get independent seeds, not their index: with
    the index, a run that picks its hyperparameters by it (a grid, or
    `default_rng(i)`) is not identically distributed, and the released best
    can name K (`run(i) -> (i, i)` released K - 1; issue 17, section 5).

    References:
      Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential
      Privacy", ICLR 2022.
      Liu & Talwar, "Private Selection from Private Candidates", STOC 2019.
    """
    event = getattr(release, "event", None)
    if not (
        isinstance(release, dpjax.EventRelease)
        and isinstance(event, dp_event.RepeatAndSelectDpEvent)
    ):
        raise ValueError(
            f"release={release!r} is not a tuning record; build it with "
            "dpjax.features.tuning_release(run_event, mean=..., shape=...)."
        )
    if tracker.accountant != "rdp":
        raise ValueError(
            f"tracker has accountant={tracker.accountant!r}; the tuning bound is an RDP bound: "
            "pass dpjax.PrivacyTracker(..., accountant='rdp')."
        )
    if rng is None:
        rng = np.random.default_rng(dpjax.secret_seed())
    tracker.record(release)  # BEFORE anything runs
    count = sample_number_of_runs(event.mean, event.shape, rng)
    seeds = _seed_stream(rng)
    results = []
    for _ in range(count):
        score, output = run(int(seeds.integers(0, 2**64, dtype=np.uint64)))
        score = float(score)
        results.append((score if math.isfinite(score) else -math.inf, output))
    best = max(results, key=lambda r: r[0]) if results else None
    return TuningResult(best, count, results)
