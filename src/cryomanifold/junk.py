"""Junk scores: which classes hold no well-defined particle.

Three signs of junk are measured per class, each relative to the typical class
(the size-weighted median over all classes, which assumes most particles are
good):

* **empty** — ice, carbon edges, stripe artefacts: the low-passed particle images
  have no more contrast in the centre of the box than at its edge. Measured per
  particle (:func:`particle_contrast`, streamed with the features) as the variance
  of the low-passed image within the particle radius over that in the outer ring;
  about 1 for empty boxes, below 1 when the edge carries the structure.
* **dense** — contamination: centre contrast far above the typical class.
* **heavy** — aggregates: the integrated density of the low-passed particle
  (:func:`particle_mass`, proportional to the projected mass whatever the view) is
  far above the typical class's.
* **blurred** — inconsistent images: their aligned average has far less detail,
  i.e. power at intermediate over low spatial frequencies
  (:func:`average_detail`), than the typical class. The threshold is strict (6x)
  because views of smooth particles also have little detail.

The class score is the largest of the three, each mapped to [0, 1] with 0.5 at
the flagging threshold; particles get their classes' scores weighted by their
membership probabilities. Calibrated on simulated T20S + rubisco + ice, carbon,
contamination and aggregates (see ``benchmarks/quality.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.junk_signs import _lowpass, particle_mass
from cryomanifold.preprocess import radial_distance

__all__ = [
    "JunkAssessment",
    "assess_classes",
    "average_detail",
    "particle_contrast",
    "particle_junk_scores",
    "particle_mass",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Ratios to the typical class at which a class is flagged (score 0.5).
EMPTY_LOG_FRACTION = 0.5  # log(contrast) below half the typical log(contrast)
DENSE_RATIO = 4.0  # contrast 4x the typical class
# Detail 6x below the typical class. At 2.2x it caught simulated aggregates of the T20S
# proteasome, but it also flagged smooth views of good particles (and missed the
# aggregates of the built-in demo assemblies, whose averages lock onto one member):
# flagging good particles costs users more than keeping some aggregates.
BLUR_RATIO = 6.0
# Integrated density 2.5x the typical class: aggregates (2-4 particles) measured 3.1-3.3x,
# particle classes 0.9-1.2x of the same species (up to 1.4x for a heavier second species);
# real beta-gal classes spread 0.55-1.83x.
HEAVY_RATIO = 2.5


def particle_contrast(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    lowpass_angstrom: float = 25.0,
    workers: int = -1,
) -> F32:
    """Centre-over-edge contrast of each low-passed particle image.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Normalised particle images.
    pixel_size_angstrom : float
        Pixel size of ``images``.
    radius_px : float, optional
        Radius of the particle region, pixels; default 0.3 L. The edge ring is
        beyond 0.42 L.
    lowpass_angstrom : float
        Low-pass cut-off before measuring, Å (noise dominates above it).
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (n,), float32
        Variance within ``radius_px`` over variance in the edge ring (about 1 for an
        empty box).
    """
    imgs = np.asarray(images, dtype=np.float32)
    box = imgs.shape[-1]
    lp = _lowpass(imgs, pixel_size_angstrom, lowpass_angstrom, workers)
    r = radial_distance(box)
    inner = r < (0.3 * box if radius_px is None else min(radius_px, 0.42 * box))
    outer = r > 0.42 * box
    v_out = lp[:, outer].var(axis=1)
    return (lp[:, inner].var(axis=1) / np.maximum(v_out, 1e-12)).astype(np.float32)


def average_detail(
    averages: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    low_angstrom: tuple[float, float] = (200.0, 40.0),
    mid_angstrom: tuple[float, float] = (40.0, 12.0),
) -> F32:
    """Power at intermediate over low spatial frequencies of each class average.

    Parameters
    ----------
    averages : array_like, shape (K, L, L)
    pixel_size_angstrom : float
    low_angstrom, mid_angstrom : (float, float)
        The two resolution bands, Å (from, to). The mid band is clipped at Nyquist.

    Returns
    -------
    ndarray, shape (K,), float32
        Larger for averages with sharp detail; small for blurred blobs.
    """
    avg = np.asarray(averages, dtype=np.float64)
    box = avg.shape[-1]
    r = radial_distance(box)
    edge = r > 0.42 * box
    centred = (avg - np.median(avg[:, edge], axis=1)[:, None, None]) * (r < 0.45 * box)
    power = np.abs(sfft.rfft2(centred)) ** 2
    k = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) / pixel_size_angstrom
    low = (k > 1 / low_angstrom[0]) & (k <= 1 / low_angstrom[1])
    mid = (k > 1 / mid_angstrom[0]) & (k <= 1 / mid_angstrom[1])
    return (power[:, mid].sum(axis=1) / np.maximum(power[:, low].sum(axis=1), 1e-30)).astype(
        np.float32
    )


def _weighted_median(values: F64, weights: F64) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


class JunkAssessment(NamedTuple):
    """Per-class junk measures; arrays of shape (K,)."""

    scores: F32  # in [0, 1]; 0.5 is the flagging threshold
    flags: npt.NDArray[np.bool_]
    contrast: F32  # median particle contrast of the class
    detail: F32  # detail of the class average
    reason: list[str]  # "empty", "dense", "heavy", "blurred" or "" per class
    mass: F32  # median integrated density of the class (NaN when not measured)


def assess_classes(
    contrast: npt.ArrayLike,
    labels: npt.ArrayLike,
    averages: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    mass: npt.ArrayLike | None = None,
) -> JunkAssessment:
    """Score each class for junk (see the module docstring).

    Parameters
    ----------
    contrast : array_like, shape (n,)
        :func:`particle_contrast` of every particle.
    labels : array_like, shape (n,)
        0-based class of every particle; negative labels are ignored.
    averages : array_like, shape (K, L, L)
        Class averages.
    pixel_size_angstrom : float
        Pixel size of the averages.
    mass : array_like, shape (n,), optional
        :func:`particle_mass` of every particle; without it the "heavy" sign is off.

    Returns
    -------
    JunkAssessment
    """
    con = np.asarray(contrast, dtype=np.float64)
    lab = np.asarray(labels)
    k = np.asarray(averages).shape[0]
    sizes = np.bincount(lab[lab >= 0], minlength=k).astype(np.float64)
    med = np.array([np.median(con[lab == c]) if sizes[c] else 1.0 for c in range(k)])
    det = average_detail(averages, pixel_size_angstrom=pixel_size_angstrom).astype(np.float64)
    weights = np.maximum(sizes, 1e-9)
    c_ref = max(_weighted_median(med, weights), 1.0 + 1e-3)
    d_ref = max(_weighted_median(det, weights), 1e-12)
    log_c = np.log(np.maximum(med, 1e-6))
    # each sign mapped to [0, 1] with 0.5 at its threshold
    s_empty = np.clip(1.0 - log_c / np.log(c_ref), 0.0, 1.0) * (0.5 / (1 - EMPTY_LOG_FRACTION))
    s_dense = np.clip(0.5 * np.log(med / c_ref) / np.log(DENSE_RATIO), 0.0, 1.0)
    s_blur = np.clip(0.5 * np.log(d_ref / np.maximum(det, 1e-12)) / np.log(BLUR_RATIO), 0.0, 1.0)
    m_med = np.full(k, np.nan)
    s_heavy = np.zeros(k)
    if mass is not None:
        ms = np.asarray(mass, dtype=np.float64)
        m_med = np.array([np.median(ms[lab == c]) if sizes[c] else np.nan for c in range(k)])
        # the typical mass among the classes that hold particles (not empty boxes)
        full = (s_empty < 0.5) & np.isfinite(m_med)
        m_ref = _weighted_median(m_med[full], weights[full]) if full.any() else 0.0
        if m_ref > 0:
            ratio = np.maximum(np.nan_to_num(m_med / m_ref, nan=0.0), 1e-6)
            s_heavy = np.clip(0.5 * np.log(ratio) / np.log(HEAVY_RATIO), 0.0, 1.0)
    signs = np.stack([np.clip(s_empty, 0, 1), s_dense, s_heavy, s_blur])
    scores = signs.max(axis=0)
    flags = scores > 0.5
    names = np.array(["empty", "dense", "heavy", "blurred"])
    reason = [str(names[np.argmax(signs[:, c])]) if flags[c] else "" for c in range(k)]
    return JunkAssessment(
        scores.astype(np.float32),
        flags,
        med.astype(np.float32),
        det.astype(np.float32),
        reason,
        m_med.astype(np.float32),
    )


def particle_junk_scores(probabilities: npt.ArrayLike, class_scores: npt.ArrayLike) -> F32:
    """Per-particle junk score: class scores weighted by membership probabilities.

    Parameters
    ----------
    probabilities : array_like, shape (n, K)
        Class membership probabilities (rows sum to 1).
    class_scores : array_like, shape (K,)

    Returns
    -------
    ndarray, shape (n,), float32, in [0, 1]
    """
    p = np.asarray(probabilities, dtype=np.float64)
    s = np.asarray(class_scores, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != s.shape[0]:
        raise ValueError(f"probabilities {p.shape} do not match {s.shape[0]} class scores")
    return np.clip(p @ s, 0.0, 1.0).astype(np.float32)
