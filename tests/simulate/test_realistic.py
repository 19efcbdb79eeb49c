"""The realistic imaging options: each physical effect is present and has its size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.fft as sfft
import starfile

from cryomanifold.preprocess import radial_distance
from cryomanifold.simulate import (
    PRESETS,
    SimulationConfig,
    builtin_model,
    load_model,
    make_projectors,
    plan_particles,
    render_particles,
    simulate_dataset,
)
from cryomanifold.simulate.detector import DETECTORS, detect, transfer_functions
from cryomanifold.simulate.ice import ice_attenuation, inelastic_mean_free_path_angstrom
from cryomanifold.simulate.neighbors import neighbor_layout
from cryomanifold.simulate.plan import particle_rngs
from cryomanifold.simulate.project import (
    make_projector,
    protein_mean_inner_potential_volts,
    solvent_scale_for_contrast,
)

from .conftest import shared_model

SMALL = {"box_size": 64, "pixel_size_angstrom": 3.0}
MODELS = [builtin_model("ring_d5"), builtin_model("asym_l")]
HUGE_DOSE = 1e8  # shot noise 1e-4 of the signal per pixel: images are nearly noise-free


def _config(**kw: object) -> SimulationConfig:
    return SimulationConfig(**{**SMALL, **kw})  # type: ignore[arg-type]


def _render(
    config: SimulationConfig, n: int = 6, seed: int = 0, junk: float = 0.0
) -> tuple[pd.DataFrame, np.ndarray]:
    plan = plan_particles(
        [m.name for m in MODELS], n_per_model=n, junk_fraction=junk, config=config, seed=seed
    )
    counts = render_particles(
        plan, make_projectors(MODELS, config), config, seed=seed, return_counts=True
    )
    return plan, counts


# ---------------------------------------------------------------- contrast


def _integral(projector_kwargs: dict[str, object], model: object) -> float:
    projector = make_projector(model, **SMALL, **projector_kwargs)  # type: ignore[arg-type]
    return float(projector.spectrum(np.eye(3)[None])[0, 0, 0].real)


@pytest.mark.parametrize("fraction", [0.3, 0.2])
def test_protein_contrast_is_the_chosen_fraction_of_the_vacuum_contrast(fraction: float) -> None:
    model = builtin_model("ring_d5")  # protein composition: C N O S heavy atoms
    vacuum = _integral({"solvent": False}, model)
    in_ice = _integral({}, model)
    reduced = _integral({"solvent_scale": solvent_scale_for_contrast(fraction)}, model)
    # neutral-atom potentials: protein 7.9 V against ice 4.57 V leaves 0.42 of the contrast
    assert protein_mean_inner_potential_volts() == pytest.approx(7.95, abs=0.1)
    assert in_ice / vacuum == pytest.approx(0.42, abs=0.02)
    assert reduced / vacuum == pytest.approx(fraction, abs=0.015)
    # and the config option gives the same projectors
    (projector,) = make_projectors([model], _config(protein_contrast=fraction))
    assert projector.spectrum(np.eye(3)[None])[0, 0, 0].real == pytest.approx(reduced, rel=1e-5)


def test_protein_contrast_of_a_real_model_is_about_0_3_of_vacuum() -> None:
    model = load_model(shared_model("3j9i_T20S_proteasome.pdb.gz"))
    kw = {"box_size": 256, "pixel_size_angstrom": 1.0}
    vacuum = make_projector(model, solvent=False, **kw).spectrum(np.eye(3)[None])[0, 0, 0].real
    (realistic,) = make_projectors([model], SimulationConfig.preset("realistic", **kw))
    ratio = realistic.spectrum(np.eye(3)[None])[0, 0, 0].real / vacuum
    assert ratio == pytest.approx(0.30, abs=0.02)


def test_contrast_option_needs_the_solvent_and_a_fraction() -> None:
    with pytest.raises(ValueError, match="protein_contrast"):
        SimulationConfig(protein_contrast=0.3, solvent=False)
    with pytest.raises(ValueError, match="protein_contrast"):
        SimulationConfig(protein_contrast=1.2)


# ---------------------------------------------------------------- shifts, B-factors


def test_uniform_shifts_fill_the_bound_and_gaussian_ones_stay_within_it() -> None:
    names = ["a", "b"]
    uniform = plan_particles(
        names,
        n_per_model=400,
        junk_fraction=0.2,
        config=_config(shift_distribution="uniform", shift_max_angstrom=8.0),
    )
    good = uniform["species"] >= 0
    shifts = uniform.loc[good, ["origin_x", "origin_y"]].to_numpy()
    assert np.abs(shifts).max() <= 8.0
    assert np.abs(shifts).max() > 7.8  # fills the bound
    assert shifts.std(axis=0) == pytest.approx(8.0 / np.sqrt(3.0), rel=0.1)
    assert (uniform.loc[~good, ["origin_x", "origin_y"]] == 0).all().all()
    gauss = plan_particles(
        names,
        n_per_model=400,
        junk_fraction=0.0,
        config=_config(shift_sigma_angstrom=4.0, shift_max_angstrom=5.0),
    )
    gshift = gauss[["origin_x", "origin_y"]].to_numpy()
    assert np.abs(gshift).max() <= 5.0
    assert 2.5 < gshift.std() < 4.0  # truncated at 1.25 sigma
    with pytest.raises(ValueError, match="shift_max_angstrom"):
        _config(shift_distribution="uniform")


def test_particle_bfactors_are_drawn_per_particle_and_damp_high_frequencies(
    tmp_path: Path,
) -> None:
    config = _config(envelope_bfactor_angstrom2=(50.0, 150.0), dose_e_per_angstrom2=HUGE_DOSE)
    plan, _ = _render(config, n=1)
    assert plan["bfactor"].between(50.0, 150.0).all()
    assert plan["bfactor"].nunique() == len(plan)
    # the same plan with B = 0 and B = 150: high-frequency power falls by exp(-B k^2 / 2)
    projectors = make_projectors(MODELS, config)
    power = {}
    for b in (0.0, 150.0):
        images = render_particles(plan.assign(bfactor=b), projectors, config, return_counts=True)
        spectrum = np.abs(sfft.fft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2
        k = sfft.fftshift(radial_distance(64)) / (64 * 3.0)  # 1/Å, unshifted layout
        band = (k > 0.1) & (k < 0.14)
        power[b] = spectrum[:, band].mean()
    expected = np.exp(-150.0 * 0.12**2 / 2)  # 0.34
    assert power[150.0] / power[0.0] == pytest.approx(expected, rel=0.35)
    # the realistic preset does not record the B-factor, as real metadata do not
    star = simulate_dataset(
        MODELS, n_per_model=2, junk_fraction=0.0, out_dir=tmp_path, preset="realistic", **SMALL
    )
    assert "rlnCtfBfactor" not in starfile.read(star, always_dict=True)["particles"]


# ---------------------------------------------------------------- ice


def test_thicker_ice_removes_electrons_from_the_zero_loss_beam() -> None:
    _, thin = _render(_config(dose_e_per_angstrom2=1000.0), n=4)
    plan, thick = _render(
        _config(dose_e_per_angstrom2=1000.0, ice_thickness_angstrom=(700.0, 700.0)), n=4
    )
    assert (plan["ice_thickness"] == 700.0).all()
    assert thin.mean() == pytest.approx(1000.0 * 9.0, rel=0.01)
    assert thick.mean() / thin.mean() == pytest.approx(np.exp(-700.0 / 3500.0), rel=0.01)
    assert inelastic_mean_free_path_angstrom(3500.0, 200.0) == pytest.approx(2800.0, rel=0.02)


def test_ice_slope_is_a_ramp_of_intensity_across_the_box() -> None:
    base = _config(dose_e_per_angstrom2=HUGE_DOSE)
    _, flat = _render(base, n=4)
    _, sloped = _render(_config(dose_e_per_angstrom2=HUGE_DOSE, ice_slope_max=0.5), n=4)
    ratio = np.log(sloped / flat)  # minus the thickness ramp over the mean free path
    c = (np.arange(64) - 32) * 3.0
    design = np.stack([np.ones(64 * 64), np.tile(c, 64), np.repeat(c, 64)], axis=1)
    slopes = []
    for r in ratio:
        coef, *_ = np.linalg.lstsq(design, r.ravel(), rcond=None)
        fit = design @ coef
        assert np.var(r.ravel() - fit) < 0.01 * np.var(r.ravel())  # a plane
        slopes.append(np.hypot(coef[1], coef[2]) * 3500.0)  # Å of ice per Å
    assert max(slopes) <= 0.5 + 1e-3
    assert max(slopes) > 0.05
    # the exponent itself: t0 plus a plane, never negative
    rngs = particle_rngs(0, range(3), "ice")
    exponent = ice_attenuation(
        rngs,
        box_size=32,
        pixel_size_angstrom=2.0,
        mean_thickness_angstrom=[300.0, 300.0, 0.0],
        slope_max=0.2,
        mean_free_path_angstrom=3000.0,
    )
    assert exponent[:2].min() >= 0
    assert exponent[0].mean() == pytest.approx(0.1, rel=0.01)
    assert abs(exponent[2].mean()) < 1e-4  # a variation about an unmodelled mean


# ---------------------------------------------------------------- neighbours


def test_neighbours_lie_partly_inside_the_box_and_off_the_boxed_particle() -> None:
    rng = np.random.default_rng(0)
    half, radii = 96.0, [70.0, 40.0]
    for _ in range(200):
        species, rotations, centres = neighbor_layout(
            rng,
            mean_count=2.0,
            radii_angstrom=radii,
            center_radius_angstrom=50.0,
            half_box_angstrom=half,
        )
        assert rotations.shape == (species.size, 3, 3)
        r = np.asarray(radii)[species]
        d = np.hypot(*centres.T)
        assert np.all(d - r < half)  # part of it inside the box
        assert np.all(d > half - 0.25 * r - 1e-9)  # its centre near or beyond the edge
        assert np.all(d >= np.minimum(0.8 * (50.0 + r), half + 0.6 * r) - 1e-9)


def test_neighbours_add_signal_near_the_box_edge_only_where_drawn() -> None:
    base = _config(dose_e_per_angstrom2=HUGE_DOSE)
    plan, alone = _render(base, n=6)
    _, crowded = _render(_config(dose_e_per_angstrom2=HUGE_DOSE, neighbors_per_particle=1.5), n=6)
    radii = [m.radius_angstrom for m in MODELS]
    counts = [
        neighbor_layout(
            rng,
            mean_count=1.5,
            radii_angstrom=radii,
            center_radius_angstrom=0.0,
            half_box_angstrom=96.0,
        )[0].size
        for rng in particle_rngs(0, plan.index, "neighbors")
    ]
    diff = np.abs(crowded - alone) / HUGE_DOSE / 9.0
    r = radial_distance(64)
    with_nb = np.array(counts) > 0
    assert with_nb.sum() >= 3 and (~with_nb).sum() >= 1
    # no neighbour: the very same image (the neighbours have their own random stream)
    assert diff[~with_nb].max() < 1e-3
    edge = diff[with_nb][:, r > 24].mean(axis=1)
    centre = diff[with_nb][:, r < 8].mean(axis=1)
    assert np.all(edge > 2 * centre)
    # and it is a particle's worth of contrast: comparable to the boxed particle's own
    own = np.abs(alone / HUGE_DOSE / 9.0 - 1.0)[:, r < 16].mean()
    assert np.median(edge) > 0.1 * own


# ---------------------------------------------------------------- detector


def test_detector_mtf_and_noise_transfer_have_their_nyquist_values() -> None:
    for name, det in DETECTORS.items():
        mtf, noise = transfer_functions(name, 64)
        assert mtf[0, 0] == pytest.approx(1.0) and noise[0, 0] == pytest.approx(1.0)
        assert mtf[0, 32] == pytest.approx(det.mtf_nyquist, rel=1e-3)
        assert noise[0, 32] ** 2 == pytest.approx(det.nps_nyquist, rel=1e-3)
        dqe_nyquist = det.dqe0 * mtf[0, 32] ** 2 / noise[0, 32] ** 2
        assert 0.3 < dqe_nyquist < 0.45
        assert np.all(np.diff(mtf[0, :33]) < 0)


def test_detector_lowers_high_frequency_signal_and_shapes_the_noise() -> None:
    box = 64
    x = np.arange(box)
    # a signal at 26/64 = 0.41 cycles/pixel (81% of Nyquist) on a flat beam
    wave = 1.0 + 0.05 * np.cos(2 * np.pi * 26 / box * x)[None, :] * np.ones((box, 1))
    images = np.repeat(wave[None], 4, axis=0).astype(np.float32)
    rngs = particle_rngs(1, range(4))
    ideal = detect(
        images, detector="k3", dose_e_per_angstrom2=HUGE_DOSE, pixel_size_angstrom=1.0, rngs=rngs
    )
    mtf, _ = transfer_functions("k3", box)
    amplitude = np.abs(sfft.rfft2(ideal / HUGE_DOSE - 1.0)[:, 0, 26]).mean()
    assert amplitude / (0.05 * box * box / 2) == pytest.approx(mtf[0, 26], rel=0.02)
    assert mtf[0, 26] < 0.75
    # noise on a flat beam: power at Nyquist over power at low frequency is the NPS there
    flat = np.ones((16, box, box), dtype=np.float32)
    noisy = detect(
        flat,
        detector="k3",
        dose_e_per_angstrom2=50.0,
        pixel_size_angstrom=1.0,
        rngs=particle_rngs(2, range(16)),
    )
    power = np.abs(sfft.rfft2(noisy - noisy.mean(axis=(1, 2), keepdims=True))) ** 2
    f = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :])
    ratio = power[:, (f > 0.45) & (f <= 0.5)].mean() / power[:, (f > 0.02) & (f < 0.1)].mean()
    assert ratio == pytest.approx(DETECTORS["k3"].nps_nyquist, rel=0.1)
    # the mean is kept: gain-normalised counts
    assert noisy.mean() == pytest.approx(50.0, rel=0.01)


# ---------------------------------------------------------------- presets, reproducibility


def test_presets_and_their_validation() -> None:
    assert SimulationConfig.preset("paper") == SimulationConfig()
    real = SimulationConfig.preset("realistic", dose_e_per_angstrom2=30.0)
    for name, value in PRESETS["realistic"].items():
        assert getattr(real, name) == value
    assert real.dose_e_per_angstrom2 == 30.0
    with pytest.raises(ValueError, match="unknown preset"):
        SimulationConfig.preset("easy")
    with pytest.raises(TypeError, match="wobble"):
        SimulationConfig.preset("realistic", wobble=1)
    with pytest.raises(ValueError, match="detector"):
        SimulationConfig(detector="ccd")


def test_realistic_images_do_not_depend_on_the_batch() -> None:
    config = SimulationConfig.preset("realistic", detector="falcon4", **SMALL)
    plan = plan_particles(
        [m.name for m in MODELS], n_per_model=5, junk_fraction=0.3, config=config, seed=4
    )
    projectors = make_projectors(MODELS, config)
    whole = render_particles(plan, projectors, config, seed=4)
    for rows in ([3], [7, 1, 5], list(range(8, len(plan)))):
        part = render_particles(plan.iloc[rows], projectors, config, seed=4)
        np.testing.assert_array_equal(part, whole[rows])


def test_cheap_options_are_checked_before_the_models_are_loaded(tmp_path: Path) -> None:
    # the model is too large for a 32-px box, but the invalid count is reported first
    with pytest.raises(ValueError, match="n_per_model"):
        simulate_dataset(MODELS, n_per_model=-1, junk_fraction=0.0, out_dir=tmp_path, box_size=32)
    with pytest.raises(ValueError, match="junk_fraction"):
        simulate_dataset(MODELS, n_per_model=2, junk_fraction=1.5, out_dir=tmp_path, box_size=32)
    with pytest.raises(FileNotFoundError, match=r"nope\.pdb"):
        simulate_dataset(
            [tmp_path / "nope.pdb"], n_per_model=1, junk_fraction=0.0, out_dir=tmp_path
        )
    assert not any(tmp_path.iterdir())
