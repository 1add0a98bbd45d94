"""Where the noise goes: central DP at the server, local DP on each client, or NOT PRIVATE.

Each mode gives the server's aggregation (an optax transformation taking the
clients' pseudo-gradients stacked on a leading axis and `mask=`, built from
dpjax's clippers and noise stage) and the record the accountant is told.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import optax

import dpjax
from dpjax import _validation

PyTree = Any


def round_release(noise_multiplier: float, sampling_rate: float) -> dpjax.Release:
    """The record of one central-DP round: Poisson-sampled Gaussian, or Gaussian when q = 1.

    Args:
      noise_multiplier: sigma of the server's noise (std sigma * C on the sum of
        clipped client updates).
      sampling_rate: the clients' Poisson rate q = expected clients / users.

    Returns:
      `dpjax.PoissonGaussianSteps(sigma, q)` if q < 1, else
      `dpjax.GaussianRelease(sigma)` (every client takes part: no amplification).

    Example:
      >>> from dpjax.federated import round_release
      >>> round_release(1.0, 1.0)
      GaussianRelease(noise_multiplier=1.0, count=1)

    **Privacy:** user-level (add/remove one user's whole data) when every
    client's update is clipped to C and the clients are Poisson-sampled.
    """
    q = _validation.check_sampling_rate(sampling_rate)
    if q == 1.0:
        return dpjax.GaussianRelease(noise_multiplier)
    return dpjax.PoissonGaussianSteps(noise_multiplier, q)


@dataclasses.dataclass(frozen=True)
class CentralDP:
    """DP-FedAvg: the server clips each client's update to C, noises the sum once, divides by n.

    Args:
      l2_norm: the client clip norm C (the initial one if `adaptive`).
      noise_multiplier: sigma; the server adds N(0, (sigma C)^2) to the sum.
      adaptive: clip at a private quantile of the client update norms
        (:func:`dpjax.adaptive_dp_aggregate`; its noisy count is inside sigma).
      target_quantile: the quantile for `adaptive`.
      count_noise_multiplier: the count's noise for `adaptive` (default
        expected clients / 20).

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> import jax, jax.numpy as jnp, dpjax
      >>> from dpjax.federated import CentralDP
      >>> tx = CentralDP(l2_norm=1.0, noise_multiplier=1.0).aggregator(4, jax.random.key(0))
      >>> out, _ = tx.update(jnp.ones((4, 3)), tx.init(jnp.zeros(3)), mask=jnp.ones(4, bool))
      >>> out.shape
      (3,)

    **Privacy:** each client moves the sum by at most C (padded, non-sampled
    and non-finite clients by 0); the noise, std sigma C, is drawn once per
    round on the sum; the mean divides by the EXPECTED number of clients. With
    Poisson client sampling this is `PoissonGaussianSteps(sigma, q)` per round
    (:func:`round_release`), user-level. The server sees the clients' raw
    updates: it must be trusted (see the README on secure aggregation).

    References:
      McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private
      Recurrent Language Models", ICLR 2018.
      Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning
      with Adaptive Clipping", NeurIPS 2021.
    """

    l2_norm: float
    noise_multiplier: float
    adaptive: bool = False
    target_quantile: float = 0.5
    count_noise_multiplier: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "l2_norm", _validation.check_clip_norm(self.l2_norm))
        object.__setattr__(
            self, "noise_multiplier", _validation.check_noise_multiplier(self.noise_multiplier)
        )

    def aggregator(self, expected_clients: float, key: jax.Array) -> optax.GradientTransformation:
        """The server's transformation: stacked pseudo-gradients + `mask=` -> the noisy mean."""
        if self.adaptive:
            return dpjax.adaptive_dp_aggregate(
                self.l2_norm,
                self.noise_multiplier,
                expected_clients,
                key,
                target_quantile=self.target_quantile,
                count_noise_multiplier=self.count_noise_multiplier,
            )
        return dpjax.dp_aggregate(self.l2_norm, self.noise_multiplier, expected_clients, key)

    def release(self, sampling_rate: float) -> dpjax.Release:
        """The record of one round (:func:`round_release`)."""
        return round_release(self.noise_multiplier, sampling_rate)


@dataclasses.dataclass(frozen=True)
class LocalDP:
    """Local DP: each client clips its update to C and adds its own Gaussian noise before sending.

    The client's message is `clip(update, C) + N(0, (sigma * 2C)^2)`: under
    local DP any two inputs of a client are neighbours, and two clipped
    updates differ by up to 2C (replace-one sensitivity). One message is
    therefore :class:`dpjax.GaussianRelease` (sigma) for that client; the
    rounds it takes part in compose through the accountant
    (:func:`local_dp_epsilon`), not by adding epsilons. The server only
    averages (post-processing): sum of the messages / expected clients.

    Args:
      l2_norm: the clip norm C.
      noise_multiplier: sigma, relative to the replace-one sensitivity 2C.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from dpjax.federated import LocalDP
      >>> tx = LocalDP(l2_norm=1.0, noise_multiplier=1.0).aggregator(2, jax.random.key(0))
      >>> out, _ = tx.update(jnp.ones((2, 3)), tx.init(jnp.zeros(3)), mask=jnp.ones(2, bool))
      >>> out.shape
      (3,)

    **Privacy:** per client and per round (eps, delta) of the Gaussian
    mechanism with noise multiplier sigma; across rounds, the composition of
    the client's participations. No trust in the server is needed. Each
    client's noise uses a fresh key per (client row, round).

    References:
      Kasiviswanathan et al., "What Can We Learn Privately?", FOCS 2008;
      Truex et al., "LDP-Fed", EdgeSys 2020.
    """

    l2_norm: float
    noise_multiplier: float

    def __post_init__(self):
        object.__setattr__(self, "l2_norm", _validation.check_clip_norm(self.l2_norm))
        object.__setattr__(
            self, "noise_multiplier", _validation.check_noise_multiplier(self.noise_multiplier)
        )

    def release(self) -> dpjax.Release:
        """The record of one client's message in one round: `GaussianRelease(sigma)`."""
        return dpjax.GaussianRelease(self.noise_multiplier)

    def client_message(self, pseudo_grad: PyTree, key: jax.Array) -> PyTree:
        """One client's noisy clipped update, as a client sends it (device side).

        Args:
          pseudo_grad: the client's update (no batch axis).
          key: the client's fresh key for this round (never reused).

        Returns:
          `clip(update, C) + N(0, (sigma 2C)^2)`, in at least float32.
        """
        mechanism: Any = dpjax.gaussian_mechanism(self.noise_multiplier, key)
        return self._message(pseudo_grad, mechanism, mechanism.init(None))

    def _message(self, row: PyTree, mechanism: Any, state: Any) -> PyTree:
        """Clip one update to C (via dpjax's clipper), then the Gaussian mechanism at 2C."""
        one = jax.tree.map(lambda g: jnp.asarray(g)[None], row)
        clipped = dpjax.clip_and_sum(one, self.l2_norm, mask=jnp.ones(1, bool))
        clipped = dataclasses.replace(clipped, sensitivity=2.0 * self.l2_norm)
        noisy, _ = mechanism.update(clipped, state)
        return noisy

    def aggregator(
        self, expected_clients: float, key: jax.Array
    ) -> optax.GradientTransformationExtraArgs:
        """Clients' messages (each noised with its own key) summed over `mask`, / expected clients."""
        key = _validation.check_key(key)
        scale: Any = dpjax.scale_by_expected_batch_size(expected_clients)
        mechanism: Any = dpjax.gaussian_mechanism(self.noise_multiplier, key)

        def init_fn(params: PyTree) -> dpjax.GaussianNoiseState:
            return mechanism.init(params)

        def update_fn(updates, state, params=None, *, mask=None, **extra):
            del params, extra
            if mask is None:
                raise ValueError("LocalDP.aggregator needs mask= (False for padded clients).")
            k = jnp.shape(jax.tree.leaves(updates)[0])[0]

            def message(row: PyTree, i: jax.Array) -> PyTree:
                # Row i's key for this round: fold_in(fold_in(key, i), round) -- fresh per pair.
                row_state = dpjax.GaussianNoiseState(state.count, jax.random.fold_in(state.key, i))
                return self._message(row, mechanism, row_state)

            messages = jax.vmap(message)(updates, jnp.arange(k))
            real = jnp.asarray(mask, bool)

            def masked_sum(m: jax.Array) -> jax.Array:
                keep = real.reshape((-1,) + (1,) * (m.ndim - 1))
                return jnp.sum(jnp.where(keep, m, jnp.zeros((), m.dtype)), axis=0)

            total = jax.tree.map(masked_sum, messages)
            mean, _ = scale.update(total, scale.init(None))
            return mean, dpjax.GaussianNoiseState(state.count + 1, state.key)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class NotPrivateFedAvg:
    """NOT PRIVATE: plain FedAvg (no clipping, no noise); the baseline. Warns when built.

    Example:
      >>> import warnings
      >>> from dpjax.federated import NotPrivateFedAvg
      >>> with warnings.catch_warnings():
      ...     warnings.simplefilter("ignore")
      ...     mode = NotPrivateFedAvg()

    **Privacy:** NONE; the accountant records nothing and reports epsilon = inf.
    """

    def __post_init__(self):
        warnings.warn(
            "NOT PRIVATE: NotPrivateFedAvg neither clips nor noises the client updates.",
            dpjax.NotPrivateWarning,
            stacklevel=3,
        )

    def aggregator(
        self, expected_clients: float, key: jax.Array | None = None
    ) -> optax.GradientTransformation:
        """`dpjax.non_private_aggregate(expected_clients)` (the key is unused)."""
        del key
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dpjax.NotPrivateWarning)  # warned at construction
            return dpjax.non_private_aggregate(expected_clients)


PrivacyMode = CentralDP | LocalDP | NotPrivateFedAvg
"""How a federated run is privatized."""


@functools.lru_cache(maxsize=4096)
def local_dp_epsilon(noise_multiplier: float, participations: int, delta: float) -> float:
    """Epsilon of one client that sent `participations` local-DP messages (host side).

    Composes `GaussianRelease(sigma, count=participations)` with a
    :class:`dpjax.PrivacyTracker` (exact PLD composition, not a sum of epsilons).

    Args:
      noise_multiplier: the clients' sigma (:class:`LocalDP`).
      participations: rounds the client took part in (0 gives 0.0).
      delta: the delta.

    Returns:
      The client's epsilon.

    Example:
      >>> from dpjax.federated import local_dp_epsilon
      >>> local_dp_epsilon(5.0, 4, 1e-5) < 4 * local_dp_epsilon(5.0, 1, 1e-5)
      True

    **Privacy:** valid for the client's data whatever the server does.
    """
    if participations == 0:
        return 0.0
    tracker = dpjax.PrivacyTracker(target_epsilon=math.inf, delta=delta)
    tracker.record(dpjax.GaussianRelease(noise_multiplier, count=participations))
    return tracker.epsilon_spent()


def calibrate_local_noise(target_epsilon: float, participations: int, delta: float) -> float:
    """The smallest sigma (1 %) such that `participations` local-DP messages cost <= target.

    Args:
      target_epsilon: the per-client budget.
      participations: how many rounds each client may take part in.
      delta: the delta.

    Returns:
      sigma for :class:`LocalDP`.

    Example:
      >>> from dpjax.federated import calibrate_local_noise, local_dp_epsilon
      >>> s = calibrate_local_noise(3.0, 5, 1e-5)
      >>> local_dp_epsilon(s, 5, 1e-5) <= 3.0
      True
    """
    steps = _validation.check_positive_int(participations, "participations", "5")
    # q = 1: the Poisson-sampled Gaussian is the Gaussian mechanism itself.
    return dpjax.calibrate_noise_multiplier(target_epsilon, 1.0, steps, delta)
