"""Resuming a run from its checkpoint without trusting it blindly (host side).

A checkpoint is checked before anything in it is used: its format version, its
fields and types, that it was written by a run with the same mechanism
settings and the same data (a keyed fingerprint), that its privacy account is
the account of THIS run's budget and mechanism, and that its step count, the
accountant's step count and the noise counter agree, with the noise key this
run's secret seed derives.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

import dpjax
from dpjax import _validation
from dpjax.data import Split
from dpjax.training import _checkpoint

if TYPE_CHECKING:
    from dpjax.training._config import TrainConfig

CHECKPOINT_VERSION = 2  # 2: keyed fingerprint of the data, full 64-bit keys

FINGERPRINT_FIELDS = (
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
    "clip_groups",
    "augmult",
    "ema_decay",
)
FINGERPRINT_DEFAULTS = {"clip_groups": "none", "augmult": 0, "ema_decay": None}
"""Values of the fields added after version 2 that a checkpoint without them was written with."""


def fingerprint(config: TrainConfig, train_split: Split, seed: int) -> dict[str, Any]:
    """What must not change across a resume: the mechanism's settings and the data itself.

    The data enter through an HMAC keyed with the run's secret seed, never a
    plain hash: a plain hash stored in the checkpoint would confirm a guessed
    training set to anyone who reads it.
    """
    key = dpjax.derive_seed(seed, 3).to_bytes(8, "little")
    digest = hmac.new(key, digestmod=hashlib.sha256)
    for array in (train_split.x, train_split.y):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return {name: getattr(config, name) for name in FINGERPRINT_FIELDS} | {
        "augmult": int(config.augmult) if config.augmult >= 2 else 0,  # 0 and 1 are both off
        "dataset_size": len(train_split),
        "train_hmac_sha256": digest.hexdigest(),
    }


def read_resume_metadata(path: Path | None, config: TrainConfig) -> dict[str, Any] | None:
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

    if meta.get("version") != CHECKPOINT_VERSION:
        raise bad(
            f"it has format version {meta.get('version')!r}, this dpjax reads version "
            f"{CHECKPOINT_VERSION}"
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


def check_fingerprint(path: Path, saved: dict[str, Any], want: dict[str, Any]) -> None:
    """Refuses a checkpoint written by a run with other settings or other data."""
    saved = FINGERPRINT_DEFAULTS | saved
    changed = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
    if changed.pop("train_hmac_sha256", None) is not None:
        changed["training data"] = ("(keyed hash)", "differs")
    if changed:
        raise ValueError(
            f"checkpoint={str(path)!r} was written by a different run; changed settings "
            f"(saved, now): {changed}. Resume with the same settings or pass a new checkpoint path."
        )


def resumed_tracker(
    path: Path, resume: dict[str, Any], fresh: dpjax.PrivacyTracker
) -> dpjax.PrivacyTracker:
    """The checkpoint's account, refused unless it is the account of THIS run's mechanism."""
    tracker = dpjax.PrivacyTracker.from_state_dict(resume["accounting"])
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


def check_resumed_state(
    path: Path,
    step: int,
    tracker: dpjax.PrivacyTracker | None,
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
    return isinstance(x, dpjax.GaussianNoiseState)


def seed_note(seed: int | None, checkpoint: Path | None) -> str:
    """What the summary says about the seed: never its value (summaries get published)."""
    where = (
        "kept only in the checkpoint, which is sensitive"
        if checkpoint is not None
        else "not recorded"
    )
    if seed is None:
        return f"secret (drawn from the OS; {where})"
    return f"explicit (reproducible research; {where}: whoever knows it can regenerate the noise)"
