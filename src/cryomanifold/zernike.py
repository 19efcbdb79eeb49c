"""Zernike polynomials and Zernike moments of square images.

The Zernike polynomials ``V_nm(rho, theta) = R_n^m(rho) exp(i m theta)`` are
orthogonal on the unit disk::

    integral_disk V_nm conj(V_pq) dA = pi / (n + 1) * delta_np * delta_mq,

so the moments ``a_nm = (n + 1) / pi * integral_disk f conj(V_nm) dA`` expand
``f = sum a_nm V_nm``. On a pixel grid the integral is the sum over the pixels whose
centre lies strictly inside a disk of ``radius`` pixels about the box centre
``(L // 2, L // 2)`` (row, column); the pixel area in unit-disk coordinates is
``1 / radius**2``. Angles are ``theta = arctan2(row - L // 2, column - L // 2)``.

Invariances of the moments (used by :mod:`cryomanifold.features`):

* rotating an image by ``alpha`` about the box centre (counter-clockwise in the
  (column, row) plane) multiplies ``a_nm`` by ``exp(-1j * m * alpha)``, so
  ``|a_nm|`` is rotation-invariant (exactly for the continuous disk, up to the
  pixel sampling of the disk on a grid);
* for a real image ``a_{n,-m} = conj(a_nm)``, so only ``m >= 0`` is computed;
* for a centrosymmetric image (``f(-x) = f(x)``) every moment with odd ``m``
  vanishes, which is why ``even_m_only=True`` is the default here.

Only ``n - m`` even gives a polynomial; with ``even_m_only`` ``n`` is even too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
import scipy.special as sspecial

from cryomanifold.spectrum import rfft_multiplicity

__all__ = [
    "FoldedSpectrumOperator",
    "even_spectrum_operator",
    "folded_spectrum_operator",
    "zernike_basis",
    "zernike_indices",
    "zernike_moments",
    "zernike_radial",
]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]


def zernike_indices(n_max: int, *, even_m_only: bool = True) -> npt.NDArray[np.int64]:
    """The ``(n, m)`` orders of the Zernike moments up to radial order ``n_max``.

    Parameters
    ----------
    n_max : int
        Largest radial order ``n`` (inclusive, >= 0).
    even_m_only : bool
        Keep only even ``m`` (then ``n`` is even too): the moments that can be
        non-zero for a centrosymmetric image.

    Returns
    -------
    ndarray, shape (n_moments, 2), int64
        Rows ``(n, m)`` with ``0 <= m <= n <= n_max`` and ``n - m`` even, sorted by
        ``n`` then ``m``. With ``even_m_only`` there are
        ``sum_{n even <= n_max} (n / 2 + 1)`` rows (66 for ``n_max = 20``).
    """
    n_max = int(n_max)
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0; got {n_max}")
    step = 2 if even_m_only else 1
    rows = [(n, m) for n in range(0, n_max + 1, step) for m in range(n % 2, n + 1, 2)]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def zernike_radial(n: int, m: int, rho: npt.ArrayLike) -> F64:
    """The radial Zernike polynomial ``R_n^m(rho)``, evaluated stably.

    Uses ``R_n^m(rho) = (-1)**k * rho**m * P_k^(m, 0)(1 - 2 rho**2)`` with
    ``k = (n - m) / 2`` and the Jacobi polynomial ``P`` from scipy (a three-term
    recurrence), which stays accurate for large ``n`` where the explicit factorial
    sum loses digits to cancellation.

    Parameters
    ----------
    n, m : int
        Orders with ``0 <= |m| <= n`` and ``n - |m|`` even.
    rho : array_like
        Radii in unit-disk coordinates (any shape).

    Returns
    -------
    ndarray, float64, shape of ``rho``. ``R_n^m(1) = 1``.
    """
    m = abs(int(m))
    n = int(n)
    if m > n or (n - m) % 2:
        raise ValueError(f"Zernike order needs 0 <= |m| <= n and n - |m| even; got n={n}, m={m}")
    k = (n - m) // 2
    r = np.asarray(rho, dtype=np.float64)
    jac = sspecial.eval_jacobi(k, float(m), 0.0, 1.0 - 2.0 * r * r)
    return np.asarray((-1.0) ** k * r**m * jac, dtype=np.float64)


def _resolve_radius(box_size: int, radius: float | None) -> float:
    rad = box_size / 2.0 if radius is None else float(radius)
    if not rad > 0:
        raise ValueError(f"radius must be positive (pixels); got {radius}")
    return rad


def _disk_pixels(box_size: int, radius: float) -> tuple[npt.NDArray[np.int64], F64, F64]:
    """Flat indices, normalised radii and angles of the pixels inside the disk."""
    offsets = np.arange(box_size) - box_size // 2
    y, x = np.meshgrid(offsets, offsets, indexing="ij")
    r = np.hypot(x, y)
    inside = (r < radius).ravel()
    idx = np.flatnonzero(inside)
    rho = r.ravel()[idx] / radius
    theta = np.arctan2(y, x).ravel()[idx].astype(np.float64)
    return idx.astype(np.int64), rho, theta


def _conj_basis(indices: npt.NDArray[np.int64], rho: F64, theta: F64, radius: float) -> C128:
    """``conj(V_nm) * (n + 1) / pi / radius**2`` at the given points, shape (M, P)."""
    out = np.empty((len(indices), rho.size), dtype=np.complex128)
    for j, (n, m) in enumerate(indices):
        norm = (n + 1) / np.pi / radius**2
        out[j] = norm * zernike_radial(int(n), int(m), rho) * np.exp(-1j * m * theta)
    return out


@functools.lru_cache(maxsize=16)
def _basis_cached(box_size: int, n_max: int, radius: float, even_m_only: bool) -> C128:
    idx, rho, theta = _disk_pixels(box_size, radius)
    nm = zernike_indices(n_max, even_m_only=even_m_only)
    full = np.zeros((len(nm), box_size * box_size), dtype=np.complex128)
    full[:, idx] = _conj_basis(nm, rho, theta, radius)
    full.setflags(write=False)
    return full


def zernike_basis(
    box_size: int, n_max: int, *, radius: float | None = None, even_m_only: bool = True
) -> C128:
    """The Zernike moment operator on a ``box_size`` square grid.

    Parameters
    ----------
    box_size : int
        Box side ``L`` in pixels.
    n_max : int
        Largest radial order.
    radius : float, optional
        Disk radius in pixels about ``(L // 2, L // 2)``; default ``L / 2``.
        Pixels whose centre is not strictly inside the disk get 0.
    even_m_only : bool
        Only even ``m`` (see :func:`zernike_indices`).

    Returns
    -------
    ndarray, shape (n_moments, L * L), complex128, read-only
        Row ``j`` is ``conj(V_nm) * (n + 1) / pi / radius**2`` on the flattened
        grid, so ``images.reshape(n, L * L) @ basis.T`` are the moments. Cached:
        repeated calls return the same array.
    """
    if box_size < 1:
        raise ValueError(f"box_size must be positive; got {box_size}")
    return _basis_cached(
        int(box_size), int(n_max), _resolve_radius(box_size, radius), bool(even_m_only)
    )


def _radial_window(rho: F64, taper: float) -> F64:
    """1 inside, a raised cosine to 0 at ``rho = 1`` over the outer ``taper`` of the radius."""
    if taper <= 0:
        return np.ones_like(rho)
    return 0.5 * (1.0 - np.cos(np.pi * np.clip((1.0 - rho) / taper, 0.0, 1.0)))


def _windowed_basis(
    box_size: int, n_max: int, radius: float, even_m_only: bool, disk_taper: float
) -> tuple[npt.NDArray[np.int64], C128]:
    """Disk pixel indices (P,) and the windowed conjugate basis (M, P)."""
    if not 0 <= disk_taper <= 1:
        raise ValueError(f"disk_taper must be in [0, 1]; got {disk_taper}")
    idx, rho, theta = _disk_pixels(box_size, radius)
    basis = _conj_basis(zernike_indices(n_max, even_m_only=even_m_only), rho, theta, radius)
    return idx, basis * _radial_window(rho, disk_taper)[None, :]


@functools.lru_cache(maxsize=16)
def _disk_operator(
    box_size: int, n_max: int, radius: float, even_m_only: bool, disk_taper: float, dtype: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.floating]]:
    """Disk pixel indices and the real operator ``[Re B | Im B]`` of shape (P, 2M)."""
    idx, basis = _windowed_basis(box_size, n_max, radius, even_m_only, disk_taper)
    op = np.ascontiguousarray(np.concatenate([basis.real, basis.imag], axis=0).T, dtype=dtype)
    idx.setflags(write=False)
    op.setflags(write=False)
    return idx, op


def zernike_moments(
    images: npt.ArrayLike,
    n_max: int,
    *,
    radius: float | None = None,
    even_m_only: bool = True,
    disk_taper: float = 0.0,
) -> npt.NDArray[np.complexfloating]:
    """Zernike moments ``a_nm`` (``m >= 0``) of a batch of real square images.

    One batched real matrix product over the pixels inside the disk; no loop over
    images. Rotating an image about ``(L // 2, L // 2)`` by ``alpha`` multiplies
    ``a_nm`` by ``exp(-1j * m * alpha)``.

    Parameters
    ----------
    images : array_like, shape (n, L, L) or (L, L)
        Real images; not modified.
    n_max : int
        Largest radial order.
    radius : float, optional
        Disk radius in pixels; default ``L / 2``.
    even_m_only : bool
        Only even ``m``; the odd-``m`` moments of centrosymmetric images are 0.
    disk_taper : float
        Weight the image with a radial window that falls from 1 to 0 as a raised
        cosine over the outer ``disk_taper`` fraction of the radius (0: plain Zernike
        moments). The window is radial, so the rotation behaviour is unchanged,
        and it removes the error of the jagged pixel edge of the disk for images
        that do not vanish there.

    Returns
    -------
    ndarray, shape (n, n_moments), complex64 for float32 (or smaller) input,
    complex128 for float64 input. Columns follow :func:`zernike_indices`; a 2-D
    input gives shape (1, n_moments).
    """
    arr = np.asarray(images)
    if np.iscomplexobj(arr):
        raise TypeError("zernike_moments expects real images; got a complex array")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"images must have shape (n, L, L) with square boxes; got {arr.shape}")
    real_dtype = np.float64 if arr.dtype == np.float64 else np.float32
    box = arr.shape[-1]
    idx, op = _disk_operator(
        box,
        int(n_max),
        _resolve_radius(box, radius),
        bool(even_m_only),
        float(disk_taper),
        np.dtype(real_dtype).name,
    )
    pixels: npt.NDArray[np.floating] = np.asarray(
        arr.reshape(arr.shape[0], box * box)[:, idx], dtype=real_dtype
    )
    prod = pixels @ op
    n_mom = op.shape[1] // 2
    out = np.empty(
        (prod.shape[0], n_mom), dtype=np.complex128 if real_dtype == np.float64 else np.complex64
    )
    out.real = prod[:, :n_mom]
    out.imag = prod[:, n_mom:]
    return out


@functools.lru_cache(maxsize=8)
def _even_spectrum_cached(
    box_size: int, n_max: int, fft_size: int, radius: float, disk_taper: float
) -> C128:
    # With A even, T(d) = N**-2 sum_k A(k) cos(2 pi k.d / N), so a_j = sum_k A(k) C_j(k)
    # with C_j(k) = (F_j(k) + F_j(-k)) / (2 N**2), F_j = fft2 of B_j placed at d mod N.
    size = fft_size
    idx, basis = _windowed_basis(box_size, n_max, radius, True, disk_taper)
    dy = (idx // box_size - box_size // 2) % size
    dx = (idx % box_size - box_size // 2) % size
    out = np.empty((size, size // 2 + 1, basis.shape[0]), dtype=np.complex128)
    mult = rfft_multiplicity(size) / (2.0 * size * size)
    chunk = max(1, 2**20 // (size * size))
    for start in range(0, basis.shape[0], chunk):
        part = basis[start : start + chunk]
        grid = np.zeros((part.shape[0], size, size), dtype=np.complex128)
        grid[:, dy, dx] = part
        f = sfft.fft2(grid, workers=-1)
        f += np.roll(f[:, ::-1, ::-1], 1, axis=(1, 2))  # F(k) + F(-k)
        out[:, :, start : start + part.shape[0]] = np.moveaxis(
            f[:, :, : size // 2 + 1] * mult, 0, -1
        )
    out.setflags(write=False)
    return out


def even_spectrum_operator(
    box_size: int,
    n_max: int,
    *,
    fft_size: int | None = None,
    radius: float | None = None,
    disk_taper: float = 0.0,
) -> C128:
    """Zernike moments of the inverse FFT of an even spectrum, as a linear map.

    For a real spectrum ``A`` of an ``N x N`` grid with ``A(k) = A(-k)`` (such as
    ``|FFT(g)|`` of a real image), given on the ``rfft2`` half grid, ::

        np.tensordot(A_half, op, axes=2)
        == zernike_moments(T, n_max, radius=radius, disk_taper=disk_taper)

    where ``T = fftshift(irfft2(A_half, s=(N, N)))`` cropped to the central
    ``box_size`` pixels (centre ``N // 2`` becomes ``box_size // 2``). ``T`` is
    centrosymmetric, so only even ``m`` are included. This skips the inverse FFT.

    Parameters
    ----------
    box_size : int
        Side ``L`` of the cropped ``T`` that the moments are taken on.
    n_max : int
        Largest radial order.
    fft_size : int, optional
        ``N >= L``; default ``L``.
    radius, disk_taper
        As in :func:`zernike_moments`.

    Returns
    -------
    ndarray, shape (N, N // 2 + 1, n_moments), complex128, read-only; cached.
    """
    size = box_size if fft_size is None else int(fft_size)
    if size < box_size:
        raise ValueError(f"fft_size ({size}) must be >= box_size ({box_size})")
    return _even_spectrum_cached(
        int(box_size), int(n_max), size, _resolve_radius(box_size, radius), float(disk_taper)
    )


#: The sums and differences of the four values of an orbit (rows: the four blocks).
_HADAMARD = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [1, -1, -1, 1], [1, -1, 1, -1]], np.float32)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class FoldedSpectrumOperator:
    """:func:`even_spectrum_operator` restricted to a band and folded by the grid's symmetry.

    The square frequency grid is symmetric under the rotation ``R: (ky, kx) ->
    (kx, -ky)`` and the transposition ``M: (ky, kx) -> (kx, ky)``; the operator's
    coefficients follow ``C(R k) = s C(k)`` and ``C(M k) = s conj(C(k))`` with
    ``s = (-1)**(m / 2)`` (the Zernike basis turns by ``exp(i m pi / 2)``, and an
    even spectrum does not tell ``k`` from ``-k``). Each orbit ``{±k, ±Rk, ±Mk,
    ±RMk}`` therefore enters the moments through four sums and differences of its
    four values, and the moments cost a quarter of the plain matrix product.

    Attributes
    ----------
    indices : ndarray, shape (4 * G,), int64
        Flat indices into the ``(N, N // 2 + 1)`` half grid of the values to gather,
        in four blocks of ``G`` orbits: the values at ``k``, ``Rk``, ``Mk``, ``RMk``.
    norm_weights : ndarray, shape (4 * G,), float32
        The weight of each gathered value in the squared L2 norm over the full
        frequency plane (see :meth:`project`).
    matrices : tuple of 4 ndarrays, float32
        The real operators, shape (c_i, G), of the four sums and differences.
    columns : tuple of 4 ndarrays of int64
        Rows of the ``[Re | Im]`` moments, (2M,), that each block fills.
    n_moments : int
        ``M``.
    """

    indices: npt.NDArray[np.int64]
    norm_weights: npt.NDArray[np.float32]
    matrices: tuple[npt.NDArray[np.float32], ...]
    columns: tuple[npt.NDArray[np.int64], ...]
    n_moments: int

    def project(
        self, values: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Moments and squared norms of gathered spectra, frequencies first.

        Parameters
        ----------
        values : ndarray, shape (4 * G, b), float32
            The even spectra ``A`` of ``b`` images at :attr:`indices` (for example
            ``A.reshape(b, -1).T.take(indices, axis=0)``), possibly divided by any
            even factor already. Frequencies come first so that each block is one
            contiguous matrix.

        Returns
        -------
        moments : ndarray, shape (2M, b), float32
            ``[Re a | Im a]`` with ``a = tensordot(A * weights,
            even_spectrum_operator(...), axes=2)``.
        squared_norm : ndarray, shape (b,), float32
            Sum of ``(weights * A)**2`` over the full frequency plane.
        """
        g = self.indices.size // 4
        sums = _HADAMARD @ values.reshape(4, -1)  # (4, G * b)
        out = np.zeros((2 * self.n_moments, values.shape[1]), dtype=np.float32)
        for part, matrix, rows in zip(sums, self.matrices, self.columns, strict=True):
            out[rows] = matrix @ part.reshape(g, -1)
        squared = self.norm_weights @ np.square(values)
        return out, squared


def _half_grid_entry(ky: npt.NDArray[np.int64], kx: npt.NDArray[np.int64], size: int) -> Any:
    """Smallest flat index of the half-grid entries holding ``k`` or ``-k`` (mod N)."""
    ky, kx = ky % size, kx % size
    stored = kx <= size // 2
    ky = np.where(stored, ky, -ky % size)
    kx = np.where(stored, kx, -kx % size)
    index = ky * (size // 2 + 1) + kx
    # the first and (even N) last columns hold both k and -k
    edge = (kx == 0) | (2 * kx == size)
    return np.where(edge, np.minimum(index, (-ky % size) * (size // 2 + 1) + kx), index)


def folded_spectrum_operator(
    box_size: int,
    n_max: int,
    *,
    fft_size: int,
    weights: npt.ArrayLike,
    radius: float | None = None,
    disk_taper: float = 0.0,
) -> FoldedSpectrumOperator:
    """:func:`even_spectrum_operator` times ``weights``, folded by the grid's symmetry.

    Parameters
    ----------
    box_size, n_max, fft_size, radius, disk_taper
        As in :func:`even_spectrum_operator`.
    weights : array_like, shape (N, N // 2 + 1)
        Non-negative weights on the half grid that depend on ``|k|`` only (a band);
        frequencies with weight 0 are left out.

    Returns
    -------
    FoldedSpectrumOperator
    """
    size = int(fft_size)
    op = even_spectrum_operator(
        box_size, n_max, fft_size=size, radius=radius, disk_taper=disk_taper
    ).reshape(size * (size // 2 + 1), -1)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (size, size // 2 + 1) or np.any(w < 0):
        raise ValueError(f"weights must be >= 0 with shape {(size, size // 2 + 1)}; got {w.shape}")
    ky = np.repeat(np.rint(sfft.fftfreq(size) * size).astype(np.int64), size // 2 + 1)
    kx = np.tile(np.arange(size // 2 + 1, dtype=np.int64), size)
    # pairs {k, -k} of k, Rk, Mk and RMk, named by their smallest half-grid entry
    pairs = np.stack(
        [
            _half_grid_entry(ky, kx, size),
            _half_grid_entry(kx, -ky, size),
            _half_grid_entry(kx, ky, size),
            _half_grid_entry(ky, -kx, size),
        ]
    )
    live = w.ravel() > 0
    coeffs = np.zeros_like(op)
    np.add.at(coeffs, pairs[0, live], op[live] * w.ravel()[live, None])
    entries = np.arange(ky.size)
    reps = np.flatnonzero(live & (pairs[0] == entries) & (pairs[0] == pairs.min(axis=0)))
    slots = pairs[:, reps]  # (4, G)
    repeats = (slots[:, None, :] == slots[None, :, :]).sum(axis=1)  # (4, G)
    distinct = (1.0 / repeats).sum(axis=0)
    folded = coeffs[reps] * (distinct / 4.0)[:, None]
    self_conjugate = (2 * ky[slots] % size == 0) & (2 * kx[slots] % size == 0)
    norm_w = np.where(self_conjugate, 1.0, 2.0) * w.ravel()[slots] ** 2 / repeats
    sign = np.where(zernike_indices(n_max)[:, 1] % 4 == 0, 1, -1)
    m_nonzero = zernike_indices(n_max)[:, 1] > 0
    n_mom = sign.size
    picks = (sign > 0, (sign > 0) & m_nonzero, sign < 0, sign < 0)
    matrices = tuple(
        np.ascontiguousarray((folded.imag if part % 2 else folded.real)[:, pick].T, np.float32)
        for part, pick in enumerate(picks)
    )
    columns = tuple(
        np.flatnonzero(pick) + (n_mom if part % 2 else 0) for part, pick in enumerate(picks)
    )
    result = FoldedSpectrumOperator(
        slots.ravel().astype(np.int64),
        norm_w.ravel().astype(np.float32),
        matrices,
        columns,
        n_mom,
    )
    frozen: list[npt.NDArray[Any]] = [result.indices, result.norm_weights]
    for arr in [*frozen, *matrices, *columns]:
        arr.setflags(write=False)
    return result
