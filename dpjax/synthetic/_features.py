"""Data-independent feature maps: random Fourier features and a low-frequency DCT basis.

Host side to build, device side to apply (jittable). Both are fixed by public
numbers only (a seed, a length scale, an image size), never by the data, so
they can be published with the synthetic data and cost no privacy.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

import dpjax
from dpjax import _validation


@dataclasses.dataclass(frozen=True)
class RandomFourierFeatures:
    """Random Fourier features of a Gaussian kernel, drawn from a public seed.

    ``phi(x) = [cos(W x), sin(W x)] / sqrt(D)`` with the rows of ``W`` drawn
    i.i.d. from ``N(0, I / length_scale**2)``, so that ``phi(x) . phi(x')``
    approximates ``exp(-||x - x'||**2 / (2 length_scale**2))`` and
    ``||phi(x)|| = 1`` exactly for every input.

    Args:
      input_dim: d, the number of inputs (pixels), >= 1.
      num_frequencies: D, the number of frequencies (2 D features), >= 1.
      length_scale: the kernel's length scale, > 0 (in the units of the inputs).
      seed: the PUBLIC seed of ``W``, an integer in [0, 2**64).

    Raises:
      ValueError: if an argument is invalid (named, with the fix).

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.synthetic import RandomFourierFeatures
      >>> rff = RandomFourierFeatures(input_dim=3, num_frequencies=8, length_scale=1.0, seed=0)
      >>> phi = rff(jnp.ones((2, 3)))
      >>> phi.shape, round(float(jnp.linalg.norm(phi[0])), 5)
      ((2, 16), 1.0)

    **Privacy:** ``W`` depends only on the seed, which is public: the map is
    data-independent, and every example's feature vector has norm 1, which
    bounds its contribution to a sum of features by 1 without clipping.

    References:
      Rahimi & Recht, "Random Features for Large-Scale Kernel Machines", NIPS 2007.
    """

    input_dim: int
    num_frequencies: int
    length_scale: float
    seed: int

    def __post_init__(self):
        object.__setattr__(
            self, "input_dim", _validation.check_positive_int(self.input_dim, "input_dim", "784")
        )
        object.__setattr__(
            self,
            "num_frequencies",
            _validation.check_positive_int(self.num_frequencies, "num_frequencies", "2000"),
        )
        object.__setattr__(
            self,
            "length_scale",
            _validation.check_positive_float(self.length_scale, "length_scale", "5.0"),
        )
        object.__setattr__(self, "seed", _validation.check_seed(self.seed))

    @property
    def num_features(self) -> int:
        """2 D: a cosine and a sine per frequency."""
        return 2 * self.num_frequencies

    def frequencies(self) -> jax.Array:
        """``W``, `(D, d)` float32, from the public seed."""
        key = dpjax.key_from_seed(self.seed)
        w = jax.random.normal(key, (self.num_frequencies, self.input_dim), jnp.float32)
        return w / jnp.float32(self.length_scale)

    def __call__(self, x: jax.typing.ArrayLike, frequencies: jax.Array | None = None) -> jax.Array:
        """Features of a batch `(B, d)` (any trailing shape is flattened): `(B, 2 D)`."""
        x = jnp.asarray(x, jnp.float32)
        x = x.reshape(x.shape[0], -1)
        w = self.frequencies() if frequencies is None else frequencies
        proj = x @ w.T
        scale = jnp.float32(1.0 / math.sqrt(self.num_frequencies))
        return jnp.concatenate([jnp.cos(proj), jnp.sin(proj)], axis=1) * scale


@dataclasses.dataclass(frozen=True)
class DCTBasis:
    """The ``keep x keep`` lowest frequencies of the orthonormal 2-D DCT-II of a square image.

    A public, data-independent orthonormal basis: ``project(x) = x_flat @ B``
    and ``reconstruct(c) = c @ B.T`` (the low-pass image).

    Args:
      side: the image's height = width (pixels), >= 1.
      keep: frequencies kept per axis, 1 <= keep <= side.

    Raises:
      ValueError: if an argument is invalid.

    Example:
      >>> import numpy as np
      >>> from dpjax.synthetic import DCTBasis
      >>> b = DCTBasis(side=8, keep=4).matrix()
      >>> b.shape, bool(np.allclose(b.T @ b, np.eye(16), atol=1e-5))
      ((64, 16), True)

    References:
      Ahmed, Natarajan, Rao, "Discrete Cosine Transform", IEEE Trans. Computers, 1974.
    """

    side: int
    keep: int

    def __post_init__(self):
        side = _validation.check_positive_int(self.side, "side", "28")
        keep = _validation.check_positive_int(self.keep, "keep", "14")
        if keep > side:
            raise ValueError(
                f"keep={keep} exceeds side={side}; pass keep <= side, e.g. keep={side}."
            )
        object.__setattr__(self, "side", side)
        object.__setattr__(self, "keep", keep)

    @property
    def dim(self) -> int:
        """``keep**2``, the number of coefficients."""
        return self.keep * self.keep

    def matrix(self) -> np.ndarray:
        """``B``, `(side**2, keep**2)` float32 with orthonormal columns (row-major pixels)."""
        n = self.side
        k = np.arange(self.keep)[:, None]
        i = np.arange(n)[None, :]
        d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
        d[0] /= np.sqrt(2.0)
        return np.einsum("ai,bj->ijab", d, d).reshape(n * n, self.dim).astype(np.float32)
