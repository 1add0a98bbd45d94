"""Flower adapter: the same dpjax client update and server aggregation as a ClientApp and Strategy.

Needs the optional extra ``dpjax[federated]`` (``flwr``, and ``flwr[simulation]``
(Ray) for :func:`run_simulation`); flwr is imported only when these functions
are called, so ``import dpjax.federated.flower`` works without it.

* :func:`client_app`: a ``flwr.clientapp.ClientApp`` whose train handler runs
  :meth:`dpjax.federated.LocalSGD.client_update` on the node's user (its
  ``partition-id``) and replies with the pseudo-gradient.
* :func:`strategy`: a ``flwr.serverapp.strategy.Strategy`` that holds a
  :class:`dpjax.federated.FederatedSimulation` as the server: it samples the
  round's users with the same :class:`dpjax.PoissonSampler`, tells the
  accountant BEFORE the round, and aggregates with the same transformation
  (clip each client to C, noise once, divide by the expected clients, the
  server optimizer) through :meth:`FederatedSimulation.server_step`.
* :func:`run_simulation`: both, in Flower's in-process Simulation Engine.

With the same seeds, a Flower run equals the pure-JAX simulation up to float32
rounding (the clients' updates are computed one by one instead of vmapped,
and the server step is jitted apart from local training).
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dpjax.federated._client import padded_size
from dpjax.federated._privacy import CentralDP, NotPrivateFedAvg
from dpjax.federated._simulation import FederatedSimulation

PyTree = Any

NODE_TIMEOUT_S = 120.0
"""How long a round waits for every user's SuperNode to connect."""


def _flwr(module: str) -> Any:
    """Imports a Flower module (the optional extra), with the install hint if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dpjax.federated.flower needs Flower: pip install 'dpjax[federated]' "
            "(flwr[simulation] for the in-process Simulation Engine)."
        ) from err


def client_app(sim: FederatedSimulation, params: PyTree) -> Any:
    """A Flower ``ClientApp`` running dpjax's local update for the node's user.

    The node's user is ``context.node_config["partition-id"]``. The server's
    message carries the global parameters and, in its config, the round and
    the users it sampled; a node whose user was not sampled replies with
    ``participated = 0`` and no arrays. (In a deployment, each device samples
    itself with its own secret randomness instead: see the README.)

    Args:
      sim: the simulation whose data, local training, seed and example cap
        the clients use (each node reads only its own user's rows).
      params: a parameter pytree of the right structure (its values unused).

    Returns:
      A ``flwr.clientapp.ClientApp``.

    Raises:
      ImportError: if flwr is not installed.

    **Privacy:** under central DP the reply is the RAW update: the server (or
    a secure aggregation protocol) must be trusted to clip and noise it.
    """
    app_types = _flwr("flwr.app")
    ArrayRecord, Message = app_types.ArrayRecord, app_types.Message
    MetricRecord, RecordDict = app_types.MetricRecord, app_types.RecordDict

    # Only plain data travels to the nodes (Ray pickles the app): no jitted function, no key.
    treedef = jax.tree.structure(params)
    users, cap = sim.data.users, sim.max_examples
    x_all, y_all = np.asarray(sim.data.train.x), np.asarray(sim.data.train.y)
    local = sim.local
    shuffle_seed = np.asarray(jax.random.key_data(sim.shuffle_root))
    compiled: dict[str, Any] = {}
    app = _flwr("flwr.clientapp").ClientApp()

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        user = int(context.node_config["partition-id"])
        config = msg.content["config"]
        round_index = int(config["server-round"]) - 1
        if user not in [int(u) for u in config["sampled"]]:
            reply = RecordDict({"metrics": MetricRecord({"participated": 0, "user": user})})
            return Message(content=reply, reply_to=msg)
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        w = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays])
        rows = users[user] if cap is None else users[user][:cap]
        width = padded_size(len(rows), local.batch_size)
        idx = np.zeros(width, np.int64)
        idx[: len(rows)] = rows
        mask = np.zeros(width, bool)
        mask[: len(rows)] = True
        base = jax.random.wrap_key_data(jnp.asarray(shuffle_seed))
        key = jax.random.fold_in(jax.random.fold_in(base, round_index), user)
        x, y = x_all[idx], y_all[idx]
        update = compiled.setdefault("update", jax.jit(local.client_update))
        pseudo = update(w, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask), key)
        leaves = [np.asarray(a) for a in jax.tree.leaves(pseudo)]
        reply = RecordDict(
            {
                "arrays": ArrayRecord(leaves),
                "metrics": MetricRecord({"participated": 1, "user": user}),
            }
        )
        return Message(content=reply, reply_to=msg)

    return app


def strategy(sim: FederatedSimulation, params: PyTree) -> Any:
    """A Flower ``Strategy`` whose server is `sim`: same sampler, accountant and aggregation.

    Args:
      sim: the server state (mode :class:`CentralDP` or :class:`NotPrivateFedAvg`;
        local DP is not offered through Flower yet). Call nothing on it before.
      params: the initial parameters (``sim.init`` is called on them).

    Returns:
      A ``flwr.serverapp.strategy.Strategy``; after a run, its ``epsilons``
      list holds the user-level epsilon after each round and ``params`` the
      final parameters.

    Raises:
      ImportError: if flwr is not installed.
      ValueError: for a local-DP simulation.

    **Privacy:** the round is recorded (and refused beyond the budget) in
    ``configure_train``, before any client computes; one Gaussian draw per
    round on the sum of the clipped updates, as in the simulation.
    """
    app_types = _flwr("flwr.app")
    ArrayRecord, ConfigRecord = app_types.ArrayRecord, app_types.ConfigRecord
    Message, MetricRecord, RecordDict = (
        app_types.Message,
        app_types.MetricRecord,
        app_types.RecordDict,
    )
    Strategy = _flwr("flwr.serverapp.strategy").Strategy

    if not isinstance(sim.mode, (CentralDP, NotPrivateFedAvg)):
        raise ValueError(
            f"mode={sim.mode!r}: the Flower adapter runs CentralDP or NotPrivateFedAvg; run "
            "LocalDP with FederatedSimulation (its noise belongs on the device)."
        )
    treedef = jax.tree.structure(params)
    template = jax.tree.leaves(params)

    class DPFedAvgStrategy(Strategy):
        """DP-FedAvg with dpjax's sampler, aggregation and accountant."""

        def __init__(self) -> None:
            self.params = sim.init(params)
            self.epsilons: list[float] = []
            self._round: tuple[np.ndarray, np.ndarray] | None = None

        def summary(self) -> None:
            """Prints nothing (the account is in ``epsilons``)."""

        def configure_train(self, server_round, arrays, config, grid):
            """Samples the users, records the round, sends the model to every node."""
            ids, mask = sim.sample_clients()  # recorded BEFORE the release
            self._round = (ids, mask)
            sampled = sorted({int(u) for u in ids[mask]})
            content = ConfigRecord({"server-round": server_round, "sampled": sampled or [-1]})
            record = RecordDict({"arrays": arrays, "config": content})
            deadline = time.monotonic() + NODE_TIMEOUT_S  # every user's node must be connected
            while len(list(grid.get_node_ids())) < sim.data.num_users:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"only {len(list(grid.get_node_ids()))} of {sim.data.num_users} nodes "
                        f"connected within {NODE_TIMEOUT_S} s; start one SuperNode per user."
                    )
                time.sleep(0.2)
            return [
                Message(content=record, message_type="train", dst_node_id=node)
                for node in grid.get_node_ids()
            ]

        def aggregate_train(self, server_round, replies):
            """Stacks the sampled users' updates like the simulation and runs the server step."""
            assert self._round is not None
            ids, mask = self._round
            got: dict[int, list[np.ndarray]] = {}
            for reply in replies:
                if reply.has_error():
                    raise RuntimeError(f"a client failed: {reply.error.reason}")
                metrics = reply.content["metrics"]
                if int(metrics["participated"]):
                    got[int(metrics["user"])] = reply.content["arrays"].to_numpy_ndarrays()
            missing = sorted({int(u) for u in ids[mask]} - set(got))
            if missing:
                raise RuntimeError(
                    f"round {server_round}: sampled users {missing} sent no update (replies from "
                    f"users {sorted(got)}); a sampled client must reply in the round."
                )
            rows = []
            for leaf_index, leaf in enumerate(template):
                stacked = np.zeros((len(ids), *np.shape(leaf)), np.float32)
                for k, (u, real) in enumerate(zip(ids, mask, strict=True)):
                    if real:
                        stacked[k] = got[int(u)][leaf_index]
                rows.append(jnp.asarray(stacked))
            pseudo = jax.tree.unflatten(treedef, rows)
            self.params = sim.server_step(self.params, pseudo, mask)
            self.epsilons.append(sim.epsilon())
            leaves = [np.asarray(a) for a in jax.tree.leaves(self.params)]
            return ArrayRecord(leaves), MetricRecord({"epsilon": float(min(sim.epsilon(), 1e300))})

        def configure_evaluate(self, server_round, arrays, config, grid):
            """No federated evaluation (evaluate the released model centrally)."""
            return []

        def aggregate_evaluate(self, server_round, replies):
            """Nothing to aggregate."""
            return None

    return DPFedAvgStrategy()


def run_simulation(
    sim: FederatedSimulation,
    params: PyTree,
    rounds: int,
    backend_config: dict[str, Any] | None = None,
) -> tuple[PyTree, Any]:
    """Runs `rounds` rounds in Flower's Simulation Engine, one SuperNode per user.

    Args:
      sim: a fresh :class:`FederatedSimulation` (its mode, sampler, seeds).
      params: the initial parameters.
      rounds: the number of rounds.
      backend_config: Flower's backend configuration; default one Ray actor
        (``{"client_resources": {"num_cpus": 2}, "init_args": {"num_cpus": 2}}``:
        each actor compiles the client update once, so fewer actors start faster
        on a small machine).

    Returns:
      `(params, strategy)`: the final parameters and the strategy (its
      ``epsilons`` are the user-level epsilon after each round).

    Raises:
      ImportError: if flwr (with its simulation extra) is not installed.
    """
    array_record = _flwr("flwr.app").ArrayRecord
    flwr_run = _flwr("flwr.simulation").run_simulation
    strat = strategy(sim, params)
    server = _flwr("flwr.serverapp").ServerApp()

    @server.main()
    def main(grid: Any, context: Any) -> None:
        del context
        initial = array_record([np.asarray(a) for a in jax.tree.leaves(params)])
        strat.start(grid=grid, initial_arrays=initial, num_rounds=rounds)

    flwr_run(
        server_app=server,
        client_app=client_app(sim, params),
        num_supernodes=sim.data.num_users,
        backend_config=backend_config
        or {
            "client_resources": {"num_cpus": 2, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2},
        },
    )
    return strat.params, strat
