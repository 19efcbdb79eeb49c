"""Neighbouring particles partly inside the box.

On a crowded micrograph the box around a picked particle also catches part of
its neighbours. Each image gets a Poisson number of neighbours, each a particle of
a species of the dataset (uniformly chosen) in a uniformly random pose, whose
centre lies at a distance ``d`` from the box centre drawn uniformly from
``[max(h - r / 4, 0.8 (r_c + r)), h + 0.6 r]`` (``h``: half the box, ``r``: the
neighbour's radius, ``r_c``: the boxed particle's radius, 0 for junk): near or
beyond the box edge, so that part of it is inside, and not on top of the boxed
particle (pickers keep picks apart).

Each neighbour is projected on the box grid about its own centre (it fits there,
as every model fits the box), placed on a padded canvas at its offset, and imaged
through its host's CTF on that canvas (:func:`cryomanifold.simulate.noise.padded_phase_contrast`),
so that neither the neighbour nor its CTF fringes wrap around the box.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams
from cryomanifold.simulate.noise import padded_phase_contrast
from cryomanifold.simulate.project import Projector, random_rotations

__all__ = ["canvas_size", "neighbor_contrast", "neighbor_layout"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: hosts imaged per padded-canvas batch (bounds the memory of the padded grids)
_CHUNK = 8


def neighbor_layout(
    rng: np.random.Generator,
    *,
    mean_count: float,
    radii_angstrom: Sequence[float],
    center_radius_angstrom: float,
    half_box_angstrom: float,
) -> tuple[npt.NDArray[np.intp], F64, F64]:
    """Draw the neighbours of one box.

    Parameters
    ----------
    rng : Generator
        The image's own stream.
    mean_count : float
        Poisson mean of the number of neighbours.
    radii_angstrom : sequence of float
        Radius of each species, Å.
    center_radius_angstrom : float
        Radius of the boxed particle (0 for junk), Å.
    half_box_angstrom : float
        Half the box side, Å.

    Returns
    -------
    species : ndarray, shape (m,), int
    rotations : ndarray, shape (m, 3, 3)
    centres_angstrom : ndarray, shape (m, 2)
        (x, y) of each neighbour's centre from the box centre, Å.
    """
    m = int(rng.poisson(mean_count)) if mean_count > 0 else 0
    species = rng.integers(0, len(radii_angstrom), m).astype(np.intp)
    rotations = random_rotations(m, rng)
    radii = np.asarray(radii_angstrom, dtype=np.float64)[species]
    hi = half_box_angstrom + 0.6 * radii
    lo = np.minimum(
        np.maximum(half_box_angstrom - 0.25 * radii, 0.8 * (center_radius_angstrom + radii)), hi
    )
    dist = lo + (hi - lo) * rng.uniform(size=m)
    phi = rng.uniform(0.0, 2 * np.pi, m)
    centres = np.stack([dist * np.cos(phi), dist * np.sin(phi)], axis=1).reshape(m, 2)
    return species, rotations, centres


def canvas_size(box_size: int) -> int:
    """Side of the padded canvas: room for a neighbour box centred up to 0.8 L away."""
    return int(sfft.next_fast_len(int(np.ceil(2.6 * box_size)) + 2))


def neighbor_contrast(
    rngs: Sequence[np.random.Generator],
    *,
    center_radii_angstrom: npt.ArrayLike,
    projectors: Sequence[Projector],
    ctf: CTFParams,
    mean_count: float,
    voltage_kv: float,
    workers: int = -1,
) -> tuple[npt.NDArray[np.intp], F32]:
    """Phase contrast of the neighbours of a batch of boxes.

    Parameters
    ----------
    rngs : sequence of Generators, length n
        Each image's neighbour stream.
    center_radii_angstrom : array_like, shape (n,)
        Radius of each boxed particle (0 for junk), Å.
    projectors : sequence of Projector
        The dataset's species, all on the box grid.
    ctf : CTFParams
        The ``n`` CTFs of the batch.
    mean_count : float
        Poisson mean of the neighbours per box.
    voltage_kv : float
    workers : int

    Returns
    -------
    rows : ndarray, shape (k,), int
        Images (0-based, in the batch) that have at least one neighbour.
    contrast : ndarray, shape (k, L, L), float32
        Their neighbours' phase contrast, to add to the intensity.
    """
    box = projectors[0].box_size
    pix = projectors[0].pixel_size_angstrom
    half = 0.5 * box * pix
    radii = [p.model.radius_angstrom for p in projectors]
    centre_r = np.asarray(center_radii_angstrom, dtype=np.float64)
    layouts = [
        neighbor_layout(
            rng,
            mean_count=mean_count,
            radii_angstrom=radii,
            center_radius_angstrom=float(centre_r[i]),
            half_box_angstrom=half,
        )
        for i, rng in enumerate(rngs)
    ]
    rows = np.array([i for i, lay in enumerate(layouts) if lay[0].size], dtype=np.intp)
    out = np.zeros((rows.size, box, box), dtype=np.float32)
    if rows.size == 0:
        return rows, out
    big = canvas_size(box)
    limit = int(0.8 * box)  # keeps every neighbour box on the canvas
    for start in range(0, rows.size, _CHUNK):
        chunk = rows[start : start + _CHUNK]
        canvas = np.zeros((chunk.size, big, big), dtype=np.float32)
        for j, i in enumerate(chunk):
            species, rotations, centres = layouts[int(i)]
            offset_px = np.clip(np.rint(centres / pix), -limit, limit).astype(np.intp)
            fractions = centres - offset_px * pix  # sub-pixel part, Å
            for s in np.unique(species):
                sel = np.flatnonzero(species == s)
                images = projectors[int(s)].project(rotations[sel], fractions[sel], workers=workers)
                for k, image in zip(sel, images, strict=True):
                    x0 = big // 2 + int(offset_px[k, 0]) - box // 2
                    y0 = big // 2 + int(offset_px[k, 1]) - box // 2
                    canvas[j, y0 : y0 + box, x0 : x0 + box] += image
        out[start : start + chunk.size] = padded_phase_contrast(
            canvas,
            ctf.subset(chunk),
            box_size=box,
            pixel_size_angstrom=pix,
            voltage_kv=voltage_kv,
            workers=workers,
        )
    return rows, out
