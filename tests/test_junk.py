"""Image measures of particles and class averages: contrast, mass, detail."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cryomanifold.halfset import average_detail
from cryomanifold.junk_signs import particle_contrast, particle_mass

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
