"""How the second stage rebuilds its references from their aligned members.

Pure functions on arrays, used by :func:`cryomanifold.refine.refine_classes` after
each alignment round:

- :func:`weighted_averages`: CTF-weighted averages ``Σ |C| X / (Σ |C|² + ε n)``;
- :func:`frc_filter`: the comparison filter ``sqrt(2 FRC / (1 + FRC))`` from the
  Fourier ring correlation of two random halves of the members;
- :func:`recentred`: each reference moved so that its masked energy is centred;
- :func:`split_classes`: large classes split by k-means on the principal
  components of their aligned, low-passed members;
- :func:`fourier_pad`: the inverse of a Fourier crop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.mra import default_mask
from cryomanifold.polar import ring_index
from cryomanifold.transforms import shift_images

__all__ = ["fourier_pad", "frc_filter", "recentred", "split_classes", "weighted_averages"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


def weighted_averages(num: Any, den: Any, counts: Any, epsilon: float, box: int) -> F32:
    """CTF-weighted averages ``num / (den + ε n)`` as images, (..., L, L)."""
    reg = epsilon * counts[..., None, None]
    spec = num / np.maximum(den + reg, 1e-12)
    return np.asarray(sfft.irfft2(spec, s=(box, box)), dtype=np.float32)


def frc_filter(half_a: F32, half_b: F32, sizes: npt.NDArray[np.int64], box: int) -> F64:
    """Size-weighted mean FRC of the classes' half averages -> the comparison filter
    ``sqrt(2 FRC / (1 + FRC))`` on the rfft2 grid (rings beyond the first drop below
    0.143 get 0)."""
    ring = ring_index(box)
    n_rings = int(ring.max()) + 1
    fa, fb = sfft.rfft2(half_a), sfft.rfft2(half_b)
    flat = ring.ravel()
    cross = np.zeros(n_rings)
    weight = sizes.astype(np.float64)
    for a, b, w in zip(fa.reshape(len(fa), -1), fb.reshape(len(fb), -1), weight, strict=True):
        if w <= 0:
            continue
        c = np.bincount(flat, (a * np.conj(b)).real, n_rings)
        p = np.bincount(flat, np.abs(a) ** 2, n_rings) * np.bincount(flat, np.abs(b) ** 2, n_rings)
        cross += w * np.divide(c, np.sqrt(p), out=np.zeros(n_rings), where=p > 0)
    curve = np.clip(cross / max(weight.sum(), 1e-12), 0.0, 0.999)
    low = np.flatnonzero(curve[1:] < 0.143)
    if low.size:
        curve[1 + max(int(low[0]), 3) :] = 0.0
    return np.asarray(np.sqrt(2 * curve / (1 + curve))[ring])


def recentred(refs: F32, box: int, workers: int = 1) -> F32:
    """Each reference shifted so that the centre of mass of its masked energy is at
    the box centre (stops references drifting)."""
    mask = default_mask(box)
    energy = (refs * mask).astype(np.float64) ** 2
    total = energy.sum(axis=(1, 2))
    coords = np.arange(box) - box // 2
    com_y = energy.sum(axis=2) @ coords / np.maximum(total, 1e-30)
    com_x = energy.sum(axis=1) @ coords / np.maximum(total, 1e-30)
    shifts = -np.stack([com_y, com_x], axis=1)
    return shift_images(refs, np.where(total[:, None] > 0, shifts, 0.0), workers=workers)


def split_classes(
    images: F32,
    labels: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    target_size: int,
    max_classes: int,
    rng: np.random.Generator,
) -> list[tuple[int, F32]]:
    """For each class larger than twice the target, its sample split into 2-4 parts
    by k-means on principal components; returns (class, part average) pairs."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    out: list[tuple[int, F32]] = []
    n_classes = sizes.size
    room = max_classes - n_classes
    order = np.argsort(-sizes, kind="stable")
    crop = images.shape[-1]
    mask = default_mask(crop).ravel()
    for c in order.tolist():
        if room <= 0 or sizes[c] <= 2 * target_size:
            break
        rows = np.flatnonzero(labels == c)
        parts = int(min(sizes[c] // target_size, 4, room + 1))
        if rows.size < 4 * parts:
            continue
        x = images[rows].reshape(rows.size, -1) * mask
        z = PCA(min(10, rows.size - 1), random_state=int(rng.integers(1 << 31))).fit_transform(x)
        km = KMeans(parts, n_init=3, random_state=int(rng.integers(1 << 31))).fit_predict(z)
        counts = np.bincount(km, minlength=parts)
        if (counts < 2).any():
            continue
        for j in range(parts):
            out.append((c, images[rows[km == j]].mean(axis=0)))
        room -= parts - 1
    return out


def fourier_pad(images: F32, box: int) -> F32:
    """Fourier-pad images (n, l, l) to (n, L, L) (the inverse of a Fourier crop)."""
    small = images.shape[-1]
    if small == box:
        return images
    spec = sfft.fftshift(sfft.fft2(images), axes=(-2, -1))
    out = np.zeros((images.shape[0], box, box), np.complex128)
    lo = box // 2 - small // 2
    out[:, lo : lo + small, lo : lo + small] = spec
    scale = (box / small) ** 2
    return np.asarray(sfft.ifft2(sfft.ifftshift(out, axes=(-2, -1))).real * scale, dtype=np.float32)
