"""Image formation: interaction constant, dose and Poisson noise, Thon rings, contrast sign."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft
from scipy import ndimage

from cryomanifold.ctf import CTFParams, ctf_2d, phase_flip
from cryomanifold.preprocess import radial_distance
from cryomanifold.simulate import SimulationConfig, make_projector, simulate_counts
from cryomanifold.simulate.dataset import plan_particles, render_particles
from cryomanifold.simulate.junk import ice_texture_spectrum
from cryomanifold.simulate.models import AtomicModel
from cryomanifold.simulate.noise import (
    draw_ctf,
    interaction_constant,
    particle_images_from_counts,
)
from cryomanifold.simulate.project import (
    WATER_MEAN_INNER_POTENTIAL_VOLTS,
    random_rotations,
    relion_euler_to_matrix,
)


def _rngs(n: int, seed: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, i]) for i in range(n)]


def test_interaction_constant_matches_the_literature() -> None:
    # sigma = 2 pi m e lambda / h^2: 0.6526 mrad/(V Å) at 300 kV, 0.7288 at 200 kV
    assert interaction_constant(300.0) == pytest.approx(6.526e-4, rel=1e-3)
    assert interaction_constant(200.0) == pytest.approx(7.288e-4, rel=1e-3)


@pytest.mark.parametrize(("dose", "pixel"), [(20.0, 1.0), (40.0, 1.5)])
def test_empty_ice_counts_are_poisson_with_mean_dose_times_pixel_area(
    dose: float, pixel: float
) -> None:
    n, box = 4, 128
    params = draw_ctf(n, np.random.default_rng(0))
    empty = np.zeros((n, box, box // 2 + 1), dtype=np.complex64)
    counts = simulate_counts(
        empty, params, pixel_size_angstrom=pixel, dose_e_per_angstrom2=dose, rngs=_rngs(n)
    )
    expected = dose * pixel**2
    assert counts.shape == (n, box, box)
    np.testing.assert_array_equal(counts, np.round(counts))  # whole electrons
    assert counts.mean() == pytest.approx(expected, rel=0.01)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.03)  # Poisson: var = mean
    # Poisson, not Gaussian: the third central moment is the mean too
    third = ((counts - counts.mean()) ** 3).mean()
    assert third / expected == pytest.approx(1.0, abs=0.25)


def test_particle_counts_keep_the_dose_and_are_darker_where_the_protein_is(
    cloud: AtomicModel,
) -> None:
    box, pixel, dose = 128, 1.0, 1e4
    projector = make_projector(cloud, box_size=box, pixel_size_angstrom=pixel)
    spec = projector.spectrum(random_rotations(2, np.random.default_rng(1)))
    params = CTFParams(
        defocus_u_angstrom=15000.0,
        defocus_v_angstrom=15000.0,
        defocus_angle_deg=0.0,
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        bfactor_angstrom2=np.zeros(2),
    )
    counts = simulate_counts(
        spec, params, pixel_size_angstrom=pixel, dose_e_per_angstrom2=dose, rngs=_rngs(2)
    )
    # weak phase object: mean intensity within a fraction of a percent of the dose
    assert counts.mean() == pytest.approx(dose, rel=0.005)
    inside = radial_distance(box) < 20
    outside = radial_distance(box) > 50
    # at low resolution the CTF is positive for underfocus: the protein is dark
    smooth = ndimage.gaussian_filter(counts, (0, 6.0, 6.0))
    assert np.all(smooth[:, inside].mean(axis=1) < smooth[:, outside].mean(axis=1) - 0.01 * dose)


def _radial_profile(power: np.ndarray) -> np.ndarray:
    box = power.shape[-1]
    ring = np.round(radial_distance(box)).astype(int).ravel()
    return np.bincount(ring, sfft.fftshift(power).ravel()) / np.bincount(ring)


def _local_minima(profile: np.ndarray, lo: int, hi: int) -> list[int]:
    return [i for i in range(lo, hi) if profile[i] < profile[i - 1] and profile[i] < profile[i + 1]]


def test_thon_rings_of_stored_images_match_ctf_2d_for_the_written_defocus(
    cloud: AtomicModel,
) -> None:
    box, pixel = 128, 1.0
    config = SimulationConfig(
        box_size=box,
        pixel_size_angstrom=pixel,
        dose_e_per_angstrom2=1e5,
        defocus_range_angstrom=(12000.0, 20000.0),
        astigmatism_max_angstrom=0.0,
        ice_texture_std_angstrom=(0.0, 0.0),
        particles_per_micrograph=1000,
    )
    projector = make_projector(cloud, box_size=box, pixel_size_angstrom=pixel)
    plan = plan_particles(["cloud"], n_per_model=16, junk_fraction=0.0, config=config, seed=3)
    images = render_particles(plan, [projector], config, seed=3)
    profile = _radial_profile((np.abs(sfft.fft2(images)) ** 2).mean(axis=0))
    written = plan.iloc[:1]

    def ctf_profile(defocus: float) -> np.ndarray:
        params = CTFParams(
            defocus_u_angstrom=defocus,
            defocus_v_angstrom=defocus,
            defocus_angle_deg=written["defocus_angle"].to_numpy(),
            voltage_kv=300.0,
            cs_mm=2.7,
            amplitude_contrast=0.1,
            bfactor_angstrom2=config.envelope_bfactor_angstrom2,
        )
        return _radial_profile(ctf_2d(params, box, pixel, rfft=False)[0] ** 2)

    band = slice(int(0.04 * box), int(0.35 * box))
    true_defocus = float(written["defocus_u"].iloc[0])
    found = _local_minima(profile, band.start, band.stop)
    assert len(found) >= 6
    scores = {}
    for factor in (1.0, 0.9, 1.15):
        model = ctf_profile(factor * true_defocus)
        zeros = _local_minima(model, band.start, band.stop)
        on_zero = np.mean([min(abs(f - z) for z in zeros) <= 1 for f in found])
        corr = np.corrcoef(np.log(profile[band]), np.log(model[band] + 1e-3))[0, 1]
        scores[factor] = (on_zero, corr)
    # every minimum of the power spectrum sits on a CTF zero (within one ring) ...
    assert scores[1.0][0] == 1.0
    assert scores[1.0][1] > 0.95
    # ... which is not the case for a defocus 10-15% off
    for factor in (0.9, 1.15):
        assert scores[factor][0] < 0.9
        assert scores[factor][1] < scores[1.0][1] - 0.08


def test_phase_flipped_images_show_the_protein_white(cloud: AtomicModel) -> None:
    box, pixel = 128, 1.0
    config = SimulationConfig(
        box_size=box,
        pixel_size_angstrom=pixel,
        dose_e_per_angstrom2=2000.0,
        ice_texture_std_angstrom=(0.0, 0.0),
    )
    projector = make_projector(cloud, box_size=box, pixel_size_angstrom=pixel)
    plan = plan_particles(["cloud"], n_per_model=6, junk_fraction=0.0, config=config, seed=1)
    images = render_particles(plan, [projector], config, seed=1)
    counts = render_particles(plan, [projector], config, seed=1, return_counts=True)
    params = CTFParams(
        defocus_u_angstrom=plan["defocus_u"].to_numpy(),
        defocus_v_angstrom=plan["defocus_v"].to_numpy(),
        defocus_angle_deg=plan["defocus_angle"].to_numpy(),
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
        bfactor_angstrom2=config.envelope_bfactor_angstrom2,
    )
    poses = relion_euler_to_matrix(plan[["rot", "tilt", "psi"]].to_numpy())
    truth = projector.project(poses, -plan[["origin_x", "origin_y"]].to_numpy())
    # what a phase-flipped image can show at best: the projection filtered by |CTF|
    truth = sfft.irfft2(sfft.rfft2(truth) * np.abs(ctf_2d(params, box, pixel)), s=(box, box))
    smooth = (0, 1.0, 1.0)
    flipped = ndimage.gaussian_filter(phase_flip(images, params, pixel), smooth)
    raw_flipped = ndimage.gaussian_filter(phase_flip(counts, params, pixel), smooth)
    for i in range(6):
        good = np.corrcoef(flipped[i].ravel(), truth[i].ravel())[0, 1]
        raw = np.corrcoef(raw_flipped[i].ravel(), truth[i].ravel())[0, 1]
        assert good > 0.7  # white protein in the stored images
        assert raw < -0.7  # dark protein in the raw counts


def test_stored_images_have_a_normalised_background() -> None:
    counts = np.random.default_rng(0).poisson(20.0, (3, 64, 64)).astype(np.float32)
    counts[:, 28:36, 28:36] -= 15.0  # a dark particle
    images = particle_images_from_counts(counts)
    background = radial_distance(64) > 0.4 * 64
    np.testing.assert_allclose(images[:, background].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(images[:, background].std(axis=1), 1.0, atol=1e-4)
    assert np.all(images[:, 28:36, 28:36].mean(axis=(1, 2)) > 2.0)  # inverted: white


def test_ice_texture_has_the_drawn_thickness_spread() -> None:
    box, pixel = 128, 2.0
    spec = ice_texture_spectrum(
        _rngs(5),
        box_size=box,
        pixel_size_angstrom=pixel,
        thickness_std_angstrom=(12.0, 12.0),
        correlation_length_angstrom=(30.0, 30.0),
    )
    thickness = sfft.irfft2(spec, s=(box, box)) / WATER_MEAN_INNER_POTENTIAL_VOLTS
    np.testing.assert_allclose(thickness.std(axis=(1, 2)), 12.0, rtol=1e-3)
    np.testing.assert_allclose(thickness.mean(axis=(1, 2)), 0.0, atol=1e-3)
    # smooth: neighbouring pixels (2 Å apart) are almost equal for a 30 Å correlation length
    step = np.diff(thickness, axis=2).std()
    assert step < 0.1 * 12.0
