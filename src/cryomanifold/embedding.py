"""The 2-D map: a UMAP fit, and new points placed into it from plain arrays.

:func:`fit_umap` runs umap-learn on (a sample of) the particles' PCA coordinates and
returns a :class:`UMAPReference`: the reference points, their 2-D embedding and the
few numbers needed to place new points. :meth:`UMAPReference.transform` does that
without umap-learn's pickled index, the same way umap-learn's own ``transform`` does:

1. the ``n_neighbors`` nearest reference points of each new point (exact, Euclidean);
2. membership strengths ``exp(-d / sigma)`` with ``sigma`` chosen per point so that
   the strengths sum to ``log2(n_neighbors)`` (umap's ``smooth_knn_dist`` with a local
   connectivity of 0, as its transform uses);
3. the strength-weighted mean of the neighbours' embedding;
4. optionally, a few epochs of umap's layout optimisation against the frozen
   reference (``epochs > 0``; umap-learn uses 30-100).

Steps 1-3 are deterministic and independent for every point, so the result does not
depend on how the points are split into chunks, on the scheduler or on the seed.
Everything is numpy; umap-learn (and numba) are only imported to fit, or for the
optional epochs.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "UMAPReference",
    "fit_umap",
    "knn",
    "membership_strengths",
    "warm_up",
    "weighted_positions",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

_SMOOTH_K_TOLERANCE = 1e-5
_MIN_K_DIST_SCALE = 1e-3


def _set_numba_cache() -> None:
    """Point numba's on-disk cache at a user-writable folder before umap is imported.

    umap-learn and pynndescent mark many kernels ``cache=True``; their default cache
    lives beside the installed package, which is often read-only, and then every new
    process compiles again. An explicit ``NUMBA_CACHE_DIR`` from the user wins.
    """
    if "NUMBA_CACHE_DIR" not in os.environ:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "cryomanifold", "numba")


@functools.cache
def _enable_numba_caching() -> int:
    """Turn on numba's on-disk cache for umap's and pynndescent's kernels that lack it.

    Several of umap's kernels (the layout optimiser, the fuzzy simplicial set) are
    compiled without ``cache=True``, so every new process compiled them again: about
    7 s of a small run. Caching stores the same machine code, so results do not
    change (checked: identical embeddings). Runs once per process; returns the number
    of kernels switched.
    """
    import sys

    from numba.core.registry import CPUDispatcher

    count = 0
    for name in [m for m in list(sys.modules) if m.startswith(("umap", "pynndescent"))]:
        for obj in list(vars(sys.modules[name]).values()):
            cache = getattr(obj, "_cache", None)
            if isinstance(obj, CPUDispatcher) and type(cache).__name__ == "NullCache":
                try:
                    obj.enable_caching()
                except Exception:  # pragma: no cover - a kernel numba cannot cache
                    continue
                count += 1
    return count


def import_umap() -> Any:
    """Import umap-learn quietly with numba's disk cache on; returns the module."""
    _set_numba_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns at import about optional tensorflow
        import umap
    _enable_numba_caching()
    return umap


def warm_up() -> None:
    """Compile (or load from numba's disk cache) the kernels that placing new points with
    epochs uses, on a tiny map; a fresh Dask worker calls it once, before any task."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(12, 3)).astype(np.float32)
    UMAPReference(pts, pts[:, :2].copy(), 4, 1.58, 0.9).transform(pts[:3] + 0.1, epochs=2)


def knn(
    points: npt.ArrayLike, reference: npt.ArrayLike, k: int, *, block: int | None = None
) -> tuple[npt.NDArray[np.int64], F32]:
    """Exact Euclidean k nearest neighbours of ``points`` among ``reference``.

    Candidates come from one float32 matrix product per block (``|r|^2 - 2 x.r`` has
    the order of the squared distances along each row); the ``k`` nearest of
    ``k + 8`` candidates are then chosen on distances recomputed exactly in float64,
    so float32 rounding cannot swap neighbours near the cut. A reference point's
    distance to itself is exactly 0.

    Parameters
    ----------
    points : array_like, shape (n, p)
    reference : array_like, shape (m, p)
    k : int
        Neighbours per point, ``1 <= k <= m``.
    block : int, optional
        Points per distance block (bounds memory to about ``12 * block * m`` bytes).
        Default: about 2^22 / m rows (64 to 4096), so that a block stays near the CPU
        caches (against 20 000 reference points: 210 rows, 50 MB).

    Returns
    -------
    indices : ndarray, shape (n, k), int64
        Rows into ``reference``, nearest first (ties broken by the lower index).
    distances : ndarray, shape (n, k), float32
    """
    x = np.asarray(points, dtype=np.float32)
    ref = np.ascontiguousarray(reference, dtype=np.float32)
    m = ref.shape[0]
    if not 1 <= k <= m:
        raise ValueError(f"k must be between 1 and the {m} reference points; got {k}")
    if block is None:
        block = int(np.clip(2**22 // m, 64, 4096))
    n_cand = min(k + 8, m)
    ref_sq = np.einsum("ij,ij->i", ref, ref, dtype=np.float32)
    ref64 = ref.astype(np.float64)
    idx = np.empty((x.shape[0], k), dtype=np.int64)
    dist = np.empty((x.shape[0], k), dtype=np.float32)
    for start in range(0, x.shape[0], block):
        xb = x[start : start + block]
        score = xb @ ref.T
        score *= np.float32(-2.0)
        score += ref_sq  # |x - r|^2 - |x|^2
        cand = (
            np.argpartition(score, n_cand - 1, axis=1)[:, :n_cand]
            if n_cand < m
            else np.broadcast_to(np.arange(m), (len(xb), m))
        )
        diff = ref64[cand] - xb.astype(np.float64)[:, None, :]
        d2 = np.einsum("nkp,nkp->nk", diff, diff)
        order = np.lexsort((cand, d2), axis=1)[:, :k]
        idx[start : start + len(xb)] = np.take_along_axis(cand, order, axis=1)
        dist[start : start + len(xb)] = np.sqrt(np.take_along_axis(d2, order, axis=1))
    return idx, dist


def membership_strengths(distances: npt.ArrayLike, *, n_iter: int = 64) -> F32:
    """UMAP membership strengths of each point's neighbours, rows of shape (k,).

    ``exp(-d_j / sigma)`` with ``sigma`` found by bisection so that the strengths of
    neighbours 2..k sum to ``log2(k)`` (umap's ``smooth_knn_dist`` with local
    connectivity 0, as in its ``transform``). ``sigma`` is kept above 1e-3 of the
    mean neighbour distance of the point (umap uses the batch mean; the per-point
    mean keeps every point independent of its batch). A neighbour at distance 0
    gets strength 1.

    Parameters
    ----------
    distances : array_like, shape (n, k)
        Neighbour distances, nearest first.

    Returns
    -------
    ndarray, shape (n, k), float32
    """
    d = np.asarray(distances, dtype=np.float64)
    n, k = d.shape
    target = np.log2(k)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    active = np.ones(n, dtype=bool)
    tail = d[:, 1:]
    for _ in range(n_iter):
        if not active.any():
            break
        psum = np.where(tail > 0, np.exp(-tail / mid[:, None]), 1.0).sum(axis=1)
        done = np.abs(psum - target) < _SMOOTH_K_TOLERANCE
        active &= ~done
        high = active & (psum > target)
        low = active & ~(psum > target)
        hi = np.where(high, mid, hi)
        lo = np.where(low, mid, lo)
        mid = np.where(
            high,
            (lo + hi) / 2.0,
            np.where(low, np.where(np.isinf(hi), mid * 2.0, (lo + hi) / 2.0), mid),
        )
    sigma = np.maximum(mid, _MIN_K_DIST_SCALE * d.mean(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        vals = np.where(d > 0, np.exp(-d / sigma[:, None]), 1.0)
    return vals.astype(np.float32)


def weighted_positions(
    indices: npt.NDArray[np.int64], distances: npt.ArrayLike, embedding: F32
) -> tuple[F32, F32]:
    """Map positions from neighbours: steps 2-3 of the module docstring.

    Parameters
    ----------
    indices : ndarray, shape (n, k)
        Neighbours' rows of ``embedding``, nearest first.
    distances : array_like, shape (n, k)
        Their distances.
    embedding : ndarray, shape (m, 2)

    Returns
    -------
    positions : ndarray, shape (n, 2), float32
        The membership-weighted mean of the neighbours' positions (a neighbour at
        distance 0 gives its own position).
    strengths : ndarray, shape (n, k), float32
        :func:`membership_strengths` of ``distances``.
    """
    vals = membership_strengths(distances)
    exact = vals >= 1.0
    w = vals / np.maximum(vals.sum(axis=1, keepdims=True), 1e-30)
    out = np.einsum("nk,nkd->nd", w, embedding[indices]).astype(np.float32)
    hit = exact.any(axis=1)
    if hit.any():
        first = np.argmax(exact[hit], axis=1)
        out[hit] = embedding[indices[hit, first]]
    return out, vals


@dataclass(frozen=True)
class UMAPReference:
    """What it takes to place new points into a fitted 2-D UMAP map.

    Attributes
    ----------
    points : ndarray, shape (m, p), float32
        Reference points in the input space of the map (PCA coordinates).
    embedding : ndarray, shape (m, 2), float32
        Their positions in the map.
    n_neighbors : int
    a, b : float
        UMAP's curve parameters (from ``min_dist``), for the optional epochs.
    min_dist : float
    random_state : int or None
        Seed of the fit (also seeds the optional epochs).
    """

    points: F32
    embedding: F32
    n_neighbors: int
    a: float
    b: float
    min_dist: float = 0.1
    random_state: int | None = None

    def __post_init__(self) -> None:
        m = self.points.shape[0]
        if self.points.ndim != 2 or self.embedding.shape != (m, 2):
            raise ValueError(
                f"reference points {self.points.shape} and embedding {self.embedding.shape} "
                "do not match"
            )
        if not 1 <= self.n_neighbors <= m:
            raise ValueError(f"n_neighbors={self.n_neighbors} needs 1..{m} reference points")

    def subsample(self, size: int, *, random_state: int | None = None) -> UMAPReference:
        """A reference of at most ``size`` of the points (seeded, sorted rows)."""
        m = self.points.shape[0]
        if size >= m:
            return self
        rows = np.sort(np.random.default_rng(random_state).choice(m, size, replace=False))
        return UMAPReference(
            np.ascontiguousarray(self.points[rows]),
            np.ascontiguousarray(self.embedding[rows]),
            min(self.n_neighbors, size),
            self.a,
            self.b,
            self.min_dist,
            self.random_state,
        )

    def transform(self, points: npt.ArrayLike, *, epochs: int = 0, seed: int = 0) -> F32:
        """Place new points into the map (see the module docstring).

        Parameters
        ----------
        points : array_like, shape (n, p)
            Points in the reference's input space.
        epochs : int
            Layout epochs against the frozen reference after the weighted-mean start
            (0: none; the result is then exactly reproducible per point).
        seed : int
            Seed of the epochs' negative sampling (with ``epochs > 0`` the result
            depends on it and on the set of points transformed together).

        Returns
        -------
        ndarray, shape (n, 2), float32
        """
        return self.place(points, epochs=epochs, seed=seed)[0]

    def place(self, points: npt.ArrayLike, *, epochs: int = 0, seed: int = 0) -> tuple[F32, F32]:
        """:meth:`transform`, plus each point's distance from the map's support.

        Returns
        -------
        embedding : ndarray, shape (n, 2), float32
        neighbour_distance : ndarray, shape (n,), float32
            Mean distance to the ``n_neighbors`` nearest reference points, in the
            input space (a reference point's own zero distance is left out).
        """
        x = np.asarray(points, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.points.shape[1]:
            raise ValueError(
                f"points have shape {x.shape}; the map expects (n, {self.points.shape[1]})"
            )
        if x.shape[0] == 0:
            return np.empty((0, 2), np.float32), np.empty(0, np.float32)
        k = self.n_neighbors
        idx_all, dist_all = knn(x, self.points, min(k + 1, self.points.shape[0]))
        own = dist_all[:, 0] == 0  # the point is a reference point
        far = np.where(own[:, None], dist_all[:, 1:], dist_all[:, :k])
        spread = far.mean(axis=1).astype(np.float32)
        idx, dist = idx_all[:, :k], dist_all[:, :k]
        out, vals = weighted_positions(idx, dist, self.embedding)
        if epochs > 0:
            out = self._optimise(out, idx, vals, epochs, seed)
            # a copy of a reference point stays where the reference has it
            out[own] = self.embedding[idx_all[own, 0]]
        return out, spread

    def _optimise(
        self,
        start: F32,
        idx: npt.NDArray[np.int64],
        vals: F32,
        epochs: int,
        seed: int,
    ) -> F32:
        umap = import_umap()
        from umap.layouts import optimize_layout_euclidean
        from umap.umap_ import make_epochs_per_sample

        n, k = idx.shape
        head = np.repeat(np.arange(n, dtype=np.int32), k)
        tail = idx.ravel().astype(np.int32)
        weight = vals.ravel().astype(np.float32)
        keep = weight >= weight.max() / float(epochs)
        head, tail, weight = head[keep], tail[keep], weight[keep]
        rng_state = np.random.default_rng(seed).integers(-(2**31), 2**31 - 1, 3).astype(np.int64)
        del umap
        return np.asarray(
            optimize_layout_euclidean(
                start.copy(),
                self.embedding.astype(np.float32, copy=True),
                head,
                tail,
                int(epochs),
                self.points.shape[0],
                make_epochs_per_sample(weight, int(epochs)),
                self.a,
                self.b,
                rng_state,
                1.0,
                0.25,
                5,
                False,
            ),
            dtype=np.float32,
        )


def fit_umap(
    points: npt.ArrayLike,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    random_state: int | None = None,
) -> UMAPReference:
    """Fit a 2-D UMAP map of ``points`` (n, p) and return it as a :class:`UMAPReference`.

    With a ``random_state`` the fit is reproducible (umap-learn then runs
    single-threaded). The returned reference holds every fitted point; its
    ``embedding`` is the map of ``points`` in their order.
    """
    x = np.asarray(points, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ValueError(f"need at least 3 points of shape (n, p); got {x.shape}")
    umap = import_umap()
    k = int(min(n_neighbors, x.shape[0] - 1))
    model = umap.UMAP(
        n_components=2,
        n_neighbors=k,
        min_dist=min_dist,
        random_state=random_state,
        init="spectral" if x.shape[0] > 10 else "random",
    )
    with warnings.catch_warnings():
        # umap says a seed makes it single-threaded; reproducibility is the point here
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        # pynndescent's kernels for larger data (> 4096 points) cannot use numba's disk
        # cache (_enable_numba_caching asks them to); they are compiled as before
        warnings.filterwarnings("ignore", message=".*Cannot cache compiled function")
        emb = np.asarray(model.fit_transform(x), dtype=np.float32)
    return UMAPReference(
        np.ascontiguousarray(x),
        np.ascontiguousarray(emb),
        k,
        float(model._a),
        float(model._b),
        float(min_dist),
        random_state,
    )
