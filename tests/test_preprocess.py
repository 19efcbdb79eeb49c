"""Tests of cryomanifold.preprocess: cropping, normalisation, preparation, bad images."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.ctf import CTFParams, phase_flip
from cryomanifold.preprocess import (
    bad_images,
    fourier_crop,
    normalize,
    prepare_images,
    radial_distance,
)


def _ctf(n: int, seed: int = 0) -> CTFParams:
    rng = np.random.default_rng(seed)
    return CTFParams(
        rng.uniform(1e4, 2.5e4, n),
        rng.uniform(1e4, 2.5e4, n),
        rng.uniform(0, 180, n),
        300.0,
        2.7,
        0.1,
    )


def test_normalize_gives_a_standard_background() -> None:
    rng = np.random.default_rng(0)
    imgs = (rng.normal(3.0, 2.5, size=(5, 40, 40))).astype(np.float32)
    before = imgs.copy()
    out = normalize(imgs)
    np.testing.assert_array_equal(imgs, before)
    bg = radial_distance(40) > 16
    np.testing.assert_allclose(out[:, bg].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, bg].std(axis=1), 1, rtol=1e-5)
    # a constant background is only shifted, never divided by zero
    flat = np.zeros((1, 40, 40), np.float32)
    flat[0, 20, 20] = 5.0
    np.testing.assert_array_equal(normalize(flat), flat)
    # in place
    inplace = imgs.copy()
    assert normalize(inplace, out=inplace) is inplace
    np.testing.assert_allclose(inplace, out, atol=1e-6)


def test_fourier_crop_samples_a_band_limited_image_exactly() -> None:
    y, x = np.mgrid[0:64, 0:64] / 64
    img = 1.5 + np.cos(2 * np.pi * (3 * x + 5 * y)) + 0.5 * np.sin(2 * np.pi * (7 * x - 2 * y))
    small = fourier_crop(img[None].astype(np.float32), 32)[0]
    np.testing.assert_allclose(small, img[::2, ::2], atol=1e-5)
    assert small.dtype == np.float32
    with pytest.raises(ValueError, match="even"):
        fourier_crop(img[None], 31)


def test_prepare_images_crops_flips_and_normalises_in_one_pass() -> None:
    """The fused crop + phase flip equals cropping, then flipping on the cropped grid."""
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(6, 96, 96)).astype(np.float32)
    before = imgs.copy()
    ctf = _ctf(6)
    out, apix = prepare_images(imgs, box=64, pixel_size_angstrom=1.5, ctf=ctf)
    np.testing.assert_array_equal(imgs, before)
    assert apix == pytest.approx(1.5 * 96 / 64) and out.shape == (6, 64, 64)
    two_step = normalize(phase_flip(fourier_crop(imgs, 64), ctf, apix))
    np.testing.assert_allclose(out, two_step, atol=2e-5)
    plain, same = prepare_images(imgs[:, :64, :64], box=64, pixel_size_angstrom=1.5)
    assert same == 1.5
    np.testing.assert_allclose(plain, normalize(imgs[:, :64, :64]), atol=1e-6)
    odd, _ = prepare_images(imgs[:, :63, :63], box=64, pixel_size_angstrom=1.5)
    assert odd.shape == (6, 62, 62)
    with pytest.raises(ValueError, match="CTF entries"):
        prepare_images(imgs, box=64, pixel_size_angstrom=1.5, ctf=_ctf(5))


def test_bad_images_flags_non_finite_and_constant_images_one_by_one() -> None:
    rng = np.random.default_rng(2)
    imgs = rng.normal(size=(7, 16, 16)).astype(np.float32)
    imgs[1, 3, 4] = np.nan
    imgs[2, 0, 0] = np.inf
    imgs[3, 5, 5] = -np.inf
    imgs[4] = 2.5  # constant
    imgs[5] = 0.0  # empty
    imgs[6] *= 1e-8  # faint but not constant: kept
    expected = [False, True, True, True, True, True, False]
    np.testing.assert_array_equal(bad_images(imgs), expected)
    # per image: the same call whatever the batch it comes in
    for i in range(7):
        assert bad_images(imgs[i : i + 1])[0] == expected[i]
    np.testing.assert_array_equal(bad_images(imgs.astype(np.float16)), expected)
