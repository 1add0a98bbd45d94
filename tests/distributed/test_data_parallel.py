"""Data-parallel DP-SGD on 4 CPU devices: same result as 1 device, one noise draw, padding is 0.

JAX fixes the device count when it starts, so the 4-device checks run in a subprocess
(`_four_devices.py` with `XLA_FLAGS=--xla_force_host_platform_device_count=4`) that prints
JSON; the tests below assert on it. The argument checks run here, on this process's devices.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dpjax
import dpjax.distributed as dd

SCRIPT = pathlib.Path(__file__).with_name("_four_devices.py")
ATOL = 1e-5
PATHS = ["vmap_auto", "vmap_shard_map", "scan_auto", "ghost_auto", "ghost_shard_map"]


@pytest.fixture(scope="module")
def four():
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = dict(os.environ, XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=4"]))
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    return result


@pytest.mark.parametrize("path", PATHS)
def test_one_and_four_devices_agree(four, path):
    r = four["equivalence"][path]
    assert r["batch_sharded"] and r["params_replicated"]
    assert r["sum_diff"] <= ATOL * max(1.0, r["sum_scale"]), r
    assert r["stats_equal"] and r["num_clipped"] > 0 and r["sensitivity"] == 1.0
    assert r["moved"] > 1e-2  # the step did something
    assert max(r["params_diff"]) <= ATOL, r  # same key: same noise, same update, two steps


def test_dp_sgd_chain_agrees_on_four_devices(four):
    r = four["equivalence"]["dp_sgd_chain"]
    assert r["moved"] > 1e-2 and max(r["params_diff"]) <= ATOL, r
    assert r["hlo"]["all-gather"] == 0 and r["hlo"]["all-reduce"] >= 1, r


@pytest.mark.parametrize("path", ["vmap_auto", "vmap_shard_map", "ghost_auto", "ghost_shard_map"])
def test_per_example_work_is_partitioned(four, path):
    # Each device clips its own rows and the sums are all-reduced; nothing gathers the batch.
    hlo = four["equivalence"][path]["hlo"]
    assert hlo["all-gather"] == 0 and hlo["all-reduce"] >= 1, hlo


def test_plain_jit_gathers_the_batch_for_scan_accumulation(four):
    # Documents why data_parallel exists: lax.scan over microbatches makes XLA all-gather
    # the sharded batch (correct, but every device does all the work).
    assert four["equivalence"]["scan_auto"]["hlo"]["all-gather"] >= 1


@pytest.mark.parametrize("path", ["auto", "shard_map"])
def test_noise_is_one_global_draw(four, path):
    r = four["noise"][path]
    # std sigma * C on the global sum; per-device noise summed would give 2 sigma C on 4 devices.
    assert abs(r["std_ratio"] - 1.0) < 0.03, r
    assert abs(r["std_ratio_step2"] - 1.0) < 0.03, r
    assert abs(r["mean"]) < 0.03, r
    # The same key on 1 and on 4 devices gives the same draw (not one per device).
    assert r["one_vs_four"] <= ATOL and r["one_vs_four_step2"] <= ATOL, r
    # No repeated or correlated slices (per-device keys that repeat would make them equal).
    assert not r["slices_equal"] and r["max_slice_corr"] < 0.05, r
    # Fresh noise every step.
    assert not r["steps_equal"] and abs(r["step_corr"]) < 0.05, r


@pytest.mark.parametrize("path", ["vmap", "ghost"])
def test_an_all_padding_device_contributes_zero(four, path):
    r = four["padding"][path]
    # The padded shard alone (NaN and 1e30 rows, mask False) sums to exactly 0.
    assert r["shard_alone_zero"] and r["shard_alone_stats"] == [0, 0], r
    # The 4-device sum equals the sum of the real rows alone.
    for key in ("auto_diff", "shard_map_diff", "shard_batch_diff"):
        assert r[key] <= ATOL, (key, r)
    assert r["stats_equal"] and r["finite"], r
    # shard_batch padded 24 real rows to 32: the last device holds only masked rows.
    assert r["shard_batch_rows"] == 32 and r["shard_batch_last_device_real"] == 0, r


# ------------------------------------------------------------------ this process's devices


def test_shard_batch_pads_with_masked_copies_of_row_0():
    mesh = dd.data_mesh()
    d = mesh.shape["data"]
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    (bx, by), mask = dd.shard_batch((x, np.arange(5)), np.ones(5, bool), mesh, microbatch_size=4)
    rows = -(-5 // (4 * d)) * 4 * d
    assert bx.shape == (rows, 2) and by.shape == (rows,) and mask.shape == (rows,)
    assert int(mask.sum()) == 5 and not bool(mask[5:].any())
    np.testing.assert_array_equal(np.asarray(bx[5:]), np.repeat(x[:1], rows - 5, axis=0))


def test_replicate_and_data_parallel_on_this_process():
    mesh = dd.data_mesh()
    grads = dpjax.per_example_grads(lambda w, x: jnp.sum(w * x))
    clipper = dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=2)
    x, mask = dd.shard_batch(jnp.ones((3, 4)), jnp.ones(3, bool), mesh, microbatch_size=2)
    w = dd.replicate(jnp.zeros(4), mesh)
    assert w.sharding.is_fully_replicated
    got = jax.jit(dd.data_parallel(clipper, mesh))(w, x, mask)
    want = jax.jit(clipper)(jnp.zeros(4), jnp.ones((4, 4)), jnp.arange(4) < 3)
    np.testing.assert_allclose(np.asarray(got.sum), np.asarray(want.sum), atol=1e-6)
    assert got.sensitivity == 1.0 and int(got.stats.num_clipped) == 3


def test_bad_arguments_are_refused():
    mesh = dd.data_mesh()
    with pytest.raises(ValueError, match="devices"):
        dd.data_mesh([])
    with pytest.raises(ValueError, match="axis"):
        dd.data_mesh(axis="")
    with pytest.raises(ValueError, match="not an axis"):
        dd.shard_batch(jnp.ones((2, 1)), jnp.ones(2, bool), mesh, axis="model")
    with pytest.raises(ValueError, match="mask has shape"):
        dd.shard_batch(jnp.ones((2, 1)), jnp.ones(3, bool), mesh)
    with pytest.raises(ValueError, match="leading batch axis"):
        dd.shard_batch((jnp.ones((2, 1)), jnp.ones((3, 1))), jnp.ones(2, bool), mesh)
    with pytest.raises(ValueError, match="microbatch_size"):
        dd.shard_batch(jnp.ones((2, 1)), jnp.ones(2, bool), mesh, microbatch_size=0)
    with pytest.raises(ValueError, match="Mesh"):
        dd.replicate(jnp.ones(2), "mesh")
    with pytest.raises(ValueError, match="callable"):
        dd.data_parallel(None, mesh)  # type: ignore[arg-type]
    grads = dpjax.per_example_grads(lambda w, x: jnp.sum(w * x))
    clipper = dd.data_parallel(
        dpjax.accumulate_clipped_grads(grads, l2_norm=1.0, microbatch_size=1), mesh
    )
    with pytest.raises(ValueError, match="mask=None"):
        clipper(jnp.zeros(2), jnp.ones((2, 2)), None)


def test_a_public_support_and_scale_pass_through_four_devices(four):
    # A top-k support and a clip-norm scale are public (from the replicated state): the
    # 4-device step equals the 1-device one, noise lands only on the support.
    r = four["support_and_scale"]
    assert r["support_kept"] and r["scale"] == 0.5, r
    assert r["sum_diff"] <= ATOL and max(r["params_diff"]) <= ATOL, r
    assert r["moved"] > 1e-3 and r["moved_off_support"] == 0.0, r


@pytest.mark.parametrize("path", ["vmap", "ghost"])
def test_fsdp_steps_equal_unsharded_steps(four, path):
    # Parameters and optimizer state split over the 4 devices (dd.shard_params): two Adam
    # steps with the same key equal the unsharded ones, and the parameters stay split.
    r = four["fsdp"][path]
    assert max(r["params_diff"]) <= ATOL and r["moved"] > 1e-2, r
    assert r["kernel_split"] and r["bias_replicated"] and r["state_leaves_split"] >= 2, r


def test_fsdp_noise_is_one_global_draw_generated_piecewise(four):
    r = four["fsdp"]["noise"]
    # The same numbers as one device's draw with the same key, with std sigma * C ...
    assert r["fsdp_vs_one"] == 0.0 and abs(r["std_ratio"] - 1.0) < 0.03, r
    assert four["fsdp"]["noise_split"]
    # ... but each device generates only its quarter of the random words; replicated, every
    # device generates all of them.
    words = r["largest_random_words"]
    assert words["replicated"] >= r["coordinates"] and words["one"] >= r["coordinates"], words
    assert words["fsdp"] <= r["coordinates"] // 4 + 64, words


def test_shard_params_places_large_float_leaves_only():
    mesh = dd.data_mesh()
    d = mesh.shape["data"]
    tree = {
        "w": jnp.zeros((3, 4 * d)),
        "small": jnp.zeros(d),
        "count": jnp.zeros((4 * d,), jnp.int32),
        "key": jax.random.key(0),
    }
    placed = dd.shard_params(tree, mesh, min_size=8)
    assert placed["w"].shape == (3, 4 * d) and tuple(placed["w"].sharding.spec) == (None, "data")
    assert placed["count"].sharding.is_fully_replicated
    assert placed["key"].sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(placed["w"]), np.zeros((3, 4 * d)))
    with pytest.raises(ValueError, match="min_size"):
        dd.shard_params(tree, mesh, min_size=-1)
    with pytest.raises(ValueError, match="not an axis"):
        dd.shard_params(tree, mesh, axis="model")
