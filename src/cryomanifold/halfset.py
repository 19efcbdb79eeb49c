"""Class averages that cannot lie: independent half sets, FRC and a noise control.

Reference-free alignment finds a "particle" in anything, pure noise included:
aligning noise to a reference reproduces the reference ("Einstein from noise").
:func:`half_set_average` therefore

1. splits the class's members into two random halves and averages each on its
   own (:func:`cryomanifold.averaging.reference_free_average`: its own random
   start, nothing shared);
2. aligns the second half average onto the first (rotation, shift and mirror: the
   features cannot tell a view from its mirror image, so the halves may settle on
   mirror images of each other) and computes their Fourier ring correlation (FRC)
   within a soft circular mask; the resolution is where it falls below 0.143;
3. measures what that comparison gives when there is nothing there. The final
   alignment maximises the correlation over about 10^4 rotations, shifts and
   mirrors, so two unrelated averages correlate too, the more so the fewer
   independent Fourier coefficients their spectrum has. The control replaces the
   second half average by ``n_surrogates`` images with its amplitude spectrum and
   random phases, confined to the particle disk (independent "particles" with the
   same spectrum), aligned onto the first the same way. Their mean FRC is the
   control curve, and the spread of their band correlations is the null;
4. calls the class consistent when the halves' correlation over a band of rings
   (:func:`default_band`) exceeds the surrogates' mean by :data:`CONTROL_MARGIN_SIGMA`
   of their standard deviations. The band correlation is taken after removing
   each image's rotational average: two centred blobs agree on it whatever they
   are (measured: pure-noise classes at 32 px reached z = 4.7 without this), and
   the surrogates, which have random phases, do not carry it.

Why not only a member-level control (the class's members with random phases,
averaged in halves like the data)? It is what the issue describes, and
``full_control=True`` runs it, but one realisation is too noisy to decide on:
its band correlation varied by 0.05-0.17 between seeds on the same real class
(``benchmarks/real_junk.py`` measures its mean against the surrogates'), and it
doubles the cost.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.alignment import align_to_reference
from cryomanifold.averaging import reference_free_average
from cryomanifold.metrics import frc, frc_crossing_angstrom
from cryomanifold.preprocess import as_image_batch, radial_distance, soft_circular_mask

__all__ = [
    "CONTROL_MARGIN_SIGMA",
    "FRC_THRESHOLD",
    "HalfSetAverage",
    "average_detail",
    "band_correlation",
    "class_half_sets",
    "default_band",
    "half_set_average",
    "half_set_resolution",
    "phase_randomized",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Half-set FRC threshold for the resolution (Rosenthal & Henderson 2003).
FRC_THRESHOLD = 0.143
#: The halves must correlate better than the control's mean by this many of the
#: control's standard deviations (one-sided 0.13% for a normal null).
CONTROL_MARGIN_SIGMA = 3.0


class HalfSetAverage(NamedTuple):
    """Result of :func:`half_set_average`.

    Attributes
    ----------
    average : ndarray, shape (L, L), float32
        Size-weighted mean of the two half averages (the second aligned onto the first).
    half_a, half_b : ndarray, shape (L, L), float32
        The half averages; ``half_b`` aligned (and possibly mirrored) onto ``half_a``.
    frequencies : ndarray, shape (L // 2 + 1,)
        Ring frequencies, 1/Å.
    frc : ndarray, shape (L // 2 + 1,)
        FRC of the two half averages.
    frc_control : ndarray, shape (L // 2 + 1,)
        Mean FRC of the first half average with the surrogates: "nothing there".
    resolution_angstrom : float
        Where ``frc`` first falls below :data:`FRC_THRESHOLD`, Å.
    control_resolution_angstrom : float
        The same for ``frc_control``, Å.
    band_correlation : float
        Correlation of the half averages over the rings of :func:`default_band`.
    control_band_correlation, control_band_sd : float
        Mean and standard deviation of the surrogates' band correlations.
    consistency_z : float
        ``(band_correlation - control_band_correlation) / control_band_sd``.
    consistent : bool
        ``consistency_z > CONTROL_MARGIN_SIGMA``: the class holds a particle that
        both halves found.
    n_members : int
    full_control_frc : ndarray, shape (L // 2 + 1,)
        FRC of the member-level noise control's half averages; NaN unless
        ``full_control``.
    full_control_band_correlation : float
        Its band correlation; NaN unless ``full_control``.
    """

    average: F32
    half_a: F32
    half_b: F32
    frequencies: F64
    frc: F64
    frc_control: F64
    resolution_angstrom: float
    control_resolution_angstrom: float
    band_correlation: float
    control_band_correlation: float
    control_band_sd: float
    consistency_z: float
    consistent: bool
    n_members: int
    full_control_frc: F64
    full_control_band_correlation: float


def default_band(box: int) -> tuple[int, int]:
    """Fourier rings (inclusive) on which half sets are compared with the control.

    From ``L / 16`` (below lies the box-scale outline, which centring alone makes
    alike) to ``L / 4`` (half Nyquist; 64 px class averages of a few hundred
    particles rarely hold signal beyond).
    """
    return max(2, round(box / 16)), max(3, box // 4)


def band_correlation(image_a: npt.ArrayLike, images_b: npt.ArrayLike, band: tuple[int, int]) -> F64:
    """Correlation of one image with each of a batch over the rings ``band`` (inclusive).

    Parameters
    ----------
    image_a : array_like, shape (L, L)
    images_b : array_like, shape (m, L, L) or (L, L)
    band : (int, int)

    Returns
    -------
    ndarray, shape (m,)
        ``Re sum(A conj(B)) / sqrt(sum |A|^2 sum |B|^2)`` over the band's Fourier
        pixels (0 where one has no power there).
    """
    a = np.asarray(image_a, dtype=np.float64)
    b = np.asarray(images_b, dtype=np.float64).reshape(-1, *a.shape)
    box = a.shape[-1]
    ring = np.rint(np.hypot((sfft.fftfreq(box) * box)[:, None], np.arange(box // 2 + 1)[None, :]))
    weight = np.full(ring.shape, 2.0)  # rfft2 columns 1..L/2-1 stand for two pixels
    weight[:, 0] = 1.0
    if box % 2 == 0:
        weight[:, -1] = 1.0
    weight *= (ring >= band[0]) & (ring <= band[1])
    fa, fb = sfft.rfft2(a), sfft.rfft2(b)
    cross = (weight * (fa * np.conj(fb)).real).sum(axis=(-2, -1))
    power = (weight * np.abs(fa) ** 2).sum() * (weight * np.abs(fb) ** 2).sum(axis=(-2, -1))
    return np.asarray(np.divide(cross, np.sqrt(power), out=np.zeros(len(b)), where=power > 0))


def phase_randomized(images: npt.ArrayLike, rng: np.random.Generator) -> F32:
    """Each image with random Fourier phases and its own amplitude spectrum.

    The phases are those of white Gaussian noise (so the result is real); the mean
    (DC term) is kept.

    Returns
    -------
    ndarray, shape (n, L, L), float32
    """
    imgs = as_image_batch(images).astype(np.float64)
    box = imgs.shape[-1]
    spec = sfft.rfft2(imgs)
    noise = sfft.rfft2(rng.standard_normal(imgs.shape))
    out = np.abs(spec) * noise / np.maximum(np.abs(noise), 1e-30)
    out[:, 0, 0] = spec[:, 0, 0]
    return np.asarray(sfft.irfft2(out, s=(box, box)), dtype=np.float32)


def _asymmetric_part(images: F32) -> F64:
    """Images (…, L, L) minus their rotational average about the box centre."""
    box = images.shape[-1]
    ring = np.rint(radial_distance(box)).astype(np.intp).ravel()
    flat = np.asarray(images, dtype=np.float64).reshape(-1, box * box)
    n, n_rings = flat.shape[0], int(ring.max()) + 1
    index = (ring[None, :] + n_rings * np.arange(n)[:, None]).ravel()
    sums = np.bincount(index, flat.ravel(), n * n_rings).reshape(n, n_rings)
    profile = sums / np.bincount(ring, minlength=n_rings)
    return np.asarray((flat - profile[:, ring]).reshape(np.shape(images)))


def _align_with_mirror(images: F32, reference: F32, workers: int) -> tuple[F32, F64]:
    """Each image (or its mirror image, whichever fits better) aligned onto ``reference``."""
    m = images.shape[0]
    fit = align_to_reference(
        np.concatenate([images, images[:, :, ::-1]]), reference, workers=workers
    )
    scores = fit.scores.reshape(2, m)
    pick = np.argmax(scores, axis=0)
    aligned = fit.aligned.reshape(2, m, *images.shape[1:])[pick, np.arange(m)]
    return aligned, scores.max(axis=0).astype(np.float64)


def _split_averages(
    imgs: F32, rng: np.random.Generator, n_iter: int, workers: int
) -> tuple[F32, F32, int, int]:
    """Reference-free averages of two random halves, each from its own start."""
    n = imgs.shape[0]
    order = rng.permutation(n)
    a_idx, b_idx = np.sort(order[: (n + 1) // 2]), np.sort(order[(n + 1) // 2 :])
    seed_a, seed_b = rng.spawn(2)
    avg_a = reference_free_average(imgs[a_idx], n_iter=n_iter, random_state=seed_a, workers=workers)
    avg_b = reference_free_average(imgs[b_idx], n_iter=n_iter, random_state=seed_b, workers=workers)
    return avg_a.average, avg_b.average, a_idx.size, b_idx.size


def half_set_resolution(
    half_a: npt.ArrayLike,
    half_b: npt.ArrayLike,
    pixel_size_angstrom: float,
    *,
    mask_radius_fraction: float = 0.45,
) -> float:
    """Resolution (Å) where the FRC of two aligned half averages (L, L), inside the
    soft mask :func:`half_set_average` uses, falls below :data:`FRC_THRESHOLD`."""
    a, b = np.asarray(half_a), np.asarray(half_b)
    box = a.shape[-1]
    mask = soft_circular_mask(box, mask_radius_fraction * box, 0.05 * box)
    curve = frc(a * mask, b * mask)[1]
    return frc_crossing_angstrom(curve, pixel_size_angstrom, FRC_THRESHOLD)


def half_set_average(
    images: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    random_state: int | np.random.Generator | None = None,
    n_iter: int = 5,
    n_surrogates: int = 30,
    full_control: bool = False,
    mask_radius_fraction: float = 0.45,
    particle_radius_fraction: float = 0.35,
    workers: int = -1,
) -> HalfSetAverage:
    """Half-set average, FRC, resolution and noise control of one class.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        The class's members: phase-flipped, normalised (as for
        :func:`cryomanifold.averaging.class_averages`). At least 4.
    pixel_size_angstrom : float
    random_state : int or numpy Generator, optional
        Seeds the split, the alignments and the control's phases.
    n_iter : int
        Refinement rounds of each half's reference-free average.
    n_surrogates : int
        Random-phase surrogates of the second half average in the control (at least 3).
    full_control : bool
        Also run the member-level control (doubles the cost): the members with
        random phases, split, averaged and compared like the data.
    mask_radius_fraction : float
        Soft circular mask (fraction of L, 0.05 L edge) applied before every FRC.
    particle_radius_fraction : float
        The surrogates are confined to a soft disk of this radius (fraction of L,
        0.1 L edge), like a centred particle.
    workers : int
        Threads for scipy.fft.

    Returns
    -------
    HalfSetAverage

    Raises
    ------
    ValueError
        With fewer than 4 images or fewer than 3 surrogates.
    """
    imgs = as_image_batch(images)
    n, box = imgs.shape[0], imgs.shape[-1]
    if n < 4 or n_surrogates < 3:
        raise ValueError(f"need >= 4 images and >= 3 surrogates; got {n}, {n_surrogates}")
    rng = np.random.default_rng(random_state)
    data_rng, surrogate_rng, control_rng = rng.spawn(3)
    mask = soft_circular_mask(box, mask_radius_fraction * box, 0.05 * box)
    disk = soft_circular_mask(box, particle_radius_fraction * box, 0.1 * box)
    band = default_band(box)

    half_a, avg_b, n_a, n_b = _split_averages(imgs, data_rng, n_iter, workers)
    half_b = _align_with_mirror(avg_b[None], half_a, workers)[0][0]
    curve = frc(half_a * mask, half_b * mask)[1]
    ref = _asymmetric_part(half_a * mask)
    corr = float(band_correlation(ref, _asymmetric_part(half_b * mask), band)[0])

    copies = np.repeat(avg_b[None], n_surrogates, axis=0)
    surrogates = phase_randomized(copies, surrogate_rng) * disk
    moved = _align_with_mirror(surrogates, half_a, workers)[0] * mask
    null = band_correlation(ref, _asymmetric_part(moved), band)
    control_curve = np.mean([frc(half_a * mask, s)[1] for s in moved], axis=0)
    null_mean, null_sd = float(null.mean()), float(max(null.std(ddof=1), 1e-6))
    z = (corr - null_mean) / null_sd

    full_curve = np.full_like(curve, np.nan)
    full_corr = float("nan")
    if full_control:
        noise = phase_randomized(imgs, control_rng.spawn(1)[0])
        c_a, c_b, _, _ = _split_averages(noise, control_rng, n_iter, workers)
        c_b = _align_with_mirror(c_b[None], c_a, workers)[0][0]
        full_curve = frc(c_a * mask, c_b * mask)[1]
        full_corr = float(
            band_correlation(_asymmetric_part(c_a * mask), _asymmetric_part(c_b * mask), band)[0]
        )

    average = ((n_a * half_a.astype(np.float64) + n_b * half_b) / n).astype(np.float32)
    apix = pixel_size_angstrom
    return HalfSetAverage(
        average=average,
        half_a=half_a.astype(np.float32),
        half_b=half_b.astype(np.float32),
        frequencies=np.arange(box // 2 + 1) / (box * apix),
        frc=curve,
        frc_control=control_curve,
        resolution_angstrom=frc_crossing_angstrom(curve, pixel_size_angstrom, FRC_THRESHOLD),
        control_resolution_angstrom=frc_crossing_angstrom(
            control_curve, pixel_size_angstrom, FRC_THRESHOLD
        ),
        band_correlation=corr,
        control_band_correlation=null_mean,
        control_band_sd=null_sd,
        consistency_z=float(z),
        consistent=bool(z > CONTROL_MARGIN_SIGMA),
        n_members=n,
        full_control_frc=full_curve,
        full_control_band_correlation=full_corr,
    )


def class_half_sets(
    images: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    n_classes: int | None = None,
    weights: npt.ArrayLike | None = None,
    max_members: int = 500,
    random_state: int | np.random.Generator | None = None,
    n_iter: int = 5,
    n_surrogates: int = 30,
    full_control: bool = False,
    progress: bool = True,
    workers: int = -1,
) -> list[HalfSetAverage | None]:
    """:func:`half_set_average` of every class (the averages stage's entry point).

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Phase-flipped, normalised particle images; a memory map is read one class
        at a time.
    labels : array_like of int, shape (n,)
        0-based class of each image; negative labels are ignored.
    pixel_size_angstrom : float
    n_classes : int, optional
        Default ``labels.max() + 1``.
    weights : array_like, shape (n,), optional
        Member weights: each class uses its ``max_members`` highest-weighted
        members (a seeded random subset without weights).
    max_members : int
    random_state : int or numpy Generator, optional
        Each class gets its own child stream.
    n_iter, n_surrogates, full_control, workers
        As in :func:`half_set_average`.
    progress : bool
        tqdm bar over classes.

    Returns
    -------
    list of HalfSetAverage or None, length K
        None for classes with fewer than 4 members.
    """
    from tqdm import tqdm

    stack = images if isinstance(images, np.ndarray) else np.asarray(images)
    lab = np.asarray(labels)
    if stack.ndim != 3 or lab.shape != (stack.shape[0],):
        raise ValueError(f"need images (n, L, L) and n labels; got {stack.shape}, {lab.shape}")
    k = int(lab.max(initial=-1)) + 1 if n_classes is None else int(n_classes)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    rngs = np.random.default_rng(random_state).spawn(k)
    out: list[HalfSetAverage | None] = []
    for c in tqdm(range(k), desc="half sets", unit="class", disable=None if progress else True):
        members = np.flatnonzero(lab == c)
        if members.size > max_members:
            if w is None:
                members = rngs[c].choice(members, max_members, replace=False)
            else:
                members = members[np.argsort(-w[members], kind="stable")[:max_members]]
        if members.size < 4:
            out.append(None)
            continue
        out.append(
            half_set_average(
                np.asarray(stack[np.sort(members)], dtype=np.float32),
                pixel_size_angstrom=pixel_size_angstrom,
                random_state=rngs[c],
                n_iter=n_iter,
                n_surrogates=n_surrogates,
                full_control=full_control,
                workers=workers,
            )
        )
    return out


def average_detail(
    averages: npt.ArrayLike,
    *,
    pixel_size_angstrom: float,
    low_angstrom: tuple[float, float] = (200.0, 40.0),
    mid_angstrom: tuple[float, float] = (40.0, 12.0),
) -> F32:
    """Power at intermediate over low spatial frequencies of each class average.

    Parameters
    ----------
    averages : array_like, shape (K, L, L)
    pixel_size_angstrom : float
    low_angstrom, mid_angstrom : (float, float)
        The two resolution bands, Å (from, to). The mid band is clipped at Nyquist.

    Returns
    -------
    ndarray, shape (K,), float32
        Larger for averages with sharp detail; small for blurred blobs.
    """
    avg = np.asarray(averages, dtype=np.float64)
    box = avg.shape[-1]
    r = radial_distance(box)
    edge = r > 0.42 * box
    centred = (avg - np.median(avg[:, edge], axis=1)[:, None, None]) * (r < 0.45 * box)
    power = np.abs(sfft.rfft2(centred)) ** 2
    k = np.hypot(sfft.fftfreq(box)[:, None], sfft.rfftfreq(box)[None, :]) / pixel_size_angstrom
    low = (k > 1 / low_angstrom[0]) & (k <= 1 / low_angstrom[1])
    mid = (k > 1 / mid_angstrom[0]) & (k <= 1 / mid_angstrom[1])
    return (power[:, mid].sum(axis=1) / np.maximum(power[:, low].sum(axis=1), 1e-30)).astype(
        np.float32
    )
