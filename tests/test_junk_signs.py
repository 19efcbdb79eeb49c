"""Per-particle junk measures: each responds to its artefact and not to particles or noise."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.ctf import CTFParams
from cryomanifold.junk_call import robust_z
from cryomanifold.junk_signs import (
    density_gradient,
    edge_stripe_widths,
    excess_kurtosis,
    particle_mass,
    particle_measures,
    peak_sigma,
    signal_zscore,
)
from cryomanifold.preprocess import fourier_crop, normalize
from junk_data import APIX, BOX, edge_stripes, noise, particles, shards


def test_edge_stripe_width_matches_the_overhang_after_rescaling():
    rng = np.random.default_rng(0)
    widths = edge_stripe_widths(edge_stripes(8, rng, width_px=6))
    # one edge per image (top, bottom, left, right in turn), about 6 px wide
    for i, w in enumerate(widths):
        assert np.argmax(w) == i % 4
        assert 5 <= w.max() <= 8
        assert np.sort(w)[-2] == 0
    assert not edge_stripe_widths(particles(20, rng)).any()
    assert not edge_stripe_widths(noise(20, rng)).any()


def test_edge_stripes_on_raw_images_are_converted_to_prepared_pixels():
    rng = np.random.default_rng(1)
    raw = noise(3, rng, box=128)
    raw[:, -20:] = raw[:, -21:-20]  # 20 repeated rows at 128 px: 10 px at 64 px
    prepared = normalize(fourier_crop(raw, BOX))
    m = particle_measures(prepared, pixel_size_angstrom=APIX, raw=raw)
    np.testing.assert_allclose(m["edge_stripe_px"], 10.5, atol=1.0)


def test_signal_z_is_standard_normal_for_noise_and_large_for_particles():
    rng = np.random.default_rng(2)
    z_noise = signal_zscore(noise(300, rng), pixel_size_angstrom=APIX)
    assert abs(z_noise.mean()) < 0.2
    assert 0.8 < z_noise.std() < 1.2
    z_part = signal_zscore(particles(50, rng), pixel_size_angstrom=APIX)
    assert np.median(z_part) > 2.5


def test_signal_z_with_ctf_stays_calibrated_on_ctf_modulated_noise():
    rng = np.random.default_rng(3)
    n = 200
    ctf = CTFParams(
        defocus_u_angstrom=np.full(n, 15000.0),
        defocus_v_angstrom=np.full(n, 14000.0),
        defocus_angle_deg=np.zeros(n),
        voltage_kv=np.full(n, 300.0),
        cs_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
    )
    # noise whose spectrum carries Thon rings: white noise filtered by |CTF| + white
    import scipy.fft as sfft

    from cryomanifold.ctf import ctf_2d

    white = rng.standard_normal((n, BOX, BOX))
    ice = sfft.irfft2(sfft.rfft2(white) * ctf_2d(ctf, BOX, APIX), s=(BOX, BOX))
    imgs = normalize((2 * ice + rng.standard_normal((n, BOX, BOX))).astype(np.float32))
    z = signal_zscore(imgs, pixel_size_angstrom=APIX, ctf=ctf)
    assert abs(z.mean()) < 0.25
    assert 0.75 < z.std() < 1.25


def test_kurtosis_sees_dense_shards_not_faint_particles():
    rng = np.random.default_rng(4)
    k_part = excess_kurtosis(particles(100, rng, snr=0.5))
    k_shard = excess_kurtosis(shards(30, rng, snr=0.5))
    assert robust_z(k_part).max() < 5
    assert robust_z(k_shard, k_part).min() > 10


def test_gradient_sees_a_density_step():
    rng = np.random.default_rng(5)
    base = noise(10, rng)
    step = base + 2.0 * (np.arange(BOX) > BOX // 2)[None, None, :].astype(np.float32)
    g0 = density_gradient(base, pixel_size_angstrom=APIX)
    g1 = density_gradient(step, pixel_size_angstrom=APIX)
    assert g1.min() > 5 * g0.max()


def test_mass_scales_with_the_number_of_particles():
    rng = np.random.default_rng(6)
    one = particles(20, rng, snr=2.0)
    two = one + np.roll(one, 10, axis=2)
    m1 = particle_mass(one, pixel_size_angstrom=APIX)
    m2 = particle_mass(two, pixel_size_angstrom=APIX)
    assert np.median(m2 / m1) > 1.6


def test_peak_sigma_finds_a_hot_pixel():
    rng = np.random.default_rng(7)
    imgs = noise(4, rng)
    imgs[1, 10, 10] = 500.0
    p = peak_sigma(imgs)
    assert p[1] > 100 and np.delete(p, 1).max() < 7


def test_measures_do_not_depend_on_the_batch():
    rng = np.random.default_rng(8)
    imgs = np.concatenate([particles(10, rng), noise(5, rng), shards(5, rng)])
    whole = particle_measures(imgs, pixel_size_angstrom=APIX)
    parts = [particle_measures(imgs[s : s + 7], pixel_size_angstrom=APIX) for s in (0, 7, 14)]
    assert set(whole) == {
        "edge_stripe_px",
        "signal_z",
        "kurtosis",
        "gradient",
        "mass",
        "peak_sigma",
        "finite",
        "contrast",
    }
    for key, value in whole.items():
        assert value.shape == (20,) and value.dtype == np.float32
        np.testing.assert_allclose(value, np.concatenate([p[key] for p in parts]), rtol=1e-5)


def test_shared_spectrum_measures_equal_the_standalone_functions():
    """particle_measures computes mass, gradient, signal and contrast from one spectrum;
    they must equal the public functions that each transform the images themselves."""
    from cryomanifold.junk_signs import (
        density_gradient,
        particle_contrast,
        particle_mass,
        signal_zscore,
    )

    rng = np.random.default_rng(10)
    imgs = np.concatenate([particles(6, rng), noise(4, rng), shards(4, rng)])
    m = particle_measures(imgs, pixel_size_angstrom=APIX, radius_px=20.0)
    np.testing.assert_allclose(
        m["mass"], particle_mass(imgs, pixel_size_angstrom=APIX, radius_px=20.0), rtol=1e-4
    )
    np.testing.assert_allclose(
        m["gradient"], density_gradient(imgs, pixel_size_angstrom=APIX), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        m["signal_z"], signal_zscore(imgs, pixel_size_angstrom=APIX, radius_px=20.0), rtol=1e-4
    )
    np.testing.assert_allclose(
        m["contrast"],
        particle_contrast(imgs, pixel_size_angstrom=APIX, radius_px=20.0),
        rtol=1e-4,
    )


def test_linear_measures_match_real_space_sums():
    """The Parseval form of the mass equals the sum over the low-passed image."""
    import scipy.fft as sfft

    from cryomanifold.junk_signs import particle_mass
    from cryomanifold.preprocess import radial_distance

    rng = np.random.default_rng(11)
    imgs = particles(5, rng)
    box = imgs.shape[-1]
    k = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) / APIX
    low = sfft.irfft2(sfft.rfft2(imgs.astype(np.float64)) * (k < 1 / 40.0), s=(box, box))
    r = radial_distance(box)
    disk, edge = r <= 0.42 * box, r > 0.42 * box
    expected = (low[:, disk] - low[:, edge].mean(axis=1)[:, None]).sum(axis=1)
    np.testing.assert_allclose(particle_mass(imgs, pixel_size_angstrom=APIX), expected, rtol=1e-4)


def test_measures_flag_non_finite_and_constant_images():
    rng = np.random.default_rng(9)
    imgs = noise(3, rng)
    imgs[0, 3, 3] = np.nan
    imgs[1] = 0.0
    m = particle_measures(imgs, pixel_size_angstrom=APIX)
    np.testing.assert_array_equal(m["finite"], [0.0, 0.0, 1.0])
    assert all(np.isfinite(v[2]) for v in m.values())


def test_measures_reject_mismatched_inputs():
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match="raw"):
        particle_measures(noise(3, rng), pixel_size_angstrom=APIX, raw=noise(2, rng))
    ctf = CTFParams(1e4, 1e4, 0.0, 300.0, 2.7, 0.1)
    with pytest.raises(ValueError, match="CTF"):
        signal_zscore(noise(3, rng), pixel_size_angstrom=APIX, ctf=ctf)


def _signal_z_formula(imgs, ctf, radius_px, outer_px):
    """signal_z as its docstring writes it, in float64 on the whole grid."""
    import scipy.fft as sfft

    from cryomanifold.ctf import ctf_2d
    from cryomanifold.preprocess import radial_distance

    box = imgs.shape[-1]
    ring = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) * box
    filt = np.abs(ctf_2d(ctf, box, APIX)) * ((ring >= 2) & (ring <= box / 2))
    spec = sfft.rfft2(imgs.astype(np.float64))
    f = sfft.irfft2(spec * filt, s=(box, box))
    r = radial_distance(box)
    inner, outer = r < radius_px, r > outer_px
    t = np.log((f[:, inner] ** 2).mean(axis=1) / (f[:, outer] ** 2).mean(axis=1))
    # null: stationary noise with the image's ring-averaged power spectrum, filtered
    idx = np.rint(ring).astype(int)
    cols = np.arange(box // 2 + 1)
    mult = np.where((cols == 0) | (2 * cols == box), 1, 2)
    power = np.abs(spec) ** 2 * mult
    counts = np.bincount(idx.ravel(), np.broadcast_to(mult, idx.shape).ravel())
    profile = np.stack([np.bincount(idx.ravel(), p.ravel()) for p in power]) / counts
    cov = sfft.irfft2(profile[:, idx] * filt**2, s=(box, box)) / box**2
    var = 0.0
    for region in (inner, outer):
        ov = sfft.irfft2(np.abs(sfft.rfft2(region.astype(float))) ** 2, s=(box, box))
        var = var + 2 * (cov**2 * ov).sum(axis=(1, 2)) / (region.sum() * cov[:, 0, 0]) ** 2
    return t / np.sqrt(var)


@pytest.mark.parametrize("box", [64, 45])
def test_signal_z_equals_its_formula(box):
    """The fast route (blocks, half-grid autocovariance) gives the documented statistic,
    for even and odd boxes, with a CTF per particle and a given radius."""
    rng = np.random.default_rng(12)
    imgs = np.concatenate([particles(4, rng, box=box), noise(4, rng, box=box)])
    ctf = CTFParams(
        defocus_u_angstrom=rng.uniform(8e3, 2.5e4, 8),
        defocus_v_angstrom=rng.uniform(8e3, 2.5e4, 8),
        defocus_angle_deg=rng.uniform(0, 180, 8),
        voltage_kv=300.0,
        cs_mm=2.7,
        amplitude_contrast=0.1,
    )
    radius = 0.25 * box
    expected = _signal_z_formula(imgs, ctf, radius, max(0.42 * box, radius + 2))
    z = signal_zscore(imgs, pixel_size_angstrom=APIX, ctf=ctf, radius_px=radius)
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)
    m = particle_measures(imgs, pixel_size_angstrom=APIX, ctf=ctf, radius_px=radius)
    np.testing.assert_allclose(m["signal_z"], expected, rtol=1e-4, atol=1e-4)


def test_edge_stripes_do_not_depend_on_an_offset():
    """Raw images need not be normalised: widths are the same on a large offset."""
    rng = np.random.default_rng(13)
    imgs = edge_stripes(8, rng)
    widths = edge_stripe_widths(imgs)
    assert widths.max() > 4
    np.testing.assert_array_equal(edge_stripe_widths(imgs + np.float32(1000.0)), widths)


def test_peak_sigma_equals_its_median_formula():
    """Medians taken exactly as numpy's, for even and odd samples, NaN included."""
    rng = np.random.default_rng(14)
    for box in (64, 17, 15):
        imgs = noise(5, rng, box=box)
        imgs[1, 2, 3] = 40.0
        imgs[2, 0, 0] = np.nan  # a sampled pixel: no noise level
        imgs[3, 0, 1] = np.nan  # an unsampled one: no peak
        flat = imgs.reshape(5, -1)
        sample = flat[:, ::4] if flat.shape[1] >= 256 else flat
        med = np.median(sample, axis=1)
        mad = 1.4826 * np.median(np.abs(sample - med[:, None]), axis=1)
        peak = np.maximum(flat.max(axis=1) - med, med - flat.min(axis=1))
        with np.errstate(invalid="ignore"):
            expected = np.where(mad > 0, peak / np.where(mad > 0, mad, 1.0), np.inf)
        np.testing.assert_array_equal(peak_sigma(imgs), expected.astype(np.float32))
