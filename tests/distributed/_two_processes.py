"""Two DP-SGD steps on one global Poisson batch per step; prints the parameters as JSON.

Run by test_multihost.py, once per process of a two-process run on localhost:

    python -m dpjax.distributed -n 2 --devices-per-process 2 -- python _two_processes.py OUT

(`dpjax.distributed.launch_local`), and once as one process with the same DPJAX_*_SEED
variables, as the reference. Process i writes its JSON to OUT.i. Every process uses the same
sampler seed (so the same indices), the same noise key, and loads only its own rows of each
batch (`dpjax.distributed.shard_global_batch`); the accountant runs on process 0 only. After the
first step the run checkpoints (process 0 writes once, with the accountant) and every process
restores from that file before the second step.
"""

import json
import os
import pathlib
import sys

import jax

import dpjax.distributed as dd

# Before anything touches a device: join the run the DPJAX_* variables describe (Gloo
# collectives on CPU), or run alone. A failure here is reported as JSON so that the test can tell
# "no multi-process CPU runtime" (skipped, with the error) from a wrong result (failed).
OUT = pathlib.Path(sys.argv[1])
try:
    RUN = dd.from_environment()
    jax.devices()
except Exception as e:  # noqa: BLE001
    ID = os.environ.get("DPJAX_PROCESS_ID", "0")
    OUT.with_suffix(f".{ID}").write_text(json.dumps({"setup_error": f"{type(e).__name__}: {e}"}))
    sys.exit(3)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import dpjax  # noqa: E402

N, D, K = 48, 6, 3  # fixed public synthetic data (a test, not a release)
BATCH, STEPS, MICRO = 16, 2, 2
C, SIGMA, LR, DELTA = 1.0, 1.0, 0.5, 1e-5
SEED, KEY = RUN.sampler_seed, RUN.noise_seed  # the same on every process (the launcher's)
CKPT = OUT.with_suffix(".ckpt.npz")  # one file for the whole run, on the shared file system


def per_example_loss(w, example):
    x, y = example
    return optax.softmax_cross_entropy_with_integer_labels(x @ w["kernel"] + w["bias"], y)


def _host(leaf):
    """This process's copy of a replicated leaf, as NumPy (a key as its key data)."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf.addressable_data(0))


def main():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, D)) * 3.0).astype(np.float32)
    y = rng.integers(0, K, size=N).astype(np.int32)
    loaded = []  # the indices this process loaded, to show it holds only its rows

    def load(indices):
        loaded.extend(int(i) for i in indices)
        return x[indices], y[indices]

    mesh = dd.data_mesh()  # every process's devices
    grads = dpjax.per_example_grads(per_example_loss)
    clipper = dd.data_parallel(
        dpjax.accumulate_clipped_grads(grads, l2_norm=C, microbatch_size=MICRO), mesh
    )
    tx = optax.chain(dpjax.noisy_mean(SIGMA, BATCH, key=dpjax.key_from_seed(KEY)), optax.sgd(LR))
    init = {
        "kernel": np.random.default_rng(1).normal(size=(D, K)).astype(np.float32),
        "bias": np.zeros(K, np.float32),
    }
    params = jax.tree.map(jnp.asarray, init)
    state = dd.replicate_across_processes(tx.init(params), mesh)
    params = dd.replicate_across_processes(params, mesh)
    update = jax.jit(dpjax.private_update(clipper, tx))
    # microbatch_size=1: shard_global_batch pads to the device count (masked rows).
    sampler = dpjax.PoissonSampler(N, expected_batch_size=BATCH, seed=SEED, microbatch_size=1)
    tracker = None
    if jax.process_index() == 0:  # the accountant runs once
        tracker = dpjax.PrivacyTracker(target_epsilon=50.0, delta=DELTA, sampling_rate=BATCH / N)
    sizes, real, rows = [], [], []
    written, restored, resumed_steps = [], [], []
    for t in range(STEPS):
        # Every process agrees on the step before it is taken.
        multihost_utils.assert_equal(np.int64(t), "step counter")
        if tracker is not None:
            tracker.record_step(SIGMA)
        sample = sampler.sample(t)
        batch, mask = dd.shard_global_batch(sample, load, mesh, microbatch_size=MICRO)
        sizes.append(int(mask.shape[0]))
        real.append(sample.size)
        rows.append(dd.process_rows(int(mask.shape[0]), mesh))
        params, state = update(params, state, batch, mask)
        if t == 0:  # a checkpoint mid-run: written once, restored on every process
            before = jax.tree.map(_host, (params, state))
            dd.save_checkpoint_once(CKPT, (params, state), {"step": t + 1}, tracker=tracker)
            written.append(os.path.exists(CKPT))
            (params, state), meta, tracker = dd.restore_checkpoint(CKPT, (params, state), mesh)
            after = jax.tree.map(_host, (params, state))
            same = jax.tree.map(np.array_equal, before, after)
            restored.append(bool(all(jax.tree.leaves(same))) and meta == {"step": 1})
            resumed_steps.append(None if tracker is None else tracker.steps)
    local = {k: np.asarray(v.addressable_data(0)) for k, v in params.items()}
    out = {
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "replicated": all(v.sharding.is_fully_replicated for v in params.values()),
        "padded_sizes": sizes,
        "sizes": real,
        "moved": max(float(np.max(np.abs(local[k] - init[k]))) for k in init),
        "rows": [[r.start, r.stop] for r in rows],
        "loaded": len(loaded),
        "epsilon": None if tracker is None else tracker.epsilon_spent(),
        "params": {k: v.astype(float).tolist() for k, v in local.items()},
        "checkpoint_written": written,
        "checkpoint_restored_exactly": restored,
        "resumed_steps": resumed_steps,
    }
    OUT.with_suffix(f".{jax.process_index()}").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
