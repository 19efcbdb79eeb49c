"""The spectrum stage of the invariant features: settings, masks and the Zernike operator.

Private helpers of :mod:`cryomanifold.features` (split out to keep that module a
readable size): validated settings of the mask, band and padding, the masked and
zero-padded half spectrum of a batch, and the cached operator that maps the
band-limited amplitude spectrum straight to Zernike moments of ``T``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.preprocess import radial_distance, soft_circular_mask
from cryomanifold.zernike import _rfft_multiplicity, even_spectrum_operator

F32 = npt.NDArray[np.float32]
Band = tuple[float | None, float | None]

_SPECTRA = ("amplitude", "power")
_SPECTRUM_NORMS = (None, "l2")
_FEATURE_NORMS = (None, "l2", "log", "sqrt")


@dataclass(frozen=True)
class _Spectral:
    """Validated settings of the spectrum stage, in pixels (hashable cache key)."""

    box_size: int
    mask_radius_px: float | None
    mask_width_px: float
    band: Band | None
    band_edge: float
    spectrum: str
    spectrum_norm: str | None
    fft_size: int


def _pixels(value: float, box_size: int) -> float:
    """Values below 1 are fractions of the box side; 1 and above are pixels."""
    return float(value) * box_size if value < 1 else float(value)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _spectral_settings(
    box_size: int,
    mask_radius: float | None,
    mask_width: float,
    band: Band | None,
    band_edge: float,
    spectrum: str,
    spectrum_norm: str | None,
    pad_factor: float,
) -> _Spectral:
    _require(spectrum in _SPECTRA, f"spectrum must be one of {_SPECTRA}; got {spectrum!r}")
    _require(
        spectrum_norm in _SPECTRUM_NORMS,
        f"spectrum_norm must be one of {_SPECTRUM_NORMS}; got {spectrum_norm!r}",
    )
    _require(pad_factor >= 1, f"pad_factor must be >= 1; got {pad_factor!r}")
    _require(mask_width >= 0, f"mask_width must be >= 0; got {mask_width}")
    _require(band_edge >= 0, f"band_edge must be >= 0; got {band_edge}")
    width_px = _pixels(mask_width, box_size) if mask_width > 0 else 0.0
    mask_px = None
    if mask_radius is not None:
        _require(mask_radius > 0, f"mask_radius must be positive or None; got {mask_radius}")
        mask_px = _pixels(mask_radius, box_size)
        _require(
            mask_px >= width_px,
            f"mask_width ({width_px:g} px) must not exceed mask_radius ({mask_px:g} px)",
        )
    band_t: Band | None = None
    if band is not None:
        _require(len(band) == 2, f"band must be (k_min, k_max) or None; got {band!r}")
        lo, hi = (None if b is None else float(b) for b in band)
        _require(
            (lo is None or lo >= 0) and (lo is None or hi is None or hi > lo),
            f"band needs 0 <= k_min < k_max (fractions of Nyquist); got {band!r}",
        )
        band_t = (lo, hi)
    fft_size = max(box_size, int(np.rint(box_size * pad_factor)))
    return _Spectral(
        box_size, mask_px, width_px, band_t, float(band_edge), spectrum, spectrum_norm, fft_size
    )


def _raised_cosine(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """0 for t <= 0, 1 for t >= 1, a raised cosine in between."""
    return 0.5 * (1.0 - np.cos(np.pi * np.clip(t, 0.0, 1.0)))


@functools.lru_cache(maxsize=32)
def _half_grid_weights(fft_size: int, band: Band | None, band_edge: float) -> F32:
    """Band weights on the rfft half grid, shape (N, N // 2 + 1), values in [0, 1].

    The weight rises from 0 at ``k_min`` to 1 at ``k_min + band_edge`` and falls
    from 1 at ``k_max - band_edge`` to 0 at ``k_max`` (fractions of Nyquist).
    """
    ky = sfft.fftfreq(fft_size)[:, None]
    kx = sfft.rfftfreq(fft_size)[None, :]
    k = np.hypot(ky, kx) / 0.5
    w = np.ones_like(k)
    if band is not None:
        lo, hi = band
        if lo is not None:
            w *= (k > lo) if band_edge == 0 else _raised_cosine((k - lo) / band_edge)
        if hi is not None:
            w *= (k < hi) if band_edge == 0 else _raised_cosine((hi - k) / band_edge)
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class _Operator:
    rows: npt.NDArray[np.int64]  # flat indices into the (N, N // 2 + 1) half grid
    matrix: F32  # (P, 2M): [Re | Im] of the moments per unit of the band-limited spectrum
    norm_weights: F32  # (P,): multiplicity * band weight**2, for the band's L2 norm


@functools.lru_cache(maxsize=16)
def _spectral_operator(
    box: int,
    size: int,
    band: Band | None,
    band_edge: float,
    n_max: int,
    radius: float,
    disk_taper: float,
) -> _Operator:
    """The Zernike operator on the half spectrum, restricted to (and weighted by) the band."""
    weights = _half_grid_weights(size, band, band_edge).astype(np.float64)
    rows = np.flatnonzero(weights.ravel() > 0)
    op = even_spectrum_operator(box, n_max, fft_size=size, radius=radius, disk_taper=disk_taper)
    op = op.reshape(-1, op.shape[-1])[rows] * weights.ravel()[rows, None]
    matrix = np.ascontiguousarray(np.concatenate([op.real, op.imag], axis=1), dtype=np.float32)
    norm_w = (_rfft_multiplicity(size)[None, :] * weights**2).ravel()[rows].astype(np.float32)
    for arr in (rows, matrix, norm_w):
        arr.setflags(write=False)
    return _Operator(rows, matrix, norm_w)


def _as_batch(images: npt.ArrayLike) -> npt.NDArray[Any]:
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[1] < 2:
        raise ValueError(f"images must have shape (n, L, L) with square boxes; got {arr.shape}")
    if np.iscomplexobj(arr):
        raise TypeError("images must be real; got a complex array")
    return arr


@functools.lru_cache(maxsize=16)
def _mask_arrays(box_size: int, radius_px: float, width_px: float) -> tuple[F32, F32]:
    """The soft mask (L, L) and the averaging weights (L * L,) of its background."""
    inner = radius_px - width_px
    mask = soft_circular_mask(box_size, inner, width_px)
    background = (radial_distance(box_size) > inner).ravel().astype(np.float32)
    if background.sum() > 0:
        background /= background.sum()
    for arr in (mask, background):
        arr.setflags(write=False)
    return mask, background


def _masked(batch: npt.NDArray[Any], spec: _Spectral) -> F32:
    """Float32 copy of the batch, background-levelled and masked when asked."""
    g = np.asarray(batch, dtype=np.float32)
    if spec.mask_radius_px is None:
        return g
    mask, background = _mask_arrays(spec.box_size, spec.mask_radius_px, spec.mask_width_px)
    level = g.reshape(g.shape[0], -1) @ background
    out = np.subtract(g, level[:, None, None])
    out *= mask
    return out


def _half_spectrum(batch: npt.NDArray[Any], spec: _Spectral, workers: int) -> npt.NDArray[Any]:
    """``rfft2`` of the masked batch zero-padded to ``N``, shape (b, N, N // 2 + 1)."""
    g = _masked(batch, spec)
    size = spec.fft_size
    if size == spec.box_size:
        return sfft.rfft2(g, workers=workers)
    # Padded rows are zero: transform the L image rows first, then the columns.
    rows = sfft.rfft(g, n=size, axis=-1, workers=workers)
    return sfft.fft(rows, n=size, axis=-2, workers=workers, overwrite_x=True)


def _magnitude(coeffs: npt.NDArray[np.complexfloating], spectrum: str) -> F32:
    if spectrum == "power":
        return (coeffs.real * coeffs.real + coeffs.imag * coeffs.imag).astype(np.float32)
    return np.abs(coeffs).astype(np.float32, copy=False)
