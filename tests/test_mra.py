"""Tests of cryomanifold.polar and cryomanifold.mra: ring coefficients, pose search,
and the invariance of the best-over-pose correlations (the refine stage's features)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from cryomanifold.mra import (
    aligned_images,
    default_mask,
    local_shift_grid,
    search_poses,
)
from cryomanifold.polar import (
    PolarGrid,
    mirror_coefficients,
    polar_coefficients,
    pose_to_transform,
    rotational_correlation,
    shift_coefficients,
)
from cryomanifold.transforms import rotate_images, shift_images

PROPERTY = settings(deadline=None, max_examples=15, derandomize=True)
BOX = 48


def _views(n: int, seed: int, box: int = BOX) -> np.ndarray:
    """Projections (n, box, box) of one asymmetric 3-D assembly of Gaussian blobs in
    ``n`` random orientations."""
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(9, 3)) * 4.5
    pts -= pts.mean(axis=0)
    sig, amp = rng.uniform(1.5, 2.5, 9), rng.uniform(0.5, 1.5, 9)
    rot = Rotation.random(n, random_state=seed).as_matrix()
    q = np.einsum("nij,mj->nmi", rot, pts)
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    out = np.zeros((n, box, box))
    for j in range(pts.shape[0]):
        d2 = (x[None] - q[:, j, 0, None, None]) ** 2 + (y[None] - q[:, j, 1, None, None]) ** 2
        out += amp[j] * np.exp(-0.5 * d2 / sig[j] ** 2)
    return out.astype(np.float32)


def _mirror(images: np.ndarray) -> np.ndarray:
    """Rows mirrored about the centre row L // 2."""
    return np.roll(images[:, ::-1, :], 1 - images.shape[-1] % 2, axis=1)


def _search(images: np.ndarray, refs: np.ndarray, radius: float = 3.0, step: float = 1.0):
    grid = PolarGrid.make(images.shape[-1], 1.0, 16.0)
    return search_poses(
        images,
        refs,
        ring_weights=grid.radii,
        grid=grid,
        mask=default_mask(images.shape[-1]),
        shifts_px=local_shift_grid(radius, step),
        mirror=True,
        angle_oversampling=1 if step >= 1 else 2,
    )


def test_grid_covers_the_outer_ring() -> None:
    grid = PolarGrid.make(64, 1.0, 20.0)
    assert grid.radii[0] == 1.0 and grid.radii[-1] == 20.0
    assert grid.n_phi >= 2 * np.pi * 20 and grid.n_phi % 4 == 0
    assert grid.n_m == grid.n_phi // 2 + 1


def test_shift_coefficients_match_shifting_the_samples() -> None:
    img = _views(1, 0)
    grid = PolarGrid.make(BOX, 1.0, 18.0)
    shifts = np.array([[1.5, -2.0], [0.0, 3.0]])
    direct = polar_coefficients(img, grid, shifts_px=shifts)  # (1, 2, R, m)
    base = polar_coefficients(img, grid)
    again = shift_coefficients(base, grid, shifts[None])
    np.testing.assert_allclose(again, direct, atol=1e-4 * np.abs(direct).max())


def test_rotational_correlation_peaks_at_the_rotation() -> None:
    img = _views(1, 1)
    turned = rotate_images(img, 70.0)
    grid = PolarGrid.make(BOX, 1.0, 18.0)
    a = polar_coefficients(img, grid, ring_filter=grid.radii)
    b = polar_coefficients(turned, grid)
    corr = rotational_correlation(a, b, 360)[0, 0]
    assert abs(int(np.argmax(corr)) - 70) <= 1


def test_mirror_coefficients_are_those_of_the_mirror_image() -> None:
    img = _views(1, 2)
    grid = PolarGrid.make(BOX, 1.0, 18.0)
    direct = polar_coefficients(_mirror(img), grid)
    np.testing.assert_allclose(
        mirror_coefficients(polar_coefficients(img, grid)), direct, atol=1e-4 * np.abs(direct).max()
    )


def test_pose_to_transform_turns_the_shift_with_the_image() -> None:
    angles, shifts = pose_to_transform([90.0], [[0.0, 2.0]])
    # a shift 2 px right, then a quarter turn counter-clockwise: 2 px up (rows -2)
    np.testing.assert_allclose(shifts, [[-2.0, 0.0]], atol=1e-9)
    assert angles[0] == 90.0


@PROPERTY
@given(
    angle=st.floats(0, 360),
    dy=st.floats(-2.5, 2.5),
    dx=st.floats(-2.5, 2.5),
    mirror=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_search_finds_reference_and_pose(
    angle: float, dy: float, dx: float, mirror: bool, seed: int
) -> None:
    """A turned, shifted, possibly mirrored copy of one of five references is matched
    to it, and aligning it by the found pose puts it back onto the reference."""
    refs = _views(5, seed)
    img = refs[2:3]
    if mirror:
        img = _mirror(img)
    moved = shift_images(rotate_images(img, angle), [dy, dx])
    pose = _search(moved, refs)
    assert pose.best[0] == 2
    back = aligned_images(moved, pose)[0]
    mask = default_mask(BOX)
    r = np.corrcoef((back * mask).ravel(), (refs[2] * mask).ravel())[0, 1]
    assert r > 0.97


@PROPERTY
@given(
    angle=st.floats(0, 360),
    dy=st.integers(-1, 1),
    dx=st.integers(-1, 1),
    mirror=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_best_over_pose_scores_are_invariant(
    angle: float, dy: int, dx: int, mirror: bool, seed: int
) -> None:
    """The refine stage's feature vector (best correlation with each reference over
    rotations, shifts within the searched range, and mirrors) barely moves when the
    particle is turned, shifted or mirrored; it moves far more between views.
    Measured worst case 0.013 of the score vector's norm (half-pixel shift grid,
    two rotations per polar angle, bilinear ring samples), against a median of
    0.05-0.1 between random views; the tolerance is about 2x the worst case."""
    refs = _views(6, seed, box=64)
    particle = _views(6, seed + 1, box=64)
    img = particle[:1]
    moved = rotate_images(_mirror(img) if mirror else img, angle)
    moved = np.roll(moved, (dy, dx), axis=(1, 2))
    s0 = _search(img, refs, step=0.5).scores[0]
    s1 = _search(moved, refs, step=0.5).scores[0]
    others = _search(particle[1:], refs, step=0.5).scores
    change = np.linalg.norm(s1 - s0) / np.linalg.norm(s0)
    between = np.median(np.linalg.norm(others - s0, axis=1)) / np.linalg.norm(s0)
    assert change < 0.03
    assert change < 0.5 * between


def test_ctf_weighting_prefers_the_right_reference_under_a_ctf() -> None:
    """With |CTF| given per ring, the normalisation compares the image with what each
    reference would look like through that CTF; the right reference still wins."""
    refs = _views(4, 9)
    grid = PolarGrid.make(BOX, 1.0, 16.0)
    ring_ctf = np.abs(np.sin(0.02 * grid.radii**2 + 0.1)).astype(np.float32)
    # the phase-flipped image of a particle seen through that CTF: |CTF| x projection
    ring = np.rint(np.hypot(np.fft.fftfreq(BOX)[:, None] * BOX, np.arange(BOX // 2 + 1)))
    gain = np.interp(ring, grid.radii, ring_ctf)
    image = np.fft.irfft2(np.fft.rfft2(refs[1]) * gain, s=(BOX, BOX)).astype(np.float32)
    pose = search_poses(
        image[None],
        refs,
        ring_weights=grid.radii,
        grid=grid,
        mask=default_mask(BOX),
        ctf=ring_ctf[None],
        shifts_px=local_shift_grid(1.0),
    )
    assert pose.best[0] == 1 and pose.scores[0, 1] > 0.95


@pytest.mark.parametrize("radius,count", [(0.0, 1), (1.0, 5), (1.5, 9), (2.0, 13)])
def test_local_shift_grid(radius: float, count: int) -> None:
    g = local_shift_grid(radius)
    assert g.shape == (count, 2) and np.all(np.hypot(*g.T) <= radius + 1e-9)
