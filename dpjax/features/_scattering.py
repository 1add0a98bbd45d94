"""The 2D scattering transform (Mallat 2012) in JAX: Morlet filters in the Fourier domain.

Host side builds the filter bank (NumPy, once); device side is one jitted
function of a batch of images. The algorithm and the filters follow Kymatio's
`Scattering2D` (Andreux et al. 2020) step by step, so the features are those
Tramer & Boneh (2021) trained on: reflect padding to a multiple of 2**J, FFT,
products with real Fourier-domain filters, subsampling by periodization in
Fourier, modulus, and a final low-pass filter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import _validation


class ScatteringFilters(NamedTuple):
    """The Fourier-domain filters of a 2D scattering transform (host-side NumPy arrays).

    Attributes:
      phi: the low-pass filter at each resolution `res` in `[0, J)`: `phi[res]`
        has shape `(M / 2**res, N / 2**res)`.
      psi: the Morlet wavelets, `J * L` of them in the order `(j, theta)`:
        `psi[n][res]` is wavelet n at resolution `res` in `[0, min(j + 1, max(J - 1, 1)))`.
      psi_j: the scale j of each wavelet.
      psi_theta: the angle index of each wavelet, in `[0, L)`.
      padded_shape: `(M, N)`, the padded image size the filters are built for.
    """

    phi: tuple[np.ndarray, ...]
    psi: tuple[tuple[np.ndarray, ...], ...]
    psi_j: tuple[int, ...]
    psi_theta: tuple[int, ...]
    padded_shape: tuple[int, int]


def gabor_2d(
    shape: tuple[int, int], sigma: float, theta: float, xi: float, slant: float = 1.0
) -> np.ndarray:
    """A 2D Gabor filter in space, periodized over 5x5 copies (host side, NumPy).

    `g(u) = exp(-u^T R D R^-1 u / (2 sigma^2) + i xi (u_0 cos theta + u_1 sin theta))`,
    divided by `2 pi sigma^2 / slant`.

    Args:
      shape: `(M, N)`.
      sigma: the width of the Gaussian envelope, > 0.
      theta: the orientation (radians).
      xi: the central frequency (radians per pixel).
      slant: the envelope's aspect ratio, > 0.

    Returns:
      A complex `(M, N)` array.

    Example:
      >>> from dpjax.features import gabor_2d
      >>> g = gabor_2d((8, 8), sigma=1.0, theta=0.0, xi=0.0)
      >>> g.shape, round(float(abs(g[0, 0])), 3)
      ((8, 8), 0.159)
    """
    m, n = shape
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    curv = rot @ np.diag([1.0, slant * slant]) @ rot.T / (2 * sigma * sigma)
    gab = np.zeros((m, n), np.complex128)
    for ex in range(-2, 3):
        for ey in range(-2, 3):
            xx, yy = np.mgrid[ex * m : m + ex * m, ey * n : n + ey * n]
            arg = -(
                curv[0, 0] * xx * xx + (curv[0, 1] + curv[1, 0]) * xx * yy + curv[1, 1] * yy * yy
            )
            arg = arg + 1j * (xx * xi * np.cos(theta) + yy * xi * np.sin(theta))
            gab += np.exp(arg)
    return gab / (2 * math.pi * sigma * sigma / slant)


def morlet_2d(
    shape: tuple[int, int], sigma: float, theta: float, xi: float, slant: float = 0.5
) -> np.ndarray:
    """A 2D Morlet wavelet in space: a Gabor filter minus its mean, so it sums to zero.

    Args:
      shape: `(M, N)`.
      sigma: envelope width, > 0.
      theta: orientation (radians).
      xi: central frequency (radians per pixel).
      slant: envelope aspect ratio.

    Returns:
      A complex `(M, N)` array with zero sum.

    Example:
      >>> from dpjax.features import morlet_2d
      >>> abs(complex(morlet_2d((16, 16), 0.8, 0.0, 2.3).sum())) < 1e-9
      True
    """
    wave = gabor_2d(shape, sigma, theta, xi, slant)
    envelope = gabor_2d(shape, sigma, theta, 0.0, slant)
    return wave - (wave.sum() / envelope.sum()) * envelope


def _periodize(filter_hat: np.ndarray, res: int) -> np.ndarray:
    """The Fourier filter of the same filter applied after subsampling by 2**res (periodization)."""
    m, n = filter_hat.shape
    mask = np.ones(filter_hat.shape)
    start_x, len_x = int(m * 2 ** (-res - 1)), int(m * (1 - 2 ** (-res)))
    start_y, len_y = int(n * 2 ** (-res - 1)), int(n * (1 - 2 ** (-res)))
    mask[start_x : start_x + len_x, :] = 0
    mask[:, start_y : start_y + len_y] = 0
    k = 2**res
    return (filter_hat * mask).reshape(k, m // k, k, n // k).sum(axis=(0, 2))


def scattering_padded_shape(shape: Sequence[int], J: int) -> tuple[int, int]:  # noqa: N803
    """The padded size of an `(M, N)` image: the next multiple of 2**J past `M + 2**J`.

    Example:
      >>> from dpjax.features import scattering_padded_shape
      >>> scattering_padded_shape((28, 28), 2)
      (36, 36)
    """
    k = 2**J
    m, n = shape
    return ((m + k) // k + 1) * k, ((n + k) // k + 1) * k


def morlet_filter_bank(shape: Sequence[int], J: int = 2, L: int = 8) -> ScatteringFilters:  # noqa: N803
    """The Fourier-domain Morlet filter bank of a 2D scattering transform (host side, NumPy).

    Wavelet (j, theta): `morlet_2d(sigma = 0.8 * 2**j, angle = (L/2 - 1 - theta) * pi / L,
    xi = 3 pi / (4 * 2**j), slant = 4 / L)`; the low-pass filter is the Gaussian
    `gabor_2d(sigma = 0.8 * 2**(J-1), xi = 0)`. The same design as Kymatio.

    Args:
      shape: `(M, N)`, the image size BEFORE padding.
      J: the number of scales, >= 1, with 2**J <= min(M, N).
      L: the number of angles, >= 1.

    Returns:
      The :class:`ScatteringFilters` for the padded size.

    Raises:
      ValueError: for a bad J, L or shape.

    Example:
      >>> from dpjax.features import morlet_filter_bank
      >>> bank = morlet_filter_bank((28, 28), J=2, L=8)
      >>> len(bank.psi), bank.phi[0].shape, bank.padded_shape
      (16, (36, 36), (36, 36))

    References:
      Bruna & Mallat, "Invariant Scattering Convolution Networks", TPAMI 2013.
      Andreux et al., "Kymatio: Scattering Transforms in Python", JMLR 2020.
    """
    J, L, (m, n) = _check_geometry(shape, J, L)  # noqa: N806
    padded = scattering_padded_shape((m, n), J)
    psi, psi_j, psi_theta = [], [], []
    for j in range(J):
        for theta in range(L):
            angle = (int(L - L / 2 - 1) - theta) * math.pi / L
            wave = morlet_2d(padded, 0.8 * 2**j, angle, 3.0 / 4.0 * math.pi / 2**j, 4.0 / L)
            wave_hat = np.real(np.fft.fft2(wave))  # the imaginary part is zero
            psi.append(tuple(_periodize(wave_hat, r) for r in range(min(j + 1, max(J - 1, 1)))))
            psi_j.append(j)
            psi_theta.append(theta)
    low = np.real(np.fft.fft2(gabor_2d(padded, 0.8 * 2 ** (J - 1), 0.0, 0.0)))
    phi = tuple(_periodize(low, r) for r in range(J))
    return ScatteringFilters(phi, tuple(psi), tuple(psi_j), tuple(psi_theta), padded)


def scattering_channels(J: int = 2, L: int = 8) -> int:  # noqa: N803
    """The number of scattering channels of order <= 2: `1 + J L + L**2 J (J - 1) / 2`.

    Example:
      >>> from dpjax.features import scattering_channels
      >>> scattering_channels(2, 8)
      81
    """
    return 1 + J * L + L * L * J * (J - 1) // 2


def _check_geometry(shape: Sequence[int], J: int, L: int) -> tuple[int, int, tuple[int, int]]:  # noqa: N803
    J = _validation.check_positive_int(J, "J", "2")  # noqa: N806
    L = _validation.check_positive_int(L, "L", "8")  # noqa: N806
    if len(tuple(shape)) != 2:
        raise ValueError(f"shape={tuple(shape)!r} must be (M, N), the image's height and width.")
    m, n = (int(s) for s in shape)
    if 2**J > min(m, n):
        raise ValueError(
            f"J={J} needs images of at least 2**J = {2**J} pixels a side, got shape={(m, n)}; "
            "pass a smaller J."
        )
    return J, L, (m, n)


def _subsample(x: jax.Array, k: int) -> jax.Array:
    """Subsampling by k in space, done in Fourier (periodization): `(..., M, N) -> (..., M/k, N/k)`."""
    if k == 1:
        return x
    *lead, m, n = x.shape
    return x.reshape(*lead, k, m // k, k, n // k).mean(axis=(-4, -2))


class Scattering2D:
    """The 2D scattering transform of order 2: images `(B, M, N)` to `(B, K, M/2**J, N/2**J)`.

    K = `scattering_channels(J, L)` channels, in Kymatio's order: the low-pass
    average, then the L*J first-order coefficients `|x * psi_{j,theta}| * phi`
    in the order (j, theta), then the second-order ones `||x * psi_1| * psi_2| * phi`
    for j2 > j1. The call is jitted.

    Args:
      shape: `(M, N)` of the images.
      J: scales, >= 1 (2 for 28x28 images gives 7x7 maps).
      L: angles, >= 1.

    Raises:
      ValueError: for a bad geometry, or (at call time) images of another shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from dpjax.features import Scattering2D
      >>> Scattering2D((28, 28), J=2, L=8)(jnp.zeros((3, 28, 28))).shape
      (3, 81, 7, 7)

    **Privacy:** a fixed function of ONE image (no parameter is learnt or
    estimated from data), so features computed once before training cost no
    privacy: training on them spends exactly what it spends on the raw images.

    References:
      Mallat, "Group Invariant Scattering", CPAM 2012.
      Oyallon & Mallat, "Deep Roto-Translation Scattering for Object
      Classification", CVPR 2015.
      Tramer & Boneh, "Differentially Private Learning Needs Better Features
      (or Much More Data)", ICLR 2021.
    """

    def __init__(self, shape: Sequence[int], J: int = 2, L: int = 8):  # noqa: N803
        self.J, self.L, self.shape = _check_geometry(shape, J, L)
        self.filters = morlet_filter_bank(self.shape, self.J, self.L)
        self.channels = scattering_channels(self.J, self.L)
        self._fn = jax.jit(functools.partial(_scatter, self.filters, self.shape, self.J))

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """`(K, M / 2**J, N / 2**J)`."""
        k = 2**self.J
        return self.channels, self.shape[0] // k, self.shape[1] // k

    def __call__(self, images: jax.typing.ArrayLike) -> jax.Array:
        """The coefficients of `images` `(B, M, N)` as `(B, K, M / 2**J, N / 2**J)` float32."""
        x = jnp.asarray(images, jnp.float32)
        if x.ndim != 3 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"Scattering2D{self.shape} takes images of shape (B, {self.shape[0]}, "
                f"{self.shape[1]}); got {tuple(x.shape)}."
            )
        return self._fn(x)


def _scatter(
    filters: ScatteringFilters,
    shape: tuple[int, int],
    J: int,  # noqa: N803
    x: jax.Array,
) -> jax.Array:
    """Kymatio's `scattering2d` core (max_order=2), on a batch `(B, M, N)`."""
    (pm, pn), (m, n) = filters.padded_shape, shape
    pad = ((0, 0), ((pm - m) // 2, (pm - m + 1) // 2), ((pn - n) // 2, (pn - n + 1) // 2))
    x = jnp.pad(x, pad, mode="reflect")
    phi = [jnp.asarray(f, jnp.float32)[None] for f in filters.phi]  # (1, M, N)
    psi = [[jnp.asarray(f, jnp.float32)[None] for f in levels] for levels in filters.psi]

    def low_pass(u_hat: jax.Array, res: int) -> jax.Array:
        s = jnp.real(jnp.fft.ifft2(_subsample(u_hat * phi[res], 2 ** (J - res))))
        return s[..., 1:-1, 1:-1]

    u0 = jnp.fft.fft2(x)
    out = [low_pass(u0, 0)]
    second = []
    for n1, j1 in enumerate(filters.psi_j):
        u1 = jnp.fft.fft2(jnp.abs(jnp.fft.ifft2(_subsample(u0 * psi[n1][0], 2**j1))))
        out.append(low_pass(u1, j1))
        for n2, j2 in enumerate(filters.psi_j):
            if j2 <= j1:
                continue
            u2 = _subsample(u1 * psi[n2][j1], 2 ** (j2 - j1))
            second.append(low_pass(jnp.fft.fft2(jnp.abs(jnp.fft.ifft2(u2))), j2))
    return jnp.stack(out + second, axis=-3).astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def _cached_transform(shape: tuple[int, int], J: int, L: int) -> Scattering2D:  # noqa: N803
    """One compiled transform per geometry (compiling the 81 paths takes seconds)."""
    return Scattering2D(shape, J, L)


def scatternet_features(
    images: np.ndarray,
    J: int = 2,  # noqa: N803
    L: int = 8,  # noqa: N803
    *,
    chunk: int = 1024,
) -> np.ndarray:
    """Scattering features of NHWC images, channels last, computed in chunks (host loop).

    Each channel of the images is transformed separately; the output has
    `C * scattering_channels(J, L)` channels, grouped by input channel.

    Args:
      images: `(N, H, W, C)` float images.
      J: scales (2 for 28x28 images: 7x7 maps).
      L: angles.
      chunk: images per jitted call.

    Returns:
      float32 `(N, H / 2**J, W / 2**J, C * K)` NumPy array.

    Raises:
      ValueError: for images that are not `(N, H, W, C)`.

    Example:
      >>> import numpy as np
      >>> from dpjax.features import scatternet_features
      >>> scatternet_features(np.zeros((2, 28, 28, 1), np.float32)).shape
      (2, 7, 7, 81)

    **Privacy:** data-independent and per-example (see :class:`Scattering2D`):
    no privacy cost.
    """
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C); got shape {x.shape}.")
    chunk = _validation.check_positive_int(chunk, "chunk", "1024")
    num, h, w, c = x.shape
    transform = _cached_transform((h, w), J, L)
    planes = np.moveaxis(x, -1, 1).reshape(num * c, h, w)
    outs = []
    chunk = max(1, min(chunk, len(planes)))  # small inputs compile a small shape
    for i in range(0, len(planes), chunk):
        part = planes[i : i + chunk]
        padded = np.zeros((chunk, h, w), np.float32)  # one compiled shape for every chunk
        padded[: len(part)] = part
        outs.append(np.asarray(transform(padded))[: len(part)])
    k, mh, mw = transform.output_shape
    coeffs = np.concatenate(outs) if outs else np.zeros((0, k, mh, mw), np.float32)
    coeffs = coeffs.reshape(num, c * k, mh, mw)
    return np.ascontiguousarray(np.moveaxis(coeffs, 1, -1), dtype=np.float32)
