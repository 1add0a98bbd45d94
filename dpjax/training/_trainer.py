"""The whole private training job: data -> Poisson batches -> one DP update per step -> accountant.

Host side: planning, sampling, accounting, evaluation, logs and checkpoints.
Device side: one jitted update, :func:`dpjax.private_update` of a clipper and
`optax.chain(dpjax.noisy_mean(...), optimizer)`, compiled once per padded batch
shape. The trainer uses only public pieces of the mechanism.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dpjax
import dpjax.ghost
from dpjax import _validation
from dpjax.data import Dataset, Split, load_dataset
from dpjax.features import scatternet_dataset
from dpjax.models import FunctionalModel, check_no_batchnorm, make_model
from dpjax.training import _checkpoint, _levers, _resume
from dpjax.training._config import RunPlan, TrainConfig, plan_run

PyTree = Any
Loss = Callable[[jax.Array, jax.Array], jax.Array]
"""A per-example loss: `loss(output, target) -> scalar` for ONE example's model output."""

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


def classification_loss(logits: jax.Array, label: jax.Array) -> jax.Array:
    """Softmax cross-entropy of ONE example's logits and integer label (the default loss).

    Args:
      logits: `(num_classes,)`.
      label: an integer in `[0, num_classes)`.

    Returns:
      The scalar loss.

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.training import classification_loss
      >>> round(float(classification_loss(jnp.zeros(4), jnp.array(1))), 4)
      1.3863
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, label)


@dataclasses.dataclass
class TrainResult:
    """What a run did and spent.

    Attributes:
      summary: the JSON summary (dataset, model, test_accuracy, epsilon, delta,
        noise_multiplier, sampling_rate, steps, clip_norm, wall_seconds, ...).
      params: the trained parameters: their exponential moving average when
        `config.ema_decay` is set (`summary["evaluated_params"]` says which).
      history: one dict per evaluation (also written as JSON lines).
    """

    summary: dict[str, Any]
    params: Any
    history: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Outputs:
    """Where a run writes, each path checked for writability before any work."""

    json_out: Path | None
    log: Path | None
    checkpoint: Path | None
    checkpoint_every: int

    @classmethod
    def check(cls, json_out, log_path, checkpoint, checkpoint_every) -> _Outputs:
        return cls(
            _check_writable(json_out, "json_out"),
            _check_writable(log_path, "log_path"),
            _check_writable(checkpoint, "checkpoint"),
            _validation.check_positive_int(checkpoint_every, "checkpoint_every", "100"),
        )


@dataclasses.dataclass
class _State:
    """The mutable part of a run: parameters, optimizer state, steps done, and the EMA if kept."""

    params: PyTree
    opt_state: Any
    steps_done: int
    ema: PyTree | None = None

    @property
    def tree(self) -> tuple:
        """What a checkpoint holds: `(params, opt_state)`, and the EMA when kept."""
        base = (self.params, self.opt_state)
        return base if self.ema is None else (*base, self.ema)

    @property
    def evaluated(self) -> PyTree:
        """The parameters evaluated and returned: the EMA when kept, else the last ones."""
        return self.params if self.ema is None else self.ema


def train(
    config: TrainConfig,
    *,
    dataset: Dataset | None = None,
    model: FunctionalModel | None = None,
    loss: Loss | None = None,
    json_out: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    progress: bool = True,
) -> TrainResult:
    """Trains a model with DP-SGD (or the NOT PRIVATE baseline) and reports what it spent.

    Args:
      config: the run, see :class:`TrainConfig`.
      dataset: a :class:`dpjax.data.Dataset` (any arrays: images, features,
        tokens; targets of any shape); default `load_dataset(config.dataset,
        seed=0)` (the split is fixed and public; the run's seed never changes it).
      model: a :class:`dpjax.models.FunctionalModel`; default
        `make_model(config.model, ...)`.
      loss: the per-example objective, `loss(output, target) -> scalar` for ONE
        example's model output and target; default :func:`classification_loss`
        (accuracy is then reported too; with another loss only the loss is).
      json_out: where to write the JSON summary (checked for writability first).
      log_path: where to write one JSON line per evaluation.
      checkpoint: a `.npz` file. If it exists, the run RESUMES from it after
        checking it: the parameters, optimizer and noise state, the step, the
        seed and the privacy account are restored, so the budget continues and
        no noise key or batch is replayed. It is (re)written every
        `checkpoint_every` steps, at the end, and on Ctrl-C or SIGTERM
        (written atomically: a failed write keeps the last good one). It is SENSITIVE
        (it holds the secret seed): keep it with the data.
      checkpoint_every: steps between checkpoints.
      progress: show a tqdm progress bar with step, loss, accuracy and epsilon.

    Returns:
      A :class:`TrainResult`. Hyperparameters should be tuned on
      `summary["validation_accuracy"]`, never on the test accuracy.

    Raises:
      ValueError: for an invalid configuration, an unwritable output path, a
        model with BatchNorm, a budget too small for one step, or a checkpoint
        that is corrupt, inconsistent or from another run.
      KeyboardInterrupt: re-raised after the summary of what was spent so far
        has been written.

    Example:
      >>> import dpjax.training
      >>> cfg = dpjax.training.TrainConfig(dataset="digits", model="logreg", target_epsilon=1.0,
      ...                                  steps=3, batch_size=128, eval_every=3)
      >>> result = dpjax.training.train(cfg, progress=False)
      >>> result.summary["epsilon"] <= 1.0
      True

    **Privacy:** batches are Poisson-sampled with rate q = batch_size / N; each
    step clips every example's gradient to `clip_norm`, sums, adds
    N(0, (sigma * clip_norm)^2) noise once and divides by the expected batch
    size (with `noise_schedule`, step t uses sigma_t and records
    `PoissonGaussianSteps(sigma_t, q)`; with `clip_groups`, layer g is clipped
    to C_g and the sum's sensitivity is sqrt(sum_g C_g^2) = clip_norm; with
    `augmult`, an example's loss is the mean over its augmentations before
    clipping; the EMA of `ema_decay` is post-processing: none of these spends
    more than the accountant records);
    the accountant records every step before its result leaves the step
    (an interrupted step's output is discarded), and the loop stops before the
    step that would exceed `target_epsilon`. Only the parameters carry the
    (epsilon, delta) guarantee: the training loss, validation and test metrics
    and the clipping counts are computed from the data without noise and are
    for the data owner's eyes. The noise key and the sampler's seed come from
    a secret 64-bit seed (drawn from the OS unless `config.seed` is given);
    no summary or log records it.

    References:
      Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
      Tramer & Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021.
    """
    outputs = _Outputs.check(json_out, log_path, checkpoint, checkpoint_every)
    start = time.perf_counter()
    data = dataset if dataset is not None else load_dataset(config.dataset, seed=0)
    if config.features == "scatternet":  # data-independent, per example: no privacy cost
        data = scatternet_dataset(data)
    resume = _resume.read_resume_metadata(outputs.checkpoint, config)
    seed = _master_seed(config, resume)
    fingerprint = None
    if outputs.checkpoint is not None:
        fingerprint = _resume.fingerprint(config, data.train, seed)
        if resume:
            _resume.check_fingerprint(outputs.checkpoint, resume["fingerprint"], fingerprint)
    augmult = config.augmult if config.augmult >= 2 else 0
    if augmult and len(data.input_shape) != 3:
        raise ValueError(
            f"augmult={config.augmult} augments images, but dataset {data.name!r} has inputs of "
            f"shape {tuple(data.input_shape)}, not (H, W, C); pass augmult=0 for other inputs."
        )
    n = len(data.train)
    plan = plan_run(config, n)
    model = model or make_model(  # the initialisation is not secret: 31 bits are plenty
        config.model, data.input_shape, _num_classes(data), seed=dpjax.derive_seed(seed, 0) >> 33
    )
    if not config.not_private:
        check_no_batchnorm(model)
    loss = loss or classification_loss
    _check_inputs(data, model.params, classification=loss is classification_loss)
    clip = _levers.group_clip_norms(config.clip_groups, config.clip_norm, model.params)
    sampler = dpjax.PoissonSampler(
        n,
        expected_batch_size=config.batch_size,
        seed=dpjax.derive_seed(seed, 2),
        microbatch_size=config.microbatch_size,
    )
    noise_key = dpjax.key_from_seed(dpjax.derive_seed(seed, 1))
    tracker = _tracker(config, plan, n, outputs.checkpoint, resume)
    clipping, clipper = _clipper(
        config, model, loss, data.train, sampler.microbatch_size, clip=clip, flip=_flips(data)
    )
    tx = optax.chain(_noisy_mean(config, plan, noise_key), _optimizer(config.optimizer, config.lr))
    update = dpjax.private_update(clipper, tx)

    @jax.jit
    def step(params, opt_state, x_all, y_all, indices, mask):
        return update(params, opt_state, (x_all[indices], y_all[indices]), mask)

    # Augmentation randomness: its own stream (never the noise's), one key per step and example.
    augment_key = dpjax.key_from_seed(dpjax.derive_seed(seed, 4)) if augmult else None

    @jax.jit
    def augmented_step(params, opt_state, x_all, y_all, indices, mask, step_key):
        keys = jax.vmap(lambda i: jax.random.key_data(jax.random.fold_in(step_key, i)))(indices)
        return update(params, opt_state, (x_all[indices], y_all[indices], keys), mask)

    def run_step(t, params, opt_state, x_all, y_all, indices, mask):
        if augment_key is None:
            return step(params, opt_state, x_all, y_all, indices, mask)
        key_t = jax.random.fold_in(augment_key, t)
        return augmented_step(params, opt_state, x_all, y_all, indices, mask, key_t)

    ema_decay = config.ema_decay
    ema_step = jax.jit(lambda ema, params, t: _levers.ema_update(ema, params, ema_decay or 0.0, t))
    state = _State(
        model.params, tx.init(model.params), 0, None if ema_decay is None else model.params
    )
    if resume and outputs.checkpoint is not None:
        restored, _ = _checkpoint.load_checkpoint(outputs.checkpoint, state.tree)
        state.params, state.opt_state = restored[0], restored[1]
        state.ema = restored[2] if ema_decay is not None else None
        state.steps_done = resume["step"]
        if not _all_finite(state.tree):
            raise ValueError(
                f"checkpoint={str(outputs.checkpoint)!r} holds non-finite parameters or optimizer "
                "state (NaN or inf); restore a good copy of the checkpoint."
            )
        _resume.check_resumed_state(
            outputs.checkpoint, state.steps_done, tracker, state.opt_state, noise_key
        )

    def save() -> None:
        if outputs.checkpoint is not None:
            meta = {
                "version": _resume.CHECKPOINT_VERSION,
                "step": state.steps_done,
                "seed": seed,
                "fingerprint": fingerprint,
                "accounting": None if tracker is None else tracker.state_dict(),
            }
            _checkpoint.save_checkpoint(outputs.checkpoint, state.tree, meta)

    evaluator = _Evaluator(model.apply, loss, classification=loss is classification_loss)
    log = _Log(outputs.log, _progress(plan.steps, _label(config), progress), tracker, start)
    if log.bar is not None and state.steps_done:
        log.bar.update(state.steps_done)
    release = (
        None
        if tracker is None
        else dpjax.PoissonGaussianSteps(plan.noise_multiplier, plan.sampling_rate)
    )
    schedule = plan.noise_schedule
    if tracker is not None and schedule is not None and state.steps_done < plan.steps:
        # Check the planned rest of the schedule once; each step is still recorded before it
        # is released, and one off the plan would be checked on its own.
        rest = [schedule.at(t) for t in range(state.steps_done, min(plan.steps, schedule.steps))]
        tracker.reserve([dpjax.PoissonGaussianSteps(s, plan.sampling_rate) for s in rest])
    x_all, y_all = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
    stop_reason, interrupted = "completed", False
    restore_signals = _interrupt_on_sigterm()  # SIGTERM ends the run as Ctrl-C does
    try:
        for t in range(state.steps_done, plan.steps):
            batch = sampler.sample(t)
            new = run_step(
                t, state.params, state.opt_state, x_all, y_all, batch.indices, batch.mask
            )
            new_ema = None  # the average after step t (post-processing of its parameters)
            if state.ema is not None:
                new_ema = ema_step(state.ema, new[0], jnp.asarray(t, jnp.int32))
            # Checked and recorded BEFORE the new parameters leave the step: a refused or
            # interrupted step's output is discarded (nothing released).
            if tracker is not None and release is not None:
                if schedule is not None:  # step t was noised with the schedule's sigma_t
                    release = dpjax.PoissonGaussianSteps(schedule.at(t), plan.sampling_rate)
                try:
                    tracker.record(release)
                except dpjax.BudgetExceededError:
                    stop_reason = "budget"
                    break
            (state.params, state.opt_state), state.steps_done = new, t + 1
            state.ema = new_ema
            log.step()
            if state.steps_done % config.eval_every == 0:
                log.evaluation(state.steps_done, evaluator(state.evaluated, data.validation))
            if state.steps_done % outputs.checkpoint_every == 0:
                save()
    except KeyboardInterrupt:
        interrupted, stop_reason = True, "interrupted"
    finally:
        restore_signals()
        log.close()
    save()

    if not interrupted and (not log.history or log.history[-1]["step"] != state.steps_done):
        log.evaluation(state.steps_done, evaluator(state.evaluated, data.validation))
    test = evaluator(state.evaluated, data.test) if not interrupted else (math.nan, math.nan)
    summary = _summary(config, data, plan, sampler, tracker, clipping, log.history, test)
    summary |= _lever_summary(config, plan, clip, augmult)
    summary |= {
        "steps": state.steps_done,
        "stop_reason": stop_reason,
        "noise_sampler": config.noise_sampler,
        "seed": _resume.seed_note(config.seed, outputs.checkpoint),
        "wall_seconds": time.perf_counter() - start,
    }
    if outputs.json_out is not None:
        outputs.json_out.write_text(json.dumps(_finite_or_none(summary), indent=2) + "\n")
    if interrupted:
        raise KeyboardInterrupt(
            f"interrupted after {state.steps_done} steps; epsilon spent {summary['epsilon']:.4g}"
        )
    return TrainResult(summary=summary, params=state.evaluated, history=log.history)


# ----------------------------------------------------------------------- the pieces


def _all_finite(tree: PyTree) -> bool:
    """Whether every floating-point leaf of `tree` is finite (keys and integers pass)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree) if not _checkpoint._is_key(x)]
    return all(bool(np.isfinite(x).all()) for x in leaves if x.dtype.kind in "fc")


def _check_inputs(data: Dataset, params: PyTree, *, classification: bool) -> None:
    """Refuses NaN/inf inputs or parameters and, for classification, labels that are not classes.

    Host side, before any step. (The mechanism itself would survive them: a
    non-finite gradient row contributes nothing to the clipped sum; but such a
    run learns nothing, and an out-of-range label would be clamped silently by
    the gather inside the loss.) The error goes to the data owner running the
    job, never into a release.
    """
    if not _all_finite(params):
        raise ValueError(
            "the model's initial parameters hold NaN or inf; initialize them with finite values."
        )
    for part in ("train", "validation", "test"):
        split: Split = getattr(data, part)
        if len(split) and split.x.dtype.kind == "f" and not np.isfinite(split.x).all():
            bad = int(np.count_nonzero(~np.isfinite(split.x).reshape(len(split), -1).all(axis=1)))
            raise ValueError(
                f"dataset {data.name!r} {part} inputs hold NaN or inf in {bad} example(s); clean "
                "or drop them before training (nothing was trained)."
            )
        if not classification or not len(split):
            continue
        y, k = split.y, data.num_classes
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise ValueError(
                f"dataset {data.name!r} {part} labels are {y.dtype}{list(y.shape)}; the "
                "classification loss needs one integer class per example, shape (N,). Pass "
                "integer labels, or loss= for another objective."
            )
        if k is not None and (int(y.min()) < 0 or int(y.max()) >= k):
            raise ValueError(
                f"dataset {data.name!r} {part} labels range over [{int(y.min())}, {int(y.max())}] "
                f"but num_classes={k}: every label must be in [0, {k}). Fix the labels or "
                "num_classes."
            )


def _interrupt_on_sigterm() -> Callable[[], None]:
    """Turns SIGTERM into KeyboardInterrupt (as SIGINT is) until the returned function is called.

    The run then stops between steps, discards the unfinished step, writes its
    checkpoint and summary, and re-raises. Only in the main thread (where Python
    delivers signals); elsewhere nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: Any) -> None:
        del frame
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _num_classes(data: Dataset) -> int:
    if data.num_classes is None:
        raise ValueError(
            f"dataset {data.name!r} has no num_classes, so no zoo model fits it; pass model= "
            "(a dpjax.models.FunctionalModel) and loss= for a non-classification objective."
        )
    return data.num_classes


def _master_seed(config: TrainConfig, resume: dict[str, Any] | None) -> int:
    """The checkpoint's seed, the explicit one, or a fresh secret 64-bit seed from the OS."""
    if resume:
        return resume["seed"]
    return config.seed if config.seed is not None else dpjax.secret_seed()


def _tracker(
    config: TrainConfig,
    plan: RunPlan,
    dataset_size: int,
    checkpoint: Path | None,
    resume: dict[str, Any] | None,
) -> dpjax.PrivacyTracker | None:
    """The run's account: fresh, or the checkpoint's once it is checked to be this run's."""
    if config.not_private:
        return None
    tracker = dpjax.PrivacyTracker(
        config.target_epsilon if config.target_epsilon is not None else math.inf,
        config.delta,
        plan.sampling_rate,
        accountant=config.accountant,
        dataset_size=dataset_size,
    )
    if resume and checkpoint is not None:
        tracker = _resume.resumed_tracker(checkpoint, resume, tracker)
    return tracker


def _losses(apply: Callable, loss: Loss) -> Callable[[PyTree, PyTree], jax.Array]:
    """`(params, (x, y)) -> (B,)`: the model on the whole batch, the loss per example."""

    def losses_fn(params: PyTree, batch: PyTree) -> jax.Array:
        x, y = batch
        return jax.vmap(loss)(apply(params, x), y)

    return losses_fn


def _clipper(
    config: TrainConfig,
    model: FunctionalModel,
    loss: Loss,
    train_split: Split,
    microbatch: int,
    *,
    clip: float | dpjax.GroupClipNorms | None = None,
    flip: bool = False,
) -> tuple[str, Callable[[PyTree, PyTree, jax.Array], dpjax.ClippedSum]]:
    """The clipper the configuration asks for: ghost when asked (or 'auto' and possible), else vmap.

    `clip` is the clip norm or per-layer norms (default `config.clip_norm`).
    With `config.augmult >= 2` it is the vmap clipper of
    :func:`_levers.augmult_loss`, whose batch is `(x, y, key_data)`.
    """
    clip = config.clip_norm if clip is None else clip
    losses_fn = _losses(model.apply, loss)
    if config.not_private:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dpjax.NotPrivateWarning)  # warned once, in _noisy_mean
            return "none", dpjax.not_private_grads(losses_fn)
    augmult = config.augmult >= 2
    if config.clipping != "vmap" and not augmult:  # ghost norms are per row, augmult's per example
        probe = (jnp.asarray(train_split.x[:2]), jnp.asarray(train_split.y[:2]))
        ok = dpjax.ghost.is_ghost_compatible(losses_fn, model.params, probe)
        if ok:
            ghost = dpjax.ghost.ghost_clipped_grads(losses_fn, l2_norm=clip)
            return "ghost", dpjax.accumulate_microbatches(ghost, microbatch_size=microbatch)
        if config.clipping == "ghost":
            raise ValueError(
                f"clipping='ghost' but model={config.model!r} cannot be clipped in one backward "
                "pass (a parameter outside the ghost layers, or a model that mixes examples); "
                "pass clipping='vmap' or 'auto'."
            )

    def one_loss(params: PyTree, example: PyTree) -> jax.Array:
        x, y = example
        return loss(model.apply(params, x[None])[0], y)

    per_example_loss: Callable[[PyTree, PyTree], jax.Array] = one_loss
    if augmult:
        per_example_loss = _levers.augmult_loss(model.apply, loss, config.augmult, flip=flip)
    grads = dpjax.per_example_grads(per_example_loss)
    return "vmap", dpjax.accumulate_clipped_grads(grads, l2_norm=clip, microbatch_size=microbatch)


def _flips(data: Dataset) -> bool:
    """Whether augmentations may mirror the images (flip-invariant data sets only)."""
    return data.name in _levers.FLIP_DATASETS


def _noisy_mean(config: TrainConfig, plan: RunPlan, key: jax.Array) -> optax.GradientTransformation:
    """The Gaussian mechanism and the expected-size mean, or the labelled NOT PRIVATE mean."""
    if config.not_private:
        warnings.warn(
            f"{NOT_PRIVATE}: training without clipping or noise.", dpjax.NotPrivateWarning, 3
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dpjax.NotPrivateWarning)
            return dpjax.non_private_mean(config.batch_size)
    if plan.noise_schedule is not None:  # sigma_t at the noise stage's own step counter
        return dpjax.noisy_mean(plan.noise_schedule, config.batch_size, key)
    if config.noise_sampler == "discrete":  # noisy_mean's chain with the exact sampler
        return optax.chain(
            dpjax.gaussian_mechanism(plan.noise_multiplier, key, sampler="discrete"),
            dpjax.scale_by_expected_batch_size(config.batch_size),
        )
    return dpjax.noisy_mean(plan.noise_multiplier, config.batch_size, key)


def _optimizer(name: str, lr: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    return optax.sgd(lr)


def _label(config: TrainConfig) -> str:
    return NOT_PRIVATE if config.not_private else "DP-SGD"


class _Evaluator:
    """Mean loss (and accuracy for classification) of a split, in chunks (not private)."""

    def __init__(self, apply: Callable, loss: Loss, *, classification: bool, chunk: int = 1000):
        self.classification, self.chunk = classification, chunk

        @jax.jit
        def sums(params, x, y):
            out = apply(params, x)
            hits = jnp.sum(jnp.argmax(out, axis=-1) == y) if classification else jnp.zeros(())
            return hits, jnp.sum(jax.vmap(loss)(out, y))

        self.sums = sums

    def __call__(self, params: PyTree, split: Split) -> tuple[float, float]:
        """`(accuracy or nan, mean loss)` over `split`."""
        hits, total = 0, 0.0
        for i in range(0, len(split), self.chunk):
            h, value = self.sums(params, split.x[i : i + self.chunk], split.y[i : i + self.chunk])
            hits, total = hits + int(h), total + float(value)
        n = max(len(split), 1)
        return (hits / n if self.classification else math.nan), total / n


class _Log:
    """The evaluation history, its JSON-lines log and the progress bar."""

    def __init__(self, path: Path | None, bar: Any, tracker: Any, start: float):
        self.path, self.bar, self.tracker, self.start = path, bar, tracker, start
        self.history: list[dict[str, Any]] = []

    def epsilon(self) -> float:
        return math.inf if self.tracker is None else self.tracker.epsilon_spent()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def evaluation(self, step: int, metrics: tuple[float, float]) -> None:
        accuracy, loss = metrics
        entry = {
            "step": step,
            "epsilon": self.epsilon(),
            "validation_accuracy": accuracy,
            "validation_loss": loss,
            "elapsed_seconds": time.perf_counter() - self.start,
        }
        self.history.append(entry)
        if self.path is not None:
            _append_line(self.path, json.dumps(_finite_or_none(entry)))
        if self.bar is not None:
            self.bar.set_postfix(
                step=step,
                val_loss=f"{loss:.3f}",
                val_acc=f"{accuracy:.3f}",
                eps=f"{entry['epsilon']:.3f}" if self.tracker else NOT_PRIVATE,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary(
    config: TrainConfig,
    data: Dataset,
    plan: RunPlan,
    sampler: dpjax.PoissonSampler,
    tracker: dpjax.PrivacyTracker | None,
    clipping: str,
    history: list[dict[str, Any]],
    test: tuple[float, float],
) -> dict[str, Any]:
    private = not config.not_private
    return {
        "private": private,
        "label": _label(config),
        "dataset": data.name,
        "synthetic_data": data.synthetic,
        "model": config.model,
        "test_accuracy": test[0],
        "test_loss": test[1],
        "validation_accuracy": history[-1]["validation_accuracy"] if history else math.nan,
        "epsilon": math.inf if tracker is None else tracker.epsilon_spent(),
        "target_epsilon": config.target_epsilon if private else None,
        "delta": config.delta if private else None,
        "noise_multiplier": plan.noise_multiplier,
        "sampling_rate": plan.sampling_rate,
        "planned_steps": plan.steps,
        "steps_note": plan.steps_note,
        "clip_norm": config.clip_norm if private else None,
        "batch_size": config.batch_size,
        "microbatch_size": sampler.microbatch_size,
        "clipping": clipping,
        "dataset_size": len(data.train),
        "accountant": config.accountant if private else None,
        "optimizer": config.optimizer,
        "lr": config.lr,
        "epochs": config.epochs,
        "device": jax.devices()[0].device_kind,
        "accounting_state": None if tracker is None else tracker.state_dict(),
    }


def _lever_summary(
    config: TrainConfig,
    plan: RunPlan,
    clip: float | dpjax.GroupClipNorms,
    augmult: int,
) -> dict[str, Any]:
    """What the levers did: the sigma phases, the per-layer norms, the EMA, the augmult."""
    return {
        "noise_schedule": config.noise_schedule,
        "noise_phases": [[sigma, steps] for sigma, steps in plan.phases],
        "clip_groups": config.clip_groups,
        "clip_norms": dict(clip.norms) if isinstance(clip, dpjax.GroupClipNorms) else None,
        "ema_decay": config.ema_decay,
        "evaluated_params": "final" if config.ema_decay is None else "ema",
        "augmult": augmult,
        "features": config.features,
    }


def _append_line(path: Path, line: str) -> None:
    """Appends one line with a single O_APPEND write, after a newline if the file ends mid-line.

    A run killed mid-write leaves at most a torn last line; the next line (e.g. of the
    resumed run) starts on a line of its own, so every complete line stays one JSON record.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        torn = False
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                torn = f.read(1) != b"\n"
        os.write(fd, (("\n" if torn else "") + line + "\n").encode())
    finally:
        os.close(fd)


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
