"""The per-particle junk call: artefacts and noise are flagged, particles kept, no seed."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.junk_call import (
    REASONS,
    call_particles,
    feature_outlier_z,
    heavy_probability,
    no_signal_probability,
    robust_z,
)
from cryomanifold.junk_signs import particle_measures
from junk_data import APIX, edge_stripes, noise, particles, shards


@pytest.fixture(scope="module")
def mixture():
    """300 particles, 24 edge-stripe boxes, 20 shards and 30 empty boxes."""
    rng = np.random.default_rng(0)
    parts = [
        (particles(300, rng, snr=2.0), "particle"),
        (edge_stripes(24, rng, width_px=6), "edge_stripe"),
        (shards(20, rng, snr=2.0, amplitude=30.0), "dense"),
        (noise(30, rng), "no_signal"),
    ]
    images = np.concatenate([p for p, _ in parts])
    truth = np.concatenate([[t] * len(p) for p, t in parts])
    order = rng.permutation(len(truth))
    return images[order], truth[order]


def test_stripes_shards_and_empty_boxes_are_flagged_with_their_reason(mixture):
    images, truth = mixture
    call = call_particles(particle_measures(images, pixel_size_angstrom=APIX))
    is_part = truth == "particle"
    assert call.junk[is_part].mean() < 0.03
    for kind in ("edge_stripe", "dense"):
        assert (call.reason[truth == kind] == kind).all(), kind
    assert (call.reason[truth == "no_signal"] == "no_signal").mean() >= 0.8
    np.testing.assert_array_equal(call.junk, call.score > 0.5)
    assert set(call.reason) <= {"", *REASONS}


def test_a_stack_of_pure_noise_is_flagged():
    rng = np.random.default_rng(1)
    call = call_particles(particle_measures(noise(300, rng), pixel_size_angstrom=APIX))
    assert call.junk.mean() >= 0.95
    assert (call.reason[call.junk] == "no_signal").mean() > 0.9


def test_call_is_seed_free_batch_free_and_order_free(mixture):
    images, _ = mixture
    whole = particle_measures(images, pixel_size_angstrom=APIX)
    batched = [
        particle_measures(images[s : s + 50], pixel_size_angstrom=APIX)
        for s in range(0, len(images), 50)
    ]
    joined = {k: np.concatenate([b[k] for b in batched]) for k in whole}
    a, b = call_particles(whole), call_particles(joined)
    np.testing.assert_array_equal(a.junk, b.junk)
    np.testing.assert_array_equal(a.reason, b.reason)
    perm = np.random.default_rng(2).permutation(len(images))
    c = call_particles({k: v[perm] for k, v in whole.items()})
    np.testing.assert_array_equal(c.junk, a.junk[perm])
    np.testing.assert_allclose(c.score, a.score[perm], rtol=1e-6, atol=1e-7)


def test_no_signal_posterior_follows_the_dataset():
    rng = np.random.default_rng(3)
    null = rng.standard_normal(1000)
    assert (no_signal_probability(null) == 1).all()  # nothing beats "all noise"
    faint = rng.normal(3.0, 1.5, 900)
    z = np.concatenate([faint, rng.standard_normal(100)])
    post = no_signal_probability(z)
    assert (post[900:] > 0.5).mean() > 0.6  # empty boxes among particles
    assert (post[:900] > 0.5).mean() < 0.05  # faint particles kept


def test_heavy_posterior_needs_two_particles_worth():
    rng = np.random.default_rng(4)
    single = rng.normal(1.0, 0.25, 600)
    assert not (heavy_probability(single) > 0.5).any()
    mass = np.concatenate([single, rng.uniform(2.0, 4.0, 40)])
    post = heavy_probability(mass)
    assert (post[600:] > 0.5).mean() > 0.8
    assert (post[:600] > 0.5).mean() < 0.01


def test_feature_outliers_are_the_isolated_points():
    rng = np.random.default_rng(5)
    feats = np.concatenate([rng.normal(size=(300, 5)), rng.normal(size=(3, 5)) + 15.0])
    z = feature_outlier_z(feats, n_neighbors=5)
    assert z[300:].min() > 5 and np.median(z[:300]) < 1
    np.testing.assert_array_equal(z, feature_outlier_z(feats, n_neighbors=5))


def test_robust_z_and_bad_values():
    np.testing.assert_allclose(robust_z([1.0, 2.0, 3.0]), [-1 / 1.4826, 0, 1 / 1.4826])
    assert np.isfinite(robust_z(np.ones(5))).all()
    m = {"finite": np.array([1.0, 0.0, 1.0]), "peak_sigma": np.array([4.0, 4.0, 400.0])}
    call = call_particles(m)
    np.testing.assert_array_equal(call.reason, ["", "bad_values", "bad_values"])
    with pytest.raises(ValueError, match="one value per particle"):
        call_particles({"finite": np.ones(3), "signal_z": np.ones(4)})
