"""Writers of the run folder's files (the output contract in docs/architecture.md).

Every file is written to a temporary name and renamed, so a crash never leaves a
half-written file under a contract name.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.junk import JunkAssessment

__all__ = [
    "CLASSES_CSV_COLUMNS",
    "annotation_columns",
    "software_versions",
    "write_classes_csv",
    "write_json",
    "write_npy",
]

#: Columns of classes.csv; the first seven are the stable contract.
CLASSES_CSV_COLUMNS = (
    "class_number",
    "size",
    "umap1",
    "umap2",
    "junk",
    "junk_score",
    "quality",
    "junk_reason",
    "contrast",
    "detail",
    "mass",
)


#: cryoSPARC field for each RELION column that a run adds.
_CS_FIELDS = {
    "rlnClassNumber": "cm/class",
    "cmClassProbability": "cm/probability",
    "cmUMAP1": "cm/umap1",
    "cmUMAP2": "cm/umap2",
    "cmJunkScore": "cm/junk_score",
}


def annotation_columns(
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    embedding: npt.NDArray[np.float32],
    junk_scores: npt.NDArray[np.float32],
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, npt.NDArray[Any]]]:
    """The per-particle columns added to particles.star and particles.cs.

    Parameters
    ----------
    labels : ndarray, shape (n,)
        0-based classes, -1 for skipped particles (written as class 0).
    probabilities, junk_scores : ndarray, shape (n,)
    embedding : ndarray, shape (n, 2)

    Returns
    -------
    star_columns, cs_fields : dict
        RELION labels (without the leading underscore) and cryoSPARC field names.
    """
    star: dict[str, npt.NDArray[Any]] = {
        "rlnClassNumber": labels + 1,
        "cmClassProbability": probabilities,
        "cmUMAP1": embedding[:, 0],
        "cmUMAP2": embedding[:, 1],
        "cmJunkScore": junk_scores,
    }
    cs = {_CS_FIELDS[name]: values for name, values in star.items()}
    return star, cs


def write_classes_csv(
    path: str | os.PathLike[str],
    sizes: npt.ArrayLike,
    centroids: npt.ArrayLike,
    junk: JunkAssessment,
) -> Path:
    """Write classes.csv: one row per class, columns :data:`CLASSES_CSV_COLUMNS`."""
    size = np.asarray(sizes)
    cents = np.asarray(centroids)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(",".join(CLASSES_CSV_COLUMNS) + "\n")
        for c in range(size.size):
            fh.write(
                f"{c + 1},{size[c]},{cents[c, 0]:.4f},{cents[c, 1]:.4f},{int(junk.flags[c])},"
                f"{junk.scores[c]:.4f},{1.0 - junk.scores[c]:.4f},{junk.reason[c]},"
                f"{junk.contrast[c]:.4g},{junk.detail[c]:.4g},{junk.mass[c]:.4g}\n"
            )
    return Path(path)


def write_npy(path: str | os.PathLike[str], array: npt.ArrayLike) -> Path:
    """Save an array as .npy atomically."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array))  # tmp ends in .npy, so np.save keeps its name
    return Path(path)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write a JSON document atomically (numpy scalars and paths as text)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    return Path(path)


def software_versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape the results."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "cryomanifold",
        "numpy",
        "scipy",
        "scikit-learn",
        "umap-learn",
        "mrcfile",
        "starfile",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
