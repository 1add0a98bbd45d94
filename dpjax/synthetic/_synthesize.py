"""The whole path: one accounted release, a generator fitted to it, samples, a privacy statement.

Host side. :func:`synthesize` is what ``dpjax synthesize`` and the benchmark run.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

import dpjax
from dpjax import _validation
from dpjax.data import Dataset
from dpjax.synthetic._features import DCTBasis, RandomFourierFeatures
from dpjax.synthetic._generators import (
    ClassGaussians,
    Generator,
    GeneratorConfig,
    fit_class_gaussians,
    sample,
    train_generator,
)
from dpjax.synthetic._release import calibrate_release_noise, release_embedding, release_moments

METHODS = ("gaussian", "merf")
"""``"gaussian"``: one Gaussian per class from released moments in a public DCT basis;
``"merf"``: DP-MERF (released random-feature embedding, then a generator trained on it)."""

_FEATURE_SEED = 0x5EED  # public: the random features are part of the published method


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticData:
    """Samples, the model they came from, and the privacy statement of the release.

    Attributes:
      x: float32 samples in [0, 1], `(M, *input_shape)`.
      y: int32 labels, `(M,)`.
      model: the fitted :class:`Generator` or :class:`ClassGaussians`.
      statement: the JSON-ready privacy statement (epsilon, delta, mechanism,
        what the guarantee covers, the accountant's state).
      tracker: the :class:`dpjax.PrivacyTracker` (one release recorded).
      seconds: wall time of each stage (release, fit, sample).

    Example:
      >>> from dpjax.synthetic import SyntheticData
      >>> "statement" in SyntheticData.__dataclass_fields__
      True
    """

    x: np.ndarray
    y: np.ndarray
    model: Generator | ClassGaussians
    statement: dict[str, Any]
    tracker: dpjax.PrivacyTracker
    seconds: dict[str, float]


def _square_side(dataset: Dataset) -> int:
    shape = tuple(dataset.input_shape)
    if len(shape) not in (2, 3) or shape[0] != shape[1] or (len(shape) == 3 and shape[2] != 1):
        raise ValueError(
            f"dataset {dataset.name!r} has input_shape={shape}; synthesize takes square grey "
            "images (side, side, 1), e.g. 'digits' or 'fashion-mnist'."
        )
    return int(shape[0])


@dataclasses.dataclass(frozen=True)
class _RunSetup:
    """The validated public numbers of one `synthesize*` run, and its keys (repr hides them)."""

    side: int
    n: int
    k: int
    eps: float
    delta: float
    m: int
    research: bool
    noise_key: jax.Array = dataclasses.field(repr=False)
    seeds: tuple[int, ...] = dataclasses.field(repr=False)


def _run_setup(
    dataset: Dataset,
    target_epsilon: float,
    delta: float,
    num_samples: int | None,
    seed: int | None,
    streams: int = 2,
) -> _RunSetup:
    """Checks a `synthesize*` call's arguments; derives the noise key and `streams` seeds.

    With `seed` (research mode) the key is `derive_seed(seed, 1)`'s and the i-th seed
    `derive_seed(seed, 2 + i)`; without it, all come from the OS (secret).
    """
    if not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a dpjax.data.Dataset; got {type(dataset).__name__}.")
    if dataset.num_classes is None:
        raise ValueError(f"dataset {dataset.name!r} has no classes; synthesize needs labels.")
    side = _square_side(dataset)
    n = len(dataset.train)
    eps = _validation.check_target_epsilon(target_epsilon)
    delta = _validation.check_delta(delta, n)
    m = n if num_samples is None else _validation.check_positive_int(num_samples, "num_samples")
    if seed is not None:
        seed = _validation.check_seed(seed)
        noise_key = dpjax.key_from_seed(dpjax.derive_seed(seed, 1))
        seeds = tuple(dpjax.derive_seed(seed, 2 + i) for i in range(streams))
    else:
        noise_key = dpjax.secret_key()
        seeds = tuple(dpjax.secret_seed() for _ in range(streams))
    k = int(dataset.num_classes)
    return _RunSetup(side, n, k, eps, delta, m, seed is not None, noise_key, seeds)


def synthesize(
    dataset: Dataset,
    *,
    target_epsilon: float,
    delta: float = 1e-5,
    method: str = "gaussian",
    num_samples: int | None = None,
    seed: int | None = None,
    generator_config: GeneratorConfig | None = None,
    progress: bool = False,
) -> SyntheticData:
    """Spends `target_epsilon` once on a release of `dataset.train`, then generates freely.

    Host side. Calibrates sigma for ONE Gaussian release
    (:func:`calibrate_release_noise`), records it in a fresh
    :class:`dpjax.PrivacyTracker` and releases (:func:`release_moments` for
    ``"gaussian"``, :func:`release_embedding` for ``"merf"``); then fits the
    model to the release alone and samples. All method parameters (basis size,
    radius, feature count, length scale, generator) are fixed public functions of
    the image size, never of the data.

    Args:
      dataset: a :class:`dpjax.data.Dataset` of square grey images; only
        `dataset.train` is read (the private data).
      target_epsilon: the budget, > 0.
      delta: the delta, in (0, 1/N).
      method: one of :data:`METHODS`.
      num_samples: how many samples (default: as many as `dataset.train`).
      seed: None (default) draws the noise key from the OS (a real run); an
        integer makes the run reproducible (research mode: not for sensitive data).
      generator_config: DP-MERF's :class:`GeneratorConfig` (default: the defaults).
      progress: show tqdm bars on the long steps.

    Returns:
      The :class:`SyntheticData`.

    Raises:
      ValueError: for an invalid argument.

    Example:
      >>> from dpjax.data import load_dataset
      >>> from dpjax.synthetic import synthesize
      >>> out = synthesize(load_dataset("digits"), target_epsilon=10.0, num_samples=100, seed=0)
      >>> out.x.shape, out.statement["releases_of_real_data"]
      ((100, 8, 8, 1), 1)

    **Privacy:** (epsilon, delta)-DP for the training split under add/remove of
    one example, by one Gaussian release of sensitivity 1 (the tracker's
    account); samples, model and any use of them are post-processing. A fixed
    `seed` makes the noise predictable to whoever knows it: research only. The
    statement never holds a seed or key: ``"seed"`` says in words whether it was
    explicit (research mode, ``"research_mode": true``) or secret, as the
    trainer's summary does. Until the issue 17 review it held the seed's value,
    from which ``derive_seed(seed, 1)`` regenerates the noise: publishing
    ``privacy.json`` published the un-noised sums. The training-set
    size (``"train_size"``, and the default ``num_samples``) is written as
    public, dpjax's convention for the data set size.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}; pass e.g. 'gaussian'.")
    run = _run_setup(dataset, target_epsilon, delta, num_samples, seed)
    side, n, eps, delta, m, research = run.side, run.n, run.eps, run.delta, run.m, run.research
    noise_key, (fit_seed, sample_seed), k = run.noise_key, run.seeds[:2], run.k
    sigma = calibrate_release_noise(eps, delta)
    tracker = dpjax.PrivacyTracker(eps, delta, dataset_size=n)
    x, y = dataset.train.x, dataset.train.y
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    public: dict[str, Any]
    model: Generator | ClassGaussians
    if method == "gaussian":
        basis = DCTBasis(side, min(side, 14))
        radius = 0.6 * side
        weights = (0.5, 0.86, 0.1)
        release = release_moments(
            x, y, num_classes=k, basis=basis, radius=radius, noise_multiplier=sigma,
            tracker=tracker, key=noise_key, weights=weights, progress=progress,
        )  # fmt: skip
        seconds["release"] = time.perf_counter() - start
        start = time.perf_counter()
        model = fit_class_gaussians(release)
        mechanism = (
            "Gaussian mechanism on per-class sums of [a u, b vech(u u^T), c] with u the "
            "image's low-frequency DCT coefficients / R clipped to norm 1 (one release, "
            "L2 sensitivity 1); one Gaussian per class fitted to it (post-processing)"
        )
        public = {"dct_side": side, "dct_keep": basis.keep, "radius": radius, "weights": weights}
    else:
        config = generator_config or GeneratorConfig()
        features = RandomFourierFeatures(
            input_dim=side * side,
            num_frequencies=2000 if side * side > 100 else 1000,
            length_scale=0.3 * side,
            seed=_FEATURE_SEED,
        )
        release = release_embedding(
            x, y, num_classes=k, features=features, noise_multiplier=sigma, tracker=tracker,
            key=noise_key, progress=progress,
        )  # fmt: skip
        seconds["release"] = time.perf_counter() - start
        start = time.perf_counter()
        model = train_generator(release, config, seed=fit_seed, progress=progress)
        mechanism = (
            "DP-MERF: Gaussian mechanism on per-class sums of random Fourier features "
            "[sqrt(1 - c^2) phi(x), c] (norm 1; one release, L2 sensitivity 1); a conditional "
            "MLP generator trained on the release alone (post-processing)"
        )
        public = {
            "feature_seed": features.seed,
            "num_frequencies": features.num_frequencies,
            "length_scale": features.length_scale,
            "count_weight": release.count_weight,
            "generator": dataclasses.asdict(config),
        }
    seconds["fit"] = time.perf_counter() - start
    start = time.perf_counter()
    xs, ys = sample(model, m, seed=sample_seed)
    seconds["sample"] = time.perf_counter() - start
    statement = {
        "epsilon": tracker.epsilon_spent(),
        "target_epsilon": eps,
        "delta": delta,
        "method": method,
        "mechanism": mechanism,
        "noise_multiplier": sigma,
        "l2_sensitivity": 1.0,
        "releases_of_real_data": len(tracker.releases),
        "neighbouring_relation": "add or remove one example of the training split",
        "covers": (
            f"every example of the {dataset.name!r} training split ({n} examples): the samples, "
            "the model and anything computed from them (post-processing)"
        ),
        "does_not_cover": (
            "the validation and test splits (not read); diagnostics computed without noise; "
            "group privacy (one person with several examples: epsilon grows with the group); "
            "float rounding of the noise (see dpjax.add_gaussian_noise)"
        ),
        "public_parameters": public,
        "dataset": {"name": dataset.name, "train_size": n, "num_classes": k},
        "num_samples": m,
        "research_mode": research,
        # what the trainer's summary says too: never the value (derive_seed(seed, 1) is the key)
        "seed": (
            "explicit (reproducible research; not recorded: whoever knows it can regenerate "
            "the noise)"
            if research
            else "secret (drawn from the OS; not recorded)"
        ),
        "accountant": tracker.state_dict(),
    }
    return SyntheticData(
        x=xs, y=ys, model=model, statement=statement, tracker=tracker, seconds=seconds
    )


def sample_grid_png(x: np.ndarray, y: np.ndarray, path: str, per_class: int = 10) -> bool:
    """Saves a grid of `per_class` samples per class (rows) as PNG; False without matplotlib.

    Host side, file I/O. matplotlib is in dpjax's ``bench`` extra, not the core:
    imported here only.

    Example:
      >>> import numpy as np, os, tempfile
      >>> from dpjax.synthetic import sample_grid_png
      >>> path = os.path.join(tempfile.mkdtemp(), "g.png")
      >>> ok = sample_grid_png(np.zeros((4, 2, 2, 1), np.float32), np.array([0, 0, 1, 1]), path)
      >>> ok == os.path.exists(path)
      True
    """
    try:
        import matplotlib  # type: ignore[import-not-found]  # noqa: PLC0415 (bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        return False
    classes = np.unique(y)
    fig, axes = plt.subplots(
        len(classes), per_class, figsize=(per_class * 0.6, len(classes) * 0.6), squeeze=False
    )
    for row, c in enumerate(classes):
        idx = np.flatnonzero(y == c)[:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(idx):
                img = x[idx[col]]
                ax.imshow(img.reshape(img.shape[0], -1), cmap="gray", vmin=0.0, vmax=1.0)
    fig.tight_layout(pad=0.1)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
