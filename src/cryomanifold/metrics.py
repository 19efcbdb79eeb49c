"""Quality of a classification against ground truth (simulated data).

Classes are a vector quantisation: there are usually many more classes than
species, so species separation is scored after each class is named by the
majority truth label of its members ("class-majority" labels). Junk labels are
truth labels that start with ``junk`` (``junk:ice``, ``junk:carbon_edge``, ...).

Beyond species and junk: :func:`view_coherence_deg` scores whether classes (or
feature-space neighbours) share a viewing direction, :func:`mean_viewing_direction`
averages a class's directions under its point group (both in
:mod:`cryomanifold.views`, re-exported here), :func:`frc` and
:func:`frc_resolution_angstrom` compare a class average with the true projection,
and :func:`invariance_error` checks a featuriser's invariances on real images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cryomanifold.views import (
    ViewCoherence,
    mean_viewing_direction,
    symmetry_group,
    view_coherence_deg,
    viewing_directions,
)

__all__ = [
    "InvarianceError",
    "JunkScores",
    "ViewCoherence",
    "frc",
    "frc_crossing_angstrom",
    "frc_resolution_angstrom",
    "invariance_error",
    "is_junk_label",
    "junk_precision_recall",
    "majority_labels",
    "mean_viewing_direction",
    "species_ari",
    "species_nmi",
    "species_purity_recall",
    "symmetry_group",
    "view_coherence_deg",
    "viewing_directions",
]


def is_junk_label(truth: Sequence[str] | npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where a truth label names junk (starts with ``junk``)."""
    return np.char.startswith(np.asarray(truth).astype(str), "junk")


def majority_labels(classes: npt.ArrayLike, truth: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Name each particle by the most frequent truth label of its class.

    Parameters
    ----------
    classes : array_like, shape (n,)
        Class of each particle (any integers).
    truth : array_like of str, shape (n,)
        True label of each particle.

    Returns
    -------
    ndarray of str, shape (n,)
    """
    cls = np.asarray(classes)
    tr = np.asarray(truth).astype(str)
    out = np.empty(tr.shape, dtype=tr.dtype)
    for c in np.unique(cls):
        sel = cls == c
        names, counts = np.unique(tr[sel], return_counts=True)
        out[sel] = names[np.argmax(counts)]
    return out


def _collapse_junk(labels: npt.ArrayLike) -> npt.NDArray[np.str_]:
    lab = np.asarray(labels).astype(str)
    return np.where(is_junk_label(lab), "junk", lab)


def species_ari(classes: npt.ArrayLike, truth: npt.ArrayLike, *, junk_as_one: bool = True) -> float:
    """Adjusted Rand index between class-majority labels and the truth.

    With ``junk_as_one`` every junk kind counts as one label "junk" (the question
    is whether junk is kept apart from the particles, not which junk it is).
    """
    tr = _collapse_junk(truth) if junk_as_one else np.asarray(truth).astype(str)
    return float(adjusted_rand_score(tr, majority_labels(classes, tr)))


def species_nmi(classes: npt.ArrayLike, truth: npt.ArrayLike, *, junk_as_one: bool = True) -> float:
    """Normalised mutual information between class-majority labels and the truth."""
    tr = _collapse_junk(truth) if junk_as_one else np.asarray(truth).astype(str)
    return float(normalized_mutual_info_score(tr, majority_labels(classes, tr)))


def species_purity_recall(
    classes: npt.ArrayLike, truth: npt.ArrayLike
) -> dict[str, tuple[float, float]]:
    """Per truth label: (purity, recall) of the particles whose class-majority label is it.

    Purity is the fraction of particles assigned to the label that truly have it;
    recall the fraction of the label's particles assigned to it.
    """
    tr = _collapse_junk(truth)
    pred = majority_labels(classes, tr)
    out = {}
    for name in np.unique(tr):
        assigned = pred == name
        true = tr == name
        purity = float((assigned & true).sum() / max(assigned.sum(), 1))
        recall = float((assigned & true).sum() / max(true.sum(), 1))
        out[str(name)] = (purity, recall)
    return out


class JunkScores(NamedTuple):
    """Precision, recall and F1 of a junk flag against the truth."""

    precision: float
    recall: float
    f1: float
    recall_by_kind: dict[str, float]


def junk_precision_recall(flagged: npt.ArrayLike, truth: npt.ArrayLike) -> JunkScores:
    """Score per-particle junk flags against truth labels.

    Parameters
    ----------
    flagged : array_like of bool, shape (n,)
        Particles called junk.
    truth : array_like of str, shape (n,)
        True labels; ``junk:<kind>`` for junk.

    Returns
    -------
    JunkScores
        With the recall of each junk kind separately.
    """
    f = np.asarray(flagged, dtype=bool)
    tr = np.asarray(truth).astype(str)
    junk = is_junk_label(tr)
    tp = float((f & junk).sum())
    precision = tp / max(float(f.sum()), 1.0)
    recall = tp / max(float(junk.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    by_kind = {str(k): float(f[tr == k].mean()) for k in np.unique(tr[junk])}
    return JunkScores(precision, recall, f1, by_kind)


# --------------------------------------------------------------------------- FRC


def frc(
    image_a: npt.ArrayLike, image_b: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Fourier ring correlation of two square images.

    Parameters
    ----------
    image_a, image_b : array_like, shape (L, L)

    Returns
    -------
    frequencies : ndarray, shape (L // 2 + 1,)
        Ring frequencies in 1/pixel (``r / L`` for ring ``r``; 0.5 is Nyquist).
    values : ndarray, shape (L // 2 + 1,)
        ``Re sum(A conj(B)) / sqrt(sum |A|^2 sum |B|^2)`` over each ring (pixels
        rounded to the nearest ring); 0 where a ring has no power.
    """
    a = np.asarray(image_a, dtype=np.float64)
    b = np.asarray(image_b, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape != b.shape:
        raise ValueError(f"need two square images of one shape; got {a.shape} and {b.shape}")
    box = a.shape[0]
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    k = np.fft.fftfreq(box) * box
    ring = np.rint(np.hypot(k[:, None], k[None, :])).astype(np.intp).ravel()
    n_rings = box // 2 + 1
    inside = ring < n_rings
    r = ring[inside]
    cross = np.bincount(r, (fa * np.conj(fb)).real.ravel()[inside], n_rings)
    pa = np.bincount(r, (np.abs(fa) ** 2).ravel()[inside], n_rings)
    pb = np.bincount(r, (np.abs(fb) ** 2).ravel()[inside], n_rings)
    denom = np.sqrt(pa * pb)
    values = np.divide(cross, denom, out=np.zeros(n_rings), where=denom > 0)
    return np.arange(n_rings) / box, values


def frc_resolution_angstrom(
    image_a: npt.ArrayLike,
    image_b: npt.ArrayLike,
    pixel_size_angstrom: float,
    threshold: float = 0.5,
) -> float:
    """Resolution at which the FRC of two images first falls below ``threshold``.

    The crossing is interpolated linearly between rings (ring 0, the mean, is
    ignored). If the FRC never falls below the threshold the Nyquist resolution
    ``2 * pixel_size_angstrom`` is returned; if it is below at ring 1, ``L *
    pixel_size_angstrom``.

    Parameters
    ----------
    image_a, image_b : array_like, shape (L, L)
    pixel_size_angstrom : float
    threshold : float
        0.5 for an image against a noise-free reference; 0.143 for half sets.

    Returns
    -------
    float
        Resolution in Å.
    """
    return frc_crossing_angstrom(frc(image_a, image_b)[1], pixel_size_angstrom, threshold)


def frc_crossing_angstrom(
    values: npt.ArrayLike, pixel_size_angstrom: float, threshold: float = 0.5
) -> float:
    """Resolution at which an FRC curve (rings 0..L // 2, as :func:`frc` gives) first
    falls below ``threshold``; see :func:`frc_resolution_angstrom` for the conventions.

    Returns
    -------
    float
        Resolution in Å.
    """
    curve = np.asarray(values, dtype=np.float64)
    box = 2 * (curve.size - 1)
    below = np.flatnonzero(curve[1:] < threshold) + 1
    if below.size == 0:
        return 2.0 * pixel_size_angstrom
    r = int(below[0])
    if r == 1:
        return box * pixel_size_angstrom
    v0, v1 = curve[r - 1], curve[r]
    ring = (r - 1) + (v0 - threshold) / (v0 - v1)
    return float(box * pixel_size_angstrom / ring)


# --------------------------------------------------------------------------- invariance


class InvarianceError(NamedTuple):
    """Feature changes under transformations, relative to the median feature norm.

    Each value is ``median_i ||f(T x_i) - f(x_i)|| / median_i ||f(x_i)||``;
    ``between_particles`` is ``median_{i != j} ||f(x_i) - f(x_j)||`` on the same
    scale, so ``rotation / between_particles`` says how large the error is compared
    with the differences the features are meant to show.
    """

    shift: float
    rotation: float
    mirror: float
    between_particles: float


def invariance_error(
    featurize: Callable[[npt.NDArray[np.float32]], npt.ArrayLike],
    images: npt.ArrayLike,
    *,
    rng: np.random.Generator,
    max_shift_px: int | None = None,
) -> InvarianceError:
    """Measure how much features change under shifts, rotations and mirroring.

    Each image gets a random circular shift (each axis uniform in
    ``[-max_shift_px, max_shift_px]``), a random rotation about the box centre
    (``scipy.ndimage.rotate``, cubic spline, uniform angle) and a mirror
    (left-right flip), each applied separately.

    Parameters
    ----------
    featurize : callable
        Maps images ``(n, L, L)`` float32 to features ``(n, d)``.
    images : array_like, shape (n, L, L)
        At least two images; not modified.
    rng : numpy.random.Generator
    max_shift_px : int, optional
        Largest shift per axis; default ``L // 8``.

    Returns
    -------
    InvarianceError
    """
    from scipy.ndimage import rotate

    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ValueError(f"images must have shape (n >= 2, L, L); got {x.shape}")
    n, box = x.shape[0], x.shape[-1]
    limit = box // 8 if max_shift_px is None else int(max_shift_px)
    shifts = rng.integers(-limit, limit + 1, size=(n, 2))
    angles = np.asarray(rng.uniform(0.0, 360.0, size=n))
    shifted = np.stack([np.roll(x[k], tuple(shifts[k]), axis=(0, 1)) for k in range(n)])
    rotated = np.empty_like(x)
    for k in range(n):
        rotated[k] = rotate(x[k], float(angles[k]), reshape=False, order=3, mode="constant")
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    f0 = np.asarray(featurize(x), dtype=np.float64)
    scale = float(np.median(np.linalg.norm(f0, axis=1)))
    if not scale > 0:
        raise ValueError("the features of the images are all zero")

    def change(t: npt.NDArray[np.float32]) -> float:
        ft = np.asarray(featurize(t), dtype=np.float64)
        return float(np.median(np.linalg.norm(ft - f0, axis=1)) / scale)

    i = rng.integers(0, n, 20000) if n > 200 else np.triu_indices(n, k=1)[0]
    j = (i + rng.integers(1, n, i.size)) % n if n > 200 else np.triu_indices(n, k=1)[1]
    between = float(np.median(np.linalg.norm(f0[i] - f0[j], axis=1)) / scale)
    return InvarianceError(change(shifted), change(rotated), change(mirrored), between)
