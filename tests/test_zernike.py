"""Tests of cryomanifold.zernike: polynomials, orthogonality, rotation behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryomanifold.zernike import (
    even_spectrum_operator,
    zernike_basis,
    zernike_indices,
    zernike_moments,
    zernike_radial,
)

PROPERTY = settings(deadline=None, max_examples=20, derandomize=True)


def _grid(box: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) offsets from the box centre (L // 2, L // 2)."""
    c = np.arange(box) - box // 2
    return np.meshgrid(c, c, indexing="ij")


def _polar(box: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    y, x = _grid(box)
    return np.hypot(x, y) / radius, np.arctan2(y, x)


def _radial_factorial(n: int, m: int, rho: np.ndarray) -> np.ndarray:
    """The textbook explicit sum, for cross-checking at small orders."""
    out = np.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        coef = (
            (-1) ** k
            * math.factorial(n - k)
            / (
                math.factorial(k)
                * math.factorial((n + m) // 2 - k)
                * math.factorial((n - m) // 2 - k)
            )
        )
        out += coef * rho ** (n - 2 * k)
    return out


def _blobs(box: int, alpha: float, seed: int) -> np.ndarray:
    """Anisotropic Gaussian blobs rotated analytically by ``alpha`` about the centre.

    Blobs sit within 10 px of the centre with widths <= 2.5 px, so the image is
    negligible (< 1e-9) at the disk edge of a 64-px box.
    """
    rng = np.random.default_rng(seed)
    y, x = _grid(box)
    img = np.zeros((box, box))
    ca, sa = np.cos(alpha), np.sin(alpha)
    for _ in range(4):
        r, t = rng.uniform(0, 10), rng.uniform(0, 2 * np.pi)
        px, py = r * np.cos(t), r * np.sin(t)
        qx, qy = ca * px - sa * py, sa * px + ca * py
        s1, s2 = rng.uniform(1.5, 2.5, 2)
        phi = rng.uniform(0, np.pi) + alpha
        u = (x - qx) * np.cos(phi) + (y - qy) * np.sin(phi)
        v = -(x - qx) * np.sin(phi) + (y - qy) * np.cos(phi)
        img += rng.uniform(0.5, 1.5) * np.exp(-0.5 * (u**2 / s1**2 + v**2 / s2**2))
    return img


@pytest.mark.parametrize("n_max", [0, 1, 2, 7, 20, 41])
def test_indices_counts_and_parity(n_max: int) -> None:
    even = zernike_indices(n_max)
    assert even.dtype == np.int64 and even.shape[1] == 2
    assert len(even) == sum(n // 2 + 1 for n in range(0, n_max + 1, 2))
    assert np.all(even[:, 1] % 2 == 0) and np.all(even[:, 0] % 2 == 0)
    full = zernike_indices(n_max, even_m_only=False)
    assert len(full) == sum(n // 2 + 1 for n in range(n_max + 1))
    assert np.all((full[:, 0] - full[:, 1]) % 2 == 0)
    assert np.all((full[:, 1] >= 0) & (full[:, 1] <= full[:, 0]))
    assert len({tuple(r) for r in full}) == len(full)
    assert {tuple(r) for r in even} <= {tuple(r) for r in full}


def test_indices_reject_negative() -> None:
    with pytest.raises(ValueError, match="n_max"):
        zernike_indices(-1)


def test_radial_matches_explicit_sum() -> None:
    rho = np.linspace(0, 1, 57)
    for n, m in zernike_indices(14, even_m_only=False):
        np.testing.assert_allclose(
            zernike_radial(n, m, rho), _radial_factorial(int(n), int(m), rho), atol=1e-11
        )
        assert zernike_radial(n, m, 1.0) == pytest.approx(1.0)


def test_radial_orthogonal_at_high_order() -> None:
    """The Jacobi recurrence stays accurate at n = 40 (the factorial sum would not)."""
    x, w = np.polynomial.legendre.leggauss(120)
    rho, w = (x + 1) / 2, w / 2
    for m in (0, 2, 8):
        orders = range(m, 41, 2)
        vals = np.array([zernike_radial(n, m, rho) for n in orders])
        gram = (vals * w * rho) @ vals.T
        expected = np.diag([1 / (2 * (n + 1)) for n in orders])
        np.testing.assert_allclose(gram, expected, atol=1e-12)


def test_radial_rejects_bad_orders() -> None:
    with pytest.raises(ValueError, match=r"n - \|m\| even"):
        zernike_radial(3, 2, 0.5)
    with pytest.raises(ValueError):
        zernike_radial(2, 4, 0.5)


def _orthogonality_error(box: int, radius: float, n_max: int) -> float:
    """Max |moment - expected| for the real and imaginary parts of every V_nm."""
    nm = zernike_indices(n_max, even_m_only=False)
    rho, theta = _polar(box, radius)
    inside = rho < 1
    funcs = np.array(
        [zernike_radial(n, m, np.minimum(rho, 1)) * np.exp(1j * m * theta) * inside for n, m in nm]
    )
    a_re = zernike_moments(funcs.real, n_max, radius=radius, even_m_only=False)
    a_im = zernike_moments(funcs.imag, n_max, radius=radius, even_m_only=False)
    # Re V_nm = (V_nm + V_n,-m) / 2 and Im V_nm = (V_nm - V_n,-m) / 2i.
    expected_re = np.diag(np.where(nm[:, 1] == 0, 1.0, 0.5))
    expected_im = np.diag(np.where(nm[:, 1] == 0, 0.0, -0.5j))
    return float(max(np.abs(a_re - expected_re).max(), np.abs(a_im - expected_im).max()))


def test_orthogonality_on_a_fine_disk() -> None:
    """Moments of V_nm reproduce it; the error is the pixelated disk edge, O(1 / radius)."""
    fine = _orthogonality_error(256, 128.0, 10)
    coarse = _orthogonality_error(64, 32.0, 10)
    assert fine < 0.015  # measured 0.0088
    assert fine < coarse / 3  # measured 0.0088 vs 0.049: the edge error shrinks with radius


@PROPERTY
@given(alpha=st.floats(0, 2 * np.pi), seed=st.integers(0, 2**16))
def test_rotation_multiplies_by_phase(alpha: float, seed: int) -> None:
    """Rotating by alpha (counter-clockwise in the column-row plane) gives exp(-i m alpha)."""
    box, n_max = 64, 12
    a0 = zernike_moments(_blobs(box, 0.0, seed), n_max, even_m_only=False)[0]
    a1 = zernike_moments(_blobs(box, alpha, seed), n_max, even_m_only=False)[0]
    m = zernike_indices(n_max, even_m_only=False)[:, 1]
    # The blobs are smooth and vanish well inside the disk, so the pixel sums are
    # spectrally accurate quadratures: measured errors ~1e-15 (the wrong sign gives ~0.5).
    err = np.abs(a1 - np.exp(-1j * m * alpha) * a0).max()
    assert err < 1e-10 * np.abs(a0).max()
    np.testing.assert_allclose(np.abs(a1), np.abs(a0), atol=1e-10 * np.abs(a0).max())


def test_moments_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    box, radius, n_max = 9, 3.7, 6
    img = rng.normal(size=(box, box))
    nm = zernike_indices(n_max, even_m_only=False)
    expected = np.zeros(len(nm), dtype=complex)
    for j, (n, m) in enumerate(nm):
        for row in range(box):
            for col in range(box):
                y, x = row - box // 2, col - box // 2
                r = math.hypot(x, y) / radius
                if r < 1:
                    v = _radial_factorial(int(n), int(m), np.array(r)) * np.exp(
                        1j * m * math.atan2(y, x)
                    )
                    expected[j] += img[row, col] * np.conj(v) * (n + 1) / np.pi / radius**2
    got = zernike_moments(img, n_max, radius=radius, even_m_only=False)
    assert got.shape == (1, len(nm)) and got.dtype == np.complex128
    np.testing.assert_allclose(got[0], expected, rtol=1e-10, atol=1e-12)


def test_basis_matches_moments_and_is_cached_read_only() -> None:
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(5, 24, 24))
    basis = zernike_basis(24, 8, radius=10.0)
    assert basis.shape == (len(zernike_indices(8)), 24 * 24)
    assert not basis.flags.writeable
    assert zernike_basis(24, 8, radius=10.0) is basis
    rho, _ = _polar(24, 10.0)
    assert np.all(basis[:, (rho >= 1).ravel()] == 0)
    np.testing.assert_allclose(
        zernike_moments(imgs, 8, radius=10.0), imgs.reshape(5, -1) @ basis.T, rtol=1e-12, atol=1e-12
    )


def test_centrosymmetric_images_have_no_odd_m() -> None:
    """Why even_m_only is enough for T: odd-m moments of f(x) = f(-x) vanish."""
    rng = np.random.default_rng(2)
    box = 32
    f = rng.normal(size=(3, box, box))
    sym = f + np.roll(f[:, ::-1, ::-1], 1, axis=(1, 2))  # f(x) + f(-x) about (L//2, L//2)
    a = zernike_moments(sym, 10, even_m_only=False)
    odd = zernike_indices(10, even_m_only=False)[:, 1] % 2 == 1
    assert np.abs(a[:, odd]).max() < 1e-12 * np.abs(a).max()
    assert np.abs(a[:, ~odd]).min() > 0


def test_dtypes_shapes_and_no_mutation() -> None:
    rng = np.random.default_rng(3)
    imgs = rng.normal(size=(4, 16, 16)).astype(np.float32)
    before = imgs.copy()
    a32 = zernike_moments(imgs, 8)
    assert a32.dtype == np.complex64 and a32.shape == (4, 15)
    np.testing.assert_array_equal(imgs, before)
    a64 = zernike_moments(imgs.astype(np.float64), 8)
    assert a64.dtype == np.complex128
    np.testing.assert_allclose(a32, a64, rtol=1e-4, atol=1e-5 * np.abs(a64).max())
    assert zernike_moments(imgs[0].astype(np.int16), 4).dtype == np.complex64
    with pytest.raises(ValueError, match="square"):
        zernike_moments(np.zeros((2, 8, 9)), 4)
    with pytest.raises(TypeError, match="real"):
        zernike_moments(np.zeros((2, 8, 8), dtype=complex), 4)
    with pytest.raises(ValueError, match="radius"):
        zernike_moments(imgs, 4, radius=0)


def test_disk_taper_weights_the_image_radially() -> None:
    rng = np.random.default_rng(4)
    imgs = rng.normal(size=(3, 20, 20))
    rho, _ = _polar(20, 9.0)
    window = 0.5 * (1 - np.cos(np.pi * np.clip((1 - rho) / 0.3, 0, 1)))
    np.testing.assert_allclose(
        zernike_moments(imgs, 8, radius=9.0, disk_taper=0.3),
        zernike_moments(imgs * window, 8, radius=9.0),
        rtol=1e-12,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match="disk_taper"):
        zernike_moments(imgs, 8, disk_taper=1.5)


@pytest.mark.parametrize(
    ("box", "fft_size", "radius", "taper"),
    [(16, 16, None, 0.0), (15, 32, 6.5, 0.2), (16, 23, None, 0.1)],
)
def test_even_spectrum_operator_skips_the_inverse_fft(
    box: int, fft_size: int, radius: float | None, taper: float
) -> None:
    """tensordot(A, op) equals the moments of the centred, cropped irfft2(A)."""
    rng = np.random.default_rng(5)
    amp = np.abs(np.fft.rfft2(rng.normal(size=(3, fft_size, fft_size))))  # real and even
    op = even_spectrum_operator(box, 8, fft_size=fft_size, radius=radius, disk_taper=taper)
    assert op.shape == (fft_size, fft_size // 2 + 1, len(zernike_indices(8)))
    assert not op.flags.writeable
    t = np.fft.fftshift(np.fft.irfft2(amp, s=(fft_size, fft_size)), axes=(-2, -1))
    start = fft_size // 2 - box // 2
    t = t[:, start : start + box, start : start + box]
    expected = zernike_moments(t, 8, radius=radius, disk_taper=taper)
    np.testing.assert_allclose(
        np.tensordot(amp, op, axes=2), expected, rtol=1e-9, atol=1e-12 * np.abs(expected).max()
    )
    with pytest.raises(ValueError, match="fft_size"):
        even_spectrum_operator(box, 8, fft_size=box - 1)


@pytest.mark.parametrize(
    ("box", "fft_size", "band", "n_max"),
    [
        (16, 16, (0.0, 1.0), 8),  # the default band: DC and corners out
        (16, 16, None, 8),  # DC and the Nyquist row/column in: degenerate orbits
        (15, 23, (0.1, 0.7), 8),  # odd sizes
        (16, 17, None, 6),
        (32, 48, (0.0, 1.0), 12),
    ],
)
def test_folded_operator_equals_the_plain_one(
    box: int, fft_size: int, band: tuple[float, float] | None, n_max: int
) -> None:
    """Folding by the grid's rotation and transposition symmetry changes nothing but
    the cost: moments and the band's squared norm equal the plain computation."""
    from cryomanifold.spectrum import band_weights, rfft_multiplicity
    from cryomanifold.zernike import folded_spectrum_operator

    rng = np.random.default_rng(8)
    amp = np.abs(np.fft.rfft2(rng.normal(size=(3, fft_size, fft_size))))  # real and even
    weights = band_weights(fft_size, band, 0.05)
    plain = even_spectrum_operator(box, n_max, fft_size=fft_size, disk_taper=0.1)
    expected = np.tensordot(amp * weights, plain, axes=2)
    folded = folded_spectrum_operator(
        box, n_max, fft_size=fft_size, weights=weights, disk_taper=0.1
    )
    n_orbits = folded.indices.size // 4
    assert n_orbits < np.count_nonzero(weights) / 3  # about a quarter of the band
    values = amp.reshape(3, -1)[:, folded.indices].T.astype(np.float32)
    moments, squared_norm = folded.project(np.ascontiguousarray(values))
    got = moments[: folded.n_moments].T + 1j * moments[folded.n_moments :].T
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * np.abs(expected).max())
    norm = np.einsum("nij,j->n", (amp * weights) ** 2, rfft_multiplicity(fft_size))
    np.testing.assert_allclose(squared_norm, norm, rtol=2e-6)
    assert not folded.indices.flags.writeable
    with pytest.raises(ValueError, match="weights"):
        folded_spectrum_operator(box, n_max, fft_size=fft_size, weights=weights[:-1])
