"""Junk scores: empty, dense and blurred classes are flagged, particle classes are not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cryomanifold.junk import (
    assess_classes,
    average_detail,
    particle_contrast,
    particle_junk_scores,
    particle_mass,
)

BOX = 48
APIX = 4.0


def _particle(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    img = np.zeros((BOX, BOX))
    for _ in range(6):  # a compact particle with detail: a few small blobs
        cy, cx = rng.uniform(-6, 6, 2)
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.5**2))
    return img


def test_particle_contrast_separates_particles_from_empty_and_edges():
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(30, BOX, BOX))
    parts = np.stack([_particle(rng) for _ in range(30)]) * 2 + noise
    xx = np.mgrid[:BOX, :BOX][1] - BOX // 2
    edges = 3 * (np.abs(xx) > 20)[None] + noise  # stripes at the box edge
    c_part = particle_contrast(parts, pixel_size_angstrom=APIX)
    c_empty = particle_contrast(noise, pixel_size_angstrom=APIX)
    c_edge = particle_contrast(edges, pixel_size_angstrom=APIX)
    assert np.median(c_part) > 3
    assert 0.5 < np.median(c_empty) < 1.6
    assert np.median(c_edge) < 0.5


def test_blurred_average_has_less_detail():
    rng = np.random.default_rng(1)
    sharp = _particle(rng)
    blurred = gaussian_filter(sharp, 4)
    d = average_detail(np.stack([sharp, blurred]), pixel_size_angstrom=APIX)
    assert d[0] > 5 * d[1]


def test_assess_flags_empty_dense_and_blurred_classes():
    rng = np.random.default_rng(2)
    averages = np.stack(
        [_particle(rng) for _ in range(4)]
        + [
            rng.normal(size=(BOX, BOX)) * 0.01,  # empty
            gaussian_filter(_particle(rng), 1) * 30,  # dense
            gaussian_filter(_particle(rng), 5),
        ]
    )  # blurred
    labels = np.repeat(np.arange(7), [100, 90, 80, 70, 40, 30, 30])
    per_class_contrast = np.array([6.0, 7.0, 6.5, 8.0, 1.0, 80.0, 7.0])
    contrast = per_class_contrast[labels] * rng.uniform(0.9, 1.1, labels.size)
    res = assess_classes(contrast, labels, averages, pixel_size_angstrom=APIX)
    assert list(res.flags) == [False] * 4 + [True] * 3
    assert res.reason[4:] == ["empty", "dense", "blurred"]
    assert np.all(res.scores[:4] < 0.5) and np.all(res.scores[4:] > 0.5)


def test_particle_scores_are_probability_weighted():
    p = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    s = particle_junk_scores(p, np.array([0.0, 1.0]))
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        particle_junk_scores(p, np.array([0.0, 1.0, 0.5]))


def test_particle_mass_counts_particles_not_views():
    """Integrated density: the same for rotated copies, about 3x for three particles."""
    rng = np.random.default_rng(4)
    one = _particle(rng)
    rotated = np.rot90(one)
    three = one + np.roll(one, 6, axis=1) + np.roll(one, -6, axis=0)
    m = particle_mass(np.stack([one, rotated, three, np.zeros_like(one)]), pixel_size_angstrom=APIX)
    assert m[1] == pytest.approx(m[0], rel=0.02)
    assert m[2] == pytest.approx(3 * m[0], rel=0.1)
    assert abs(m[3]) < 1e-3 * m[0]


def test_heavy_classes_are_flagged_as_aggregates():
    rng = np.random.default_rng(5)
    averages = np.stack([_particle(rng) for _ in range(5)])
    labels = np.repeat(np.arange(5), [100, 90, 80, 70, 40])
    contrast = np.full(labels.size, 6.0)
    per_class_mass = np.array([300.0, 320.0, 400.0, 290.0, 950.0])  # class 4: ~3 particles
    mass = per_class_mass[labels] * rng.uniform(0.9, 1.1, labels.size)
    res = assess_classes(contrast, labels, averages, pixel_size_angstrom=APIX, mass=mass)
    assert list(res.flags) == [False] * 4 + [True]
    assert res.reason[4] == "heavy"
    without = assess_classes(contrast, labels, averages, pixel_size_angstrom=APIX)
    assert not without.flags.any() and np.isnan(without.mass).all()
