"""Projection: scattering factors, pose and shift conventions, rotations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from cryomanifold.preprocess import radial_distance
from cryomanifold.simulate import builtin_model
from cryomanifold.simulate.models import model_from_arrays
from cryomanifold.simulate.project import (
    POTENTIAL_PER_SCATTERING_FACTOR,
    WATER_MEAN_INNER_POTENTIAL_VOLTS,
    make_projector,
    matrix_to_relion_euler,
    random_rotations,
    relion_euler_to_matrix,
)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _centroid(image: np.ndarray) -> np.ndarray:
    """(x, y) centroid in pixels: x along columns, y along rows."""
    idx = np.arange(image.shape[0])
    return np.array([(image.sum(0) * idx).sum(), (image.sum(1) * idx).sum()]) / image.sum()


@pytest.mark.parametrize(
    ("element", "bfactor", "oversample"), [("C", 20.0, 1), ("O", 60.0, 1), ("S", 10.0, 2)]
)
def test_single_atom_is_a_centred_round_blob_with_the_form_factor_integral(
    element: str, bfactor: float, oversample: int
) -> None:
    import gemmi

    atom = model_from_arrays("atom", [[0.0, 0.0, 0.0]], [element], [bfactor])
    pixel = 0.5
    projector = make_projector(
        atom,
        box_size=64,
        pixel_size_angstrom=pixel,
        oversample=oversample,
        implicit_hydrogens=False,
        solvent=False,
    )
    image = projector.project(np.eye(3)[None])[0].astype(np.float64)
    # integral: h^2/(2 pi m0 e) * f(0), f(0) = sum of the five a_i (Å), in V Å^3
    f0 = sum(gemmi.Element(element).c4322.get_coefs()[:5])
    assert image.sum() * pixel**2 == pytest.approx(POTENTIAL_PER_SCATTERING_FACTOR * f0, rel=1e-5)
    assert pytest.approx(47.878, abs=1e-3) == POTENTIAL_PER_SCATTERING_FACTOR
    assert np.unravel_index(np.argmax(image), image.shape) == (32, 32)
    np.testing.assert_allclose(_centroid(image), [32.0, 32.0], atol=2e-3)
    # radially symmetric: every pixel within 2% (of the peak) of its ring's mean
    ring = np.round(radial_distance(64) * 4).astype(int)
    profile = np.bincount(ring.ravel(), image.ravel()) / np.maximum(np.bincount(ring.ravel()), 1)
    assert np.abs(image - profile[ring]).max() < 0.02 * image.max()
    # and a blob, not a delta: half of the signal is outside the central pixel
    assert image.max() * pixel**2 < 0.5 * image.sum() * pixel**2


def test_b_factor_blurs_but_keeps_the_integral() -> None:
    sharp = model_from_arrays("a", [[0.0, 0.0, 0.0]], ["N"], [10.0])
    soft = model_from_arrays("a", [[0.0, 0.0, 0.0]], ["N"], [150.0])
    kw = {"box_size": 64, "pixel_size_angstrom": 0.5, "implicit_hydrogens": False, "solvent": False}
    a = make_projector(sharp, **kw).project(np.eye(3)[None])[0]
    b = make_projector(soft, **kw).project(np.eye(3)[None])[0]
    assert a.sum() == pytest.approx(b.sum(), rel=1e-5)
    assert b.max() < 0.3 * a.max()


def test_solvent_and_implicit_hydrogens_change_the_contrast_as_expected() -> None:
    model = builtin_model("ring_d5")
    kw = {"box_size": 64, "pixel_size_angstrom": 3.0}
    vacuum = make_projector(model, solvent=False, implicit_hydrogens=False, **kw)
    with_h = make_projector(model, solvent=False, **kw)
    in_ice = make_projector(model, **kw)
    totals = [p.project(np.eye(3)[None])[0].sum() for p in (vacuum, with_h, in_ice)]
    # hydrogens add ~25%; the displaced ice removes most: protein/ice contrast is ~40%
    assert 1.15 < totals[1] / totals[0] < 1.35
    assert 0.3 < totals[2] / totals[1] < 0.5
    assert pytest.approx(4.57, abs=0.05) == WATER_MEAN_INNER_POTENTIAL_VOLTS


@pytest.mark.parametrize(("oversample", "smooth_px"), [(2, 0.0), (1, 0.7)])
def test_rotating_about_the_beam_axis_rotates_the_projection(
    oversample: int, smooth_px: float
) -> None:
    # without oversampling, aliasing near Nyquist costs ~1% correlation: compare those
    # projections below ~0.7 Nyquist
    projector = make_projector(
        builtin_model("asym_l"), box_size=96, pixel_size_angstrom=2.0, oversample=oversample
    )
    rng = np.random.default_rng(7)
    # put the particle centre on the array centre (47.5, 47.5), the centre of ndimage.rotate
    half_pixel = np.full((2, 2), -1.0)
    for _ in range(3):
        pose = random_rotations(1, rng)[0]
        phi = rng.uniform(40.0, 140.0)
        in_plane = Rotation.from_euler("z", phi, degrees=True).as_matrix()
        images = projector.project(np.stack([pose, in_plane @ pose]), half_pixel)
        if smooth_px:
            images = ndimage.gaussian_filter(images, (0, smooth_px, smooth_px))
        # +phi about z is counter-clockwise in (x, y) = (column, row): ndimage's -phi
        good = _corr(ndimage.rotate(images[0], -phi, reshape=False, order=3), images[1])
        wrong = _corr(ndimage.rotate(images[0], phi, reshape=False, order=3), images[1])
        assert good > 0.99
        assert wrong < good - 0.05


def test_relion_euler_angles_round_trip_and_match_relion_conventions() -> None:
    rng = np.random.default_rng(3)
    mats = random_rotations(200, rng)
    angles = matrix_to_relion_euler(mats)
    np.testing.assert_allclose(relion_euler_to_matrix(angles), mats, atol=1e-10)
    assert np.all((angles[:, 1] >= 0) & (angles[:, 1] <= 180))
    # RELION: A^T = Rz(rot) Ry(tilt) Rz(psi); the third row of A is the viewing direction
    rot, tilt, _ = np.deg2rad(angles).T
    direction = np.stack([np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)], 1)
    np.testing.assert_allclose(mats[:, 2, :], direction, atol=1e-10)
    np.testing.assert_allclose(
        Rotation.from_euler("ZYZ", angles, degrees=True).inv().as_matrix(), mats, atol=1e-10
    )
    # psi alone is an in-plane rotation by -psi (RELION's passive convention)
    np.testing.assert_allclose(
        relion_euler_to_matrix([0.0, 0.0, 30.0])[0],
        Rotation.from_euler("z", -30.0, degrees=True).as_matrix(),
        atol=1e-12,
    )
    np.testing.assert_allclose(matrix_to_relion_euler(np.eye(3)), [[0.0, 0.0, 0.0]], atol=1e-12)


def test_random_rotations_are_uniform() -> None:
    mats = random_rotations(20_000, np.random.default_rng(0))
    np.testing.assert_allclose(
        np.einsum("nij,nkj->nik", mats, mats), np.eye(3)[None].repeat(len(mats), 0), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    # Haar measure: E[R] = 0 and viewing directions uniform on the sphere (cos tilt ~ U(-1, 1))
    assert np.abs(mats.mean(axis=0)).max() < 0.02
    cos_tilt = mats[:, 2, 2]
    assert abs(cos_tilt.mean()) < 0.02
    assert cos_tilt.var() == pytest.approx(1 / 3, abs=0.01)
    a, b = (
        random_rotations(3, np.random.default_rng(5)),
        random_rotations(3, np.random.default_rng(5)),
    )
    np.testing.assert_array_equal(a, b)


def test_shift_moves_the_particle_centre_by_shift_over_pixel_size() -> None:
    projector = make_projector(builtin_model("asym_l"), box_size=96, pixel_size_angstrom=2.0)
    pose = np.eye(3)[None].repeat(2, 0)
    images = projector.project(pose, np.array([[0.0, 0.0], [10.0, -6.0]]))
    np.testing.assert_allclose(_centroid(images[1]) - _centroid(images[0]), [5.0, -3.0], atol=0.02)
    # centred model: its projected centre of mass is at pixel L // 2
    np.testing.assert_allclose(_centroid(images[0]), [48.0, 48.0], atol=0.5)


def test_oversampling_agrees_at_low_resolution() -> None:
    model = builtin_model("ring_d5")
    pose = random_rotations(1, np.random.default_rng(2))
    kw = {"box_size": 64, "pixel_size_angstrom": 3.0}
    a = make_projector(model, oversample=1, **kw).project(pose)[0]
    b = make_projector(model, oversample=2, **kw).project(pose)[0]
    assert a.sum() == pytest.approx(b.sum(), rel=1e-4)
    assert _corr(ndimage.gaussian_filter(a, 1.5), ndimage.gaussian_filter(b, 1.5)) > 0.995


def test_batch_and_single_projections_agree() -> None:
    projector = make_projector(builtin_model("asym_l"), box_size=96, pixel_size_angstrom=2.0)
    poses = random_rotations(5, np.random.default_rng(4))
    shifts = np.random.default_rng(5).normal(0.0, 4.0, (5, 2))
    batch = projector.spectrum(poses, shifts)
    for i in range(5):
        np.testing.assert_allclose(
            projector.spectrum(poses[i : i + 1], shifts[i : i + 1])[0],
            batch[i],
            rtol=1e-5,
            atol=1e-3,
        )
