"""The array-only UMAP transform against umap-learn's own, and its invariances."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from cryomanifold.embedding import UMAPReference, import_umap, knn, membership_strengths


def _clusters(n: int, seed: int, d: int = 12, k: int = 8):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(scale=3.0, size=(k, d))
    lab = rng.integers(0, k, n)
    return (centres[lab] + rng.normal(size=(n, d))).astype(np.float32), lab


@pytest.fixture(scope="module")
def fitted():
    umap = import_umap()
    x_train, _ = _clusters(1500, 1)
    model = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = model.fit_transform(x_train).astype(np.float32)
    ref = UMAPReference(x_train, emb, 15, float(model._a), float(model._b), 0.1, 0)
    return model, ref


def test_knn_is_exact():
    rng = np.random.default_rng(0)
    ref, pts = rng.normal(size=(300, 5)), rng.normal(size=(40, 5))
    idx, dist = knn(pts, ref, 7, block=16)
    full = np.linalg.norm(pts[:, None] - ref[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(dist, np.sort(full, axis=1)[:, :7], rtol=1e-5, atol=1e-5)


def test_membership_strengths_sum_to_log2_k():
    rng = np.random.default_rng(1)
    d = np.sort(rng.uniform(0.5, 3.0, size=(50, 15)), axis=1)
    vals = membership_strengths(d)
    # neighbours 2..k sum to log2(k), as umap's smooth_knn_dist (local connectivity 0)
    np.testing.assert_allclose(vals[:, 1:].sum(axis=1), np.log2(15), atol=1e-4)
    assert np.all(np.diff(vals, axis=1) <= 1e-7)  # nearer neighbours weigh more


def test_transform_matches_umap_learn(fitted):
    """Same class as umap-learn's own transform for >= 98% of new points."""
    model, ref = fitted
    x_new, _ = _clusters(800, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = model.transform(x_new)
    gmm = GaussianMixture(8, random_state=0).fit(ref.embedding)
    for epochs in (0, 30):
        ours = ref.transform(x_new, epochs=epochs)
        agree = np.mean(gmm.predict(ours) == gmm.predict(theirs))
        assert agree >= 0.98, (epochs, agree)
    # the same neighbourhoods and membership strengths as umap-learn's transform graph
    model.transform_mode = "graph"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = model.transform(x_new).tocsr()
    finally:
        model.transform_mode = "embedding"
    idx, dist = knn(x_new, ref.points, 15)
    vals = membership_strengths(dist)
    for i in range(0, 800, 37):
        row = graph.getrow(i)
        assert set(row.indices) == set(idx[i])
        theirs_v = dict(zip(row.indices, row.data, strict=True))
        np.testing.assert_allclose([theirs_v[j] for j in idx[i]], vals[i], rtol=1e-3, atol=1e-4)


def test_transform_is_per_point(fitted):
    """Without epochs, a point's position does not depend on the other points (chunking)."""
    _, ref = fitted
    x_new, _ = _clusters(300, 3)
    whole = ref.transform(x_new)
    parts = np.concatenate([ref.transform(x_new[:17]), ref.transform(x_new[17:])])
    np.testing.assert_array_equal(whole, parts)


def test_reference_points_map_onto_themselves(fitted):
    _, ref = fitted
    np.testing.assert_array_equal(ref.transform(ref.points[:50]), ref.embedding[:50])
    # with layout epochs too: the map's own points do not drift
    mixed = np.concatenate([ref.points[:20], _clusters(30, 6)[0]])
    placed = ref.transform(mixed, epochs=30)
    np.testing.assert_array_equal(placed[:20], ref.embedding[:20])


def test_subsample_keeps_map():
    x, _ = _clusters(500, 4)
    emb = x[:, :2].copy()
    ref = UMAPReference(x, emb, 15, 1.0, 1.0)
    small = ref.subsample(200, random_state=0)
    assert small.points.shape == (200, x.shape[1])
    rows = [int(np.flatnonzero((x == p).all(axis=1))[0]) for p in small.points[:5]]
    np.testing.assert_array_equal(small.embedding[:5], emb[rows])
    assert ref.subsample(1000) is ref


def test_transform_rejects_wrong_dimension(fitted):
    _, ref = fitted
    with pytest.raises(ValueError, match="expects"):
        ref.transform(np.zeros((3, 5), np.float32))
