"""Rotational and translational alignment of particle images to a reference.

:func:`align_to_reference` finds, for each image of a batch, the in-plane rotation
and shift that bring it onto a reference. Images and reference are mean-subtracted,
softly masked and band-limited. The rotation comes from the amplitude spectra,
which ignore translation: ``|FFT|`` resampled on a polar grid and cross-correlated
along the angle axis; each candidate angle ``θ`` is tried with its twin ``θ + 180``
(``|FFT|`` is centrosymmetric), and the translational cross-correlation of the
rotated image with the reference gives the shift and picks the winner. Everything is
batched over images (chunks of 256) with scipy.fft.

Conventions
-----------
Angles, shifts and the order "rotate about ``(L // 2, L // 2)``, then shift" are
those of :mod:`cryomanifold.transforms`: ``Alignment.aligned`` is exactly
``shift_images(rotate_images(images, angles_deg), shifts_px)``. Positive angles turn
the content counter-clockwise as displayed (first row at the top); a shift
``(dy, dx)`` moves the content ``dy`` rows down and ``dx`` columns right.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.preprocess import as_image_batch, soft_circular_mask
from cryomanifold.transforms import rotate_images, shift_images

__all__ = ["Alignment", "align_to_reference", "lowpass_weights"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_CHUNK = 256  # images per batch inside the aligner; bounds memory to ~100 MB at L = 128


class Alignment(NamedTuple):
    """Result of aligning a batch of images to a reference.

    Attributes
    ----------
    angles_deg : ndarray, shape (n,), float32
        Rotation (degrees, counter-clockwise as displayed) applied to each image.
    shifts_px : ndarray, shape (n, 2), float32
        Shift ``(dy, dx)`` in pixels applied after the rotation.
    scores : ndarray, shape (n,), float32
        Normalised cross-correlation in [-1, 1] between the masked, band-limited
        aligned image and the reference.
    aligned : ndarray, shape (n, L, L), float32
        The unmasked input images rotated and shifted onto the reference.
    """

    angles_deg: F32
    shifts_px: F32
    scores: F32
    aligned: F32


_PAD = 2  # amplitude spectra on a 2x zero-padded grid: smooth enough to interpolate


def _radius_rfft(box: int) -> F64:
    """Radius in Fourier pixels of each rfft2 sample, shape (L, L // 2 + 1)."""
    return np.hypot((sfft.fftfreq(box) * box)[:, None], np.arange(box // 2 + 1)[None, :])


def lowpass_weights(box_size: int, lowpass_fraction: float, *, width_px: float = 2.0) -> F64:
    """Raised-cosine low-pass weights on the rfft2 grid, with the DC term set to 0.

    Parameters
    ----------
    box_size : int
        Box size ``L`` in pixels.
    lowpass_fraction : float
        Cut-off radius as a fraction of Nyquist, in (0, 1]: weights are 1 up to
        ``lowpass_fraction * L / 2`` Fourier pixels and fall to 0 over ``width_px``.
    width_px : float
        Width of the cosine edge in Fourier pixels.

    Returns
    -------
    ndarray, shape (L, L // 2 + 1), float64
        Weights in [0, 1] on the ``scipy.fft.rfft2`` grid.

    Raises
    ------
    ValueError
        If ``lowpass_fraction`` is outside (0, 1].
    """
    if not 0 < lowpass_fraction <= 1:
        raise ValueError(f"lowpass_fraction must be in (0, 1]; got {lowpass_fraction}")
    t = np.clip((_radius_rfft(box_size) - lowpass_fraction * box_size / 2) / width_px, 0.0, 1.0)
    w = 0.5 * (1.0 + np.cos(np.pi * t))
    w[0, 0] = 0.0
    return w


def _default_mask(box: int, mask_radius: float | None) -> F32:
    radius = 0.35 * box if mask_radius is None else float(mask_radius)
    if radius <= 0:
        raise ValueError(f"mask_radius must be positive; got {mask_radius}")
    return soft_circular_mask(box, radius, max(0.1 * box, 2.0))


def _masked(images: F32, mask: F32) -> F32:
    """Subtract the mask-weighted mean of each image and apply the soft mask."""
    mean = (images * mask).sum(axis=(-2, -1)) / mask.sum()
    return ((images - mean[:, None, None]) * mask).astype(np.float32, copy=False)


def _rfft_norm2(spec: npt.NDArray[np.complexfloating], box: int) -> F64:
    """Real-space sum of squares of the images whose rfft2 is ``spec`` (Parseval)."""
    power = np.abs(spec).astype(np.float64) ** 2
    total = 2.0 * power.sum(axis=(-2, -1)) - power[..., 0].sum(axis=-1)
    if box % 2 == 0:
        total -= power[..., -1].sum(axis=-1)
    return np.asarray(total / box**2)


class _Polar(NamedTuple):
    gather: npt.NDArray[np.intp]  # (4, P) flat indices into the padded rfft2 array
    weight: F64  # (4, P) bilinear weights
    radii: F64  # (n_r,) ring radii in (unpadded) Fourier pixels
    n_phi: int  # angles [-90, 90) counter-clockwise from +kx as displayed


def _polar_grid(box: int, radii: F64, n_phi: int) -> _Polar:
    size, lf = _PAD * box, _PAD * box // 2 + 1
    phi = np.deg2rad(-90.0 + 180.0 * np.arange(n_phi) / n_phi)
    x = _PAD * radii[:, None] * np.cos(phi)[None, :]  # column frequency, >= 0
    y = -_PAD * radii[:, None] * np.sin(phi)[None, :]  # row frequency (display up = -row)
    x0, y0 = np.floor(x), np.floor(y)
    rows, cols = [y0 % size, (y0 + 1) % size], [x0, np.minimum(x0 + 1, lf - 1)]
    wy, wx = [1 - (y - y0), y - y0], [1 - (x - x0), x - x0]
    pairs = [(a, b) for a in (0, 1) for b in (0, 1)]
    index = np.stack([(rows[a] * lf + cols[b]).ravel() for a, b in pairs]).astype(np.intp)
    weight = np.stack([(wy[a] * wx[b]).ravel() for a, b in pairs])
    return _Polar(index, weight, radii, n_phi)


def _polar_amplitude(masked: F32, polar: _Polar, workers: int) -> F64:
    """Ring-centred ``|FFT|`` of masked images on the polar grid, shape (n, n_r, n_phi)."""
    size = _PAD * masked.shape[-1]
    amp = np.abs(sfft.rfft2(masked, s=(size, size), workers=workers)).reshape(len(masked), -1)
    out = np.einsum("nkp,kp->np", amp[:, polar.gather], polar.weight)
    out = out.reshape(len(masked), polar.radii.size, polar.n_phi)
    return np.asarray(out - out.mean(axis=-1, keepdims=True))


class _Reference(NamedTuple):
    mask: F32
    band: F64  # (L, L // 2 + 1) weights applied to image and reference spectra
    spec: npt.NDArray[np.complex64]  # band-limited spectrum of the masked reference
    norm2: float
    polar: _Polar
    polar_spec: npt.NDArray[np.complex128]  # (n_r, n_phi // 2 + 1) weighted, along angle
    allowed: npt.NDArray[np.bool_]  # (L, L) shifts within max_shift_px (wrapped indices)
    flip_phase: npt.NDArray[np.complex64]  # spectrum of rot180(x) is conj(flip_phase * X)


def _prepare(
    reference: F32, mask: F32, band: F64, n_angles: int, max_shift_px: float, workers: int
) -> _Reference:
    box = reference.shape[-1]
    masked = _masked(reference[None], mask)
    spec = (sfft.rfft2(masked, workers=workers)[0] * band).astype(np.complex64)
    ring = np.rint(_radius_rfft(box)).astype(np.intp).ravel()
    profile = np.bincount(ring, band.ravel()) / np.maximum(np.bincount(ring), 1)
    r_max = min(int(np.flatnonzero(profile > 1e-3).max(initial=3)), box // 2 - 1)
    radii = np.arange(2, max(r_max, 3) + 1, dtype=np.float64)
    polar = _polar_grid(box, radii, max(n_angles // 2, 8))
    ring_weight = radii * profile[radii.astype(np.intp)] ** 2
    polar_spec = sfft.rfft(_polar_amplitude(masked, polar, workers)[0] * ring_weight[:, None])
    lag = sfft.fftfreq(box) * box
    allowed = np.hypot(lag[:, None], lag[None, :]) <= max_shift_px + 1e-9
    k = (lag[:, None] + np.arange(box // 2 + 1)[None, :]) * 2 * (box // 2) / box
    flip_phase = np.exp(2j * np.pi * k).astype(np.complex64)
    return _Reference(
        mask, band, spec, float(_rfft_norm2(spec, box)), polar, polar_spec, allowed, flip_phase
    )


def _parabola(cm: F64, c0: F64, cp: F64) -> F64:
    """Offset in [-0.5, 0.5] of the vertex of the parabola through three samples."""
    denom = cm - 2.0 * c0 + cp
    safe = np.where(denom < 0, denom, -1.0)
    return np.where(denom < 0, np.clip(0.5 * (cm - cp) / safe, -0.5, 0.5), 0.0)


def _angle_candidates(masked: F32, ref: _Reference, n_candidates: int, workers: int) -> F64:
    """The ``n_candidates`` best rotations (degrees, mod 180) from amplitude spectra, (n, k)."""
    n, n_phi = len(masked), ref.polar.n_phi
    polar = sfft.rfft(_polar_amplitude(masked, ref.polar, workers))
    corr = sfft.irfft((ref.polar_spec[None] * np.conj(polar)).sum(axis=1), n=n_phi)
    step = 180.0 / n_phi
    exclude = max(1, round(15.0 / step))  # later candidates lie >= 15 degrees away
    rows = np.arange(n)
    taken = np.zeros(corr.shape, dtype=bool)
    out = np.empty((n, n_candidates))
    for k in range(n_candidates):
        m = np.argmax(np.where(taken, -np.inf, corr), axis=-1)
        c0, cm, cp = (corr[rows, (m + d) % n_phi] for d in (0, -1, 1))
        out[:, k] = (m + _parabola(cm, c0, cp)) * step
        for d in range(-exclude, exclude + 1):
            taken[rows, (m + d) % n_phi] = True
    return out


def _peak(cc: F32, allowed: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
    """Highest value within ``allowed`` and its sub-pixel (dy, dx), for maps (n, L, L)."""
    n, box = cc.shape[0], cc.shape[-1]
    iy, ix = np.divmod(np.argmax(np.where(allowed, cc, -np.inf).reshape(n, -1), axis=1), box)
    rows = np.arange(n)
    c0 = cc[rows, iy, ix].astype(np.float64)
    offsets = []
    for dy, dx, idx in ((1, 0, iy), (0, 1, ix)):
        cm = cc[rows, (iy - dy) % box, (ix - dx) % box].astype(np.float64)
        cp = cc[rows, (iy + dy) % box, (ix + dx) % box].astype(np.float64)
        pos = idx + _parabola(cm, c0, cp)
        offsets.append(np.where(pos > box / 2, pos - box, pos))
    return c0, np.stack(offsets, axis=1)


def _align_chunk(
    images: F32, ref: _Reference, n_candidates: int, workers: int
) -> tuple[F64, F64, F64, F32]:
    n, box = images.shape[0], images.shape[-1]
    candidates = _angle_candidates(_masked(images, ref.mask), ref, n_candidates, workers)
    best, angles, shifts = np.full(n, -np.inf), np.zeros(n), np.zeros((n, 2))
    flipped = np.zeros(n, dtype=bool)
    rotated = images.copy()
    for j in range(n_candidates):
        rot = rotate_images(images, candidates[:, j], workers=workers)
        spec = sfft.rfft2(_masked(rot, ref.mask), workers=workers) * ref.band
        denom = np.sqrt(np.maximum(_rfft_norm2(spec, box) * ref.norm2, 1e-30))
        for flip in (False, True):  # |FFT| cannot tell theta from theta + 180
            prod = ref.spec * (spec * ref.flip_phase if flip else np.conj(spec))
            value, shift = _peak(sfft.irfft2(prod, s=(box, box), workers=workers), ref.allowed)
            better = value / denom > best
            best[better] = value[better] / denom[better]
            angles[better] = candidates[better, j] + (180.0 if flip else 0.0)
            shifts[better] = shift[better]
            flipped[better] = flip
            if not flip:
                rotated[better] = rot[better]
    angles %= 360.0
    # rotate the flipped ones afresh so that ``aligned`` is exactly rotate-then-shift
    rotated[flipped] = rotate_images(images[flipped], angles[flipped], workers=workers)
    return angles, shifts, best, shift_images(rotated, shifts, workers=workers)


def align_to_reference(
    images: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    n_angles: int = 360,
    max_shift_px: float | None = None,
    mask_radius: float | None = None,
    lowpass_fraction: float = 0.5,
    band_weights: npt.ArrayLike | None = None,
    n_candidates: int = 2,
    workers: int = -1,
) -> Alignment:
    """Find the rotation and shift that bring each image onto a reference.

    Images and reference are mean-subtracted, softly masked and band-limited. The
    rotation comes from the amplitude spectra, which ignore translation: each
    image's ``|FFT|`` (2x oversampled) is resampled on a polar grid over the pass
    band and cross-correlated with the reference's along the angle axis (batched
    FFTs; parabolic peak fit). ``|FFT|`` is centrosymmetric, so each of the
    ``n_candidates`` best angles is tried as ``θ`` and ``θ + 180``: the
    translational cross-correlation of the rotated image with the reference (one
    FFT pair per candidate, both twins from the same transform) gives the shift,
    refined by a parabolic fit, and the higher peak wins.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    reference : array_like, shape (L, L)
    n_angles : int
        Angular samples per turn for the amplitude correlation (at least 16).
    max_shift_px : float, optional
        Largest shift searched (radius, pixels); default ``L / 4``.
    mask_radius : float, optional
        Radius in pixels of the soft circular mask, which falls to zero over a
        further ``0.1 L``; default ``0.35 L``.
    lowpass_fraction : float
        Band limit of the correlations as a fraction of Nyquist, in (0, 1]; used
        when ``band_weights`` is not given.
    band_weights : array_like, shape (L, L // 2 + 1), optional
        Weights on the rfft2 grid that replace the low-pass (for example from a
        Fourier ring correlation); the DC term is always ignored.
    n_candidates : int
        Amplitude-correlation peaks tried, each with its 180-degree twin.
    workers : int
        Threads for scipy.fft (-1: all cores).

    Returns
    -------
    Alignment
        ``aligned[i] == shift_images(rotate_images(images[i], angles_deg[i]), shifts_px[i])``.

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite pixels or invalid options.
    """
    imgs = as_image_batch(images)
    ref = np.asarray(reference, dtype=np.float32)
    n, box = imgs.shape[0], imgs.shape[-1]
    if ref.shape != (box, box):
        raise ValueError(f"reference must have shape {(box, box)}; got {ref.shape}")
    bad = np.flatnonzero(~np.isfinite(imgs).all(axis=(1, 2)))
    if bad.size or not np.isfinite(ref).all():
        where = f"image {int(bad[0])}" if bad.size else "the reference"
        raise ValueError(f"{where} contains NaN or infinity; drop or repair it before aligning")
    if n_angles < 16 or n_candidates < 1:
        raise ValueError(
            f"need n_angles >= 16 and n_candidates >= 1; got {n_angles}, {n_candidates}"
        )
    if band_weights is None:
        band = lowpass_weights(box, lowpass_fraction)
    else:
        band = np.array(band_weights, dtype=np.float64)
        if band.shape != (box, box // 2 + 1):
            raise ValueError(f"band_weights must have shape {(box, box // 2 + 1)}")
        band[0, 0] = 0.0
    limit = box / 4 if max_shift_px is None else float(max_shift_px)
    prepared = _prepare(ref, _default_mask(box, mask_radius), band, n_angles, limit, workers)
    angles, scores = np.empty(n, np.float32), np.empty(n, np.float32)
    shifts, aligned = np.empty((n, 2), np.float32), np.empty_like(imgs)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        angles[sl], shifts[sl], scores[sl], aligned[sl] = _align_chunk(
            imgs[sl], prepared, n_candidates, workers
        )
    return Alignment(angles, shifts, scores, aligned)
