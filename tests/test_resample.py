"""Bringing particles to a map's box and pixel size (cryomanifold.resample)."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.preprocess import fourier_crop
from cryomanifold.resample import GeometryError, plan_geometry, resample_images


def test_native_when_the_run_itself_would_crop_so():
    plan = plan_geometry(256, 1.0, 64, 4.0)
    assert plan.native and plan.resampled_box == 64
    assert plan_geometry(64, 3.5, 64, 3.5).native


def test_crop_then_fourier_crop_reaches_the_pixel_size():
    plan = plan_geometry(256, 1.0, 64, 3.5)  # 3.5 / 1.0 is not 256 / 64
    assert not plan.native
    assert plan.resampled_box >= 64 and plan.crop_box <= 256
    assert abs(plan.pixel_size_angstrom - 3.5) <= 0.002 * 3.5
    assert "Fourier-cropped" in plan.describe()
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 256, 256)).astype(np.float32)
    out = resample_images(images, plan, np.arange(3))
    assert out.shape == (3, 64, 64)
    start = (256 - plan.crop_box) // 2
    expected = fourier_crop(
        images[:, start : start + plan.crop_box, start : start + plan.crop_box], 64
    )
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_small_boxes_are_padded_with_seeded_background_noise():
    plan = plan_geometry(56, 2.0, 64, 2.0)
    assert not plan.native and plan.resampled_box == 56 and "padded" in plan.describe()
    rng = np.random.default_rng(1)
    images = (3.0 + 0.5 * rng.normal(size=(4, 56, 56))).astype(np.float32)
    out = resample_images(images, plan, np.arange(10, 14))
    np.testing.assert_array_equal(out[:, 4:60, 4:60], images)
    border = out[:, :4, :].ravel()
    assert abs(border.mean() - 3.0) < 0.1 and abs(border.std() - 0.5) < 0.1
    # the noise depends on the particle's row, not on the batch it is read in
    again = resample_images(images[2:3], plan, np.array([12]))
    np.testing.assert_array_equal(again[0], out[2])


def test_refusals_name_both_geometries():
    with pytest.raises(GeometryError, match=r"coarser.*4 Å/px"):
        plan_geometry(64, 4.0, 64, 2.0)
    with pytest.raises(GeometryError, match="field of view"):
        plan_geometry(40, 2.0, 64, 2.0)
