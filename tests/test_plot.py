"""The map figure."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from cryomanifold.plot import _spread, plot_map


def _red_pixels(path) -> int:
    img = mpimg.imread(path)[..., :3]
    return int(((img[..., 0] > 0.9) & (img[..., 1] < 0.2) & (img[..., 2] < 0.2)).sum())


def test_map_png_with_insets_and_junk_frames(tmp_path):
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(8, 1, (100, 2))])
    labels = np.repeat([0, 1], [200, 100])
    yy, xx = np.mgrid[:32, :32] - 16
    averages = np.stack([np.exp(-(xx**2 + yy**2) / 40.0), rng.normal(size=(32, 32))])
    clean = plot_map(emb, labels, averages, tmp_path / "a.png", dpi=60)
    flagged = plot_map(emb, labels, averages, tmp_path / "b.png", junk=[False, True], dpi=60)
    img = mpimg.imread(clean)
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05
    assert _red_pixels(flagged) > _red_pixels(clean) + 50  # the junk class gets a red frame


def test_insets_are_spread_apart_but_stay_near_their_class():
    centres = np.array([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0]])
    pos = _spread(centres, 1.0, np.ones(4, bool))
    d = np.abs(pos[:, None, :] - pos[None, :, :]).max(axis=-1)
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 0.95  # no two insets overlap (up to the last small step)
    assert np.linalg.norm(pos - centres, axis=1).max() < 2.0
