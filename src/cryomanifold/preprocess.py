"""Image preprocessing: Fourier cropping, soft masks and normalisation.

All functions take a batch ``(n, L, L)`` and return new float32 arrays; inputs are
never modified.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams, phase_flip

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
    spec = sfft.rfft2(imgs, workers=workers)
    half = new_box // 2
    cropped = np.concatenate(
        [spec[:, :half, : half + 1], spec[:, box - half :, : half + 1]], axis=1
    )
    out = sfft.irfft2(cropped, s=(new_box, new_box), workers=workers)
    out *= (new_box / box) ** 2
    return out.astype(np.float32, copy=False)


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


def normalize(images: npt.ArrayLike, *, background_radius: float | None = None) -> F32:
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

    Returns
    -------
    ndarray, shape (n, L, L), float32
    """
    imgs = as_image_batch(images)
    box = imgs.shape[-1]
    radius = 0.4 * box if background_radius is None else background_radius
    bg = radial_distance(box) > radius
    if bg.sum() < 8:
        bg = np.ones((box, box), dtype=bool)
    vals = imgs[:, bg]
    mean = vals.mean(axis=1, dtype=np.float64)
    std = vals.std(axis=1, dtype=np.float64)
    std[~(std > 1e-12)] = 1.0
    out = (imgs - mean[:, None, None].astype(np.float32)) / std[:, None, None].astype(np.float32)
    return out.astype(np.float32, copy=False)


def prepare_images(
    images: npt.ArrayLike, *, box: int, pixel_size_angstrom: float, ctf: CTFParams | None = None
) -> tuple[npt.NDArray[np.float32], float]:
    """Fourier-crop, optionally phase-flip, and normalise a batch of particles.

    Cropping comes first: it keeps the low frequencies exactly, so phase flipping on
    the cropped grid with the cropped pixel size is the same as flipping first, at a
    fraction of the cost.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    box : int
        Target box; images are cropped only if larger.
    pixel_size_angstrom : float
        Pixel size of ``images``.
    ctf : CTFParams, optional
        CTF of the ``n`` particles; phase flipping is done when given.

    Returns
    -------
    images : ndarray, shape (n, box', box'), float32
    pixel_size_angstrom : float
        Pixel size after cropping.
    """
    imgs = np.asarray(images, dtype=np.float32)
    size = imgs.shape[-1]
    apix = pixel_size_angstrom
    if size > box:
        imgs = fourier_crop(imgs, box)
        apix = pixel_size_angstrom * size / box
    elif size % 2:
        imgs = imgs[:, :-1, :-1]  # FFT-based steps want an even box
    if ctf is not None:
        imgs = phase_flip(imgs, ctf, apix)
    return normalize(imgs), apix


def bad_images(images: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Which images of a batch ``(n, L, L)`` are unusable: NaN/inf pixels or constant, (n,) bool."""
    finite = np.isfinite(images).all(axis=(1, 2))
    spread = np.zeros(images.shape[0], dtype=np.float32)
    spread[finite] = images[finite].std(axis=(1, 2))
    return ~finite | ~(spread > 1e-6 * (np.abs(images[finite]).max() if finite.any() else 1.0))
