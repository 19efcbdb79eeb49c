"""The feature manifold: feature scaling → PCA → 2-D UMAP map → Gaussian mixture.

:class:`ParticleManifold` follows the scikit-learn estimator contract: ``__init__``
only stores parameters, :meth:`ParticleManifold.fit` validates, learns and returns
``self``, learned state ends in ``_``. Everything it learns is plain arrays (the
PCA, the UMAP reference of :mod:`cryomanifold.embedding`, the mixture's weights,
means and covariances), so it can be written and read without pickle
(:mod:`cryomanifold.modelfile`), and new particles are embedded and classified from
those arrays (:meth:`transform`, :meth:`predict`).

At scale, the PCA comes from moments streamed over all particles
(:class:`FeatureMoments`), while UMAP and the mixture are fitted on a random
subsample (``fit_sample``); everyone else is placed into the map by
:meth:`ParticleManifold.transform`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.linalg
from sklearn.base import BaseEstimator
from sklearn.mixture import GaussianMixture
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from cryomanifold.embedding import fit_umap

__all__ = [
    "FeatureMoments",
    "LinearPCA",
    "ParticleManifold",
    "choose_n_classes",
    "fit_mixture",
    "gmm_from_arrays",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FeatureMoments:
    """Count, mean and scatter matrix of feature vectors, mergeable across chunks.

    ``merge`` combines two sets exactly (Chan et al.'s pairwise update), so streaming
    the features chunk by chunk gives the same moments as one pass over all of them,
    without the cancellation of accumulating raw sums of squares.

    Attributes
    ----------
    count : int
    mean : ndarray, shape (d,), float64
    scatter : ndarray, shape (d, d), float64
        ``sum (x - mean)(x - mean)^T``.
    """

    count: int
    mean: F64
    scatter: F64

    @classmethod
    def of(cls, features: npt.ArrayLike) -> FeatureMoments:
        """Moments of the rows of ``features`` (n, d)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (n, d); got {x.shape}")
        if x.shape[0] == 0:
            return cls(0, np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1])))
        mean = x.mean(axis=0)
        centred = x - mean
        return cls(x.shape[0], mean, centred.T @ centred)

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Moments of the union of two sets of rows."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        scatter = (
            self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / n)
        )
        return FeatureMoments(n, mean, scatter)

    @property
    def covariance(self) -> F64:
        """Sample covariance (d, d), with ``n - 1`` in the denominator."""
        return self.scatter / max(self.count - 1, 1)

    def scaled(self, shift: npt.ArrayLike, scale: npt.ArrayLike) -> FeatureMoments:
        """Moments of ``(x - shift) * scale``."""
        s = np.asarray(scale, dtype=np.float64)
        mean = (self.mean - np.asarray(shift, dtype=np.float64)) * s
        return FeatureMoments(self.count, mean, self.scatter * np.outer(s, s))


@dataclass(frozen=True)
class LinearPCA:
    """A fitted PCA as arrays: ``transform(x) = (x - mean) @ components.T``.

    Attributes
    ----------
    mean : ndarray, shape (d,), float64
    components : ndarray, shape (p, d), float64
        Unit principal axes by decreasing variance; each axis's largest-magnitude
        entry is positive (a deterministic sign).
    explained_variance : ndarray, shape (p,), float64
    explained_variance_ratio : ndarray, shape (p,), float64
    """

    mean: F64
    components: F64
    explained_variance: F64
    explained_variance_ratio: F64

    @property
    def n_components_(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def from_moments(cls, moments: FeatureMoments, variance: float) -> LinearPCA:
        """Keep the fewest components that explain at least ``variance`` (in (0, 1])."""
        if not 0 < variance <= 1:
            raise ValueError(f"variance must be in (0, 1]; got {variance}")
        values, vectors = np.linalg.eigh(moments.covariance)
        order = np.argsort(values)[::-1]
        values = np.maximum(values[order], 0.0)
        vectors = vectors[:, order].T
        total = values.sum()
        ratio = values / total if total > 0 else np.full(values.size, 1.0 / values.size)
        p = int(np.searchsorted(np.cumsum(ratio), variance - 1e-12) + 1)
        p = min(max(p, 1), values.size)
        comps = vectors[:p]
        signs = np.sign(comps[np.arange(p), np.argmax(np.abs(comps), axis=1)])
        comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
        return cls(moments.mean.copy(), comps, values[:p], ratio[:p])

    def transform(self, features: npt.ArrayLike) -> F32:
        """PCA coordinates (n, p) float32 of features (n, d)."""
        x = np.asarray(features, dtype=np.float64)
        return np.asarray((x - self.mean) @ self.components.T, dtype=np.float32)


def gmm_from_arrays(
    weights: npt.ArrayLike, means: npt.ArrayLike, covariances: npt.ArrayLike
) -> GaussianMixture:
    """A fitted full-covariance :class:`~sklearn.mixture.GaussianMixture` from its arrays."""
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    cov = np.asarray(covariances, dtype=np.float64)
    k, d = mu.shape
    if w.shape != (k,) or cov.shape != (k, d, d):
        raise ValueError(
            f"mixture arrays do not match: weights {w.shape}, means {mu.shape}, "
            f"covariances {cov.shape}"
        )
    gmm = GaussianMixture(k, covariance_type="full")
    gmm.weights_, gmm.means_, gmm.covariances_ = w, mu, cov
    chol = np.empty_like(cov)
    for c in range(k):
        lower = np.linalg.cholesky(cov[c])
        chol[c] = scipy.linalg.solve_triangular(lower, np.eye(d), lower=True).T
    gmm.precisions_cholesky_ = chol
    gmm.precisions_ = np.einsum("kij,klj->kil", chol, chol)
    gmm.converged_, gmm.n_iter_, gmm.lower_bound_ = True, 0, -np.inf
    gmm.n_features_in_ = d
    return gmm


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
    from tqdm.auto import tqdm

    x = np.asarray(embedding, dtype=np.float64)
    rng = np.random.default_rng(random_state)
    if x.shape[0] > max_points:
        x = x[rng.choice(x.shape[0], max_points, replace=False)]
    bic: dict[int, float] = {}
    usable = [k for k in candidates if k <= x.shape[0]]
    # mixtures of 2-D points are many tiny matrix products: threaded BLAS only stalls
    # them (3-5x slower measured on a loaded 2-core machine)
    with threadpool_limits(limits=1, user_api="blas"):
        for k in tqdm(usable, desc="classes (BIC)", unit="K", disable=None, leave=False):
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


def fit_mixture(
    embedding: npt.ArrayLike, n_classes: int, random_state: int | None
) -> GaussianMixture:
    """A full-covariance Gaussian mixture of map positions (n, 2), components numbered by
    decreasing size (so that class 1 is the largest)."""
    x = np.asarray(embedding, dtype=np.float64)
    with threadpool_limits(limits=1, user_api="blas"):  # see choose_n_classes
        gmm = GaussianMixture(
            n_classes, covariance_type="full", random_state=random_state, n_init=2, reg_covar=1e-4
        ).fit(x)
        raw = gmm.predict(x)
    order = np.argsort(-np.bincount(raw, minlength=n_classes), kind="stable")
    return _permute_gmm(gmm, order)


def _permute_gmm(gmm: GaussianMixture, order: npt.NDArray[np.intp]) -> GaussianMixture:
    """Reorder the components of a fitted mixture (same model, new numbering)."""
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(gmm, name, getattr(gmm, name)[order])
    return gmm


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
        Scale each feature to unit variance before PCA.
    feature_weights : array_like, shape (d,), optional
        Multiply each (scaled) feature by this weight before PCA, to give a feature
        more or less say in the map (1 for all by default).
    match_scale_columns : sequence of int
        Columns centred and scaled to the RMS standard deviation of the other
        (scaled) columns before the weights, so that their weight is relative to a
        typical feature whether or not the features are standardised (the pipeline's
        log-contrast column).
    n_neighbors, min_dist : int, float
        UMAP parameters.
    fit_sample : int, optional
        Fit UMAP and the mixture on at most this many randomly chosen rows (seeded);
        the PCA always uses every row. None: all rows.
    reference_size : int, optional
        Keep at most this many of the fitted points as the map's reference for
        :meth:`transform` (a seeded subsample); None: all. The reference is what a
        saved model stores, so this bounds the model file.
    transform_epochs : int
        Layout epochs of :meth:`transform` after the weighted-mean placement (0: none,
        exactly reproducible per particle).
    random_state : int, optional
        Seed for the subsamples, UMAP and the mixture; with a seed the result is
        reproducible (UMAP then runs single-threaded).

    Attributes
    ----------
    shift_, scale_ : ndarray, shape (d,), float64
        Features are mapped to ``(x - shift_) * scale_`` before the PCA.
    pca_ : LinearPCA
    reference_ : UMAPReference
    gmm_ : GaussianMixture
    n_classes_ : int
    bic_ : dict
        BIC of every candidate number of classes (empty when ``n_classes`` was given).
    sample_ : ndarray of int64, shape (m,)
        Rows of ``X`` that UMAP and the mixture were fitted on (all rows when
        ``fit_sample`` is None or not smaller than ``n``).
    embedding_ : ndarray, shape (n, 2), float32
        Map positions of the rows of ``X``: the UMAP fit for the sampled rows,
        :meth:`transform` for the others.
    labels_ : ndarray, shape (n,), int64
        0-based classes, numbered by decreasing size on the fitted rows.
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
        match_scale_columns: Sequence[int] = (),
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        fit_sample: int | None = None,
        reference_size: int | None = None,
        transform_epochs: int = 0,
        random_state: int | None = None,
    ) -> None:
        self.n_classes = n_classes
        self.class_candidates = class_candidates
        self.pca_variance = pca_variance
        self.standardize = standardize
        self.feature_weights = feature_weights
        self.match_scale_columns = match_scale_columns
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.fit_sample = fit_sample
        self.reference_size = reference_size
        self.transform_epochs = transform_epochs
        self.random_state = random_state

    # -- fitting -----------------------------------------------------------------
    def _candidates(self, n: int) -> list[int]:
        if self.class_candidates is not None:
            return sorted({int(k) for k in self.class_candidates})
        upper = max(2, min(50, n // 20))
        ks = [k for k in (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 50) if k <= upper]
        return ks or [2]

    def _affine(self, moments: FeatureMoments) -> tuple[F64, F64]:
        """Feature shift and scale from the moments of the raw features."""
        d = moments.mean.size
        var = np.diag(moments.covariance).copy()
        std = np.sqrt(np.maximum(var, 0.0))
        shift = np.zeros(d)
        scale = np.ones(d)
        if self.standardize:
            shift = moments.mean.copy()
            scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0)
        matched = np.asarray(sorted({int(c) % d for c in self.match_scale_columns}), dtype=np.intp)
        if matched.size:
            others = np.setdiff1d(np.arange(d), matched)
            typical = (
                float(np.sqrt(np.mean(var[others] * scale[others] ** 2))) if others.size else 1.0
            )
            shift[matched] = moments.mean[matched]
            scale[matched] = typical / np.where(std[matched] > 0, std[matched], 1.0)
        if self.feature_weights is not None:
            w = np.asarray(self.feature_weights, dtype=np.float64)
            if w.shape != (d,):
                raise ValueError(f"feature_weights has shape {w.shape}; expected ({d},)")
            scale = scale * w
        return shift, scale

    def fit(
        self, X: npt.ArrayLike, y: None = None, *, moments: FeatureMoments | None = None
    ) -> ParticleManifold:
        """Fit the scaling, PCA, UMAP and the mixture to features ``X`` of shape (n, d).

        Parameters
        ----------
        X : array_like, shape (n, d)
            Features; all rows, or (with ``moments``) a sample of them.
        moments : FeatureMoments, optional
            Moments of the raw features of *all* particles (streamed by the caller):
            the scaling and the PCA come from them instead of from ``X``.
        """
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] < 3:
            raise ValueError(f"features must have shape (n >= 3, d); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf; drop those particles first")
        if self.n_classes is not None and not 1 <= self.n_classes <= x.shape[0]:
            raise ValueError(f"n_classes={self.n_classes} must be between 1 and {x.shape[0]}")
        mom = FeatureMoments.of(x) if moments is None else moments
        if mom.mean.shape != (x.shape[1],):
            raise ValueError(f"moments are of {mom.mean.size} features; X has {x.shape[1]}")
        self.shift_, self.scale_ = self._affine(mom)
        self.pca_ = LinearPCA.from_moments(mom.scaled(self.shift_, self.scale_), self.pca_variance)
        rng = np.random.default_rng(self.random_state)
        n = x.shape[0]
        if self.fit_sample is not None and self.fit_sample < n:
            self.sample_ = np.sort(rng.choice(n, max(int(self.fit_sample), 3), replace=False))
        else:
            self.sample_ = np.arange(n, dtype=np.int64)
        xp = self.pca_.transform(self._scale(x[self.sample_]))
        log.info(
            "fitting the 2-D map (UMAP) on %d particles in %d PCA dimensions",
            xp.shape[0],
            xp.shape[1],
        )
        fitted = fit_umap(
            xp, n_neighbors=self.n_neighbors, min_dist=self.min_dist, random_state=self.random_state
        )
        emb_sample = fitted.embedding
        size = self.reference_size
        self.reference_ = (
            fitted if size is None else fitted.subsample(size, random_state=self.random_state)
        )
        if self.n_classes is None:
            k, self.bic_ = choose_n_classes(
                emb_sample, self._candidates(emb_sample.shape[0]), random_state=self.random_state
            )
        else:
            k, self.bic_ = int(self.n_classes), {}
        self.gmm_ = fit_mixture(emb_sample, k, self.random_state)
        self.n_classes_ = k
        emb = np.empty((n, 2), dtype=np.float32)
        emb[self.sample_] = emb_sample
        rest = np.setdiff1d(np.arange(n), self.sample_)
        if rest.size:
            emb[rest] = self.transform(x[rest])
        self.embedding_ = emb
        self.membership_ = np.asarray(self.gmm_.predict_proba(emb))
        self.labels_, self.probabilities_ = self.classify(self.membership_)
        log.info(
            "manifold: %d features -> %d PCA components -> 2-D UMAP (fitted on %d of %d) -> "
            "%d classes",
            x.shape[1],
            self.pca_.n_components_,
            self.sample_.size,
            n,
            k,
        )
        return self

    # -- applying ----------------------------------------------------------------
    def _scale(self, x: npt.ArrayLike) -> F32:
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.shift_.size:
            raise ValueError(f"features have shape {arr.shape}; expected (n, {self.shift_.size})")
        return np.asarray((arr - self.shift_) * self.scale_, dtype=np.float32)

    def pca_coordinates(self, X: npt.ArrayLike) -> F32:
        """PCA coordinates (n, p) of features (n, d): the space UMAP works in."""
        check_is_fitted(self, "pca_")
        return self.pca_.transform(self._scale(X))

    @staticmethod
    def classify(
        proba: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Hard labels and the probability of each label from memberships (n, K)."""
        labels = np.argmax(proba, axis=1).astype(np.int64)
        return labels, proba[np.arange(len(labels)), labels].astype(np.float32)

    def transform(self, X: npt.ArrayLike) -> F32:
        """Place new features (n, d) into the fitted 2-D map (see :mod:`cryomanifold.embedding`)."""
        return self.place(X)[0]

    def place(self, X: npt.ArrayLike) -> tuple[F32, F32]:
        """Map positions (n, 2) of new features (n, d) and their mean distance (n,) to the
        nearest reference points in PCA space (see :meth:`UMAPReference.place`)."""
        check_is_fitted(self, "reference_")
        seed = 0 if self.random_state is None else int(self.random_state)
        return self.reference_.place(
            self.pca_coordinates(X), epochs=int(self.transform_epochs), seed=seed
        )

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """0-based class of new features (n, d)."""
        return self.classify(self.predict_proba(X))[0]

    def predict_proba(self, X: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Class membership probabilities (n, K) of new features (n, d)."""
        check_is_fitted(self, "gmm_")
        emb = self.transform(X)
        with threadpool_limits(limits=1, user_api="blas"):  # see choose_n_classes
            return np.asarray(self.gmm_.predict_proba(emb))

    def class_centroids(self) -> F32:
        """Centre of each class in the embedding, (K, 2): the mixture means."""
        check_is_fitted(self, "gmm_")
        return np.asarray(self.gmm_.means_, dtype=np.float32)
