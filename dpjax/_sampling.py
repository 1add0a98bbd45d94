"""Poisson sampling of batches, padded to a few fixed shapes (host side, NumPy)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from dpjax import _validation


class Batch(NamedTuple):
    """One sampled logical batch.

    Attributes:
      indices: int64 `(padded_size,)`; example indices, padded rows point at 0.
      mask: bool `(padded_size,)`; True for real rows.
      size: the realized number of sampled examples (NOT private: do not release).
    """

    indices: np.ndarray
    mask: np.ndarray
    size: int


class PoissonSampler:
    """Samples each example independently with probability q at every step.

    Batches are padded to a multiple of `microbatch_size`, so a jitted step sees
    only a few distinct shapes (one per number of microbatches) and compiles a
    bounded number of times. A batch larger than one microbatch is split into
    more microbatches, never truncated; an empty batch becomes one microbatch of
    padding, so the step still adds noise.

    Batch t is a deterministic function of `(seed, t)`, so a resumed run draws
    the same batches as an uninterrupted one.

    Args:
      dataset_size: N, the number of training examples.
      expected_batch_size: `q * N` (> 0, <= N). The sampling rate is
        `q = expected_batch_size / N`.
      seed: integer seed of the sampler in [0, 2**64); draw it with
        :func:`dpjax.secret_seed` (keep it secret: whoever knows it knows which
        examples each step used).
      microbatch_size: rows per microbatch (the physical batch). Defaults to the
        expected size plus four standard deviations, rounded up to a multiple of
        8, so nearly every batch is one microbatch.

    Raises:
      ValueError: for a non-positive size, an expected batch size above N, or a
        seed outside [0, 2**64).

    Example:
      >>> import dpjax
      >>> sampler = dpjax.PoissonSampler(1000, expected_batch_size=100, seed=dpjax.secret_seed())
      >>> batch = sampler.sample(0)
      >>> batch.indices.shape == batch.mask.shape
      True

    **Privacy:** this is the Poisson subsampling the accountant assumes
    (`PoissonSampledDpEvent` with rate q). Fixed-size shuffled batches would need
    a different accountant; dpjax does not offer them under the Poisson claim.

    References:
      Abadi et al., 2016; Zhu & Wang, "Poisson Subsampled Renyi Differential
      Privacy", ICML 2019.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        expected_batch_size: float,
        seed: int,
        microbatch_size: int | None = None,
    ):
        self.dataset_size = _validation.check_positive_int(dataset_size, "dataset_size", "60000")
        n = _validation.check_positive_float(expected_batch_size, "expected_batch_size", "256")
        if n > self.dataset_size:
            raise ValueError(
                f"expected_batch_size={expected_batch_size!r} exceeds dataset_size={dataset_size}; "
                f"pass expected_batch_size <= dataset_size."
            )
        self.seed = _validation.check_seed(seed)
        self.expected_batch_size = n
        self.sampling_rate = n / self.dataset_size
        if microbatch_size is None:
            q = self.sampling_rate
            cap = n + 4.0 * math.sqrt(self.dataset_size * q * (1.0 - q))
            microbatch_size = min(self.dataset_size, 8 * math.ceil(cap / 8))
        self.microbatch_size = _validation.check_positive_int(
            microbatch_size, "microbatch_size", "64"
        )

    def sample(self, step: int) -> Batch:
        """Draws the batch of logical step `step` (host side)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        size = int(rng.binomial(self.dataset_size, self.sampling_rate))
        chosen = np.sort(rng.choice(self.dataset_size, size=size, replace=False))
        padded = self.microbatch_size * max(1, math.ceil(size / self.microbatch_size))
        indices = np.zeros(padded, np.int64)
        indices[:size] = chosen
        mask = np.zeros(padded, bool)
        mask[:size] = True
        return Batch(indices=indices, mask=mask, size=size)
