"""Junk kinds: each looks like what it claims to be, in raw counts."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.preprocess import radial_distance
from cryomanifold.simulate import SimulationConfig, builtin_model, make_projector
from cryomanifold.simulate.dataset import plan_particles, render_particles
from cryomanifold.simulate.junk import aggregate_layout, carbon_edge, contamination

BOX, PIXEL = 64, 3.0
CONFIG = SimulationConfig(
    box_size=BOX,
    pixel_size_angstrom=PIXEL,
    dose_e_per_angstrom2=200.0,
    particles_per_micrograph=1000,
)


def _rngs(n: int) -> list[np.random.Generator]:
    return [np.random.default_rng([11, i]) for i in range(n)]


@pytest.fixture(scope="module")
def rendered() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw counts and stored images of each kind (every label, several times)."""
    projectors = [make_projector(builtin_model("ring_d5"), box_size=BOX, pixel_size_angstrom=PIXEL)]
    plan = plan_particles(["ring_d5"], n_per_model=8, junk_fraction=0.8, config=CONFIG, seed=2)
    counts = render_particles(plan, projectors, CONFIG, seed=2, return_counts=True)
    images = render_particles(plan, projectors, CONFIG, seed=2)
    labels = plan["label"].to_numpy()
    return (
        {lab: counts[labels == lab] for lab in set(labels)},
        {lab: images[labels == lab] for lab in set(labels)},
    )


def test_empty_ice_is_flat_at_the_dose(rendered: tuple[dict, dict]) -> None:
    counts, _ = rendered
    dose = CONFIG.dose_e_per_angstrom2 * PIXEL**2
    ice = counts["junk:ice"]
    assert ice.mean() == pytest.approx(dose, rel=0.005)
    # texture, but much weaker than a particle: the central disc is not darker
    centre = radial_distance(BOX) < 15
    particle = counts["ring_d5"]
    assert abs(ice[:, centre].mean() - dose) < 0.3 * abs(particle[:, centre].mean() - dose)


def test_contamination_is_dense_and_absorbing(rendered: tuple[dict, dict]) -> None:
    counts, images = rendered
    dose = CONFIG.dose_e_per_angstrom2 * PIXEL**2
    blobs = counts["junk:contamination"]
    # thick blobs remove electrons: some pixels lose far more than a particle ever does
    assert np.all(blobs.min(axis=(1, 2)) < 0.6 * dose)
    assert counts["ring_d5"].min() > 0.6 * dose
    # the stored (inverted) images show them as bright, high-contrast objects
    assert np.percentile(images["junk:contamination"], 99.5) > 2 * np.percentile(
        images["ring_d5"], 99.5
    )


def test_carbon_edge_is_a_step_with_amorphous_texture() -> None:
    potential, absorption = carbon_edge(_rngs(4), box_size=BOX, pixel_size_angstrom=PIXEL)
    assert potential.shape == (4, 2 * BOX, 2 * BOX)  # padded against wrap-around
    assert absorption.shape == (4, BOX, BOX)
    for pot, absorb in zip(potential, absorption, strict=True):
        start = BOX // 2
        inner = pot[start : start + BOX, start : start + BOX]
        film = absorb > 0.9 * absorb.max()
        hole = absorb < 0.1 * absorb.max()
        assert film.sum() > 0.15 * BOX**2 and hole.sum() > 0.15 * BOX**2
        # carbon (30-100 Å at ~12 V) sits well above the empty hole, and is grainy
        assert inner[film].mean() - inner[hole].mean() > 250.0
        assert inner[film].std() > 5 * inner[hole].std()
        # one straight edge: the film is a half-plane (its mask is convex along rows/cols)
        rows = film.any(axis=1)
        assert np.all(np.diff(np.flatnonzero(rows)) == 1)


def test_contamination_blobs_have_sharp_thick_rims() -> None:
    potential, absorption = contamination(_rngs(3), box_size=BOX, pixel_size_angstrom=PIXEL)
    assert potential.shape == (3, 2 * BOX, 2 * BOX)
    assert np.all(potential >= -1e-3)
    assert np.all(absorption.max(axis=(1, 2)) > 0.1)
    assert np.all((absorption == 0).mean(axis=(1, 2)) > 0.3)  # blobs, not a film


def test_aggregate_layout_overlaps_two_to_four_particles() -> None:
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(50):
        species, rotations, shifts = aggregate_layout(rng, [40.0, 60.0])
        m = len(species)
        sizes.add(m)
        assert rotations.shape == (m, 3, 3) and shifts.shape == (m, 2)
        np.testing.assert_allclose(shifts.mean(axis=0), 0.0, atol=1e-9)
        # every component overlaps another one (centres closer than their mean radius)
        dist = np.linalg.norm(shifts[:, None] - shifts[None], axis=-1) + np.eye(m) * 1e9
        assert np.all(dist.min(axis=1) <= 60.0)
    assert sizes == {2, 3, 4}


def test_aggregates_carry_more_protein_than_single_particles(rendered: tuple[dict, dict]) -> None:
    counts, _ = rendered
    dose = CONFIG.dose_e_per_angstrom2 * PIXEL**2
    # electrons lost to amplitude contrast grow with the projected mass in the box
    lost = {lab: dose - counts[lab].mean() for lab in ("ring_d5", "junk:aggregate")}
    assert lost["junk:aggregate"] > 1.3 * lost["ring_d5"] > 0
