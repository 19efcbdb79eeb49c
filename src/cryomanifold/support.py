"""Where a fitted map holds new particles: the novelty test, and the drift check.

Novelty ("outside the map's support")
-------------------------------------
A projected particle is *novel* when it lies farther from the map's reference
particles than from the other projected particles: its own kind is there in the
new data, but not in the map. In PCA space the score of a particle ``x`` is ::

    ratio(x) = mean distance to its k nearest points of a reference subset
               / mean distance to its k' nearest points of a subset of the
                 projected particles (itself excluded)

with the two subsets of equal size ``s = min(n_new, m // 2, max_size)`` (``m``
reference points), so that for particles of the map's own population the two
distances have the same distribution and the ratio is about 1. The threshold is
the ``quantile`` of the same ratio under that null hypothesis, computed from the
reference alone: split it into two random halves of ``s`` points and score the
points of one half against the other (10 splits pooled). Each of ``repeats``
rounds draws new subsets; a particle is novel when the mean over rounds of its
log ratio is above the log threshold. About ``1 - quantile`` of the particles of
the map's own population are then flagged when the projected data have the
map's composition (5% at the default 0.95 on Gaussian clusters; 0.1% of the
simulated particles below, whose junk widens the null distribution).

The ratio compares densities: where the projected data are denser than the
reference (a class they over-represent), the denominator shrinks and known
particles would look novel. With the map classes of the particles and of the
reference, a second pass scales the own-kind neighbours to ``k' = k * rho_c``,
where ``rho_c`` (1 to 8) is how much more of the projected particles than of the
reference fall in the particle's class, counted without the first pass's novel
candidates (so that a new species does not hide itself by filling a class).

Chosen on simulated data (T20S + rubisco + 20% junk at 64 px, 3.5 Å/px, p97 as
the unseen species; benchmarks/atlas_projection.py, about 2000 particles in the
map). A threshold on the distance to the reference alone (99% quantile of the
reference's leave-one-out k-NN distances) flagged 0-10% of the p97 particles:
the distance is dominated by each particle's own noise, which varies with
defocus, and junk makes the reference's distances heavy-tailed; per map class,
43-53%. The ratio (k = 10; 5 weaker, 20 and 40 less stable) at quantile 0.95
flagged 93% of p97 and 0.1% of T20S and rubisco, but 40% of a T20S-only set
projected onto the T20S + rubisco map; with the second pass 86%, 0.1% and 14%
(at quantile 0.99: 46%, 0% and 2%). The fraction of a particle's neighbours that
are projected ones (a two-sample k-NN statistic) was as sensitive but flagged
30-77% of a T20S-only set. A dataset whose composition differs strongly from the
map's therefore still gets some false flags; docs/atlas.md says so.

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
#: Largest scaling of the own-kind neighbours for an over-represented class.
MAX_OVER_REPRESENTATION = 8.0
_BLOCK = 8192
#: Random splits of the reference that make the null distribution of the ratio.
NULL_ROUNDS = 10
#: Largest comparison subset (bounds the cost: 2 * repeats * n * max_size distances).
NOVELTY_MAX_SIZE = 2000


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


def _mean_distances(
    points: F32, reference: F32, ks: npt.NDArray[np.int64], in_reference: npt.NDArray[np.bool_]
) -> npt.NDArray[np.float64]:
    """Mean distance of each point to its ``ks[i]`` nearest reference points; points
    with ``in_reference`` are themselves in ``reference`` and skip their own zero
    distance. Computed in blocks of points (memory: a block times ``max(ks)``)."""
    out = np.empty(points.shape[0], np.float64)
    if out.size == 0:
        return out
    top = int(ks.max())
    for start in range(0, points.shape[0], _BLOCK):
        sl = slice(start, start + _BLOCK)
        _, dist = knn(points[sl], reference, min(top + 1, reference.shape[0]))
        csum = np.cumsum(dist.astype(np.float64), axis=1)
        skip = in_reference[sl].astype(np.int64)
        rows = np.arange(dist.shape[0])
        k = np.minimum(ks[sl], dist.shape[1] - skip)
        total = csum[rows, k + skip - 1] - np.where(skip, csum[:, 0], 0.0)
        out[sl] = total / k
    return out


def _log_ratio(
    points: F32, reference: F32, others: F32, in_others: npt.NDArray[np.bool_], k: int
) -> npt.NDArray[np.float64]:
    n = points.shape[0]
    ks = np.full(n, k, np.int64)
    near_ref = _mean_distances(points, reference, ks, np.zeros(n, bool))
    near_own = _mean_distances(points, others, ks, in_others)
    return np.log(np.maximum(near_ref, 1e-12) / np.maximum(near_own, 1e-12))


def _mean_log_ratio(
    near_ref: npt.NDArray[np.float64], near_own: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Mean over rounds (axis 0) of the log distance ratio."""
    ratio = np.maximum(near_ref, 1e-12) / np.maximum(near_own, 1e-12)
    return np.asarray(np.log(ratio).mean(axis=0))


def _own_neighbours(
    k: int,
    candidates: npt.NDArray[np.bool_],
    labels: npt.NDArray[np.int64],
    reference_labels: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """Own-kind neighbours per particle, scaled by how much denser its map class is
    among the projected particles (the first pass's novel candidates left out) than
    in the reference, so that a class the new data over-represent is not novel."""
    n_classes = int(max(labels.max(initial=0), reference_labels.max(initial=0))) + 1
    kept = ~candidates
    new = np.bincount(labels[kept], minlength=n_classes) / max(int(kept.sum()), 1)
    ref = np.bincount(reference_labels, minlength=n_classes) / max(reference_labels.size, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        over = np.where(ref > 0, new / ref, 1.0)
    over = np.clip(np.nan_to_num(over, nan=1.0), 1.0, MAX_OVER_REPRESENTATION)
    return np.maximum(np.rint(k * over[labels]), k).astype(np.int64)


def novelty_scores(
    points: npt.ArrayLike,
    reference: npt.ArrayLike,
    *,
    labels: npt.ArrayLike | None = None,
    reference_labels: npt.ArrayLike | None = None,
    k: int = NOVELTY_K,
    quantile: float = 0.95,
    repeats: int = 3,
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
    labels, reference_labels : array_like of int, shapes (n,) and (m,), optional
        Map classes of the particles and of the reference points. With them, a
        second pass corrects for classes that the projected data over-represent
        (see the module docstring).
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
    params: dict[str, Any] = {
        "k": k,
        "quantile": quantile,
        "repeats": repeats,
        "size": size,
        "statistic": "ratio",
        "composition_corrected": labels is not None and reference_labels is not None,
    }
    if size == 0:
        return NoveltyResult(np.zeros(n, bool), np.zeros(n, np.float32), float("nan"), params)
    rng = np.random.default_rng(np.random.SeedSequence(random_state, spawn_key=(13,)))
    null = []
    for _ in range(NULL_ROUNDS):
        perm = rng.permutation(m)
        half_a, half_b = ref[perm[:size]], ref[perm[size : 2 * size]]
        null.append(_log_ratio(half_b, half_a, half_b, np.ones(size, bool), k))
    threshold = float(np.quantile(np.concatenate(null), quantile))
    draws = [
        (np.sort(rng.choice(m, size, replace=False)), np.sort(rng.choice(n, size, replace=False)))
        for _ in range(repeats)
    ]
    ks = np.full(n, k, np.int64)
    near_ref, near_own = np.zeros((repeats, n)), np.zeros((repeats, n))
    for r, (ref_rows, rows) in enumerate(draws):
        in_sub = np.zeros(n, bool)
        in_sub[rows] = True
        near_ref[r] = _mean_distances(x, ref[ref_rows], ks, np.zeros(n, bool))
        near_own[r] = _mean_distances(x, x[rows], ks, in_sub)
    result = _mean_log_ratio(near_ref, near_own) - threshold
    if params["composition_corrected"]:
        # more own-kind neighbours can only lower a score: redo the candidates only
        k_own = _own_neighbours(
            k,
            result > 0,
            np.asarray(labels, dtype=np.int64),
            np.asarray(reference_labels, dtype=np.int64),
        )
        redo = np.flatnonzero((result > 0) & (k_own > k))
        for r, (_, rows) in enumerate(draws):
            near_own[r, redo] = _mean_distances(x[redo], x[rows], k_own[redo], np.isin(redo, rows))
        result[redo] = _mean_log_ratio(near_ref[:, redo], near_own[:, redo]) - threshold
    out = result.astype(np.float32)
    return NoveltyResult(out > 0, out, float(np.exp(threshold)), params)


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
