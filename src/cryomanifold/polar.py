"""Images as angular Fourier series on rings of their spectrum: rotation, shift and
mirror searches against many references at once.

The spectrum of a centred image, sampled on rings of radius ``r`` (Fourier pixels)
at ``n_phi`` angles and Fourier-transformed along the angle, gives coefficients
``a[r, m]``. Rotating the image by ``θ`` multiplies ``a[r, m]`` by ``exp(-i m θ)``;
shifting it multiplies the ring samples by a phase ramp; mirroring it conjugates
the coefficients (up to a sign per ``m``). So the correlation of an image with a
reference at every rotation is one small matrix product per angular frequency and
one inverse FFT along the angle (:func:`rotational_correlation`), for all
references at once: the core of multi-reference alignment
(:mod:`cryomanifold.refine`).

Conventions
-----------
Images are ``(n, L, L)`` with the centre at ``(L // 2, L // 2)``. Angles and shifts
are those of :mod:`cryomanifold.transforms`: a positive angle turns the content
counter-clockwise as displayed; a shift ``(dy, dx)`` moves it ``dy`` rows down and
``dx`` columns right; "aligned" means ``shift_images(rotate_images(x, angle),
shift)`` (after mirroring rows, ``x[:, ::-1, :]`` about the centre row, when the
mirror is used). :func:`pose_to_transform` turns a search result into those
arguments.

The spectrum is that of the image after a soft circular mask and zero padding to
``2 L`` with the centre moved to the origin, so that it is smooth enough for
bilinear interpolation onto the rings (the interpolation acts as a mild taper of
the particle's edge, the same for images and references).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.preprocess import as_image_batch

__all__ = [
    "PolarGrid",
    "polar_coefficients",
    "pose_to_transform",
    "ring_index",
    "rotational_correlation",
    "shift_coefficients",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]

_PAD = 2


class PolarGrid(NamedTuple):
    """Rings and angles on which spectra are sampled.

    Attributes
    ----------
    box : int
        Image side ``L``.
    radii : ndarray, shape (R,)
        Ring radii in Fourier pixels of the ``L`` box.
    n_phi : int
        Angles per ring (even), ``φ_j = 2 π j / n_phi`` counter-clockwise from the
        +x (column) frequency axis as displayed.
    n_m : int
        Angular frequencies kept, ``m = 0 .. n_m - 1`` (the negative ones follow from
        the image being real).
    """

    box: int
    radii: F64
    n_phi: int
    n_m: int

    @classmethod
    def make(cls, box: int, r_min: float = 1.0, r_max: float | None = None) -> PolarGrid:
        """Rings ``r_min .. r_max`` (default Nyquist) one Fourier pixel apart, enough
        angles for the outer ring (``n_phi >= 2 π r_max``)."""
        top = box / 2 - 1 if r_max is None else min(float(r_max), box / 2 - 1)
        radii = np.arange(float(r_min), top + 1e-9, 1.0)
        if radii.size == 0:
            raise ValueError(f"no rings between {r_min} and {top}")
        n_phi = int(2 * np.ceil(np.pi * radii[-1] + 2))
        n_phi += n_phi % 4  # multiple of 4: the half plane kx >= 0 is a quarter turn each side
        return cls(box, radii, n_phi, n_phi // 2 + 1)

    def frequencies(self) -> tuple[F64, F64]:
        """Row and column frequencies (cycles per box) of the samples, each (R, n_phi)."""
        phi = 2 * np.pi * np.arange(self.n_phi) / self.n_phi
        kx = self.radii[:, None] * np.cos(phi)[None, :]
        ky_row = -self.radii[:, None] * np.sin(phi)[None, :]  # display up is row down
        return ky_row, kx


def ring_index(box: int) -> npt.NDArray[np.intp]:
    """Nearest ring (Fourier pixels) of each ``rfft2`` sample, shape (L, L // 2 + 1)."""
    ky = sfft.fftfreq(box) * box
    return np.rint(np.hypot(ky[:, None], np.arange(box // 2 + 1)[None, :])).astype(np.intp)


def _interpolator(grid: PolarGrid) -> tuple[npt.NDArray[np.intp], F64, npt.NDArray[np.bool_]]:
    """Gather indices (4, P) into the padded rfft2, bilinear weights (4, P), and which
    samples take the complex conjugate (kx < 0 read at -k)."""
    size, lf = _PAD * grid.box, _PAD * grid.box // 2 + 1
    ky, kx = grid.frequencies()
    conj = kx < -1e-12
    ky = np.where(conj, -ky, ky) * _PAD
    kx = np.abs(kx) * _PAD
    x0, y0 = np.floor(kx), np.floor(ky)
    rows, cols = [y0 % size, (y0 + 1) % size], [x0, np.minimum(x0 + 1, lf - 1)]
    wy, wx = [1 - (ky - y0), ky - y0], [1 - (kx - x0), kx - x0]
    pairs = [(a, b) for a in (0, 1) for b in (0, 1)]
    index = np.stack([(rows[a] * lf + cols[b]).ravel() for a, b in pairs]).astype(np.intp)
    weight = np.stack([(wy[a] * wx[b]).ravel() for a, b in pairs])
    return index, weight, conj.ravel()


def polar_coefficients(
    images: npt.ArrayLike,
    grid: PolarGrid,
    *,
    mask: npt.ArrayLike | None = None,
    ring_filter: npt.ArrayLike | None = None,
    shifts_px: npt.ArrayLike | None = None,
    workers: int = -1,
) -> npt.NDArray[np.complex64]:
    """Angular Fourier coefficients of the ring samples of each image's spectrum.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    grid : PolarGrid
    mask : array_like, shape (L, L), optional
        Real-space weights applied (after subtracting the masked mean) before the
        transform.
    ring_filter : array_like, shape (R,) or (n, R), optional
        Weight of each ring (per image when 2-D), applied to the coefficients.
    shifts_px : array_like, shape (S, 2), optional
        Shifts ``(dy, dx)`` applied to every image before the angular transform: the
        result then has an extra axis, ``(n, S, R, n_m)``.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (n, R, n_m) or (n, S, R, n_m), complex64
        ``a[..., r, m] = Σ_j F(r, φ_j) exp(-i m φ_j) / n_phi``.
    """
    imgs = as_image_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    if box != grid.box:
        raise ValueError(f"images are {box} px, the grid is for {grid.box} px")
    if mask is not None:
        w = np.asarray(mask, dtype=np.float32)
        mean = (imgs * w).sum(axis=(-2, -1)) / max(float(w.sum()), 1e-12)
        imgs = (imgs - mean[:, None, None]) * w
    size = _PAD * box
    padded = np.zeros((n, size, size), np.float32)
    padded[:, :box, :box] = imgs
    padded = np.roll(padded, (-(box // 2), -(box // 2)), axis=(1, 2))  # centre to the origin
    spec = sfft.rfft2(padded, workers=workers).reshape(n, -1)
    index, weight, conj = _interpolator(grid)
    samples = np.einsum("nkp,kp->np", spec[:, index], weight.astype(np.float32))
    samples[:, conj] = np.conj(samples[:, conj])
    samples = samples.reshape(n, grid.radii.size, grid.n_phi)
    if shifts_px is not None:
        samples = samples[:, None] * _shift_ramp(grid, np.asarray(shifts_px, np.float64))[None]
    coef = sfft.fft(samples, axis=-1, workers=workers)[..., : grid.n_m] / grid.n_phi
    if ring_filter is not None:
        rf = np.asarray(ring_filter, dtype=np.float32)
        rf = rf[:, None, :, None] if rf.ndim == 2 and shifts_px is not None else rf[..., None]
        coef = coef * rf
    return np.asarray(coef, dtype=np.complex64)


def _shift_ramp(grid: PolarGrid, shifts: F64) -> C64:
    """Phase ramps (S, R, n_phi) that move content by ``(dy, dx)`` pixels."""
    ky, kx = grid.frequencies()
    phase = -2 * np.pi * (shifts[:, 0, None, None] * ky + shifts[:, 1, None, None] * kx) / grid.box
    return np.exp(1j * phase).astype(np.complex64)


def shift_coefficients(coef: C64, grid: PolarGrid, shifts_px: npt.ArrayLike) -> C64:
    """Coefficients of the images shifted by ``(dy, dx)``: ``coef`` (n, R, n_m) and
    ``shifts_px`` (n, 2) give (n, R, n_m); ``shifts_px`` (n, V, 2) gives (n, V, R, n_m).

    Goes back to the ring samples once (inverse angular FFT, with the negative
    frequencies from the real-image symmetry), applies each shift's phase ramp and
    transforms again.
    """
    n = coef.shape[0]
    s = np.asarray(shifts_px, dtype=np.float64)
    single = s.ndim == 2
    s = s.reshape(n, -1, 2)
    full = np.zeros((n, grid.radii.size, grid.n_phi), np.complex64)
    full[..., : grid.n_m] = coef
    m = np.arange(1, grid.n_phi - grid.n_m + 1)
    sign = np.where(m % 2, -1, 1).astype(np.float32)
    full[..., grid.n_phi - m] = sign * np.conj(coef[..., m])
    samples = sfft.ifft(full, axis=-1, workers=1) * grid.n_phi  # (n, R, n_phi)
    ky, kx = grid.frequencies()
    phase = (s[..., 0, None, None] * ky + s[..., 1, None, None] * kx) * (-2 * np.pi / grid.box)
    ramp = np.empty(phase.shape, np.complex64)
    ramp.real, ramp.imag = np.cos(phase), np.sin(phase)
    out = sfft.fft(samples[:, None] * ramp, axis=-1, workers=1)[..., : grid.n_m] / grid.n_phi
    out = np.asarray(out, dtype=np.complex64)
    return out[:, 0] if single else out


def mirror_coefficients(coef: C64) -> C64:
    """Coefficients of the images mirrored about the centre row (``x[:, ::-1, :]``
    about ``L // 2``): ``φ -> -φ``, i.e. ``a[m] -> (-1)^m conj(a[m])``."""
    m = np.arange(coef.shape[-1])
    sign = np.where(m % 2, -1, 1).astype(np.float32)
    return np.asarray(sign * np.conj(coef), dtype=np.complex64)


def rotational_correlation(
    images: C64, references: C64, n_angles: int | None = None, *, workers: int = 1
) -> F32:
    """Inner products of images and references at every rotation of the images.

    Parameters
    ----------
    images : ndarray, shape (..., R, n_m), complex
        :func:`polar_coefficients` of the images (ring weights already applied).
    references : ndarray, shape (K, R, n_m), complex
    n_angles : int, optional
        Rotations sampled, ``θ_t = 360 t / n_angles`` degrees (default ``2 (n_m - 1)``,
        the grid's own angles; more interpolates).
    workers : int

    Returns
    -------
    ndarray, shape (..., K, n_angles), float32
        ``Σ_r Σ_φ Re[F_image turned by θ_t (r, φ) conj(F_ref(r, φ))] / n_phi``: the
        inner product of the image turned by ``θ_t`` (counter-clockwise) with the
        reference, up to the ring weights and the FFT's scale.
    """
    lead, (n_r, n_m) = images.shape[:-2], images.shape[-2:]
    n_t = 2 * (n_m - 1) if n_angles is None else int(n_angles)
    # one small matrix product per angular frequency, in real arithmetic (numpy's
    # batched complex64 matmul is ~20x slower than the equivalent float32 one)
    a = np.moveaxis(images.reshape(-1, n_r, n_m), -1, 0)  # (m, B, R)
    a2 = np.concatenate([a.real, a.imag], axis=-1)  # (m, B, 2R)
    c = np.conj(references).transpose(2, 1, 0)  # (m, R, K)
    c2 = np.concatenate(
        [np.concatenate([c.real, c.imag], axis=-1), np.concatenate([-c.imag, c.real], axis=-1)],
        axis=1,
    )  # (m, 2R, 2K)
    prod = np.matmul(  # (m, B, 2K): Re | Im
        np.ascontiguousarray(a2, dtype=np.float32), np.ascontiguousarray(c2, dtype=np.float32)
    )
    k = references.shape[0]
    # turning by θ multiplies a[m] by exp(-i m θ); the sum over ±m is a real irfft of
    # the conjugate
    prod = np.moveaxis(prod[..., :k] - 1j * prod[..., k:], 0, -1).astype(np.complex64)
    out = sfft.irfft(prod, n=n_t, axis=-1, workers=workers) * np.float32(n_t)
    return np.asarray(out, dtype=np.float32).reshape(*lead, references.shape[0], n_t)


def pose_to_transform(angle_deg: npt.ArrayLike, shift_px: npt.ArrayLike) -> tuple[F64, F64]:
    """Angles and shifts for :func:`cryomanifold.transforms.rotate_images` then
    :func:`~cryomanifold.transforms.shift_images` from a search that shifted the image
    by ``shift_px`` first and then turned it by ``angle_deg``: the shift turns with
    the image.

    Returns
    -------
    angles_deg : ndarray, shape (n,)
    shifts_px : ndarray, shape (n, 2)
        ``(dy, dx)`` applied after the rotation.
    """
    a = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))
    s = np.asarray(shift_px, dtype=np.float64).reshape(-1, 2)
    dy, dx = s[:, 0], s[:, 1]
    # counter-clockwise as displayed: in (x right, y up) coordinates, y = -row
    x, y = dx, -dy
    xr = np.cos(a) * x - np.sin(a) * y
    yr = np.sin(a) * x + np.cos(a) * y
    return np.rad2deg(a) % 360.0, np.stack([-yr, xr], axis=1)
