"""Aligned class averages: rotational and translational alignment of particle images.

Members of one cryomanifold class share a view but not their in-plane angle or
shift, so each class average is built by reference-free alignment: every member is
rotated and shifted onto an evolving, centred reference and the aligned members are
averaged.

Conventions
-----------
* Images are ``(n, L, L)`` arrays, rows first; the box centre is ``(L // 2, L // 2)``.
* A positive angle rotates the image content counter-clockwise as displayed with the
  first row at the top (matplotlib's ``imshow`` default), the direction of
  ``np.rot90``: for odd ``L`` ``rotate_images(x, 90)`` equals ``np.rot90(x, axes=(1, 2))``
  (for even ``L`` it equals the same, rolled by one row, because ``np.rot90`` turns
  about ``(L - 1) / 2`` rather than ``L // 2``).
* A shift ``(dy, dx)`` moves the content by ``dy`` rows (down) and ``dx`` columns
  (right).
* Aligning an image means ``shift_images(rotate_images(image, angle), shift)``:
  rotation about the box centre first, then the shift.

The averages are plain means of the aligned members: no CTF correction beyond the
phase flip the caller applied, no Wiener filter. They are Wiener-free averages, good
for looking at a class, not for resolution estimates.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from tqdm import tqdm

from cryomanifold.preprocess import soft_circular_mask

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


# --------------------------------------------------------------------------- helpers


def _as_batch(images: npt.ArrayLike) -> F32:
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"images must have shape (n, L, L) with square boxes; got {arr.shape}")
    return arr


def _per_image(values: npt.ArrayLike, n: int, name: str, tail: tuple[int, ...] = ()) -> F64:
    arr = np.asarray(values, dtype=np.float64)
    try:
        arr = np.broadcast_to(arr, (n, *tail))
    except ValueError:
        raise ValueError(f"{name} must have shape {(n, *tail)}; got {arr.shape}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _phase_ramp(shifts: F64, length: int, freq_index: F64) -> npt.NDArray[np.complex64]:
    """``exp(-2 pi i shifts k / length)`` for integer frequencies ``k``, shape ``(*shifts, nk)``.

    The base angle is reduced modulo a turn in float64 and multiplied out in float32
    (cos/sin in float32 are ~10x faster than a complex128 exp; error < 1e-5 rad).
    """
    base = (-2.0 * np.pi * np.mod(shifts / length, 1.0)).astype(np.float32)
    angle = base[..., None] * freq_index.astype(np.float32)
    ramp = np.empty(angle.shape, dtype=np.complex64)
    ramp.real = np.cos(angle)
    ramp.imag = np.sin(angle)
    return ramp


def _shift_along(x: F32, shifts: F64, axis: int, workers: int) -> F32:
    """Shift 1D lines of ``x`` along ``axis`` by per-line amounts (Fourier phase ramp).

    ``shifts`` broadcasts against ``x`` with the ``axis`` dimension removed. The
    Nyquist component of even lengths is dropped so that the shear is exactly
    invertible.
    """
    length = x.shape[axis]
    spec = sfft.rfft(x, axis=axis, workers=workers)
    spec = np.moveaxis(spec, axis, -1)
    ramp = _phase_ramp(shifts, length, np.arange(length // 2 + 1, dtype=np.float64))
    if length % 2 == 0:
        ramp[..., -1] = 0.0
    spec = np.moveaxis(spec * ramp, -1, axis)
    return sfft.irfft(spec, n=length, axis=axis, workers=workers).astype(np.float32, copy=False)


def _quarter_turn_index(box: int, k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Source indices of a ``k * 90`` degree rotation about ``L // 2`` (periodic box)."""
    c = box // 2
    i, j = np.meshgrid(np.arange(box), np.arange(box), indexing="ij")
    for _ in range(k % 4):
        i, j = j, (2 * c - i) % box
    return i, j


def rotate_images(images: npt.ArrayLike, angles_deg: npt.ArrayLike, *, workers: int = -1) -> F32:
    """Rotate each image about the box centre ``(L // 2, L // 2)``.

    Angles are first reduced to a quarter turn (an exact pixel permutation) plus a
    residual in [-45, 45] degrees, which is applied as three Fourier shears
    (Unser/Larkin): band-limited, no interpolation blur, and exactly undone by the
    opposite angle apart from the Nyquist row and column of even boxes. Positive
    angles turn the content counter-clockwise as displayed (like ``np.rot90``).

    The box is treated as periodic, so content outside the inscribed circle (the
    corners) may wrap; mask images softly before rotating when the corners matter.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    angles_deg : array_like, shape (n,) or scalar
        Rotation angles in degrees.
    workers : int
        Threads for scipy.fft (-1: all cores).

    Returns
    -------
    ndarray, shape (n, L, L), float32
    """
    imgs = _as_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    theta = _per_image(angles_deg, n, "angles_deg")
    quarter = np.round(theta / 90.0)
    residual = np.deg2rad(theta - 90.0 * quarter)
    out = imgs.copy()
    for k in (1, 2, 3):
        sel = np.flatnonzero(quarter % 4 == k)
        if sel.size:
            src_i, src_j = _quarter_turn_index(box, k)
            out[sel] = imgs[sel][:, src_i, src_j]
    todo = np.flatnonzero(np.abs(residual) > 1e-9)
    if todo.size == 0:
        return out
    phi = residual[todo]
    a = -np.tan(phi / 2.0)  # x-shear: content at height v moves right by a * v
    b = np.sin(phi)  # y-shear: content at column u moves up by b * u
    v = (box // 2 - np.arange(box)).astype(np.float64)  # height of each row (up)
    u = (np.arange(box) - box // 2).astype(np.float64)  # column offset (right)
    sub = out[todo]
    sub = _shift_along(sub, a[:, None] * v[None, :], axis=2, workers=workers)
    sub = _shift_along(sub, -b[:, None] * u[None, :], axis=1, workers=workers)
    sub = _shift_along(sub, a[:, None] * v[None, :], axis=2, workers=workers)
    out[todo] = sub
    return out


def shift_images(images: npt.ArrayLike, shifts_px: npt.ArrayLike, *, workers: int = -1) -> F32:
    """Shift each image by a sub-pixel amount with a Fourier phase ramp.

    Integer shifts are done as ``np.roll`` (bit-exact; the box is periodic). For
    fractional shifts the Nyquist row and column of even boxes are dropped.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    shifts_px : array_like, shape (n, 2) or (2,)
        ``(dy, dx)`` in pixels: content moves ``dy`` rows down and ``dx`` columns right.
    workers : int
        Threads for scipy.fft (-1: all cores).

    Returns
    -------
    ndarray, shape (n, L, L), float32
    """
    imgs = _as_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    s = _per_image(shifts_px, n, "shifts_px", (2,))
    integer = np.all(s == np.round(s), axis=1)
    out = np.empty_like(imgs)
    if integer.any():  # a gather: bit-exact np.roll per image
        idx = np.flatnonzero(integer)
        rows = (np.arange(box)[None, :] - s[idx, 0, None].astype(np.intp)) % box
        cols = (np.arange(box)[None, :] - s[idx, 1, None].astype(np.intp)) % box
        out[idx] = imgs[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
    if not integer.all():
        idx = np.flatnonzero(~integer)
        ramp_y = _phase_ramp(s[idx, 0], box, sfft.fftfreq(box) * box)
        ramp_x = _phase_ramp(s[idx, 1], box, np.arange(box // 2 + 1, dtype=np.float64))
        ramp = ramp_y[:, :, None] * ramp_x[:, None, :]
        if box % 2 == 0:
            ramp[:, box // 2, :] = 0.0
            ramp[:, :, -1] = 0.0
        spec = sfft.rfft2(imgs[idx], workers=workers) * ramp
        out[idx] = sfft.irfft2(spec, s=(box, box), workers=workers)
    return out


# --------------------------------------------------------------------------- alignment

_PAD = 2  # amplitude spectra on a 2x zero-padded grid: smooth enough to interpolate


def _radius_rfft(box: int) -> F64:
    """Radius in Fourier pixels of each rfft2 sample, shape (L, L // 2 + 1)."""
    return np.hypot((sfft.fftfreq(box) * box)[:, None], np.arange(box // 2 + 1)[None, :])


def _lowpass(box: int, lowpass_fraction: float, width_px: float = 2.0) -> F64:
    """Raised-cosine low-pass on the rfft2 grid (cut-off as a fraction of Nyquist), no DC."""
    if not 0 < lowpass_fraction <= 1:
        raise ValueError(f"lowpass_fraction must be in (0, 1]; got {lowpass_fraction}")
    t = np.clip((_radius_rfft(box) - lowpass_fraction * box / 2) / width_px, 0.0, 1.0)
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
    imgs = _as_batch(images)
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
        band = _lowpass(box, lowpass_fraction)
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


# --------------------------------------------------------------------------- averaging


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
    imgs = _as_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    if n == 0 or n_iter < 1:
        raise ValueError(f"need at least one image and n_iter >= 1; got {n} images, {n_iter}")
    rng = np.random.default_rng(random_state)
    mask = _default_mask(box, mask_radius)
    lowpass = _lowpass(box, lowpass_fraction)

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
