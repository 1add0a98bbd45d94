"""Runs the Flower test case in its own process (Ray and pytest's warning filters do not mix)."""

import json
import sys
import time
import warnings

warnings.simplefilter("ignore")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import dpjax  # noqa: E402
from dpjax.federated import (  # noqa: E402
    CentralDP,
    FederatedSimulation,
    LocalSGD,
    synthetic_federated_data,
)


def loss(w, x, y):
    """Squared error of one example."""
    return (x @ w["w"] + w["b"] - y) ** 2


def make_sim():
    """The case both engines run: 10 users, 5 expected per round, central DP."""
    fed = synthetic_federated_data(num_users=10, dim=4, seed=0)
    return FederatedSimulation(
        fed,
        LocalSGD(loss, 0.05, epochs=2, batch_size=4),
        CentralDP(0.5, 1.0),
        optax.sgd(1.0),
        clients_per_round=5,
        key=dpjax.key_from_seed(11),
        seed=3,
        delta=1e-3,
    )


PARAMS = {"w": jnp.zeros(4), "b": jnp.zeros(())}

if __name__ == "__main__":
    from dpjax.federated import flower

    start = time.perf_counter()  # Ray's start, the nodes' JAX import and compile included
    params, strat = flower.run_simulation(make_sim(), PARAMS, rounds=int(sys.argv[1]))
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": time.perf_counter() - start,
                "epsilons": strat.epsilons,
                "leaves": [jax.device_get(a).tolist() for a in jax.tree.leaves(params)],
            }
        ),
        flush=True,
    )
