"""Image preprocessing: Fourier cropping, soft masks and normalisation.

All functions take a batch ``(n, L, L)`` and return new float32 arrays; inputs are
never modified.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams, ctf_sign, phase_flip

__all__ = [
    "as_image_batch",
    "bad_images",
    "fourier_crop",
    "normalize",
    "prepare_images",
    "radial_distance",
    "soft_circular_mask",
]

F32 = npt.NDArray[np.float32]

#: Images per chunk in the multi-pass steps, so that a chunk stays in cache (~1 MB at 64 px).
_CHUNK = 64


def as_image_batch(images: npt.ArrayLike) -> F32:
    """``images`` as a float32 batch ``(n, L, L)``; a single ``(L, L)`` image becomes n = 1.

    Raises
    ------
    ValueError
        If the images are not square 2-D images.
    """
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"images must have shape (n, L, L) with square boxes; got {arr.shape}")
    return arr


def fourier_crop(images: npt.ArrayLike, new_box: int, *, workers: int = -1) -> F32:
    """Downsample square images by cropping their Fourier transform.

    Keeps the frequencies below the new Nyquist limit exactly, so the result is the
    band-limited version of the input sampled on a coarser grid: the pixel size
    grows by ``L / new_box``. Intensities are rescaled so the mean is preserved.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    new_box : int
        Target box side; must be even and not larger than ``L``.
    workers : int
        Threads for scipy.fft (-1: all cores).

    Returns
    -------
    ndarray, shape (n, new_box, new_box), float32
    """
    imgs = as_image_batch(images)
    box = imgs.shape[-1]
    if new_box == box:
        return imgs.copy()
    if new_box > box or new_box % 2:
        raise ValueError(f"new_box must be even and <= {box}; got {new_box}")
    cropped = _cropped_spectrum(imgs, new_box, workers)
    return np.asarray(
        sfft.irfft2(cropped, s=(new_box, new_box), workers=workers, overwrite_x=True), np.float32
    )


def _cropped_spectrum(
    imgs: F32, new_box: int, workers: int, *, keep_mean: bool = True
) -> npt.NDArray[np.complex64]:
    """The ``rfft2`` half spectrum of a ``new_box`` grid, cropped from that of ``imgs``
    (scaled so that its inverse keeps the images' mean, with ``keep_mean``).

    Only the kept columns of the row transform go through the column transform.
    """
    box = imgs.shape[-1]
    half = new_box // 2
    rows = sfft.rfft(imgs, axis=-1, workers=workers)[:, :, : half + 1]
    cols = sfft.fft(rows, axis=-2, workers=workers, overwrite_x=True)
    cropped = np.concatenate([cols[:, :half], cols[:, box - half :]], axis=1)
    if keep_mean:
        cropped *= np.float32((new_box / box) ** 2)
    # The first and last columns of a half spectrum must be Hermitian along ky, as
    # rfft2 of a real image gives them: make them so, as irfft2 followed by rfft2 would.
    for col in (0, half):
        values = cropped[:, :, col]
        mirrored = np.roll(values[:, ::-1], 1, axis=1)  # value at -ky
        cropped[:, :, col] = 0.5 * (values + mirrored.conj())
    return np.asarray(cropped, dtype=np.complex64)


def radial_distance(box_size: int) -> npt.NDArray[np.float64]:
    """Distance of each pixel from the box centre ``(L // 2, L // 2)``, in pixels.

    Returns
    -------
    ndarray, shape (L, L)
    """
    c = np.arange(box_size) - box_size // 2
    return np.hypot(c[:, None], c[None, :])


def soft_circular_mask(box_size: int, radius: float, width: float = 4.0) -> F32:
    """A circular mask with a raised-cosine edge.

    Parameters
    ----------
    box_size : int
        Box side in pixels.
    radius : float
        Radius in pixels where the mask starts to fall off (value 1 inside).
    width : float
        Width of the cosine edge in pixels; the mask is 0 beyond ``radius + width``.

    Returns
    -------
    ndarray, shape (L, L), float32, values in [0, 1]
    """
    r = radial_distance(box_size)
    if width <= 0:
        return (r <= radius).astype(np.float32)
    t = np.clip((r - radius) / width, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def _background_pixels(box_size: int, radius: float) -> npt.NDArray[np.intp]:
    """Flat indices of the pixels farther than ``radius`` from the centre (all if < 8)."""
    bg = np.flatnonzero(radial_distance(box_size).ravel() > radius)
    return bg if bg.size >= 8 else np.arange(box_size * box_size)


def normalize(
    images: npt.ArrayLike, *, background_radius: float | None = None, out: F32 | None = None
) -> F32:
    """Normalise each image to zero mean and unit standard deviation of its background.

    The background is the region outside ``background_radius`` pixels from the
    centre (RELION's convention for particle normalisation); if it is None, the
    outer ring beyond 0.4 L is used. Images whose background is constant are
    returned unscaled (mean removed only), never divided by zero.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    background_radius : float, optional
        Radius in pixels; pixels farther from the centre are background.
    out : ndarray, shape (n, L, L), float32, optional
        Where to write the result (may be ``images`` itself, to normalise in place).

    Returns
    -------
    ndarray, shape (n, L, L), float32
    """
    imgs = as_image_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    radius = 0.4 * box if background_radius is None else background_radius
    background = _background_pixels(box, radius)
    out = np.empty_like(imgs) if out is None else out
    for start in range(0, n, _CHUNK):  # chunks that stay in cache between the passes
        chunk = imgs[start : start + _CHUNK]
        vals = chunk.reshape(chunk.shape[0], -1).take(background, axis=1)
        mean = vals.mean(axis=1)  # float32, pairwise summation
        vals -= mean[:, None]
        std = np.sqrt(np.einsum("ij,ij->i", vals, vals) / vals.shape[1])
        std[~(std > 1e-12)] = 1.0
        dest = np.subtract(chunk, mean[:, None, None], out=out[start : start + _CHUNK])
        dest *= (1.0 / std)[:, None, None]
    return out


def prepare_images(
    images: npt.ArrayLike,
    *,
    box: int,
    pixel_size_angstrom: float,
    ctf: CTFParams | None = None,
    workers: int = -1,
) -> tuple[npt.NDArray[np.float32], float]:
    """Fourier-crop, optionally phase-flip, and normalise a batch of particles.

    Cropping comes first: it keeps the low frequencies exactly, so phase flipping on
    the cropped grid with the cropped pixel size is the same as flipping first, at a
    fraction of the cost; both are done on one Fourier transform.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Not modified.
    box : int
        Target box; images are cropped only if larger.
    pixel_size_angstrom : float
        Pixel size of ``images``.
    ctf : CTFParams, optional
        CTF of the ``n`` particles; phase flipping is done when given.
    workers : int
        Threads for scipy.fft (-1: all cores).

    Returns
    -------
    images : ndarray, shape (n, box', box'), float32
        A new array: ``box' = box`` if ``L > box``, else ``L`` (``L - 1`` if odd).
    pixel_size_angstrom : float
        Pixel size after cropping.
    """
    imgs = as_image_batch(images)
    n, size = imgs.shape[0], imgs.shape[-1]
    apix = pixel_size_angstrom
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{len(ctf)} CTF entries for {n} images")
    if size > box:
        apix = pixel_size_angstrom * size / box
        out = np.empty((n, box, box), dtype=np.float32)
        for start in range(0, n, _CHUNK):  # chunks that stay in cache between the steps
            # no mean-preserving scale: the normalisation removes it anyway
            spec = _cropped_spectrum(imgs[start : start + _CHUNK], box, workers, keep_mean=False)
            if ctf is not None:
                spec *= ctf_sign(ctf.subset(np.arange(start, start + len(spec))), box, apix)
            chunk = sfft.irfft2(spec, s=(box, box), workers=workers, overwrite_x=True)
            normalize(chunk, out=out[start : start + _CHUNK])
        return out, apix
    if size % 2:
        imgs = imgs[:, :-1, :-1]  # FFT-based steps want an even box
    if ctf is not None:
        flipped = phase_flip(imgs, ctf, apix, workers=workers)
        return normalize(flipped, out=flipped), apix
    return normalize(imgs), apix


def bad_images(images: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Which images of a batch are unusable: NaN/inf pixels, or constant.

    An image is constant when its range (max - min) is at most 1e-6 of its largest
    absolute pixel value (all-zero images included). The decision is per image, so
    it does not depend on how a stack is cut into batches.

    Parameters
    ----------
    images : array_like, shape (n, L, L)

    Returns
    -------
    ndarray, shape (n,), bool
    """
    imgs = np.asarray(images)
    flat = imgs.reshape(imgs.shape[0], -1)
    high, low = flat.max(axis=1), flat.min(axis=1)  # NaN propagates; inf shows
    with np.errstate(invalid="ignore", over="ignore"):
        finite = np.isfinite(high) & np.isfinite(low)
        scale = np.maximum(np.abs(high), np.abs(low)).astype(np.float64)
        spread = high.astype(np.float64) - low
    return ~finite | ~(spread > 1e-6 * scale)
