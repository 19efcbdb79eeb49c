"""The run's final classes: the refine stage's, or the map's when it did not run.

:func:`final_classes` gathers what the outputs need about the classes the run
reports (labels, probabilities, averages, the class table, the file of feature
vectors they come from); the map's own classes stay with the model (``model/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold.stages.folder import RunFolder

__all__ = ["FinalClasses", "class_centroids", "final_classes"]


@dataclass(frozen=True)
class FinalClasses:
    """The classes a run reports (K of them) and where they come from."""

    labels: npt.NDArray[np.int64]  # (n,), -1 for skipped particles
    probabilities: npt.NDArray[np.float32]  # (n,)
    averages: Any  # stages.averages.ClassAverages of the K classes
    table: Any  # stages.junk.ClassTable of the K classes
    called: Any  # stages.junk.JunkResult: the per-particle call and the map's class table
    map_averages: Any  # the map classes' ClassAverages (saved with the model)
    features: Path  # the (n, d) vectors the classes come from
    refined: bool  # the refine stage's classes (else the map's)

    def map_classes(self) -> tuple[dict[str, Any], npt.NDArray[np.float32]]:
        """The map's class table (as saved in ``model.json``) and its averages, with
        the classes that hold no consistent particle blanked."""
        t = self.called.classes
        table = {
            "size": t.sizes.tolist(),
            "junk": t.flags.tolist(),
            "junk_reason": list(t.reason),
            "junk_score": t.scores.tolist(),
            "junk_fraction": t.junk_fraction.tolist(),
            "resolution_angstrom": [
                None if not np.isfinite(r) else float(r) for r in t.resolution_angstrom
            ],
            "consistent": t.consistent.tolist(),
        }
        shown = np.where(t.no_particle[:, None, None], np.float32(0), self.map_averages.averages)
        return table, shown


def final_classes(
    folder: RunFolder,
    embedded: Any,
    called: Any,
    avg: Any,
    refined: Any,
    measures: dict[str, Any],
    pixel_size_angstrom: float,
) -> FinalClasses:
    """The refine stage's classes (``refined``), or the map's (``refined`` None, from
    the embed stage's result ``embedded``)."""
    if refined is None:
        return FinalClasses(
            embedded.labels,
            embedded.probabilities,
            avg,
            called.classes,
            called,
            avg,
            folder.output("features.npy"),
            False,
        )
    from cryomanifold.stages.refine import final_class_table, scores_path

    return FinalClasses(
        refined.labels,
        refined.probabilities,
        refined.averages,
        final_class_table(refined, called, measures, pixel_size_angstrom),
        called,
        avg,
        scores_path(folder),
        True,
    )


def class_centroids(
    embedding: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float32]:
    """Each class's mean map position, (K, 2) (NaN for an empty class)."""
    good = labels >= 0
    counts = np.bincount(labels[good], minlength=k).astype(np.float64)
    out = np.full((k, 2), np.nan, np.float32)
    for d in (0, 1):
        sums = np.bincount(labels[good], embedding[good, d].astype(np.float64), k)
        out[:, d] = np.divide(sums, counts, out=np.full(k, np.nan), where=counts > 0)
    return out
