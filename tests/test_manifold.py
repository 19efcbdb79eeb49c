"""ParticleManifold: estimator contract and clustering quality on seeded blobs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score, homogeneity_score

from cryomanifold.manifold import (
    FeatureMoments,
    LinearPCA,
    ParticleManifold,
    choose_n_classes,
)


def _blobs(n_per: tuple[int, ...] = (150, 100, 60), d: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(len(n_per), d))
    x = np.concatenate([c + rng.normal(size=(m, d)) for c, m in zip(centres, n_per, strict=True)])
    y = np.repeat(np.arange(len(n_per)), n_per)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted():
    x, y = _blobs()
    return ParticleManifold(3, random_state=0).fit(x), x, y


def test_fit_recovers_blobs(fitted):
    m, _, y = fitted
    assert adjusted_rand_score(y, m.labels_) > 0.95
    assert m.embedding_.shape == (len(y), 2)
    assert m.probabilities_.min() > 0 and m.probabilities_.max() <= 1


def test_classes_numbered_by_decreasing_size(fitted):
    m, _, _ = fitted
    sizes = np.bincount(m.labels_, minlength=m.n_classes_)
    assert list(sizes) == sorted(sizes, reverse=True)
    assert sizes[0] == 150


def test_estimator_contract(fitted):
    m, x, _ = fitted
    c = clone(m)
    assert c.get_params() == m.get_params()
    assert not hasattr(c, "labels_")
    assert m.predict(x[:20]).shape == (20,)
    proba = m.predict_proba(x[:20])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_new_points_land_in_their_class(fitted):
    m, x, _y = fitted
    rng = np.random.default_rng(5)
    # fresh samples near the first training points of each blob
    x_new = x[[0, 200, 300]] + 0.1 * rng.normal(size=(3, x.shape[1])).astype(np.float32)
    assert list(m.predict(x_new)) == list(m.labels_[[0, 200, 300]])


def test_bic_choice_never_merges_blobs():
    # UMAP clusters are not Gaussian, so BIC may split a blob into several classes
    # (harmless for vector quantisation), but it must never merge two blobs.
    x, y = _blobs()
    m = ParticleManifold(None, class_candidates=[2, 3, 4, 5, 6], random_state=0).fit(x)
    assert set(m.bic_) == {2, 3, 4, 5, 6}
    assert m.bic_[3] < m.bic_[2]
    assert m.n_classes_ >= 3
    assert homogeneity_score(y, m.labels_) > 0.95
    k, bic = choose_n_classes(m.embedding_, [2, 3], random_state=0, tolerance=0)
    assert k == 3 and set(bic) == {2, 3}


def test_streamed_moments_equal_one_pass():
    x, _ = _blobs()
    parts = [x[:37], x[37:200], x[200:]]
    mom = FeatureMoments.of(parts[0])
    for part in parts[1:]:
        mom = mom.merge(FeatureMoments.of(part))
    ref = FeatureMoments.of(x)
    assert mom.count == ref.count == len(x)
    np.testing.assert_allclose(mom.mean, ref.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mom.covariance, np.cov(x.T.astype(np.float64)), rtol=1e-9)


def test_pca_from_moments_matches_sklearn():
    from sklearn.decomposition import PCA

    x, _ = _blobs(d=9)
    ours = LinearPCA.from_moments(FeatureMoments.of(x), 0.9)
    theirs = PCA(n_components=0.9, svd_solver="full").fit(x.astype(np.float64))
    assert ours.n_components_ == theirs.n_components_
    np.testing.assert_allclose(ours.explained_variance, theirs.explained_variance_, rtol=1e-8)
    # same axes up to sign
    overlap = np.abs(np.sum(ours.components * theirs.components_, axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)


def test_fit_sample_places_the_rest_in_their_class():
    x, y = _blobs(n_per=(400, 300, 200))
    m = ParticleManifold(3, fit_sample=300, random_state=0).fit(x)
    assert m.sample_.size == 300
    rest = np.setdiff1d(np.arange(len(y)), m.sample_)
    assert adjusted_rand_score(y[rest], m.labels_[rest]) > 0.95
    # the fitted sample keeps its own map positions; the rest are transformed
    np.testing.assert_array_equal(m.embedding_[rest], m.transform(x[rest]))


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        ParticleManifold(2).fit(np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 3.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="n_classes"):
        ParticleManifold(10).fit(np.zeros((5, 2)))
