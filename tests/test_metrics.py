"""Metrics against ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.metrics import (
    frc,
    frc_resolution_angstrom,
    invariance_error,
    junk_precision_recall,
    majority_labels,
    mean_viewing_direction,
    species_ari,
    species_purity_recall,
    symmetry_group,
    view_coherence_deg,
    viewing_directions,
)

TRUTH = np.array(["a"] * 6 + ["b"] * 4 + ["junk:ice"] * 2 + ["junk:carbon_edge"] * 2)


def test_overclustering_is_not_penalised():
    # six pure classes for three groups: species separation is perfect
    classes = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 5, 5, 5, 5])
    assert species_ari(classes, TRUTH) == pytest.approx(1.0)
    assert majority_labels(classes, TRUTH)[0] == "a"


def test_mixed_classes_lower_the_score():
    classes = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2])
    assert species_ari(classes, TRUTH) < 0.6
    pr = species_purity_recall(classes, TRUTH)
    assert pr["junk"] == (1.0, 1.0)
    assert pr["a"][0] < 1.0


def test_junk_precision_recall_by_kind():
    flagged = np.zeros(14, bool)
    flagged[[9, 10, 11]] = True  # one false positive, both ice, no carbon
    s = junk_precision_recall(flagged, TRUTH)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(0.5)
    assert s.recall_by_kind == {"junk:carbon_edge": 0.0, "junk:ice": 1.0}
    assert s.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


# --------------------------------------------------------------------------- views


def test_viewing_directions_match_relion_matrices():
    from cryomanifold.simulate.project import relion_euler_to_matrix

    rng = np.random.default_rng(0)
    ang = rng.uniform([-180, 0, -180], [180, 180, 180], size=(20, 3))
    v = viewing_directions(ang[:, 0], ang[:, 1])
    a = relion_euler_to_matrix(ang)
    # the image is the z-projection of A x, so the model is viewed along A^T e_z
    np.testing.assert_allclose(v, a[:, 2, :], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0)


@pytest.mark.parametrize(
    "name,size", [("C1", 1), ("C7", 7), ("D4", 8), ("D7", 14), ("T", 12), ("O", 24)]
)
def test_symmetry_group_is_a_group_of_rotations(name, size):
    g = symmetry_group(name)
    assert g.shape == (size, 3, 3)
    np.testing.assert_allclose(np.linalg.det(g), 1.0)
    np.testing.assert_allclose(
        g @ np.swapaxes(g, 1, 2), np.broadcast_to(np.eye(3), g.shape), atol=1e-12
    )
    # closed under composition: every product is (numerically) an element
    prod = np.einsum("aij,bjk->abik", g, g).reshape(-1, 1, 9)
    assert np.abs(prod - g.reshape(1, -1, 9)).max(axis=2).min(axis=1).max() < 1e-9


def test_octahedral_group_has_fourfold_axes_along_x_y_z():
    g = symmetry_group("O")
    angles = np.degrees(np.arccos(np.clip((np.trace(g, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    # 1 identity, 9 rotations by 90/180 about x, y, z, 8 by 120, 6 by 180 about edges
    assert sorted(np.round(angles).astype(int).tolist()).count(90) == 6
    assert sorted(np.round(angles).astype(int).tolist()).count(120) == 8
    x = np.array([1.0, 0.0, 0.0])
    images = np.einsum("gij,j->gi", g, x)
    # x goes to the six face normals +-x, +-y, +-z
    assert len({tuple(np.round(v).astype(int)) for v in images}) == 6
    # T is the subgroup without the four-fold rotations
    t = symmetry_group("T")
    assert all(np.abs(g.reshape(-1, 1, 9) - t.reshape(1, -1, 9)).max(2).min(0) < 1e-9)


def test_mean_viewing_direction_reduces_mirror_and_symmetry_mates():
    rng = np.random.default_rng(0)
    true = np.array([np.sin(0.5), 0.0, np.cos(0.5)])
    noisy = true + rng.normal(0.0, 0.05, (200, 3))
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    group = symmetry_group("D7")
    # replace members by random symmetry mates and mirror images of themselves
    mates = np.einsum("nij,nj->ni", group[rng.integers(0, 14, 200)], noisy)
    mates *= rng.choice([-1.0, 1.0], 200)[:, None]
    mean = mean_viewing_direction(mates, group)
    angle = view_coherence_deg(np.stack([mean, true]), [0, 0], symmetry=group).median_deg
    assert angle < 1.5
    # without the group the plain mean of the mates is far from the view
    plain = mates.mean(axis=0) / np.linalg.norm(mates.mean(axis=0))
    assert view_coherence_deg(np.stack([plain, true]), [0, 0], symmetry=group).median_deg > 5
    assert np.linalg.norm(mean) == pytest.approx(1.0)


def test_symmetry_group_rejects_unknown_names():
    with pytest.raises(ValueError, match="point group"):
        symmetry_group("Q3")


def test_view_coherence_reflection_and_symmetry():
    z = np.array([0.0, 0.0, 1.0])
    tilt = np.deg2rad(20)
    w = np.array([np.sin(tilt), 0.0, np.cos(tilt)])
    # -z is the mirror view of z: angle 0
    r = view_coherence_deg(np.stack([z, -z]), np.array([0, 0]))
    assert r.median_deg == pytest.approx(0.0, abs=1e-6)
    # 20 degrees apart without symmetry
    r = view_coherence_deg(np.stack([z, w]), np.array([0, 0]))
    assert r.median_deg == pytest.approx(20.0)
    assert r.fraction_within_10deg == 0.0
    # side views 90 degrees apart about a 4-fold axis are equivalent under C4 only
    x, y = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    assert view_coherence_deg(np.stack([x, y]), [1, 1]).median_deg == pytest.approx(90.0)
    r4 = view_coherence_deg(np.stack([x, y]), [1, 1], symmetry=symmetry_group("C4"))
    assert r4.median_deg == pytest.approx(0.0, abs=1e-6)
    assert r4.fraction_within_10deg == 1.0


def test_view_coherence_random_views_score_low_and_neighbours_work():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((400, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    random_groups = view_coherence_deg(v, rng.integers(0, 4, 400))
    # uniform directions, reflection-reduced: P(angle < 10) = 1 - cos 10 = 0.015
    assert random_groups.fraction_within_10deg < 0.05
    assert random_groups.median_deg == pytest.approx(60.0, abs=5.0)
    # true nearest neighbours in direction space (reflection-aware) are coherent
    sim = np.abs(v @ v.T)
    nb = np.argsort(-sim, axis=1)[:, :4]  # includes the particle itself, skipped
    knn = view_coherence_deg(v, neighbors=nb)
    assert knn.n_pairs == 400 * 3
    assert knn.fraction_within_10deg > 0.9
    shuffled = view_coherence_deg(v, neighbors=rng.permutation(400)[nb])
    assert shuffled.fraction_within_10deg < 0.05
    with pytest.raises(ValueError, match="exactly one"):
        view_coherence_deg(v)


# --------------------------------------------------------------------------- FRC


def _blob_image(box, rng):
    y, x = np.mgrid[:box, :box] - box / 2
    img = np.zeros((box, box))
    for _ in range(6):
        cy, cx = rng.uniform(-box / 5, box / 5, 2)
        img += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * rng.uniform(1.5, 4) ** 2))
    return img.astype(np.float32)


def test_frc_identical_is_one_and_noise_lowers_high_frequencies():
    rng = np.random.default_rng(2)
    img = _blob_image(64, rng)
    freq, values = frc(img, img)
    assert freq.shape == values.shape == (33,)
    assert freq[-1] == pytest.approx(0.5)
    np.testing.assert_allclose(values[1:], 1.0, atol=1e-9)
    assert frc_resolution_angstrom(img, img, 2.0) == pytest.approx(4.0)
    noisy = img + rng.normal(0, 0.2, img.shape).astype(np.float32)
    _, v = frc(img, noisy)
    assert v[2] > 0.9 and v[-1] < 0.5
    res = frc_resolution_angstrom(img, noisy, 2.0)
    assert 4.0 < res < 64 * 2.0
    # more noise, worse resolution
    noisier = img + rng.normal(0, 1.0, img.shape).astype(np.float32)
    assert frc_resolution_angstrom(img, noisier, 2.0) > res


def test_frc_of_independent_noise_is_small():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 128, 128))
    _, v = frc(a, b)
    # a ring of N independent Fourier pixels gives |FRC| ~ 1/sqrt(N)
    assert np.abs(v[10:]).mean() < 0.1
    _, same = frc(a, a + 0.1 * b)
    assert same[10:].min() > 0.95


# --------------------------------------------------------------------------- invariance


def test_invariance_error_separates_invariant_from_non_invariant_features():
    rng = np.random.default_rng(4)
    imgs = np.stack([_blob_image(48, rng) for _ in range(12)])

    def radial_power(x):  # invariant to all three up to interpolation
        f = np.abs(np.fft.fft2(x)) ** 2
        k = np.fft.fftfreq(x.shape[-1]) * x.shape[-1]
        ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(int).ravel()
        keep = ring < x.shape[-1] // 2
        return np.stack([np.bincount(ring[keep], fi.ravel()[keep]) for fi in f])

    def raw_pixels(x):
        return x.reshape(len(x), -1)

    inv = invariance_error(radial_power, imgs, rng=np.random.default_rng(5))
    raw = invariance_error(raw_pixels, imgs, rng=np.random.default_rng(5))
    assert inv.shift < 1e-5 and inv.mirror < 1e-5
    assert inv.rotation < 0.2 * inv.between_particles
    assert raw.shift > 0.3 * raw.between_particles
    assert raw.rotation > 0.3 * raw.between_particles
    assert raw.mirror > 0.1 * raw.between_particles


def test_invariance_error_of_the_package_features():
    from cryomanifold.features import PAPER_SETTINGS, invariant_features

    rng = np.random.default_rng(4)
    imgs = np.stack([_blob_image(48, rng) for _ in range(12)])
    err = invariance_error(
        lambda x: invariant_features(x, **PAPER_SETTINGS), imgs, rng=np.random.default_rng(5)
    )
    # no mask: circular shifts and mirroring are exact; rotation up to interpolation
    assert err.shift < 1e-5 and err.mirror < 1e-5
    assert err.rotation < 0.1 * err.between_particles
