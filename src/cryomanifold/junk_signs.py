"""Per-particle signs of junk, measured from the image alone.

Each function takes a batch of particle images ``(n, L, L)`` and returns one number
per image; none depends on the other images of the batch, on a random seed or on a
classification, so the measures can be streamed with the features and are the same
whatever the batch size. :func:`particle_measures` gathers them in a dict for the
dataset-level rule :func:`cryomanifold.junk_call.call_particles`.

What each measure is for, and what it rests on:

``edge_stripe_px``
    Boxes that stick out of the micrograph: the extraction pads the missing part
    by repeating the micrograph's last row or column, which shows as stripes that
    are constant along one axis at one or more box edges. The width (pixels of the
    prepared image) of the widest run of near-identical rows or columns at any edge
    (:func:`edge_stripe_widths`). Best measured on the raw, un-cropped images, where
    the repeated rows are exact copies.
``signal_z``
    Is there a particle? The energy of the CTF-filtered image in the central disk
    against that in the outer ring, as a z-score under the null hypothesis of
    stationary noise with the image's own power spectrum
    (:func:`signal_zscore`): about N(0, 1) for ice and shot noise alone.
``kurtosis``
    Small, very dense objects (ice shards, contamination): a few pixels far out of
    the Gaussian noise make the pixel distribution heavy-tailed
    (:func:`excess_kurtosis`); a protein at the usual per-particle SNR does not.
``gradient``
    Carbon edges and thick-ice gradients: the density step across the box of the
    heavily low-passed image (:func:`density_gradient`).
``mass``
    Integrated low-passed density above the surroundings, proportional to the
    projected mass whatever the view (:func:`particle_mass`): aggregates and large
    dense objects carry several times the mass of one particle.
``peak_sigma``, ``finite``
    Values out of range: the largest deviation from the median in units of the
    image's robust noise level, and whether every pixel is finite with a non-zero
    spread.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams
from cryomanifold.preprocess import as_image_batch, radial_distance
from cryomanifold.signal import (
    OUTER_FRACTION as OUTER_FRACTION,
)
from cryomanifold.signal import signal_zscore, signal_zscore_from_spectrum

__all__ = [
    "STRIPE_ROW_RATIO",
    "density_gradient",
    "edge_stripe_widths",
    "excess_kurtosis",
    "particle_contrast",
    "particle_mass",
    "particle_measures",
    "peak_sigma",
    "signal_zscore",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]

#: A row pair counts as "repeated" when its mean squared difference is below this
#: fraction of the image's median over all adjacent row pairs. Repeated rows give
#: 0 (raw) to about 0.16 (after Fourier rescaling, measured on RELION's 256 -> 64 px
#: rescaled boxes); two rows of independent noise give 1 +- sqrt(2 / L), so a pair of
#: 32 or more noise pixels falls below 0.3 with probability < 1e-6.
STRIPE_ROW_RATIO = 0.3


def _spectrum(images: F32, workers: int = -1) -> C64:
    """``rfft2`` of a float32 batch (n, L, L // 2 + 1), complex64: shared by the measures."""
    return np.asarray(sfft.rfft2(images, workers=workers), dtype=np.complex64)


def _frequency(box: int) -> F64:
    """Spatial frequency (cycles per pixel) of each rfft2 sample, (L, L // 2 + 1)."""
    return np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :])


def _weight_image(box: int, kind: str, radius_px: float | None) -> F64:
    """The real-space weights of the linear measures: ``"ramp_y"``, ``"ramp_x"`` (the
    least-squares slope across the box) and ``"mass"`` (disk minus its area times the
    outer ring's mean)."""
    if kind in ("ramp_y", "ramp_x"):
        c = np.arange(box, dtype=np.float64) - box // 2
        ramp = np.broadcast_to(c[:, None], (box, box)) / float((c**2).sum() * box)
        return np.asarray(ramp if kind == "ramp_y" else ramp.T)
    r = radial_distance(box)
    edge = r > OUTER_FRACTION * box
    limit = OUTER_FRACTION * box if radius_px is None else min(radius_px, OUTER_FRACTION * box)
    disk = r <= limit
    return np.asarray(disk.astype(np.float64) - edge * (disk.sum() / edge.sum()))


@functools.lru_cache(maxsize=64)
def _functional(box: int, kind: str, cutoff: float, radius_px: float | None = None) -> npt.NDArray:
    """The spectrum-side form of ``sum_x w(x) lowpass(f)(x)`` for a weight image ``w``
    (:func:`_weight_image`).

    By Parseval, ``sum_x w(x) g(x) = N**-2 sum_k W*(k) G(k)`` over the full grid; on the
    rfft half grid the columns other than 0 and N/2 stand for two conjugate samples.
    Returns ``v`` (L * (L // 2 + 1),) complex128 with ``Re(spectrum @ v)`` the sum;
    ``cutoff`` (cycles per pixel) is the low-pass applied to ``f``.
    """
    w = _weight_image(box, kind, radius_px)
    mult = np.full(box // 2 + 1, 2.0)
    mult[0] = 1.0
    if box % 2 == 0:
        mult[-1] = 1.0
    keep = _frequency(box) < cutoff
    v = np.conj(sfft.rfft2(w)) * keep * mult[None, :] / box**2
    out = np.ascontiguousarray(v.ravel())
    out.setflags(write=False)
    return out


def _apply(spec: C64, functional: npt.NDArray) -> F64:
    """``Re(spectrum @ functional)`` per image, (n,)."""
    flat = spec.reshape(spec.shape[0], -1)
    return np.asarray(
        (flat.real.astype(np.float64) @ functional.real) - (flat.imag @ functional.imag)
    )


def _lowpass(
    images: F32, pixel_size_angstrom: float, cutoff_angstrom: float, workers: int = -1
) -> F64:
    """Images with every Fourier component beyond ``1 / cutoff_angstrom`` removed."""
    box = images.shape[-1]
    k = _frequency(box) / pixel_size_angstrom
    spec = sfft.rfft2(images.astype(np.float64), workers=workers) * (k < 1.0 / cutoff_angstrom)
    return np.asarray(sfft.irfft2(spec, s=(box, box), workers=workers))


def edge_stripe_widths(images: npt.ArrayLike, *, row_ratio: float = STRIPE_ROW_RATIO) -> F32:
    """Width of the padding stripes at each box edge.

    For each edge, the adjacent row pairs (columns for the left and right edges) are
    scanned inwards; a pair is "repeated" when its mean squared difference is below
    ``row_ratio`` times the image's median over all its adjacent pairs (so the test
    does not depend on the image's scale or noise spectrum). The outermost pair is
    not required to be repeated: a Fourier rescale makes the outermost row ring with
    the opposite edge. The width is the number of rows in the run of repeated pairs
    that starts at the second pair, plus the edge row; 0 when that pair is not
    repeated. Accurate to about one pixel (measured against the box overhang
    computed from the pick coordinates on RELION-extracted real particles).

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    row_ratio : float
        See :data:`STRIPE_ROW_RATIO`.

    Returns
    -------
    ndarray, shape (n, 4), float32
        Widths in pixels at the top (first row), bottom, left and right edges.
    """
    imgs = as_image_batch(images)
    out = np.zeros((imgs.shape[0], 4), dtype=np.float32)
    for axis, (first, last) in enumerate(((0, 1), (2, 3))):
        arr = imgs if axis == 0 else imgs.transpose(0, 2, 1)
        step = arr[:, :-1] - arr[:, 1:]
        diff = np.einsum("nij,nij->ni", step, step, dtype=np.float64) / arr.shape[2]  # (n, L-1)
        ref = np.median(diff, axis=1, keepdims=True)
        repeated = diff < row_ratio * np.maximum(ref, 1e-30)
        # the first and the last edge of this axis scan the same pairs from either end
        for e, rep in ((first, repeated), (last, repeated[:, ::-1])):
            run = np.cumprod(rep[:, 1:], axis=1).sum(axis=1)
            out[:, e] = np.where(run > 0, run + 2, 0)
    return out


def excess_kurtosis(images: npt.ArrayLike) -> F32:
    """Excess kurtosis of the pixel values of each image (0 for Gaussian noise).

    Returns
    -------
    ndarray, shape (n,), float32
    """
    imgs = as_image_batch(images)
    flat = imgs.reshape(imgs.shape[0], -1)
    c2 = flat - flat.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    c2 *= c2
    m2 = np.mean(c2, axis=1, dtype=np.float64)
    m4 = np.einsum("ni,ni->n", c2, c2, dtype=np.float64) / flat.shape[1]
    return (m4 / np.maximum(m2**2, 1e-30) - 3.0).astype(np.float32)


def density_gradient(
    images: npt.ArrayLike, *, pixel_size_angstrom: float, lowpass_angstrom: float | None = None
) -> F32:
    """Density step across the box of the heavily low-passed image.

    The slope of the least-squares plane through the low-passed image, times the
    box size: the difference in mean density between two opposite box edges. A
    carbon edge or an ice-thickness gradient gives a large step; a centred particle
    gives none.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    pixel_size_angstrom : float
    lowpass_angstrom : float, optional
        Low-pass cut-off, Å; default a third of the box (three Fourier rings).

    Returns
    -------
    ndarray, shape (n,), float32
        In the units of the images (noise standard deviations for normalised ones).
    """
    imgs = as_image_batch(images)
    return _gradient(_spectrum(imgs), imgs.shape[-1], pixel_size_angstrom, lowpass_angstrom)


def _gradient(
    spec: C64, box: int, pixel_size_angstrom: float, lowpass_angstrom: float | None = None
) -> F32:
    """:func:`density_gradient` from the batch's rfft2 spectrum (two linear functionals)."""
    cut = box * pixel_size_angstrom / 3.0 if lowpass_angstrom is None else lowpass_angstrom
    cycles = pixel_size_angstrom / cut
    gy = _apply(spec, _functional(box, "ramp_y", cycles))
    gx = _apply(spec, _functional(box, "ramp_x", cycles))
    return (np.hypot(gx, gy) * box).astype(np.float32)


def particle_mass(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    lowpass_angstrom: float = 40.0,
    workers: int = -1,
) -> F32:
    """Integrated density of each low-passed particle above its surroundings.

    The projection of a particle integrates to its mass whatever the viewing
    direction, so this is about the same for every view of one species (up to the
    CTF and noise) and scales with the number of particles in the box. In units of
    the background noise (images normalised as in RELION).

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Normalised, protein-white images.
    pixel_size_angstrom : float
    radius_px : float, optional
        Radius of the integration disk, pixels; default (and at most) 0.42 L; the
        ring beyond 0.42 L gives the background level.
    lowpass_angstrom : float
        Low-pass cut-off, Å; within the CTF's first lobe for usual defocus.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (n,), float32
    """
    imgs = as_image_batch(images)
    spec = _spectrum(imgs, workers)
    return _mass(spec, imgs.shape[-1], pixel_size_angstrom, radius_px, lowpass_angstrom)


def _mass(
    spec: C64,
    box: int,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    lowpass_angstrom: float = 40.0,
) -> F32:
    """:func:`particle_mass` from the batch's rfft2 spectrum: the low-passed density
    summed over the disk minus the disk's area times the ring's mean, one linear
    functional of the spectrum."""
    cycles = pixel_size_angstrom / lowpass_angstrom
    radius = None if radius_px is None else float(radius_px)
    return _apply(spec, _functional(box, "mass", cycles, radius)).astype(np.float32)


def peak_sigma(images: npt.ArrayLike) -> F32:
    """Largest deviation from the median, in robust noise standard deviations.

    The noise level is 1.4826 times the median absolute deviation, which a few
    extreme pixels do not move. Median and deviation are taken over a fixed quarter of
    the pixels (every fourth, the same for every image: 1024 of a 64 px box, which pins
    both to about 3%, nothing next to the 50-sigma limit of the call); the peak is
    over every pixel. Gaussian noise in a 64 px box peaks near 4.

    Returns
    -------
    ndarray, shape (n,), float32
        ``inf`` for images with no spread.
    """
    imgs = as_image_batch(images)
    flat = imgs.reshape(imgs.shape[0], -1)
    sample = flat[:, ::4] if flat.shape[1] >= 256 else flat
    med = np.median(sample, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(sample - med), axis=1)
    peak = np.maximum(flat.max(axis=1) - med[:, 0], med[:, 0] - flat.min(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(mad > 0, peak / np.where(mad > 0, mad, 1.0), np.inf)
    return out.astype(np.float32)


def particle_measures(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    ctf: CTFParams | None = None,
    raw: npt.ArrayLike | None = None,
    workers: int = -1,
) -> dict[str, F32]:
    """All per-particle junk measures of a batch (see the module docstring).

    One float32 ``rfft2`` of the batch serves every Fourier-space measure (the
    density gradient and the mass are linear functionals of it; the signal test and
    the contrast need one inverse transform each).

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Prepared images: Fourier-cropped to the run box, normalised, not
        phase-flipped. Non-finite pixels are allowed (``finite`` is then 0 and the
        other measures are computed with them set to 0).
    pixel_size_angstrom : float
        Pixel size of ``images``.
    radius_px : float, optional
        Particle radius in pixels of ``images`` (from the particle diameter, when the
        user gives it); default 0.3 L.
    ctf : CTFParams, optional
        CTF of the ``n`` particles; used for ``signal_z`` (recommended).
    raw : array_like, shape (n, R, R), optional
        The same particles before cropping. Edge stripes are measured on them when
        given (repeated rows are exact copies there) and converted to pixels of
        ``images``.

    Returns
    -------
    dict of str to ndarray, shape (n,), float32
        ``edge_stripe_px``, ``signal_z``, ``kurtosis``, ``gradient``, ``mass``,
        ``peak_sigma``, ``finite`` (1.0 or 0.0), and ``contrast`` (the centre-over-edge
        contrast of :func:`particle_contrast`, a feature of the map).
    workers : int
        Threads for scipy.fft.
    """
    imgs = as_image_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(imgs).all(axis=(1, 2)))
    clean = imgs
    if not finite.all():
        clean = np.where(finite[:, None, None], imgs, np.nan_to_num(imgs, posinf=0.0, neginf=0.0))
    spread = clean.std(axis=(1, 2))
    finite &= spread > 0
    if raw is None:
        stripes = edge_stripe_widths(clean).max(axis=1)
    else:
        raw_imgs = np.nan_to_num(as_image_batch(raw))
        if raw_imgs.shape[0] != n:
            raise ValueError(f"raw has {raw_imgs.shape[0]} images, images {n}")
        stripes = edge_stripe_widths(raw_imgs).max(axis=1) * np.float32(box / raw_imgs.shape[-1])
    apix = pixel_size_angstrom
    spec = _spectrum(clean.astype(np.float32, copy=False), workers)
    return {
        "edge_stripe_px": stripes.astype(np.float32),
        "signal_z": signal_zscore_from_spectrum(
            spec, box, pixel_size_angstrom=apix, ctf=ctf, radius_px=radius_px, outer_px=None
        ),
        "kurtosis": excess_kurtosis(clean),
        "gradient": _gradient(spec, box, apix),
        "mass": _mass(spec, box, apix, radius_px),
        "peak_sigma": peak_sigma(clean),
        "finite": finite.astype(np.float32),
        "contrast": _contrast(spec, box, apix, radius_px),
    }


def particle_contrast(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    workers: int = -1,
) -> F32:
    """Centre-over-edge contrast of each 25 Å low-passed particle image.

    The variance within the particle radius over the variance in the ring beyond
    0.42 L: about 1 for an empty box, below 1 when the edge carries the structure. Its
    log is a feature of the map (:class:`cryomanifold.stages.config.RunConfig`
    ``contrast_weight``); :func:`particle_measures` gives it as ``contrast``.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Normalised particle images.
    pixel_size_angstrom : float
    radius_px : float, optional
        Radius of the particle region, pixels; default (and at most 0.42 L) 0.3 L.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (n,), float32
    """
    imgs = as_image_batch(images)
    return _contrast(_spectrum(imgs, workers), imgs.shape[-1], pixel_size_angstrom, radius_px)


def _contrast(spec: C64, box: int, pixel_size_angstrom: float, radius_px: float | None) -> F32:
    """:func:`particle_contrast` from the batch's rfft2 spectrum."""
    keep = (_frequency(box) / pixel_size_angstrom < 1.0 / 25.0).astype(np.float32)
    low = sfft.irfft2(spec * keep, s=(box, box)).reshape(spec.shape[0], -1)
    r = radial_distance(box).ravel()
    inner = (r < (0.3 * box if radius_px is None else min(radius_px, 0.42 * box))).astype(
        np.float32
    )
    outer = (r > 0.42 * box).astype(np.float32)
    stacked = np.stack([inner, outer], axis=1)  # (L * L, 2)
    first = (low @ stacked).astype(np.float64) / stacked.sum(axis=0)
    second = ((low * low) @ stacked).astype(np.float64) / stacked.sum(axis=0)
    var = np.maximum(second - first**2, 0.0)
    return (var[:, 0] / np.maximum(var[:, 1], 1e-12)).astype(np.float32)
