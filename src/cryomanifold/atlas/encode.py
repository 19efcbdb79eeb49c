"""Compact binary encoding of the atlas data (typed arrays, base64, optional deflate).

The page receives one base64 string: the concatenation of little-endian typed
arrays, each starting at a multiple of 4 bytes, optionally deflate-compressed
(zlib format, which the browser's ``DecompressionStream("deflate")`` reads). A
layout dict tells where each array starts. Values are quantised to what the
display needs: positions to uint16 per axis, scores to uint8, images to uint8.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold.preprocess import fourier_crop

__all__ = [
    "images_to_uint8",
    "pack_arrays",
    "quantize",
    "quantize_positions",
    "unpack_arrays",
]

_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "float32": np.float32}


def quantize(
    values: npt.ArrayLike, lo: float, hi: float, *, dtype: type[np.unsignedinteger[Any]] = np.uint8
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Map ``[lo, hi]`` linearly onto the full range of an unsigned integer type.

    Values outside are clipped; NaN maps to 0. ``x ≈ lo + q / qmax * (hi - lo)``.

    Parameters
    ----------
    values : array_like, shape (n,)
    lo, hi : float
        Range that maps to 0 and to the type's maximum.
    dtype : numpy unsigned integer type

    Returns
    -------
    ndarray of ``dtype``, shape (n,)
    """
    top = np.iinfo(dtype).max
    x = np.asarray(values, dtype=np.float64)
    span = hi - lo if hi > lo else 1.0
    q = np.rint(np.clip((x - lo) / span, 0.0, 1.0) * top)
    return np.nan_to_num(q, nan=0.0).astype(dtype)


def quantize_positions(
    xy: npt.ArrayLike,
) -> tuple[npt.NDArray[np.uint16], tuple[float, float, float, float]]:
    """Quantise 2-D points to uint16 per axis over their bounding box.

    Parameters
    ----------
    xy : array_like, shape (n, 2)
        Finite coordinates (non-finite ones are placed at the lower corner).

    Returns
    -------
    q : ndarray of uint16, shape (n, 2)
        ``x ≈ x0 + q[:, 0] / 65535 * (x1 - x0)``, likewise for y.
    bounds : (x0, x1, y0, y1)
    """
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"positions must have shape (n, 2); got {pts.shape}")
    finite = np.isfinite(pts).all(axis=1)
    if finite.any():
        lo = pts[finite].min(axis=0)
        hi = pts[finite].max(axis=0)
    else:
        lo, hi = np.zeros(2), np.ones(2)
    hi = np.where(hi > lo, hi, lo + 1.0)
    q = np.stack([quantize(pts[:, a], lo[a], hi[a], dtype=np.uint16) for a in range(2)], axis=1)
    return q, (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))


def images_to_uint8(
    images: npt.ArrayLike, *, max_box: int = 64, percentiles: tuple[float, float] = (1.0, 99.0)
) -> npt.NDArray[np.uint8]:
    """Display versions of images: Fourier-cropped to at most ``max_box``, 8 bits.

    Each image is stretched on its own between the given percentiles (protein
    stays white if it was white). All-zero images stay zero.

    Parameters
    ----------
    images : array_like, shape (m, L, L)
    max_box : int
        Images larger than this are Fourier-cropped to ``max_box`` (even) pixels.
    percentiles : (float, float)

    Returns
    -------
    ndarray of uint8, shape (m, b, b), ``b = min(L, max_box)``
    """
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3:
        raise ValueError(f"images must have shape (m, L, L); got {imgs.shape}")
    if imgs.shape[0] == 0:
        return np.zeros(imgs.shape, dtype=np.uint8)
    if imgs.shape[-1] > max_box:
        imgs = fourier_crop(imgs, max_box - max_box % 2)
    flat = imgs.reshape(imgs.shape[0], -1)
    lo, hi = np.percentile(flat, percentiles, axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.clip((flat - lo[:, None]) / span[:, None], 0.0, 1.0) * 255.0
    out = np.rint(scaled).astype(np.uint8).reshape(imgs.shape)
    out[~np.any(flat != 0, axis=1)] = 0
    return out


def pack_arrays(
    arrays: dict[str, npt.NDArray[Any]], *, compress: bool = True
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Concatenate typed arrays into one base64 string.

    Parameters
    ----------
    arrays : dict of name -> ndarray
        dtypes uint8, uint16, uint32 or float32.
    compress : bool
        Deflate (zlib) the bytes before base64.

    Returns
    -------
    b64 : str
        ASCII base64 text.
    layout : dict of name -> {"dtype", "offset", "length", "shape"}
        ``offset`` in bytes into the decompressed buffer, ``length`` in elements.
    """
    chunks: list[bytes] = []
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, arr in arrays.items():
        dtype_name = np.dtype(arr.dtype).name
        if dtype_name not in _DTYPES:
            raise ValueError(f"array {name!r} has unsupported dtype {arr.dtype}")
        data = np.ascontiguousarray(arr, dtype=np.dtype(dtype_name).newbyteorder("<")).tobytes()
        layout[name] = {
            "dtype": dtype_name,
            "offset": offset,
            "length": int(arr.size),
            "shape": list(arr.shape),
        }
        pad = (-len(data)) % 4
        chunks.append(data + b"\0" * pad)
        offset += len(data) + pad
    raw = b"".join(chunks)
    if compress:
        raw = zlib.compress(raw, 6)
    return base64.b64encode(raw).decode("ascii"), layout


def unpack_arrays(
    b64: str, layout: dict[str, dict[str, Any]], *, compressed: bool
) -> dict[str, npt.NDArray[Any]]:
    """Inverse of :func:`pack_arrays` (what the page does in JavaScript)."""
    raw = base64.b64decode(b64)
    if compressed:
        raw = zlib.decompress(raw)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, spec in layout.items():
        dtype = np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(raw, dtype=dtype, count=spec["length"], offset=spec["offset"])
        out[name] = arr.reshape(spec["shape"])
    return out
