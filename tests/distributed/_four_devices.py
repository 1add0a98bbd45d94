"""Data-parallel checks on 4 CPU devices; prints one JSON object (run by test_data_parallel.py).

Run with `XLA_FLAGS=--xla_force_host_platform_device_count=4`: JAX fixes the device count
when it starts, so the test runs this file in a subprocess. The 1-device reference is the
plain clipper and step, unsharded, in the same process.
"""

import json
import re
import sys

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
import dpjax.distributed as dd
import dpjax.ghost

jax.config.update("jax_numpy_rank_promotion", "raise")

C, SIGMA, LR = 1.0, 1.0, 0.5
B, D, K = 32, 8, 3
MICRO = 4  # rows per microbatch on each device: 8 rows per device = 2 microbatches (lax.scan)


def per_example_loss(w, example):
    x, y = example
    return optax.softmax_cross_entropy_with_integer_labels(x @ w["kernel"] + w["bias"], y)


LAYER = dpjax.ghost.GhostLinear(D, K, rngs=nnx.Rngs(0))
GRAPHDEF, GHOST_PARAMS = nnx.split(LAYER)


def ghost_losses(params, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(GRAPHDEF, params)(x), y)


def vmap_clipper(microbatch_size):
    grads = dpjax.per_example_grads(per_example_loss)
    return dpjax.accumulate_clipped_grads(grads, l2_norm=C, microbatch_size=microbatch_size)


def ghost_clipper():
    return dpjax.ghost.ghost_clipped_grads(ghost_losses, l2_norm=C)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, D)).astype(np.float32) * 3.0  # most rows are clipped
    y = rng.integers(0, K, size=B).astype(np.int32)
    mask = np.ones(B, bool)
    mask[[3, 17, 30]] = False  # a few padded rows, on different devices
    return (x, y), mask


def vmap_params():
    rng = np.random.default_rng(1)
    return {
        "kernel": jnp.asarray(rng.normal(size=(D, K)), jnp.float32),
        "bias": jnp.zeros(K, jnp.float32),
    }


def tree_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(jnp.asarray(x) - jnp.asarray(y))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def collectives(compiled_text):
    names = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
    return {n: len(re.findall(rf"\b{n}(-start)?\(", compiled_text)) for n in names}


def run_steps(clipper, params, batch, mask, key, mesh=None, steps=2, lr=LR, n=float(B)):
    """Clipped sum at `params` and the parameters after `steps` private updates."""
    tx = optax.chain(dpjax.noisy_mean(SIGMA, n, key=key), optax.sgd(lr))
    state = tx.init(params)
    if mesh is not None:
        params, state = dd.replicate(params, mesh), dd.replicate(state, mesh)
    update = jax.jit(dpjax.private_update(clipper, tx))
    clipped = jax.jit(clipper)(params, batch, mask)
    hlo = collectives(update.lower(params, state, batch, mask).compile().as_text())
    history = []
    for _ in range(steps):
        params, state = update(params, state, batch, mask)
        history.append(params)
    return clipped, history, hlo


def equivalence(mesh):
    """1 device (unsharded, core only) against 4 devices (sharded), same key."""
    (x, y), mask = data()
    key = jax.random.key(7)
    out = {}
    cases = {
        # name: (clipper on 1 device, clipper on the mesh, params, rows per device microbatch)
        "vmap_auto": (vmap_clipper(B), vmap_clipper(B), vmap_params(), 1),
        "vmap_shard_map": (
            vmap_clipper(MICRO),
            dd.data_parallel(vmap_clipper(MICRO), mesh),
            vmap_params(),
            MICRO,
        ),
        "scan_auto": (vmap_clipper(MICRO), vmap_clipper(MICRO), vmap_params(), 1),
        "ghost_auto": (ghost_clipper(), ghost_clipper(), GHOST_PARAMS, 1),
        "ghost_shard_map": (
            ghost_clipper(),
            dd.data_parallel(ghost_clipper(), mesh),
            GHOST_PARAMS,
            1,
        ),
    }
    for name, (one, many, params, micro) in cases.items():
        ref_clipped, ref_hist, _ = run_steps(
            one, params, (jnp.asarray(x), jnp.asarray(y)), jnp.asarray(mask), key
        )
        batch, smask = dd.shard_batch((x, y), mask, mesh, microbatch_size=micro)
        assert batch[0].shape[0] == B
        clipped, hist, hlo = run_steps(many, params, batch, smask, key, mesh)
        out[name] = {
            "sum_diff": tree_diff(ref_clipped.sum, clipped.sum),
            "sum_scale": max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(ref_clipped.sum)),
            "stats_equal": [int(v) for v in ref_clipped.stats] == [int(v) for v in clipped.stats],
            "num_clipped": int(clipped.stats.num_clipped),
            "sensitivity": clipped.sensitivity,
            "params_diff": [tree_diff(a, b) for a, b in zip(ref_hist, hist, strict=True)],
            "moved": tree_diff(hist[0], params),
            "hlo": hlo,
            "batch_sharded": not batch[0].sharding.is_fully_replicated,
            "params_replicated": all(
                v.sharding.is_fully_replicated for v in jax.tree.leaves(hist[-1])
            ),
        }
    # dp_sgd's optax form: per-example gradients of the sharded batch, then the chain.
    tx = dpjax.dp_sgd(
        optax.sgd(LR), l2_norm=C, noise_multiplier=SIGMA, expected_batch_size=float(B), key=key
    )
    grads_fn = dpjax.per_example_grads(per_example_loss)

    @jax.jit
    def dp_sgd_step(params, state, batch, mask):
        updates, state = tx.update(grads_fn(params, batch), state, params, mask=mask)
        return optax.apply_updates(params, updates), state

    results = []
    for m in (None, mesh):
        params, state = vmap_params(), tx.init(vmap_params())
        batch, bmask = ((jnp.asarray(x), jnp.asarray(y)), jnp.asarray(mask))
        if m is not None:
            params, state = dd.replicate(params, m), dd.replicate(state, m)
            batch, bmask = dd.shard_batch((x, y), mask, m)
        hlo = collectives(dp_sgd_step.lower(params, state, batch, bmask).compile().as_text())
        hist = []
        for _ in range(2):
            params, state = dp_sgd_step(params, state, batch, bmask)
            hist.append(params)
        results.append(hist)
    out["dp_sgd_chain"] = {
        "params_diff": [tree_diff(a, b) for a, b in zip(*results, strict=True)],
        "moved": tree_diff(results[0][0], vmap_params()),
        "hlo": hlo,
    }
    return out


def noise(mesh):
    """Zero gradients, lr 1, n = 1: the update is minus the noise on the global sum."""
    d = 4 * 25_000
    std = SIGMA * 2.0  # C = 2
    zero_loss = lambda w, x: 0.0 * jnp.sum(w * x)  # noqa: E731 (gradient exactly 0)
    grads = dpjax.per_example_grads(zero_loss)
    x = np.ones((8, d), np.float32)
    mask = np.ones(8, bool)
    key = jax.random.key(11)
    out = {}
    for name, make in {
        "auto": lambda m: dpjax.accumulate_clipped_grads(grads, l2_norm=2.0, microbatch_size=8),
        "shard_map": lambda m: dd.data_parallel(
            dpjax.accumulate_clipped_grads(grads, l2_norm=2.0, microbatch_size=1), m
        ),
    }.items():
        runs = {}
        for label, m in (("one", dd.data_mesh(jax.devices()[:1])), ("four", mesh)):
            batch, bmask = dd.shard_batch(x, mask, m)
            clipper = make(m)
            tx = optax.chain(dpjax.noisy_mean(SIGMA, 1.0, key=key), optax.sgd(1.0))
            params, state = dd.replicate(jnp.zeros(d), m), dd.replicate(tx.init(jnp.zeros(d)), m)
            update = jax.jit(dpjax.private_update(clipper, tx))
            steps = []
            for _ in range(2):
                new, state = update(params, state, batch, bmask)
                steps.append(np.asarray(params - new))  # the noise on the sum (lr 1, n = 1)
            runs[label] = steps
        z1, z2 = runs["four"]
        slices = z1.reshape(4, -1)  # the parameter slices devices would hold if sharded
        corr = np.corrcoef(slices)
        out[name] = {
            "std_ratio": float(np.std(z1) / std),
            "std_ratio_step2": float(np.std(z2) / std),
            "mean": float(np.mean(z1) / std),
            "one_vs_four": float(np.max(np.abs(runs["one"][0] - z1))),
            "one_vs_four_step2": float(np.max(np.abs(runs["one"][1] - z2))),
            "max_slice_corr": float(np.max(np.abs(corr[~np.eye(4, dtype=bool)]))),
            "slices_equal": any(
                np.array_equal(slices[i], slices[j]) for i in range(4) for j in range(i + 1, 4)
            ),
            "step_corr": float(np.corrcoef(z1, z2)[0, 1]),
            "steps_equal": bool(np.array_equal(z1, z2)),
        }
    return out


def support_and_scale(mesh):
    """A clipper whose ClippedSum has a public support and a scale: 1 and 4 devices agree."""
    (x, y), mask = data()
    grads = dpjax.per_example_grads(per_example_loss)
    support = {"kernel": jnp.arange(D * K).reshape(D, K) % 3 == 0, "bias": jnp.array([1, 0, 1]) > 0}

    def clipper(params, batch, m):
        clipped = dpjax.clip_and_sum(grads(params, batch), C, m, support=support)
        return dpjax.ClippedSum(
            clipped.sum, clipped.stats, clipped.sensitivity, clipped.support, jnp.float32(0.5)
        )

    key = jax.random.key(3)
    ref_clipped, ref_hist, _ = run_steps(
        clipper, vmap_params(), (jnp.asarray(x), jnp.asarray(y)), jnp.asarray(mask), key
    )
    batch, smask = dd.shard_batch((x, y), mask, mesh)
    clipped, hist, _ = run_steps(
        dd.data_parallel(clipper, mesh), vmap_params(), batch, smask, key, mesh
    )
    off = {k: ~v for k, v in support.items()}
    moved_off = max(
        float(jnp.max(jnp.where(off[k], jnp.abs(hist[-1][k] - vmap_params()[k]), 0.0))) for k in off
    )
    return {
        "sum_diff": tree_diff(ref_clipped.sum, clipped.sum),
        "params_diff": [tree_diff(a, b) for a, b in zip(ref_hist, hist, strict=True)],
        "support_kept": all(bool(jnp.array_equal(clipped.support[k], support[k])) for k in support),
        "scale": float(clipped.scale),
        "moved": tree_diff(hist[0], vmap_params()),
        "moved_off_support": moved_off,
    }


def padding(mesh):
    """Device 3's shard is all padding (mask False, NaN and huge values): it contributes 0."""
    (x, y), _ = data()
    real = 24  # rows 0..23 real: devices 0-2; rows 24..31 on device 3 are padding
    xp = x.copy()
    xp[real:] = np.nan
    xp[real + 1] = 1e30
    mask = np.arange(B) < real
    out = {}
    for name, one, params in (
        ("vmap", vmap_clipper(MICRO), vmap_params()),
        ("ghost", ghost_clipper(), GHOST_PARAMS),
    ):
        ref = jax.jit(one)(
            params, (jnp.asarray(x[:real]), jnp.asarray(y[:real])), jnp.ones(real, bool)
        )
        shard_only = jax.jit(one)(
            params, (jnp.asarray(xp[real:]), jnp.asarray(y[real:])), jnp.zeros(B - real, bool)
        )
        batch, smask = dd.shard_batch((xp, y), mask, mesh, microbatch_size=MICRO)
        rep = dd.replicate(params, mesh)
        auto = jax.jit(one)(rep, batch, smask)
        wrapped = jax.jit(dd.data_parallel(one, mesh))(rep, batch, smask)
        # shard_batch's own padding: 24 real rows, microbatch 8 per device -> 32 rows.
        padded_batch, padded_mask = dd.shard_batch(
            (x[:real], y[:real]), np.ones(real, bool), mesh, microbatch_size=8
        )
        by_shard_batch = jax.jit(dd.data_parallel(one, mesh))(rep, padded_batch, padded_mask)
        out[name] = {
            "shard_alone_zero": all(bool(jnp.all(v == 0)) for v in jax.tree.leaves(shard_only.sum)),
            "shard_alone_stats": [int(v) for v in shard_only.stats],
            "auto_diff": tree_diff(ref.sum, auto.sum),
            "shard_map_diff": tree_diff(ref.sum, wrapped.sum),
            "shard_batch_diff": tree_diff(ref.sum, by_shard_batch.sum),
            "shard_batch_rows": int(padded_mask.shape[0]),
            "shard_batch_last_device_real": int(np.asarray(padded_mask)[24:].sum()),
            "stats_equal": [int(v) for v in ref.stats]
            == [int(v) for v in wrapped.stats]
            == [int(v) for v in by_shard_batch.stats],
            "finite": all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(wrapped.sum)),
        }
    return out


def largest_random_words(compiled_text):
    """The most u32 words one threefry loop of a compiled (per-device) program generates."""
    loops = [line for line in compiled_text.splitlines() if " while(" in line]
    return max((int(n) for line in loops for n in re.findall(r"u32\[(\d+)\]", line)), default=0)


def fsdp(mesh):
    """FSDP placement (dd.shard_params): 2 steps equal the unsharded ones; noise drawn piecewise."""
    (x, y), mask = data()
    key = jax.random.key(7)
    out = {}
    for name, clipper, params in (
        ("vmap", vmap_clipper(B), vmap_params()),
        ("ghost", ghost_clipper(), GHOST_PARAMS),
    ):
        tx = optax.chain(dpjax.noisy_mean(SIGMA, float(B), key=key), optax.adam(0.1))
        update = jax.jit(dpjax.private_update(clipper, tx))
        p1, s1 = params, tx.init(params)
        b1, m1 = (jnp.asarray(x), jnp.asarray(y)), jnp.asarray(mask)
        p4, s4 = dd.shard_params((params, tx.init(params)), mesh, min_size=0)
        b4, m4 = dd.shard_batch((x, y), mask, mesh)
        diffs = []
        for _ in range(2):
            p1, s1 = update(p1, s1, b1, m1)
            p4, s4 = update(p4, s4, b4, m4)
            diffs.append(tree_diff(p1, p4))
        out[name] = {
            "params_diff": diffs,
            "moved": tree_diff(p1, params),
            "kernel_split": not jax.tree.leaves(p4)[-1].sharding.is_fully_replicated
            if name == "vmap"
            else not p4["kernel"].value.sharding.is_fully_replicated,
            "bias_replicated": jax.tree.leaves(p4)[0].sharding.is_fully_replicated,
            "state_leaves_split": sum(
                not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(s4)
            ),
        }
    # The noise on a split parameter: zero gradients, lr 1, n = 1 (the update is -noise).
    d = 4 * 25_000
    zero_loss = lambda w, x: 0.0 * jnp.sum(w * x)  # noqa: E731 (gradient exactly 0)
    clipper = dpjax.accumulate_clipped_grads(
        dpjax.per_example_grads(zero_loss), l2_norm=2.0, microbatch_size=8
    )
    tx = optax.chain(dpjax.noisy_mean(SIGMA, 1.0, key=jax.random.key(11)), optax.sgd(1.0))
    update = jax.jit(dpjax.private_update(clipper, tx))
    xs, ms = np.ones((8, d), np.float32), np.ones(8, bool)
    draws, words = {}, {}
    for label, place in (
        ("one", lambda t: t),
        ("replicated", lambda t: dd.replicate(t, mesh)),
        ("fsdp", lambda t: dd.shard_params(t, mesh)),
    ):
        params, state = place((jnp.zeros(d), tx.init(jnp.zeros(d))))
        batch, bmask = (
            (jnp.asarray(xs), jnp.asarray(ms)) if label == "one" else dd.shard_batch(xs, ms, mesh)
        )
        words[label] = largest_random_words(
            update.lower(params, state, batch, bmask).compile().as_text()
        )
        new, _ = update(params, state, batch, bmask)
        draws[label] = np.asarray(params - new)
        if label == "fsdp":
            out["noise_split"] = not new.sharding.is_fully_replicated
    out["noise"] = {
        "coordinates": d,
        "fsdp_vs_one": float(np.max(np.abs(draws["fsdp"] - draws["one"]))),
        "std_ratio": float(np.std(draws["fsdp"]) / (SIGMA * 2.0)),
        "largest_random_words": words,
    }
    return out


def main():
    devices = jax.devices()
    if len(devices) < 4:
        sys.exit(
            f"need 4 devices, got {len(devices)}: set XLA_FLAGS="
            "--xla_force_host_platform_device_count=4"
        )
    mesh = dd.data_mesh(devices[:4])
    result = {
        "devices": len(devices),
        "equivalence": equivalence(mesh),
        "noise": noise(mesh),
        "padding": padding(mesh),
        "support_and_scale": support_and_scale(mesh),
        "fsdp": fsdp(mesh),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
