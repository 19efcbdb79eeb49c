"""Image formation: weak-phase contrast through the CTF, shot noise, normalisation.

A projected potential ``V`` (V Å) shifts the phase of the electron wave by
``phi = sigma V`` with the interaction constant ``sigma = gamma lambda / 47.8779``
rad / (V Å) (6.5e-4 at 300 kV). In the weak-phase approximation the recorded
intensity, relative to the incident beam, is

    I(r) = (1 - 2 F^-1[ CTF(k) Phi(k) ](r)) * exp(-absorption(r))

with ``CTF = sin(chi)`` of :func:`cryomanifold.ctf.ctf_2d` (amplitude contrast and
envelope included), which is positive at low frequency for underfocus: protein
is dark in the raw counts, as on a real micrograph. The counts are Poisson with
mean ``dose * pixel_area * I``. As in RELION's extraction, the counts are then
normalised (background mean 0, standard deviation 1) and their contrast inverted,
so that stored images show protein white and are ``+CTF`` times the projection
plus noise: :func:`cryomanifold.ctf.phase_flip` with the written defocus turns
them into protein-white images.

The convolution is circular (the box wraps around); delocalised signal beyond the
box edge reappears on the opposite side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams, ctf_2d, electron_wavelength_angstrom, frequency_grid
from cryomanifold.preprocess import normalize
from cryomanifold.simulate.project import POTENTIAL_PER_SCATTERING_FACTOR

__all__ = [
    "ctf_batch",
    "draw_ctf",
    "intensity_from_potential",
    "interaction_constant",
    "padded_phase_contrast",
    "particle_images_from_counts",
    "shot_noise",
    "simulate_counts",
]

F32 = npt.NDArray[np.float32]
C64 = npt.NDArray[np.complex64]

#: electron rest energy, keV
_ELECTRON_REST_KEV = 510.99895


def interaction_constant(voltage_kv: float) -> float:
    """Phase shift per unit projected potential, rad / (V Å).

    ``sigma = 2 pi m e lambda / h^2 = gamma lambda / (h^2 / (2 pi m0 e))`` with the
    relativistic ``gamma = 1 + eU / (m0 c^2)``: 6.526e-4 at 300 kV, 7.288e-4 at 200 kV.
    """
    gamma = 1.0 + voltage_kv / _ELECTRON_REST_KEV
    lam = float(electron_wavelength_angstrom(voltage_kv))
    return gamma * lam / POTENTIAL_PER_SCATTERING_FACTOR


def draw_ctf(
    n: int,
    rng: np.random.Generator,
    *,
    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0),
    astigmatism_max_angstrom: float = 500.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    bfactor_angstrom2: float = 50.0,
) -> CTFParams:
    """Draw ``n`` CTFs: mean defocus uniform in the range, small random astigmatism.

    ``defocus_u = d + a / 2`` and ``defocus_v = d - a / 2`` (so U >= V, as CTFFIND
    reports them) with ``a`` uniform in ``[0, astigmatism_max_angstrom]``; the
    astigmatism angle is uniform in [0, 180) degrees.

    Returns
    -------
    CTFParams
        ``n`` entries; ``bfactor_angstrom2`` is the envelope (RELION ``rlnCtfBfactor``).
    """
    lo, hi = defocus_range_angstrom
    if not 0 < lo <= hi:
        raise ValueError(f"defocus range must satisfy 0 < min <= max; got {lo}, {hi}")
    mean = rng.uniform(lo, hi, n)
    astig = rng.uniform(0.0, astigmatism_max_angstrom, n)
    angle = rng.uniform(0.0, 180.0, n)
    return CTFParams(
        defocus_u_angstrom=mean + astig / 2,
        defocus_v_angstrom=mean - astig / 2,
        defocus_angle_deg=angle,
        voltage_kv=np.full(n, voltage_kv),
        cs_mm=np.full(n, cs_mm),
        amplitude_contrast=np.full(n, amplitude_contrast),
        bfactor_angstrom2=np.full(n, bfactor_angstrom2),
    )


def ctf_batch(params: CTFParams, box_size: int, pixel_size_angstrom: float) -> F32:
    """``ctf_2d`` for a batch, evaluated once per distinct parameter set.

    Particles from one micrograph share their CTF, so a batch usually holds a few
    distinct ones. When the particles of a micrograph differ only in their envelope
    B-factor, the CTF is evaluated once per micrograph and multiplied by each
    particle's envelope ``exp(-B k^2 / 4)``.

    Returns
    -------
    ndarray, shape (n, L, L // 2 + 1), float32
    """
    bfactor = np.broadcast_to(np.asarray(params.bfactor_angstrom2, dtype=np.float64), len(params))
    optics = np.stack(
        [
            np.asarray(params.defocus_u_angstrom),
            np.asarray(params.defocus_v_angstrom),
            np.asarray(params.defocus_angle_deg),
            np.asarray(params.voltage_kv),
            np.asarray(params.cs_mm),
            np.asarray(params.amplitude_contrast),
            np.broadcast_to(params.phase_shift_deg, len(params)),
        ],
        axis=1,
    )
    table = np.concatenate([optics, bfactor[:, None]], axis=1)
    _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
    _, first_optics, inverse_optics = np.unique(
        optics, axis=0, return_index=True, return_inverse=True
    )
    if first.size == first_optics.size:  # one B-factor per CTF: evaluate each once
        unique_ctf = ctf_2d(params.subset(first), box_size, pixel_size_angstrom, rfft=True)
        return unique_ctf[np.asarray(inverse).reshape(-1)]
    plain = dataclasses.replace(params.subset(first_optics), bfactor_angstrom2=0.0)
    out = ctf_2d(plain, box_size, pixel_size_angstrom, rfft=True)[
        np.asarray(inverse_optics).reshape(-1)
    ]
    kx, ky = frequency_grid(box_size, pixel_size_angstrom, rfft=True)
    k2 = (kx**2 + ky**2).astype(np.float32)
    for i, b in enumerate(bfactor):
        if b:
            out[i] *= np.exp(np.float32(-b / 4.0) * k2)
    return out


def intensity_from_potential(
    potential_spectrum: npt.ArrayLike,
    ctf: npt.ArrayLike,
    *,
    voltage_kv: float,
    absorption: npt.ArrayLike | None = None,
    extra_contrast: npt.ArrayLike | None = None,
    workers: int = -1,
) -> F32:
    """Relative image intensity of a weak-phase object.

    Parameters
    ----------
    potential_spectrum : array_like, shape (n, L, L // 2 + 1), complex
        ``rfft2`` of the projected potential (V Å per pixel).
    ctf : array_like, shape (n, L, L // 2 + 1)
        CTF on the same grid (:func:`ctf_batch`).
    voltage_kv : float
        Acceleration voltage (sets the interaction constant).
    absorption : array_like, shape (n, L, L), optional
        Amplitude attenuation exponent (thick contamination, carbon); 0 is none.
    extra_contrast : array_like, shape (n, L, L), optional
        Phase contrast computed elsewhere (:func:`padded_phase_contrast`), added
        before absorption.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (n, L, L), float32
        Intensity relative to the incident beam (1 on empty ice), clipped at 0.
    """
    spec = np.asarray(potential_spectrum)
    box = spec.shape[1]
    sigma = np.float32(interaction_constant(voltage_kv))
    wave = spec * (np.asarray(ctf, dtype=np.float32) * (np.float32(-2.0) * sigma))
    out = sfft.irfft2(wave, s=(box, box), workers=workers).astype(np.float32, copy=False)
    out += np.float32(1.0)
    if extra_contrast is not None:
        out += np.asarray(extra_contrast, dtype=np.float32)
    if absorption is not None:
        out *= np.exp(-np.asarray(absorption, dtype=np.float32))
    np.maximum(out, 0.0, out=out)
    return out


def padded_phase_contrast(
    potential: npt.ArrayLike,
    params: CTFParams,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    voltage_kv: float,
    workers: int = -1,
) -> F32:
    """Phase contrast of a potential given on a larger grid, cropped to the box.

    Objects that extend beyond the box (a carbon edge, contamination near the
    edge) must not wrap around in the circular CTF convolution: their potential
    is given on a padded grid ``(P, P)`` with the box's centre pixel at ``P // 2``.

    Parameters
    ----------
    potential : array_like, shape (n, P, P)
        Projected potential in V Å, ``P >= L``.
    params : CTFParams
        ``n`` CTFs.
    box_size : int
        ``L``, the output box.
    pixel_size_angstrom, voltage_kv : float
    workers : int

    Returns
    -------
    ndarray, shape (n, L, L), float32
        ``-2 F^-1[CTF sigma F[potential]]`` on the central ``L x L`` pixels.
    """
    pot = np.asarray(potential, dtype=np.float32)
    big = pot.shape[-1]
    ctf = ctf_batch(params, big, pixel_size_angstrom)
    spec = sfft.rfft2(pot, workers=workers)
    spec *= ctf * np.float32(-2.0 * interaction_constant(voltage_kv))
    full = sfft.irfft2(spec, s=(big, big), workers=workers)
    start = big // 2 - box_size // 2
    return full[:, start : start + box_size, start : start + box_size].astype(np.float32)


def shot_noise(
    intensity: npt.ArrayLike,
    *,
    dose_e_per_angstrom2: float,
    pixel_size_angstrom: float,
    rngs: Sequence[np.random.Generator],
) -> F32:
    """Poisson electron counts.

    Parameters
    ----------
    intensity : array_like, shape (n, L, L)
        Relative intensity (1 = the incident beam).
    dose_e_per_angstrom2 : float
        Electron dose, e/Å^2.
    pixel_size_angstrom : float
        Pixel size, Å.
    rngs : sequence of numpy Generators, length n
        One stream per image, so each image's noise does not depend on the batch
        it is simulated in.

    Returns
    -------
    ndarray, shape (n, L, L), float32
        Counts with mean ``dose * pixel_size**2 * intensity``.
    """
    lam = np.asarray(intensity, dtype=np.float64) * (dose_e_per_angstrom2 * pixel_size_angstrom**2)
    if len(rngs) != lam.shape[0]:
        raise ValueError(f"{len(rngs)} random generators for {lam.shape[0]} images")
    out = np.empty(lam.shape, dtype=np.float32)
    # one generator per image (a loop over the batch, each step a vectorised draw of
    # L*L counts) makes the result independent of the batch size
    for i, rng in enumerate(rngs):
        out[i] = rng.poisson(lam[i])
    return out


def particle_images_from_counts(
    counts: npt.ArrayLike, *, background_radius: float | None = None
) -> F32:
    """RELION-style extraction: normalise the background and invert the contrast.

    Returns
    -------
    ndarray, shape (n, L, L), float32
        Background mean 0, standard deviation 1, protein white.
    """
    out = normalize(counts, background_radius=background_radius)
    np.negative(out, out=out)
    return out


def simulate_counts(
    potential_spectrum: npt.ArrayLike,
    params: CTFParams,
    *,
    pixel_size_angstrom: float,
    dose_e_per_angstrom2: float,
    rngs: Sequence[np.random.Generator],
    absorption: npt.ArrayLike | None = None,
    workers: int = -1,
) -> F32:
    """Raw electron counts of images, before normalisation (for checks and tests).

    Parameters
    ----------
    potential_spectrum : array_like, shape (n, L, L // 2 + 1), complex
        ``rfft2`` of the projected potential in V Å.
    params : CTFParams
        ``n`` CTFs (their voltage sets the interaction constant; all must share it).
    pixel_size_angstrom, dose_e_per_angstrom2 : float
    rngs : sequence of numpy Generators, length n
    absorption : array_like, shape (n, L, L), optional

    Returns
    -------
    ndarray, shape (n, L, L), float32
        Poisson counts; mean ``dose * pixel_area`` per pixel on empty ice.
    """
    spec = np.asarray(potential_spectrum)
    volts = np.unique(np.asarray(params.voltage_kv))
    if volts.size != 1:
        raise ValueError(f"all images of a batch must share one voltage; got {volts}")
    ctf = ctf_batch(params, spec.shape[1], pixel_size_angstrom)
    intensity = intensity_from_potential(
        spec, ctf, voltage_kv=float(volts[0]), absorption=absorption, workers=workers
    )
    return shot_noise(
        intensity,
        dose_e_per_angstrom2=dose_e_per_angstrom2,
        pixel_size_angstrom=pixel_size_angstrom,
        rngs=rngs,
    )
