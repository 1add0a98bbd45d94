"""Noise for released parameter vectors: Gaussian (the core sampler) and the L2-Laplace one.

Gaussian noise is drawn by the core primitive :func:`dpjax.add_gaussian_noise`
(never a new Gaussian sampler). The pure-epsilon mechanisms use the "L2 Laplace"
(gamma-norm) distribution of Chaudhuri, Monteleoni & Sarwate (2011): density
proportional to ``exp(-||b||_2 / scale)`` in ``dim`` dimensions, sampled as a
uniform direction (a normalized Gaussian vector from the core sampler) times a
radius ``||b|| ~ Gamma(dim, scale)`` (a sum of dim exponentials). dpjax's core has no such sampler; this is
its one implementation.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

import dpjax
from dpjax import _validation


def gaussian_noise(shape: tuple[int, ...], stddev: float, key: jax.Array) -> jax.Array:
    """i.i.d. N(0, stddev^2) noise of `shape`, drawn by :func:`dpjax.add_gaussian_noise`.

    Host-side wrapper of the device-side core sampler.

    Args:
      shape: the noise's shape.
      stddev: the standard deviation, finite and > 0 (noise multiplier times sensitivity).
      key: a fresh PRNG key, used for nothing else.

    Returns:
      A float32 array of `shape`.

    Raises:
      ValueError: if `stddev` is not finite and positive, or `key` is not a key.

    Example:
      >>> import jax
      >>> from dpjax.convex import gaussian_noise
      >>> gaussian_noise((3,), 2.0, jax.random.key(0)).shape
      (3,)

    **Privacy:** added once to a value of L2 sensitivity Delta with
    ``stddev = sigma * Delta``, this is the Gaussian mechanism with noise
    multiplier sigma (record ``dpjax.GaussianRelease(sigma)`` before releasing).
    """
    std = _validation.check_positive_float(stddev, "stddev", "noise_multiplier * sensitivity")
    return _gaussian(tuple(int(s) for s in shape), jnp.float32(std), _validation.check_key(key))


@functools.partial(jax.jit, static_argnums=0)
def _gaussian(shape, stddev, key):
    # stddev 1 in the core sampler, scaled here: the std is traced, so one compilation serves all
    tx = dpjax.add_gaussian_noise(1.0, key=key)
    zeros = jnp.zeros(shape, jnp.float32)
    noise, _ = tx.update(zeros, tx.init(zeros))
    return stddev * noise


def l2_laplace_noise(shape: tuple[int, ...], scale: float, key: jax.Array) -> jax.Array:
    """Noise with density proportional to ``exp(-||b||_2 / scale)`` over all of `shape`.

    Host-side wrapper. The direction is a normalized N(0, I) vector from the core
    sampler; the radius is ``scale * Gamma(dim, 1)``, drawn exactly as the sum of
    dim i.i.d. Exp(1) variables, dim the number of coordinates. Then ``E||b|| = dim * scale``.

    Args:
      shape: the noise's shape (all coordinates form one vector).
      scale: ``Delta / epsilon`` for a value of L2 sensitivity Delta, finite and > 0.
      key: a fresh PRNG key, used for nothing else.

    Returns:
      A float32 array of `shape`.

    Raises:
      ValueError: if `scale` is not finite and positive, or `key` is not a key.

    Example:
      >>> import jax
      >>> from dpjax.convex import l2_laplace_noise
      >>> l2_laplace_noise((2, 3), 0.5, jax.random.key(0)).shape
      (2, 3)

    **Privacy:** for two values at L2 distance at most Delta, the densities of
    ``value + b`` differ by a factor at most ``exp(Delta / scale)``: with
    ``scale = Delta / epsilon`` the release is (epsilon, 0)-DP (record
    ``dpjax.PureEpsilonRelease(epsilon)`` before releasing).

    References:
      Chaudhuri, Monteleoni & Sarwate, "Differentially Private Empirical Risk
      Minimization", JMLR 2011 (Algorithm 1).
    """
    scale = _validation.check_positive_float(scale, "scale", "sensitivity / epsilon")
    key = _validation.check_key(key)
    return _l2_laplace(tuple(int(s) for s in shape), jnp.float32(scale), key)


@functools.partial(jax.jit, static_argnums=0)
def _l2_laplace(shape, scale, key):
    dim = math.prod(shape)
    k_dir, k_rad = jax.random.split(key)
    direction = _gaussian((dim,), jnp.float32(1.0), k_dir)
    direction = direction / jnp.linalg.norm(direction)
    # Gamma(dim, 1) for an integer dim is a sum of dim i.i.d. Exp(1) draws (exact).
    radius = scale * jnp.sum(jax.random.exponential(k_rad, (dim,), jnp.float32))
    return (radius * direction).reshape(shape)
