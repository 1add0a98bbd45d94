"""The Flower adapter: 3 rounds x 10 clients in Flower's Simulation Engine equal the JAX simulation."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("flwr") is None or importlib.util.find_spec("ray") is None,
    reason="Flower is an optional extra: pip install 'dpjax[federated]' (flwr[simulation], "
    "which brings Ray) to run the adapter's test",
)


def test_flower_simulation_runs_3_rounds_of_10_clients_and_equals_the_jax_simulation():
    # Flower (with Ray) runs in a child process: its threads and pytest's warning filters
    # do not mix. The JAX simulation runs here, with the same seeds.
    sys.path.insert(0, str(HERE))
    from _flower_run import PARAMS, make_sim

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parents[1]), str(HERE)]))
    done = subprocess.run(
        [sys.executable, str(HERE / "_flower_run.py"), "3"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    flower = json.loads(lines[-1][len("RESULT ") :])

    sim = make_sim()
    w = sim.init(PARAMS)
    epsilons = []
    for _ in range(3):
        w, result = sim.round(w)
        epsilons.append(result.epsilon)
    np.testing.assert_allclose(flower["epsilons"], epsilons, rtol=1e-12)
    for a, b in zip(flower["leaves"], jax.tree.leaves(w), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # Under a minute on the CI machine. Ray's start and each node's JAX import dominate, so on a
    # machine loaded beyond its cores (e.g. shared by many jobs) only the result is checked.
    if os.getloadavg()[0] <= (os.cpu_count() or 1):
        assert flower["seconds"] < 60, f"Flower took {flower['seconds']:.0f} s for 3 rounds"
