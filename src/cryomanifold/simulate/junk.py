"""Junk images: what particle pickers pick besides particles.

Each kind contributes a projected potential (as an ``rfft2`` spectrum in V Å, like
:meth:`cryomanifold.simulate.project.Projector.spectrum`) and, for thick objects,
an amplitude-absorption map; both then go through the same CTF and shot noise as
particles (:mod:`cryomanifold.simulate.noise`). Truth labels are ``junk:<kind>``:

``ice``
    Empty vitreous ice: shot noise and a smooth random ice-thickness texture
    (correlation length 20-60 Å, thickness standard deviation 10-30 Å). Every
    image gets a faint version of the texture (:func:`ice_texture_spectrum`).
``contamination``
    Ice crystals and contamination: 1-3 dense ellipsoidal blobs, 20-100 Å across
    the beam and up to 300 Å thick, with a higher potential than the ice and
    strong amplitude absorption.
``carbon_edge``
    The edge of the carbon support: a sharp step (width 1-4 Å) at a random angle
    and offset, with 30-100 Å of amorphous carbon (random atoms at 0.1 /Å^3, so
    the carbon shows its own Thon rings) on one side.
``aggregate``
    2-4 particles of the simulated species, overlapping with offsets of about
    half to one particle radius (see :func:`aggregate_layout`).

Every random number comes from the image's own generator, so an image does not
depend on the batch it is simulated in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from scipy import ndimage
from scipy.special import erf

from cryomanifold.ctf import CTFParams, frequency_grid
from cryomanifold.simulate.project import (
    POTENTIAL_PER_SCATTERING_FACTOR,
    WATER_MEAN_INNER_POTENTIAL_VOLTS,
    Projector,
    random_rotations,
)

__all__ = [
    "JUNK_KINDS",
    "add_junk",
    "aggregate_layout",
    "carbon_edge",
    "contamination",
    "ice_texture_spectrum",
]

#: the kinds of junk, in the order they are mixed into a dataset
JUNK_KINDS: tuple[str, ...] = ("ice", "contamination", "carbon_edge", "aggregate")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]

#: carbon: atoms per Å^3 (2 g/cm^3) and B-factor of the amorphous film, Å^2
_CARBON_DENSITY = 0.1
_CARBON_BFACTOR = 40.0
#: potential of contamination above the surrounding vitreous ice, V
_CONTAMINATION_EXCESS_VOLTS = 3.0


def _crop_center(images: npt.NDArray[Any], box_size: int) -> npt.NDArray[Any]:
    """The central ``box_size`` square of (..., P, P) arrays (same centre pixel P // 2)."""
    start = images.shape[-1] // 2 - box_size // 2
    return images[..., start : start + box_size, start : start + box_size]


def _box_coordinates(box_size: int, pixel_size_angstrom: float) -> tuple[F64, F64]:
    """x (columns) and y (rows) of each pixel from the box centre, Å; shape (L, L)."""
    c = (np.arange(box_size) - box_size // 2) * pixel_size_angstrom
    return c[None, :] * np.ones((box_size, 1)), c[:, None] * np.ones((1, box_size))


def ice_texture_spectrum(
    rngs: Sequence[np.random.Generator],
    *,
    box_size: int,
    pixel_size_angstrom: float,
    thickness_std_angstrom: tuple[float, float] | npt.ArrayLike,
    correlation_length_angstrom: tuple[float, float] = (20.0, 60.0),
) -> C64:
    """Smooth random ice-thickness variation, as a potential spectrum.

    For each image, a standard deviation and a correlation length are drawn
    uniformly from the given ranges; the thickness field is Gaussian with a
    Gaussian covariance ``exp(-r^2 / (2 xi^2))`` and exactly that standard
    deviation over the box; its potential is the thickness times the mean inner
    potential of ice. Only the few Fourier modes below ``3 / (pi xi)`` are drawn.

    Parameters
    ----------
    rngs : sequence of Generators, length n
    box_size : int
    pixel_size_angstrom : float
    thickness_std_angstrom : (low, high) or array_like of shape (n, 2)
        Range of the thickness standard deviation, Å (per image if (n, 2)).
    correlation_length_angstrom : (low, high)
        Range of the correlation length ``xi``, Å.

    Returns
    -------
    ndarray, shape (n, L, L // 2 + 1), complex64
    """
    n, box = len(rngs), box_size
    ranges = np.broadcast_to(np.asarray(thickness_std_angstrom, dtype=np.float64), (n, 2))
    xi_lo, xi_hi = correlation_length_angstrom
    m = int(np.ceil(3.0 / (np.pi * xi_lo) * box * pixel_size_angstrom)) + 1
    m = min(m, box // 2 - 1)
    ky_idx = np.arange(-m, m + 1)
    kx_idx = np.arange(0, m + 1)
    k2 = (ky_idx[:, None] ** 2 + kx_idx[None, :] ** 2) / (box * pixel_size_angstrom) ** 2
    # Parseval weights on the rfft half grid: columns > 0 stand for two modes
    weight = np.where(kx_idx[None, :] > 0, 2.0, 1.0) * np.ones_like(k2)
    block = np.zeros((n, 2 * m + 1, m + 1), dtype=np.complex128)
    for i, rng in enumerate(rngs):
        std = rng.uniform(ranges[i, 0], ranges[i, 1])
        xi = rng.uniform(xi_lo, xi_hi)
        z = rng.standard_normal((2 * m + 1, m + 1)) + 1j * rng.standard_normal((2 * m + 1, m + 1))
        amp = z * np.exp(-((np.pi * xi) ** 2) * k2)
        # Hermitian column kx = 0: F(-ky) = conj F(ky); no mean (ky = kx = 0)
        amp[:m, 0] = np.conj(amp[:m:-1, 0])
        amp[m, 0] = 0.0
        power = float(np.sum(weight * np.abs(amp) ** 2)) / box**4  # variance over the box
        block[i] = amp * (std / np.sqrt(power) if power > 0 else 0.0)
    out = np.zeros((n, box, box // 2 + 1), dtype=np.complex64)
    rows = ky_idx % box
    out[:, rows, : m + 1] = block * WATER_MEAN_INNER_POTENTIAL_VOLTS
    return out


def contamination(
    rngs: Sequence[np.random.Generator], *, box_size: int, pixel_size_angstrom: float, pad: int = 2
) -> tuple[F32, F32]:
    """Dense blobs (ice crystals, contamination): potential and absorption.

    Returns
    -------
    potential : ndarray, shape (n, pad * L, pad * L), float32
        Projected excess potential (V Å) of the blobs on a padded grid with the
        same centre, so that the CTF does not wrap their fringes around the box.
    absorption : ndarray, shape (n, L, L), float32
        Projected thickness over the absorption length (200-600 Å).
    """
    n, big = len(rngs), pad * box_size
    x, y = _box_coordinates(big, pixel_size_angstrom)
    half = 0.5 * box_size * pixel_size_angstrom
    thickness = np.zeros((n, big, big), dtype=np.float32)
    absorb_len = np.empty(n)
    for i, rng in enumerate(rngs):
        n_blobs = int(rng.integers(1, 4))
        absorb_len[i] = rng.uniform(200.0, 600.0)
        for _ in range(n_blobs):
            r0 = 0.6 * half * np.sqrt(rng.uniform())
            phi = rng.uniform(0.0, 2 * np.pi)
            cx, cy = r0 * np.cos(phi), r0 * np.sin(phi)
            a, b = rng.uniform(10.0, 50.0, 2)  # semi-axes across the beam, Å
            c = rng.uniform(30.0, 150.0)  # semi-axis along the beam, Å
            theta = rng.uniform(0.0, np.pi)
            u = (x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)
            v = -(x - cx) * np.sin(theta) + (y - cy) * np.cos(theta)
            q = 1.0 - (u / a) ** 2 - (v / b) ** 2
            thickness[i] += 2.0 * c * np.sqrt(np.clip(q, 0.0, None))
    # soften the rims slightly (a 1-Å Gaussian), as real blobs are not perfect ellipsoids
    thickness = ndimage.gaussian_filter(
        thickness, (0, 1.0 / pixel_size_angstrom, 1.0 / pixel_size_angstrom)
    )
    absorption = _crop_center(thickness, box_size) / absorb_len[:, None, None]
    return thickness * np.float32(_CONTAMINATION_EXCESS_VOLTS), absorption.astype(np.float32)


def carbon_edge(
    rngs: Sequence[np.random.Generator],
    *,
    box_size: int,
    pixel_size_angstrom: float,
    pad: int = 2,
    workers: int = -1,
) -> tuple[F32, F32]:
    """The edge of an amorphous carbon film across the box.

    The film covers the half-plane ``x cos(theta) + y sin(theta) > d`` (random
    ``theta``; ``d`` within 30% of the half box), with an error-function edge
    1-4 Å wide and a thickness of 30-100 Å. Its potential is that of randomly placed
    carbon atoms: mean plus Poisson fluctuations, filtered by the carbon form factor.

    Returns
    -------
    potential : ndarray, shape (n, pad * L, pad * L), float32
        Projected potential (V Å) on a padded grid with the same centre.
    absorption : ndarray, shape (n, L, L), float32
        Film thickness over an absorption length of 1500 Å.
    """
    import gemmi

    n, big, pix = len(rngs), pad * box_size, pixel_size_angstrom
    x, y = _box_coordinates(big, pix)
    half = 0.5 * box_size * pix
    atoms = np.empty((n, big, big))  # carbon atoms per pixel column
    thickness = np.empty((n, box_size, box_size), dtype=np.float32)
    for i, rng in enumerate(rngs):
        theta = rng.uniform(0.0, 2 * np.pi)
        offset = rng.uniform(-0.3, 0.3) * half
        width = rng.uniform(1.0, 4.0)
        t_film = rng.uniform(30.0, 100.0)
        dist = x * np.cos(theta) + y * np.sin(theta) - offset
        cover = 0.5 * (1.0 + erf(dist / width))
        mean_atoms = _CARBON_DENSITY * t_film * pix**2 * cover
        atoms[i] = mean_atoms + np.sqrt(mean_atoms) * rng.standard_normal((big, big))
        thickness[i] = _crop_center(t_film * cover, box_size)
    coefs = np.asarray(gemmi.Element("C").c4322.get_coefs(), dtype=np.float64)
    kx, ky = frequency_grid(big, pix, rfft=True)
    k2 = kx**2 + ky**2
    form = sum(
        a * np.exp(-(b + _CARBON_BFACTOR) * k2 / 4.0)
        for a, b in zip(coefs[:5], coefs[5:], strict=True)
    )
    spectrum = sfft.rfft2(atoms, workers=workers)
    spectrum *= POTENTIAL_PER_SCATTERING_FACTOR / pix**2 * form
    potential = sfft.irfft2(spectrum, s=(big, big), workers=workers).astype(np.float32)
    return potential, thickness / np.float32(1500.0)


def aggregate_layout(
    rng: np.random.Generator, radii_angstrom: Sequence[float]
) -> tuple[npt.NDArray[np.intp], F64, F64]:
    """Draw the components of one aggregate.

    2-4 particles of species drawn uniformly from ``radii_angstrom``; each joins a
    random earlier one at a centre distance of 0.5-1 times their mean radius in a
    random in-plane direction; the group is then centred on the box.

    Parameters
    ----------
    rng : Generator
    radii_angstrom : sequence of float
        Radius of each species, Å.

    Returns
    -------
    species : ndarray, shape (m,), int
        Index into ``radii_angstrom`` of each component.
    rotations : ndarray, shape (m, 3, 3)
        Uniformly random poses.
    shifts_angstrom : ndarray, shape (m, 2)
        In-plane centres of the components relative to the box centre, Å.
    """
    m = int(rng.integers(2, 5))
    species = rng.integers(0, len(radii_angstrom), m).astype(np.intp)
    rotations = random_rotations(m, rng)
    radii = np.asarray(radii_angstrom, dtype=np.float64)[species]
    centres = np.zeros((m, 2))
    for j in range(1, m):
        k = int(rng.integers(0, j))
        dist = rng.uniform(0.5, 1.0) * 0.5 * (radii[j] + radii[k])
        phi = rng.uniform(0.0, 2 * np.pi)
        centres[j] = centres[k] + dist * np.array([np.cos(phi), np.sin(phi)])
    return species, rotations, centres - centres.mean(axis=0)


def add_junk(
    spectrum: C64,
    contrast: F32,
    absorption: F32,
    *,
    kinds: npt.ArrayLike,
    ctf: CTFParams,
    rngs: Sequence[np.random.Generator],
    projectors: Sequence[Projector],
    pixel_size_angstrom: float,
    voltage_kv: float,
) -> None:
    """Add the junk of a batch to its image-formation arrays, in place.

    Aggregates add to the potential ``spectrum``; carbon edges and contamination,
    which reach beyond the box, add their padded-grid phase contrast
    (:func:`cryomanifold.simulate.noise.padded_phase_contrast`) to ``contrast`` and
    their absorption to ``absorption``. Rows of other kinds are left alone.

    Parameters
    ----------
    spectrum : ndarray, shape (n, L, L // 2 + 1), complex64
        Potential spectra of the batch (modified).
    contrast, absorption : ndarray, shape (n, L, L), float32
        Extra phase contrast and absorption of the batch (modified).
    kinds : array_like of str, shape (n,)
        ``"particle"`` or one of :data:`JUNK_KINDS` per row.
    ctf : CTFParams
        The ``n`` CTFs of the batch.
    rngs : sequence of Generators, length n
        Each row's random stream.
    projectors : sequence of Projector
        The species aggregates are made of (all on the batch's grid).
    pixel_size_angstrom, voltage_kv : float
    """
    from cryomanifold.simulate.noise import padded_phase_contrast

    kinds = np.asarray(kinds)
    box, pix = spectrum.shape[1], pixel_size_angstrom
    for kind, make in (("contamination", contamination), ("carbon_edge", carbon_edge)):
        idx = np.flatnonzero(kinds == kind)
        if idx.size == 0:
            continue
        potential, add_abs = make(
            [rngs[int(i)] for i in idx], box_size=box, pixel_size_angstrom=pix
        )
        contrast[idx] += padded_phase_contrast(
            potential, ctf.subset(idx), box_size=box, pixel_size_angstrom=pix, voltage_kv=voltage_kv
        )
        absorption[idx] += add_abs
    idx = np.flatnonzero(kinds == "aggregate")
    if idx.size == 0:
        return
    if not projectors:
        raise ValueError("aggregate junk needs at least one model")
    radii = [p.model.radius_angstrom for p in projectors]
    parts = [aggregate_layout(rngs[int(i)], radii) for i in idx]
    target = np.concatenate([np.full(len(p[0]), i) for i, p in zip(idx, parts, strict=True)])
    species = np.concatenate([p[0] for p in parts])
    rotations = np.concatenate([p[1] for p in parts])
    shifts = np.concatenate([p[2] for p in parts])
    for s, projector in enumerate(projectors):
        sel = np.flatnonzero(species == s)
        if sel.size:
            np.add.at(spectrum, target[sel], projector.spectrum(rotations[sel], shifts[sel]))
