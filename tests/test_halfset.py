"""Half-set class averages: real projections beat the noise control, noise does not."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from cryomanifold.halfset import (
    band_correlation,
    class_half_sets,
    default_band,
    half_set_average,
    phase_randomized,
)
from cryomanifold.metrics import frc_crossing_angstrom
from cryomanifold.transforms import rotate_images, shift_images

BOX = 32
APIX = 5.0


def _view(box: int) -> np.ndarray:
    """An asymmetric particle: four unequal Gaussian blobs."""
    yy, xx = np.mgrid[:box, :box] - box // 2
    img = np.zeros((box, box))
    for (cy, cx), s, w in zip(
        [(-5, -3), (4, -5), (2, 6), (-4, 5)],
        [2.0, 1.5, 2.5, 1.2],
        [1.0, 0.7, 1.2, 0.8],
        strict=True,
    ):
        img += w * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    return img.astype(np.float32)


def _class(n: int, rng: np.random.Generator, *, snr: float) -> np.ndarray:
    """Rotated, shifted and mirrored noisy copies of one view."""
    view = _view(BOX)
    copies = np.repeat(view[None], n, axis=0)
    copies[: n // 3] = copies[: n // 3, :, ::-1]  # a third are mirror images
    copies = rotate_images(copies, rng.uniform(0, 360, n))
    copies = shift_images(copies, rng.uniform(-2, 2, (n, 2)))
    noise = rng.standard_normal(copies.shape) * view.std() / snr
    return (copies + noise).astype(np.float32)


def test_projections_beat_the_noise_control_and_noise_does_not():
    rng = np.random.default_rng(0)
    real = half_set_average(
        _class(60, rng, snr=0.5), pixel_size_angstrom=APIX, random_state=1, n_iter=3
    )
    assert real.consistent
    assert real.resolution_angstrom < real.control_resolution_angstrom
    assert real.band_correlation > real.control_band_correlation + 0.2
    noise = half_set_average(
        rng.standard_normal((60, BOX, BOX)).astype(np.float32),
        pixel_size_angstrom=APIX,
        random_state=1,
        n_iter=3,
    )
    assert not noise.consistent and noise.consistency_z < 3
    for h in (real, noise):
        assert h.average.shape == (BOX, BOX) and h.frc.shape == (BOX // 2 + 1,)
        assert h.frc_control.shape == h.frc.shape and np.isnan(h.full_control_frc).all()


def test_full_control_runs_and_is_reproducible():
    rng = np.random.default_rng(2)
    imgs = _class(24, rng, snr=1.0)
    a = half_set_average(
        imgs, pixel_size_angstrom=APIX, random_state=3, n_iter=2, full_control=True
    )
    b = half_set_average(
        imgs, pixel_size_angstrom=APIX, random_state=3, n_iter=2, full_control=True
    )
    assert np.isfinite(a.full_control_frc).all() and np.isfinite(a.full_control_band_correlation)
    np.testing.assert_array_equal(a.average, b.average)
    assert a.consistency_z == b.consistency_z


def test_phase_randomized_keeps_the_amplitude_spectrum():
    rng = np.random.default_rng(4)
    imgs = _class(3, rng, snr=2.0)
    out = phase_randomized(imgs, rng)
    np.testing.assert_allclose(
        np.abs(sfft.rfft2(out)), np.abs(sfft.rfft2(imgs)), rtol=1e-3, atol=1e-3
    )
    assert abs(float(np.corrcoef(out[0].ravel(), imgs[0].ravel())[0, 1])) < 0.3


def test_band_correlation_and_resolution():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((BOX, BOX))
    band = default_band(BOX)
    np.testing.assert_allclose(band_correlation(a, np.stack([a, -a]), band), [1.0, -1.0])
    frc = np.concatenate([[1.0], np.linspace(1.0, 0.0, BOX // 2)])
    res = frc_crossing_angstrom(frc, APIX, 0.143)
    ring = np.interp(0.143, frc[1:][::-1], np.arange(1, BOX // 2 + 1)[::-1])
    assert res == pytest.approx(BOX * APIX / ring, rel=1e-6)
    assert frc_crossing_angstrom(np.ones(BOX // 2 + 1), APIX, 0.143) == 2 * APIX


def test_class_half_sets_skips_tiny_classes():
    rng = np.random.default_rng(6)
    imgs = np.concatenate([_class(12, rng, snr=1.0), _class(3, rng, snr=1.0)])
    labels = np.array([0] * 12 + [1] * 3 + [-1] * 0)
    out = class_half_sets(
        imgs, labels, pixel_size_angstrom=APIX, random_state=0, n_iter=2, progress=False
    )
    assert len(out) == 2 and out[1] is None and out[0] is not None
    assert out[0].n_members == 12
    with pytest.raises(ValueError, match=">= 4 images"):
        half_set_average(imgs[:3], pixel_size_angstrom=APIX)
