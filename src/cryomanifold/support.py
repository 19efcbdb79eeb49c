"""Where a fitted map holds new particles: the novelty test, and the drift check.

Novelty ("outside the map's support")
-------------------------------------
A projected particle is *novel* when it lies farther from the map's reference
particles than from the other projected particles: its own kind is there in the
new data, but not in the map. In PCA space the score of a particle ``x`` is ::

    ratio(x) = mean distance to its k nearest points of a reference subset
               / mean distance to its k nearest points of a subset of the
                 projected particles (itself excluded)

with the two subsets of equal size ``s = min(n_new, m // 2, max_size)`` (``m``
reference points), so that for particles of the map's own population the two
distances have the same distribution and the ratio is about 1. The threshold is
the ``quantile`` of the same ratio under that null hypothesis, computed from the
reference alone: split it into two random halves of ``s`` points and score the
points of one half against the other. Each of ``repeats`` rounds draws new
subsets; the null ratios of 20 splits are pooled; a particle is novel when the
mean over rounds of its log ratio is above the log threshold. Averaging narrows
the spread of a particle's score, so the single-round threshold is conservative:
fewer than ``1 - quantile`` of the particles of known kinds are flagged when the
projected data have the map's composition.

Why a ratio and not the distance alone: the distance of a particle to its
neighbours is dominated by its own noise, which varies with defocus and dose
from particle to particle, and junk makes the reference's own distances
heavy-tailed. Chosen on simulated T20S + rubisco + 20% junk at 64 px (3.5 Å/px),
1500 particles in the map, p97 as the unseen species: a threshold at the 99%
quantile of the reference's leave-one-out k-NN distances flagged 0-10% of the p97
particles; a threshold per map class 43-53%; the ratio (k = 10) 67-85%, with at
most 0.2% of the known species. k = 5 was weaker, k = 20 and 40 less stable. The
ratio compares densities: a projected dataset whose composition differs strongly
from the map's gets more false flags where it is denser than the reference (all
T20S projected onto the T20S + rubisco map: 0.5-4%). The fraction of a particle's
neighbours that are projected ones (a two-sample k-NN statistic) was more
sensitive (77-99% of p97) but flagged 30-77% of the T20S-only set, so it was not
used.

Drift
-----
:func:`placement_drift` places reference points into the map from the *other*
reference points (leave one out), exactly as new particles are placed, and
measures how far they land from where UMAP put them (median, in map units) and
how often the class is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold.embedding import knn, weighted_positions
from cryomanifold.manifold import ParticleManifold

__all__ = [
    "NoveltyResult",
    "novelty_scores",
    "placement_drift",
    "position_drift",
]

F32 = npt.NDArray[np.float32]

#: Neighbours of the ratio test (chosen on simulated data, see the module docstring).
NOVELTY_K = 10
#: Random splits of the reference that make the null distribution of the ratio.
NULL_ROUNDS = 20
#: Largest comparison subset (bounds the cost: 2 * repeats * n * max_size distances).
NOVELTY_MAX_SIZE = 5000


@dataclass(frozen=True)
class NoveltyResult:
    """Per-particle novelty of projected particles.

    Attributes
    ----------
    novel : ndarray of bool, shape (n,)
    score : ndarray of float32, shape (n,)
        Mean over rounds of ``log(ratio)``, minus ``log(threshold)``; positive means novel.
    threshold : float
        The null quantile of the ratio.
    params : dict
        ``k``, ``quantile``, ``repeats``, ``size`` (the subsets' size) for run.json.
    """

    novel: npt.NDArray[np.bool_]
    score: F32
    threshold: float
    params: dict[str, Any]


def _mean_distance(
    points: F32, reference: F32, k: int, exclude: npt.NDArray[np.bool_] | None = None
) -> npt.NDArray[np.float64]:
    """Mean distance of each point to its k nearest reference points; rows in
    ``exclude`` are themselves in ``reference`` and skip their own zero distance."""
    _, dist = knn(points, reference, k + 1)
    d = dist.astype(np.float64)
    if exclude is None:
        return d[:, :k].mean(axis=1)
    return np.where(exclude, d[:, 1:].mean(axis=1), d[:, :k].mean(axis=1))


def _log_ratio(
    points: F32, reference: F32, others: F32, in_others: npt.NDArray[np.bool_], k: int
) -> npt.NDArray[np.float64]:
    near_ref = _mean_distance(points, reference, k)
    near_own = _mean_distance(points, others, k, in_others)
    return np.log(np.maximum(near_ref, 1e-12) / np.maximum(near_own, 1e-12))


def novelty_scores(
    points: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    k: int = NOVELTY_K,
    quantile: float = 0.99,
    repeats: int = 5,
    max_size: int = NOVELTY_MAX_SIZE,
    random_state: int = 0,
) -> NoveltyResult:
    """Flag projected particles that the map's reference does not cover.

    Parameters
    ----------
    points : array_like, shape (n, p)
        PCA coordinates of the projected particles (all of one dataset).
    reference : array_like, shape (m, p)
        The map's reference points (PCA coordinates).
    k : int
        Neighbours.
    quantile : float
        Null quantile of the ratio used as the threshold (in (0.5, 1)).
    repeats : int
        Rounds of random subsets.
    max_size : int
        Largest subset size.
    random_state : int

    Returns
    -------
    NoveltyResult

    Notes
    -----
    With fewer than ``2 (k + 1)`` points or reference points no test is possible:
    nothing is flagged and ``params["size"]`` is 0.
    """
    x = np.ascontiguousarray(points, dtype=np.float32)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    n, m = x.shape[0], ref.shape[0]
    if not 0.5 < quantile < 1:
        raise ValueError(f"quantile must lie in (0.5, 1); got {quantile}")
    size = min(n, m // 2, int(max_size))
    if size < 2 * (k + 1):
        size = 0
    params = {"k": k, "quantile": quantile, "repeats": repeats, "size": size, "statistic": "ratio"}
    if size == 0:
        return NoveltyResult(np.zeros(n, bool), np.zeros(n, np.float32), float("nan"), params)
    rng = np.random.default_rng(np.random.SeedSequence(random_state, spawn_key=(13,)))
    total = np.zeros(n, np.float64)
    null = []
    for _ in range(NULL_ROUNDS):
        perm = rng.permutation(m)
        half_a, half_b = ref[perm[:size]], ref[perm[size : 2 * size]]
        null.append(_log_ratio(half_b, half_a, half_b, np.ones(size, bool), k))
    threshold = float(np.quantile(np.concatenate(null), quantile))
    for _ in range(repeats):
        ref_sub = ref[np.sort(rng.choice(m, size, replace=False))]
        rows = np.sort(rng.choice(n, size, replace=False))
        in_sub = np.zeros(n, bool)
        in_sub[rows] = True
        total += _log_ratio(x, ref_sub, x[rows], in_sub, k)
    score = (total / repeats - threshold).astype(np.float32)
    return NoveltyResult(score > 0, score, float(np.exp(threshold)), params)


def position_drift(
    manifold: ParticleManifold, placed: npt.ArrayLike, fitted: npt.ArrayLike
) -> dict[str, float]:
    """How far placed positions are from fitted ones, and whether the class agrees.

    Parameters
    ----------
    manifold : ParticleManifold
        Fitted (its mixture classifies both).
    placed, fitted : array_like, shape (n, 2)

    Returns
    -------
    dict
        ``n``, ``median_displacement`` and ``p90_displacement`` (map units),
        ``map_extent`` (the distance between the 1st and 99th percentile corners of
        the fitted positions, for scale) and ``class_agreement`` (fraction).
    """
    a = np.asarray(placed, dtype=np.float64)
    b = np.asarray(fitted, dtype=np.float64)
    ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = a[ok], b[ok]
    if a.shape[0] == 0:
        return {"n": 0}
    disp = np.linalg.norm(a - b, axis=1)
    lo, hi = np.percentile(b, [1, 99], axis=0)
    same = manifold.gmm_.predict(a) == manifold.gmm_.predict(b)
    return {
        "n": int(a.shape[0]),
        "median_displacement": float(np.median(disp)),
        "p90_displacement": float(np.percentile(disp, 90)),
        "map_extent": float(np.linalg.norm(hi - lo)),
        "class_agreement": float(same.mean()),
    }


def placement_drift(
    manifold: ParticleManifold, *, max_points: int = 2000, random_state: int = 0
) -> dict[str, float]:
    """Leave-one-out drift of the map's own reference points.

    Each of up to ``max_points`` reference points is placed from its
    ``n_neighbors`` nearest *other* reference points, as
    :meth:`~cryomanifold.embedding.UMAPReference.transform` places a new particle,
    and compared with its UMAP position (:func:`position_drift`).
    """
    ref = manifold.reference_
    m, k = ref.points.shape[0], ref.n_neighbors
    if m <= k:
        return {"n": 0}
    rng = np.random.default_rng(random_state)
    rows = np.sort(rng.choice(m, min(max_points, m), replace=False))
    idx, dist = knn(ref.points[rows], ref.points, k + 1)
    # drop each point itself (it is among its k + 1 nearest, at distance 0)
    own = idx == rows[:, None]
    own[~own.any(axis=1), -1] = True
    keep = ~own
    idx = idx[keep].reshape(len(rows), k)
    dist = dist[keep].reshape(len(rows), k)
    placed, _ = weighted_positions(idx, dist, ref.embedding)
    return position_drift(manifold, placed, ref.embedding[rows])
