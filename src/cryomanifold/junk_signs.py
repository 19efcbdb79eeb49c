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

The pixel statistics (stripes, kurtosis, peak) live in :mod:`cryomanifold.pixel_signs`
and are re-exported here; this module holds the spectral measures.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams
from cryomanifold.pixel_signs import (
    STRIPE_ROW_RATIO,
    edge_stripe_widths,
    excess_kurtosis,
    has_spread,
    kurtosis_rows,
    pair_differences,
    peak_sigma,
    peak_sigma_rows,
    raw_stripe_widths,
    stripe_widths,
)
from cryomanifold.preprocess import as_image_batch, radial_distance
from cryomanifold.signal import (
    OUTER_FRACTION as OUTER_FRACTION,
)
from cryomanifold.signal import (
    block_size,
    filter_table,
    signal_radii,
    signal_zscore,
    zscore_block,
)
from cryomanifold.spectrum import half_irfft2

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


#: Low-pass cut-off of the contrast (:func:`particle_contrast`), Å.
CONTRAST_LOWPASS_ANGSTROM = 25.0


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
def _functional(
    box: int, kind: str, cutoff: float, radius_px: float | None = None
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.complex128]]:
    """The spectrum-side form of ``sum_x w(x) lowpass(f)(x)`` for a weight image ``w``
    (:func:`_weight_image`).

    By Parseval, ``sum_x w(x) g(x) = N**-2 sum_k W*(k) G(k)`` over the full grid; on the
    rfft half grid the columns other than 0 and N/2 stand for two conjugate samples.
    Returns the flat rfft2 indices below ``cutoff`` (cycles per pixel: the low-pass
    applied to ``f``) and ``v`` there, complex128, with ``Re(spectrum.flat[idx] @ v)``
    the sum.
    """
    w = _weight_image(box, kind, radius_px)
    mult = np.full(box // 2 + 1, 2.0)
    mult[0] = 1.0
    if box % 2 == 0:
        mult[-1] = 1.0
    keep = (_frequency(box) < cutoff).ravel()
    v = (np.conj(sfft.rfft2(w)) * mult[None, :] / box**2).ravel()
    idx = np.flatnonzero(keep & (v != 0))
    out = idx, np.ascontiguousarray(v[idx])
    for arr in out:
        arr.setflags(write=False)
    return out


def _apply(spec: C64, functional: tuple[npt.NDArray[np.intp], npt.NDArray[np.complex128]]) -> F64:
    """``Re(spectrum @ functional)`` per image, (n,): float64 sums over the few samples
    the low-pass keeps."""
    idx, v = functional
    vals = spec.reshape(spec.shape[0], -1)[:, idx]
    return np.asarray((vals.real.astype(np.float64) @ v.real) - (vals.imag @ v.imag))


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

    One float32 ``rfft2`` of each image serves every Fourier-space measure (the
    density gradient and the mass are linear functionals of it; the signal test and
    the contrast need one inverse transform each). The batch is worked through in
    blocks of :data:`cryomanifold.signal.BLOCK_PIXELS` pixels, whose arrays stay in the
    CPU cache; the CTFs are evaluated once per batch.

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
    raw_imgs = None if raw is None else as_image_batch(raw)
    if raw_imgs is not None and raw_imgs.shape[0] != n:
        raise ValueError(f"raw has {raw_imgs.shape[0]} images, images {n}")
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{len(ctf)} CTF entries for {n} images")
    apix = pixel_size_angstrom
    table, inverse = filter_table(ctf, box, apix)
    radii = signal_radii(box, radius_px, None)
    keys = ("edge_stripe_px", "signal_z", "kurtosis", "gradient", "mass", "peak_sigma")
    out = {key: np.empty(n, dtype=np.float32) for key in (*keys, "finite")}
    if raw_imgs is not None:
        step = block_size(raw_imgs.shape[-1])
        for start in range(0, n, step):
            block = slice(start, start + step)
            out["edge_stripe_px"][block] = raw_stripe_widths(raw_imgs[block])
        out["edge_stripe_px"] *= np.float32(box / raw_imgs.shape[-1])
    lowpassed = np.empty((n, box * box), dtype=np.float32)  # the contrast's: see _contrast
    step = block_size(box)
    for start in range(0, n, step):
        block = slice(start, start + step)
        clean = imgs[block]
        flat = clean.reshape(clean.shape[0], -1)
        high, low = flat.max(axis=1), flat.min(axis=1)
        finite = np.isfinite(high) & np.isfinite(low)  # max and min see every NaN and inf
        if not finite.all():
            clean = np.where(
                finite[:, None, None], clean, np.nan_to_num(clean, posinf=0.0, neginf=0.0)
            )
            flat = clean.reshape(clean.shape[0], -1)
            high, low = flat.max(axis=1), flat.min(axis=1)
        out["finite"][block] = finite & has_spread(clean, high, low)
        if raw_imgs is None:
            out["edge_stripe_px"][block] = stripe_widths(pair_differences(clean)).max(axis=1)
        out["kurtosis"][block] = kurtosis_rows(flat)
        out["peak_sigma"][block] = peak_sigma_rows(flat, high, low)
        spec = _spectrum(clean, workers)
        filt = table[0] if inverse is None else table[inverse[block]]
        out["signal_z"][block] = zscore_block(spec, filt, box, *radii, workers)
        out["gradient"][block] = _gradient(spec, box, apix)
        out["mass"][block] = _mass(spec, box, apix, radius_px)
        lowpassed[block] = _contrast_lowpassed(spec, box, apix, workers)
    out["contrast"] = _contrast(lowpassed, box, radius_px)
    return out


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
    box = imgs.shape[-1]
    low = _contrast_lowpassed(_spectrum(imgs, workers), box, pixel_size_angstrom, workers)
    return _contrast(low, box, radius_px)


@functools.lru_cache(maxsize=32)
def _contrast_regions(box: int, radius_px: float | None) -> tuple[F32, F64]:
    """The disk and the ring of the contrast as flat masks (L * L, 2), and their areas."""
    r = radial_distance(box).ravel()
    inner = r < (0.3 * box if radius_px is None else min(radius_px, 0.42 * box))
    masks = np.stack([inner, r > 0.42 * box], axis=1).astype(np.float32)
    out = masks, masks.sum(axis=0).astype(np.float64)
    for arr in out:
        arr.setflags(write=False)
    return out


@functools.lru_cache(maxsize=32)
def _contrast_lowpass(box: int, pixel_size_angstrom: float) -> tuple[F32, int]:
    """The contrast's low-pass on the first ``c`` columns of the half grid (L, c), float32,
    and ``c``: the columns beyond are zero."""
    keep = _frequency(box) / pixel_size_angstrom < 1.0 / CONTRAST_LOWPASS_ANGSTROM
    cols = int(np.flatnonzero(keep.any(axis=0)).max(initial=0)) + 1
    out = np.ascontiguousarray(keep[:, :cols], dtype=np.float32)
    out.setflags(write=False)
    return out, cols


def _contrast_lowpassed(spec: C64, box: int, pixel_size_angstrom: float, workers: int = -1) -> F32:
    """The 25 Å low-passed images of :func:`particle_contrast`, flat (n, L * L)."""
    keep, cols = _contrast_lowpass(box, float(pixel_size_angstrom))
    low = half_irfft2(spec[..., :cols] * keep, box, overwrite_x=True, workers=workers)
    return low.reshape(spec.shape[0], -1)


def _contrast(low: F32, box: int, radius_px: float | None) -> F32:
    """:func:`particle_contrast` from the low-passed images (n, L * L), overwritten.

    One matrix product over the whole batch: BLAS sums in an order that depends on
    the number of rows, and this keeps the values those of one product per batch.
    """
    masks, area = _contrast_regions(box, None if radius_px is None else float(radius_px))
    first = (low @ masks).astype(np.float64) / area
    low *= low
    second = (low @ masks).astype(np.float64) / area
    var = np.maximum(second - first**2, 0.0)
    return (var[:, 0] / np.maximum(var[:, 1], 1e-12)).astype(np.float32)
