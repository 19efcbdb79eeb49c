"""The per-particle junk call: one transparent rule over the per-particle measures.

:func:`call_particles` takes the measures of :func:`cryomanifold.junk_signs.particle_measures`
for the whole dataset (and, optionally, :func:`feature_outlier_z` of the features)
and decides, for each particle, whether it is junk and which sign fired. It uses
no classes, no embedding and no random numbers, so the call does not change with
the seed, and a particle's call depends on the others only through robust
population statistics (medians, MADs, one two-component mixture).

Each sign gives a score in [0, 1] that is 0.5 at its threshold; the particle's
score is the largest, it is junk when that exceeds 0.5, and the reason is the sign
that gave it. The signs, in order of precedence, and where each threshold comes
from:

``bad_values``
    non-finite pixels or a constant image (1.0), or a pixel more than
    :data:`PEAK_SIGMA_LIMIT` robust noise deviations from the median (hot pixels,
    X-ray hits; Gaussian noise does not get there).
``edge_stripe``
    any padding stripe at the box edge (the box sticks out of the micrograph): the
    detection limit of :func:`~cryomanifold.junk_signs.edge_stripe_widths`, three
    rows; no tuned width.
``dense``
    excess kurtosis beyond :data:`OUTLIER_Z` robust standard deviations of the
    dataset's own particles (ice shards, contamination).
``gradient``
    density step across the box beyond :data:`OUTLIER_Z` (carbon edges, ice
    gradients).
``no_signal``
    posterior probability of "noise only" from a two-component mixture on
    ``signal_z`` (:func:`no_signal_probability`): the null component is the N(0, 1)
    that stationary ice and shot noise give, the other is the dataset's particles.
    Faint particles in a dataset of particles keep a low posterior; in a stack of
    pure noise every image is null.
``heavy``
    posterior probability of "two or more particles' mass" from a two-component
    mixture on the integrated density relative to the median particle's
    (:func:`heavy_probability`), among the images that hold a signal: aggregates.
    The ratio :data:`HEAVY_RATIO` is physics: two particles' worth of mass.
``outlier``
    distance from the main manifold in feature space beyond :data:`OUTLIER_Z`
    (:func:`feature_outlier_z`), when given.

:data:`OUTLIER_Z` (5 robust standard deviations) is a fixed far-outlier fence, not
tuned: a normal population loses 3e-7 of its members per sign. The measures were
compared on simulated T20S, rubisco, ice, contamination, carbon edges and
aggregates; the labelled real particles are used only to measure the result
(``benchmarks/real_junk.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "HEAVY_RATIO",
    "OUTLIER_Z",
    "PEAK_SIGMA_LIMIT",
    "REASONS",
    "ParticleCall",
    "call_particles",
    "feature_outlier_z",
    "heavy_probability",
    "no_signal_probability",
    "robust_z",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: Robust z-score (median / 1.4826 MAD of the dataset) at which a sign fires.
OUTLIER_Z = 5.0
#: Smallest mean mass ratio of the "heavy" component: two particles' worth.
HEAVY_RATIO = 2.0
#: A pixel this many robust noise deviations from the median is not a measurement.
PEAK_SIGMA_LIMIT = 50.0
#: Smallest padding stripe flagged, pixels of the prepared image (any detected one).
MIN_STRIPE_PX = 0.0
#: Signal component of the no-signal mixture: at least this mean z (per-particle
#: detectability floor) and at least the null's unit spread.
_MIN_SIGNAL_MEAN = 1.0

REASONS: tuple[str, ...] = (
    "bad_values",
    "edge_stripe",
    "dense",
    "gradient",
    "no_signal",
    "heavy",
    "outlier",
)


class ParticleCall(NamedTuple):
    """Result of :func:`call_particles`.

    Attributes
    ----------
    junk : ndarray, shape (n,), bool
    reason : ndarray, shape (n,), str
        The sign that fired (one of :data:`REASONS`), ``""`` for particles kept.
    score : ndarray, shape (n,), float32
        Probability-like score of being junk, in [0, 1]; ``junk == score > 0.5``.
    signs : dict of str to ndarray, shape (n,), float32
        Each sign's score (0.5 at its threshold), for inspection.
    """

    junk: npt.NDArray[np.bool_]
    reason: npt.NDArray[np.str_]
    score: F32
    signs: dict[str, F32]


def robust_z(values: npt.ArrayLike, reference: npt.ArrayLike | None = None) -> F64:
    """``(values - median) / (1.4826 MAD)`` of ``reference`` (default: ``values``).

    Non-finite reference values are ignored; a zero MAD is replaced by the mean
    absolute deviation (and then by 1) so that the result stays finite.
    """
    v = np.asarray(values, dtype=np.float64)
    ref = v if reference is None else np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.zeros_like(v)
    med = float(np.median(ref))
    mad = 1.4826 * float(np.median(np.abs(ref - med)))
    if not mad > 0:
        mad = 1.2533 * float(np.mean(np.abs(ref - med))) or 1.0
    return np.asarray((v - med) / mad)


def _threshold_score(value: F64, threshold: float) -> F64:
    """Map ``value >= 0`` to [0, 1) with 0.5 at ``threshold``: ``v^2 / (v^2 + t^2)``."""
    v = np.clip(np.nan_to_num(value, nan=0.0, posinf=1e6), 0.0, 1e6)
    return np.asarray(v**2 / (v**2 + threshold**2))


def _normal_pdf(x: F64, mean: float = 0.0, sd: float = 1.0) -> F64:
    return np.asarray(np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)))


def _two_component_fit(
    x: F64,
    fixed: tuple[float, float],
    floor: tuple[float, float],
    weight: float,
    *,
    min_weight: float = 0.0,
    n_iter: int = 500,
) -> tuple[float, float, float] | None:
    """EM for ``(1 - w) N(fixed) + w N(mu, sd^2)`` with ``mu >= floor[0]``, ``sd >= floor[1]``.

    Starts from ``weight`` and the floors (deterministic); ``w`` is kept at or above
    ``min_weight``. Returns ``(w, mu, sd)``, or None when the two-component model does
    not beat the fixed component alone by the BIC (3 more parameters).
    """
    m0, s0 = fixed
    w = max(weight, min_weight)
    mu = max(float(np.median(x[x > m0])) if np.any(x > m0) else floor[0], floor[0])
    sd = floor[1]
    for _ in range(n_iter):
        a = (1.0 - w) * _normal_pdf(x, m0, s0)
        b = w * _normal_pdf(x, mu, sd)
        resp = b / np.maximum(a + b, 1e-300)
        total = float(resp.sum())
        if total <= 1e-9:
            return None
        new_w = max(total / x.size, min_weight)
        new_mu = max(float((resp * x).sum() / total), floor[0])
        new_sd = max(float(np.sqrt((resp * (x - new_mu) ** 2).sum() / total)), floor[1])
        done = abs(new_w - w) + abs(new_mu - mu) + abs(new_sd - sd) < 1e-10
        w, mu, sd = new_w, new_mu, new_sd
        if done:
            break
    mix = (1.0 - w) * _normal_pdf(x, m0, s0) + w * _normal_pdf(x, mu, sd)
    gain = float(np.log(np.maximum(mix, 1e-300)).sum())
    gain -= float(np.log(np.maximum(_normal_pdf(x, m0, s0), 1e-300)).sum())
    if 2.0 * gain < 3.0 * np.log(x.size):
        return None
    return w, mu, sd


def no_signal_probability(signal_z: npt.ArrayLike, *, fit_mask: npt.ArrayLike | None = None) -> F64:
    """Posterior probability that each image holds no particle (local FDR).

    ``signal_z`` of :func:`cryomanifold.junk_signs.signal_zscore` is N(0, 1) for
    noise (physics: stationary ice and shot noise; no parameter). The dataset is
    modelled as ``pi0 N(0, 1) + (1 - pi0) N(mu, s^2)`` with ``mu >= 1`` (a signal
    below one null deviation cannot be told apart per particle) and ``s >= 1``
    (signal adds spread to the noise, never removes it), fitted by EM from a fixed
    start (no seed), with ``pi0`` at most twice the share of images below 0 (the null
    is symmetric about 0 and particles rarely fall below it; without this bound a
    particle population with a heavier-than-normal faint tail lends that tail to the
    null). If the mixture does not beat "all noise" by the BIC, ``pi0 = 1``.
    The posterior ``pi0 phi(z) / f(z)`` is then 1 for every image of a pure-noise
    stack and small for faint particles among many particles. Images with
    ``signal_z`` below 0 are scored as ``z = 0`` (more structure at the edge than in
    the centre is not evidence of empty ice; other signs judge it).

    Parameters
    ----------
    signal_z : array_like, shape (n,)
    fit_mask : array_like of bool, shape (n,), optional
        The images the mixture is fitted on (e.g. those no other sign flagged);
        default all. The posterior is given for every image.

    Returns
    -------
    ndarray, shape (n,), float64, in [0, 1]
    """
    z = np.nan_to_num(np.asarray(signal_z, dtype=np.float64), nan=0.0)
    use = np.ones(z.shape, bool) if fit_mask is None else np.asarray(fit_mask, bool)
    if use.sum() < 3:
        return np.ones_like(z)
    # the null is symmetric about 0 and particles rarely fall below it: at most twice
    # the share below 0 can be null (Storey's bound at the null's median)
    pi0_max = min(1.0, 2.0 * float(np.mean(z[use] < 0.0)))
    fit = _two_component_fit(
        z[use], (0.0, 1.0), (_MIN_SIGNAL_MEAN, 1.0), 0.5, min_weight=1.0 - pi0_max
    )
    if fit is None:
        return np.ones_like(z)
    w, mu, sd = fit
    zc = np.maximum(z, 0.0)
    null = (1.0 - w) * _normal_pdf(zc)
    return np.asarray(null / np.maximum(null + w * _normal_pdf(zc, mu, sd), 1e-300))


def heavy_probability(
    mass: npt.ArrayLike,
    *,
    fit_mask: npt.ArrayLike | None = None,
    heavy_ratio: float = HEAVY_RATIO,
) -> F64:
    """Posterior probability that each image holds two or more particles' mass.

    The mass ratio ``r = mass / median`` of the dataset's particles is modelled as
    ``(1 - w) N(1, s^2) + w N(mu, t^2)``: one particle (``s`` = 1.4826 MAD of ``r``,
    robust, from the dataset) and two or more (``mu >= 2``, ``t >= sqrt(2) s``: at
    least two particles' mass and noise), fitted by EM from a fixed start. If the
    second component does not beat one particle alone by the BIC, no image is heavy.
    Images lighter than the median score 0. A dataset of two species whose masses
    differ twofold would see the heavier one as heavy.

    Parameters
    ----------
    mass : array_like, shape (n,)
        :func:`cryomanifold.junk_signs.particle_mass` of every image.
    fit_mask : array_like of bool, shape (n,), optional
        The images the model is fitted on; default all.
    heavy_ratio : float
        Smallest mean mass ratio of the heavy component (:data:`HEAVY_RATIO`).

    Returns
    -------
    ndarray, shape (n,), float64, in [0, 1]
    """
    m = np.nan_to_num(np.asarray(mass, dtype=np.float64), nan=0.0)
    use = np.ones(m.shape, bool) if fit_mask is None else np.asarray(fit_mask, bool)
    med = float(np.median(m[use])) if use.any() else 0.0
    if not med > 0:
        return np.zeros_like(m)
    r = m / med
    s = 1.4826 * float(np.median(np.abs(r[use] - 1.0)))
    if not s > 0:
        return np.zeros_like(m)
    fit = _two_component_fit(r[use], (1.0, s), (heavy_ratio, np.sqrt(2.0) * s), 0.05)
    if fit is None:
        return np.zeros_like(m)
    w, mu, sd = fit
    alt = w * _normal_pdf(r, mu, sd)
    post = alt / np.maximum(alt + (1.0 - w) * _normal_pdf(r, 1.0, s), 1e-300)
    return np.asarray(np.where(r > 1.0, post, 0.0))


def feature_outlier_z(
    features: npt.ArrayLike, *, n_neighbors: int = 10, pca_variance: float = 0.95
) -> F64:
    """Distance of each particle from the main manifold in feature space, as a robust z.

    The features are projected on the principal components explaining
    ``pca_variance`` of the variance (full SVD: deterministic); each particle's mean
    distance to its ``n_neighbors`` nearest neighbours (exact search) is logged and
    turned into a robust z-score over the dataset. Isolated particles score high.
    No UMAP, no random numbers.

    Parameters
    ----------
    features : array_like, shape (n, d)
    n_neighbors : int
    pca_variance : float
        In (0, 1].

    Returns
    -------
    ndarray, shape (n,), float64
    """
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must have shape (n, d); got {x.shape}")
    n = x.shape[0]
    if n <= n_neighbors + 1:
        return np.zeros(n)
    comps = PCA(n_components=pca_variance, svd_solver="full").fit_transform(x)
    dist, _ = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(comps).kneighbors(comps)
    spread = np.log(np.maximum(dist[:, 1:].mean(axis=1), 1e-30))
    return robust_z(spread)


def call_particles(
    measures: dict[str, npt.ArrayLike],
    *,
    outlier_z: float = OUTLIER_Z,
    heavy_ratio: float = HEAVY_RATIO,
    min_stripe_px: float = MIN_STRIPE_PX,
    peak_sigma_limit: float = PEAK_SIGMA_LIMIT,
) -> ParticleCall:
    """Per-particle junk call of a whole dataset (see the module docstring).

    Parameters
    ----------
    measures : dict of str to array_like, shape (n,)
        The measures of :func:`cryomanifold.junk_signs.particle_measures`
        concatenated over all batches; optionally ``"feature_outlier_z"`` from
        :func:`feature_outlier_z`. Missing measures switch their sign off.
    outlier_z, heavy_ratio, min_stripe_px, peak_sigma_limit : float
        Thresholds (module constants by default).

    Returns
    -------
    ParticleCall
    """
    arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in measures.items()}
    sizes = {a.size for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"measures must all have one value per particle; got sizes {sizes}")
    n = sizes.pop()
    signs: dict[str, F64] = {name: np.zeros(n) for name in REASONS}
    finite = arrays.get("finite", np.ones(n)) > 0.5
    if "peak_sigma" in arrays:
        signs["bad_values"] = _threshold_score(arrays["peak_sigma"], peak_sigma_limit)
    signs["bad_values"][~finite] = 1.0
    ok = finite.copy()
    if "edge_stripe_px" in arrays:
        width = arrays["edge_stripe_px"]
        detected = width > min_stripe_px
        signs["edge_stripe"] = np.where(detected, 0.5 + 0.5 * width / (width + 3.0), 0.0)
    for key, name in (("kurtosis", "dense"), ("gradient", "gradient")):
        if key in arrays:
            signs[name] = _threshold_score(robust_z(arrays[key], arrays[key][ok]), outlier_z)
    if "feature_outlier_z" in arrays:
        signs["outlier"] = _threshold_score(arrays["feature_outlier_z"], outlier_z)
    # the mixtures are fitted on the particles that no image-artefact sign flagged;
    # "heavy" only on those that hold a signal
    others = np.max([signs[s] for s in REASONS if s not in ("heavy", "no_signal")], axis=0)
    fit = ok & (others <= 0.5)
    if "signal_z" in arrays:
        signs["no_signal"] = no_signal_probability(arrays["signal_z"], fit_mask=fit)
        signs["no_signal"][~finite] = 0.0
    if "mass" in arrays:
        fit_heavy = fit & (signs["no_signal"] <= 0.5)
        signs["heavy"] = heavy_probability(
            arrays["mass"], fit_mask=fit_heavy, heavy_ratio=heavy_ratio
        )
    signs["heavy"][~finite] = 0.0
    stacked = np.stack([signs[s] for s in REASONS])  # (n_signs, n)
    score = stacked.max(axis=0)
    junk = score > 0.5
    first = np.argmax(stacked > 0.5, axis=0)  # precedence: the first sign over threshold
    reason = np.where(junk, np.asarray(REASONS)[first], "")
    return ParticleCall(
        junk,
        reason.astype(str),
        score.astype(np.float32),
        {k: v.astype(np.float32) for k, v in signs.items()},
    )
