"""Aligned class averages: reference-free alignment and averaging of class members.

Members of one cryomanifold class share a view but not their in-plane angle or
shift, so each class average is built by reference-free alignment: every member is
rotated and shifted onto an evolving, centred reference (with
:func:`cryomanifold.alignment.align_to_reference`) and the aligned members are
averaged.

Conventions
-----------
Images are ``(n, L, L)`` arrays with the box centre at ``(L // 2, L // 2)``; angles
and shifts follow :mod:`cryomanifold.transforms` (positive angles counter-clockwise
as displayed, ``(dy, dx)`` shifts, rotation first, then the shift).

The averages are plain means of the aligned members: no CTF correction beyond the
phase flip the caller applied, no Wiener filter. They are Wiener-free averages, good
for looking at a class, not for resolution estimates.

:class:`Alignment`, :func:`align_to_reference`, :func:`rotate_images` and
:func:`shift_images` live in :mod:`cryomanifold.alignment` and
:mod:`cryomanifold.transforms`; they are re-exported here for compatibility.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from tqdm import tqdm

from cryomanifold.alignment import (
    Alignment,
    _default_mask,
    _masked,
    _radius_rfft,
    align_to_reference,
    lowpass_weights,
)
from cryomanifold.preprocess import as_image_batch
from cryomanifold.transforms import rotate_images, shift_images

__all__ = [
    "Alignment",
    "ClassAverage",
    "align_to_reference",
    "class_averages",
    "reference_free_average",
    "rotate_images",
    "shift_images",
]

logger = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class ClassAverage(NamedTuple):
    """Result of :func:`reference_free_average`.

    Attributes
    ----------
    average : ndarray, shape (L, L), float32
        Mean of the aligned members. They are aligned to a reference whose
        band-limited centre of mass is at ``(L // 2, L // 2)``, so the average is
        centred too. Its in-plane orientation is arbitrary.
    alignment : Alignment
        The members' alignment onto the final reference (``alignment.aligned``
        averages to ``average``).
    n_members : int
    """

    average: F32
    alignment: Alignment
    n_members: int


def _frc_weights(half_a: F32, half_b: F32, lowpass: F64, workers: int) -> F64:
    """Reference filter ``sqrt(2 FRC / (1 + FRC))`` from two half-set averages.

    Rings beyond the first where the FRC drops below 0.143 get 0 (ring 3 and below
    are always kept); multiplied by ``lowpass``, shape (L, L // 2 + 1).
    """
    spec = sfft.rfft2(np.stack([half_a, half_b]), workers=workers)
    ring = np.rint(_radius_rfft(half_a.shape[-1])).astype(np.intp).ravel()
    a, b = spec[0].ravel(), spec[1].ravel()
    cross = np.bincount(ring, (a * np.conj(b)).real)
    power = np.bincount(ring, np.abs(a) ** 2) * np.bincount(ring, np.abs(b) ** 2)
    frc = np.clip(cross / np.sqrt(np.maximum(power, 1e-30)), 0.0, 0.999)
    low = np.flatnonzero(frc[1:] < 0.143)
    if low.size:
        frc[1 + max(int(low[0]), 3) :] = 0.0
    return np.sqrt(2 * frc / (1 + frc))[ring].reshape(lowpass.shape) * lowpass


def _centring_shift(image: F32, mask: F32, band: F64, workers: int) -> F64:
    """Shift ``(dy, dx)`` that moves the centre of mass of the band-limited, masked
    image's energy (squared density: independent of the contrast sign) to ``L // 2``."""
    box = image.shape[-1]
    spec = sfft.rfft2(_masked(image[None], mask), workers=workers)[0] * band
    energy = (sfft.irfft2(spec, s=(box, box), workers=workers) * mask).astype(np.float64) ** 2
    total = energy.sum()
    if not total > 0:
        return np.zeros(2)
    coords = np.arange(box) - box // 2
    com = np.array([energy.sum(axis=1) @ coords, energy.sum(axis=0) @ coords]) / total
    return np.asarray(-com)


def reference_free_average(
    images: npt.ArrayLike,
    *,
    n_iter: int = 5,
    n_angles: int = 360,
    max_shift_px: float | None = None,
    mask_radius: float | None = None,
    lowpass_fraction: float = 0.5,
    random_state: int | np.random.Generator | None = None,
    workers: int = -1,
) -> ClassAverage:
    """Average images of one view after aligning them to each other (no external reference).

    1. Initial reference, built progressively so that it gains signal before it is
       trusted: a random member, then blocks of 1, 2, 4, ... further members (seeded
       random order) aligned to the running average and added to it.
    2. ``n_iter`` rounds: align every member to the reference and average. The
       Fourier ring correlation of two random half-set averages gives the reference
       filter ``sqrt(2 FRC / (1 + FRC))`` (capped at ``lowpass_fraction`` of
       Nyquist) for the next round, so correlations use only frequencies the data
       support.
    3. Every new reference is shifted so that the centre of mass of its
       band-limited energy is at the box centre, which stops it drifting.

    The images must already be phase-flipped and normalised by the caller. The
    average is the plain mean of the aligned, unmasked members: a Wiener-free
    average, with no CTF amplitude correction. Its in-plane orientation is
    arbitrary. As with any reference-free alignment, pure noise averages to a
    structured-looking image (noise aligned to itself); judge a class by its size
    and scores too.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    n_iter : int
        Refinement rounds after the initial reference (at least 1).
    n_angles, max_shift_px, mask_radius, lowpass_fraction, workers
        As in :func:`align_to_reference`.
    random_state : int or numpy Generator, optional
        Seeds the member order and the half-set split.

    Returns
    -------
    ClassAverage
        ``average == alignment.aligned.mean(axis=0)``; the alignment is to the
        final, centred reference.
    """
    imgs = as_image_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    if n == 0 or n_iter < 1:
        raise ValueError(f"need at least one image and n_iter >= 1; got {n} images, {n_iter}")
    rng = np.random.default_rng(random_state)
    mask = _default_mask(box, mask_radius)
    lowpass = lowpass_weights(box, lowpass_fraction)

    def align(batch: F32, reference: F32, band: F64) -> Alignment:
        return align_to_reference(
            batch,
            reference,
            n_angles=n_angles,
            max_shift_px=max_shift_px,
            mask_radius=mask_radius,
            band_weights=band,
            workers=workers,
        )

    def centred(image: npt.NDArray[np.floating], band: F64) -> F32:
        image = np.asarray(image, dtype=np.float32)
        return shift_images(image, _centring_shift(image, mask, band, workers), workers=workers)[0]

    order = rng.permutation(n)
    ref = centred(imgs[order[0]], lowpass)
    count = 1
    while count < n:
        block = order[count : 2 * count]
        total = ref * np.float64(count) + align(imgs[block], ref, lowpass).aligned.sum(axis=0)
        count += block.size
        ref = centred(total / count, lowpass)

    half = np.zeros(n, dtype=bool)
    half[order[: n // 2]] = True
    band = lowpass
    alignment = align(imgs, ref, band)
    for it in range(1, n_iter):
        if n >= 4:
            aligned = alignment.aligned
            band = _frc_weights(
                aligned[half].mean(axis=0), aligned[~half].mean(axis=0), lowpass, workers
            )
        ref = centred(alignment.aligned.mean(axis=0, dtype=np.float64), band)
        alignment = align(imgs, ref, band)
        logger.debug("reference-free round %d: mean score %.3f", it, alignment.scores.mean())
    average = alignment.aligned.mean(axis=0, dtype=np.float64).astype(np.float32)
    return ClassAverage(average, alignment, n)


def class_averages(
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    n_classes: int | None = None,
    weights: npt.ArrayLike | None = None,
    max_members: int = 500,
    n_iter: int = 5,
    n_angles: int = 360,
    max_shift_px: float | None = None,
    mask_radius: float | None = None,
    lowpass_fraction: float = 0.5,
    random_state: int | np.random.Generator | None = None,
    progress: bool = True,
    workers: int = -1,
) -> F32:
    """One reference-free aligned average per class.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Phase-flipped, normalised particle images. A memory-mapped array is read
        one class at a time (only the selected members).
    labels : array_like of int, shape (n,)
        0-based class of each image; negative labels mark unassigned images, which
        are ignored.
    n_classes : int, optional
        Number of classes ``K``; default ``labels.max() + 1``.
    weights : array_like, shape (n,), optional
        Member weights (for example GMM membership probabilities): each class uses
        its ``max_members`` highest-weighted members. Without weights a seeded random
        subset is used.
    max_members : int
        Largest number of members aligned per class.
    n_iter, n_angles, max_shift_px, mask_radius, lowpass_fraction, workers
        As in :func:`reference_free_average`.
    random_state : int or numpy Generator, optional
        Seeds member subsets and alignment; each class gets its own child stream,
        so a class's average does not depend on the other classes.
    progress : bool
        Show a tqdm bar over classes (it stays quiet when stderr is not a terminal).

    Returns
    -------
    ndarray, shape (K, L, L), float32
        Plain means of the aligned members (see :func:`reference_free_average`);
        empty classes are all zeros.
    """
    stack = images if isinstance(images, np.ndarray) else np.asarray(images)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"images must have shape (n, L, L) with square boxes; got {stack.shape}")
    n, box = stack.shape[0], stack.shape[-1]
    lab = np.asarray(labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers, one per image; got {lab.dtype} {lab.shape}")
    k = int(lab.max(initial=-1)) + 1 if n_classes is None else int(n_classes)
    if lab.size and lab.max() >= k:
        raise ValueError(f"labels go up to {int(lab.max())} but n_classes is {k}")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)):
            raise ValueError(f"weights must be {n} finite numbers (one per image)")
    if max_members < 1:
        raise ValueError(f"max_members must be at least 1; got {max_members}")
    rngs = np.random.default_rng(random_state).spawn(k)
    out = np.zeros((k, box, box), dtype=np.float32)
    bar = tqdm(range(k), desc="class averages", unit="class", disable=None if progress else True)
    for c in bar:
        members = np.flatnonzero(lab == c)
        if members.size == 0:
            logger.info("class %d is empty; its average is zeros", c)
            continue
        if members.size > max_members:
            if w is None:
                members = rngs[c].choice(members, max_members, replace=False)
            else:
                members = members[np.argsort(-w[members], kind="stable")[:max_members]]
        subset = np.asarray(stack[np.sort(members)], dtype=np.float32)
        result = reference_free_average(
            subset,
            n_iter=n_iter,
            n_angles=n_angles,
            max_shift_px=max_shift_px,
            mask_radius=mask_radius,
            lowpass_fraction=lowpass_fraction,
            random_state=rngs[c],
            workers=workers,
        )
        out[c] = result.average
    return out
