"""The scattering transform: its filter bank's energy bounds, a known response, Kymatio's numbers."""

import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.features import (
    Scattering2D,
    _scattering,
    gabor_2d,
    morlet_2d,
    morlet_filter_bank,
    scattering_channels,
    scatternet_features,
)


@pytest.fixture(scope="module")
def bank():
    return morlet_filter_bank((28, 28), J=2, L=8)


@pytest.fixture(scope="module")
def transform():
    return _scattering._cached_transform((28, 28), 2, 8)  # the one scatternet_features uses


def _at_minus_omega(f):
    """f(-omega) of a Fourier-domain filter on the DFT grid."""
    return np.roll(f[::-1, ::-1], 1, axis=(0, 1))


def test_output_shape_is_81_by_7_by_7(transform):
    assert scattering_channels(2, 8) == 81
    assert transform.output_shape == (81, 7, 7)
    out = transform(jnp.zeros((2, 28, 28)))
    assert out.shape == (2, 81, 7, 7) and out.dtype == jnp.float32
    feats = scatternet_features(np.zeros((3, 28, 28, 1), np.float32), chunk=2)  # same shape
    assert feats.shape == (3, 7, 7, 81)


def test_littlewood_paley_sum_is_at_most_one(bank):
    # For real images, |phi|^2 + 1/2 sum (|psi(w)|^2 + |psi(-w)|^2) <= 1 at every frequency
    # means the first wavelet layer is non-expansive: ||x*phi||^2 + sum ||x*psi||^2 <= ||x||^2.
    phi, psi = bank.phi[0], [p[0] for p in bank.psi]
    lp = phi**2 + 0.5 * sum(p**2 + _at_minus_omega(p) ** 2 for p in psi)
    assert lp.max() <= 1.0 + 1e-6
    assert phi[0, 0] == pytest.approx(1.0, abs=1e-6)  # the low-pass keeps the mean
    assert max(abs(p[0, 0]) for p in psi) < 1e-9  # the wavelets have zero mean


def test_wavelet_layer_conserves_at_most_the_energy(bank):
    # Parseval on the padded grid, for random real images: the bound above, numerically.
    x = np.random.default_rng(0).normal(size=(5, *bank.padded_shape))
    x_hat = np.fft.fft2(x)
    energy = (np.abs(x) ** 2).sum(axis=(1, 2))
    out = (np.abs(np.fft.ifft2(x_hat * bank.phi[0])) ** 2).sum(axis=(1, 2))
    for p in bank.psi:
        out += (np.abs(np.fft.ifft2(x_hat * p[0])) ** 2).sum(axis=(1, 2))
    assert np.all(out <= energy * (1 + 1e-6))
    assert np.all(out >= 0.1 * energy)  # and it keeps most of it (not a vacuous bound)


def test_low_pass_levels_are_periodized(bank):
    # Subsampling by 2 in space is periodization in Fourier: level 1 sums the aliased copies.
    m = bank.padded_shape[0]
    assert bank.phi[1].shape == (m // 2, m // 2)
    assert bank.phi[1][0, 0] == pytest.approx(1.0, abs=1e-6)
    assert len(bank.psi[0]) == 1 and len(bank.psi[8]) == 1  # J = 2: level 0 only (as Kymatio)


def test_morlet_has_zero_mean_and_gabor_peaks_at_its_frequency():
    assert abs(morlet_2d((32, 32), 1.6, 0.3, 1.2).sum()) < 1e-9
    g_hat = np.abs(np.fft.fft2(gabor_2d((32, 32), 2.0, 0.0, 2 * math.pi * 4 / 32)))
    assert np.unravel_index(np.argmax(g_hat), g_hat.shape) == (4, 0)  # 4 cycles along axis 0


@pytest.mark.parametrize("n", [0, 3, 10])
def test_plane_wave_excites_the_matching_wavelet(bank, transform, n):
    # A plane wave at wavelet n's centre frequency and orientation: its first-order
    # coefficient |x * psi_n| * phi is the largest of the 16.
    j, theta = bank.psi_j[n], bank.psi_theta[n]
    angle = (int(8 - 8 / 2 - 1) - theta) * math.pi / 8
    xi = 3.0 / 4.0 * math.pi / 2**j
    r, c = np.mgrid[0:28, 0:28]
    wave = np.cos(xi * (r * np.cos(angle) + c * np.sin(angle)))
    batch = np.stack([wave, np.zeros_like(wave)]).astype(np.float32)  # the compiled shape
    first = np.asarray(transform(batch))[0, 1:17]
    energy = first[:, 2:5, 2:5].mean(axis=(1, 2))  # the centre, away from the padding
    assert int(np.argmax(energy)) == n


def test_jit_and_input_checks(transform):
    x = jax.random.uniform(jax.random.key(0), (2, 28, 28))
    np.testing.assert_allclose(transform(x)[:, 0].mean(), x[:, 4:24, 4:24].mean(), rtol=0.1)
    with pytest.raises(ValueError, match="takes images of shape"):
        transform(jnp.zeros((2, 27, 28)))
    with pytest.raises(ValueError, match="J=3 needs images"):
        Scattering2D((6, 6), J=3)
    with pytest.raises(ValueError, match="images must be"):
        scatternet_features(np.zeros((2, 28, 28), np.float32))


def _kymatio_reference(x):
    """Kymatio's own filter bank and scattering core (numpy), loaded from its files."""
    spec = importlib.util.find_spec("kymatio")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("kymatio is not installed (optional reference)")
    root = pathlib.Path(spec.submodule_search_locations[0]) / "scattering2d"

    def load(name, path):
        s = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(s)
        s.loader.exec_module(module)
        return module

    filter_bank = load("_kymatio_filter_bank", root / "filter_bank.py")
    core = load("_kymatio_core", root / "core" / "scattering2d.py")

    class Backend:  # kymatio's numpy backend, operation by operation
        modulus = staticmethod(np.abs)
        rfft = staticmethod(np.fft.fft2)
        ifft = staticmethod(np.fft.ifft2)
        irfft = staticmethod(lambda v: np.fft.ifft2(v).real)
        cdgmm = staticmethod(lambda a, b: a * b)
        concatenate = staticmethod(lambda arrays: np.stack(arrays, axis=-3))

        @staticmethod
        def subsample_fourier(v, k):
            return v.reshape(-1, k, v.shape[1] // k, k, v.shape[2] // k).mean(axis=(1, 3))

    filters = filter_bank.filter_bank(36, 36, 2, 8)
    return filters, core.scattering2d(
        x,
        lambda v: np.pad(v, ((0, 0), (4, 4), (4, 4)), mode="reflect"),
        lambda v: v[..., 1:-1, 1:-1],
        Backend,
        2,
        8,
        filters["phi"],
        filters["psi"],
        2,
    )


def test_matches_kymatio(bank, transform):
    x = np.random.default_rng(1).random((2, 28, 28)).astype(np.float32)
    filters, reference = _kymatio_reference(x)
    for ours, theirs in zip(bank.phi, filters["phi"]["levels"], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    for ours, theirs in zip(bank.psi, filters["psi"], strict=True):
        for a, b in zip(ours, theirs["levels"], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(np.asarray(transform(x)), reference, atol=1e-4, rtol=1e-4)
