"""Tests of cryomanifold.refine: the second stage makes classes purer in view than the
map's, and sharper averages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryomanifold.averaging import reference_free_average
from cryomanifold.mra import default_mask, local_shift_grid, search_poses
from cryomanifold.polar import PolarGrid
from cryomanifold.refine import ArrayChunk, RefineSettings, refine_classes
from cryomanifold.transforms import rotate_images, shift_images

BOX = 48
APIX = 2.0
N_PER_VIEW = 60


def _object_views(rotations: Rotation, box: int = BOX) -> np.ndarray:
    """Projections of one asymmetric assembly of Gaussian blobs, (n, box, box)."""
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(10, 3)) * 5.0
    pts -= pts.mean(axis=0)
    sig, amp = rng.uniform(1.5, 2.5, 10), rng.uniform(0.5, 1.5, 10)
    q = np.einsum("nij,mj->nmi", rotations.as_matrix(), pts)
    c = np.arange(box) - box // 2
    y, x = np.meshgrid(c, c, indexing="ij")
    out = np.zeros((len(rotations), box, box))
    for j in range(pts.shape[0]):
        d2 = (x[None] - q[:, j, 0, None, None]) ** 2 + (y[None] - q[:, j, 1, None, None]) ** 2
        out += amp[j] * np.exp(-0.5 * d2 / sig[j] ** 2)
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def mixture() -> dict[str, np.ndarray]:
    """Four distinct views (their projections correlate <= 0.92), 60 noisy particles
    each (random in-plane angle and shift); the 'map' put views 0+1 in one class and
    2+3 in another."""
    views = Rotation.from_euler("xy", [[0, 0], [60, 0], [120, 0], [0, 90]], degrees=True)
    clean = _object_views(views)
    rng = np.random.default_rng(0)
    view = np.repeat(np.arange(4), N_PER_VIEW)
    n = view.size
    angles = rng.uniform(0, 360, n)
    shifts = rng.uniform(-1.5, 1.5, (n, 2))
    images = shift_images(rotate_images(clean[view], angles), shifts)
    images += rng.normal(0, 1.0 * images.std(), images.shape).astype(np.float32)
    return {"images": images, "view": view, "map_class": view // 2, "clean": clean}


def _view_purity(labels: np.ndarray, view: np.ndarray) -> float:
    """Share of within-class pairs of particles that share their view."""
    same = total = 0
    for c in np.unique(labels):
        v = view[labels == c]
        counts = np.bincount(v, minlength=4)
        same += int((counts * (counts - 1)).sum())
        total += v.size * (v.size - 1)
    return same / max(total, 1)


def _match(average: np.ndarray, truth: np.ndarray) -> float:
    """Best correlation of the true projection with an average over rotations,
    shifts and mirrors."""
    grid = PolarGrid.make(BOX, 1.0, BOX / 2 - 1)
    pose = search_poses(
        truth[None],
        average[None],
        ring_weights=grid.radii,
        grid=grid,
        mask=default_mask(BOX),
        shifts_px=local_shift_grid(3.0),
    )
    return float(pose.scores[0, 0])


@pytest.fixture(scope="module")
def refined(mixture: dict[str, np.ndarray]):
    images = mixture["images"]
    first = np.stack(
        [
            reference_free_average(
                images[mixture["map_class"] == c], n_iter=3, random_state=c
            ).average
            for c in (0, 1)
        ]
    )
    settings = RefineSettings(
        pixel_size_angstrom=APIX,
        n_iter=8,
        n_split_iter=5,
        target_size=25,
        max_classes=8,
        start_band_px=4.0,
        final_band_px=12.0,
    )
    chunks = [ArrayChunk(images[:120]), ArrayChunk(images[120:])]
    result = refine_classes(chunks, first, settings, sizes=[120, 120])
    return first, result


def test_refined_classes_are_purer_in_view_than_the_map(mixture, refined) -> None:
    """The map's classes mix two views each (purity 0.5 by construction); the second
    stage separates them (measured 1.0). Fails if the stage leaves the classes as
    they were."""
    _, result = refined
    before = _view_purity(mixture["map_class"], mixture["view"])
    after = _view_purity(result.labels, mixture["view"])
    assert before < 0.55
    assert after > 0.9
    assert result.scores.shape == (mixture["view"].size, result.references.shape[0])
    assert np.all(result.sizes[np.unique(result.labels)] > 0)


def test_refined_averages_match_the_true_projection_better(mixture, refined) -> None:
    """Each view's refined class average correlates with the true projection better
    than the map class's average (a blend of two views) does: its shortfall from a
    perfect match is under 0.6 of the map average's (measured 0.2-0.4)."""
    first, result = refined
    for v in range(4):
        members = result.labels[mixture["view"] == v]
        k = int(np.bincount(members).argmax())
        truth = mixture["clean"][v]
        refined_r = _match(result.references[k], truth)
        first_r = _match(first[v // 2], truth)
        assert 1 - refined_r < 0.6 * (1 - first_r), (v, refined_r, first_r)
        assert refined_r > 0.95


def test_scores_peak_at_the_own_class(refined) -> None:
    _, result = refined
    rows = np.arange(result.labels.size)
    assert np.all(result.scores[rows, result.labels] >= result.scores.max(axis=1) - 1e-6)
    assert np.all((result.probabilities > 0) & (result.probabilities <= 1))


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        RefineSettings(pixel_size_angstrom=1.0, n_iter=3, n_split_iter=4)
    with pytest.raises(ValueError):
        RefineSettings(pixel_size_angstrom=1.0, start_band_px=20, final_band_px=10)
    s = RefineSettings(pixel_size_angstrom=4.0)
    assert s.band_px(0, 80) == pytest.approx(8.0)
    assert s.band_px(s.n_iter - 1, 80) == pytest.approx(16.0)
    assert s.band_px(s.n_iter - 1, 24) == pytest.approx(11.0)  # at most Nyquist - 1
