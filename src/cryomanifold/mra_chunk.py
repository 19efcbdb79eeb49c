"""One chunk's share of a round of multi-reference alignment (a Dask task).

:func:`align_chunk` aligns a chunk of particles to every reference
(:func:`cryomanifold.mra.search_poses`), assigns each to its best reference and
returns the chunk's share of the new references: per half-set and class, the sums
``Σ |C| X`` and ``Σ |C|²`` of its aligned members' spectra. Optionally it also
scores some particles with random phases (a noise control) and returns low-passed
aligned images of a sample (for splitting classes). :func:`cryomanifold.refine.refine_classes`
runs the rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.mra import PoseSearch, aligned_images, ctf_rings, default_mask, search_poses
from cryomanifold.polar import PolarGrid, ring_index

__all__ = ["AlignJob", "AlignTask", "ChunkAlignment", "align_chunk", "ctf_abs_2d"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AlignTask:
    """One chunk of particles and their state in this round."""

    chunk: Any  # ImageChunk
    centres: F64  # (m, 2)
    half: npt.NDArray[np.bool_]  # (m,) which half-set each particle is in
    contributes: npt.NDArray[np.bool_]  # (m,) counts towards the references
    sample: npt.NDArray[np.intp]  # local rows whose aligned images come back (splitting)
    null: npt.NDArray[np.intp]  # local rows also scored with random phases (final round)
    seed: int = 0


@dataclass(frozen=True)
class AlignJob:
    """What every chunk of a round shares: the references and the search."""

    references: F32  # (K, L, L), filtered for comparison
    ring_weights: F64
    grid: PolarGrid
    shifts: F64
    mirror: bool
    band_px: float
    crop: int  # box of the aligned images returned for splitting
    want_scores: bool
    pixel_size_angstrom: float
    workers: int = 1


@dataclass
class ChunkAlignment:
    """One chunk's poses, assignment and share of the new references."""

    best: npt.NDArray[np.int64]
    top2: F32  # (m, 2) best and second-best scores
    centres: F32
    angles: F32
    shifts: F32
    mirrored: npt.NDArray[np.bool_]
    num: npt.NDArray[np.complex128]  # (2, K, L, L // 2 + 1)
    den: F64  # (2, K, L, L // 2 + 1)
    counts: npt.NDArray[np.int64]  # (2, K)
    sample_images: F32
    sample_labels: npt.NDArray[np.int64]
    scores: F32 | None = None
    null_scores: F32 | None = None


def ctf_abs_2d(ctf: Any, n: int, box: int, apix: float) -> F32 | None:
    """Ring-averaged ``|CTF|`` on the rfft2 grid, (n, L, L // 2 + 1); None without a CTF."""
    if ctf is None:
        return None
    ring = ring_index(box)
    radii = np.arange(int(ring.max()) + 1, dtype=np.float64)
    rings = ctf_rings(ctf, n, box, apix, radii)
    return rings[:, ring]


def align_chunk(task: AlignTask, job: AlignJob) -> ChunkAlignment:
    """One chunk against the references: poses, assignment, and its share of the
    new references (a Dask task)."""
    images, ctf = task.chunk.load()
    m, box = images.shape[0], images.shape[-1]
    cr = None if ctf is None else ctf_rings(ctf, m, box, job.pixel_size_angstrom, job.grid.radii)
    ps: PoseSearch = search_poses(
        images,
        job.references,
        ring_weights=job.ring_weights,
        grid=job.grid,
        mask=default_mask(box),
        ctf=cr,
        centres_px=task.centres,
        shifts_px=job.shifts,
        mirror=job.mirror,
        workers=job.workers,
    )
    k = job.references.shape[0]
    top2 = -np.sort(-ps.scores, axis=1)[:, :2] if k > 1 else np.repeat(ps.scores, 2, axis=1)
    aligned = aligned_images(images, ps, workers=job.workers)
    spec = sfft.rfft2(aligned, workers=job.workers)
    c2 = ctf_abs_2d(ctf, m, box, job.pixel_size_angstrom)
    shape = (2, k, *spec.shape[1:])
    num = np.zeros(shape, np.complex128)
    den = np.zeros(shape, np.float64)
    counts = np.zeros((2, k), np.int64)
    for h in (0, 1):
        for c in np.unique(ps.best[task.contributes & (task.half == h)]):
            rows = np.flatnonzero((ps.best == c) & task.contributes & (task.half == h))
            if c2 is None:
                num[h, c] = spec[rows].sum(axis=0)
                den[h, c] = rows.size
            else:
                num[h, c] = (spec[rows] * c2[rows]).sum(axis=0)
                den[h, c] = (c2[rows].astype(np.float64) ** 2).sum(axis=0)
            counts[h, c] = rows.size
    null = None
    if task.null.size:  # the same particles with random phases: what noise scores
        from cryomanifold.halfset import phase_randomized

        noise = phase_randomized(images[task.null], np.random.default_rng(task.seed))
        null = search_poses(
            noise,
            job.references,
            ring_weights=job.ring_weights,
            grid=job.grid,
            mask=default_mask(box),
            ctf=None if cr is None else cr[task.null],
            centres_px=task.centres[task.null],
            shifts_px=job.shifts,
            mirror=job.mirror,
            workers=job.workers,
        ).scores.max(axis=1)
    sample = np.zeros((0, job.crop, job.crop), np.float32)
    if task.sample.size:
        from cryomanifold.preprocess import fourier_crop

        sample = (
            fourier_crop(aligned[task.sample], job.crop) if job.crop < box else aligned[task.sample]
        )
    return ChunkAlignment(
        ps.best,
        top2.astype(np.float32),
        ps.centres_px,
        ps.angles_deg,
        ps.shifts_px,
        ps.mirrored,
        num,
        den,
        counts,
        np.asarray(sample, np.float32),
        ps.best[task.sample],
        ps.scores if job.want_scores else None,
        null,
    )
