"""The novelty test and the drift check (cryomanifold.support) on seeded point clouds."""

from __future__ import annotations

import numpy as np

from cryomanifold.manifold import ParticleManifold
from cryomanifold.support import novelty_scores, placement_drift, position_drift


def _clusters(centres: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([c + rng.normal(size=(n, centres.shape[1])) for c in centres])


def test_an_unseen_cluster_is_novel_and_the_known_ones_are_not():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(3, 12))
    reference = _clusters(centres[:2], 400, rng)
    new = _clusters(centres, 200, rng)
    result = novelty_scores(new, reference, random_state=1)
    assert result.novel[400:].mean() >= 0.9, result.novel[400:].mean()
    assert result.novel[:400].mean() < 0.03, result.novel[:400].mean()
    assert result.params["size"] == 400 and result.threshold > 1


def test_false_flags_follow_the_quantile_when_nothing_is_new():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=6.0, size=(4, 12))
    new, reference = _clusters(centres, 150, rng), _clusters(centres, 300, rng)
    for quantile in (0.95, 0.99):
        result = novelty_scores(new, reference, quantile=quantile)
        assert result.novel.mean() < 1 - quantile + 0.02, (quantile, result.novel.mean())


def test_too_few_points_flag_nothing():
    rng = np.random.default_rng(3)
    result = novelty_scores(rng.normal(size=(10, 5)), rng.normal(size=(100, 5)))
    assert not result.novel.any() and result.params["size"] == 0


def test_drift_is_zero_in_place_and_small_leaving_one_out():
    rng = np.random.default_rng(4)
    x = _clusters(rng.normal(scale=8.0, size=(3, 10)), 120, rng).astype(np.float32)
    m = ParticleManifold(3, standardize=False, random_state=0).fit(x)
    same = position_drift(m, m.embedding_, m.embedding_)
    assert same["median_displacement"] == 0.0 and same["class_agreement"] == 1.0
    loo = placement_drift(m)
    assert loo["n"] == 360
    assert loo["median_displacement"] < 0.05 * loo["map_extent"]
    assert loo["class_agreement"] > 0.95
