"""The safe model format: bit-identical round trip; refuses pickles, bad shapes, foreign files."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from cryomanifold.manifold import ParticleManifold
from cryomanifold.modelfile import ModelFileError, load_model, save_model


def _blobs(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=8.0, size=(3, 10))
    x = np.concatenate([c + rng.normal(size=(120, 10)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(3), 120)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    x, _ = _blobs()
    m = ParticleManifold(3, standardize=False, fit_sample=200, reference_size=150, random_state=0)
    m.fit(x)
    path = tmp_path_factory.mktemp("m") / "model"
    averages = np.random.default_rng(1).normal(size=(3, 16, 16)).astype(np.float32)
    save_model(
        path,
        m,
        settings={"box": 16, "pixel_size_angstrom": 2.0},
        classes={"size": [1, 2, 3]},
        class_averages=averages,
        class_junk=np.array([False, True, False]),
        info={"run_id": "abc"},
    )
    return m, x, path, averages


def test_round_trip_is_bit_identical(saved):
    m, x, path, averages = saved
    loaded = load_model(path)
    lm = loaded.manifold
    np.testing.assert_array_equal(lm.pca_.components, m.pca_.components)
    np.testing.assert_array_equal(lm.reference_.points, m.reference_.points)
    np.testing.assert_array_equal(lm.reference_.embedding, m.reference_.embedding)
    np.testing.assert_array_equal(lm.gmm_.means_, m.gmm_.means_)
    np.testing.assert_array_equal(lm.shift_, m.shift_)
    np.testing.assert_array_equal(loaded.class_averages, averages)
    assert loaded.class_junk.tolist() == [False, True, False]
    assert loaded.settings["box"] == 16 and loaded.info["run_id"] == "abc"
    # the loaded model places and classifies new points as the fitted one does
    np.testing.assert_array_equal(lm.transform(x[:40]), m.transform(x[:40]))
    np.testing.assert_array_equal(lm.predict(x), m.predict(x))


def test_every_array_loads_without_pickle(saved):
    _, _, path, _ = saved
    for f in path.glob("*.npy"):
        np.load(f, allow_pickle=False)


def test_refuses_a_pickle(saved, tmp_path):
    _, _, path, _ = saved
    bad = tmp_path / "model"
    bad.mkdir()
    for f in path.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    np.save(bad / "pca_mean.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ModelFileError, match="objects"):
        load_model(bad)
    (bad / "pca_mean.npy").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ModelFileError, match="pca_mean"):
        load_model(bad)


def test_refuses_wrong_shape_and_truncation(saved, tmp_path):
    _, _, path, _ = saved
    bad = tmp_path / "model"
    bad.mkdir()
    for f in path.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    np.save(bad / "gmm_means.npy", np.zeros((3, 3)))
    with pytest.raises(ModelFileError, match="gmm_means"):
        load_model(bad)
    np.save(bad / "gmm_means.npy", np.zeros((4, 2)))  # inconsistent K
    with pytest.raises(ModelFileError, match="inconsistent"):
        load_model(bad)
    raw = (path / "reference_points.npy").read_bytes()
    np.save(bad / "gmm_means.npy", np.load(path / "gmm_means.npy"))
    (bad / "reference_points.npy").write_bytes(raw[:-8])
    with pytest.raises(ModelFileError, match="header implies"):
        load_model(bad)


def test_refuses_foreign_and_future_files(saved, tmp_path):
    _, _, path, _ = saved
    with pytest.raises(ModelFileError, match="not a cryomanifold model"):
        load_model(tmp_path)
    bad = tmp_path / "model"
    bad.mkdir()
    for f in path.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    doc = json.loads((bad / "model.json").read_text())
    (bad / "model.json").write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(ModelFileError, match="not a cryomanifold-model"):
        load_model(bad)
    (bad / "model.json").write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(ModelFileError, match="upgrade"):
        load_model(bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable"):
        load_model(bad)


def test_model_size_is_bounded_by_reference_size(saved):
    m, _, path, _ = saved
    assert m.reference_.points.shape[0] == 150
    assert sum(f.stat().st_size for f in path.iterdir()) < 200_000
