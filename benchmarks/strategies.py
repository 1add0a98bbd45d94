"""Levers that keep accuracy under privacy, measured: sparse updates, schedules, clipping, EMA.

Part A, a high-dimensional case where sparsity should matter. A linear softmax
model on d = 10,240 PUBLIC random features of Fashion-MNIST: a fixed random
ReLU projection of the 784 pixels, `relu((x - 0.5) @ W + b) / sqrt(d)`, with
`W` and `b` drawn from a fixed, published seed (``FEATURE_SEED``). The
projection is independent of the data, so computing it costs no privacy (it is
part of the model's definition, like an architecture). 102,410 parameters. A
small custom loop (``PoissonSampler`` batches, ``dpjax.per_example_grads``,
SGD with momentum) trains, at epsilon = 1 and delta = 1e-5:

* dense DP-SGD: ``dpjax.dp_sgd(...)``;
* private top-k: ``dpjax.private_topk(dpjax.dp_sgd(...), k, source=...)`` with
  the SAME noise multiplier and the same steps (a top-k step is accounted as a
  dense one), for every source in {"ema", "warmup", "random"} and every k
  fraction in {0.01, 0.03, 0.1, 0.3};
* adaptive clipping: ``optax.chain(dpjax.adaptive_dp_aggregate(...), sgd)``
  (median quantile; the count release is inside sigma);
* a linear-decay noise schedule: ``dpjax.calibrate_noise_schedule`` with the
  shape ``linear_schedule(1, 0.5, T)``, passed as dp_sgd's noise multiplier;
* a NOT PRIVATE reference (no clipping, no noise, no guarantee).

Part B, the standard DP CNN on Fashion-MNIST through the trainer
(``dpjax.training.train``) at epsilon = 1 and 3: the published recipe of
``benchmarks/utility.py`` (SGD momentum 0.9, lr 4, clip 0.1, expected batch
2048) as the dense baseline, then each lever the trainer offers
(``ema_decay``, ``noise_schedule``, ``clip_groups``, ``augmult``) alone and
all together. A full-size run (40 epochs) takes 5-9 minutes on 2 CPU cores,
so ``--epochs`` and ``--seeds`` size the plan; the JSON says what ran.

Protocol. Hyperparameters are chosen on VALIDATION accuracy (seed 0), never on
test accuracy; the learning-rate grid of every part-A method is in the plan and
every configuration tried is in the JSON. The reported epsilon does NOT include
the privacy cost of this tuning (Papernot & Steinke, ICLR 2022), as in the
literature. Benchmark seeds are public (public data, reproducible research);
training on sensitive data needs ``dpjax.secret_key()`` / ``secret_seed()``.

Every finished run is cached under ``benchmarks/results/runs/strategies/``
(git-ignored) and reused when the same configuration is asked for again.

Usage::

  python benchmarks/strategies.py --quick          # tiny plan, < 1 min -> results/quick/
  python benchmarks/strategies.py --parts A        # the high-dimensional linear case
  python benchmarks/strategies.py --parts B --epochs 10 --seeds 1 --levers ema schedule
  python benchmarks/strategies.py --cache only     # JSON + PNG from finished runs, no training
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import math
import pathlib
import resource
import statistics
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):  # benchmarks/ (sibling modules) and the repo root (dpjax)
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import common  # noqa: E402  (benchmarks/common.py: machine description, JSON writing)

DELTA = 1e-5
FEATURE_SEED = 20251126  # public: the random projection is part of the model, not of the data
DEFAULT_JSON = HERE / "results" / "strategies.json"
QUICK_JSON = HERE / "results" / "quick" / "strategies.json"  # --quick never overwrites
CACHE_DIR = HERE / "results" / "runs" / "strategies"  # ignored by .gitignore's `runs/`
NOT_PRIVATE = "NOT PRIVATE"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cache_path(kind: str, config: dict[str, Any]) -> pathlib.Path:
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE_DIR / f"{kind}_{digest}.json"


def _cached(kind: str, config: dict[str, Any], cache: str) -> dict[str, Any] | None:
    path = _cache_path(kind, config)
    if cache == "fresh" or not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("config") != json.loads(json.dumps(config)):
        return None
    return record | {"cached": True}


def _store(kind: str, config: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    record = {"config": config} | record
    common.write_json(_cache_path(kind, config), record)
    return record | {"cached": False}


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


# ====================================================================== part A


@dataclasses.dataclass(frozen=True)
class LinearPlan:
    """Part A's plan. Every field that changes a run is in its cache key."""

    epsilon: float = 1.0
    features: int = 10240
    batch_size: int = 512  # expected (Poisson) batch size
    steps: int = 100
    train_size: int | None = None  # None: the whole training split (55,000)
    clip_norm: float = 1.0
    momentum: float = 0.9
    fractions: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    sources: tuple[str, ...] = ("ema", "warmup", "random")
    ema_decay: float = 0.9  # private_topk's decay for source="ema"
    warmup_fraction: float = 0.1  # source="warmup": dense for this fraction of the steps
    schedule_end: float = 0.5  # linear noise schedule: sigma_T / sigma_0
    adaptive_quantile: float = 0.5
    lrs: tuple[float, ...] = (10.0, 30.0)  # searched for every method on validation
    seeds: int = 3
    accountant: str = "pld"
    methods: tuple[str, ...] = ("dense", "topk", "adaptive", "schedule", "not-private")


QUICK_LINEAR = LinearPlan(
    features=512,
    batch_size=64,
    steps=15,
    train_size=2000,
    fractions=(0.1,),
    lrs=(3.0,),
    seeds=1,
    accountant="rdp",  # the PLD schedule calibration alone takes ~20 s
)


def sensitivity_plan(plan: LinearPlan) -> LinearPlan:
    """A noisier regime for the top-k question (``--sensitivity``): 4x smaller batches, 4x the
    steps (the same examples processed), dense vs the best source; 1 seed, no tuning."""
    return dataclasses.replace(
        plan,
        batch_size=plan.batch_size // 4,
        steps=plan.steps * 4,
        methods=("dense", "topk"),
        sources=("warmup",),
        fractions=(0.1, 0.3),
        lrs=(10.0,),
        seeds=1,
    )


@dataclasses.dataclass(frozen=True)
class Method:
    """One part-A method: its kind and, for top-k, k (a fraction) and the support source."""

    kind: str  # "dense", "topk", "adaptive", "schedule", "not-private"
    k: float | None = None
    source: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "topk":
            return f"topk-{self.source}-{self.k:g}"
        return self.kind


def linear_methods(plan: LinearPlan) -> list[Method]:
    methods = []
    for kind in plan.methods:
        if kind == "topk":
            methods += [Method("topk", k, s) for s in plan.sources for k in plan.fractions]
        else:
            methods.append(Method(kind))
    return methods


def random_relu_features(x, features: int, seed: int = FEATURE_SEED):
    """The PUBLIC feature map: `relu((x - 0.5) @ W + b) / sqrt(d)`, float16 on the host.

    `W ~ N(0, 9 / 784)` and `b ~ U(-1, 1)` come from `seed` alone, never from the
    data; pixels are in [0, 1] and centred on the constant 0.5 (no data statistic).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    pixels = int(np.prod(x.shape[1:]))
    w = jnp.asarray(rng.standard_normal((pixels, features)) * (3.0 / math.sqrt(pixels)), "float32")
    b = jnp.asarray(rng.uniform(-1.0, 1.0, features), "float32")

    @jax.jit
    def project(chunk):
        flat = chunk.reshape(chunk.shape[0], -1) - 0.5
        return (jax.nn.relu(flat @ w + b[None, :]) / math.sqrt(features)).astype(jnp.float16)

    chunk = 1000
    out = np.empty((len(x), features), np.float16)
    for start in range(0, len(x), chunk):
        part = np.asarray(x[start : start + chunk], np.float32)
        if len(part) < chunk:  # one compiled shape: pad the last chunk
            part = np.concatenate([part, np.zeros((chunk - len(part), *x.shape[1:]), np.float32)])
        out[start : start + chunk] = np.asarray(project(part))[: min(chunk, len(x) - start)]
    return out


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a part-A step (hashable: the jit cache key)."""

    method: Method
    noise: Any  # sigma (float) or a dpjax.NoiseSchedule
    batch_size: int
    clip_norm: float
    momentum: float
    ema_decay: float
    warmup_steps: int
    adaptive_quantile: float


def build_tx(spec: StepSpec, noise_key, support_key, lr):
    """The method's optax transformation; built inside the jitted step too (keys and lr traced)."""
    import optax

    import dpjax

    opt = optax.sgd(lr, momentum=spec.momentum)
    kind = spec.method.kind
    if kind == "not-private":
        return opt
    if kind == "adaptive":
        return optax.chain(
            dpjax.adaptive_dp_aggregate(
                spec.clip_norm,
                spec.noise,
                spec.batch_size,
                key=noise_key,
                target_quantile=spec.adaptive_quantile,
            ),
            opt,
        )
    tx = dpjax.dp_sgd(
        opt,
        l2_norm=spec.clip_norm,
        noise_multiplier=spec.noise,  # a float, or the NoiseSchedule for "schedule"
        expected_batch_size=spec.batch_size,
        key=noise_key,
    )
    if kind == "topk":
        tx = dpjax.private_topk(
            tx,
            spec.method.k,
            source=spec.method.source,
            decay=spec.ema_decay,
            warmup_steps=spec.warmup_steps,
            key=support_key if spec.method.source == "random" else None,
        )
    return tx


def _linear_loss(params, example):
    """Softmax cross-entropy of ONE example; `w` is (classes, features)."""
    import jax

    f, y = example
    return -jax.nn.log_softmax(params["w"] @ f + params["b"])[y]


@functools.cache
def _jitted():
    import jax
    import jax.numpy as jnp
    import optax

    import dpjax

    grads_fn = dpjax.per_example_grads(_linear_loss)

    @functools.partial(jax.jit, static_argnums=0)
    def step(spec, params, state, f, y, mask, noise_key, support_key, lr):
        tx = build_tx(spec, noise_key, support_key, lr)
        if spec.method.kind == "not-private":  # NOT PRIVATE: the plain mean gradient
            weights = mask.astype(jnp.float32) / jnp.maximum(jnp.sum(mask), 1)
            grads = jax.grad(
                lambda p: jnp.sum(weights * jax.vmap(_linear_loss, (None, 0))(p, (f, y)))
            )(params)
            updates, state = tx.update(grads, state, params)
        else:
            updates, state = tx.update(grads_fn(params, (f, y)), state, params, mask=mask)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def correct(params, f, y):
        logits = f.astype(jnp.float32) @ params["w"].T + params["b"][None, :]
        return jnp.sum(jnp.argmax(logits, -1) == y)

    return step, correct


def _accuracy(params, feats, labels, chunk: int = 2500) -> float:
    import numpy as np

    _, correct = _jitted()
    total = 0
    for start in range(0, len(feats), chunk):
        f, y = feats[start : start + chunk], labels[start : start + chunk]
        if len(f) < chunk:  # one compiled shape: pad with label -1 (never correct)
            pad = chunk - len(f)
            f = np.concatenate([f, np.zeros((pad, f.shape[1]), f.dtype)])
            y = np.concatenate([y, -np.ones(pad, y.dtype)])
        total += int(correct(params, f, y))
    return total / len(labels)


class LinearCase:
    """Part A's data (features computed once, when the first run trains) and its calibration."""

    def __init__(self, plan: LinearPlan, data):
        import numpy as np

        import dpjax

        self.plan = plan
        self._data = data
        self._pick = None
        self.n = len(data.train.y)
        if plan.train_size is not None and plan.train_size < self.n:
            rng = np.random.default_rng(0)  # a public subsample of the training split
            self._pick = np.sort(rng.choice(self.n, plan.train_size, replace=False))
            self.n = plan.train_size
        self.feature_seconds = None
        self.q = plan.batch_size / self.n
        self.sigma = dpjax.calibrate_noise_multiplier(
            plan.epsilon, self.q, plan.steps, DELTA, accountant=plan.accountant
        )
        self._schedule = None
        self._features = None

    def _splits(self):
        """(train, validation, test) as (float16 features, int32 labels); computed once."""
        if self._features is None:
            import numpy as np

            start, data, d = time.perf_counter(), self._data, self.plan.features
            x, y = data.train.x, data.train.y
            if self._pick is not None:
                x, y = x[self._pick], y[self._pick]
            self._features = tuple(
                (random_relu_features(xs, d), np.asarray(ys, np.int32))
                for xs, ys in ((x, y), (data.validation.x, data.validation.y),
                               (data.test.x, data.test.y))
            )  # fmt: skip
            self.feature_seconds = time.perf_counter() - start
        return self._features

    @property
    def schedule(self):
        """The linear-decay schedule calibrated to the same epsilon (computed once)."""
        if self._schedule is None:
            import optax

            import dpjax

            plan = self.plan
            shape = optax.linear_schedule(1.0, plan.schedule_end, plan.steps - 1)
            schedule = dpjax.calibrate_noise_schedule(
                shape, plan.epsilon, self.q, plan.steps, DELTA, accountant=plan.accountant
            )
            self._schedule = (schedule, schedule.epsilon(self.q, DELTA, accountant=plan.accountant))
        return self._schedule

    def run_config(self, method: Method, lr: float, seed: int) -> dict[str, Any]:
        plan = self.plan
        fields = dataclasses.asdict(plan)
        for unused in ("fractions", "sources", "lrs", "seeds", "methods"):
            fields.pop(unused)
        return {
            "part": "A",
            "plan": fields,
            "method": dataclasses.asdict(method),
            "lr": lr,
            "seed": seed,
            "feature_seed": FEATURE_SEED,
            "delta": DELTA,
        }

    def run(self, method: Method, lr: float, seed: int, cache: str) -> dict[str, Any] | None:
        config = self.run_config(method, lr, seed)
        found = _cached("linear", config, cache)
        if found is not None or cache == "only":
            return found
        record = self._train(method, lr, seed)
        return _store("linear", config, record)

    def _train(self, method: Method, lr: float, seed: int) -> dict[str, Any]:
        import jax.numpy as jnp
        import numpy as np

        import dpjax

        plan = self.plan
        wall, cpu = time.perf_counter(), _cpu_seconds()
        noise: Any = self.sigma
        planned_eps = None
        if method.kind == "schedule":
            noise, planned_eps = self.schedule
        spec = StepSpec(
            method=method,
            noise=noise,
            batch_size=plan.batch_size,
            clip_norm=plan.clip_norm,
            momentum=plan.momentum,
            ema_decay=plan.ema_decay,
            warmup_steps=max(1, round(plan.warmup_fraction * plan.steps)),
            adaptive_quantile=plan.adaptive_quantile,
        )
        # Research seeds on public data, for reproducibility. On sensitive data use
        # dpjax.secret_key() for the noise and dpjax.secret_seed() for the sampler.
        noise_key = dpjax.key_from_seed(dpjax.derive_seed(seed, 1))
        support_key = dpjax.key_from_seed(dpjax.derive_seed(seed, 2))  # not the noise key
        sampler = dpjax.PoissonSampler(
            self.n, expected_batch_size=plan.batch_size, seed=dpjax.derive_seed(seed, 3)
        )
        lr_arr = jnp.asarray(lr, jnp.float32)
        params = {
            "w": jnp.zeros((10, plan.features), jnp.float32),
            "b": jnp.zeros(10, jnp.float32),
        }
        state = build_tx(spec, noise_key, support_key, lr_arr).init(params)
        step, _ = _jitted()
        private = method.kind != "not-private"
        tracker = None
        if private and method.kind != "schedule":
            tracker = dpjax.PrivacyTracker(
                target_epsilon=plan.epsilon,
                delta=DELTA,
                sampling_rate=self.q,
                accountant=plan.accountant,
            )
        (feats, labels), validation, test_split = self._splits()
        for t in range(plan.steps):
            if tracker is not None:
                tracker.record_step(self.sigma)  # before the step; raises past the budget
            batch = sampler.sample(t)
            f = np.asarray(feats[batch.indices], np.float32)
            params, state = step(
                spec, params, state, f, labels[batch.indices], batch.mask,
                noise_key, support_key, lr_arr,
            )  # fmt: skip
        val = _accuracy(params, *validation)
        test = _accuracy(params, *test_split)
        eps = tracker.epsilon_spent() if tracker is not None else planned_eps
        return {
            "method": method.name,
            "validation_accuracy": val,
            "test_accuracy": test,
            "epsilon": eps if private else None,
            "noise_multiplier": (self.sigma if method.kind != "schedule" else None)
            if private
            else 0.0,
            "noise_schedule": [list(p) for p in noise.phases]
            if method.kind == "schedule"
            else None,
            "finite_params": bool(all(np.isfinite(np.asarray(v)).all() for v in params.values())),
            "wall_seconds": time.perf_counter() - wall,
            "cpu_seconds": _cpu_seconds() - cpu,
            "finished_utc": common.machine_description()["timestamp_utc"],
        }


def run_part_a(plan: LinearPlan, data, cache: str) -> dict[str, Any]:
    case = LinearCase(plan, data)
    print(
        f"part A: {case.n} train examples, d={plan.features} features, "
        f"q={case.q:.5f}, T={plan.steps}, "
        f"sigma={case.sigma:.4f} at eps={plan.epsilon:g}",
        flush=True,
    )
    points, trials_total, cpu_total = [], 0, 0.0
    for method in linear_methods(plan):
        trials = []
        for lr in plan.lrs:
            rec = case.run(method, lr, 0, cache)
            if rec is None:
                continue
            trials.append({"lr": lr, "validation_accuracy": rec["validation_accuracy"]})
            cpu_total += 0.0 if rec["cached"] else rec["cpu_seconds"]
            _print_linear("tune", method, lr, 0, rec)
        if not trials:
            continue
        trials_total += len(trials)
        best_lr = max(trials, key=lambda t: t["validation_accuracy"])["lr"]  # first wins ties
        runs = []
        for seed in range(plan.seeds):
            rec = case.run(method, best_lr, seed, cache)
            if rec is None:
                continue
            if seed:
                cpu_total += 0.0 if rec["cached"] else rec["cpu_seconds"]
                _print_linear("report", method, best_lr, seed, rec)
            runs.append(rec)
        accs = [r["test_accuracy"] for r in runs]
        mean, std = _mean_std(accs)
        points.append(
            {
                "method": method.name,
                "kind": method.kind,
                "k_fraction": method.k,
                "k": None if method.k is None else math.ceil(method.k * (plan.features + 1) * 10),
                "source": method.source,
                "lr": best_lr,
                "test_accuracy_mean": mean,
                "test_accuracy_std": std,
                "test_accuracy_per_seed": accs,
                "validation_accuracy_per_seed": [r["validation_accuracy"] for r in runs],
                "epsilon_per_seed": [r["epsilon"] for r in runs],
                "n_seeds": len(runs),
                "tuning": trials,
                "wall_seconds_per_seed": [r["wall_seconds"] for r in runs],
                "cpu_seconds_per_seed": [r["cpu_seconds"] for r in runs],
                "label": NOT_PRIVATE if method.kind == "not-private" else None,
            }
        )
    dense = next((p for p in points if p["kind"] == "dense"), None)
    topk = [p for p in points if p["kind"] == "topk"]
    best = max(topk, key=lambda p: p["test_accuracy_mean"], default=None)
    best_val = max(
        topk, key=lambda p: statistics.fmean(p["validation_accuracy_per_seed"]), default=None
    )
    goal = None
    if dense and best_val:
        gain = best_val["test_accuracy_mean"] - dense["test_accuracy_mean"]
        goal = {
            "goal": "private top-k beats dense by >= 1 point at epsilon = 1",
            "dense": dense["test_accuracy_mean"],
            "topk_chosen_on_validation": best_val["method"],
            "topk_chosen_test": best_val["test_accuracy_mean"],
            "gain_points": 100 * gain,
            "met": 100 * gain >= 1.0,
            "best_topk_by_test_for_reference": best["method"] if best else None,
        }
    return {
        "plan": dataclasses.asdict(plan),
        "train_examples": case.n,
        "parameters": 10 * plan.features + 10,
        "sampling_rate": case.q,
        "noise_multiplier": case.sigma,
        "noise_schedule": [list(p) for p in case.schedule[0].phases]
        if "schedule" in plan.methods
        else None,
        "schedule_epsilon": case.schedule[1] if "schedule" in plan.methods else None,
        "feature_seconds": case.feature_seconds,
        "configs_tried_on_validation": trials_total,
        "cpu_seconds_trained_now": cpu_total,
        "points": points,
        "goal": goal,
    }


def _print_linear(tag: str, method: Method, lr: float, seed: int, rec: dict[str, Any]) -> None:
    eps = rec["epsilon"]
    print(
        f"  {tag:<6} {method.name:<18} lr={lr:<5g} seed={seed} "
        f"eps={'-' if eps is None else f'{eps:.3f}'} val={rec['validation_accuracy']:.4f} "
        f"test={rec['test_accuracy']:.4f} {rec['wall_seconds']:.1f}s wall "
        f"{rec['cpu_seconds']:.1f}s cpu{' (cached)' if rec.get('cached') else ''}",
        flush=True,
    )


# ====================================================================== part B

LEVERS = {  # the trainer's TrainConfig fields, one lever each
    "ema": {"ema_decay": 0.999},
    "schedule": {"noise_schedule": "linear:0.5"},
    "clip_groups": {"clip_groups": "equal"},
    "augmult": {"augmult": 4},
}
CNN_RECIPE = {  # benchmarks/utility.py's published epsilon = 3 recipe (Tramer & Boneh)
    "optimizer": "momentum",
    "lr": 4.0,
    "clip_norm": 0.1,
    "batch_size": 2048,
}


@dataclasses.dataclass(frozen=True)
class CnnPlan:
    epsilons: tuple[float, ...] = (1.0, 3.0)
    epochs: float = 40
    steps: int | None = None  # overrides epochs (the quick plan)
    seeds: int = 3
    levers: tuple[str, ...] = ("ema", "schedule", "clip_groups", "augmult")
    singles: bool = True  # each lever alone
    combine: str = "helped"  # "helped": the levers that beat dense on validation; "all"; "none"
    batch_size: int = 2048
    augmult: int = 4
    accountant: str = "pld"
    subsample: int | None = None  # the first N examples of each split (the quick plan only)


QUICK_CNN = CnnPlan(
    steps=2,
    seeds=1,
    batch_size=64,
    augmult=2,
    singles=False,
    combine="all",
    accountant="rdp",
    subsample=500,
)


def trainer_levers() -> set[str]:
    """The levers the installed trainer offers (TrainConfig fields)."""
    import dpjax.training

    fields = set(dpjax.training.TrainConfig.__dataclass_fields__)
    return {name for name, spec in LEVERS.items() if set(spec) <= fields}


def _cnn_overrides(plan: CnnPlan, levers: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lever in levers:
        out |= LEVERS[lever]
        if lever == "augmult":
            out["augmult"] = plan.augmult
    return out


def cnn_run(data, plan: CnnPlan, eps: float, levers: tuple[str, ...], seed: int, cache: str):
    import dpjax.training

    overrides = _cnn_overrides(plan, levers)
    hp = CNN_RECIPE | {"batch_size": plan.batch_size}
    config = {
        "part": "B",
        "accountant": plan.accountant,
        "subsample": plan.subsample,
        "epsilon": eps,
        "delta": DELTA,
        "epochs": plan.epochs,
        "steps": plan.steps,
        "seed": seed,
        "levers": sorted(levers),
        "overrides": overrides,
        "hp": hp,
    }
    found = _cached("cnn", config, cache)
    if found is not None or cache == "only":
        return found
    wall, cpu = time.perf_counter(), _cpu_seconds()
    train_config = dpjax.training.TrainConfig(
        dataset="fashion-mnist",
        model="cnn",
        target_epsilon=eps,
        delta=DELTA,
        epochs=None if plan.steps else plan.epochs,
        steps=plan.steps,
        seed=seed,
        accountant=plan.accountant,
        **hp,
        **overrides,
    )
    result = dpjax.training.train(train_config, dataset=data, progress=False)
    s = result.summary
    record = {
        "levers": sorted(levers),
        "test_accuracy": s["test_accuracy"],
        "validation_accuracy": s["validation_accuracy"],
        "epsilon": s["epsilon"],
        "noise_multiplier": s["noise_multiplier"],
        "steps": s["steps"],
        "trainer_wall_seconds": s["wall_seconds"],
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": _cpu_seconds() - cpu,
        "finished_utc": common.machine_description()["timestamp_utc"],
    }
    return _store("cnn", config, record)


def run_part_b(plan: CnnPlan, data, cache: str) -> dict[str, Any]:
    import dataclasses as dc

    import dpjax.data

    if plan.subsample:  # the quick plan: a public choice of the first N examples of each split
        n = plan.subsample
        data = dc.replace(
            data,
            **{
                name: dpjax.data.Split(getattr(data, name).x[:n], getattr(data, name).y[:n])
                for name in ("train", "validation", "test")
            },
        )
    available = trainer_levers()
    wanted = tuple(lever for lever in plan.levers if lever in available)
    missing = [lever for lever in plan.levers if lever not in available]
    if missing:
        print(f"part B: the trainer does not offer {missing} (TrainConfig fields); skipped")
    configs: list[tuple[str, ...]] = [()] + ([(lever,) for lever in wanted] if plan.singles else [])
    points, notes = [], []
    for eps in plan.epsilons:
        rows = [_cnn_point(data, plan, eps, levers, cache) for levers in configs]
        rows = [r for r in rows if r is not None]
        base = next((r for r in rows if not r["levers"]), None)
        if plan.combine == "all":
            combo_levers = wanted
        else:  # every lever whose VALIDATION accuracy beat the dense baseline's
            combo_levers = tuple(
                r["levers"][0]
                for r in rows
                if r["levers"] and base and r["validation_mean"] > base["validation_mean"]
            )
        if plan.combine != "none" and (len(combo_levers) >= 2 or not plan.singles):
            combo = _cnn_point(data, plan, eps, combo_levers, cache)
            if combo is not None:
                combo["combination"] = True
                rows.append(combo)
        elif plan.combine == "helped":
            notes.append(
                f"eps={eps:g}: no combination run; {len(combo_levers)} lever(s) beat dense on "
                f"validation: {list(combo_levers)}"
            )
        points += rows
    return {
        "plan": dataclasses.asdict(plan),
        "train_examples": len(data.train),
        "recipe": CNN_RECIPE,
        "lever_settings": {k: _cnn_overrides(plan, (k,)) for k in LEVERS},
        "levers_missing_in_trainer": missing,
        "levers_not_in_this_plan": [lever for lever in LEVERS if lever not in plan.levers],
        "notes": notes,
        "combination_rule": {
            "helped": "every lever that beat the dense baseline on validation accuracy",
            "all": "every lever together",
            "none": "no combination",
        }[plan.combine],
        "points": points,
        "run_wall_seconds_sum": sum(sum(p["wall_seconds_per_seed"]) for p in points),
        "run_cpu_seconds_sum": sum(sum(p["cpu_seconds_per_seed"]) for p in points),
    }


def _cnn_point(data, plan: CnnPlan, eps: float, levers: tuple[str, ...], cache: str):
    runs = []
    for seed in range(plan.seeds):
        rec = cnn_run(data, plan, eps, levers, seed, cache)
        if rec is None:
            continue
        print(
            f"  B eps={eps:g} levers={'+'.join(levers) or 'dense'} seed={seed} "
            f"val={rec['validation_accuracy']:.4f} test={rec['test_accuracy']:.4f} "
            f"eps_spent={rec['epsilon']:.3f} {rec['wall_seconds']:.0f}s wall "
            f"{rec['cpu_seconds']:.0f}s cpu{' (cached)' if rec.get('cached') else ''}",
            flush=True,
        )
        runs.append(rec)
    if not runs:
        return None
    mean, std = _mean_std([r["test_accuracy"] for r in runs])
    return {
        "epsilon": eps,
        "levers": list(levers),
        "name": "+".join(levers) or "dense",
        "test_accuracy_mean": mean,
        "test_accuracy_std": std,
        "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
        "validation_mean": statistics.fmean(r["validation_accuracy"] for r in runs),
        "epsilon_per_seed": [r["epsilon"] for r in runs],
        "steps": runs[0]["steps"],
        "n_seeds": len(runs),
        "wall_seconds_per_seed": [r["wall_seconds"] for r in runs],
        "cpu_seconds_per_seed": [r["cpu_seconds"] for r in runs],
    }


# ====================================================================== output


def plot(payload: dict[str, Any], path: pathlib.Path) -> None:
    """Left: test accuracy vs k fraction per source (dense as a line). Right: part B's bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = payload.get("part_a"), payload.get("part_b")
    panels = [p for p in (a, b) if p]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.4))
    axes = list(axes) if len(panels) > 1 else [axes]
    i = 0
    if a:
        ax = axes[i]
        i += 1
        colors = {"ema": "C0", "warmup": "C1", "random": "C2"}
        for source in a["plan"]["sources"]:
            pts = sorted(
                (p for p in a["points"] if p["source"] == source), key=lambda p: p["k_fraction"]
            )
            if pts:
                ax.errorbar(
                    [p["k_fraction"] for p in pts],
                    [100 * p["test_accuracy_mean"] for p in pts],
                    yerr=[100 * (p["test_accuracy_std"] or 0) for p in pts],
                    marker="o",
                    capsize=3,
                    color=colors.get(source),
                    label=f"private top-k, source={source}",
                )
        styles = {
            "dense": ("k", "-"),
            "adaptive": ("C3", "--"),
            "schedule": ("C4", ":"),
            "not-private": ("0.6", "-."),
        }
        for kind, (color, ls) in styles.items():
            p = next((p for p in a["points"] if p["kind"] == kind), None)
            if p:
                mean, std = 100 * p["test_accuracy_mean"], 100 * (p["test_accuracy_std"] or 0)
                label = "NOT PRIVATE" if kind == "not-private" else f"{kind} DP-SGD"
                ax.axhline(mean, color=color, ls=ls, label=f"{label} {mean:.1f} %")
                if kind == "dense":
                    ax.axhspan(mean - std, mean + std, color=color, alpha=0.1)
        ax.set_xscale("log")
        d = 10 * a["plan"]["features"] + 10
        ax.set_xlabel(f"k / d (fraction of the d = {d:,} coordinates kept per step)")
        ax.set_ylabel("test accuracy (%)")
        seeds = a["plan"]["seeds"]
        ax.set_title(
            f"A: linear on {a['plan']['features']:,} random features, eps={a['plan']['epsilon']:g}"
            f" ({seeds} seed{'s' if seeds > 1 else ''})",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    if b:
        ax = axes[i]
        pts = b["points"]
        names = [f"{p['name']}\neps={p['epsilon']:g}" for p in pts]
        means = [100 * p["test_accuracy_mean"] for p in pts]
        errs = [100 * (p["test_accuracy_std"] or 0) for p in pts]
        colors = [
            "0.5" if not p["levers"] else ("C1" if p.get("combination") else "C0") for p in pts
        ]
        ax.bar(range(len(pts)), means, yerr=errs, color=colors, capsize=3)
        for x, (m, e) in enumerate(zip(means, errs, strict=True)):
            ax.text(x, m + e + 0.1, f"{m:.2f}", ha="center", fontsize=7)
        ax.set_xticks(range(len(pts)), names, fontsize=7, rotation=30, ha="right")
        lo = min(means) if means else 80
        ax.set_ylim(lo - 2, max(means + [88.0]) + 2)
        ax.axhline(88.0, color="C3", ls="--", lw=1, label="goal 88.0 % (eps = 3)")
        ax.axhline(86.47, color="k", ls=":", lw=1, label="published 40-epoch baseline 86.47 %")
        plan = b["plan"]
        run = f"{plan['steps']} steps" if plan["steps"] else f"{plan['epochs']:g} epochs"
        ax.set_title(f"B: DP CNN on Fashion-MNIST, {run}, {plan['seeds']} seed(s)", fontsize=9)
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    common.save_figure(fig, path, "dpjax: levers that keep accuracy under privacy", dpi=130)


def _acc(p: dict[str, Any]) -> str:
    std = p["test_accuracy_std"]
    return f"{100 * p['test_accuracy_mean']:.2f}" + (f" +- {100 * std:.2f}" if std else "")


def print_tables(payload: dict[str, Any]) -> None:
    for key in ("part_a", "part_a_sensitivity"):
        a = payload.get(key)
        if not a:
            continue
        plan = a["plan"]
        print(
            f"\n{key} (eps={plan['epsilon']:g}, B={plan['batch_size']}, T={plan['steps']}, "
            f"sigma={a['noise_multiplier']:.4f}):"
        )
        print(f"{'method':<20} {'lr':<6} {'test acc (%)':<16} seeds")
        for p in a["points"]:
            print(f"{p['method']:<20} {p['lr']:<6g} {_acc(p):<16} {p['n_seeds']}")
        if a["goal"]:
            print(json.dumps(a["goal"]))
    b = payload.get("part_b")
    if b:
        print("\npart_b:")
        for p in b["points"]:
            print(f"eps={p['epsilon']:g} {p['name']:<30} {_acc(p):<16} {p['n_seeds']} seed(s)")


PARTS = ("part_a", "part_a_sensitivity", "part_b")


def _keep_parts_not_rerun(payload: dict[str, Any], json_out: pathlib.Path) -> None:
    """Carry the parts this invocation did not run over from the JSON it overwrites, unchanged,
    and say so (``kept_from_previous_json``): `--parts B` must not erase part A's results."""
    if not json_out.exists():
        return
    previous = json.loads(json_out.read_text())
    kept = [key for key in PARTS if key not in payload and key in previous]
    if not kept:
        return
    for key in kept:
        payload[key] = previous[key]
    before = previous.get("kept_from_previous_json", {})
    payload["kept_from_previous_json"] = {
        "parts": kept,
        "note": "not rerun by this invocation: copied unchanged from the JSON it replaced; "
        "'machine', 'cache' and the *_total seconds describe this invocation only",
        "written_utc": {
            key: before.get("written_utc", {}).get(
                key, previous.get("machine", {}).get("timestamp_utc")
            )
            for key in kept
        },
    }


def _override(plan: Any, **values: Any) -> Any:
    """`plan` with the fields given on the command line (the values that are not None)."""
    return dataclasses.replace(plan, **{k: v for k, v in values.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny plan (< 1 min), results/quick/")
    parser.add_argument("--parts", nargs="+", choices=("A", "B"), default=["A", "B"])
    a = parser.add_argument_group("part A (linear on random features)")
    a.add_argument("--a-seeds", type=int, default=None, help="seeds per point (default 3)")
    a.add_argument("--a-steps", type=int, default=None)
    a.add_argument("--a-batch-size", type=int, default=None)
    a.add_argument("--features", type=int, default=None)
    a.add_argument("--train-size", type=int, default=None, help="subsample the training split")
    a.add_argument("--fractions", nargs="+", type=float, default=None)
    a.add_argument("--sources", nargs="+", choices=("ema", "warmup", "random", "previous"))
    a.add_argument("--lrs", nargs="+", type=float, default=None)
    a.add_argument(
        "--methods",
        nargs="+",
        choices=("dense", "topk", "adaptive", "schedule", "not-private"),
        default=None,
    )
    b = parser.add_argument_group("part B (DP CNN through the trainer)")
    b.add_argument("--epochs", type=float, default=None, help="default 40 (the recipe)")
    b.add_argument("--seeds", type=int, default=None, help="default 3")
    b.add_argument("--levers", nargs="*", choices=sorted(LEVERS), default=None)
    b.add_argument("--epsilons", nargs="+", type=float, default=None, help="default 1 3")
    b.add_argument("--augmult", type=int, default=None, help="K for the augmult lever (4)")
    b.add_argument(
        "--combine",
        choices=("helped", "all", "none"),
        default=None,
        help="the combination run: levers that beat dense on validation (default), all, none",
    )
    b.add_argument(
        "--no-singles",
        action="store_true",
        help="skip the one-lever runs: the dense baseline and the combination only",
    )
    a.add_argument(
        "--sensitivity",
        action="store_true",
        help="also part A's noisier regime (batch / 4, steps x 4; dense vs top-k warmup, 1 seed)",
    )
    parser.add_argument("--cache", choices=("use", "fresh", "only"), default="use")
    parser.add_argument("--json-out", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    linear = QUICK_LINEAR if args.quick else LinearPlan()
    linear = _override(
        linear,
        seeds=args.a_seeds,
        steps=args.a_steps,
        batch_size=args.a_batch_size,
        features=args.features,
        train_size=args.train_size,
        fractions=tuple(args.fractions) if args.fractions else None,
        sources=tuple(args.sources) if args.sources else None,
        lrs=tuple(args.lrs) if args.lrs else None,
        methods=tuple(args.methods) if args.methods else None,
    )
    cnn = QUICK_CNN if args.quick else CnnPlan()
    cnn = _override(
        cnn,
        epochs=args.epochs,
        seeds=args.seeds,
        levers=tuple(args.levers) if args.levers is not None else None,
        epsilons=tuple(args.epsilons) if args.epsilons else None,
        augmult=args.augmult,
        combine=args.combine,
        singles=False if args.no_singles else None,
    )
    json_out = args.json_out or (QUICK_JSON if args.quick else DEFAULT_JSON)

    import dpjax
    import dpjax.data

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP order warnings
    start, cpu = time.perf_counter(), _cpu_seconds()
    data = dpjax.data.load_dataset("fashion-mnist", seed=0)
    payload: dict[str, Any] = {
        "benchmark": "strategies",
        "description": "levers that keep accuracy under privacy: private top-k, noise "
        "schedules, adaptive and per-layer clipping, EMA, augmentation multiplicity",
        "delta": DELTA,
        "dataset": data.source,
        "split": {
            "train": len(data.train),
            "validation": len(data.validation),
            "test": len(data.test),
        },
        "tuning_privacy_cost": "NOT included in the reported epsilon (Papernot & Steinke, "
        "ICLR 2022); hyperparameters chosen on validation accuracy, seed 0",
        "quick": args.quick,
        "machine": common.machine_description(),
        "dpjax_version": dpjax.__version__,
        "cache": args.cache,
    }
    if "A" in args.parts:
        payload["part_a"] = run_part_a(linear, data, args.cache)
        if args.sensitivity:
            print("part A, noisier regime (sensitivity check):", flush=True)
            payload["part_a_sensitivity"] = run_part_a(sensitivity_plan(linear), data, args.cache)
    if "B" in args.parts:
        payload["part_b"] = run_part_b(cnn, data, args.cache)
    _keep_parts_not_rerun(payload, json_out)
    payload["wall_seconds_total"] = time.perf_counter() - start
    payload["cpu_seconds_total"] = _cpu_seconds() - cpu
    payload["seconds_note"] = (
        "this invocation's; runs reused from the cache keep their own wall/cpu seconds"
    )
    print_tables(payload)
    common.write_json(json_out, payload)
    png = json_out.with_suffix(".png")
    plot(payload, png)
    print(f"\nwrote {json_out} and {png} ({payload['wall_seconds_total']:.0f} s wall)")


if __name__ == "__main__":
    main()
