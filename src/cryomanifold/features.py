"""Translation- and rotation-invariant features of particle images.

The method of Da, Yeo, Yang & Loh ("CryoEM 2D classification with translational and
rotational invariant features"): for each image ``g``

1. ``|G| = |FFT(g)|`` — invariant to circular translations of ``g``, and it
   rotates with ``g``;
2. ``T = IFFT(|G|)``, centred (fftshift) — real and centrosymmetric;
3. Zernike moments ``a_nm`` of ``T`` on a disk; the features are ``|a_nm|``,
   invariant to rotations. Odd ``m`` vanish for a centrosymmetric ``T`` and
   ``|a_{n,-m}| = |a_nm|`` for a real ``T``, so only even ``m >= 0`` are computed.

On top of the paper's recipe, the defaults add a soft circular real-space mask
(suppresses neighbouring particles and box-edge artefacts), a soft band limit on
``|G|`` that removes the DC term (it only carries the image mean) and the corners
of the spectrum beyond Nyquist (they are not rotation-covariant), and two fixes
of the discretisation: zero-padding before the FFT (``T`` is about twice the
particle's size and otherwise wraps around the box) and a soft edge on the
Zernike disk. On noise-free projections of T20S and rubisco turned in plane they
lower the rotation-invariance error of ``|a_nm|`` (median relative change) from
3.6% to 1.5% (0.9% with ``pad_factor=2``, at 1.75x the cost; views differ by
~16%); see ``benchmarks/features_speed.py`` for the default ``sqrt`` features.
:data:`PAPER_SETTINGS` switches every addition off.

Invariances, with their limits:

* circular shifts: exact (to float32 rounding) without a mask; with a mask, exact
  as long as the particle stays inside the mask's flat part;
* in-plane rotations about the box centre: up to the interpolation error of the
  rotated image and the pixel sampling of the Zernike disk;
* mirror images: the features **cannot tell a particle from its mirror image**
  (mirroring ``g`` mirrors ``T``, which maps ``a_nm`` to ``(-1)**m * conj(a_nm)``
  for a real ``T``, leaving ``|a_nm|`` unchanged).

Implementation: since ``T`` is linear in ``|G|``, the inverse FFT, the fftshift
and the Zernike projection are folded into one cached real operator acting on the
band-limited half spectrum of ``rfft2``, itself folded by the symmetry of the
square grid (:func:`cryomanifold.zernike.folded_spectrum_operator`); per batch the
work is one zero-padded ``rfft2``, one ``abs``, a gather and four small matrix
products. The spectrum stage (mask, padding, band) lives in
:mod:`cryomanifold.spectrum`; :func:`amplitude_transform` gives ``T`` explicitly
(same result, more work) for inspection and tests.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from cryomanifold.ctf import CTFEvaluator, CTFParams
from cryomanifold.spectrum import (
    amplitude_transform,
    as_real_batch,
    band_weights,
    padded_half_spectrum,
    spectrum_settings,
)
from cryomanifold.zernike import (
    FoldedSpectrumOperator,
    folded_spectrum_operator,
    zernike_indices,
)

__all__ = [
    "PAPER_SETTINGS",
    "InvariantFeaturizer",
    "amplitude_transform",
    "invariant_features",
]

F32 = npt.NDArray[np.float32]
Band = tuple[float | None, float | None]

_FEATURE_NORMS = (None, "l2", "log", "sqrt")

#: The paper's exact choices: no mask, no band limit, the amplitude spectrum, no
#: padding, a hard Zernike disk, no normalisation. For :func:`invariant_features`
#: and :class:`InvariantFeaturizer`: ``invariant_features(images, **PAPER_SETTINGS)``.
PAPER_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {
        "mask_radius": None,
        "band": None,
        "spectrum": "amplitude",
        "spectrum_norm": None,
        "feature_norm": None,
        "pad_factor": 1,
        "disk_taper": 0.0,
    }
)


def _transform_features(feats: F32, feature_norm: str | None, log_scale: float | None) -> F32:
    if feature_norm == "l2":
        norm = np.sqrt(np.sum(feats * feats, axis=1, keepdims=True))
        return (feats / np.where(norm > 0, norm, 1.0)).astype(np.float32, copy=False)
    if feature_norm == "log":
        if log_scale is None:
            scale = feats.mean(axis=1, keepdims=True)
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        else:
            scale = np.float32(log_scale)
        return np.log1p(feats / scale)
    if feature_norm == "sqrt":
        return np.sqrt(feats)
    return feats


def invariant_features(
    images: npt.ArrayLike,
    *,
    n_max: int = 20,
    radius: float | None = None,
    disk_taper: float = 0.1,
    mask_radius: float | None = 0.45,
    mask_width: float = 0.1,
    band: Band | None = (0.0, 1.0),
    band_edge: float = 0.05,
    spectrum: str = "amplitude",
    spectrum_norm: str | None = "l2",
    feature_norm: str | None = "sqrt",
    log_scale: float | None = None,
    pad_factor: float = 1.5,
    ctf: CTFParams | None = None,
    pixel_size_angstrom: float | None = None,
    ctf_floor: float = 0.3,
    batch_size: int = 64,
    workers: int = -1,
    progress: bool = False,
) -> F32:
    """Translation-, rotation- and mirror-invariant features ``|a_nm|`` of ``T``.

    ``T`` is :func:`amplitude_transform` of each image (see it for the mask, band,
    spectrum and padding options) and ``a_nm`` its Zernike moments with even
    ``m >= 0`` (:func:`cryomanifold.zernike.zernike_indices`). The features do not
    distinguish a particle from its mirror image. Images are processed in batches;
    no loop over particles.

    Parameters
    ----------
    images : array_like, shape (n, L, L) or (L, L)
        Real images; not modified.
    n_max : int
        Largest Zernike order; ``d = sum_{n even <= n_max} (n / 2 + 1)`` features
        (66 for 20).
    radius : float, optional
        Radius in pixels of the Zernike disk on ``T``; default ``L / 2`` (``T``
        extends to about twice the particle radius).
    disk_taper : float
        Fraction of the disk radius over which a raised-cosine radial window takes
        ``T`` to 0 at the disk edge before the moments are taken (0: the paper's hard
        disk). The window is radial, so the invariances are unchanged; it removes
        the error of the jagged pixel edge of the disk (rotation-invariance error
        down about 7x with the default padding).
    mask_radius, mask_width, band, band_edge, spectrum, spectrum_norm, pad_factor
        As in :func:`amplitude_transform`.
    feature_norm : {None, "l2", "log", "sqrt"}
        None: ``|a_nm|``; "l2": each feature vector scaled to unit norm; "log":
        ``log1p(|a_nm| / s)`` with ``s = log_scale`` or, if that is None, the
        image's mean ``|a_nm|`` (then the features are also contrast-invariant);
        "sqrt": ``sqrt(|a_nm|)``, which evens out the dynamic range between low and
        high orders without letting noisy high orders dominate as standardising
        each feature does (measured with 10 nearest neighbours on simulated T20S +
        rubisco at 64 px, n_max 30, unstandardised PCA: 0.69 of neighbours within
        10° of the same view against 0.66 for ``|a_nm|`` and 0.45 for the
        standardised n_max 12 features).
    log_scale : float, optional
        Fixed scale for ``feature_norm="log"``.
    ctf : CTFParams, optional
        CTF of each of the ``n`` images. When given, ``|G|`` is divided by
        ``max(|CTF|, ctf_floor)`` before the inverse FFT, so that particles imaged
        at different defocus give the same features (phase flipping cannot do this:
        it leaves ``|G|`` unchanged). The floor keeps the noise near the CTF zeros
        from being amplified more than ``1 / ctf_floor`` times. Measured on
        simulated T20S + rubisco + junk (10-NN accuracy of species/junk in PCA
        space, 64 px): 0.966 without, 0.979 with ``ctf_floor=0.3`` (0.971 at 0.5).
    pixel_size_angstrom : float, optional
        Pixel size of ``images``; required with ``ctf``.
    ctf_floor : float
        Smallest ``|CTF|`` divided by, in (0, 1].
    batch_size : int
        Images per internal batch. Working memory is about ``15 * batch_size *
        (pad_factor * L)**2`` bytes (measured: 9 MB for 64 images of 64 px). The
        default keeps it small enough to stay in cache and be reused without page
        faults; 1024 was measured 1.3x slower, and much smaller batches pay Python's
        per-batch overhead.
    workers : int
        Threads for scipy.fft (-1: all cores).
    progress : bool
        Show a tqdm progress bar over batches (only on a terminal).

    Returns
    -------
    ndarray, shape (n, d), float32

    Raises
    ------
    ValueError
        For invalid options, non-square images, or an image with NaN/inf pixels
        (the message gives its 0-based index in ``images``).
    """
    arr = as_real_batch(images)
    box = arr.shape[-1]
    spec = spectrum_settings(
        box,
        mask_radius=mask_radius,
        mask_width=mask_width,
        band=band,
        band_edge=band_edge,
        spectrum=spectrum,
        spectrum_norm=spectrum_norm,
        pad_factor=pad_factor,
    )
    _require(
        feature_norm in _FEATURE_NORMS,
        f"feature_norm must be one of {_FEATURE_NORMS}; got {feature_norm!r}",
    )
    _require(log_scale is None or log_scale > 0, f"log_scale must be > 0 or None; got {log_scale}")
    _require(int(batch_size) >= 1, f"batch_size must be >= 1; got {batch_size}")
    op = _operator(
        box,
        spec.fft_size,
        spec.band,
        spec.band_edge,
        int(n_max),
        None if radius is None else float(radius),
        float(disk_taper),
    )
    correction = None
    if ctf is not None:
        _require(len(ctf) == arr.shape[0], f"{len(ctf)} CTF entries for {arr.shape[0]} images")
        _require(
            pixel_size_angstrom is not None and pixel_size_angstrom > 0,
            "pixel_size_angstrom is required with ctf",
        )
        _require(0 < ctf_floor <= 1, f"ctf_floor must be in (0, 1]; got {ctf_floor}")
        correction = _CTFCorrection(
            ctf,
            _ctf_evaluator(spec.fft_size, float(pixel_size_angstrom or 1.0), None),
            _ctf_evaluator(spec.fft_size, float(pixel_size_angstrom or 1.0), op),
            ctf_floor,
            power=spectrum == "power",
        )
    n_mom = op.n_moments
    out = np.empty((arr.shape[0], n_mom), dtype=np.float32)
    starts = range(0, arr.shape[0], int(batch_size))
    for start in tqdm(starts, desc="features", unit="batch", disable=None if progress else True):
        batch = arr[start : start + int(batch_size)]
        amp = np.abs(padded_half_spectrum(batch, spec, workers)).reshape(batch.shape[0], -1)
        if spectrum == "power":
            np.square(amp, out=amp)
        if correction is not None:
            correction.apply_shared(amp, start, start + batch.shape[0])
        # frequencies first: the gathered blocks are contiguous (see project)
        amp = amp.T.take(op.indices, axis=0)
        if correction is not None:
            correction.apply_own(amp, start, start + batch.shape[0])
        prod, squared_norm = op.project(amp)
        feats = np.hypot(prod[:n_mom], prod[n_mom:]).T
        if spectrum_norm == "l2":
            norm = np.sqrt(squared_norm)
            feats /= np.where(norm > 0, norm, 1.0)[:, None]
        bad = ~np.isfinite(feats).all(axis=1)
        if bad.any():
            first = start + int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"image {first} (0-based) gives non-finite features: it contains NaN or inf "
                f"pixels ({int(bad.sum())} such images in this batch); remove or repair them"
            )
        out[start : start + batch.shape[0]] = _transform_features(feats, feature_norm, log_scale)
    return out


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@functools.lru_cache(maxsize=16)
def _operator(
    box: int,
    size: int,
    band: Band | None,
    band_edge: float,
    n_max: int,
    radius: float | None,
    disk_taper: float,
) -> FoldedSpectrumOperator:
    """The band-limited, folded Zernike operator of the half spectrum (cached)."""
    weights = band_weights(size, band, band_edge)
    return folded_spectrum_operator(
        box, n_max, fft_size=size, weights=weights, radius=radius, disk_taper=disk_taper
    )


@functools.lru_cache(maxsize=16)
def _ctf_evaluator(
    fft_size: int, pixel_size_angstrom: float, op: FoldedSpectrumOperator | None
) -> CTFEvaluator:
    """The CTF on the ``rfft2`` half grid of the padded size, or at the frequencies that
    ``op`` gathers from it (cached: ~0.2 ms to build)."""
    ky = sfft.fftfreq(fft_size, d=pixel_size_angstrom)[:, None]
    kx = sfft.rfftfreq(fft_size, d=pixel_size_angstrom)[None, :]
    if op is None:
        return CTFEvaluator(kx, ky)
    ky, kx = (np.broadcast_to(k, (fft_size, fft_size // 2 + 1)).ravel() for k in (ky, kx))
    return CTFEvaluator(kx[op.indices], ky[op.indices])


class _CTFCorrection:
    """Divides spectra by ``max(|CTF|, floor)`` (squared for the power spectrum).

    Particles of one micrograph share a CTF: the distinct CTFs are found once and,
    when they are few, their divisors on the half grid are computed once per call
    and applied to runs of particles before the gather (:meth:`apply_shared`).
    Otherwise (per-particle CTFs) each batch evaluates its CTFs only at the gathered
    frequencies, after the gather (:meth:`apply_own`).
    """

    #: Largest table of shared divisors kept for a call, bytes.
    MAX_TABLE_BYTES = 64 * 2**20

    def __init__(
        self,
        ctf: CTFParams,
        on_grid: CTFEvaluator,
        gathered: CTFEvaluator,
        floor: float,
        *,
        power: bool,
    ) -> None:
        self.gathered = gathered
        self.unique, self.inverse = ctf.unique()
        self.floor = np.float32(floor)
        self.power = power
        shared = len(self.unique) <= max(1, len(ctf) // 8)
        small = len(self.unique) * on_grid.size * 4 <= self.MAX_TABLE_BYTES
        self.table = None
        if shared and small:
            self.table = self._divisor(on_grid(self.unique).reshape(len(self.unique), -1))

    def apply_shared(self, amp: F32, start: int, stop: int) -> None:
        """Divide the half spectra ``amp``, shape (stop - start, N * (N // 2 + 1)), of
        particles ``start:stop`` in place, if their CTFs are shared (else do nothing)."""
        if self.table is None:
            return
        inverse = self.inverse[start:stop]
        # runs of particles sharing a CTF (one micrograph each, in the usual file order)
        bounds = [0, *(np.flatnonzero(np.diff(inverse)) + 1).tolist(), inverse.size]
        if len(bounds) - 1 > max(1, inverse.size // 4):
            amp /= self.table.take(inverse, axis=0)
            return
        for lo, hi in itertools.pairwise(bounds):
            amp[lo:hi] /= self.table[inverse[lo]]

    def apply_own(self, amp: F32, start: int, stop: int) -> None:
        """Divide the gathered spectra ``amp``, shape (P, stop - start), of particles
        ``start:stop`` in place, if their CTFs are not shared (else do nothing)."""
        if self.table is not None:
            return
        params = self.unique.subset(self.inverse[start:stop])
        amp /= self._divisor(self.gathered(params, frequencies_first=True))

    def _divisor(self, values: F32) -> F32:
        np.abs(values, out=values)
        np.maximum(values, self.floor, out=values)
        if self.power:
            np.square(values, out=values)
        return values


class InvariantFeaturizer(TransformerMixin, BaseEstimator):
    """scikit-learn transformer: particle images to invariant features.

    Parameters are those of :func:`invariant_features` (see there); ``__init__``
    only stores them. ``fit`` validates them and the images' box size and returns
    ``self``; ``transform`` computes the features. Input images are ``(n, L, L)``
    or flattened ``(n, L * L)``. The features are invariant to translations,
    in-plane rotations and mirroring (see :mod:`cryomanifold.features`).

    Attributes
    ----------
    box_size_ : int
        Box side ``L`` seen in ``fit``.
    n_features_in_ : int
        ``L * L``.
    n_features_out_ : int
        Number of features ``d``.
    """

    def __init__(
        self,
        *,
        n_max: int = 20,
        radius: float | None = None,
        disk_taper: float = 0.1,
        mask_radius: float | None = 0.45,
        mask_width: float = 0.1,
        band: Band | None = (0.0, 1.0),
        band_edge: float = 0.05,
        spectrum: str = "amplitude",
        spectrum_norm: str | None = "l2",
        feature_norm: str | None = "sqrt",
        log_scale: float | None = None,
        pad_factor: float = 1.5,
        batch_size: int = 64,
        workers: int = -1,
    ) -> None:
        self.n_max = n_max
        self.radius = radius
        self.disk_taper = disk_taper
        self.mask_radius = mask_radius
        self.mask_width = mask_width
        self.band = band
        self.band_edge = band_edge
        self.spectrum = spectrum
        self.spectrum_norm = spectrum_norm
        self.feature_norm = feature_norm
        self.log_scale = log_scale
        self.pad_factor = pad_factor
        self.batch_size = batch_size
        self.workers = workers

    def _images(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        arr = np.asarray(X)
        if arr.ndim == 2:
            side = math.isqrt(arr.shape[1])
            if side * side != arr.shape[1]:
                raise ValueError(
                    f"flattened images need a square number of pixels; got {arr.shape[1]}"
                )
            arr = arr.reshape(arr.shape[0], side, side)
        return as_real_batch(arr)

    def fit(self, X: npt.ArrayLike, y: object = None) -> InvariantFeaturizer:
        """Validate the parameters and the box size of ``X``; returns ``self``."""
        arr = self._images(X)
        # Validate every option on one image (cheap) so errors surface in fit.
        invariant_features(arr[:1], **self.get_params())
        self.box_size_ = int(arr.shape[-1])
        self.n_features_in_ = self.box_size_**2
        self.n_features_out_ = len(zernike_indices(self.n_max))
        return self

    def transform(self, X: npt.ArrayLike) -> F32:
        """Features of ``X``, shape (n, n_features_out_), float32."""
        check_is_fitted(self, "n_features_out_")
        arr = self._images(X)
        if arr.shape[-1] != self.box_size_:
            raise ValueError(
                f"images have box {arr.shape[-1]} but the featurizer was fitted on box "
                f"{self.box_size_}; refit or resample the images"
            )
        return invariant_features(arr, **self.get_params())

    def get_feature_names_out(self, input_features: object = None) -> npt.NDArray[np.object_]:
        """Names ``zernike_n{n}_m{m}`` of the output features."""
        check_is_fitted(self, "n_features_out_")
        names = [f"zernike_n{n}_m{m}" for n, m in zernike_indices(self.n_max)]
        return np.asarray(names, dtype=object)
