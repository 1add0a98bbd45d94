"""Time and peak memory per training step: dpjax DP-SGD against the alternatives.

Compares, in one run, for the standard DP CNN (28x28x1), an MLP and a tiny
transformer block:

* ``dpjax / non-private``: plain ``jax.grad`` of the mean loss + ``optax.adam``.
* ``dpjax / dp_sgd``: ``dpjax.per_example_grads`` -> ``dpjax.dp_sgd(optax.adam)``
  on the full batch of per-example gradients (the optax form).
* ``dpjax / microbatch``: ``dpjax.private_update`` with the clipper
  ``dpjax.accumulate_clipped_grads`` (microbatches of B/4 under ``lax.scan``) and
  ``optax.chain(dpjax.noisy_mean, optax.adam)``.
* ``dpjax / ghost``: ``dpjax.private_update`` with the clipper
  ``dpjax.ghost.ghost_clipped_grads`` (book-keeping ghost clipping: one backward
  pass, no per-example gradient array) and ``optax.chain(dpjax.noisy_mean,
  optax.adam)``; every model here is built from dpjax's ghost layers
  (plain layers outside ghost clipping).
* ``optax / contrib_dp``: ``optax.contrib.differentially_private_aggregate`` on
  ``vmap``-ed per-example gradients, chained with ``optax.adam``.
* ``pytorch / non-private``, ``opacus / hooks``, ``opacus / ghost`` when torch
  and opacus are installed (see ``_torch_baselines.py``); otherwise one record
  per configuration says ``skipped: torch not installed``.

Method. Every (framework, mode, model, batch size) runs in a FRESH Python
subprocess, so its peak resident memory (``ru_maxrss``, which also counts the
interpreter and the imported libraries: see ``rss_start_mb`` for that floor)
belongs to that configuration alone; on a GPU the device peak is also recorded
(``jax`` ``memory_stats()['peak_bytes_in_use']`` / ``torch.cuda.max_memory_allocated``).
A JAX step (gradients + optimizer update + apply) is one ``jax.jit`` function;
``compile_s`` is its ``lower().compile()`` time, then ``warmup`` untimed steps,
then ``steps`` timed ones, each ended with ``block_until_ready``. Torch steps
are eager (``compile_s`` is null) and end with ``cuda.synchronize`` on a GPU.
Every step reuses one fixed batch of random normal images (random tokens for
the transformer) and random labels: input loading is not timed. The clip norm,
noise multiplier and learning rate are the same everywhere.

Usage::

  python benchmarks/speed.py --quick            # ~3 minutes on 2 CPU cores
  python benchmarks/speed.py                    # full grid
  python benchmarks/speed.py --json-out F.json  # PNG goes next to it

The JSON also holds ``noise_sampler``: the time of one noise draw alone, float32
``jax.random.normal`` (5.4-sigma tails) against dpjax's sampler (12.95-sigma tails,
through ``dpjax.add_gaussian_noise``), on 2e5 and 1e7 coordinates (skip it with
``--no-noise-sampler``), and ``secure_noise``: the noise stage with the exact discrete
Gaussian (``sampler="discrete"``, host side, OS CSPRNG) against the float one, on 1e4 and
2e5 coordinates (skip it with ``--no-secure-noise``).

Every JAX record also holds ``xla_flops`` (XLA's cost analysis of the compiled
step), and ``machine_peak`` the best float32 matmul rate measured in the same run:
``floor_ms = xla_flops / rate`` is a floor on the step's time and
``floor_fraction = floor_ms / median_ms`` how close each path comes to it.
``--flops-only`` adds them to an existing JSON without re-timing anything.

The same script runs unchanged on a GPU (JAX and torch pick it up).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):  # benchmarks/ (sibling modules) and the repo root (dpjax)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402  (benchmarks/common.py: machine description, JSON writing)

DP = {"l2_norm": 1.0, "noise_multiplier": 1.1, "learning_rate": 1e-3}

# Shapes of the benchmarked models (the torch side reads the same dict).
SPECS: dict[str, dict[str, Any]] = {
    "cnn": {"input_shape": (28, 28, 1), "num_classes": 10},
    "mlp": {"input_shape": (28, 28, 1), "num_classes": 10, "hidden": (256,)},
    "transformer": {"vocab": 1000, "seq_len": 32, "dim": 64, "heads": 4, "num_classes": 10},
}

GHOST_MODELS = ("cnn", "mlp", "transformer")  # every parameter in a dpjax ghost layer
JAX_MODES = (
    ("dpjax", "non-private"),
    ("dpjax", "dp_sgd"),
    ("dpjax", "microbatch"),
    ("dpjax", "ghost"),
    ("optax", "contrib_dp"),
)
TORCH_MODES = (("pytorch", "non-private"), ("opacus", "hooks"), ("opacus", "ghost"))
MEMORY_METHOD = (
    "each configuration runs in a fresh subprocess; peak_rss_mb is its ru_maxrss (whole "
    "process: interpreter + libraries + XLA compilation + steps); peak_rss_steps_mb is the "
    "peak during the warm-up and timed steps only (the kernel mark is reset through "
    "/proc/self/clear_refs after compilation for JAX, after model/optimizer setup for torch) "
    "and rss_before_steps_mb the RSS at that reset (freed compiler memory is often kept by "
    "the allocator, so it stays counted); rss_start_mb is the RSS after imports, before the "
    "model is built; peak_device_mb is the accelerator peak (null on CPU); xla_step_mb (JAX "
    "only) is the compiled step's own memory from XLA's buffer assignment (arguments + "
    "outputs + temporaries - donated aliases): the step's memory without the interpreter, "
    "the compiler or the allocator, the same on CPU and GPU"
)
TIMING_METHOD = (
    "median/min/max over steps_timed steps after warm-up; a JAX step is one jax.jit function "
    "(compile_s = lower().compile() time) with params/opt-state donated, synced with "
    "block_until_ready; torch is eager, synced with cuda.synchronize on GPU"
)
FAMILY = {"dpjax": "jax", "optax": "jax", "pytorch": "torch", "opacus": "torch"}

QUICK = {"steps": 20, "warmup": 3, "grid": (("cnn", 256), ("mlp", 256), ("transformer", 64))}
FULL = {
    "steps": 50,
    "warmup": 5,
    "grid": tuple(
        [("cnn", b) for b in (64, 256, 1024)]
        + [("mlp", b) for b in (256, 1024)]
        + [("transformer", b) for b in (64, 256)]
    ),
}


# ----------------------------------------------------------------------------- JAX models


def transformer_init(key, vocab: int, seq_len: int, dim: int, heads: int, num_classes: int) -> dict:
    """Parameters of the tiny transformer (one pre-LN attention + MLP block)."""
    import jax
    import jax.numpy as jnp

    del heads
    keys = iter(jax.random.split(key, 8))

    def dense(fan_in: int, fan_out: int) -> dict:
        w = jax.random.normal(next(keys), (fan_in, fan_out)) / math.sqrt(fan_in)
        return {"w": w, "b": jnp.zeros(fan_out)}

    def norm() -> dict:
        return {"scale": jnp.ones(dim), "bias": jnp.zeros(dim)}

    return {
        "embed": 0.02 * jax.random.normal(next(keys), (vocab, dim)),
        "pos": 0.02 * jax.random.normal(next(keys), (seq_len, dim)),
        "ln1": norm(),
        "qkv": dense(dim, 3 * dim),
        "out": dense(dim, dim),
        "ln2": norm(),
        "fc1": dense(dim, 4 * dim),
        "fc2": dense(4 * dim, dim),
        "head": dense(dim, num_classes),
    }


def transformer_apply(params: dict, tokens, *, heads: int):
    """Logits ``(B, num_classes)`` for integer tokens ``(B, T)``; the torch mirror is identical.

    Written with dpjax's ghost layers (plain operations outside ghost clipping), so
    every mode times the same function and ``dpjax / ghost`` can clip it.
    """
    import jax
    import jax.numpy as jnp

    from dpjax import ghost

    def layer_norm(p, x):
        mean = x.mean(-1, keepdims=True)
        normed = (x - mean) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5)
        return ghost.ghost_scale_shift(normed, p["scale"], p["bias"])

    def dense(p, x):
        return ghost.ghost_dense(x, p["w"], p["b"])

    b, t = tokens.shape
    if t != params["pos"].shape[0]:
        raise ValueError(
            f"tokens have length {t}; the model was built for {params['pos'].shape[0]}."
        )
    x = ghost.ghost_scale_shift(ghost.ghost_embed(tokens, params["embed"]), shift=params["pos"])
    q, k, v = jnp.split(dense(params["qkv"], layer_norm(params["ln1"], x)), 3, axis=-1)
    q, k, v = (z.reshape(b, t, heads, -1) for z in (q, k, v))
    att = jax.nn.dot_product_attention(q, k, v)
    x = x + dense(params["out"], att.reshape(b, t, -1))
    x = x + dense(params["fc2"], jax.nn.gelu(dense(params["fc1"], layer_norm(params["ln2"], x))))
    return dense(params["head"], x.mean(axis=1))


def jax_model(model: str, spec: dict[str, Any]):
    """``(apply, params)`` for a benchmark model; ``apply(params, x_batch) -> logits``."""
    import functools

    import jax

    if model == "transformer":
        params = transformer_init(jax.random.key(0), **spec)
        return functools.partial(transformer_apply, heads=spec["heads"]), params
    if model == "mlp" and tuple(spec.get("hidden", (256,))) != (256,):
        from flax import nnx

        from dpjax.models import MLP, functional

        fm = functional(
            MLP(spec["input_shape"], spec["num_classes"], spec["hidden"], rngs=nnx.Rngs(0))
        )
        return fm.apply, fm.params
    from dpjax.models import make_model

    fm = make_model(model, spec["input_shape"], spec["num_classes"], seed=0)
    return fm.apply, fm.params


def jax_inputs(model: str, spec: dict[str, Any], batch_size: int):
    """A fixed batch ``(x, y)``: random normal NHWC images or random tokens, random labels."""
    import jax

    kx, ky = jax.random.split(jax.random.key(1))
    if model == "transformer":
        x = jax.random.randint(kx, (batch_size, spec["seq_len"]), 0, spec["vocab"])
    else:
        x = jax.random.normal(kx, (batch_size, *spec["input_shape"]))
    y = jax.random.randint(ky, (batch_size,), 0, spec["num_classes"])
    return x, y


# ----------------------------------------------------------------------------- JAX steps


def make_jax_step(framework: str, mode: str, apply, batch_size: int, microbatch: int | None = None):
    """Returns ``(step, tx)``, ``step(params, opt_state, x, y, mask) -> (params, opt_state)``.

    ``step`` is not jitted; :func:`time_compiled` jits it. The DP steps are built
    from dpjax's public pieces only: ``dp_sgd`` (the optax form), or a clipper
    joined to ``optax.chain(noisy_mean, adam)`` by ``private_update``.
    """
    import jax
    import optax

    import dpjax
    from dpjax import ghost

    lr, c, sigma = DP["learning_rate"], DP["l2_norm"], DP["noise_multiplier"]
    noise_key = jax.random.key(42)

    def loss_one(params, example):
        x, y = example
        logits = apply(params, x[None])[0]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)

    def loss_mean(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(params, x), y).mean()

    if (framework, mode) == ("dpjax", "non-private"):
        tx = optax.adam(lr)

        def step(params, state, x, y, mask):
            del mask
            updates, state = tx.update(jax.grad(loss_mean)(params, x, y), state, params)
            return optax.apply_updates(params, updates), state

    elif (framework, mode) == ("dpjax", "dp_sgd"):
        tx = dpjax.dp_sgd(
            optax.adam(lr),
            l2_norm=c,
            noise_multiplier=sigma,
            expected_batch_size=batch_size,
            key=noise_key,
        )
        grads_fn = dpjax.per_example_grads(loss_one)

        def step(params, state, x, y, mask):
            updates, state = tx.update(grads_fn(params, (x, y)), state, params, mask=mask)
            return optax.apply_updates(params, updates), state

    elif (framework, mode) in (("dpjax", "microbatch"), ("dpjax", "ghost")):
        tx = optax.chain(dpjax.noisy_mean(sigma, batch_size, key=noise_key), optax.adam(lr))
        if mode == "microbatch":
            clipper = dpjax.accumulate_clipped_grads(
                dpjax.per_example_grads(loss_one),
                l2_norm=c,
                microbatch_size=microbatch or max(1, batch_size // 4),
            )
        else:

            def losses(params, batch):
                return optax.softmax_cross_entropy_with_integer_labels(
                    apply(params, batch[0]), batch[1]
                )

            clipper = ghost.ghost_clipped_grads(losses, l2_norm=c)
        update = dpjax.private_update(clipper, tx)

        def step(params, state, x, y, mask):
            return update(params, state, (x, y), mask)

    elif (framework, mode) == ("optax", "contrib_dp"):
        tx = optax.chain(
            optax.contrib.differentially_private_aggregate(c, sigma, key=noise_key), optax.adam(lr)
        )
        grads_fn = jax.vmap(jax.grad(loss_one), in_axes=(None, 0))

        def step(params, state, x, y, mask):
            del mask
            updates, state = tx.update(grads_fn(params, (x, y)), state, params)
            return optax.apply_updates(params, updates), state

    else:
        raise ValueError(f"unknown JAX configuration {(framework, mode)}")
    return step, tx


def time_compiled(
    fn, args, steps: int, warmup: int, carry: bool
) -> tuple[float, list[float], Any, float | None, float | None, int | None]:
    """Compiles ``fn`` (jit) for ``args``, runs it.

    With ``carry``, the first two outputs are fed back as the first two inputs
    (params, optimizer state), as in training; the inputs are donated.

    Returns:
      ``(compile_s, step_times_s, last_out, xla_step_mb, xla_flops, xla_while_loops)``;
      ``xla_step_mb`` is the compiled step's own memory from XLA's buffer
      assignment (arguments + outputs + temporaries - donated aliases), free of
      interpreter, compiler and allocator noise; ``xla_flops`` the floating-point
      operations of one step by XLA's cost analysis, ``xla_while_loops`` the
      loops whose bodies it counts once (:func:`_xla_loops`); None where the
      backend does not report them.
    """
    import jax

    jitted = jax.jit(fn, donate_argnums=(0, 1) if carry else ())
    if carry:  # donate copies: the caller's arrays (e.g. a PRNG key held by the state) survive
        args = (*jax.tree.map(lambda a: a.copy(), tuple(args[:2])), *args[2:])
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    step_mb = _xla_step_mb(compiled)
    flops, loops = _xla_flops(compiled), _xla_loops(compiled)
    reset_peak_rss()  # the step peak below excludes the compiler's own memory
    args = list(args)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = compiled(*args)
        jax.block_until_ready(out)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        if carry:
            args[0], args[1] = out
    return compile_s, times, out, step_mb, flops, loops


def _xla_flops(compiled) -> float | None:
    """One step's floating-point operations by XLA's cost analysis (None if not reported).

    A while loop's body is counted once (see :func:`_xla_loops`).
    """
    try:
        cost = compiled.cost_analysis()
    except (AttributeError, NotImplementedError, TypeError, RuntimeError):
        return None
    if isinstance(cost, list | tuple):  # older JAX: one dict per computation
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return None if flops is None or flops < 0 else float(flops)


def _xla_loops(compiled) -> int | None:
    """A compiled step's while loops, but the PRNG's: XLA's cost analysis counts each body ONCE.

    The threefry loops (integer work only, no flops) are left out.
    """
    try:
        text = compiled.as_text()
    except (AttributeError, NotImplementedError, TypeError, RuntimeError):
        return None
    loops = [ln for ln in text.splitlines() if re.search(r"\bwhile\(", ln)]
    return sum(not re.search(r"threefry|random_bits|_uniform|_standard_normal", ln) for ln in loops)


def run_peak(cfg: dict[str, Any]) -> dict[str, Any]:
    """The machine's measured dense-matmul rate (float32), the denominator of every floor.

    Best of ``steps`` jitted ``(n, n) @ (n, n)`` products for each n: the rate the
    backend reaches on the operation it runs fastest, so ``flops / rate`` is a
    floor on a step's time that no implementation on this device beats by much.
    """
    import jax
    import jax.numpy as jnp

    rows = []
    for n in cfg["sizes"]:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        matmul = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
        jax.block_until_ready(matmul(a, b))
        best = math.inf
        for _ in range(cfg["steps"]):
            t0 = time.perf_counter()
            jax.block_until_ready(matmul(a, b))
            best = min(best, time.perf_counter() - t0)
        rows.append({"n": n, "best_ms": best * 1e3, "gflops": 2 * n**3 / best / 1e9})
    return {"rows": rows, "peak_gflops": max(r["gflops"] for r in rows), "device": jax_device()}


def add_floors(records: list[dict[str, Any]], peak_gflops: float | None) -> None:
    """Adds ``floor_ms`` (XLA flops / the measured matmul rate) and ``floor_fraction``.

    ``floor_fraction = floor_ms / median_ms``: how close a step comes to the time
    its arithmetic alone would take at the machine's best rate (1.0 = at the floor).
    """
    for r in records:
        flops = r.get("xla_flops")
        if not flops or not peak_gflops:
            continue
        r["floor_ms"] = flops / (peak_gflops * 1e9) * 1e3
        if r.get("median_ms"):
            r["floor_fraction"] = r["floor_ms"] / r["median_ms"]


def _xla_step_mb(compiled) -> float | None:
    try:
        m = compiled.memory_analysis()
        total = (
            m.argument_size_in_bytes
            + m.output_size_in_bytes
            + m.temp_size_in_bytes
            - m.alias_size_in_bytes
        )
    except (AttributeError, NotImplementedError, TypeError):
        return None
    return total / 2**20


def num_params(params) -> int:
    import jax

    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))


def jax_device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}: {d.device_kind} (jax {jax.__version__}, {jax.device_count()} device(s))"


def jax_peak_device_mb() -> float | None:
    import jax

    d = jax.devices()[0]
    if d.platform == "cpu":
        return None  # CPU memory is the process RSS
    stats = d.memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def run_jax_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Times one JAX (framework, mode, model, batch) configuration in this process."""
    import jax.numpy as jnp

    spec = {**SPECS[cfg["model"]], **cfg.get("spec", {})}
    apply, params = jax_model(cfg["model"], spec)
    b = cfg["batch_size"]
    x, y = jax_inputs(cfg["model"], spec, b)
    mask = jnp.ones((b,), bool)
    step, tx = make_jax_step(cfg["framework"], cfg["mode"], apply, b, cfg.get("microbatch"))
    n = num_params(params)
    compile_s, times, _, step_mb, flops, loops = time_compiled(
        step, (params, tx.init(params), x, y, mask), cfg["steps"], cfg["warmup"], True
    )
    return {
        **_summary(times),
        "compile_s": compile_s,
        "xla_step_mb": step_mb,
        "xla_flops": flops,
        "xla_while_loops": loops,
        "num_params": n,
        "peak_device_mb": jax_peak_device_mb(),
        "device": jax_device(),
    }


def run_jax_breakdown(cfg: dict[str, Any]) -> dict[str, Any]:
    """Median ms of the pieces of a dpjax DP step, each jitted on its own.

    ``grad_mean`` (non-private gradient only), ``per_example_grads``,
    ``+clip_and_sum``, ``+noise`` (clip + ``dp_aggregate``'s noise and scaling),
    ``ghost_clipped_sum`` (book-keeping ghost clipping), and ``full_dp_sgd_step``
    / ``full_ghost_step`` (with noise, Adam and apply). Differences between successive
    pieces estimate each stage's cost (XLA fuses across stages in the full step,
    so they are estimates).
    """
    import jax
    import jax.numpy as jnp
    import optax

    import dpjax
    from dpjax import ghost

    spec = {**SPECS[cfg["model"]], **cfg.get("spec", {})}
    apply, params = jax_model(cfg["model"], spec)
    b = cfg["batch_size"]
    x, y = jax_inputs(cfg["model"], spec, b)
    mask = jnp.ones((b,), bool)
    c, sigma = DP["l2_norm"], DP["noise_multiplier"]

    def loss_one(p, ex):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, ex[0][None])[0], ex[1])

    def loss_mean(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    grads_fn = dpjax.per_example_grads(loss_one)
    ghost_clipper = ghost.ghost_clipped_grads(
        lambda p, batch: optax.softmax_cross_entropy_with_integer_labels(
            apply(p, batch[0]), batch[1]
        ),
        l2_norm=c,
    )
    agg = dpjax.dp_aggregate(c, sigma, b, key=jax.random.key(42))
    agg_state = agg.init(params)
    pieces = {
        "grad_mean": lambda p, s, x, y, m: jax.grad(loss_mean)(p, x, y),
        "per_example_grads": lambda p, s, x, y, m: grads_fn(p, (x, y)),
        "+clip_and_sum": lambda p, s, x, y, m: dpjax.clip_and_sum(grads_fn(p, (x, y)), c, m).sum,
        "+noise": lambda p, s, x, y, m: agg.update(grads_fn(p, (x, y)), s, p, mask=m)[0],
        "ghost_clipped_sum": lambda p, s, x, y, m: ghost_clipper(p, (x, y), m).sum,
    }
    out: dict[str, Any] = {}
    for name, fn in pieces.items():
        _, times, *_ = time_compiled(
            fn, (params, agg_state, x, y, mask), cfg["steps"], cfg["warmup"], False
        )
        out[name] = 1e3 * statistics.median(times)
    for mode in ("dp_sgd", "ghost"):
        step, tx = make_jax_step("dpjax", mode, apply, b)
        _, times, *_ = time_compiled(
            step, (params, tx.init(params), x, y, mask), cfg["steps"], cfg["warmup"], True
        )
        out[f"full_{mode}_step"] = 1e3 * statistics.median(times)
    return {"median_ms_by_piece": out, "device": jax_device()}


NOISE_SAMPLER_SIZES = (200_000, 10_000_000)
NOISE_SAMPLER_METHOD = (
    "one noise draw alone: each contender is one jax.jit function (x, state) -> (x + N(0, 1) "
    "noise, state) on float32 zeros of the given size, drawing from fold_in(key, count) and "
    "counting up (fresh noise every call), synced with block_until_ready; after 2 untimed "
    "calls, the contenders alternate call by call and the median is taken; "
    "'jax.random.normal' is float32 jax.random.normal (the old sampler), 'dpjax' is "
    "dpjax.add_gaussian_noise(1.0, key).update (dpjax's sampler, float32)"
)


def run_noise_sampler(cfg: dict[str, Any]) -> dict[str, Any]:
    """Median ms of one float32 N(0, 1) draw: ``jax.random.normal`` against dpjax's sampler.

    dpjax's sampler is reached through the public ``dpjax.add_gaussian_noise``;
    the ``jax.random.normal`` contender does the same work around its draw
    (``fold_in`` of the step count, the add, the count's increment).
    """
    import jax
    import jax.numpy as jnp

    import dpjax

    noise = dpjax.add_gaussian_noise(1.0, key=jax.random.key(0))

    def plain_normal(x, state):  # the same signature as noise.update
        z = jax.random.normal(jax.random.fold_in(state.key, state.count), x.shape, jnp.float32)
        return x + z, state._replace(count=state.count + 1)

    rows = []
    for n in cfg["sizes"]:
        x = jnp.zeros((n,), jnp.float32)
        contenders = {"jax.random.normal": jax.jit(plain_normal), "dpjax": jax.jit(noise.update)}
        states = {name: noise.init(None) for name in contenders}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(2 + cfg["steps"]):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                out, states[name] = fn(x, states[name])
                jax.block_until_ready(out)
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
        old, new = (1e3 * statistics.median(times[k]) for k in ("jax.random.normal", "dpjax"))
        rows.append(
            {
                "coordinates": n,
                "jax_random_normal_median_ms": old,
                "dpjax_median_ms": new,
                "ratio_dpjax_over_normal": new / old,
                "calls_timed": cfg["steps"],
            }
        )
    return {"rows": rows, "method": NOISE_SAMPLER_METHOD, "device": jax_device()}


SECURE_NOISE_SIZES = (10_000, 200_000)
SECURE_NOISE_METHOD = (
    "the noise stage alone on a dpjax.ClippedSum of float32 zeros (sensitivity 1, sigma 1): "
    "'float' is dpjax.gaussian_mechanism(1.0, key) (dpjax's float32 sampler on device), "
    "'discrete' is gaussian_mechanism(1.0, key, sampler='discrete') (the sum rounded to a grid "
    "on the host, exact discrete Gaussian noise of Canonne, Kamath & Steinke 2020 from the OS "
    "CSPRNG, through jax.experimental.io_callback); each one jax.jit function, synced with "
    "block_until_ready; after 1 untimed call, the two alternate call by call; median"
)


def run_secure_noise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Median ms of one noise-stage call: the float sampler against the exact discrete one."""
    import jax
    import jax.numpy as jnp

    import dpjax

    rows = []
    for n in cfg["sizes"]:
        clipped = dpjax.clip_and_sum(jnp.zeros((1, n), jnp.float32), 1.0, mask=jnp.ones(1, bool))
        contenders = {
            sampler: dpjax.gaussian_mechanism(1.0, jax.random.key(0), sampler=sampler)
            for sampler in ("float", "discrete")
        }
        fns = {name: jax.jit(tx.update) for name, tx in contenders.items()}
        states = {name: tx.init(None) for name, tx in contenders.items()}
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(1 + cfg["steps"]):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                out, states[name] = fn(clipped, states[name])
                jax.block_until_ready(out)
                if i >= 1:
                    times[name].append(time.perf_counter() - t0)
        flt, dis = (1e3 * statistics.median(times[k]) for k in ("float", "discrete"))
        rows.append(
            {
                "coordinates": n,
                "float_median_ms": flt,
                "discrete_median_ms": dis,
                "ratio_discrete_over_float": dis / flt,
                "discrete_us_per_coordinate": 1e3 * dis / n,
                "calls_timed": cfg["steps"],
            }
        )
    return {"rows": rows, "method": SECURE_NOISE_METHOD, "device": jax_device()}


def _summary(times: list[float]) -> dict[str, float]:
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "max_ms": 1e3 * max(times),
        "steps_timed": len(times),
    }


# ----------------------------------------------------------------------------- subprocess workers


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


_RSS_MARKS: dict[str, float | None] = {}


def reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0; else no-op).

    Notes the peak so far and the current RSS first, so the whole-process peak
    is not lost (the reset also lowers ``ru_maxrss``).
    """
    _RSS_MARKS["peak_before_reset"] = _proc_status_mb("VmHWM")
    _RSS_MARKS["at_reset"] = _rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker_main(cfg: dict[str, Any]) -> None:
    """Runs one configuration and prints its record as the last stdout line."""
    if FAMILY.get(cfg["framework"]) == "torch":
        import _torch_baselines
        import opacus  # noqa: F401
        import torch  # noqa: F401  (imported before the RSS floor is read, as jax below)

        spec = {**SPECS[cfg["model"]], **cfg.get("spec", {})}
        start = _rss_mb()
        rec = _torch_baselines.run_torch_config(
            cfg["mode"],
            cfg["model"],
            spec,
            cfg["batch_size"],
            cfg["steps"],
            cfg["warmup"],
            DP,
            reset_peak_rss,
        )
    else:
        import jax  # noqa: F401
        import optax  # noqa: F401

        import dpjax  # noqa: F401

        start = _rss_mb()
        if cfg["mode"] == "noise_sampler":
            rec = run_noise_sampler(cfg)
        elif cfg["mode"] == "secure_noise":
            rec = run_secure_noise(cfg)
        elif cfg["mode"] == "breakdown":
            rec = run_jax_breakdown(cfg)
        elif cfg["mode"] == "peak":
            rec = run_peak(cfg)
        else:
            rec = run_jax_config(cfg)
    rec["rss_start_mb"] = start
    steps_peak = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # KiB on Linux; since the reset
    rec["peak_rss_mb"] = max(steps_peak, _RSS_MARKS.get("peak_before_reset") or 0.0)
    rec["rss_before_steps_mb"] = _RSS_MARKS.get("at_reset")
    rec["peak_rss_steps_mb"] = steps_peak
    print("RESULT " + json.dumps(rec), flush=True)


def run_in_subprocess(
    cfg: dict[str, Any], script: pathlib.Path, timeout_s: float = 600
) -> dict[str, Any]:
    """Runs ``script --worker CFG`` in a fresh interpreter; returns ``cfg`` plus its result."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--worker", json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout_s} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {**cfg, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return {**cfg, **json.loads(lines[-1][len("RESULT ") :])}


# ----------------------------------------------------------------------------- report


def add_ratios(
    records: list[dict[str, Any]], key: tuple[str, ...] = ("model", "batch_size")
) -> None:
    """Adds ``ms_ratio_vs_nonprivate`` / ``mem_ratio_vs_nonprivate`` to each timed record.

    The baseline is the ``non-private`` record of the same family (JAX or torch)
    with the same values of the ``key`` fields.
    """

    def group(r: dict[str, Any]) -> tuple:
        return (FAMILY.get(r["framework"]), *(r.get(k) for k in key))

    base = {group(r): r for r in records if r.get("mode") == "non-private" and "median_ms" in r}
    for r in records:
        b = base.get(group(r))
        if b is None or "median_ms" not in r:
            continue
        r["ms_ratio_vs_nonprivate"] = r["median_ms"] / b["median_ms"]
        r["mem_ratio_vs_nonprivate"] = r["peak_rss_mb"] / b["peak_rss_mb"]
        if r.get("xla_step_mb") and b.get("xla_step_mb"):
            r["xla_mem_ratio_vs_nonprivate"] = r["xla_step_mb"] / b["xla_step_mb"]
        if r.get("peak_device_mb") and b.get("peak_device_mb"):
            r["device_mem_ratio_vs_nonprivate"] = r["peak_device_mb"] / b["peak_device_mb"]


def dpjax_vs_opacus(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, batch): fastest dpjax DP mode against the fastest Opacus mode."""
    rows = []
    for model, b in sorted({(r["model"], r["batch_size"]) for r in records}):
        group = [
            r for r in records if (r["model"], r["batch_size"]) == (model, b) and "median_ms" in r
        ]
        ours = [r for r in group if r["framework"] == "dpjax" and r["mode"] != "non-private"]
        theirs = [r for r in group if r["framework"] == "opacus"]
        if not ours or not theirs:
            continue
        best_ours = min(ours, key=lambda r: r["median_ms"])
        best_theirs = min(theirs, key=lambda r: r["median_ms"])
        rows.append(
            {
                "model": model,
                "batch_size": b,
                "dpjax_best": best_ours["mode"],
                "dpjax_ms": best_ours["median_ms"],
                "opacus_best": best_theirs["mode"],
                "opacus_ms": best_theirs["median_ms"],
                "ms_ratio_dpjax_over_opacus": best_ours["median_ms"] / best_theirs["median_ms"],
                "rss_ratio_dpjax_over_opacus": best_ours["peak_rss_mb"]
                / best_theirs["peak_rss_mb"],
            }
        )
    return rows


def plot(records: list[dict[str, Any]], path: pathlib.Path) -> None:
    """One panel per (model, batch): median ms per (framework, mode), x non-private on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["batch_size"]) for r in records if "median_ms" in r})
    if not groups:
        return
    cols = min(3, len(groups))
    rows = math.ceil(len(groups) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colors = {
        "dpjax": "tab:blue",
        "optax": "tab:cyan",
        "pytorch": "tab:gray",
        "opacus": "tab:orange",
    }
    for ax, (model, b) in zip(axes.flat, groups, strict=False):
        rs = [
            r for r in records if (r["model"], r["batch_size"]) == (model, b) and "median_ms" in r
        ]
        labels = [f"{r['framework']}\n{r['mode']}" for r in rs]
        bars = ax.bar(
            range(len(rs)), [r["median_ms"] for r in rs], color=[colors[r["framework"]] for r in rs]
        )
        for bar, r in zip(bars, rs, strict=True):
            ratio = r.get("ms_ratio_vs_nonprivate")
            if ratio is not None and r["mode"] != "non-private":
                ax.annotate(
                    f"{ratio:.1f}x",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(rs)), labels, fontsize=6, rotation=45, ha="right")
        ax.set_title(f"{model}, batch {b}", fontsize=9)
        ax.set_ylabel("median ms / step")
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    common.save_figure(
        fig, path, "Time per training step (label: x non-private, same framework)", dpi=120
    )


def print_table(records: list[dict[str, Any]]) -> None:
    print(
        f"{'framework':9} {'mode':12} {'model':11} {'B':>5} {'median ms':>10} {'x np':>6} "
        f"{'compile s':>9} {'peak MB':>8} {'mem x np':>8}"
    )
    for r in records:
        if "median_ms" not in r:
            print(
                f"{r['framework']:9} {r['mode']:12} {r['model']:11} {r['batch_size']:>5}  "
                f"{r.get('skipped') or r.get('error')}"
            )
            continue
        comp = "-" if r.get("compile_s") is None else f"{r['compile_s']:.2f}"
        print(
            f"{r['framework']:9} {r['mode']:12} {r['model']:11} {r['batch_size']:>5} "
            f"{r['median_ms']:>10.2f} {r.get('ms_ratio_vs_nonprivate', float('nan')):>6.2f} "
            f"{comp:>9} {r['peak_rss_mb']:>8.0f} "
            f"{r.get('mem_ratio_vs_nonprivate', float('nan')):>8.2f}"
        )


FLOOR_METHOD = (
    "xla_flops: one compiled step's floating-point operations by XLA's cost analysis "
    "(compiled.cost_analysis()['flops']; elementwise work and the noise sampler count too). "
    "machine_peak: the best float32 (n, n) @ (n, n) rate of this device, measured in the same "
    "run. floor_ms = xla_flops / that rate: no step can take much less; floor_fraction = "
    "floor_ms / median_ms is how close each path comes to it (small models on CPU are bound by "
    "memory traffic and per-op overheads, not by arithmetic). XLA counts a while loop's body "
    "ONCE, not once per trip (xla_while_loops, the loops other than the PRNG's integer-only "
    "threefry loop, > 0: lax.scan over microbatches, chunked per-example maps): such a step's "
    "count, and floor, "
    "are too low; the non-private step's floor is then the floor that every DP path must beat"
)


def measure_peak(script: pathlib.Path, quick: bool = False) -> dict[str, Any]:
    """The matmul rate, in its own subprocess (the floor's denominator)."""
    sizes = [512, 1024] if quick else [512, 1024, 2048]
    return run_in_subprocess(
        {"framework": "dpjax", "mode": "peak", "sizes": sizes, "steps": 5 if quick else 10}, script
    )


def add_flops_to_existing(json_path: pathlib.Path, script: pathlib.Path) -> None:
    """``--flops-only``: XLA flop counts and floors added to an existing run's records.

    The flop count is a property of the compiled program, not a measurement, so it
    can be added to records timed earlier; the matmul rate is measured now (and
    the JSON says so). Every JAX record without a count is compiled again in a
    fresh subprocess (one untimed step); nothing is re-timed. Run again, it only
    measures the rate again.
    """
    payload = json.loads(json_path.read_text())
    for r in payload["records"]:
        if FAMILY.get(r.get("framework")) != "jax" or "median_ms" not in r or "xla_flops" in r:
            continue  # torch, failed or skipped, or counted by an earlier --flops-only
        cfg = {k: r[k] for k in ("framework", "mode", "model", "batch_size") if k in r}
        cfg.update(steps=1, warmup=0)
        if r.get("microbatch"):
            cfg["microbatch"] = r["microbatch"]
        got = run_in_subprocess(cfg, script)
        r["xla_flops"] = got.get("xla_flops")
        r["xla_while_loops"] = got.get("xla_while_loops")
        print(
            f"  {cfg['framework']}/{cfg['mode']} {cfg['model']} B={cfg['batch_size']}: "
            f"{(r['xla_flops'] or float('nan')) / 1e9:.3f} GFLOP",
            flush=True,
        )
    peak = measure_peak(script)
    add_floors(payload["records"], peak.get("peak_gflops"))
    payload["machine_peak"] = {
        **peak,
        "note": "measured by --flops-only on "
        + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + "; the timings are from the run described by 'machine'",
    }
    payload["floor_method"] = FLOOR_METHOD
    common.write_json(json_path, payload)
    print_floors(payload["records"], peak.get("peak_gflops"))


def print_floors(records: list[dict[str, Any]], peak_gflops: float | None) -> None:
    print(f"machine peak (float32 matmul): {peak_gflops or float('nan'):.1f} GFLOP/s")
    for r in records:
        if "floor_ms" in r:
            print(
                f"{r['framework']:9} {r['mode']:12} {r['model']:11} {r['batch_size']:>5} "
                f"{r['xla_flops'] / 1e9:>9.3f} GFLOP  floor {r['floor_ms']:>8.2f} ms  "
                f"median {r.get('median_ms', float('nan')):>8.2f} ms  "
                f"at {100 * r.get('floor_fraction', float('nan')):>5.1f} % of the floor rate"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few models and batch sizes, 20 steps")
    parser.add_argument("--json-out", type=pathlib.Path, default=HERE / "results" / "speed.json")
    parser.add_argument(
        "--no-torch", action="store_true", help="skip PyTorch/Opacus even if installed"
    )
    parser.add_argument("--no-breakdown", action="store_true", help="skip the dpjax step breakdown")
    parser.add_argument(
        "--no-noise-sampler",
        action="store_true",
        help="skip the timing of one noise draw (jax.random.normal vs dpjax's sampler)",
    )
    parser.add_argument(
        "--no-secure-noise",
        action="store_true",
        help="skip the timing of the noise stage with sampler='discrete' against 'float'",
    )
    parser.add_argument(
        "--flops-only",
        action="store_true",
        help="add XLA flop counts and the measured matmul floor to the records of an existing "
        "--json-out (each JAX step compiled again, nothing re-timed), then rewrite it",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    script = pathlib.Path(__file__).resolve()
    if args.flops_only:
        add_flops_to_existing(args.json_out, script)
        return

    import _torch_baselines

    plan = QUICK if args.quick else FULL
    have_torch = _torch_baselines.torch_available() and not args.no_torch
    records: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for model, b in plan["grid"]:
        modes = JAX_MODES + TORCH_MODES
        for framework, mode in modes:
            cfg = {
                "framework": framework,
                "mode": mode,
                "model": model,
                "batch_size": b,
                "steps": plan["steps"],
                "warmup": plan["warmup"],
            }
            if mode == "microbatch":
                cfg["microbatch"] = max(1, b // 4)
            if (framework, mode) == ("dpjax", "ghost") and model not in GHOST_MODELS:
                records.append(
                    {**cfg, "skipped": "skipped: model has parameters outside ghost layers"}
                )
                continue
            if FAMILY[framework] == "torch" and not have_torch:
                reason = "torch not installed" if not args.no_torch else "--no-torch"
                records.append({**cfg, "skipped": f"skipped: {reason}"})
                continue
            rec = run_in_subprocess(cfg, script)
            records.append(rec)
            print(
                f"  {framework}/{mode} {model} B={b}: "
                f"{rec.get('median_ms', float('nan')):.2f} ms {rec.get('error', '')}",
                flush=True,
            )
    breakdown = None
    if not args.no_breakdown:
        model, b = ("cnn", 256)
        breakdown = run_in_subprocess(
            {
                "framework": "dpjax",
                "mode": "breakdown",
                "model": model,
                "batch_size": b,
                "steps": plan["steps"],
                "warmup": plan["warmup"],
            },
            script,
        )
    noise_sampler = None
    if not args.no_noise_sampler:
        noise_sampler = run_in_subprocess(
            {
                "framework": "dpjax",
                "mode": "noise_sampler",
                "sizes": list(NOISE_SAMPLER_SIZES),
                "steps": 7 if args.quick else 21,
            },
            script,
        )
    secure_noise = None
    if not args.no_secure_noise:
        secure_noise = run_in_subprocess(
            {
                "framework": "dpjax",
                "mode": "secure_noise",
                "sizes": list(SECURE_NOISE_SIZES[:1] if args.quick else SECURE_NOISE_SIZES),
                "steps": 3 if args.quick else 7,
            },
            script,
        )
    add_ratios(records)
    peak = measure_peak(script, quick=args.quick)
    add_floors(records, peak.get("peak_gflops"))
    payload = {
        "benchmark": "speed",
        "quick": args.quick,
        "machine": common.machine_description(),
        "dp": DP,
        "model_specs": SPECS,
        "memory_method": MEMORY_METHOD,
        "timing_method": TIMING_METHOD,
        "records": records,
        "dpjax_vs_opacus": dpjax_vs_opacus(records),
        "dpjax_breakdown": breakdown,
        "noise_sampler": noise_sampler,
        "secure_noise": secure_noise,
        "machine_peak": peak,
        "floor_method": FLOOR_METHOD,
        "wall_s": time.perf_counter() - t_start,
    }
    common.write_json(args.json_out, payload)
    plot(records, args.json_out.with_suffix(".png"))
    print_table(records)
    print_floors(records, peak.get("peak_gflops"))
    for row in payload["dpjax_vs_opacus"]:
        print(
            f"{row['model']} B={row['batch_size']}: dpjax {row['dpjax_best']} "
            f"{row['dpjax_ms']:.1f} ms vs opacus {row['opacus_best']} {row['opacus_ms']:.1f} ms "
            f"-> {row['ms_ratio_dpjax_over_opacus']:.2f}x"
        )
    if breakdown:
        print(
            "dpjax breakdown (cnn, B=256):",
            breakdown.get("median_ms_by_piece", breakdown.get("error")),
        )
    for row in (noise_sampler or {}).get("rows", []):
        print(
            f"noise draw, {row['coordinates']} coordinates: jax.random.normal "
            f"{row['jax_random_normal_median_ms']:.2f} ms, dpjax {row['dpjax_median_ms']:.2f} ms "
            f"-> {row['ratio_dpjax_over_normal']:.2f}x"
        )
    for row in (secure_noise or {}).get("rows", []):
        print(
            f"noise stage, {row['coordinates']} coordinates: float {row['float_median_ms']:.2f} ms, "
            f"discrete (exact, CSPRNG) {row['discrete_median_ms']:.1f} ms "
            f"-> {row['ratio_discrete_over_float']:.0f}x"
        )
    if noise_sampler and "error" in noise_sampler:
        print("noise sampler timing:", noise_sampler["error"])
    print(
        f"wrote {args.json_out} and {args.json_out.with_suffix('.png')} "
        f"in {payload['wall_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
