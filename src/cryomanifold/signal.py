"""Is there a particle in the box? A calculated signal-presence test.

:func:`signal_zscore` compares the energy of the CTF-filtered image in a central disk
with that in the outer ring, as a z-score under the null hypothesis "stationary
Gaussian noise with this image's own (rotationally averaged) power spectrum": shot
noise and ice under this particle's CTF. The null's variance is computed exactly from
the noise autocovariance (no simulation, no seed), so the statistic is about N(0, 1)
for an empty box whatever the dose, the defocus or the box. A junk sign of
:mod:`cryomanifold.junk_signs` (``signal_z``), and the reason a class of pure noise is
never shown as a particle (:mod:`cryomanifold.stages.junk`).
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams, ctf_2d
from cryomanifold.preprocess import as_image_batch, radial_distance
from cryomanifold.spectrum import half_irfft2

__all__ = [
    "BLOCK_PIXELS",
    "block_size",
    "filter_table",
    "signal_radii",
    "signal_zscore",
    "signal_zscore_from_spectrum",
    "zscore_block",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]

#: Default radius of the particle disk and start of the outer ring, fractions of L.
INNER_FRACTION = 0.3
OUTER_FRACTION = 0.42

#: Pixels per block of images worked through at a time (64 images of 64 px): a block's
#: intermediate arrays stay in the CPU cache, several times faster than whole batches.
#: No result depends on it.
BLOCK_PIXELS = 64 * 64 * 64


def block_size(box: int) -> int:
    """Images of side ``box`` per block (:data:`BLOCK_PIXELS`)."""
    return max(1, BLOCK_PIXELS // (box * box))


def filter_table(
    ctf: CTFParams | None, box: int, pixel_size_angstrom: float
) -> tuple[F32, npt.NDArray[np.intp] | None]:
    """The matched filter of :func:`signal_zscore` on the rfft2 grid, once per distinct CTF.

    Returns
    -------
    table : ndarray, shape (u, L, L // 2 + 1), float32
        ``|CTF| * band`` of each of the ``u`` distinct CTFs (particles of one
        micrograph share theirs); the band alone (u = 1) without ``ctf``.
    inverse : ndarray of intp, shape (n,), or None
        The row of ``table`` of each particle; None without ``ctf`` (one row for all).
    """
    band = _band(box)
    if ctf is None:
        return band[None], None
    unique, inverse = ctf.unique()
    table = np.abs(ctf_2d(unique, box, pixel_size_angstrom)).astype(np.float32) * band
    return table, np.asarray(inverse, dtype=np.intp).reshape(-1)


@functools.lru_cache(maxsize=16)
def _band(box: int) -> F32:
    """The band of the test: Fourier rings 2 to L / 2, (L, L // 2 + 1) float32, 0 or 1."""
    ring = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) * box
    out = ((ring >= 2) & (ring <= box / 2)).astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=16)
def _ring_operator(box: int) -> tuple[F32, npt.NDArray[np.intp]]:
    """Ring averaging on the rfft2 grid: ``(power @ op)[:, r]`` is the mean over ring
    ``r`` (each half-grid sample counted as often as it stands in the full grid), and
    the ring index of every sample, for putting the profile back on the grid."""
    ring = np.rint(
        np.hypot((sfft.fftfreq(box) * box)[:, None], np.arange(box // 2 + 1)[None, :])
    ).astype(np.intp)
    mult = np.full(ring.shape, 2.0)
    mult[:, 0] = 1.0
    if box % 2 == 0:
        mult[:, -1] = 1.0
    n_rings = int(ring.max()) + 1
    counts = np.bincount(ring.ravel(), mult.ravel(), n_rings)
    op = np.zeros((ring.size, n_rings))
    op[np.arange(ring.size), ring.ravel()] = mult.ravel() / counts[ring.ravel()]
    out = np.ascontiguousarray(op, dtype=np.float32), ring.ravel()
    for arr in out:
        arr.setflags(write=False)
    return out


def _radial_profile_spectrum(power: npt.NDArray[np.floating]) -> F32:
    """Rotational average of rfft2 power spectra (n, L, L // 2 + 1), put back on the grid."""
    n, box = power.shape[0], power.shape[1]
    op, ring = _ring_operator(box)
    profile = power.reshape(n, -1).astype(np.float32, copy=False) @ op  # (n, n_rings)
    return np.take(profile, ring, axis=1).reshape(power.shape)  # C order, unlike [:, ring]


def signal_zscore(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    ctf: CTFParams | None = None,
    radius_px: float | None = None,
    outer_px: float | None = None,
) -> F32:
    """Centred signal of each image as a z-score against stationary noise.

    The image is filtered with ``|CTF|`` (the matched filter of a CTF-modulated
    signal in white noise; a flat band without ``ctf``) above the two lowest
    Fourier rings (ice gradients, normalisation). ``t = log(E_in / E_out)`` compares
    the mean energy per pixel in the central disk and in the outer ring. Under the
    null hypothesis "stationary Gaussian noise with this image's rotationally
    averaged power spectrum" (shot noise and ice, under this particle's CTF), the
    variance of each energy is ``2 sum_{x, y in A} C(x - y)^2`` with ``C`` the
    autocovariance of the filtered noise, which gives the standard deviation of
    ``t`` exactly, with no simulation and no seed. The image's own spectrum
    includes the particle's power, which makes the test slightly conservative.

    Measured on simulated CTF-modulated shot noise on ice (200 kV, 3.54 Å/px,
    1 µm defocus): mean 0.0, standard deviation 0.99.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Prepared (not phase-flipped) images.
    pixel_size_angstrom : float
    ctf : CTFParams, optional
        CTF of the ``n`` images.
    radius_px : float, optional
        Radius of the central disk, pixels; default 0.3 L.
    outer_px : float, optional
        Inner radius of the outer ring, pixels; default ``max(0.42 L, radius_px + 2)``
        capped at 0.45 L.

    Returns
    -------
    ndarray, shape (n,), float32
        About N(0, 1) for noise; positive when the centre carries more energy than
        the noise gives; negative when the edge carries structure.
    """
    imgs = as_image_batch(images)
    return signal_zscore_from_spectrum(
        np.asarray(sfft.rfft2(imgs), dtype=np.complex64),
        imgs.shape[-1],
        pixel_size_angstrom=pixel_size_angstrom,
        ctf=ctf,
        radius_px=radius_px,
        outer_px=outer_px,
    )


def signal_radii(box: int, radius_px: float | None, outer_px: float | None) -> tuple[float, float]:
    """Radius of the disk and inner radius of the ring of :func:`signal_zscore`, pixels."""
    r_in = INNER_FRACTION * box if radius_px is None else float(radius_px)
    r_in = min(max(r_in, 2.0), 0.4 * box)
    r_out = max(OUTER_FRACTION * box, r_in + 2.0) if outer_px is None else float(outer_px)
    return r_in, min(r_out, 0.45 * box)


@functools.lru_cache(maxsize=32)
def _signal_regions(box: int, r_in: float, r_out: float) -> tuple[F32, F64, F32]:
    """The disk and the ring of the test, and what the null variance needs of them.

    Returns the flat masks ``(L * L, 2)``, their areas ``(2,)``, and their self-overlaps
    ``(A * A)(d)`` on rows ``0 .. L // 2`` of the displacement grid ``((L // 2 + 1) * L,
    2)``, doubled on the rows whose mirror ``-d`` is another row: the overlaps and the
    autocovariance are point-symmetric, so the sum over the whole grid needs only these
    rows.
    """
    r = radial_distance(box)
    masks = np.stack([(r < r_in).ravel(), (r > r_out).ravel()], axis=1).astype(np.float64)

    def overlap(region: F64) -> F64:
        half = sfft.irfft2(np.abs(sfft.rfft2(region)) ** 2, s=(box, box))[: box // 2 + 1]
        half[1 : (box + 1) // 2] *= 2.0  # these rows stand for their mirrors -d too
        return half.ravel()

    folded = np.stack([overlap(m.reshape(box, box)) for m in masks.T], axis=1)
    out = masks.astype(np.float32), masks.sum(axis=0), folded.astype(np.float32)
    for arr in out:
        arr.setflags(write=False)
    return out


def zscore_block(
    spec: npt.NDArray[np.complex64],
    filt: F32,
    box: int,
    r_in: float,
    r_out: float,
    workers: int = -1,
) -> F32:
    """:func:`signal_zscore` of a few images from their rfft2 spectra and their filters.

    Parameters
    ----------
    spec : ndarray, shape (b, L, L // 2 + 1), complex64
    filt : ndarray, shape (b, L, L // 2 + 1) or (L, L // 2 + 1), float32
        ``|CTF| * band`` of each image (:func:`filter_table`).
    box : int
    r_in, r_out : float
        Radius of the disk and inner radius of the ring, pixels (:func:`signal_radii`).
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (b,), float32

    Notes
    -----
    Best on blocks of some tens of images, whose arrays stay in the CPU cache.
    """
    b = spec.shape[0]
    masks, area, folded = _signal_regions(box, r_in, r_out)
    energy = half_irfft2(spec * filt, box, overwrite_x=True, workers=workers).reshape(b, -1)
    energy *= energy
    e = (energy @ masks).astype(np.float64) / area  # mean energy per pixel, disk and ring
    # autocovariance of the filtered null noise, per pixel: its spectrum is real, so
    # rows 0 .. L // 2 of it come from a real FFT down the columns and an irfft along
    # the rows (each row's spectrum is Hermitian), and the rest are their mirrors
    power = spec.real * spec.real + spec.imag * spec.imag
    noise = _radial_profile_spectrum(power)
    noise *= filt * filt
    half = sfft.rfft(noise, axis=-2, workers=workers)
    np.conjugate(half, out=half)
    cov = sfft.irfft(half, n=box, axis=-1, workers=workers, overwrite_x=True).reshape(b, -1)
    cov *= np.float32(1.0 / box**3)  # the two 1-D passes scale by 1 / L, not 1 / L**2
    var0 = np.maximum(cov[:, 0].astype(np.float64), 1e-30)
    cov *= cov  # sums of positive terms: float32 is exact enough
    sums = (cov @ folded).astype(np.float64)
    var = 2.0 * sums / (area * var0[:, None]) ** 2
    sd = np.sqrt(var[:, 0] + var[:, 1])
    t = np.log(np.maximum(e[:, 0], 1e-30) / np.maximum(e[:, 1], 1e-30))
    return (t / np.maximum(sd, 1e-12)).astype(np.float32)


def signal_zscore_from_spectrum(
    spec: C64,
    box: int,
    *,
    pixel_size_angstrom: float,
    ctf: CTFParams | None,
    radius_px: float | None,
    outer_px: float | None,
    workers: int = -1,
) -> F32:
    """:func:`signal_zscore` from the batch's ``rfft2`` spectrum (n, L, L // 2 + 1)."""
    n = spec.shape[0]
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{len(ctf)} CTF entries for {n} images")
    r_in, r_out = signal_radii(box, radius_px, outer_px)
    table, inverse = filter_table(ctf, box, pixel_size_angstrom)
    out = np.empty(n, dtype=np.float32)
    step = block_size(box)
    for start in range(0, n, step):
        block = slice(start, start + step)
        filt = table[0] if inverse is None else table[inverse[block]]
        out[block] = zscore_block(spec[block], filt, box, r_in, r_out, workers)
    return out
