"""Tests of cryomanifold.ctf: the fast evaluation against the textbook formula, and helpers."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.ctf import (
    CTFEvaluator,
    CTFParams,
    ctf_2d,
    ctf_at,
    ctf_sign,
    electron_wavelength_angstrom,
    frequency_grid,
    phase_flip,
)


def _params(n: int, seed: int = 0, **fixed: float) -> CTFParams:
    rng = np.random.default_rng(seed)
    values = {
        "defocus_u_angstrom": rng.uniform(5e3, 4e4, n),
        "defocus_v_angstrom": rng.uniform(5e3, 4e4, n),
        "defocus_angle_deg": rng.uniform(-180, 180, n),
        "voltage_kv": rng.choice([200.0, 300.0], n),
        "cs_mm": rng.uniform(0, 4, n),
        "amplitude_contrast": rng.uniform(0, 0.2, n),
        "phase_shift_deg": rng.uniform(0, 90, n),
        "bfactor_angstrom2": rng.uniform(0, 100, n),
    }
    values.update(fixed)
    return CTFParams(**values)  # type: ignore[arg-type]


def _textbook(p: CTFParams, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """sin(chi) in float64, written out term by term (RELION's convention)."""
    out = []
    for i in range(len(p)):
        lam = float(electron_wavelength_angstrom(p.voltage_kv[i]))
        angle = np.arctan2(ky, kx) - np.deg2rad(p.defocus_angle_deg[i])
        du, dv = p.defocus_u_angstrom[i], p.defocus_v_angstrom[i]
        defocus = du * np.cos(angle) ** 2 + dv * np.sin(angle) ** 2
        k2 = kx**2 + ky**2
        amp = min(float(p.amplitude_contrast[i]), 0.999)
        chi = (
            np.pi * lam * defocus * k2
            - 0.5 * np.pi * p.cs_mm[i] * 1e7 * lam**3 * k2**2
            + np.deg2rad(p.phase_shift_deg[i])
            + np.arctan(amp / np.sqrt(1 - amp**2))
        )
        out.append(np.sin(chi) * np.exp(-p.bfactor_angstrom2[i] * k2 / 4))
    return np.stack(out)


@pytest.mark.parametrize(("box", "pixel"), [(64, 3.5), (33, 2.0), (128, 0.8)])
def test_fast_ctf_matches_the_textbook_formula(box: int, pixel: float) -> None:
    """float32 phases: the error grows with |chi| (~2e-7 |chi|); below 2e-4 here, where
    chi reaches ~1000 rad (4 µm defocus at 0.8 Å/pixel)."""
    p = _params(20)
    for rfft in (True, False):
        kx, ky = frequency_grid(box, pixel, rfft=rfft)
        got = ctf_2d(p, box, pixel, rfft=rfft)
        assert got.dtype == np.float32 and got.shape == (20, *kx.shape)
        np.testing.assert_allclose(got, _textbook(p, kx, ky), rtol=0, atol=2e-4)


@pytest.mark.parametrize("bfactors", [[0.0] * 6, [40.0] * 6, [0.0, 40.0, 0.0, 80.0, 40.0, 0.0]])
def test_evaluator_matches_with_shared_b_factors(bfactors: list[float]) -> None:
    """The envelope is computed once per distinct B-factor, in either layout."""
    p = _params(6, seed=5, bfactor_angstrom2=np.array(bfactors))  # type: ignore[arg-type]
    kx, ky = frequency_grid(24, 1.5, rfft=True)
    expected = _textbook(p, kx, ky)
    evaluate = CTFEvaluator(kx, ky)
    np.testing.assert_allclose(evaluate(p), expected, atol=2e-4)
    np.testing.assert_allclose(
        evaluate(p, frequencies_first=True), np.moveaxis(expected, 0, -1), atol=2e-4
    )


def test_ctf_at_zero_frequency_is_the_amplitude_contrast() -> None:
    p = _params(5, phase_shift_deg=0.0)
    np.testing.assert_allclose(ctf_at(p, 0.0, 0.0), p.amplitude_contrast, atol=1e-6)


def test_evaluator_layouts_and_shared_parameters() -> None:
    p = _params(6, seed=1)
    kx, ky = np.random.default_rng(2).uniform(-0.2, 0.2, (2, 7, 5))
    evaluate = CTFEvaluator(kx, ky)
    values = evaluate(p)
    assert values.shape == (6, 7, 5)
    assert evaluate.shape == (7, 5) and evaluate.size == 35
    np.testing.assert_array_equal(evaluate(p, frequencies_first=True), np.moveaxis(values, 0, -1))
    np.testing.assert_array_equal(ctf_at(p, kx, ky), values)
    # particles sharing a micrograph: ctf_2d evaluates each distinct CTF once, same values
    repeated = p.subset([3, 0, 3, 3, 5, 0])
    unique, inverse = repeated.unique()
    assert len(unique) == 3
    for name in ("defocus_u_angstrom", "phase_shift_deg", "bfactor_angstrom2"):
        np.testing.assert_array_equal(
            getattr(unique.subset(inverse), name), getattr(repeated, name)
        )
    np.testing.assert_array_equal(ctf_2d(repeated, 16, 2.0), ctf_2d(p, 16, 2.0)[[3, 0, 3, 3, 5, 0]])


def test_phase_flip_is_its_own_inverse_and_keeps_amplitudes() -> None:
    """Exact below Nyquist. (At the Nyquist column the sign of an astigmatic CTF is not
    Hermitian-symmetric on the grid, so flipping loses part of that column.)"""
    rng = np.random.default_rng(3)
    imgs = rng.normal(size=(4, 32, 32)).astype(np.float32)
    p = _params(4, seed=4)
    sign = ctf_sign(p, 32, 2.0)
    assert set(np.unique(sign)) <= {-1.0, 1.0} and sign.shape == (4, 32, 17)
    flipped = phase_flip(imgs, p, 2.0)
    below = np.s_[:, :, :16]
    np.testing.assert_allclose(
        np.abs(np.fft.rfft2(flipped))[below], np.abs(np.fft.rfft2(imgs))[below], atol=1e-3
    )
    twice = np.fft.rfft2(phase_flip(flipped, p, 2.0))
    np.testing.assert_allclose(twice[below], np.fft.rfft2(imgs)[below], atol=1e-3)
    with pytest.raises(ValueError, match="CTF entries"):
        phase_flip(imgs[:3], p, 2.0)
