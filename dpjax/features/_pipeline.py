"""A data set's images replaced by their normalized scattering features (host side)."""

from __future__ import annotations

import dataclasses

import numpy as np

from dpjax import _validation
from dpjax.data import Dataset, Split
from dpjax.features._normalization import group_normalize
from dpjax.features._scattering import scatternet_features


def scatternet_dataset(
    data: Dataset,
    *,
    J: int = 2,  # noqa: N803
    L: int = 8,  # noqa: N803
    groups: int = 27,
    chunk: int = 1024,
) -> Dataset:
    """`data` with every split's images replaced by ScatterNet features, group-normalized.

    Each image `(H, W, C)` becomes its scattering coefficients
    `(H / 2**J, W / 2**J, C * K)` (:func:`scatternet_features`; K = 81 for J = 2,
    L = 8), each example then normalized by its own group statistics
    (:func:`group_normalize`, `groups` groups): the ScatterNet input of Tramer
    & Boneh (2021).

    Args:
      data: a data set of NHWC images.
      J: scattering scales.
      L: scattering angles.
      groups: GroupNorm groups; must divide `C * K`.
      chunk: images per device call.

    Returns:
      A :class:`dpjax.data.Dataset` with the same labels and split sizes.

    Raises:
      ValueError: for inputs that are not `(N, H, W, C)` images, or `groups`
        that does not divide the channels.

    Example:
      >>> import dpjax
      >>> from dpjax.features import scatternet_dataset
      >>> data = dpjax.load_dataset("synthetic", num_examples=40, input_shape=(8, 8, 1))
      >>> scatternet_dataset(data, J=1, L=4, groups=5, chunk=32).input_shape
      (4, 4, 5)

    **Privacy:** every output example is a fixed function of the same input
    example alone (no statistic of the data set is used), so training on the
    features spends exactly what training on the images spends: nothing is
    charged for them.

    References:
      Tramer & Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021.
    """
    chunk = _validation.check_positive_int(chunk, "chunk", "1024")

    def transform(split: Split) -> Split:
        feats = scatternet_features(split.x, J, L, chunk=chunk)
        out = np.empty_like(feats)
        for i in range(0, len(feats), chunk):
            out[i : i + chunk] = np.asarray(group_normalize(feats[i : i + chunk], groups))
        return Split(x=out, y=split.y)

    train = transform(data.train)
    return dataclasses.replace(
        data,
        train=train,
        validation=transform(data.validation),
        test=transform(data.test),
        input_shape=tuple(train.x.shape[1:]),
        source=f"{data.source} -> ScatterNet(J={J}, L={L}) -> GroupNorm({groups})",
    )
