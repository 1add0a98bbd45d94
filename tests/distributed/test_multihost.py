"""Two processes on localhost (Gloo CPU collectives) train exactly as one process does.

`_two_processes.py` runs two DP-SGD steps, once as a single process (1 CPU device) and once
as two processes joined by `dpjax.distributed.initialize` (2 CPU devices each, a mesh of 4),
each loading only its rows of the same global Poisson batch. Both print their parameters as
JSON; the processes must agree exactly, and with the single process to fp tolerance. If this
jaxlib cannot run a multi-process CPU backend (no Gloo), the test is skipped with the error.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import dpjax
import dpjax.distributed as dd

SCRIPT = pathlib.Path(__file__).with_name("_two_processes.py")
TIMEOUT_S = 120
ATOL = 1e-5


SEEDS = (20240611, 7)  # the shared "secret" sampler seed and noise seed of this test


def _env(devices):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")


def _results(out, n):
    files = [out.with_suffix(f".{i}") for i in range(n)]
    return [json.loads(f.read_text()) if f.exists() else None for f in files]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("multihost")
    single_out = folder / "single"
    env = _env(1) | {"DPJAX_SAMPLER_SEED": str(SEEDS[0]), "DPJAX_NOISE_SEED": str(SEEDS[1])}
    single = subprocess.run(
        [sys.executable, str(SCRIPT), str(single_out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    for attempt in range(2):  # a second try only if the setup failed (e.g. the port was taken)
        out = folder / f"two{attempt}"
        codes = dd.launch_local(
            [sys.executable, str(SCRIPT), str(out)],
            2,
            seeds=SEEDS,
            devices_per_process=2,
            environment={"JAX_PLATFORMS": "cpu"},
            timeout=TIMEOUT_S,
        )
        two = _results(out, 2)
        errors = [r["setup_error"] for r in two if r and "setup_error" in r]
        if not errors:
            break
        if any("gloo" in e.lower() or "collective" in e.lower() for e in errors):
            pytest.skip(f"no multi-process CPU collectives in this jaxlib: {errors[0]}")
        if attempt == 1:
            pytest.fail(f"jax.distributed.initialize failed twice: {errors}")
    assert codes == [0, 0] and all(r is not None for r in two), (codes, two)
    return _results(single_out, 1)[0], two


def test_two_processes_share_one_global_run(runs):
    single, (p0, p1) = runs
    assert (p0["process"], p1["process"]) == (0, 1)
    for p in (p0, p1):
        assert p["processes"] == 2 and p["devices"] == 4 and p["local_devices"] == 2, p
        assert p["replicated"]
    assert single["processes"] == 1 and single["devices"] == 1
    # The same seed gives the same global batches on both processes (and on one process).
    assert p0["sizes"] == p1["sizes"] == single["sizes"]
    assert p0["padded_sizes"] == p1["padded_sizes"]
    assert all(s % 4 == 0 for s in p0["padded_sizes"])
    # Each process holds only its half of every (padded) batch, and the halves tile it.
    for t, size in enumerate(p0["padded_sizes"]):
        assert p0["rows"][t] == [0, size // 2] and p1["rows"][t] == [size // 2, size]
    assert p0["loaded"] == p1["loaded"] == sum(p0["padded_sizes"]) // 2
    # The accountant ran once, on process 0, with the same result as one process.
    assert p1["epsilon"] is None and p0["epsilon"] == single["epsilon"] > 0


def test_checkpoint_is_written_once_and_restored_on_every_process(runs):
    single, (p0, p1) = runs
    # Process 0 wrote before the barrier; process 1 found the file complete after it.
    assert p0["checkpoint_written"] == p1["checkpoint_written"] == [True]
    assert p0["checkpoint_restored_exactly"] == p1["checkpoint_restored_exactly"] == [True]
    # The account resumed on process 0 only, with the step already taken (never reset).
    assert p0["resumed_steps"] == [1] and p1["resumed_steps"] == [None]
    assert single["resumed_steps"] == [1]


def test_parameters_agree_exactly_across_processes_and_with_one_process(runs):
    single, (p0, p1) = runs
    assert p0["params"] == p1["params"]  # bitwise: one replicated computation
    assert single["moved"] > 1e-2  # two noisy steps did move the parameters
    for name, want in single["params"].items():
        np.testing.assert_allclose(np.asarray(p0["params"][name]), want, atol=ATOL, rtol=0)


# ------------------------------------------------------------------ this process, no runtime


def test_initialize_refuses_bad_arguments():
    with pytest.raises(ValueError, match="coordinator_address"):
        dd.initialize("localhost", 2, 0)
    with pytest.raises(ValueError, match="coordinator_address"):
        dd.initialize("localhost:99999", 2, 0)
    with pytest.raises(ValueError, match="num_processes"):
        dd.initialize("localhost:1234", 0, 0)
    with pytest.raises(ValueError, match="process_id"):
        dd.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="process_id"):
        dd.initialize("localhost:1234", 2, -1)
    with pytest.raises(ValueError, match="initialization_timeout"):
        dd.initialize("localhost:1234", 2, 0, initialization_timeout=0)


def test_global_batch_on_one_process_is_shard_batch():
    mesh = dd.data_mesh()
    d = mesh.shape["data"]
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    sample = dpjax.PoissonSampler(10, expected_batch_size=5, seed=4, microbatch_size=1).sample(0)
    (bx, by), mask = dd.shard_global_batch(sample, lambda i: (x[i], i), mesh, microbatch_size=2)
    size = -(-len(sample.indices) // (2 * d)) * 2 * d
    assert bx.shape == (size, 2) and mask.shape == (size,)
    assert int(mask.sum()) == sample.size
    np.testing.assert_array_equal(np.asarray(bx)[: sample.size], x[sample.indices[: sample.size]])
    assert dd.process_rows(size, mesh) == slice(0, size)
    with pytest.raises(ValueError, match="batch_size"):
        dd.process_rows(0, mesh)
    if d > 1:
        with pytest.raises(ValueError, match="multiple"):
            dd.process_rows(2 * d + 1, mesh)
    with pytest.raises(ValueError, match="dpjax.Batch"):
        dd.shard_global_batch((1, 2), lambda i: i, mesh)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rows"):
        dd.shard_global_batch(sample, lambda i: x, mesh)


def test_from_environment_reads_the_run_and_refuses_a_partial_one():
    alone = dd.from_environment({"DPJAX_SAMPLER_SEED": "5", "DPJAX_NOISE_SEED": "6"})
    assert (alone.num_processes, alone.process_id, alone.sampler_seed, alone.noise_seed) == (
        1,
        0,
        5,
        6,
    )
    assert "5" not in repr(alone) and "secret" in repr(alone)
    fresh = [dd.from_environment({}) for _ in range(2)]
    assert fresh[0].sampler_seed != fresh[1].sampler_seed  # secret draws, never a default
    base = {"DPJAX_COORDINATOR": "127.0.0.1:1", "DPJAX_NUM_PROCESSES": "2", "DPJAX_PROCESS_ID": "0"}
    with pytest.raises(ValueError, match="DPJAX_SAMPLER_SEED"):
        dd.from_environment(base | {"DPJAX_NOISE_SEED": "1"})
    with pytest.raises(ValueError, match="DPJAX_NOISE_SEED"):
        dd.from_environment(base | {"DPJAX_SAMPLER_SEED": "1", "DPJAX_NOISE_SEED": "x"})
    with pytest.raises(ValueError, match="DPJAX_PROCESS_ID"):
        dd.from_environment(base | {"DPJAX_PROCESS_ID": "-1"})


def test_launch_local_refuses_bad_arguments_and_stops_on_a_failure():
    with pytest.raises(ValueError, match="command"):
        dd.launch_local([], 2)
    with pytest.raises(ValueError, match="num_processes"):
        dd.launch_local([sys.executable, "-c", "pass"], 0)
    fail_one = "import os, sys, time; sys.exit(5) if os.environ['DPJAX_PROCESS_ID'] == '1' else time.sleep(60)"
    codes = dd.launch_local([sys.executable, "-c", fail_one], 2, timeout=30)
    assert codes[1] == 5 and codes[0] != 0  # process 0 was stopped, not waited for


def test_checkpoint_once_round_trip_on_one_process_resumes_the_account(tmp_path):
    mesh = dd.data_mesh()
    tree = dd.replicate_across_processes({"w": np.arange(4.0, dtype=np.float32)}, mesh)
    tracker = dpjax.PrivacyTracker(target_epsilon=3.0, delta=1e-5, sampling_rate=0.01)
    for _ in range(3):
        tracker.record_step(1.1)
    path = tmp_path / "ckpt.npz"
    with pytest.raises(ValueError, match="tracker="):
        dd.save_checkpoint_once(path, tree, {"tracker": {}}, tracker=tracker)
    assert not path.exists()
    dd.save_checkpoint_once(path, tree, {"step": 3}, tracker=tracker)
    restored, metadata, resumed = dd.restore_checkpoint(path, tree, mesh)
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.arange(4.0))
    assert metadata == {"step": 3}
    assert resumed is not None and resumed.steps == 3
    assert resumed.epsilon_spent() == tracker.epsilon_spent() > 0
    path.write_bytes(path.read_bytes()[:-20])  # truncated: refused, never half-read
    with pytest.raises(ValueError):
        dd.restore_checkpoint(path, tree, mesh)
