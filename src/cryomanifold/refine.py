"""The second, phase-keeping stage: 2-D classification by multi-reference alignment,
started from the map's classes.

The invariant map (first stage) sorts particles without poses; its classes mix
neighbouring views, and at low SNR some species. :func:`refine_classes` takes its
class averages as references and iterates:

1. every particle is aligned to every reference (rotation, a few shifts around its
   current centre, mirror; :func:`cryomanifold.mra.search_poses`) and assigned to
   the best one by a CTF-aware normalised cross-correlation;
2. each reference becomes the CTF-weighted average of its aligned members,
   ``Σ |C| X / (Σ |C|² + ε n)``, recentred, and filtered by the Fourier ring
   correlation of two random halves of the members (``sqrt(2 FRC / (1 + FRC))``,
   the data decide which frequencies are compared);
3. while classes are larger than ``target_size`` (and fewer than ``max_classes``),
   each large class is split in two to four by k-means on the principal components
   of its aligned, low-passed members (which share one frame, so their pixels can
   be compared directly);
4. the comparisons start at low resolution (``start_band_px`` cycles per box: the
   size and outline, which tell species apart even with blurred references) and
   the band limit rises each iteration to ``final_band_px`` (views). The band is
   counted in cycles per box, so it scales with the particle (a box is 1.5-2
   particle diameters): 8 -> 16 cycles is 40 -> 20 Å in a 320 Å box.

The result holds each particle's class, pose and its vector of best-over-pose
correlations with the final references: shift- and rotation-invariant, and
phase-keeping (the run's ``features.npy`` when the stage runs).

Work is done per chunk of particles (:class:`ImageChunk`: images in memory or in a
cache file) through a ``mapper`` with the signature of
:meth:`cryomanifold.parallel.TaskRunner.map`, so that a run spreads it over Dask
tasks; memory stays at a chunk of images plus ``K`` references.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.class_references import (
    fourier_pad,
    frc_filter,
    recentred,
    split_classes,
    weighted_averages,
)
from cryomanifold.mra import (
    class_posterior,
    default_mask,
    local_shift_grid,
    ring_power,
)
from cryomanifold.mra_chunk import AlignJob, AlignTask, ChunkAlignment, align_chunk
from cryomanifold.polar import PolarGrid, polar_coefficients

__all__ = [
    "ArrayChunk",
    "ImageChunk",
    "RefineResult",
    "RefineSettings",
    "refine_classes",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


class ImageChunk(Protocol):
    """Some particles: ``load()`` gives their phase-flipped, normalised images (m, L, L)
    and their CTF (a :class:`~cryomanifold.ctf.CTFParams` of m, or None)."""

    def load(self) -> tuple[F32, Any]: ...


@dataclass(frozen=True)
class ArrayChunk:
    """An :class:`ImageChunk` held in memory."""

    images: F32
    ctf: Any = None

    def load(self) -> tuple[F32, Any]:
        return self.images, self.ctf


@dataclass(frozen=True)
class RefineSettings:
    """Parameters of :func:`refine_classes`.

    Attributes
    ----------
    pixel_size_angstrom : float
        Of the images.
    n_iter : int
        Alignment rounds.
    n_split_iter : int
        Rounds during which large classes are split.
    target_size : int
        Classes with more than twice this many members are split (until
        ``max_classes``).
    max_classes : int
        Upper bound on the number of references (bounds the cost per particle).
    min_size : int
        References with fewer members are dropped.
    start_band_px, final_band_px : float
        Band limit of the comparisons in the first and the last rounds, in cycles
        per box (Fourier pixels; geometric in between, at most Nyquist). Measured on
        the realistic 5-species set at 20 e/Å² (4 Å/px, 80 px): ending at 16 cycles
        (20 Å) gave the same species ARI and 10-NN view coherence (0.85, 0.60) as
        ending at 25 or 32 cycles (0.85 / 0.61, 0.85 / 0.61) at 1/3.4 and 1/5.8 of
        their cost; starting at 8 cycles (40 Å) instead of at the final band raised
        the species ARI of the good particles from 0.80 to 0.90.
    search_radius_px : float
        Shifts searched in the first round (a disk around the box centre); later
        rounds search a pixel, then half a pixel, around each particle's centre.
    mirror : bool
        Also align each particle's mirror image (the map cannot tell a view from
        its mirror either).
    split_sample : int
        At most this many members per class (on average) are looked at to split it.
    epsilon : float
        Regularisation of the CTF-weighted averages, per member.
    seed : int
    """

    pixel_size_angstrom: float
    n_iter: int = 12
    n_split_iter: int = 9
    target_size: int = 40
    max_classes: int = 200
    min_size: int = 5
    start_band_px: float = 8.0
    final_band_px: float = 16.0
    search_radius_px: float = 2.0
    mirror: bool = True
    split_sample: int = 200
    epsilon: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_iter < 1 or not 0 <= self.n_split_iter <= self.n_iter:
            raise ValueError("need n_iter >= 1 and 0 <= n_split_iter <= n_iter")
        if self.target_size < 1 or self.max_classes < 1 or self.min_size < 1:
            raise ValueError("target_size, max_classes and min_size must be >= 1")
        if not 1 <= self.start_band_px <= self.final_band_px:
            raise ValueError("need 1 <= start_band_px <= final_band_px")

    def band_px(self, it: int, box: int) -> float:
        """Band limit (Fourier pixels of the box) of round ``it``."""
        top = box / 2 - 1
        start = min(self.start_band_px, top)
        final = min(max(self.final_band_px, start), top)
        span = max(self.n_iter - 3, 1)
        frac = min(it / span, 1.0)
        return float(start * (final / start) ** frac)

    def local_shifts(self, it: int) -> F64:
        """The shift grid of round ``it``."""
        if it == 0:
            return local_shift_grid(self.search_radius_px, 1.0)
        if it >= self.n_iter - 2:
            return local_shift_grid(0.5, 0.5)
        return local_shift_grid(1.0, 1.0)


class RefineResult(NamedTuple):
    """Result of :func:`refine_classes` (n particles, K final references).

    Attributes
    ----------
    labels : ndarray, shape (n,), int64
        Final class of each particle (0-based, the references' order).
    scores : ndarray, shape (n, K), float32
        Best normalised cross-correlation of each particle with each reference over
        rotations, shifts and mirrors: the phase-keeping feature vector.
    best_scores : ndarray, shape (n,), float32
        Each particle's score with its class.
    null_scores : ndarray, shape (len(null_rows),), float32
        The best score of the ``null_rows`` particles with random Fourier phases
        (same amplitude spectrum, no structure): what noise scores.
    probabilities : ndarray, shape (n,), float32
        Posterior of the class under a Gaussian noise model (``exp`` of the
        correlation gain times the effective number of Fourier samples).
    angles_deg, shifts_px, mirrored : ndarray
        Pose of each particle on its reference (:func:`cryomanifold.mra.aligned_images`).
    references : ndarray, shape (K, L, L), float32
        CTF-weighted averages of the members (unfiltered), the class averages.
    half_references : ndarray, shape (2, K, L, L), float32
        The same from two random halves of the members (both in the reference's
        frame, so their FRC is optimistic: the halves share the reference).
    sizes : ndarray, shape (K,), int64
        Members (contributing particles) per class.
    history : list of dict
        Per round: classes, band limit (Å), mean best score, seconds.
    """

    labels: npt.NDArray[np.int64]
    scores: F32
    best_scores: F32
    null_scores: F32
    probabilities: F32
    angles_deg: F32
    shifts_px: F32
    mirrored: npt.NDArray[np.bool_]
    references: F32
    half_references: F32
    sizes: npt.NDArray[np.int64]
    history: list[dict[str, Any]]


def _serial_map(
    func: Callable[..., Any], items: Sequence[Any], *, shared: Any = None, **_: Any
) -> list[Any]:
    return [func(item, shared) for item in items]


def refine_classes(
    chunks: Sequence[ImageChunk],
    references: npt.ArrayLike,
    settings: RefineSettings,
    *,
    sizes: Sequence[int],
    contributes: npt.ArrayLike | None = None,
    mapper: Callable[..., list[Any]] | None = None,
    null_rows: npt.ArrayLike | None = None,
    workers: int = 1,
) -> RefineResult:
    """Classify particles by iterated multi-reference alignment from initial references.

    Parameters
    ----------
    chunks : sequence of ImageChunk
        The particles, in order; chunk ``i`` holds ``sizes[i]`` of them.
    references : array_like, shape (K0, L, L)
        Initial references (the map's class averages).
    settings : RefineSettings
    sizes : sequence of int
        Particles per chunk.
    contributes : array_like of bool, shape (n,), optional
        Particles that update the references (default all): the others are
        classified but do not shape the averages (e.g. particles called junk).
    mapper : callable, optional
        ``mapper(func, items, shared=..., desc=..., unit=..., sizes=...)`` (for
        example :meth:`cryomanifold.parallel.TaskRunner.map`); default: in turn.
    null_rows : array_like of int, optional
        Particles (sorted) that the final round also scores with random phases
        (``RefineResult.null_scores``, a noise control).
    workers : int
        Threads for scipy.fft inside a task.

    Returns
    -------
    RefineResult
    """
    import time

    run_map = mapper or _serial_map
    refs = np.asarray(references, dtype=np.float32)
    box = refs.shape[-1]
    n = int(sum(sizes))
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
    contrib = np.ones(n, bool) if contributes is None else np.asarray(contributes, bool)
    nulls = np.zeros(n, bool)
    if null_rows is not None:
        nulls[np.asarray(null_rows, np.intp)] = True
    rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(11,)))
    half = rng.random(n) < 0.5
    centres = np.zeros((n, 2))
    grid = PolarGrid.make(box, 1.0, box / 2 - 1)
    noise = _noise_rings(chunks, bounds, contrib, grid, workers)
    filt = np.ones((box, box // 2 + 1))
    history: list[dict[str, Any]] = []
    result: list[ChunkAlignment] = []
    for it in range(settings.n_iter):
        t0 = time.perf_counter()
        band = settings.band_px(it, box)
        weights = grid.radii / noise * (grid.radii <= band)
        last = it == settings.n_iter - 1
        splitting = it < settings.n_split_iter and refs.shape[0] < settings.max_classes
        crop = int(min(box, 2 * np.ceil(band + 2)))
        crop += crop % 2
        sample = np.zeros(n, bool)
        if splitting:
            want = settings.split_sample * settings.max_classes
            pool = np.flatnonzero(contrib)
            pick = pool if pool.size <= want else rng.choice(pool, want, replace=False)
            sample[pick] = True
        compare = np.asarray(sfft.irfft2(sfft.rfft2(refs) * filt, s=(box, box)), dtype=np.float32)
        job = AlignJob(
            compare,
            weights,
            grid,
            settings.local_shifts(it),
            settings.mirror,
            band,
            crop,
            last,
            settings.pixel_size_angstrom,
            workers,
        )
        tasks = [
            AlignTask(
                ch,
                centres[a:b],
                half[a:b],
                contrib[a:b],
                np.flatnonzero(sample[a:b]),
                np.flatnonzero(nulls[a:b]) if last else np.zeros(0, np.intp),
                settings.seed + int(a),
            )
            for ch, a, b in zip(chunks, bounds[:-1], bounds[1:], strict=True)
        ]
        result = run_map(
            align_chunk,
            tasks,
            shared=job,
            desc=f"refine {it + 1}/{settings.n_iter}",
            unit="particle",
            sizes=list(sizes),
        )
        labels = np.concatenate([r.best for r in result])
        centres = np.concatenate([r.centres for r in result]).astype(np.float64)
        num = np.sum([r.num for r in result], axis=0)
        den = np.sum([r.den for r in result], axis=0)
        counts = np.sum([r.counts for r in result], axis=0)
        total = counts.sum(axis=0)
        halves = weighted_averages(num, den, counts, settings.epsilon, box)  # (2, K, L, L)
        refs_new = weighted_averages(num.sum(0), den.sum(0), total, settings.epsilon, box)
        top = np.concatenate([r.top2 for r in result])
        history.append(
            {
                "round": it + 1,
                "classes": int(refs.shape[0]),
                "band_angstrom": round(box * settings.pixel_size_angstrom / band, 2),
                "mean_best_score": float(top[:, 0].mean()),
                "seconds": 0.0,
            }
        )
        if last:
            history[-1]["seconds"] = round(time.perf_counter() - t0, 3)
            break
        keep = total >= settings.min_size
        filt = frc_filter(halves[0][keep], halves[1][keep], total[keep], box)
        new_refs = [refs_new[keep]]
        if splitting:
            imgs = np.concatenate([r.sample_images for r in result])
            labs = np.concatenate([r.sample_labels for r in result])
            parts = split_classes(
                imgs, labs, total, settings.target_size, settings.max_classes, rng
            )
            keep[sorted({c for c, _ in parts})] = False
            new_refs = [refs_new[keep]]
            if parts:
                new_refs.append(fourier_pad(np.stack([p for _, p in parts]), box))
        refs = recentred(np.concatenate(new_refs), box, workers)
        history[-1]["seconds"] = round(time.perf_counter() - t0, 3)
        log.info("refine round %d: %s", it + 1, history[-1])
    scores = np.concatenate([r.scores for r in result if r.scores is not None])
    final_band = grid.radii <= settings.band_px(settings.n_iter - 1, box)
    prob = class_posterior(scores, top[:, 0], grid.radii[final_band], noise[final_band])
    null_scores = [r.null_scores for r in result if r.null_scores is not None]
    return RefineResult(
        labels,
        scores,
        top[:, 0].copy(),
        np.concatenate(null_scores) if null_scores else np.zeros(0, np.float32),
        prob,
        np.concatenate([r.angles for r in result]),
        np.concatenate([r.shifts for r in result]),
        np.concatenate([r.mirrored for r in result]),
        refs_new,
        halves,
        total,
        history,
    )


def _noise_rings(
    chunks: Sequence[ImageChunk],
    bounds: npt.NDArray[np.intp],
    contributes: npt.NDArray[np.bool_],
    grid: PolarGrid,
    workers: int,
    limit: int = 2000,
) -> F64:
    """Median power of single particles on each ring: the noise, at the SNR of single
    particles. From the first ``limit`` contributing particles (junk left out: a
    carbon edge or a contamination has far more power than the ice)."""
    powers, seen = [], 0
    for ch, a, b in zip(chunks, bounds[:-1], bounds[1:], strict=True):
        rows = np.flatnonzero(contributes[a:b])[: limit - seen]
        if rows.size == 0:
            continue
        images, _ = ch.load()
        coef = polar_coefficients(images[rows], grid, mask=default_mask(grid.box), workers=workers)
        powers.append(ring_power(coef))
        seen += rows.size
        if seen >= limit:
            break
    if not powers:
        raise ValueError("no particle contributes to the references")
    power = np.median(np.concatenate(powers), axis=0)
    return np.maximum(power, 1e-12 * max(float(power.max()), 1e-30))
