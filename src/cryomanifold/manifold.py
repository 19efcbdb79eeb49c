"""The feature manifold: scaling → PCA → UMAP (2-D) → Gaussian mixture.

:class:`ParticleManifold` follows the scikit-learn estimator contract: ``__init__``
only stores parameters, :meth:`ParticleManifold.fit` validates, learns and returns
``self``, learned state ends in ``_``. A fitted manifold can embed and classify new
particles (:meth:`transform`, :meth:`predict`), which is how new data is projected
into an existing map (the "atlas" of several datasets), and it can be saved and
loaded with :func:`save_manifold` / :func:`load_manifold`.

``umap`` is imported lazily (it compiles numba code on first use), so importing
this module stays fast.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from cryomanifold._atomic import atomic_path

__all__ = ["ParticleManifold", "choose_n_classes", "load_manifold", "save_manifold"]

log = logging.getLogger(__name__)


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


def _umap(**kwargs: Any) -> Any:
    _set_numba_cache()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns at import about optional tensorflow
        import umap
    _enable_numba_caching()
    return umap.UMAP(**kwargs)


def choose_n_classes(
    embedding: npt.ArrayLike,
    candidates: list[int],
    *,
    random_state: int | None = None,
    max_points: int = 20000,
    tolerance: float = 10.0,
) -> tuple[int, dict[int, float]]:
    """Pick the number of Gaussian-mixture components by the Bayesian information criterion.

    Parameters
    ----------
    embedding : array_like, shape (n, 2)
        Points to cluster.
    candidates : list of int
        Numbers of components to try.
    random_state : int, optional
        Seed for the subsample and the mixtures.
    max_points : int
        BIC is evaluated on a random subsample of at most this many points (the
        choice is stable well below that, and it bounds the cost on 10^6 particles).

    tolerance : float
        The largest candidate whose BIC is within ``tolerance`` of the lowest is
        chosen (0: the lowest BIC).

    Returns
    -------
    n_classes : int
        The chosen candidate.
    bic : dict
        BIC of every candidate.
    """
    x = np.asarray(embedding, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    if x.shape[0] > max_points:
        x = x[rng.choice(x.shape[0], max_points, replace=False)]
    bic: dict[int, float] = {}
    for k in candidates:
        if k > x.shape[0]:
            continue
        gmm = GaussianMixture(
            k, covariance_type="full", random_state=random_state, n_init=1, reg_covar=1e-4
        )
        gmm.fit(x)
        bic[k] = float(gmm.bic(x))
    if not bic:
        raise ValueError(f"no candidate number of classes fits {x.shape[0]} points")
    floor = min(bic.values())
    # The largest K whose BIC is not strongly worse than the best (Kass & Raftery: a
    # difference above 10 is very strong evidence): for vector quantisation more
    # classes give sharper class averages, and BIC is often flat near its minimum.
    best = max(k for k, v in bic.items() if v <= floor + tolerance)
    return best, bic


class ParticleManifold(BaseEstimator):
    """Embed invariant features in 2-D and vector-quantise them with a Gaussian mixture.

    Parameters
    ----------
    n_classes : int, optional
        Number of classes. If None, chosen by BIC among ``class_candidates``.
    class_candidates : sequence of int, optional
        Candidates for the BIC choice; default 2..min(50, n // 20), in steps that
        grow with K.
    pca_variance : float
        Fraction of the variance the PCA keeps (the paper's 0.95).
    standardize : bool
        Scale each feature to unit variance before PCA (features of very different
        magnitudes otherwise let a few low orders dominate).
    feature_weights : array_like, shape (d,), optional
        Multiply each (standardised) feature by this weight before PCA, to give a
        feature more or less say in the map (1 for all by default).
    n_neighbors, min_dist : int, float
        UMAP parameters.
    random_state : int, optional
        Seed for PCA, UMAP and the mixture; with a seed the result is reproducible
        (UMAP then runs single-threaded).

    Attributes
    ----------
    scaler_ : StandardScaler or None
    pca_ : PCA
    umap_ : umap.UMAP
    gmm_ : GaussianMixture
    n_classes_ : int
    bic_ : dict
        BIC of every candidate number of classes (empty when ``n_classes`` was given).
    embedding_ : ndarray, shape (n, 2), float32
    labels_ : ndarray, shape (n,), int
        0-based classes, numbered by decreasing size.
    probabilities_ : ndarray, shape (n,), float32
        Posterior probability of each particle's class.
    membership_ : ndarray, shape (n, K), float64
        Posterior probabilities of every class.
    """

    def __init__(
        self,
        n_classes: int | None = None,
        *,
        class_candidates: list[int] | None = None,
        pca_variance: float = 0.95,
        standardize: bool = True,
        feature_weights: npt.ArrayLike | None = None,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        random_state: int | None = None,
    ) -> None:
        self.n_classes = n_classes
        self.class_candidates = class_candidates
        self.pca_variance = pca_variance
        self.standardize = standardize
        self.feature_weights = feature_weights
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.random_state = random_state

    # -- fitting -----------------------------------------------------------------
    def _candidates(self, n: int) -> list[int]:
        if self.class_candidates is not None:
            return sorted({int(k) for k in self.class_candidates})
        upper = max(2, min(50, n // 20))
        ks = [k for k in (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 50) if k <= upper]
        return ks or [2]

    def fit(self, X: npt.ArrayLike, y: None = None) -> ParticleManifold:
        """Fit scaler, PCA, UMAP and the mixture to features ``X`` of shape (n, d)."""
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < 3:
            raise ValueError(f"features must have shape (n >= 3, d); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf; drop those particles first")
        if self.n_classes is not None and not 1 <= self.n_classes <= x.shape[0]:
            raise ValueError(f"n_classes={self.n_classes} must be between 1 and {x.shape[0]}")
        self.scaler_ = StandardScaler().fit(x) if self.standardize else None
        xs = self._scale(x)
        self.pca_ = PCA(
            n_components=self.pca_variance, svd_solver="full", random_state=self.random_state
        ).fit(xs)
        xp = self.pca_.transform(xs)
        n_neighbors = int(min(self.n_neighbors, x.shape[0] - 1))
        self.umap_ = _umap(
            n_components=2,
            n_neighbors=n_neighbors,
            min_dist=self.min_dist,
            random_state=self.random_state,
            init="spectral" if x.shape[0] > 10 else "random",
        )
        with warnings.catch_warnings():
            # umap says a seed makes it single-threaded; reproducibility is the point here
            warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
            emb = np.asarray(self.umap_.fit_transform(xp), dtype=np.float32)
        if self.n_classes is None:
            k, self.bic_ = choose_n_classes(
                emb, self._candidates(x.shape[0]), random_state=self.random_state
            )
        else:
            k, self.bic_ = int(self.n_classes), {}
        gmm = GaussianMixture(
            k, covariance_type="full", random_state=self.random_state, n_init=2, reg_covar=1e-4
        ).fit(emb)
        # Number classes by decreasing size so that class 1 is the largest.
        raw = gmm.predict(emb)
        order = np.argsort(-np.bincount(raw, minlength=k), kind="stable")
        self.gmm_ = _permute_gmm(gmm, order)
        self.n_classes_ = k
        self.embedding_ = emb
        self.membership_ = np.asarray(self.gmm_.predict_proba(emb))
        self.labels_, self.probabilities_ = self._classify(self.membership_)
        log.info(
            "manifold: %d features -> %d PCA components -> 2-D UMAP -> %d classes",
            x.shape[1],
            self.pca_.n_components_,
            k,
        )
        return self

    # -- applying ----------------------------------------------------------------
    def _scale(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        xs = self.scaler_.transform(x) if self.scaler_ is not None else x
        if self.feature_weights is not None:
            w = np.asarray(self.feature_weights, dtype=np.float32)
            if w.shape != (x.shape[1],):
                raise ValueError(f"feature_weights has shape {w.shape}; expected ({x.shape[1]},)")
            xs = xs * w
        return np.asarray(xs, dtype=np.float32)

    @staticmethod
    def _classify(
        proba: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Hard labels and the probability of each label from memberships (n, K)."""
        labels = np.argmax(proba, axis=1).astype(np.int64)
        return labels, proba[np.arange(len(labels)), labels].astype(np.float32)

    def transform(self, X: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Embed new features (n, d) into the fitted 2-D map."""
        check_is_fitted(self, "umap_")
        x = np.asarray(X, dtype=np.float32)
        xs = self._scale(x)
        return np.asarray(self.umap_.transform(self.pca_.transform(xs)), dtype=np.float32)

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """0-based class of new features (n, d)."""
        return self._classify(self.predict_proba(X))[0]

    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Class membership probabilities (n, K) of new features (n, d)."""
        check_is_fitted(self, "gmm_")
        return np.asarray(self.gmm_.predict_proba(self.transform(X)))

    def class_centroids(self) -> npt.NDArray[np.float32]:
        """Centre of each class in the embedding, (K, 2): the mixture means."""
        check_is_fitted(self, "gmm_")
        return np.asarray(self.gmm_.means_, dtype=np.float32)


def _permute_gmm(gmm: GaussianMixture, order: npt.NDArray[np.intp]) -> GaussianMixture:
    """Reorder the components of a fitted mixture (same model, new numbering)."""
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(gmm, name, getattr(gmm, name)[order])
    return gmm


def save_manifold(manifold: ParticleManifold, path: str | os.PathLike[str]) -> Path:
    """Save a fitted manifold with joblib (atomic write)."""
    import joblib

    check_is_fitted(manifold, "gmm_")
    with atomic_path(path) as tmp:
        joblib.dump(manifold, tmp)
    return Path(path)


def load_manifold(path: str | os.PathLike[str]) -> ParticleManifold:
    """Load a manifold written by :func:`save_manifold` (only load files you trust)."""
    import joblib

    obj = joblib.load(path)
    if not isinstance(obj, ParticleManifold):
        raise TypeError(f"{path} does not hold a ParticleManifold")
    return obj
