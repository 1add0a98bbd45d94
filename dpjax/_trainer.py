"""The whole private training job: data -> Poisson batches -> jitted DP step -> accountant.

Host side: sampling, accounting, evaluation bookkeeping and logging. Device side:
one jitted step (per-example gradients -> clip -> accumulate -> noise ->
normalize -> optimizer) compiled once per padded batch shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import (
    _accounting,
    _aggregation,
    _checkpoint,
    _datasets,
    _ghost,
    _models,
    _noise,
    _random,
    _sampling,
    _validation,
)
from dpjax._accumulation import accumulate_clipped_grads
from dpjax._per_example import per_example_grads

OPTIMIZERS = ("adam", "sgd", "momentum")
CLIPPING_MODES = ("auto", "vmap", "ghost")
SUMMARY_FIELDS = (
    "dataset",
    "model",
    "test_accuracy",
    "epsilon",
    "delta",
    "noise_multiplier",
    "sampling_rate",
    "steps",
    "clip_norm",
    "wall_seconds",
)
"""Fields every JSON summary has (among others)."""
NOT_PRIVATE = "NOT PRIVATE"
_CHECKPOINT_VERSION = 2  # 2: keyed fingerprint of the data, full 64-bit keys
MAX_STEPS = 2**31 - 1
"""Most steps a run may take: the noise counter is an int32, and a saturated counter would
reuse one noise key for every later step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (validated when built).

    The defaults are the configuration tuned on the digits VALIDATION split at
    epsilon = 3 (see benchmarks/utility.py).

    Attributes:
      dataset: one of `dpjax.DATASET_NAMES`.
      model: one of `dpjax.MODEL_NAMES`.
      target_epsilon: the privacy budget; training stops before the step that
        would exceed it. With `noise_multiplier=None`, sigma is calibrated so the
        whole run spends (just under) this budget.
      delta: the delta of (epsilon, delta)-DP; must be below 1/N.
      noise_multiplier: sigma; None calibrates it from `target_epsilon`.
      clip_norm: per-example clip norm C.
      batch_size: EXPECTED batch size; the sampling rate is `batch_size / N`.
      epochs: training length in epochs (steps = ceil(epochs * N / batch_size)).
      steps: training length in steps (overrides `epochs`).
      lr: learning rate.
      optimizer: one of `OPTIMIZERS`.
      seed: an integer in [0, 2**64) that seeds the model init, the sampler and
        the noise (independent 64-bit streams derived with
        `numpy.random.SeedSequence`). None (default) draws a secret 64-bit seed
        from the OS (`secrets`); it is never written to the summary or the log,
        only to the (sensitive) checkpoint. An explicit seed is for
        reproducible research: whoever knows it can regenerate the noise.
      microbatch_size: physical batch; None lets the sampler choose.
      eval_every: evaluate every this many steps (and at the end).
      accountant: 'pld' or 'rdp'.
      clipping: how per-example gradients are clipped: 'vmap' (materialize them
        with `jax.vmap`; any model), 'ghost' (book-keeping ghost clipping, one
        backward pass and no per-example gradients: every parameter must be in
        a `GhostLinear`/`GhostConv` layer, as in the 'logreg', 'mlp' and 'cnn'
        models), or 'auto' (ghost when possible). Both give the same clipped
        sum.
      not_private: NOT PRIVATE baseline: no clipping, no noise, no accounting.
    """

    dataset: str = "digits"
    model: str = "mlp"
    target_epsilon: float | None = 3.0
    delta: float = 1e-5
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    batch_size: int = 256
    epochs: float | None = 60.0
    steps: int | None = None
    lr: float = 0.01
    optimizer: str = "adam"
    seed: int | None = None
    microbatch_size: int | None = None
    eval_every: int = 50
    accountant: str = "pld"
    clipping: str = "auto"
    not_private: bool = False

    def __post_init__(self):
        if self.dataset not in _datasets.DATASET_NAMES:
            raise ValueError(
                f"dataset={self.dataset!r} is unknown; pass one of {', '.join(_datasets.DATASET_NAMES)}."
            )
        if self.model not in _models.MODEL_NAMES:
            raise ValueError(
                f"model={self.model!r} is unknown; pass one of {', '.join(_models.MODEL_NAMES)}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r} is unknown; pass one of {', '.join(OPTIMIZERS)}."
            )
        _validation.check_positive_int(self.batch_size, "batch_size", "256")
        _validation.check_positive_float(self.lr, "lr", "1e-3")
        _validation.check_positive_int(self.eval_every, "eval_every", "50")
        _validation.check_accountant(self.accountant)
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(
                f"clipping={self.clipping!r} is unknown; pass one of {', '.join(CLIPPING_MODES)}."
            )
        if self.steps is not None:
            _validation.check_positive_int(self.steps, "steps", "1000")
        elif self.epochs is None:
            raise ValueError("epochs=None and steps=None: pass one of them, e.g. epochs=10.")
        else:
            _validation.check_positive_float(self.epochs, "epochs", "10")
        if self.microbatch_size is not None:
            _validation.check_positive_int(self.microbatch_size, "microbatch_size", "64")
        if self.seed is not None:
            _validation.check_seed(self.seed)
        if self.steps is not None and self.steps > MAX_STEPS:
            raise ValueError(
                f"steps={self.steps!r} exceeds {MAX_STEPS} (2**31 - 1), the most steps whose noise "
                "keys dpjax can keep distinct; pass fewer steps."
            )
        if self.not_private:
            if self.noise_multiplier is not None:
                raise ValueError(
                    f"not_private=True contradicts noise_multiplier={self.noise_multiplier!r}: a "
                    "NOT PRIVATE run adds no noise. Pass noise_multiplier=None with "
                    "not_private=True, or drop not_private for a private run."
                )
            return
        _validation.check_clip_norm(self.clip_norm, "clip_norm")
        _validation.check_delta(self.delta)
        if self.noise_multiplier is not None:
            _validation.check_noise_multiplier(self.noise_multiplier)
        if self.target_epsilon is None and self.noise_multiplier is None:
            raise ValueError(
                "target_epsilon=None and noise_multiplier=None: pass a budget (e.g. target_epsilon=3.0) "
                "or a noise multiplier, or not_private=True for a NOT PRIVATE baseline."
            )
        if self.target_epsilon is not None:
            _validation.check_target_epsilon(self.target_epsilon)


@dataclasses.dataclass
class TrainResult:
    """What a run did and spent.

    Attributes:
      summary: the JSON summary (dataset, model, test_accuracy, epsilon, delta,
        noise_multiplier, sampling_rate, steps, clip_norm, wall_seconds, ...).
      params: the trained parameters.
      history: one dict per evaluation (also written as JSON lines).
    """

    summary: dict[str, Any]
    params: Any
    history: list[dict[str, Any]]


def _check_writable(path: str | os.PathLike | None, name: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if (
        p.is_dir()
        or not parent.is_dir()
        or not os.access(parent, os.W_OK)
        or (p.exists() and not os.access(p, os.W_OK))
    ):
        raise ValueError(
            f"{name}={str(path)!r} is not a writable file path; pass a path in a writable folder."
        )
    return p


def _make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.sgd(lr)


def _cross_entropy(apply, params, x, y):
    logits = apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


def _make_step(apply, tx, *, clip_norm, microbatch_size, expected_batch_size, not_private, ghost):
    """Builds the jitted training step on the device-resident training set."""

    def one_loss(params, example):
        x, y = example
        return _cross_entropy(apply, params, x[None], y[None])[0]

    if not_private:

        def grads_of(params, batch, mask):
            def masked_sum(p):
                losses = _cross_entropy(apply, p, *batch)
                return jnp.sum(jnp.where(mask, losses, 0.0))

            return jax.grad(masked_sum)(params)
    elif ghost:
        clipped = _ghost.ghost_clipped_grads(
            lambda p, batch: _cross_entropy(apply, p, *batch), l2_norm=clip_norm
        )

        def grads_of(params, batch, mask):
            return clipped(params, batch, mask)[0]
    else:
        accumulate = accumulate_clipped_grads(
            per_example_grads(one_loss), l2_norm=clip_norm, microbatch_size=microbatch_size
        )

        def grads_of(params, batch, mask):
            return accumulate(params, batch, mask)[0]

    @jax.jit
    def step(params, opt_state, x_all, y_all, indices, mask):
        batch = (x_all[indices], y_all[indices])
        grads = grads_of(params, batch, mask)
        if not_private:
            grads = jax.tree.map(lambda g: g / expected_batch_size, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def _make_eval(apply, batch_size: int = 1000):
    @jax.jit
    def correct(params, x, y):
        return jnp.sum(jnp.argmax(apply(params, x), axis=-1) == y), jnp.sum(
            _cross_entropy(apply, params, x, y)
        )

    def evaluate(params, split) -> tuple[float, float]:
        hits, total_loss = 0, 0.0
        for i in range(0, len(split), batch_size):
            h, loss = correct(params, split.x[i : i + batch_size], split.y[i : i + batch_size])
            hits, total_loss = hits + int(h), total_loss + float(loss)
        return hits / len(split), total_loss / len(split)

    return evaluate


def plan_run(config: TrainConfig, dataset_size: int) -> dict[str, Any]:
    """Computes what a run will do and spend BEFORE it starts (host side).

    Args:
      config: the run's configuration.
      dataset_size: N, the number of training examples.

    Returns:
      A dict with `sampling_rate`, `steps`, `noise_multiplier`, `planned_epsilon`
      (epsilon after all planned steps; a budget may stop the run earlier),
      `max_steps` (steps the budget allows at that sigma) and `steps_note`.

    Raises:
      ValueError: if delta >= 1/N, if the batch size exceeds N, or if the budget
        is too small for a single step (the message gives the smallest reachable
        epsilon).

    **Privacy:** the plan is computed from public quantities only (N, q, sigma,
    T, delta), never from the data.
    """
    if config.batch_size > dataset_size:
        raise ValueError(
            f"batch_size={config.batch_size} exceeds the training set size {dataset_size}; pass a smaller batch_size."
        )
    q = config.batch_size / dataset_size
    if config.steps is not None:
        steps, note = config.steps, f"{config.steps} steps as given"
    else:
        _, steps, note = _accounting.steps_from_epochs(
            dataset_size, config.batch_size, config.epochs
        )
    plan = {"sampling_rate": q, "steps": steps, "steps_note": note}
    if config.not_private:
        return plan | {"noise_multiplier": 0.0, "planned_epsilon": math.inf, "max_steps": steps}
    _validation.check_delta(config.delta, dataset_size)
    sigma = config.noise_multiplier
    if sigma is None:
        sigma = _accounting.calibrate_noise_multiplier(
            config.target_epsilon, q, steps, config.delta, accountant=config.accountant
        )
    max_steps = steps
    if config.target_epsilon is not None:
        max_steps = _accounting.max_steps(
            sigma, q, config.delta, config.target_epsilon, accountant=config.accountant
        )
        if max_steps < 1:
            smallest = _accounting.compute_epsilon(
                sigma, 1, q, config.delta, accountant=config.accountant
            )
            raise ValueError(
                f"target_epsilon={config.target_epsilon} is too small for even one step at "
                f"noise_multiplier={sigma:.4g}, sampling_rate={q:.4g}: the smallest reachable epsilon is "
                f"{smallest:.4g}. Raise target_epsilon, or raise noise_multiplier / lower batch_size."
            )
    run_steps = min(steps, max_steps)
    eps = _accounting.compute_epsilon(
        sigma, run_steps, q, config.delta, accountant=config.accountant
    )
    return plan | {"noise_multiplier": sigma, "planned_epsilon": eps, "max_steps": max_steps}


def train(
    config: TrainConfig,
    *,
    dataset: _datasets.Dataset | None = None,
    model: _models.FunctionalModel | None = None,
    json_out: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
) -> TrainResult:
    """Trains a model with DP-SGD (or the NOT PRIVATE baseline) and reports what it spent.

    Args:
      config: the run, see :class:`TrainConfig`.
      dataset: a loaded dataset; default `load_dataset(config.dataset, seed=0)` (the
        split is fixed and public; the run's seed never changes it).
      model: a :class:`FunctionalModel`; default `make_model(config.model, ...)`.
      json_out: where to write the JSON summary (checked for writability first).
      log_path: where to write one JSON line per evaluation.
      checkpoint: a `.npz` file. If it exists, the run RESUMES from it: the
        parameters, optimizer and noise state, the step, the seeds and the
        privacy account are restored, so the budget continues and no noise key
        or batch is replayed. It is (re)written every `checkpoint_every` steps,
        at the end, and on Ctrl-C.
      checkpoint_every: steps between checkpoints.
      progress: show a tqdm progress bar with step, loss, accuracy and epsilon.

    Returns:
      A :class:`TrainResult`. Hyperparameters should be tuned on
      `summary["validation_accuracy"]`, never on the test accuracy.

    Raises:
      ValueError: for an invalid configuration, an unwritable output path, a
        model with BatchNorm, or a budget too small for one step.
      KeyboardInterrupt: re-raised after the summary of what was spent so far
        has been written.

    Example:
      >>> import dpjax
      >>> cfg = dpjax.TrainConfig(dataset="digits", model="logreg", target_epsilon=1.0,
      ...                         steps=3, batch_size=128, eval_every=3)
      >>> result = dpjax.train(cfg, progress=False)
      >>> result.summary["epsilon"] <= 1.0
      True

    **Privacy:** batches are Poisson-sampled with rate q = batch_size / N; each
    step clips every example's gradient to `clip_norm`, sums, adds
    N(0, (sigma * clip_norm)^2) noise once and divides by the expected batch
    size; the accountant records every step before its result leaves the step
    (an interrupted step's output is discarded), and the loop stops
    before the step that would exceed `target_epsilon`. Only the parameters
    carry the (epsilon, delta) guarantee: the training loss, validation and
    test accuracy and the clipping counts are computed from the data without
    noise and are for the data owner's eyes. Anyone who knows the seed can
    regenerate the noise: an explicit `seed` must be kept as secret as the data
    (the default draws an unrecorded one).

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
      Tramer & Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021.
    """
    json_path = _check_writable(json_out, "json_out")
    ckpt_path = _check_writable(checkpoint, "checkpoint")
    _validation.check_positive_int(checkpoint_every, "checkpoint_every", "100")
    log_file = _check_writable(log_path, "log_path")
    start = time.perf_counter()
    data = dataset if dataset is not None else _datasets.load_dataset(config.dataset, seed=0)
    resume = _read_resume_metadata(ckpt_path, config)
    seed = resume["seed"] if resume else config.seed
    seed = seed if seed is not None else _random.secret_seed()
    model_seed, noise_seed, sampler_seed = (
        _random.derive_seed(seed, purpose) for purpose in range(3)
    )
    fingerprint = _fingerprint(config, data.train, seed) if ckpt_path is not None else None
    if resume:
        _check_fingerprint(ckpt_path, resume["fingerprint"], fingerprint)
    n = len(data.train)
    plan = plan_run(config, n)
    q, sigma = plan["sampling_rate"], plan["noise_multiplier"]
    if model is None:
        model = _models.make_model(  # the initialisation is not secret: 31 bits are plenty
            config.model, data.input_shape, data.num_classes, seed=model_seed >> 33
        )
    if not config.not_private:
        _models.check_no_batchnorm(model)

    noise_key = _random.key_from_seed(noise_seed)  # all 64 bits, never jax.random.key(int)
    sampler = _sampling.PoissonSampler(
        n,
        expected_batch_size=config.batch_size,
        seed=sampler_seed,
        microbatch_size=config.microbatch_size,
    )
    optimizer = _make_optimizer(config.optimizer, config.lr)
    if config.not_private:
        warnings.warn(
            f"{NOT_PRIVATE}: training without clipping or noise.", _aggregation.NotPrivateWarning, 2
        )
        tx = optimizer
        tracker = None
    else:
        tx = optax.chain(
            _aggregation.noisy_mean(config.clip_norm, sigma, config.batch_size, noise_key),
            optimizer,
        )
        tracker = _accounting.PrivacyTracker(
            config.target_epsilon if config.target_epsilon is not None else math.inf,
            config.delta,
            q,
            accountant=config.accountant,
            dataset_size=n,
        )
        if resume:
            tracker = _resumed_tracker(ckpt_path, resume, tracker)
        if tracker.sampling_rate != sampler.sampling_rate:  # the accountant must be told what runs
            raise AssertionError(
                f"accounted sampling rate {tracker.sampling_rate} != sampler's {sampler.sampling_rate}"
            )
    clipping = _choose_clipping(config, model, data)
    step_fn = _make_step(
        model.apply,
        tx,
        clip_norm=config.clip_norm,
        microbatch_size=sampler.microbatch_size,
        expected_batch_size=config.batch_size,
        not_private=config.not_private,
        ghost=clipping == "ghost",
    )
    evaluate = _make_eval(model.apply)
    params = model.params
    opt_state = tx.init(params)
    steps_done = 0
    if resume:
        (params, opt_state), _ = _checkpoint.load_checkpoint(ckpt_path, (params, opt_state))
        steps_done = resume["step"]
        _check_resumed_state(ckpt_path, steps_done, tracker, opt_state, noise_key)
    x_all, y_all = jnp.asarray(data.train.x), jnp.asarray(data.train.y)

    def save():
        if ckpt_path is not None:
            meta = {
                "version": _CHECKPOINT_VERSION,
                "step": steps_done,
                "seed": seed,
                "fingerprint": fingerprint,
                "accounting": None if tracker is None else tracker.state_dict(),
            }
            _checkpoint.save_checkpoint(ckpt_path, (params, opt_state), meta)

    history: list[dict[str, Any]] = []
    stop_reason, interrupted = "completed", False
    label = "NOT PRIVATE" if config.not_private else "DP-SGD"
    bar = _progress(plan["steps"], label, progress)
    if bar is not None and steps_done:
        bar.update(steps_done)

    def epsilon_now() -> float:
        return math.inf if tracker is None else tracker.epsilon_spent()

    def record_eval() -> dict[str, Any]:
        val_acc, val_loss = evaluate(params, data.validation)
        entry = {
            "step": steps_done,
            "epsilon": epsilon_now(),
            "validation_accuracy": val_acc,
            "validation_loss": val_loss,
            "elapsed_seconds": time.perf_counter() - start,
        }
        history.append(entry)
        if log_file is not None:
            with open(log_file, "a") as f:
                f.write(json.dumps(_finite_or_none(entry)) + "\n")
        if bar is not None:
            bar.set_postfix(
                step=steps_done,
                val_loss=f"{val_loss:.3f}",
                val_acc=f"{val_acc:.3f}",
                eps=f"{entry['epsilon']:.3f}" if tracker else NOT_PRIVATE,
            )
        return entry

    try:
        for t in range(steps_done, plan["steps"]):
            if tracker is not None and not tracker.can_step(sigma):
                stop_reason = "budget"
                break
            batch = sampler.sample(t)
            new_state = step_fn(params, opt_state, x_all, y_all, batch.indices, batch.mask)
            # Account before the new parameters exist outside the step: an interruption before
            # this line discards the step's output (nothing released); after it, at worst one
            # step is over-counted.
            if tracker is not None:
                tracker.record_step(sigma)
            params, opt_state = new_state
            steps_done = t + 1
            if bar is not None:
                bar.update(1)
            if steps_done % config.eval_every == 0:
                record_eval()
            if steps_done % checkpoint_every == 0:
                save()
    except KeyboardInterrupt:
        interrupted, stop_reason = True, "interrupted"
    finally:
        if bar is not None:
            bar.close()
    save()

    if not interrupted and (not history or history[-1]["step"] != steps_done):
        record_eval()
    test_acc, test_loss = evaluate(params, data.test) if not interrupted else (math.nan, math.nan)
    summary = {
        "private": not config.not_private,
        "label": label,
        "dataset": data.name,
        "synthetic_data": data.synthetic,
        "model": config.model,
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "validation_accuracy": history[-1]["validation_accuracy"] if history else math.nan,
        "epsilon": epsilon_now(),
        "target_epsilon": None if config.not_private else config.target_epsilon,
        "delta": None if config.not_private else config.delta,
        "noise_multiplier": sigma,
        "sampling_rate": q,
        "steps": steps_done,
        "planned_steps": plan["steps"],
        "steps_note": plan["steps_note"],
        "stop_reason": stop_reason,
        "clip_norm": None if config.not_private else config.clip_norm,
        "batch_size": config.batch_size,
        "microbatch_size": sampler.microbatch_size,
        "clipping": clipping,
        "dataset_size": n,
        "accountant": None if config.not_private else config.accountant,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "epochs": config.epochs,
        "seed": _seed_note(config.seed, ckpt_path),
        "wall_seconds": time.perf_counter() - start,
        "device": jax.devices()[0].device_kind,
        "accounting_state": None if tracker is None else tracker.state_dict(),
    }
    if json_path is not None:
        json_path.write_text(json.dumps(_finite_or_none(summary), indent=2) + "\n")
    if interrupted:
        raise KeyboardInterrupt(
            f"interrupted after {steps_done} steps; epsilon spent {summary['epsilon']:.4g}"
        )
    return TrainResult(summary=summary, params=params, history=history)


_FINGERPRINT_FIELDS = (
    "target_epsilon",
    "dataset",
    "model",
    "delta",
    "clip_norm",
    "batch_size",
    "optimizer",
    "lr",
    "microbatch_size",
    "accountant",
    "not_private",
)


def _fingerprint(config: TrainConfig, train_split: _datasets.Split, seed: int) -> dict[str, Any]:
    """What must not change across a resume: the mechanism's settings and the data itself.

    The data enter through an HMAC keyed with the run's secret seed, never a
    plain hash: a plain hash stored in the checkpoint would confirm a guessed
    training set to anyone who reads it.
    """
    key = _random.derive_seed(seed, 3).to_bytes(8, "little")
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for array in (train_split.x, train_split.y):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return {name: getattr(config, name) for name in _FINGERPRINT_FIELDS} | {
        "dataset_size": len(train_split),
        "train_hmac_sha256": digest.hexdigest(),
    }


def _read_resume_metadata(path: Path | None, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint's metadata if `path` exists, checked for the fields a resume needs."""
    if path is None or not path.exists():
        return None
    meta = _checkpoint.read_metadata(path)

    def bad(why: str) -> ValueError:
        return ValueError(
            f"checkpoint={str(path)!r} cannot be resumed: {why}. Restore a good copy of the "
            "checkpoint; a new checkpoint path starts a new run, whose budget must then be "
            "accounted together with this one."
        )

    if meta.get("version") != _CHECKPOINT_VERSION:
        raise bad(
            f"it has format version {meta.get('version')!r}, this dpjax reads version "
            f"{_CHECKPOINT_VERSION}"
        )
    for name, kind in (("step", int), ("seed", int), ("fingerprint", dict)):
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise bad(f"its {name!r} is {meta.get(name)!r}")
    try:
        _validation.check_seed(meta["seed"])
        _validation.check_nonnegative_int(meta["step"], "step")
    except ValueError as err:
        raise bad(str(err)) from err
    if not config.not_private and not isinstance(meta.get("accounting"), dict):
        raise bad("it holds no privacy account (a private run's budget never resets)")
    if config.seed is not None and config.seed != meta["seed"]:
        raise ValueError(
            f"seed={config.seed} differs from the checkpoint's seed; resume with the same seed (or none)."
        )
    return meta


def _check_fingerprint(path: Path, saved: dict[str, Any], want: dict[str, Any]) -> None:
    """Refuses a checkpoint written by a run with other settings or other data."""
    changed = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if changed.pop("train_hmac_sha256", None) is not None:
        changed["training data"] = ("(keyed hash)", "differs")
    if changed:
        raise ValueError(
            f"checkpoint={str(path)!r} was written by a different run; changed settings "
            f"(saved, now): {changed}. Resume with the same settings or pass a new checkpoint path."
        )


def _resumed_tracker(
    path: Path, resume: dict[str, Any], fresh: _accounting.PrivacyTracker
) -> _accounting.PrivacyTracker:
    """The checkpoint's account, refused unless it is the account of THIS run's mechanism."""
    tracker = _accounting.PrivacyTracker.from_state_dict(resume["accounting"])
    want = {
        "target_epsilon": fresh.target_epsilon,
        "delta": fresh.delta,
        "sampling_rate": fresh.sampling_rate,
        "accountant": fresh.accountant,
    }
    got = {name: getattr(tracker, name) for name in want}
    if got != want:
        raise ValueError(
            f"checkpoint={str(path)!r} holds a privacy account for another budget or mechanism "
            f"(saved {got}, this run {want}); refusing to resume with a budget that was not this "
            "run's. Restore a good copy of the checkpoint."
        )
    return tracker


def _check_resumed_state(
    path: Path,
    step: int,
    tracker: _accounting.PrivacyTracker | None,
    opt_state: Any,
    noise_key: jax.Array,
) -> None:
    """Cross-checks the step count, the accountant, the noise counter and the noise key."""
    counts = {"checkpoint step": step}
    if tracker is not None:
        counts["accounted steps"] = tracker.steps
        noise = [
            s for s in jax.tree.leaves(opt_state, is_leaf=_is_noise_state) if _is_noise_state(s)
        ]
        if len(noise) != 1:
            raise ValueError(
                f"checkpoint={str(path)!r}: expected one noise state, found {len(noise)}."
            )
        counts["noise draws"] = int(noise[0].count)
        key_data = np.asarray(jax.random.key_data(noise[0].key))
        if not np.array_equal(key_data, np.asarray(jax.random.key_data(noise_key))):
            raise ValueError(
                f"checkpoint={str(path)!r} holds a noise key that is not the one this run's secret "
                "seed derives (zeroed or replaced); refusing to resume with a key that may repeat "
                "or be known. Restore a good copy of the checkpoint."
            )
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"checkpoint={str(path)!r} is inconsistent: {counts} must all be equal. Restore a good "
            "copy of the checkpoint."
        )


def _is_noise_state(x: Any) -> bool:
    return isinstance(x, _noise.GaussianNoiseState)


def _seed_note(seed: int | None, checkpoint: Path | None) -> str:
    """What the summary says about the seed: never its value (summaries get published)."""
    where = (
        "kept only in the checkpoint, which is sensitive"
        if checkpoint is not None
        else "not recorded"
    )
    if seed is None:
        return f"secret (drawn from the OS; {where})"
    return f"explicit (reproducible research; {where}: whoever knows it can regenerate the noise)"


def _choose_clipping(config: TrainConfig, model: _models.FunctionalModel, data) -> str:
    """'ghost' when asked for or when 'auto' and every parameter is in a ghost layer."""
    if config.not_private or config.clipping == "vmap":
        return "vmap"
    sample = (jnp.asarray(data.train.x[:2]), jnp.asarray(data.train.y[:2]))
    ok = _ghost.is_ghost_compatible(
        lambda p, b: _cross_entropy(model.apply, p, *b), model.params, sample
    )
    if config.clipping == "ghost" and not ok:
        raise ValueError(
            f"clipping='ghost' but model={config.model!r} has parameters outside ghost layers "
            "(dpjax.GhostLinear / dpjax.GhostConv); pass clipping='vmap' or 'auto'."
        )
    return "ghost" if ok else "vmap"


def _finite_or_none(value):
    """Strict JSON: NaN/inf become null (a NOT PRIVATE run has no epsilon)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _progress(total: int, label: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="step", dynamic_ncols=True, leave=False)
