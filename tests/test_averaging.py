"""Tests for cryomanifold.averaging: rotation/shift, alignment and class averages.

Synthetic particles are a few Gaussian blobs of different sizes and weights placed
off-centre, so they have no rotational symmetry and their rotational average
differs clearly from the particle. Observed images are made so that the true pose
is known: ``observed = rotate(shift(truth, -s), -a)``, hence
``shift(rotate(observed, a), s) == truth``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryomanifold.averaging import (
    ClassAverage,
    align_to_reference,
    class_averages,
    reference_free_average,
    rotate_images,
    shift_images,
)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
BETAGAL = DATA / "real_particles" / "betagal_empiar10204_dev"


def _blob(box: int, centre: tuple[float, float], sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:box, :box] - box // 2
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def _particle(box: int, seed: int) -> np.ndarray:
    """Four blobs at 0.12-0.24 L from the centre, spread in angle, unequal."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 2 * np.pi)
    img = np.zeros((box, box))
    for k in range(4):
        radius = rng.uniform(0.12, 0.24) * box
        angle = start + k * np.pi / 2 + rng.uniform(-0.5, 0.5)
        sigma = rng.uniform(0.03, 0.06) * box
        weight = rng.uniform(0.5, 1.5)
        img += weight * _blob(box, (radius * np.sin(angle), radius * np.cos(angle)), sigma)
    return img.astype(np.float32)


def _disk(box: int, fraction: float = 0.35) -> np.ndarray:
    yy, xx = np.mgrid[:box, :box] - box // 2
    return np.hypot(yy, xx) < fraction * box


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    inside = _disk(a.shape[-1])
    x, y = a[inside] - a[inside].mean(), b[inside] - b[inside].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _observe(truth: np.ndarray, n: int, rng: np.random.Generator, noise: float, max_shift=5.0):
    """Randomly rotated and shifted noisy copies; noise is in units of the signal std."""
    angles = rng.uniform(0, 360, n)
    shifts = rng.uniform(-max_shift, max_shift, (n, 2))
    clean = rotate_images(shift_images(np.repeat(truth[None], n, 0), -shifts), -angles)
    sigma = noise * truth[_disk(truth.shape[-1])].std()
    noisy = clean + sigma * rng.standard_normal(clean.shape).astype(np.float32)
    return noisy.astype(np.float32), angles, shifts


def _angle_error(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.abs((np.asarray(estimate) - truth + 180.0) % 360.0 - 180.0)


# ----------------------------------------------------------------- rotate / shift


@pytest.mark.parametrize("box", [33, 32])
def test_quarter_turns_match_rot90(box: int) -> None:
    img = np.random.default_rng(0).standard_normal((1, box, box)).astype(np.float32)
    for k in (1, 2, 3, -1):
        expected = np.rot90(img[0], k)
        if box % 2 == 0:  # rot90 turns about (L - 1) / 2; we turn about L // 2
            expected = np.roll(
                expected, (1 if k % 4 in (1, 2) else 0, 1 if k % 4 in (2, 3) else 0), axis=(0, 1)
            )
        np.testing.assert_array_equal(rotate_images(img, 90.0 * k)[0], expected)


def test_positive_angle_turns_counter_clockwise_like_a_continuous_rotation() -> None:
    # A blob right of centre, rotated by +30 degrees, lands up and to the right
    # (counter-clockwise as displayed, rows down): compare with the analytic blob.
    box, r, sigma = 48, 12.0, 2.0
    for angle in (30.0, 123.0, -71.0):
        img = _blob(box, (0.0, r), sigma)[None].astype(np.float32)
        t = np.deg2rad(angle)
        expected = _blob(box, (-r * np.sin(t), r * np.cos(t)), sigma)
        np.testing.assert_allclose(rotate_images(img, angle)[0], expected, atol=2e-3)


@settings(max_examples=20, deadline=None)
@given(angle=st.floats(0.0, 360.0, allow_nan=False))
def test_rotation_round_trip(angle: float) -> None:
    # The three Fourier shears are each exactly invertible phase ramps (the Nyquist
    # row/column aside, where these blobs of sigma >= 1.4 px have < 1e-4 of their
    # amplitude), so only float32 round-off remains inside the disk.
    img = _particle(48, 3)[None]
    back = rotate_images(rotate_images(img, angle), -angle)[0]
    inside = _disk(48, 0.45)
    assert np.abs(back - img[0])[inside].max() < 1e-4 * img.max()


def test_rotations_compose() -> None:
    img = _particle(48, 4)[None]
    thrice = rotate_images(rotate_images(rotate_images(img, 25.0), 25.0), 25.0)[0]
    once = rotate_images(img, 75.0)[0]
    inside = _disk(48, 0.4)
    assert np.abs(thrice - once)[inside].max() < 1e-3 * img.max()


def test_integer_shift_is_roll_and_round_trips_exactly() -> None:
    rng = np.random.default_rng(1)
    img = rng.standard_normal((3, 32, 32)).astype(np.float32)
    shifts = np.array([[3, -5], [-16, 7], [0, 0]])
    moved = shift_images(img, shifts)
    for i, s in enumerate(shifts):
        np.testing.assert_array_equal(moved[i], np.roll(img[i], tuple(s), axis=(0, 1)))
    np.testing.assert_array_equal(shift_images(moved, -shifts), img)


def test_fractional_shift_matches_analytic_blob_and_round_trips() -> None:
    # A Gaussian of sigma 2.5 px is band-limited to float32 precision, so the
    # Fourier shift is exact up to round-off.
    img = np.stack([_blob(32, (1.0, -2.0), 2.5), _blob(32, (0.0, 3.0), 2.5)]).astype(np.float32)
    shifts = np.array([[0.4, 1.7], [-2.25, 0.0]])
    moved = shift_images(img, shifts)
    np.testing.assert_allclose(moved[0], _blob(32, (1.4, -0.3), 2.5), atol=1e-5)
    np.testing.assert_allclose(moved[1], _blob(32, (-2.25, 3.0), 2.5), atol=1e-5)
    np.testing.assert_allclose(shift_images(moved, -shifts), img, atol=1e-5)


# ----------------------------------------------------------------- alignment


@pytest.mark.parametrize(("noise", "max_angle", "max_shift"), [(0.0, 1.5, 0.25), (1.0, 5.0, 1.0)])
def test_align_recovers_angles_and_shifts(noise: float, max_angle: float, max_shift: float):
    rng = np.random.default_rng(11)
    truth = _particle(64, 7)
    images, angles, shifts = _observe(truth, 60, rng, noise)
    result = align_to_reference(images, truth)
    angle_err = _angle_error(result.angles_deg, angles)
    shift_err = np.hypot(*(result.shifts_px - shifts).T)
    assert angle_err.max() < max_angle, angle_err.max()
    assert shift_err.max() < max_shift, shift_err.max()
    assert result.angles_deg.dtype == np.float32 and result.aligned.shape == images.shape
    if noise == 0:
        assert result.scores.min() > 0.95
    redo = shift_images(rotate_images(images, result.angles_deg), result.shifts_px)
    np.testing.assert_allclose(result.aligned, redo, atol=1e-4)


def test_align_odd_box_and_both_half_turns() -> None:
    # Angles 180 degrees apart have the same amplitude spectrum: both must resolve.
    truth = _particle(47, 2)
    angles = np.array([10.0, 190.0, 275.0, 95.0])
    images = rotate_images(np.repeat(truth[None], 4, 0), -angles)
    result = align_to_reference(images, truth)
    assert _angle_error(result.angles_deg, angles).max() < 1.0


def test_align_rejects_bad_input() -> None:
    truth = _particle(32, 1)
    bad = np.repeat(truth[None], 3, 0)
    bad[1, 4, 4] = np.nan
    with pytest.raises(ValueError, match="image 1"):
        align_to_reference(bad, truth)
    with pytest.raises(ValueError, match="reference must have shape"):
        align_to_reference(bad[:, :-1, :-1], truth)


# ----------------------------------------------------------------- averaging


def test_reference_free_average_beats_the_unaligned_mean() -> None:
    # 100 copies, noise std 3x the signal std (SNR ~ 0.1 per image).
    rng = np.random.default_rng(5)
    truth = _particle(64, 21)
    images, angles, _ = _observe(truth, 100, rng, noise=3.0)
    result = reference_free_average(images, random_state=0)
    assert isinstance(result, ClassAverage) and result.n_members == 100
    np.testing.assert_allclose(result.average, result.alignment.aligned.mean(axis=0), atol=1e-5)

    def corr_after_rotation(avg: np.ndarray) -> float:
        return _corr(align_to_reference(avg, truth).aligned[0], truth)

    aligned_corr = corr_after_rotation(result.average)
    plain_corr = corr_after_rotation(images.mean(axis=0))
    assert aligned_corr > 0.85, aligned_corr
    assert aligned_corr > plain_corr + 0.3, (aligned_corr, plain_corr)
    # the members' angles agree with the truth up to one common offset
    offset = np.angle(np.exp(1j * np.deg2rad(result.alignment.angles_deg - angles)).mean())
    spread = _angle_error(result.alignment.angles_deg - angles, np.rad2deg(offset))
    assert np.median(spread) < 3.0 and np.mean(spread < 10.0) >= 0.95


def test_reference_free_average_is_reproducible_and_handles_one_image() -> None:
    rng = np.random.default_rng(2)
    images, _, _ = _observe(_particle(32, 5), 12, rng, noise=1.0)
    a = reference_free_average(images, n_iter=2, random_state=3)
    b = reference_free_average(images, n_iter=2, random_state=3)
    np.testing.assert_array_equal(a.average, b.average)
    single = reference_free_average(images[:1], n_iter=1)
    assert single.average.shape == (32, 32) and single.n_members == 1


@pytest.fixture(scope="module")
def three_classes():
    rng = np.random.default_rng(8)
    truths = [_particle(48, s) for s in (31, 32, 33)]
    parts = [_observe(t, 40, rng, noise=2.0)[0] for t in truths]
    labels = np.repeat(np.arange(3), 40)
    order = rng.permutation(labels.size)
    return truths, np.concatenate(parts)[order], labels[order]


def test_class_averages_match_their_own_particle(three_classes) -> None:
    truths, images, labels = three_classes
    averages = class_averages(images, labels, n_classes=4, random_state=0, progress=False)
    assert averages.shape == (4, 48, 48) and averages.dtype == np.float32
    assert not averages[3].any()  # empty class
    scores = np.array(
        [[align_to_reference(avg, t).scores[0] for t in truths] for avg in averages[:3]]
    )
    assert (scores.argmax(axis=1) == np.arange(3)).all(), scores
    assert np.diag(scores).min() > scores[~np.eye(3, dtype=bool)].max() + 0.1, scores
    # and it is sharp: an unaligned mean of these classes correlates 0.4-0.65
    for avg, truth in zip(averages, truths, strict=False):
        assert _corr(align_to_reference(avg, truth).aligned[0], truth) > 0.85


def test_class_averages_use_the_highest_weights(three_classes) -> None:
    truths, images, labels = three_classes
    # class 0 gets particle-0 images with high weight and particle-1 images with low
    merged = np.where(labels == 1, 0, labels)
    weights = np.where(labels == 0, 0.9, 0.05)
    avg = class_averages(
        images, merged, weights=weights, max_members=40, n_iter=3, random_state=1, progress=False
    )[0]
    own, other = (align_to_reference(avg, t).scores[0] for t in truths[:2])
    assert own > other + 0.1, (own, other)


def test_class_averages_validate_labels() -> None:
    images = np.zeros((4, 16, 16), np.float32)
    with pytest.raises(ValueError, match="labels must be 4 integers"):
        class_averages(images, [0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="n_classes is 1"):
        class_averages(images, [0, 1, 0, 1], n_classes=1)


# ----------------------------------------------------------------- real data


@pytest.mark.skipif(not BETAGAL.is_dir(), reason="shared β-galactosidase particles not present")
def test_real_betagal_angles_agree_with_relion_class2d() -> None:
    # RELION Class2D put these particles in one class with its own in-plane angles
    # (rlnAnglePsi). Our reference-free alignment must find the same relative angles:
    # ours = -psi + constant (modulo 180: the side view of D2 β-gal has a 2-fold axis).
    import mrcfile
    import starfile

    from cryomanifold.ctf import CTFParams, phase_flip
    from cryomanifold.preprocess import normalize

    blocks = starfile.read(BETAGAL / "Extract" / "job009" / "particles_ctf_fixed.star")
    optics = blocks["optics"].iloc[0]
    table = blocks["particles"]
    relion = starfile.read(BETAGAL / "Class2D" / "job010" / "run_it025_data.star")
    relion = relion["particles"] if isinstance(relion, dict) else relion
    relion = relion.set_index("rlnImageName").loc[table["rlnImageName"]]
    rows = np.flatnonzero(relion["rlnClassNumber"].to_numpy() == 50)
    assert rows.size > 50
    images = []
    for name in table["rlnImageName"].to_numpy()[rows]:
        index, path = name.split("@")
        with mrcfile.mmap(BETAGAL / path, permissive=True) as mrc:
            images.append(np.asarray(mrc.data[int(index) - 1], dtype=np.float32))
    sub = table.iloc[rows]
    ctf = CTFParams(
        sub["rlnDefocusU"].to_numpy(),
        sub["rlnDefocusV"].to_numpy(),
        sub["rlnDefocusAngle"].to_numpy(),
        optics["rlnVoltage"],
        optics["rlnSphericalAberration"],
        optics["rlnAmplitudeContrast"],
    )
    flipped = normalize(phase_flip(np.stack(images), ctf, float(optics["rlnImagePixelSize"])))
    result = reference_free_average(flipped, random_state=0)
    total = np.deg2rad(2.0 * (result.alignment.angles_deg + relion["rlnAnglePsi"].to_numpy()[rows]))
    residual = np.rad2deg(np.angle(np.exp(1j * total) / np.exp(1j * total).mean())) / 2.0
    assert np.mean(np.abs(residual) < 10.0) > 0.7
