"""Junk signs read from the pixels alone, batch first ``(n, L, L)``, one value per image.

- :func:`edge_stripe_widths`: boxes that stick out of the micrograph show runs of
  near-identical rows or columns at an edge (the extraction's padding);
- :func:`excess_kurtosis`: small, very dense objects make the pixel distribution
  heavy-tailed;
- :func:`peak_sigma`: the largest deviation from the median in units of the image's
  robust noise level (values out of range).

The row-wise helpers (``pair_differences``, ``stripe_widths``, ``kurtosis_rows``,
``peak_sigma_rows``, ``has_spread``, ``median_rows``) are what
:func:`cryomanifold.junk_signs.particle_measures` calls on its blocks.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cryomanifold.preprocess import as_image_batch
from cryomanifold.signal import block_size

__all__ = [
    "STRIPE_ROW_RATIO",
    "edge_stripe_widths",
    "excess_kurtosis",
    "has_spread",
    "kurtosis_rows",
    "median_rows",
    "pair_differences",
    "peak_sigma",
    "peak_sigma_rows",
    "raw_stripe_widths",
    "stripe_widths",
]

F32 = npt.NDArray[np.float32]

#: A row pair counts as "repeated" when its mean squared difference is below this
#: fraction of the image's median over all adjacent row pairs. Repeated rows give
#: 0 (raw) to about 0.16 (after Fourier rescaling, measured on RELION's 256 -> 64 px
#: rescaled boxes); two rows of independent noise give 1 +- sqrt(2 / L), so a pair of
#: 32 or more noise pixels falls below 0.3 with probability < 1e-6.
STRIPE_ROW_RATIO = 0.3


def median_rows(a: npt.NDArray[np.floating], *, scratch: bool = False) -> npt.NDArray[np.floating]:
    """``np.median(a, axis=1)`` of a 2-D array, bit for bit, from one partition (numpy's
    median partitions at two or three places, several times slower). ``scratch``: ``a``
    may be reordered in place."""
    m = a.shape[1]
    k = m // 2
    part = a if scratch else a.copy()
    part.partition(k, axis=1)
    out = part[:, k].copy()
    if m % 2 == 0:  # numpy's mean of the two middle values, in the array's dtype
        out = (part[:, :k].max(axis=1) + out) / 2
    nan = np.isnan(part[:, k:].max(axis=1))  # the partition puts NaNs past k
    if nan.any():
        out[nan] = np.nan
    return out


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
    step = block_size(imgs.shape[-1])
    for start in range(0, imgs.shape[0], step):
        block = slice(start, start + step)
        out[block] = stripe_widths(pair_differences(imgs[block]), row_ratio)
    return out


def pair_differences(imgs: F32) -> tuple[F32, F32]:
    """Mean squared difference of each pair of adjacent rows and of adjacent columns,
    (n, L - 1) each.

    As ``|a|**2 + |b|**2 - 2 a.b`` (four passes, no temporaries), except for images
    whose rows carry much more energy than their differences (a large offset, a
    constant image), where that would cancel: their differences are summed directly.
    """
    out = []
    for axes in ("nij,nij->ni", "nij,nij->nj"):  # rows, then columns
        a, b = (imgs[:, 1:], imgs[:, :-1]) if axes[-1] == "i" else (imgs[..., 1:], imgs[..., :-1])
        norms = np.einsum(axes, imgs, imgs)
        diff = norms[:, 1:] + norms[:, :-1] - 2.0 * np.einsum(axes, a, b)
        direct = ~(norms.max(axis=1) <= 100.0 * diff.mean(axis=1))
        if direct.any():
            step = a[direct] - b[direct]
            diff[direct] = np.einsum(axes, step, step)
        out.append(diff / np.float32(imgs.shape[-1]))
    return out[0], out[1]


def stripe_widths(pairs: tuple[F32, F32], row_ratio: float = STRIPE_ROW_RATIO) -> F32:
    """:func:`edge_stripe_widths` from :func:`pair_differences`, (n, 4) float32."""
    out = np.zeros((pairs[0].shape[0], 4), dtype=np.float32)
    for first, diff in zip((0, 2), pairs, strict=True):
        ref = median_rows(diff)[:, None]
        repeated = diff < row_ratio * np.maximum(ref, 1e-30)
        # the first and the last edge of this axis scan the same pairs from either end
        for e, rep in ((first, repeated), (first + 1, repeated[:, ::-1])):
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
    return kurtosis_rows(imgs.reshape(imgs.shape[0], -1))


def kurtosis_rows(flat: F32) -> F32:
    """:func:`excess_kurtosis` of flat images (n, P); moments summed in float64."""
    c2 = flat - flat.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    c2 *= c2
    m2 = np.mean(c2, axis=1, dtype=np.float64)
    m4 = np.einsum("ni,ni->n", c2, c2, dtype=np.float64) / flat.shape[1]
    return (m4 / np.maximum(m2**2, 1e-30) - 3.0).astype(np.float32)


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
    return peak_sigma_rows(flat, flat.max(axis=1), flat.min(axis=1))


def peak_sigma_rows(flat: F32, high: F32, low: F32) -> F32:
    """:func:`peak_sigma` of flat images (n, P) with their maxima and minima (n,)."""
    sample = np.array(flat[:, ::4] if flat.shape[1] >= 256 else flat)
    med = median_rows(sample, scratch=True)
    sample -= med[:, None]  # the median's partition: the same values, reordered
    mad = 1.4826 * median_rows(np.abs(sample, out=sample), scratch=True)
    peak = np.maximum(high - med, med - low)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(mad > 0, peak / np.where(mad > 0, mad, 1.0), np.inf)
    return out.astype(np.float32)


def has_spread(block: F32, high: F32, low: F32) -> npt.NDArray[np.bool_]:
    """``block.std(axis=(1, 2)) > 0`` for finite images (n, L, L) with their maxima and
    minima: true whenever the range is wide enough that a squared deviation cannot
    underflow and no sum can overflow; numpy's ``std`` decides the rest (constant
    images among them)."""
    sure = (high - low >= 1e-20) & (high < 1e30) & (low > -1e30)
    out = sure.copy()
    if not sure.all():
        out[~sure] = block[~sure].std(axis=(1, 2)) > 0
    return out


def raw_stripe_widths(raw: F32) -> F32:
    """Widest edge stripe of each raw image, (n,), with non-finite pixels set to 0 (and
    infinities to the largest float32) as :func:`numpy.nan_to_num` does."""
    pairs = pair_differences(raw)
    if not (np.isfinite(pairs[0]).all() and np.isfinite(pairs[1]).all()):
        pairs = pair_differences(np.nan_to_num(raw))  # a non-finite pixel shows here
    return stripe_widths(pairs).max(axis=1)
