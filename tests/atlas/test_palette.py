"""The atlas colours classes exactly as map.png does (cryomanifold.atlas.palette)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cryomanifold.atlas.html import atlas_payload
from cryomanifold.atlas.palette import class_colours
from cryomanifold.plot import plot_map


@pytest.mark.parametrize("n_classes", [3, 27])
def test_same_colours_as_plot_map(
    n_classes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.axes import Axes

    drawn: dict[str, Any] = {}
    scatter = Axes.scatter

    def spy(self: Axes, *args: Any, **kwargs: Any) -> Any:
        drawn["c"] = np.asarray(kwargs["c"])
        return scatter(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "scatter", spy)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_classes), 3)
    embedding = rng.normal(size=(labels.size, 2)) + labels[:, None]
    averages = rng.normal(size=(n_classes, 8, 8))
    plot_map(embedding, labels, averages, tmp_path / "map.png", dpi=20)
    np.testing.assert_allclose(drawn["c"][:, :3], class_colours(n_classes)[labels])


def test_payload_carries_the_class_colours(star_run: dict[str, Any]) -> None:
    meta, _ = atlas_payload(star_run["path"])
    np.testing.assert_allclose(meta["class_colours"], class_colours(5), atol=1e-4)
