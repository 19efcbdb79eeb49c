"""Multi-reference alignment: every particle against many references at once.

Each particle is compared with a set of references (class averages) at every
in-plane rotation, a small grid of shifts around its current centre and,
optionally, mirrored, by :mod:`cryomanifold.polar`'s ring correlations. The score is
a CTF-aware normalised cross-correlation: the phase-flipped image ``X`` against
``|CTF| R`` (the reference as this particle's microscope would show it), with every
Fourier ring weighted by its area over the noise power,

``ncc = Σ w X conj(|C| R) / sqrt(Σ w |X|² Σ w |C|² |R|²)``.

The best score over poses against each reference does not change when the particle
is shifted or turned, and unlike the amplitude spectrum it keeps the phase: the
vector of scores is the second stage's feature vector (:mod:`cryomanifold.refine`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from cryomanifold.polar import (
    PolarGrid,
    mirror_coefficients,
    polar_coefficients,
    pose_to_transform,
    ring_index,
    rotational_correlation,
    shift_coefficients,
)
from cryomanifold.preprocess import as_image_batch, soft_circular_mask
from cryomanifold.transforms import rotate_images, shift_images

__all__ = [
    "PoseSearch",
    "aligned_images",
    "class_posterior",
    "ctf_rings",
    "default_mask",
    "local_shift_grid",
    "ring_power",
    "search_poses",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_CHUNK = 32


class PoseSearch(NamedTuple):
    """Best pose of each image against each reference, and overall.

    Attributes
    ----------
    scores : ndarray, shape (n, K), float32
        Best normalised cross-correlation over rotations, shifts (and mirrors) with
        each reference.
    best : ndarray, shape (n,), int64
        Reference with the highest score.
    angles_deg, shifts_px, mirrored : ndarray, shapes (n,), (n, 2), (n,)
        The pose of the best match, as :func:`aligned_images` applies it: mirror
        rows, turn, then shift (``transforms`` conventions).
    centres_px : ndarray, shape (n, 2), float32
        The shift of the original image that centres it (before any mirror or
        rotation): the next search starts there.
    """

    scores: F32
    best: npt.NDArray[np.int64]
    angles_deg: F32
    shifts_px: F32
    mirrored: npt.NDArray[np.bool_]
    centres_px: F32


def local_shift_grid(radius_px: float, step_px: float = 1.0) -> F64:
    """Shifts ``(dy, dx)`` on a square grid of ``step_px`` within a disk, (S, 2)."""
    k = int(np.floor(radius_px / step_px + 1e-9))
    g = np.arange(-k, k + 1) * step_px
    yy, xx = np.meshgrid(g, g, indexing="ij")
    keep = np.hypot(yy, xx) <= radius_px + 1e-9
    return np.stack([yy[keep], xx[keep]], axis=1)


def ctf_rings(ctf: object | None, n: int, box: int, pixel_size_angstrom: float, radii: F64) -> F32:
    """Mean ``|CTF|`` of each particle on each ring (ones without a CTF), (n, R)."""
    if ctf is None:
        return np.ones((n, radii.size), np.float32)
    from cryomanifold.ctf import ctf_2d

    ring = ring_index(box).ravel()
    n_rings = int(ring.max()) + 1
    counts = np.maximum(np.bincount(ring, minlength=n_rings), 1)
    out = np.empty((n, radii.size), np.float32)
    take = np.clip(np.rint(radii).astype(np.intp), 0, n_rings - 1)
    for start in range(0, n, 512):
        sub = ctf.subset(np.arange(start, min(start + 512, n)))  # type: ignore[attr-defined]
        c = np.abs(ctf_2d(sub, box, pixel_size_angstrom)).reshape(len(sub), -1)
        sums = np.stack([np.bincount(ring, row, n_rings) for row in c])
        out[start : start + len(sub)] = (sums / counts)[:, take]
    return out


def ring_power(coef: npt.NDArray[np.complex64]) -> F64:
    """Σ over the ring of |F|² / n_phi, from coefficients (..., R, n_m) (both ±m)."""
    p = np.abs(coef).astype(np.float64) ** 2
    return np.asarray(2.0 * p.sum(axis=-1) - p[..., 0])


def _parabola(cm: F64, c0: F64, cp: F64) -> F64:
    denom = cm - 2.0 * c0 + cp
    safe = np.where(denom < 0, denom, -1.0)
    return np.where(denom < 0, np.clip(0.5 * (cm - cp) / safe, -0.5, 0.5), 0.0)


def search_poses(
    images: npt.ArrayLike,
    references: npt.ArrayLike,
    *,
    ring_weights: F64,
    grid: PolarGrid,
    mask: F32,
    ctf: F32 | None = None,
    centres_px: npt.ArrayLike | None = None,
    shifts_px: F64 | None = None,
    mirror: bool = True,
    angle_oversampling: int = 1,
    workers: int = 1,
) -> PoseSearch:
    """Best rotation, shift (and mirror) of every image against every reference.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Phase-flipped particles.
    references : array_like, shape (K, L, L)
        Estimates of the CTF-free projections.
    ring_weights : ndarray, shape (R,)
        Weight of each ring of ``grid`` (area over noise power, band limit); rings
        of weight 0 are left out.
    grid : PolarGrid
    mask : ndarray, shape (L, L)
        Soft real-space mask applied to images and references.
    ctf : ndarray, shape (n, R), optional
        ``|CTF|`` of each particle on each ring (:func:`ctf_rings`).
    centres_px : array_like, shape (n, 2), optional
        Current shift ``(dy, dx)`` of each particle; the grid is searched around it.
    shifts_px : ndarray, shape (S, 2), optional
        Local shift grid (default: no shift).
    mirror : bool
        Also try each image mirrored.
    angle_oversampling : int
        Rotations tried per angle of the polar grid (the correlation is interpolated
        by zero-padding its angular spectrum).
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    PoseSearch
    """
    imgs = as_image_batch(images)
    refs = as_image_batch(references)
    n, k = imgs.shape[0], refs.shape[0]
    local = np.zeros((1, 2)) if shifts_px is None else np.asarray(shifts_px, np.float64)
    centres = np.zeros((n, 2)) if centres_px is None else np.asarray(centres_px, np.float64)
    w_all = np.asarray(ring_weights, dtype=np.float64)
    keep = np.flatnonzero(w_all > 0)
    if keep.size == 0:
        raise ValueError("every ring has weight 0")
    # rings beyond the band are dropped, and with them the angles only they need
    sub = PolarGrid.make(grid.box, float(grid.radii[0]), float(grid.radii[keep.max()]))
    if sub.radii.size != keep.max() + 1 or not np.allclose(sub.radii, grid.radii[: sub.radii.size]):
        raise ValueError("grid rings must be one Fourier pixel apart")
    w = w_all[: sub.radii.size]
    c_rings = np.ones((n, sub.radii.size), np.float32) if ctf is None else ctf[:, : sub.radii.size]
    ref_coef = polar_coefficients(refs, sub, mask=mask, workers=workers)
    ref_power = ring_power(ref_coef)  # (K, R)
    n_t = 2 * (sub.n_m - 1) * max(int(angle_oversampling), 1)
    scores = np.empty((n, k), np.float32)
    best_ref = np.zeros(n, np.int64)
    pose = np.zeros((n, 4))  # angle, shift-first dy, dx (in the searched frame), mirrored
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        rows = np.arange(m)
        coef = polar_coefficients(imgs[sl], sub, mask=mask, workers=workers)
        cr = c_rings[sl].astype(np.float64)
        img_norm = np.sqrt(np.maximum(ring_power(coef) @ w, 1e-30))  # (m,)
        ref_norm = np.sqrt(np.maximum((cr**2 * w) @ ref_power.T, 1e-30))  # (m, K)
        denom = (img_norm[:, None] * ref_norm).astype(np.float32)
        starts = [centres[sl]] + ([_mirror_shift(centres[sl])] if mirror else [])
        bases = [coef] + ([mirror_coefficients(coef)] if mirror else [])
        shifts = [c[:, None, :] + local[None] for c in starts]  # per base: (m, S, 2)
        variants = np.concatenate(
            [shift_coefficients(b, sub, sh) for b, sh in zip(bases, shifts, strict=True)], axis=1
        )  # (m, V, R, n_m)
        variants *= (cr * w[None]).astype(np.float32)[:, None, :, None]
        corr = rotational_correlation(variants, ref_coef, n_t, workers=workers)  # (m, V, K, T)
        corr /= denom[:, None, :, None]
        t_best = np.argmax(corr, axis=-1)  # (m, V, K)
        val = np.take_along_axis(corr, t_best[..., None], axis=-1)[..., 0]
        scores[sl] = val.max(axis=1)
        flat = np.argmax(val.reshape(m, -1), axis=1)
        v, kk = np.divmod(flat, k)
        t0 = t_best[rows, v, kk]
        cc = corr[rows, v, kk].astype(np.float64)  # (m, T)
        off = _parabola(cc[rows, (t0 - 1) % n_t], cc[rows, t0], cc[rows, (t0 + 1) % n_t])
        all_shifts = np.concatenate(shifts, axis=1)  # (m, V, 2)
        best_ref[sl] = kk
        pose[sl] = np.column_stack(
            [(t0 + off) * 360.0 / n_t, all_shifts[rows, v], (v >= local.shape[0]).astype(float)]
        )
    angles, shifts_out = pose_to_transform(pose[:, 0], pose[:, 1:3])
    mirrored = pose[:, 3] > 0.5
    centres_out = np.where(mirrored[:, None], _mirror_shift(pose[:, 1:3]), pose[:, 1:3])
    return PoseSearch(
        scores,
        best_ref,
        angles.astype(np.float32),
        shifts_out.astype(np.float32),
        mirrored,
        centres_out.astype(np.float32),
    )


def _mirror_shift(shifts: F64) -> F64:
    """A shift of the original image expressed for its mirror image (rows flipped)."""
    out = np.array(shifts, dtype=np.float64, copy=True)
    out[..., 0] *= -1
    return out


def aligned_images(images: npt.ArrayLike, pose: PoseSearch, *, workers: int = 1) -> F32:
    """The images mirrored (where the pose says so), turned and shifted onto their
    reference."""
    imgs = as_image_batch(images).copy()
    box = imgs.shape[-1]
    flip = np.flatnonzero(pose.mirrored)
    if flip.size:
        imgs[flip] = np.roll(imgs[flip][:, ::-1, :], 1 - box % 2, axis=1)
    rot = rotate_images(imgs, pose.angles_deg, workers=workers)
    return shift_images(rot, pose.shifts_px, workers=workers)


def default_mask(box: int) -> F32:
    """The soft mask of the comparisons: radius 0.4 L, edge 0.1 L."""
    return soft_circular_mask(box, 0.4 * box, 0.1 * box)


def class_posterior(scores: F32, best: F32, radii: F64, noise: F64) -> F32:
    """Probability of the best class (n,) from scores (n, K) under Gaussian noise:
    the correlation gain of each class over the best times the effective number of
    independent Fourier samples of the noise-weighted comparison (``π r`` per ring of
    the half plane, weights ``1 / noise`` at ``radii``)."""
    count, w = np.pi * radii, 1.0 / noise
    n_eff = float((count * w).sum() ** 2 / max(float((count * w**2).sum()), 1e-30))
    logits = (scores - best[:, None]).astype(np.float64) * n_eff
    return np.asarray(1.0 / np.exp(logits).sum(axis=1), dtype=np.float32)
