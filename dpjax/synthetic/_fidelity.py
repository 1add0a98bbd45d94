"""A FID-like fidelity score with a FIXED, data-independent feature map (ScatterNet), offline.

Host side (NumPy, float64) around :func:`dpjax.features.scatternet_features`
(jitted). The Frechet distance between Gaussian fits of the features of two
image sets, as in FID, but with the scattering transform instead of an
Inception network: nothing is downloaded and nothing is learned, so the score
can be computed offline and no public data set is needed. It is **FID-like
(ScatterNet features), not comparable to Inception FID**: the scale and the
features differ, and so do the numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpjax import _validation
from dpjax.features import scatternet_features


def fidelity_features(
    images: Any, *, grid: int | None = None, max_images: int | None = None
) -> np.ndarray:
    """ScatterNet features of grey images, averaged over a `grid x grid` partition of the maps.

    Host side around the jitted transform. The scattering transform (J = 2
    scales, L = 8 angles: 81 channels per input channel) gives `side/4 x side/4`
    maps; each channel is averaged over `grid x grid` nearly equal blocks of
    them (``grid=1``: a global average, as FID pools Inception's last maps), so
    an image becomes ``grid**2 * 81 * C`` numbers.

    Args:
      images: `(N, H, W)` or `(N, H, W, C)` images in [0, 1], H and W >= 4.
      grid: blocks per side, 1 <= grid <= H / 4; None: 2 (1 for images under 8x8).
      max_images: if set and N is larger, only this many images, evenly strided
        over the N (samples sorted by class keep their class proportions).

    Returns:
      float64 `(min(N, max_images), grid**2 * 81 * C)`.

    Raises:
      ValueError: for images of another rank or a grid finer than the maps.

    Example:
      >>> import numpy as np
      >>> from dpjax.synthetic import fidelity_features
      >>> fidelity_features(np.zeros((3, 8, 8, 1), np.float32)).shape
      (3, 324)

    **Privacy:** the map is fixed and per-example; a score that reads real
    data (e.g. the test split) is a diagnostic, not covered by any guarantee.
    """
    x = np.asarray(images, np.float32)
    if max_images is not None:
        limit = _validation.check_positive_int(max_images, "max_images", "10000")
        if len(x) > limit:
            x = x[np.linspace(0, len(x) - 1, limit).round().astype(np.int64)]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or min(x.shape[1:3]) < 4:
        raise ValueError(
            f"images must be (N, H, W[, C]) with H, W >= 4; got shape {x.shape}. Pass e.g. "
            "dataset.test.x."
        )
    feats = scatternet_features(x)  # (N, H/4, W/4, 81 C)
    if grid is None:
        grid = min(2, *feats.shape[1:3])
    g = _validation.check_positive_int(grid, "grid", "2")
    if g > min(feats.shape[1:3]):
        raise ValueError(
            f"grid={grid} exceeds the scattering maps' {feats.shape[1]}x{feats.shape[2]}; pass "
            f"grid <= {min(feats.shape[1:3])}."
        )
    rows = np.array_split(np.arange(feats.shape[1]), g)
    cols = np.array_split(np.arange(feats.shape[2]), g)
    blocks = [feats[:, r][:, :, c].mean(axis=(1, 2)) for r in rows for c in cols]
    return np.concatenate(blocks, axis=1).astype(np.float64)


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """The Frechet distance between Gaussian fits of two feature sets (host side, float64).

    ``||mu_a - mu_b||**2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``,
    the 2-Wasserstein distance between ``N(mu_a, S_a)`` and ``N(mu_b, S_b)``
    (sample means and covariances). The matrix square roots are taken through
    symmetric eigendecompositions (negative rounding errors set to 0), so the
    result is symmetric in its arguments up to rounding and 0 for a set and itself.

    Args:
      features_a: `(N_a, F)`, N_a >= 2.
      features_b: `(N_b, F)`, N_b >= 2.

    Returns:
      The distance (squared, as in FID), >= 0.

    Raises:
      ValueError: if the shapes disagree or a set has fewer than 2 rows.

    Example:
      >>> import numpy as np
      >>> from dpjax.synthetic import frechet_distance
      >>> a = np.random.default_rng(0).normal(size=(500, 3))
      >>> round(frechet_distance(a, a), 6), round(frechet_distance(a, a + 1.0), 1)
      (0.0, 3.0)

    References:
      Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
      Local Nash Equilibrium", NeurIPS 2017 (FID); Dowson & Landau, "The Frechet
      distance between multivariate normal distributions", 1982.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"features must be (N, F) with the same F and N >= 2; got {a.shape} and {b.shape}."
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    dist = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross
    return float(max(dist, 0.0))


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    cov = np.atleast_2d((cov + cov.T) / 2.0)
    val, vec = np.linalg.eigh(cov)
    return (vec * np.sqrt(np.clip(val, 0.0, None))[None, :]) @ vec.T


def scatternet_fid(
    real: Any, synthetic: Any, *, grid: int | None = None, max_images: int | None = 10_000
) -> float:
    """FID-like score of `synthetic` against `real` images, with ScatterNet features, offline.

    :func:`frechet_distance` of the :func:`fidelity_features` of both sets.
    Lower is closer; 0 for identical sets. Not comparable to Inception FID.

    Args:
      real: `(N, H, W[, C])` real images in [0, 1] (e.g. the test split).
      synthetic: `(M, H, W[, C])` synthetic images of the same shape.
      grid: the feature pooling grid (:func:`fidelity_features`).
      max_images: at most this many images a side, evenly strided (None: all).

    Returns:
      The FID-like distance, >= 0.

    Raises:
      ValueError: for mismatched shapes.

    Example:
      >>> import numpy as np
      >>> from dpjax.synthetic import scatternet_fid
      >>> x = np.random.default_rng(0).uniform(size=(50, 8, 8, 1)).astype(np.float32)
      >>> scatternet_fid(x, x) < 1e-9 < scatternet_fid(x, 0.5 * x)
      True

    **Privacy:** computed from the real images without noise: a diagnostic
    for the data owner, not covered by the guarantee.
    """
    r, s = np.asarray(real), np.asarray(synthetic)
    if r.shape[1:] != s.shape[1:]:
        raise ValueError(
            f"real and synthetic images must have the same shape; got {r.shape[1:]} and "
            f"{s.shape[1:]}."
        )
    return frechet_distance(
        fidelity_features(r, grid=grid, max_images=max_images),
        fidelity_features(s, grid=grid, max_images=max_images),
    )
