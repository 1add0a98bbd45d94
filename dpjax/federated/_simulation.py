"""The pure-JAX federated simulation: sample clients, train locally, aggregate, account (host loop)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
from dpjax import _validation
from dpjax.federated._client import ClientBatch, LocalSGD, client_batch
from dpjax.federated._data import FederatedData
from dpjax.federated._privacy import (
    CentralDP,
    LocalDP,
    NotPrivateFedAvg,
    PrivacyMode,
    local_dp_epsilon,
)

PyTree = Any


class RoundResult(NamedTuple):
    """What one round reports.

    Attributes:
      round: the round index (0-based).
      epsilon: user-level epsilon spent after this round (central DP: the
        tracker's; local DP: the worst client's; NOT PRIVATE: inf).
      num_clients: clients that took part (NOT private: a diagnostic).
      seconds: wall time of the round.
    """

    round: int
    epsilon: float
    num_clients: int
    seconds: float


def make_round(local: LocalSGD, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """One federated round as a pure function (device side; jit it).

    Args:
      local: the clients' local training.
      tx: `optax.chain(aggregator, server_optimizer)`, the aggregator taking the
        stacked pseudo-gradients and `mask=` (:class:`CentralDP`, :class:`LocalDP`,
        :class:`NotPrivateFedAvg`).

    Returns:
      `round(params, opt_state, x, y, batch, key) -> (params, opt_state)` where
      `x, y` are all users' examples, `batch` a :class:`ClientBatch` and `key`
      the local-shuffling key of the round.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np, optax
      >>> from dpjax.federated import CentralDP, LocalSGD, client_batch, make_round
      >>> local = LocalSGD(lambda w, x, y: (x @ w - y) ** 2, learning_rate=0.1, batch_size=2)
      >>> tx = optax.chain(CentralDP(1.0, 1.0).aggregator(2, jax.random.key(0)), optax.sgd(1.0))
      >>> b = client_batch([np.arange(2), np.arange(2, 4)], np.array([0, 1]), np.ones(2, bool), 2)
      >>> w = jnp.zeros(3)
      >>> w, s = make_round(local, tx)(w, tx.init(w), jnp.ones((4, 3)), jnp.ones(4),
      ...                              b, jax.random.key(1))
      >>> w.shape
      (3,)
    """

    def round_fn(
        params: PyTree,
        opt_state: Any,
        x: jax.Array,
        y: jax.Array,
        batch: ClientBatch,
        key: jax.Array,
    ) -> tuple[PyTree, Any]:
        idx = jnp.asarray(batch.indices)
        keys = jax.vmap(lambda u: jax.random.fold_in(key, u))(jnp.asarray(batch.user_ids))
        pseudo = local(params, x[idx], y[idx], jnp.asarray(batch.example_mask), keys)
        update: Any = tx.update
        updates, opt_state = update(pseudo, opt_state, params, mask=jnp.asarray(batch.client_mask))
        return optax.apply_updates(params, updates), opt_state

    return round_fn


@dataclasses.dataclass
class FederatedSimulation:
    """DP federated averaging over simulated users, with the user-level account (host side).

    Each round: clients are Poisson-sampled (:class:`dpjax.PoissonSampler`
    over users, q = `clients_per_round / num_users`, padded to a fixed client
    count); each runs :class:`LocalSGD` (vmapped, padded to a few shapes); the
    mode's aggregator clips and noises (:class:`CentralDP`: the server, once;
    :class:`LocalDP`: every client); the server optimizer steps. The
    accountant is told the round BEFORE it runs.

    Args:
      data: the users (:class:`FederatedData`).
      local: the clients' local training.
      mode: :class:`CentralDP`, :class:`LocalDP` or :class:`NotPrivateFedAvg`.
      server_optimizer: any optax optimizer on the pseudo-gradient
        (`optax.sgd(1.0)` is FedAvg; `optax.adam`, `optax.yogi` give FedAdam,
        FedYogi).
      clients_per_round: expected clients per round (= `num_users` for full
        participation, accounted without amplification).
      key: the noise key (:func:`dpjax.secret_key`), reserved for the noise.
      seed: seed of the client sampler and of the local shuffling (draw with
        :func:`dpjax.secret_seed` in a real run).
      delta: the delta of the user-level guarantee (default `1 / users**1.1`).
      target_epsilon: the budget; central DP stops (raises
        :class:`dpjax.BudgetExceededError` before the round) beyond it; under
        local DP each client stops taking part once its next message would
        exceed it.
      max_examples: optional public cap on each client's examples.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from dpjax.federated import (CentralDP, FederatedSimulation, LocalSGD,
      ...                              synthetic_federated_data)
      >>> fed = synthetic_federated_data(num_users=10, dim=3, seed=0)
      >>> loss = lambda w, x, y: jnp.sum((x @ w) ** 2)
      >>> sim = FederatedSimulation(fed, LocalSGD(loss, 0.1, batch_size=4),
      ...                           CentralDP(1.0, 1.0), optax.sgd(1.0), clients_per_round=5,
      ...                           key=jax.random.key(0), seed=0)
      >>> w = sim.init(jnp.zeros(3))
      >>> w, result = sim.round(w)
      >>> result.epsilon > 0
      True

    **Privacy:** user-level DP: neighbouring data sets differ in ONE user's
    whole data. Central DP: each round is `PoissonGaussianSteps(sigma, q)`
    (`GaussianRelease(sigma)` if q = 1), told to the tracker before the round;
    true if the server is trusted with the raw updates. Local DP: each
    message is `GaussianRelease(sigma)` for its client, composed over the
    client's participations. The sampler's seed must be secret in a real run;
    `repr` (and so any log line or f-string of the simulation) shows neither
    the noise key nor the seed.
    """

    data: FederatedData
    local: LocalSGD
    mode: PrivacyMode
    server_optimizer: optax.GradientTransformation
    clients_per_round: float
    key: jax.Array = dataclasses.field(repr=False)  # secret: never in a log line
    seed: int = dataclasses.field(repr=False)
    delta: float | None = None
    target_epsilon: float = math.inf
    max_examples: int | None = None

    def __post_init__(self):
        n = self.data.num_users
        self.clients_per_round = _validation.check_positive_float(
            self.clients_per_round, "clients_per_round", "100"
        )
        if self.clients_per_round > n:
            raise ValueError(
                f"clients_per_round={self.clients_per_round} exceeds the {n} users; pass <= {n}."
            )
        if not isinstance(self.mode, (CentralDP, LocalDP, NotPrivateFedAvg)):
            raise ValueError(f"mode={self.mode!r} must be CentralDP, LocalDP or NotPrivateFedAvg.")
        self.delta = _validation.check_delta(
            1.0 / n**1.1 if self.delta is None else self.delta, n if n > 1 else None
        )
        self.seed = _validation.check_seed(self.seed)
        self.sampler = dpjax.PoissonSampler(
            n, expected_batch_size=self.clients_per_round, seed=self.seed
        )
        self.sampling_rate = self.sampler.sampling_rate
        agg = self.mode.aggregator(self.clients_per_round, _validation.check_key(self.key))
        self.tx = optax.chain(agg, self.server_optimizer)
        self.tracker: dpjax.PrivacyTracker | None = None
        if isinstance(self.mode, CentralDP):
            self.tracker = dpjax.PrivacyTracker(self.target_epsilon, self.delta)
        self.participations = np.zeros(n, np.int64)
        self.max_participations = self._local_limit()
        self.shuffle_root = dpjax.key_from_seed(dpjax.derive_seed(self.seed, 1))
        self._round = jax.jit(make_round(self.local, self.tx))
        self._x = jnp.asarray(self.data.train.x)
        self._y = jnp.asarray(self.data.train.y)
        self.round_index = 0
        self.opt_state: Any = None
        self._server: Any = None
        self._recorded: tuple[int, np.ndarray] | None = None  # the round sample_clients recorded

    def _local_limit(self) -> int | None:
        """Under local DP, the most messages a client may send within the budget."""
        if not isinstance(self.mode, LocalDP) or math.isinf(self.target_epsilon):
            return None
        # A message is one Gaussian release of the client's own update: q = 1 in the core's search.
        delta = float(self.delta or 0.0)  # set in __post_init__
        return dpjax.max_steps(self.mode.noise_multiplier, 1.0, delta, self.target_epsilon)

    def init(self, params: PyTree) -> PyTree:
        """Initializes the server optimizer (and the aggregator's noise state); returns params.

        Raises:
          ValueError: after a round has run: a new noise state restarts its step
            counter at 0, so the next rounds would redraw the noise of rounds
            already released (key reuse). Build a new simulation instead.
        """
        if self.round_index > 0:
            raise ValueError(
                f"FederatedSimulation.init after {self.round_index} round(s) would reuse the "
                "noise of released rounds; build a new FederatedSimulation (with a fresh key)."
            )
        self.opt_state = self.tx.init(params)
        return params

    def epsilon(self) -> float:
        """User-level epsilon spent so far (local DP: the most-used client's)."""
        if isinstance(self.mode, NotPrivateFedAvg):
            return math.inf
        if isinstance(self.mode, LocalDP):
            worst = int(self.participations.max())
            return local_dp_epsilon(self.mode.noise_multiplier, worst, float(self.delta or 0.0))
        assert self.tracker is not None
        return self.tracker.epsilon_spent()

    def sample_clients(self) -> tuple[np.ndarray, np.ndarray]:
        """Host side: this round's clients (padded user ids, mask), told to the accountant first.

        Central DP records the round's release BEFORE anything is computed (and
        raises :class:`dpjax.BudgetExceededError` instead if it would exceed the
        budget); local DP masks out clients past their own budget and counts
        the participations of the others.
        """
        if self.opt_state is None:
            raise ValueError("call FederatedSimulation.init(params) before a round.")
        sampled = self.sampler.sample(self.round_index)
        mask = sampled.mask.copy()
        if self.max_participations is not None:  # a client past its own budget stays silent
            mask &= self.participations[sampled.indices] < self.max_participations
        if isinstance(self.mode, CentralDP):
            assert self.tracker is not None
            self.tracker.record(self.mode.release(self.sampling_rate))  # BEFORE the release
        if isinstance(self.mode, LocalDP):
            np.add.at(self.participations, sampled.indices[mask], 1)
        self._recorded = (self.round_index, mask.copy())
        return sampled.indices, mask

    def shuffle_key(self, round_index: int) -> jax.Array:
        """The local-shuffling key of a round (client u folds in its user id)."""
        return jax.random.fold_in(self.shuffle_root, round_index)

    def server_step(self, params: PyTree, pseudo_grads: PyTree, client_mask: np.ndarray) -> PyTree:
        """Device side: aggregate stacked client updates (mode's clip + noise) and step the server.

        For an external engine (Flower) that computed the clients' updates
        itself; call :meth:`sample_clients` first. Advances the round.

        Raises:
          ValueError: if this round was not recorded by :meth:`sample_clients`
            (no call, or a second `server_step` for it), or `client_mask`
            marks a client that was not sampled.

        **Privacy:** a release: it runs only once per round that
        :meth:`sample_clients` told the accountant, on the clients sampled
        for it (issue 17, section 5: a second call, or a call without
        sampling, released an unaccounted round).
        """
        real = np.asarray(client_mask, bool)
        recorded = self._recorded
        if recorded is None or recorded[0] != self.round_index:
            raise ValueError(
                f"server_step for round {self.round_index} was not recorded: call "
                "sample_clients() first (it tells the accountant), once per server_step."
            )
        if real.shape != recorded[1].shape or bool(np.any(real & ~recorded[1])):
            raise ValueError(
                "client_mask marks clients that sample_clients() did not sample for this round "
                "(their updates would be unaccounted); pass the mask it returned."
            )
        self._recorded = None
        if self._server is None:

            def step(params, opt_state, pseudo, mask):
                update: Any = self.tx.update
                updates, opt_state = update(pseudo, opt_state, params, mask=mask)
                return optax.apply_updates(params, updates), opt_state

            self._server = jax.jit(step)
        params, self.opt_state = self._server(
            params, self.opt_state, pseudo_grads, jnp.asarray(client_mask)
        )
        self.round_index += 1
        return params

    def round(self, params: PyTree) -> tuple[PyTree, RoundResult]:
        """Runs one round (accounted before it runs) and returns the new params and its report."""
        start = time.perf_counter()
        ids, mask = self.sample_clients()
        self._recorded = None  # this round is released here, not through server_step
        batch = client_batch(self.data.users, ids, mask, self.local.batch_size, self.max_examples)
        key = self.shuffle_key(self.round_index)
        params, self.opt_state = self._round(params, self.opt_state, self._x, self._y, batch, key)
        params = jax.block_until_ready(params)
        result = RoundResult(
            self.round_index, self.epsilon(), int(mask.sum()), time.perf_counter() - start
        )
        self.round_index += 1
        return params, result
