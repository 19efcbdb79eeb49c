"""Class colours: the ones ``map.png`` uses, so that the atlas and the map agree.

:func:`cryomanifold.plot.plot_map` colours class ``k`` (0-based) with matplotlib's
``tab20`` colour ``k`` when there are at most 20 classes, else with ``gist_ncar``
sampled evenly on [0.05, 0.95]. :func:`class_colours` gives the same colours
(tests/atlas/test_palette.py checks them against what ``plot_map`` draws).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["class_colours"]


def class_colours(n_classes: int) -> npt.NDArray[np.float64]:
    """RGB colour of each class as in ``map.png``.

    Parameters
    ----------
    n_classes : int

    Returns
    -------
    ndarray, shape (n_classes, 3)
        Row ``k`` is the colour of class ``k + 1``, components in [0, 1].
    """
    import matplotlib

    if n_classes <= 20:
        rgba = matplotlib.colormaps["tab20"](np.arange(n_classes))
    else:
        rgba = matplotlib.colormaps["gist_ncar"](np.linspace(0.05, 0.95, n_classes))
    return np.asarray(rgba, dtype=np.float64).reshape(n_classes, 4)[:, :3]
