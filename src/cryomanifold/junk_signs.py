"""Per-particle signs of junk, measured from the image alone.

Each function takes a batch of particle images ``(n, L, L)`` and returns one number
per image; none depends on the other images of the batch, on a random seed or on a
classification, so the measures can be streamed with the features and are the same
whatever the batch size. :func:`particle_measures` gathers them in a dict for the
dataset-level rule :func:`cryomanifold.junk_call.call_particles`.

What each measure is for, and what it rests on:

``edge_stripe_px``
    Boxes that stick out of the micrograph: the extraction pads the missing part
    by repeating the micrograph's last row or column, which shows as stripes that
    are constant along one axis at one or more box edges. The width (pixels of the
    prepared image) of the widest run of near-identical rows or columns at any edge
    (:func:`edge_stripe_widths`). Best measured on the raw, un-cropped images, where
    the repeated rows are exact copies.
``signal_z``
    Is there a particle? The energy of the CTF-filtered image in the central disk
    against that in the outer ring, as a z-score under the null hypothesis of
    stationary noise with the image's own power spectrum
    (:func:`signal_zscore`): about N(0, 1) for ice and shot noise alone.
``kurtosis``
    Small, very dense objects (ice shards, contamination): a few pixels far out of
    the Gaussian noise make the pixel distribution heavy-tailed
    (:func:`excess_kurtosis`); a protein at the usual per-particle SNR does not.
``gradient``
    Carbon edges and thick-ice gradients: the density step across the box of the
    heavily low-passed image (:func:`density_gradient`).
``mass``
    Integrated low-passed density above the surroundings, proportional to the
    projected mass whatever the view (:func:`particle_mass`): aggregates and large
    dense objects carry several times the mass of one particle.
``peak_sigma``, ``finite``
    Values out of range: the largest deviation from the median in units of the
    image's robust noise level, and whether every pixel is finite with a non-zero
    spread.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.ctf import CTFParams, ctf_2d
from cryomanifold.preprocess import as_image_batch, radial_distance

__all__ = [
    "STRIPE_ROW_RATIO",
    "density_gradient",
    "edge_stripe_widths",
    "excess_kurtosis",
    "particle_mass",
    "particle_measures",
    "peak_sigma",
    "signal_zscore",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: A row pair counts as "repeated" when its mean squared difference is below this
#: fraction of the image's median over all adjacent row pairs. Repeated rows give
#: 0 (raw) to about 0.16 (after Fourier rescaling, measured on RELION's 256 -> 64 px
#: rescaled boxes); two rows of independent noise give 1 +- sqrt(2 / L), so a pair of
#: 32 or more noise pixels falls below 0.3 with probability < 1e-6.
STRIPE_ROW_RATIO = 0.3

#: Default radius of the particle disk and start of the outer ring, fractions of L.
_INNER_FRACTION = 0.3
_OUTER_FRACTION = 0.42


def _lowpass(
    images: F32, pixel_size_angstrom: float, cutoff_angstrom: float, workers: int = -1
) -> F64:
    """Images with every Fourier component beyond ``1 / cutoff_angstrom`` removed."""
    box = images.shape[-1]
    k = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) / pixel_size_angstrom
    spec = sfft.rfft2(images.astype(np.float64), workers=workers) * (k < 1.0 / cutoff_angstrom)
    return np.asarray(sfft.irfft2(spec, s=(box, box), workers=workers))


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
    imgs = as_image_batch(images).astype(np.float64)
    out = np.zeros((imgs.shape[0], 4), dtype=np.float32)
    rows = imgs
    cols = imgs.transpose(0, 2, 1)
    for e, arr in enumerate((rows, rows[:, ::-1], cols, cols[:, ::-1])):
        diff = np.mean((arr[:, :-1] - arr[:, 1:]) ** 2, axis=2)  # (n, L - 1)
        ref = np.median(diff, axis=1, keepdims=True)
        repeated = diff < row_ratio * np.maximum(ref, 1e-30)
        run = np.cumprod(repeated[:, 1:], axis=1).sum(axis=1)
        out[:, e] = np.where(run > 0, run + 2, 0)
    return out


def _radial_profile_spectrum(power: F64) -> F64:
    """Rotational average of rfft2 power spectra (n, L, L // 2 + 1), put back on the grid."""
    n, box = power.shape[0], power.shape[1]
    ring = np.rint(
        np.hypot((sfft.fftfreq(box) * box)[:, None], np.arange(box // 2 + 1)[None, :])
    ).astype(np.intp)
    mult = np.full(ring.shape, 2.0)
    mult[:, 0] = 1.0
    if box % 2 == 0:
        mult[:, -1] = 1.0
    n_rings = int(ring.max()) + 1
    # one bincount over all images: image i's rings are offset by i * n_rings
    index = (ring.ravel()[None, :] + n_rings * np.arange(n)[:, None]).ravel()
    weights = np.broadcast_to(mult.ravel(), (n, mult.size))
    counts = np.bincount(ring.ravel(), mult.ravel(), n_rings)
    sums = np.bincount(index, (power.reshape(n, -1) * weights).ravel(), n * n_rings)
    profile = sums.reshape(n, n_rings) / np.maximum(counts, 1e-30)
    return np.asarray(profile[:, ring])


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
    imgs = as_image_batch(images).astype(np.float64)
    n, box = imgs.shape[0], imgs.shape[-1]
    if ctf is not None and len(ctf) != n:
        raise ValueError(f"{len(ctf)} CTF entries for {n} images")
    r_in = _INNER_FRACTION * box if radius_px is None else float(radius_px)
    r_in = min(max(r_in, 2.0), 0.4 * box)
    r_out = max(_OUTER_FRACTION * box, r_in + 2.0) if outer_px is None else float(outer_px)
    r_out = min(r_out, 0.45 * box)
    ring = np.hypot((sfft.fftfreq(box) * box)[:, None], np.arange(box // 2 + 1)[None, :])
    band = ((ring >= 2) & (ring <= box / 2)).astype(np.float64)
    if ctf is None:
        filt = np.broadcast_to(band, (n, *band.shape))
    else:
        filt = np.abs(ctf_2d(ctf, box, pixel_size_angstrom)).astype(np.float64) * band
    spec = sfft.rfft2(imgs)
    filtered = sfft.irfft2(spec * filt, s=(box, box))
    r = radial_distance(box)
    inner = (r < r_in).astype(np.float64)
    outer = (r > r_out).astype(np.float64)
    e_in = (filtered**2 * inner).sum(axis=(1, 2)) / inner.sum()
    e_out = (filtered**2 * outer).sum(axis=(1, 2)) / outer.sum()
    # autocovariance of the filtered null noise, per pixel
    noise = _radial_profile_spectrum(np.abs(spec) ** 2) * filt**2
    cov = sfft.irfft2(noise, s=(box, box)) / box**2
    var0 = np.maximum(cov[:, 0, 0], 1e-30)

    def rel_var(region: F64) -> F64:
        overlap = sfft.irfft2(np.abs(sfft.rfft2(region)) ** 2, s=(box, box))
        return np.asarray(2.0 * (cov**2 * overlap).sum(axis=(1, 2)) / (region.sum() * var0) ** 2)

    sd = np.sqrt(rel_var(inner) + rel_var(outer))
    t = np.log(np.maximum(e_in, 1e-30) / np.maximum(e_out, 1e-30))
    return (t / np.maximum(sd, 1e-12)).astype(np.float32)


def excess_kurtosis(images: npt.ArrayLike) -> F32:
    """Excess kurtosis of the pixel values of each image (0 for Gaussian noise).

    Returns
    -------
    ndarray, shape (n,), float32
    """
    imgs = as_image_batch(images).astype(np.float64)
    c2 = imgs - imgs.mean(axis=(1, 2), keepdims=True)
    c2 *= c2
    m2 = np.mean(c2, axis=(1, 2))
    m4 = np.mean(c2 * c2, axis=(1, 2))
    return (m4 / np.maximum(m2**2, 1e-30) - 3.0).astype(np.float32)


def density_gradient(
    images: npt.ArrayLike, *, pixel_size_angstrom: float, lowpass_angstrom: float | None = None
) -> F32:
    """Density step across the box of the heavily low-passed image.

    The slope of the least-squares plane through the low-passed image, times the
    box size: the difference in mean density between two opposite box edges. A
    carbon edge or an ice-thickness gradient gives a large step; a centred particle
    gives none.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
    pixel_size_angstrom : float
    lowpass_angstrom : float, optional
        Low-pass cut-off, Å; default a third of the box (three Fourier rings).

    Returns
    -------
    ndarray, shape (n,), float32
        In the units of the images (noise standard deviations for normalised ones).
    """
    imgs = as_image_batch(images)
    box = imgs.shape[-1]
    cut = box * pixel_size_angstrom / 3.0 if lowpass_angstrom is None else lowpass_angstrom
    low = _lowpass(imgs, pixel_size_angstrom, cut)
    c = np.arange(box) - box // 2
    norm = float((c**2).sum() * box)
    gy = np.einsum("nij,i->n", low, c.astype(np.float64)) / norm
    gx = np.einsum("nij,j->n", low, c.astype(np.float64)) / norm
    return (np.hypot(gx, gy) * box).astype(np.float32)


def particle_mass(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    lowpass_angstrom: float = 40.0,
    workers: int = -1,
) -> F32:
    """Integrated density of each low-passed particle above its surroundings.

    The projection of a particle integrates to its mass whatever the viewing
    direction, so this is about the same for every view of one species (up to the
    CTF and noise) and scales with the number of particles in the box. In units of
    the background noise (images normalised as in RELION).

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Normalised, protein-white images.
    pixel_size_angstrom : float
    radius_px : float, optional
        Radius of the integration disk, pixels; default (and at most) 0.42 L; the
        ring beyond 0.42 L gives the background level.
    lowpass_angstrom : float
        Low-pass cut-off, Å; within the CTF's first lobe for usual defocus.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    ndarray, shape (n,), float32
    """
    imgs = as_image_batch(images)
    box = imgs.shape[-1]
    low = _lowpass(imgs, pixel_size_angstrom, lowpass_angstrom, workers)
    r = radial_distance(box)
    edge = r > _OUTER_FRACTION * box
    limit = _OUTER_FRACTION * box if radius_px is None else min(radius_px, _OUTER_FRACTION * box)
    disk = r <= limit
    level = low[:, edge].mean(axis=1)
    return (low[:, disk] - level[:, None]).sum(axis=1).astype(np.float32)


def peak_sigma(images: npt.ArrayLike) -> F32:
    """Largest deviation from the median, in robust noise standard deviations.

    The noise level is 1.4826 times the median absolute deviation, which a few
    extreme pixels do not move. Gaussian noise in a 64 px box peaks near 4.

    Returns
    -------
    ndarray, shape (n,), float32
        ``inf`` for images with no spread.
    """
    imgs = as_image_batch(images).astype(np.float64)
    flat = imgs.reshape(imgs.shape[0], -1)
    med = np.median(flat, axis=1, keepdims=True)
    dev = np.abs(flat - med)
    mad = 1.4826 * np.median(dev, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(mad > 0, dev.max(axis=1) / np.where(mad > 0, mad, 1.0), np.inf)
    return out.astype(np.float32)


def particle_measures(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    radius_px: float | None = None,
    ctf: CTFParams | None = None,
    raw: npt.ArrayLike | None = None,
) -> dict[str, F32]:
    """All per-particle junk measures of a batch (see the module docstring).

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Prepared images: Fourier-cropped to the run box, normalised, not
        phase-flipped. Non-finite pixels are allowed (``finite`` is then 0 and the
        other measures are computed with them set to 0).
    pixel_size_angstrom : float
        Pixel size of ``images``.
    radius_px : float, optional
        Particle radius in pixels of ``images`` (from the particle diameter, when the
        user gives it); default 0.3 L.
    ctf : CTFParams, optional
        CTF of the ``n`` particles; used for ``signal_z`` (recommended).
    raw : array_like, shape (n, R, R), optional
        The same particles before cropping. Edge stripes are measured on them when
        given (repeated rows are exact copies there) and converted to pixels of
        ``images``.

    Returns
    -------
    dict of str to ndarray, shape (n,), float32
        ``edge_stripe_px``, ``signal_z``, ``kurtosis``, ``gradient``, ``mass``,
        ``peak_sigma``, ``finite`` (1.0 or 0.0).
    """
    imgs = as_image_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(imgs).all(axis=(1, 2)))
    clean = np.where(finite[:, None, None], imgs, np.nan_to_num(imgs, posinf=0.0, neginf=0.0))
    spread = clean.std(axis=(1, 2))
    finite &= spread > 0
    if raw is None:
        stripes = edge_stripe_widths(clean).max(axis=1)
    else:
        raw_imgs = np.nan_to_num(as_image_batch(raw))
        if raw_imgs.shape[0] != n:
            raise ValueError(f"raw has {raw_imgs.shape[0]} images, images {n}")
        stripes = edge_stripe_widths(raw_imgs).max(axis=1) * np.float32(box / raw_imgs.shape[-1])
    apix = pixel_size_angstrom
    return {
        "edge_stripe_px": stripes.astype(np.float32),
        "signal_z": signal_zscore(clean, pixel_size_angstrom=apix, ctf=ctf, radius_px=radius_px),
        "kurtosis": excess_kurtosis(clean),
        "gradient": density_gradient(clean, pixel_size_angstrom=apix),
        "mass": particle_mass(clean, pixel_size_angstrom=apix, radius_px=radius_px),
        "peak_sigma": peak_sigma(clean),
        "finite": finite.astype(np.float32),
    }
